"""array_record storage through tfds, the cache fingerprint, and the deterministic batch order."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from o1_jax.data import storage
from o1_jax.data.records import RecordError, read_records, write_records

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_records(n, tag=""):
    return [
        {
            "id": str(i),
            "query": f"qüery {i} {tag} — ✓ 日本",
            "pos": [{"title": f"Tïtle {i}", "text": f"positive {i}"}],
            "neg": [{"title": "", "text": f"negative {i}.{k}"} for k in range(i % 3)],
            "thought": "" if i % 2 else f"thought {i}",
            "all_thought": [],
            "pos_scores": None,
            "neg_scores": None,
        }
        for i in range(n)
    ]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("num_shards", [1, 3])
def test_round_trip(tmp_path, num_shards):
    records = make_records(20)
    out = storage.write_dataset(records, tmp_path / "ds", num_shards=num_shards)
    shards = sorted(p.name for p in out.glob("o1_records-train.array_record-*"))
    assert len(shards) == num_shards
    assert (out / "dataset_info.json").is_file() and (out / "features.json").is_file()
    src = storage.open_dataset(out)
    assert len(src) == 20
    assert [src[i] for i in range(20)] == records  # element i is record i, across shards
    assert src[-1] == records[-1] and src[np.int64(4)] == records[4]
    assert src.__getitems__([7, 2, 7]) == [records[7], records[2], records[7]]
    with pytest.raises(IndexError, match="out of range"):
        src[20]
    assert leftovers(tmp_path) == []


def test_reads_through_tfds(tmp_path):
    import tensorflow_datasets as tfds

    out = storage.write_dataset(make_records(5), tmp_path / "ds")
    builder = tfds.builder_from_directory(os.fspath(out))
    assert builder.info.splits["train"].num_examples == 5
    assert builder.info.file_format.value == "array_record"
    element = builder.as_data_source("train")[3]
    assert json.loads(element["record"]) == make_records(5)[3]


def test_failed_write_leaves_nothing(tmp_path):
    bad = make_records(10)
    bad[6]["pos"] = {"not", "json"}  # a set: serialisation fails half-way through
    with pytest.raises(TypeError):
        storage.write_dataset(bad, tmp_path / "ds", num_shards=2)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_old_dataset(tmp_path):
    storage.write_dataset(make_records(4), tmp_path / "ds")
    bad = make_records(4)
    bad[3]["neg"] = [object()]
    with pytest.raises(TypeError):
        storage.write_dataset(bad, tmp_path / "ds")
    assert [r["id"] for r in storage.open_dataset(tmp_path / "ds")] == ["0", "1", "2", "3"]
    assert leftovers(tmp_path) == []


def test_refuses_to_replace_other_folders(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RecordError, match="is not a record folder"):
        storage.write_dataset(make_records(3), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_bad_arguments(tmp_path):
    with pytest.raises(RecordError, match="no records"):
        storage.write_dataset([], tmp_path / "ds")
    with pytest.raises(ValueError, match="num_shards must be between 1 and the number of records"):
        storage.write_dataset(make_records(2), tmp_path / "ds", num_shards=3)
    with pytest.raises(RecordError, match="not a converted record folder"):
        storage.open_dataset(tmp_path)


def test_ensure_dataset_reuses_and_reconverts(tmp_path, monkeypatch):
    jsonl = tmp_path / "train.jsonl"
    write_records(make_records(6, "v1"), jsonl)
    cache = tmp_path / "cache"
    src = storage.ensure_dataset(jsonl, cache)
    assert src.path == cache / "train" and len(src) == 6
    assert [src[i] for i in range(6)] == read_records(jsonl)
    assert storage.stored_fingerprint(src.path)["sha256"] == storage.fingerprint(jsonl)["sha256"]

    calls = []
    real_write = storage.write_dataset
    monkeypatch.setattr(storage, "write_dataset", lambda *a, **k: calls.append(a) or real_write(*a, **k))
    again = storage.ensure_dataset(jsonl, cache)
    assert calls == [] and len(again) == 6  # unchanged JSONL: reused

    write_records(make_records(9, "v2"), jsonl)  # changed JSONL: converted again
    new = storage.ensure_dataset(jsonl, cache)
    assert len(calls) == 1 and len(new) == 9 and "v2" in new[8]["query"]
    assert leftovers(cache) == []


def test_ensure_dataset_validates_before_writing(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"query": "q", "pos": ["p"]}\n{"query": "q"}\n')
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: 'pos'"):
        storage.ensure_dataset(jsonl, tmp_path / "cache")
    assert not (tmp_path / "cache" / "bad").exists()
    with pytest.raises(RecordError, match="no such file"):
        storage.ensure_dataset(tmp_path / "missing.jsonl", tmp_path / "cache")


def test_no_tensorflow_import(tmp_path):
    # A stand-in `tensorflow` package that records any import: tfds must not even
    # try (if it did, with TensorFlow absent, training would crash; present, it breaks scann).
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent("""
        import os
        open(os.environ["FAKE_TF_LOG"], "a").write("imported\\n")
        raise ImportError("tensorflow must not be imported")
    """))
    log = tmp_path / "tf.log"
    script = textwrap.dedent(f"""
        import sys
        from o1_jax.data import storage
        from o1_jax.data.records import write_records
        records = [{{"query": "q%d" % i, "pos": ["p"]}} for i in range(8)]
        write_records(records, {str(tmp_path / 'r.jsonl')!r})
        src = storage.ensure_dataset({str(tmp_path / 'r.jsonl')!r}, {str(tmp_path / 'cache')!r}, num_shards=2)
        assert [r["query"] for r in src.__getitems__([7, 0])] == ["q7", "q0"], src
        assert "tensorflow" not in sys.modules
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'fake'}{os.pathsep}{ROOT}", FAKE_TF_LOG=str(log))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert not log.exists(), "tensorflow was imported"


# ---- deterministic order ----

def test_every_record_once_per_epoch():
    order = storage.BatchOrder(num_records=24, global_batch_size=6, seed=3)
    assert order.steps_per_epoch == 4
    for epoch in range(3):
        seen = np.concatenate([order.indices(epoch * 4 + j) for j in range(4)])
        assert sorted(seen.tolist()) == list(range(24))
    e0 = np.concatenate([order.indices(j) for j in range(4)])
    e1 = np.concatenate([order.indices(4 + j) for j in range(4)])
    assert not np.array_equal(e0, e1)


def test_remainder_dropped():
    order = storage.BatchOrder(num_records=10, global_batch_size=4, seed=0)
    assert order.steps_per_epoch == 2
    seen = np.concatenate([order.indices(0), order.indices(1)])
    assert len(set(seen.tolist())) == 8 and seen.min() >= 0 and seen.max() < 10


def test_matches_the_documented_formula():
    order = storage.BatchOrder(num_records=50, global_batch_size=8, seed=11, process_index=1, process_count=2)
    step = 13  # epoch 2 (6 steps per epoch), window 1
    perm = np.random.default_rng([11, 2]).permutation(50)
    np.testing.assert_array_equal(order.indices(step), perm[8:16][4:8])


def test_process_slices_concatenate_to_global_batch():
    one = storage.BatchOrder(num_records=100, global_batch_size=8, seed=5)
    parts = [storage.BatchOrder(100, 8, 5, process_index=p, process_count=2) for p in range(2)]
    for step in [0, 1, 11, 12, 30]:
        local = [p.indices(step) for p in parts]
        assert all(len(x) == 4 for x in local)
        np.testing.assert_array_equal(np.concatenate(local), one.indices(step))
        np.testing.assert_array_equal(one.global_indices(step), one.indices(step))


def test_resume_gives_identical_indices():
    run = storage.BatchOrder(num_records=37, global_batch_size=4, seed=2)
    uninterrupted = [run.indices(s).copy() for s in range(40)]
    storage._epoch_permutation.cache_clear()  # a fresh process
    resumed = storage.BatchOrder(num_records=37, global_batch_size=4, seed=2)
    for s in range(17, 40):
        np.testing.assert_array_equal(resumed.indices(s), uninterrupted[s])
    other_seed = storage.BatchOrder(num_records=37, global_batch_size=4, seed=3)
    assert not all(np.array_equal(other_seed.indices(s), uninterrupted[s]) for s in range(9))


def test_indices_cannot_corrupt_the_cached_permutation():
    order = storage.BatchOrder(num_records=16, global_batch_size=4, seed=0)
    first = order.indices(0)
    kept = first.copy()
    first[:] = -1
    np.testing.assert_array_equal(order.indices(0), kept)


def test_order_errors():
    with pytest.raises(ValueError, match="3 records are fewer than one global batch of 8"):
        storage.BatchOrder(num_records=3, global_batch_size=8)
    with pytest.raises(ValueError, match="not divisible by process_count 4"):
        storage.BatchOrder(num_records=30, global_batch_size=6, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        storage.BatchOrder(num_records=30, global_batch_size=6, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="step must be >= 0"):
        storage.BatchOrder(num_records=30, global_batch_size=6).indices(-1)


def test_example_rng():
    draw = lambda *a: storage.example_rng(*a).integers(1 << 62, size=4).tolist()
    assert draw(0, 5, 17) == draw(0, 5, 17)
    assert len({tuple(draw(0, 5, 17)), tuple(draw(0, 5, 18)), tuple(draw(0, 6, 17)), tuple(draw(1, 5, 17))}) == 4
    # Not the stream the epoch permutation draws from (SeedSequence pads with zeros).
    assert draw(0, 2, 0) != np.random.default_rng([0, 2]).integers(1 << 62, size=4).tolist()


def test_shared_scifact_records_round_trip(shared_data, tmp_path):
    from o1_jax.data import prepare

    jsonl = tmp_path / "scifact_train.jsonl"
    assert prepare.main(["--beir", str(shared_data / "scifact"), "--negatives", "15", "--out", str(jsonl)]) == 0
    src = storage.ensure_dataset(jsonl, tmp_path / "cache", num_shards=4)
    records = read_records(jsonl)
    assert len(src) == len(records) == 809
    order = storage.BatchOrder(len(src), global_batch_size=64, seed=0)
    batch = src.__getitems__(order.indices(3).tolist())
    assert batch == [records[i] for i in order.indices(3)]
