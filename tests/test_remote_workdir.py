"""A gs:// workdir: trained into, resumed from and restored from a fake GCS (a local folder behind fsspec)."""

import importlib
import json
import pathlib

import jax
import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from orbax.checkpoint._src.path import gcs_utils

from o1_jax import export, files
from o1_jax.training import batches, loop, trainable_params, workdir as workdir_lib
from o1_jax.inference.embedder import O1Embedder
from o1_jax.metrics import MetricWriter
from test_train import tiny_config


@pytest.fixture
def gcs(tmp_path, monkeypatch) -> pathlib.Path:
    """Serves `gs://BUCKET/PATH` from the returned folder's BUCKET/PATH, to epath (fsspec) and orbax (TensorStore).

    Like GCS, the fake refuses appends. Unlike it, it has real folders and atomic renames, so the tests
    do not show that o1_jax avoids relying on those; the code says where it does.
    """
    root = tmp_path / "gcs"
    root.mkdir()

    class FakeGCS(DirFileSystem):
        protocol = ("gs", "gcs")
        cachable = False

        def __init__(self, *args, **options):  # gcsfs options such as finalize_on_close mean nothing here
            super().__init__(path=str(root), fs=LocalFileSystem(auto_mkdir=True))

        def open(self, path, mode="rb", *args, **kwargs):
            if "a" in mode:
                raise OSError(f"{path}: GCS objects cannot be appended to")
            return super().open(path, mode, *args, **kwargs)

    registry = importlib.import_module("fsspec.registry")._registry  # `fsspec.registry` is a read-only view
    for protocol in FakeGCS.protocol:
        monkeypatch.setitem(registry, protocol, FakeGCS)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()  # epath keeps one filesystem per protocol
    # orbax writes arrays through TensorStore's own GCS driver, and asks the GCS API about the bucket.
    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                        lambda path: {"driver": "file", "path": str(root / path.removeprefix("gs://"))})
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    monkeypatch.setattr(files, "LOCAL_CACHE_ROOT", str(tmp_path / "local_cache"))
    yield root
    epath_backend.fsspec_backend._get_filesystem.cache_clear()


def logged_steps(path: pathlib.Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_metric_writer_copies_whole_files_to_a_remote_workdir(gcs):
    stored = gcs / "bucket" / "run"
    writer = MetricWriter("gs://bucket/run")
    writer.write(1, {"loss": 1.0})
    assert not (stored / "metrics.jsonl").exists()  # copied at flush (each checkpoint) and close only
    writer.flush()
    assert logged_steps(stored / "metrics.jsonl") == [1]
    writer.write(2, {"loss": 0.5})
    writer.close()
    assert not pathlib.Path(writer._local).exists()

    with MetricWriter("gs://bucket/run", purge_step=2) as resumed:  # continues the file, a new event file
        resumed.write(3, {"loss": 0.25})
    assert logged_steps(stored / "metrics.jsonl") == [1, 2, 3]
    events = list((stored / "tensorboard").iterdir())
    assert len(events) == 2 and all(e.name.startswith("events.out.tfevents.") for e in events)


def test_a_remote_data_cache_is_refused(gcs):
    with pytest.raises(ValueError, match=r"cache_dir='gs://bucket/cache': expected a local folder"):
        batches.data_cache_dir(tiny_config(**{"data.cache_dir": "gs://bucket/cache"}), epath.Path("gs://bucket/run"))


def test_train_resume_and_restore_in_a_gs_workdir(gcs, tmp_path, capsys):
    # A constant learning rate: 4 steps continued to 6 are then the same as 6 steps in one run.
    constant = {"optimizer.decay": "constant", "optimizer.warmup_steps": 0}
    reference = loop.train(tiny_config(**constant, **{"train.num_steps": 6}), tmp_path / "local")
    ref = {h["step"]: h["loss"] for h in reference.history}
    workdir, stored = "gs://bucket/run", gcs / "bucket" / "run"

    first = loop.train(tiny_config(**constant, **{"train.num_steps": 4}), workdir)
    assert json.loads((stored / "run_config.json").read_text())["config"]["train"]["num_steps"] == 4
    assert {"tokenizer.json", files.COMMIT_FILE} <= {p.name for p in (stored / "tokenizer").iterdir()}
    assert logged_steps(stored / "metrics.jsonl") == [1, 2, 3, 4]
    assert sorted(int(p.name) for p in (stored / "checkpoints").iterdir()) == [2, 4]
    # The array_record cache stays on this machine's disk.
    assert not (stored / "data_cache").exists() and (tmp_path / "local_cache").is_dir()
    assert f"data cache: {tmp_path / 'local_cache'}" in capsys.readouterr().out

    resumed = loop.train(tiny_config(**constant, **{"train.num_steps": 6}), workdir)
    assert [h["step"] for h in resumed.history] == [5, 6]
    for h in first.history + resumed.history:
        assert h["loss"] == pytest.approx(ref[h["step"]], rel=1e-6), h["step"]
    assert logged_steps(stored / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]
    assert len(list((stored / "tensorboard").iterdir())) == 2
    assert sorted(int(p.name) for p in (stored / "checkpoints").iterdir()) == [2, 4, 6]

    restored = workdir_lib.restore_params(workdir)
    params, tokenizer, config = restored.params, restored.tokenizer, restored.config
    expected = trainable_params.combine(resumed.state["params"], resumed.frozen, sorted(
        tokenizer.convert_tokens_to_ids(["<query>", "</query>", "<thought>", "<emb>"])))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, expected)
    assert config.train.num_steps == 6
    emb = O1Embedder.from_pretrained(workdir)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), emb.params, params)
    # What the export reads before restoring (the restore itself is restore_params's).
    export.check_destination(epath.Path(workdir), tmp_path / "export", overwrite=False)
    assert export.resolve_step(epath.Path(workdir), None) == 6 and export.read_eval_results(epath.Path(workdir)) == []

    # A tokenizer upload cut off before its commit file is not trusted.
    (stored / "tokenizer" / files.COMMIT_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"gs://bucket/run/tokenizer: no commit_success.txt"):
        workdir_lib.restore_params(workdir)
