"""Sharded corpus encoding (o1_jax.retrieval.shards and `index build / merge`): processes, resume,
damaged shards, mismatched settings. A fake deterministic encoder stands in for the model, except
in the end-to-end tests of the real command with a tiny random Llama."""

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from o1_jax import index
from o1_jax.retrieval import shards
from o1_jax.retrieval.vector_index import Index
from tests.tiny_models import save_tiny_hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 16
SHARD_SIZE = 32
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
IDS = [f"d{i:03d}" for i in range(300)]  # 10 shards of 32, the last of 12
DOCS = [{"title": WORDS[i % 12], "text": " ".join(WORDS[(i * j) % 12] for j in range(1 + i % 17))} for i in range(300)]
INFO = {"model_fingerprint": "fp-a", "pooling": "last <emb> token, L2-normalised", "max_doc_tokens": 256}


def fake_vector(doc) -> np.ndarray:
    """A fixed random unit vector per document text: the same document always encodes the same."""
    seed = int.from_bytes(hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class Killed(Exception):
    pass


class FakeEncoder:
    """Counts its calls (one per shard) and, with `fail_after=k`, raises on call k + 1 like a killed build."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = [], fail_after

    def __call__(self, docs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise Killed(f"killed after {len(self.calls)} shards")
        self.calls.append(len(docs))
        return np.stack([fake_vector(d) for d in docs])


REFERENCE = np.stack([fake_vector(d) for d in DOCS])  # the whole corpus, encoded in one go


def build(folder, encoder=None, ids=IDS, docs=DOCS, info=INFO, logs=None, **kwargs):
    kwargs = {"shard_size": SHARD_SIZE, **kwargs}
    return shards.build_shards(folder, ids, docs, encoder or FakeEncoder(), embedding_info=info,
                               encode_options={"dtype": "float32"}, corpus_path="corpus.jsonl",
                               log=(logs.append if logs is not None else lambda line: None), **kwargs)


def assert_merges_to_reference(folder):
    embeddings, ids, info = shards.merged_shards(folder)
    assert ids == IDS and info == INFO
    np.testing.assert_array_equal(embeddings, REFERENCE)


def merge_error(folder) -> str:
    with pytest.raises(shards.ShardError) as e:
        shards.merged_shards(folder)
    assert "\n" not in str(e.value)
    return str(e.value)


def rewrite_ids(folder, shard, ids):
    """Replaces a shard's ids and makes its manifest agree, as a bug (not damage) would."""
    paths = shards.shard_paths(folder, shard)
    data = json.dumps(ids).encode()
    paths.ids.write_bytes(data)
    manifest = json.loads(paths.manifest.read_text())
    manifest["files"][paths.ids.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    paths.manifest.write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------- processes


def test_layout_is_a_fixed_slicing_of_the_corpus():
    assert shards.shard_count(300, 32) == 10 and shards.shard_count(320, 32) == 10 and shards.shard_count(1, 32) == 1
    assert shards.shard_bounds(0, 300, 32) == (0, 32) and shards.shard_bounds(9, 300, 32) == (288, 300)
    assert shards.owned_shards(10, 1, 3) == [1, 4, 7]
    assert sorted(s for i in range(3) for s in shards.owned_shards(10, i, 3)) == list(range(10))


def test_two_processes_then_merge_equal_one_process(tmp_path):
    one = build(tmp_path / "one")
    assert (one.encoded_shards, one.reused_shards, one.encoded_docs) == (list(range(10)), [], 300)
    encoders = [FakeEncoder(), FakeEncoder()]
    for i, encoder in enumerate(encoders):
        report = build(tmp_path / "two", encoder, process_index=i, process_count=2)
        assert report.encoded_shards == list(range(i, 10, 2))
    assert [len(e.calls) for e in encoders] == [5, 5] and sum(map(sum, (e.calls for e in encoders))) == 300
    assert_merges_to_reference(tmp_path / "one")
    assert_merges_to_reference(tmp_path / "two")
    # Each process wrote its own build file, with its throughput.
    for i in range(2):
        record = json.loads((tmp_path / "two" / f"build-process-{i}-of-2.json").read_text())
        assert record["status"] == "finished" and record["encoded_docs"] == 160 - 20 * i
        assert record["docs_per_s"] > 0 and record["settings"]["shard_size"] == SHARD_SIZE
        assert record["settings"]["corpus"]["num_docs"] == 300
    manifest = json.loads((tmp_path / "two" / "shard-00009.json").read_text())
    assert (manifest["shard"], manifest["num_docs"], manifest["first"], manifest["last"], manifest["dim"]) == \
        (9, 12, 288, 299, DIM)
    # The saved index is the one Index.build makes of the whole corpus at once.
    saved = shards.merge_shards(tmp_path / "two", tmp_path / "idx", mode="exact")
    loaded = Index.load(tmp_path / "idx", expected_dim=DIM, expected_info=INFO)
    assert loaded.doc_ids == saved.doc_ids == IDS and loaded.mode == "exact"
    np.testing.assert_array_equal(np.load(tmp_path / "idx" / "dataset.npy"), REFERENCE)


# ----------------------------------------------------------------------------- resume


def test_a_killed_build_resumes_without_re_encoding_finished_shards(tmp_path):
    with pytest.raises(Killed):
        build(tmp_path / "s", FakeEncoder(fail_after=4))
    assert sorted(p.name for p in (tmp_path / "s").glob("shard-*.json") if ".ids" not in p.name) == \
        [f"shard-{s:05d}.json" for s in range(4)]
    with pytest.raises(shards.ShardError, match="shard-00004.json: missing, so shard 4 of 10"):
        shards.merged_shards(tmp_path / "s")
    encoder, logs = FakeEncoder(), []
    report = build(tmp_path / "s", encoder, logs=logs)
    assert (report.reused_shards, report.encoded_shards) == ([0, 1, 2, 3], [4, 5, 6, 7, 8, 9])
    assert len(encoder.calls) == 6 and sum(encoder.calls) == 300 - 4 * SHARD_SIZE
    assert not [line for line in logs if "re-encoding" in line]  # nothing was damaged
    assert_merges_to_reference(tmp_path / "s")
    again = FakeEncoder()
    assert build(tmp_path / "s", again).reused_shards == list(range(10)) and again.calls == []


def test_a_killed_process_of_two_resumes_alone(tmp_path):
    build(tmp_path / "s", process_index=0, process_count=2)
    with pytest.raises(Killed):
        build(tmp_path / "s", FakeEncoder(fail_after=2), process_index=1, process_count=2)
    encoder = FakeEncoder()
    report = build(tmp_path / "s", encoder, process_index=1, process_count=2)
    assert (report.reused_shards, report.encoded_shards, len(encoder.calls)) == ([1, 3], [5, 7, 9], 3)
    assert_merges_to_reference(tmp_path / "s")


def flip_bytes(paths):
    data = bytearray(paths.vectors.read_bytes())
    data[-20:-10] = bytes(b ^ 0xFF for b in data[-20:-10])
    paths.vectors.write_bytes(bytes(data))


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def half_written(paths):
    """A process killed while writing: no manifest, a partial array, an abandoned temporary file."""
    paths.manifest.unlink()
    truncate(paths.vectors)
    (paths.vectors.parent / f".{paths.vectors.name}.tmp-123-abcdef01").write_bytes(b"\x93NUMPY")


CORRUPTIONS = {
    "flipped npy bytes": (flip_bytes, "shard-00002.npy: its sha256 differs from its manifest"),
    "deleted manifest": (lambda p: p.manifest.unlink(), "shard-00002.json: missing, so shard 2"),
    "truncated ids": (lambda p: truncate(p.ids), r"shard-00002.ids.json: is \d+ bytes, its manifest"),
    "truncated npy": (lambda p: truncate(p.vectors), r"shard-00002.npy: is \d+ bytes, its manifest"),
    "deleted npy": (lambda p: p.vectors.unlink(), "shard-00002.npy: missing"),
    "half written": (half_written, "shard-00002.json: missing, so shard 2"),
    "manifest not JSON": (lambda p: p.manifest.write_text("{"), "shard-00002.json: is not valid JSON"),
    "ids of other documents": (lambda p: rewrite_ids(p.ids.parent, 2, ["intruder", *IDS[65:96]]),
                               "shard-00002.ids.json: its ids are not the corpus's documents 64..95"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_damaged_shard_is_refused_by_merge_and_re_encoded_on_resume(tmp_path, kind):
    damage, message = CORRUPTIONS[kind]
    build(tmp_path / "s")
    damage(shards.shard_paths(tmp_path / "s", 2))
    error = merge_error(tmp_path / "s")
    assert re.search(message, error) and str(tmp_path / "s" / "shard-00002") in error, error
    encoder, logs = FakeEncoder(), []
    report = build(tmp_path / "s", encoder, logs=logs)
    assert report.encoded_shards == [2] and encoder.calls == [SHARD_SIZE]
    damaged = [line for line in logs if "re-encoding shard 2" in line]
    assert len(damaged) == 1 and str(tmp_path / "s" / "shard-00002") in damaged[0], logs
    assert_merges_to_reference(tmp_path / "s")
    assert not list((tmp_path / "s").glob(".*"))  # a killed writer's temporary file went with the old shard


# ----------------------------------------------------------------------------- other settings


SETTINGS_CHANGES = {
    "shard size": (dict(shard_size=16), "built with shard_size 32, this run asks for shard_size 16"),
    "model": (dict(info={**INFO, "model_fingerprint": "fp-b"}),
              "built with model_fingerprint='fp-a', this run's model gives model_fingerprint='fp-b'"),
    "corpus size": (dict(ids=IDS[:-1], docs=DOCS[:-1]),
                    "built with a corpus of 300 documents, this run's corpus has 299"),
    "corpus order": (dict(ids=IDS[::-1], docs=DOCS[::-1]), "this run's corpus has other ids or another order"),
    "corpus text": (dict(docs=[*DOCS[:-1], {"title": "", "text": "edited"}]),
                    "a corpus with the same ids as this run's but other titles or texts"),
}


@pytest.mark.parametrize("change", SETTINGS_CHANGES)
def test_resuming_with_other_settings_is_one_clear_error(tmp_path, change):
    kwargs, message = SETTINGS_CHANGES[change]
    with pytest.raises(Killed):
        build(tmp_path / "s", FakeEncoder(fail_after=3))
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    encoder = FakeEncoder()
    with pytest.raises(shards.ShardError, match=message) as e:
        build(tmp_path / "s", encoder, **kwargs)
    assert str(e.value).startswith(f"{tmp_path / 's' / 'build-process-0-of-1.json'}: these shards were built with")
    assert "\n" not in str(e.value) and encoder.calls == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before  # nothing touched
    # Another process count is the same build: the shards do not depend on it.
    build(tmp_path / "s", process_index=1, process_count=3)


# ----------------------------------------------------------------------------- merge


def test_merge_refuses_a_missing_shard_a_duplicate_id_and_a_mixed_folder(tmp_path):
    build(tmp_path / "s", process_index=0, process_count=2)
    assert merge_error(tmp_path / "s") == (
        f"{tmp_path / 's' / 'shard-00001.json'}: missing, so shard 1 of 10 (corpus positions 32..63) is not "
        "finished; rerun the build process that owns it")
    build(tmp_path / "s", process_index=1, process_count=2)
    assert_merges_to_reference(tmp_path / "s")
    rewrite_ids(tmp_path / "s", 3, [IDS[5], *IDS[97:128]])
    assert merge_error(tmp_path / "s") == (
        f"{tmp_path / 's' / 'shard-00003.ids.json'}: the id 'd005' is also in shard 0; expected every corpus "
        "id exactly once")
    assert merge_error(tmp_path / "nothing").endswith("nothing: no such folder (expected the shards folder of an "
                                                      "index build)")
    other, mixed = tmp_path / "other", tmp_path / "mixed"
    build(other, shard_size=16)  # 19 shards
    build(mixed)
    (other / "shard-00018.json").rename(mixed / "shard-00018.json")
    assert "shard-00018.json: is beyond the corpus's 10 shards of 32 documents" in merge_error(mixed)


def test_a_folder_of_other_files_is_refused_and_removal_keeps_them(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(shards.ShardError, match="s: holds notes.txt, which is not a file of an index build's shards"):
        build(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").unlink()
    build(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").write_text("mine")
    shards.remove_shards(tmp_path / "s")
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["notes.txt"]
    (tmp_path / "s" / "notes.txt").unlink()
    build(tmp_path / "s")
    shards.remove_shards(tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(shard_size=0), "shard_size must be a positive integer, got 0"),
    (dict(process_count=0), "process_count must be a positive integer, got 0"),
    (dict(process_index=2, process_count=2), r"process_index must be in \[0, 1\] for process_count 2, got 2"),
    (dict(process_index=-1), r"process_index must be in \[0, 0\] for process_count 1, got -1"),
    (dict(ids=IDS[:2], docs=DOCS[:3]), "got 2 ids for 3 documents"),
    (dict(ids=["a", "a"], docs=DOCS[:2]), "the corpus holds the id 'a' more than once"),
])
def test_bad_build_arguments_are_one_sentence(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(tmp_path / "s", **kwargs)
    assert not (tmp_path / "s").exists()


def test_an_encoder_of_the_wrong_shape_or_nan_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"the encoder returned shape \(31, 16\) for shard 0's 32 documents"):
        build(tmp_path / "s", lambda docs: REFERENCE[: len(docs) - 1])
    nan = np.array(REFERENCE[:SHARD_SIZE])
    nan[3, 0] = np.nan
    with pytest.raises(ValueError, match="the encoder returned NaN or infinity for document 'd003' of shard 0"):
        build(tmp_path / "s", lambda docs: nan)


# ----------------------------------------------------------------------------- the command, fake model


class FakeEmbedder:
    """What `index build` uses of O1Embedder, with the fake encoder behind it."""

    def __init__(self, fail_after=None):
        self.params = {"w": np.arange(4, dtype=np.float32)}
        self.formatter = type("F", (), {"max_doc_tokens": 256})()
        self.encoder = FakeEncoder(fail_after)
        self.model = type("M", (), {"cfg": type("C", (), {"hidden_size": DIM})()})()

    def encode_corpus(self, docs, batch_size=None):
        return self.encoder([doc if isinstance(doc, str) else dict(doc) for doc in docs])


def write_corpus(path, ids=IDS, docs=DOCS):
    path.write_text("".join(json.dumps({"_id": i, **d}) + "\n" for i, d in zip(ids, docs)))
    return path


def run_main(argv, capsys):
    try:
        code = index.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_the_command_builds_in_shards_resumes_and_merges(tmp_path, monkeypatch, capsys):
    embedders = []

    def fake_from_pretrained(path, dtype="float32", **kwargs):
        embedders.append(FakeEmbedder(fail_after=2 if len(embedders) == 0 else None))
        return embedders[-1]

    monkeypatch.setattr(index.O1Embedder, "from_pretrained", fake_from_pretrained)
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    base = ["build", "--model", "m", "--corpus", corpus, "--shard_size", SHARD_SIZE, "--mode", "exact"]
    with pytest.raises(Killed):  # one process, killed after 2 shards; rerun: resumed
        run_main([*base, "--out", tmp_path / "one"], capsys)
    assert (tmp_path / "one.shards" / "shard-00001.json").is_file() and not (tmp_path / "one").exists()
    code, out = run_main([*base, "--out", tmp_path / "one"], capsys)
    assert code == 0, out.err
    assert embedders[1].encoder.calls and len(embedders[1].encoder.calls) == 8
    assert "documents/s" in out.out and f"-> {tmp_path / 'one'}" in out.out
    assert not (tmp_path / "one.shards").exists()  # removed after a 1-process build
    for i in range(2):  # two processes into --shards, then merge
        code, out = run_main([*base, "--shards", tmp_path / "sh", "--process_index", i, "--process_count", 2], capsys)
        assert code == 0, out.err
        assert f"python -m o1_jax.index merge --shards {tmp_path / 'sh'} --out INDEX_DIR" in out.out
    assert not (tmp_path / "two").exists()
    code, out = run_main(["merge", "--shards", tmp_path / "sh", "--out", tmp_path / "two", "--mode", "exact"], capsys)
    assert code == 0, out.err
    one, two = Index.load(tmp_path / "one"), Index.load(tmp_path / "two")
    assert one.doc_ids == two.doc_ids == IDS and one.embedding_info == two.embedding_info
    assert one.embedding_info["max_doc_tokens"] == 256 and len(one.embedding_info["model_fingerprint"]) == 64
    np.testing.assert_array_equal(np.load(tmp_path / "one" / "dataset.npy"), REFERENCE)
    np.testing.assert_array_equal(np.load(tmp_path / "two" / "dataset.npy"), REFERENCE)
    # The outputs' rule: an existing index is refused before any work, unless --overwrite.
    code, out = run_main(["merge", "--shards", tmp_path / "sh", "--out", tmp_path / "two"], capsys)
    assert code == 2 and out.err == f"error: {tmp_path / 'two'}: exists and is not empty; pass --overwrite to replace it\n"
    code, out = run_main(["merge", "--shards", tmp_path / "sh", "--out", tmp_path / "two", "--overwrite"], capsys)
    assert code == 0, out.err
    # A merge of an unfinished folder is one sentence naming the shard.
    shards.shard_paths(tmp_path / "sh", 1).vectors.unlink()
    code, out = run_main(["merge", "--shards", tmp_path / "sh", "--out", tmp_path / "three"], capsys)
    assert code == 2 and out.err.count("\n") == 1 and f"error: {tmp_path / 'sh' / 'shard-00001.npy'}: missing" in out.err
    # Another shard size on the same shards folder: one sentence, before any encoding.
    calls = len(embedders)
    code, out = run_main([*base[:-4], "--shard_size", 16, "--shards", tmp_path / "sh", "--process_count", 2], capsys)
    assert code == 2 and out.err.count("\n") == 1 and "built with shard_size 32, this run asks for shard_size 16" in out.err
    assert len(embedders) == calls + 1 and embedders[-1].encoder.calls == []


@pytest.mark.parametrize("flags, message", [
    (["--out", "x", "--shard_size", "0"], "--shard_size must be >= 1, got 0"),
    (["--out", "x", "--process_count", "0"], "--process_count must be >= 1, got 0"),
    (["--out", "x", "--process_index", "2", "--process_count", "2"],
     r"--process_index must be in [0, 1] for --process_count 2, got 2"),
    (["--out", "x", "--process_index", "-1"], r"--process_index must be in [0, 0] for --process_count 1, got -1"),
    (["--shards", "s"], "--out is required"),
    (["--process_count", "2"], "--out is required"),
])
def test_bad_command_flags_are_one_error_line_before_any_work(flags, message, monkeypatch, capsys):
    monkeypatch.setattr(index.O1Embedder, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    code, out = run_main(["build", "--model", "m", "--corpus", "c.jsonl", *flags], capsys)
    assert code == 2 and out.err.startswith(f"error: {message}") and out.err.count("\n") == 1, out.err


def test_the_command_refuses_a_shards_folder_of_other_files_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(index.O1Embedder, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "idx.shards").mkdir()
    (tmp_path / "idx.shards" / "notes.txt").write_text("x")
    code, out = run_main(["build", "--model", "m", "--corpus", "c.jsonl", "--out", tmp_path / "idx"], capsys)
    assert code == 2 and "idx.shards: holds notes.txt, which is not a file of an index build's shards" in out.err


# ----------------------------------------------------------------------------- the command, a real tiny model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random Llama with the synthetic tokenizer, saved as a plain HF folder (as in test_embedder.py)."""
    return pathlib.Path(save_tiny_hf(tmp_path_factory.mktemp("hf") / "tiny"))


NAMES = "kamo rizel bane tosul lives in oslo the friend of neighbour cousin".split()


def real_corpus(path, n=40):
    """n BEIR lines of 2..15 synthetic words, so one shard holds several length buckets."""
    rng = np.random.default_rng(0)
    lines = [{"_id": f"doc{i}", "title": " ".join(rng.choice(NAMES, 2)),
              "text": " ".join(rng.choice(NAMES, int(rng.integers(2, 16))))} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return [line["_id"] for line in lines]


def test_the_real_command_gives_the_same_index_with_one_or_two_processes(hf_folder, tmp_path, capsys):
    ids = real_corpus(tmp_path / "corpus.jsonl")
    base = ["build", "--model", hf_folder, "--corpus", tmp_path / "corpus.jsonl", "--shard_size", 16,
            "--batch_size", 8]
    for i in range(2):
        code, out = run_main([*base, "--shards", tmp_path / "sh", "--process_index", i, "--process_count", 2], capsys)
        assert code == 0, out.err
    code, out = run_main(["merge", "--shards", tmp_path / "sh", "--out", tmp_path / "two"], capsys)
    assert code == 0, out.err
    code, out = run_main([*base, "--out", tmp_path / "one"], capsys)
    assert code == 0, out.err
    one, two = Index.load(tmp_path / "one"), Index.load(tmp_path / "two")
    assert one.doc_ids == two.doc_ids == ids and one.mode == two.mode == "exact"
    assert one.embedding_info == two.embedding_info
    # Shard s holds the same documents in both builds, so each batch is the same computation: equal bits.
    vectors = np.load(tmp_path / "one" / "dataset.npy")
    np.testing.assert_array_equal(vectors, np.load(tmp_path / "two" / "dataset.npy"))
    assert vectors.shape == (40, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=0, atol=1e-5)


@pytest.mark.slow  # two real subprocesses at once, each importing JAX and loading the model: ~12 s on 2 cores
def test_two_real_build_processes_at_once_then_merge(hf_folder, tmp_path, capsys):
    ids = real_corpus(tmp_path / "corpus.jsonl")
    base = [sys.executable, "-m", "o1_jax.index", "build", "--model", str(hf_folder), "--corpus",
            str(tmp_path / "corpus.jsonl"), "--shard_size", "16", "--batch_size", "8", "--shards", str(tmp_path / "sh"),
            "--process_count", "2"]
    procs = [subprocess.Popen([*base, "--process_index", str(i)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    code, out = run_main(["merge", "--shards", tmp_path / "sh", "--out", tmp_path / "two"], capsys)
    assert code == 0, out.err
    code, out = run_main(["build", "--model", hf_folder, "--corpus", tmp_path / "corpus.jsonl", "--shard_size", 16,
                          "--batch_size", 8, "--out", tmp_path / "one"], capsys)
    assert code == 0, out.err
    assert Index.load(tmp_path / "two").doc_ids == ids
    # The subprocesses compile with the same flags (conftest's environment is inherited): equal bits.
    np.testing.assert_array_equal(np.load(tmp_path / "one" / "dataset.npy"), np.load(tmp_path / "two" / "dataset.npy"))
