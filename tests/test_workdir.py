"""The workdir format: parameters-only restore, workdirs written before the training/ split, model
specs, and file publishing (o1_jax.files)."""

import json
import os
import shutil
import pathlib
import stat

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from o1_jax import files, model_specs
from o1_jax.inference.embedder import O1Embedder
from o1_jax.training import workdir as workdir_lib

OLD = pathlib.Path(__file__).parent / "data" / "old_workdirs"
TEXTS = ["lives in oslo , works as a baker and likes chess .", "bane tosul"]
QUERY = "where does the friend of kamo rizel live ?"


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_a_workdir_written_before_the_split_loads_and_embeds_as_it_did(kind):
    """tests/data/old_workdirs: 2-step runs (a fresh 16-wide model, full and LoRA) written by the code
    of commit 25c286a; reference_embeddings.npz holds what its O1Embedder gave for these texts (one
    device, under tests/conftest.py's XLA settings)."""
    reference = np.load(OLD / "reference_embeddings.npz")
    emb = O1Embedder.from_pretrained(OLD / kind, devices=jax.devices()[:1])  # one device, as the reference
    # To float32 rounding: another CPU's kernels differ by a few ulps (3e-8 seen on an Intel Xeon
    # against the AMD machine that wrote the reference); a wrong restore or format is off by 1e-2 or more.
    np.testing.assert_allclose(emb.encode_corpus(TEXTS), reference[f"{kind}_docs"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(emb.encode_queries([QUERY]), reference[f"{kind}_queries"], rtol=0, atol=1e-6)


def test_from_pretrained_reads_no_optimizer_state(monkeypatch):
    seen = []
    restore = ocp.CheckpointManager.restore

    def spy(self, step, *args, **kwargs):
        seen.append(kwargs.get("args"))
        return restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", spy)
    emb = O1Embedder.from_pretrained(OLD / "full")
    states = [a["state"] for a in seen if a is not None and "state" in a]
    assert len(states) == 1
    state = states[0]
    assert isinstance(state, ocp.args.PyTreeRestore) and state.partial_restore
    assert set(state.item) == {"params"}  # no opt_state, no step: those arrays are never read
    # ... and what it did read is the whole model, on the embedder's replicated sharding, unchanged.
    restored = workdir_lib.restore_params(OLD / "full")
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                           emb.params, restored.params)
    leaf = jax.tree_util.tree_leaves(emb.params)[0]
    assert leaf.sharding.is_fully_replicated


def test_a_missing_workdir_file_is_one_sentence(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no run_config.json \(expected the workdir of a `python -m o1_jax.train` run\)$"):
        workdir_lib.restore_params(tmp_path)
    (tmp_path / "run_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"run_config.json: not valid JSON"):
        workdir_lib.read_run_config(tmp_path)


# ----------------------------------------------------------------------------- model specs


def test_model_specs_resolve_packages_urls_and_folders(tmp_path):
    assert model_specs.resolve("package:o1_jax/models") == pathlib.Path(__file__).parents[1] / "o1_jax" / "models"
    assert str(model_specs.resolve("gs://bucket/run")) == "gs://bucket/run"
    assert model_specs.resolve(str(tmp_path)) == tmp_path
    with pytest.raises(FileNotFoundError, match=r"the Python package 'no_such_package_xyz' is not installed"):
        model_specs.resolve("package:no_such_package_xyz/model", "config.expert.model")
    with pytest.raises(FileNotFoundError, match=r"^config.model.init_from='/nonexistent/x': /nonexistent/x is not a folder"):
        model_specs.resolve("/nonexistent/x", "config.model.init_from")
    with pytest.raises(FileNotFoundError, match=r"has no config.json \(expected a Hugging Face model folder"):
        model_specs.resolve_hf_folder(str(tmp_path), "config.model.init_from")
    with pytest.raises(ValueError, match=r"^config.model.path is empty"):
        model_specs.resolve("", "config.model.path")


# ----------------------------------------------------------------------------- file publishing


def _mkdir_mode(tmp_path) -> int:
    probe = tmp_path / "probe"
    probe.mkdir()
    return stat.S_IMODE(probe.stat().st_mode)


def test_a_staged_folder_appears_whole_with_normal_permissions(tmp_path):
    out = tmp_path / "out"
    with files.staged_folder(out) as staging:
        (staging / "a.txt").write_text("new")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "new"
    assert stat.S_IMODE(out.stat().st_mode) == _mkdir_mode(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "probe"]


def test_a_failed_staged_folder_keeps_what_was_there(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with files.staged_folder(out) as staging:
            (staging / "a.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (out / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(FileExistsError, match=r"out: exists and is not a folder this command wrote"):
        with files.staged_folder(out, may_replace=lambda _: False) as staging:
            (staging / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_atomic_write_is_all_or_nothing(tmp_path):
    path = tmp_path / "sub" / "x.json"
    files.atomic_write_json(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~_umask()
    with pytest.raises(ZeroDivisionError):
        with files.atomic_open(path) as f:
            f.write("partial")
            1 / 0
    assert path.read_text() == '{\n  "a": 1\n}\n' and os.listdir(path.parent) == ["x.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_remote_folder_without_its_commit_file_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "is_remote", lambda path: True)  # epath reads a local folder as a bucket would
    out = tmp_path / "remote"
    files.publish_folder(out, lambda folder: (folder / "t.json").write_text("{}"))
    assert sorted(p.name for p in out.iterdir()) == [files.COMMIT_FILE, "t.json"]
    with files.local_copy(out) as local:
        assert [p.name for p in local.iterdir()] == ["t.json"]
    (out / files.COMMIT_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"no commit_success.txt, so its upload was cut off"):
        with files.local_copy(out):
            pass


def test_thinking_samples_at_the_runs_eval_temperature_and_top_p(tmp_path):
    emb = O1Embedder.from_pretrained(OLD / "full")  # written before these keys: the original's 0.1 / 0.9
    assert (emb.default_sampling(3).temperature, emb.default_sampling(3).top_p) == (0.1, 0.9)
    assert emb.default_sampling(1).temperature == 0  # one thought is greedy
    copy = tmp_path / "w"
    shutil.copytree(OLD / "full", copy)
    saved = json.loads((copy / "run_config.json").read_text())
    saved["config"]["eval"].update(temperature=0.3, top_p=0.8)
    (copy / "run_config.json").write_text(json.dumps(saved))
    emb = O1Embedder.from_pretrained(copy)
    assert (emb.default_sampling(3).temperature, emb.default_sampling(3).top_p) == (0.3, 0.8)
    assert O1Embedder.from_pretrained(copy, think_temperature=0.5).default_sampling(2).temperature == 0.5
