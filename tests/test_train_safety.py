"""Training safety: corrupted checkpoints, non-finite steps, refused resumes, a full disk."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from o1_jax import export as export_mod, forward
from o1_jax.training import batches as batches_lib, loop, run as run_lib, workdir as workdir_lib
from o1_jax.checkpoint import MANIFEST, Checkpointer
from o1_jax.sharding import make_mesh
from tests.test_checkpoint import _abstract, _state
from tests.test_train import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Four steps, a checkpoint every two, on one device: quick, and restored by every test below. A
# constant learning rate, so a resume to another num_steps sees the same updates.
BASE = {"train.num_steps": 4, "train.checkpoint_every": 2, "optimizer.decay": "constant",
        "optimizer.warmup_steps": 0}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """(workdir, {step: loss}) of a finished 4-step run with checkpoints 2 and 4."""
    workdir = tmp_path_factory.mktemp("safety") / "base"
    result = loop.train(tiny_config(**BASE), workdir, devices=jax.devices()[:1])
    return workdir, {h["step"]: h["loss"] for h in result.history}


@pytest.fixture
def workdir(base_run, tmp_path):
    shutil.copytree(base_run[0], tmp_path / "w")
    return tmp_path / "w"


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _flip_4kib(step_dir: pathlib.Path) -> pathlib.Path:
    """Flips 4 KiB in the middle of the step's largest array file (as a bad disk sector would); returns it."""
    biggest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    mid = len(data) // 2 - 2048
    data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
    biggest.write_bytes(bytes(data))
    return biggest


def _nan_at(monkeypatch, steps):
    """Makes the loss of the given (1-based) steps NaN, inside the real jitted step."""
    local_batch = batches_lib.Batches.local_batch

    def poisoned_batch(self, step):
        batch = local_batch(self, step)
        n = batch["query_ids"].shape[0]
        batch["poison"] = np.full((n,), np.nan if step + 1 in steps else 1.0, np.float32)
        return batch

    joint_loss = forward.joint_loss

    def poisoned_loss(model, params, batch, loss_cfg):
        batch = dict(batch)
        poison = batch.pop("poison")
        total, metrics = joint_loss(model, params, batch, loss_cfg)
        total = total * poison[0]
        return total, dict(metrics, loss=total)

    monkeypatch.setattr(batches_lib.Batches, "local_batch", poisoned_batch)
    monkeypatch.setattr(forward, "joint_loss", poisoned_loss)


# ----------------------------------------------------------------------------- corrupted checkpoints


def test_a_corrupted_step_falls_back_to_the_previous_intact_one(base_run, workdir, capsys):
    bad = _flip_4kib(workdir / "checkpoints" / "4")
    assert json.loads((workdir / "checkpoints" / "4" / MANIFEST).read_text())["step"] == 4
    resumed = loop.train(tiny_config(**{**BASE, "train.num_steps": 6}), workdir, devices=jax.devices()[:1])
    out = capsys.readouterr().out
    assert f"{bad}: its sha256 differs from the one in {MANIFEST}, so step 4 is corrupted; falling back to step 2" in out
    assert [h["step"] for h in resumed.history] == [3, 4, 5, 6]  # from step 2, the same batches
    for h in resumed.history[:2]:
        assert h["loss"] == pytest.approx(base_run[1][h["step"]], rel=1e-6)
    assert _steps(workdir) == [2, 4, 6] and (workdir / "checkpoints" / "4.corrupt").is_dir()
    assert all((workdir / "checkpoints" / str(s) / MANIFEST).is_file() for s in (4, 6))
    assert np.isfinite(resumed.history[-1]["loss"])


def test_no_intact_step_left_is_one_sentence_naming_the_file(workdir, tmp_path):
    _flip_4kib(workdir / "checkpoints" / "4")
    # export publishes exactly the step its card names: a corrupted latest step stops it, writing nothing.
    with pytest.raises(ValueError, match=r"checkpoints/4/state/.*: its sha256 differs .* so step 4 is corrupted$"):
        export_mod.export(workdir, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))

    bad = _flip_4kib(workdir / "checkpoints" / "2")
    with pytest.raises(ValueError) as e:
        workdir_lib.restore_params(workdir)
    assert str(e.value) == (f"{bad}: its sha256 differs from the one in {MANIFEST}, so step 2 is corrupted, and no "
                            f"older intact step remains in {workdir / 'checkpoints'}")


@pytest.mark.parametrize("name", ["_CHECKPOINT_METADATA", "meta/metadata", "config/metadata", "state/_METADATA"])
def test_garbage_in_a_metadata_file_names_the_file(tmp_path, name, capsys):
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    state = _state(mesh)
    with Checkpointer(tmp_path, save_every=1, async_save=False, config_fingerprint={"a": 1}) as ckpt:
        ckpt.save(1, state, {"i": 1})
        ckpt.save(2, state, {"i": 2})
    target = tmp_path / "2" / name
    target.write_text('{"truncated": ')
    ckpt = Checkpointer(tmp_path, save_every=1, config_fingerprint={"a": 1})
    _, meta = ckpt.restore(None, _abstract(state, mesh))  # the manifest catches it; step 1 is intact
    assert meta == {"i": 1}
    assert f"{target}: its sha256 differs from the one in {MANIFEST}, so step 2 is corrupted; falling back to step 1" \
        in capsys.readouterr().out

    # Without a manifest (a run killed before writing it), the file that does not parse is named.
    (tmp_path / "2" / MANIFEST).unlink()
    if name == "_CHECKPOINT_METADATA":  # orbax itself needs nothing from it to restore
        assert ckpt.restore(2, _abstract(state, mesh))[1] == {"i": 2}
        return
    with pytest.raises(ValueError, match=rf"^{target}: not valid JSON \(.*\), so step 2 is corrupted$"):
        ckpt.restore(2, _abstract(state, mesh))
    ckpt.close()


def test_a_step_without_a_manifest_is_restored_unverified(tmp_path, capsys):
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    state = _state(mesh)
    with Checkpointer(tmp_path, save_every=1, async_save=False) as ckpt:
        ckpt.save(3, state, {"i": 3})
    (tmp_path / "3" / MANIFEST).unlink()  # as a kill between orbax's commit and the manifest write leaves it
    restored, meta = Checkpointer(tmp_path, save_every=1).restore(None, _abstract(state, mesh))
    assert meta == {"i": 3}
    np.testing.assert_array_equal(np.asarray(restored["params"]["layer"]["kernel"]),
                                  np.asarray(state["params"]["layer"]["kernel"]))
    assert f"no {MANIFEST}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- non-finite steps


def test_a_non_finite_loss_stops_before_any_save(tmp_path, monkeypatch):
    _nan_at(monkeypatch, {3})
    config = tiny_config(**{"train.num_steps": 6, "train.checkpoint_every": 2, "train.keep_checkpoints": 1})
    with pytest.raises(FloatingPointError, match=r"^step 3: the loss is nan and grad_norm is nan, so training stopped without saving"):
        loop.train(config, tmp_path / "w", devices=jax.devices()[:1])
    assert _steps(tmp_path / "w") == [2]  # keep-N did not drop the good step for a bad one
    params = workdir_lib.restore_params(tmp_path / "w").params
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))


def test_tolerated_non_finite_steps_skip_the_update(tmp_path, monkeypatch, capsys):
    _nan_at(monkeypatch, {3, 5, 6})
    config = tiny_config(**{"train.num_steps": 8, "train.checkpoint_every": 2, "train.max_nonfinite_steps": 1})
    with pytest.raises(FloatingPointError, match=r"^step 6: the loss is nan and grad_norm is nan, .*\(2 in a row, more than train\.max_nonfinite_steps=1\)$"):
        loop.train(config, tmp_path / "w", devices=jax.devices()[:1])
    assert "step 3: the loss is nan and grad_norm is nan; its update was skipped" in capsys.readouterr().out
    assert _steps(tmp_path / "w") == [2, 4]  # step 4 came after a skipped step: saved, finite
    tokenizer = run_lib.load_tokenizer(config, None)
    run = run_lib.build_run(config, tokenizer, len(tokenizer), config.train.num_steps, devices=jax.devices()[:1])
    with run.checkpointer(tmp_path / "w") as ckpt:
        state, meta = ckpt.restore(4, run.abstract_state())
    assert meta["step"] == 4 and int(state["step"]) == 4
    assert int(state["opt_state"][1][0].count) == 3  # Adam updated on steps 1, 2 and 4; step 3 was skipped


def test_export_refuses_non_finite_tensors_and_writes_nothing(workdir, tmp_path, monkeypatch):
    restore = workdir_lib.restore_params

    def with_a_nan(*args, **kwargs):
        restored = restore(*args, **kwargs)
        q = restored.params["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
        restored.params["model"]["layers"]["self_attn"]["q_proj"]["kernel"] = q.at[1, 0, 0].set(np.inf)
        return restored

    monkeypatch.setattr(workdir_lib, "restore_params", with_a_nan)
    with pytest.raises(ValueError, match=r"^params: tensor model\.layers\.1\.self_attn\.q_proj\.weight .* non-finite"):
        export_mod.export(workdir, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_save_refuses_a_non_finite_state(tmp_path):
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    state = _state(mesh)
    state["params"]["embed"] = state["params"]["embed"].at[0, 0].set(np.nan)
    with Checkpointer(tmp_path, save_every=1, async_save=False) as ckpt:
        with pytest.raises(FloatingPointError, match=r"not saving step 1, its state has non-finite values in params\.embed$"):
            ckpt.save(1, state)
        assert ckpt.all_steps() == []


# ----------------------------------------------------------------------------- refused resumes


def _snapshot(workdir):
    files = [workdir / "run_config.json", *sorted((workdir / "tokenizer").iterdir())]
    return {str(f.relative_to(workdir)): f.read_bytes() for f in files}


def test_a_refused_resume_leaves_run_config_and_tokenizer_as_they_were(workdir):
    before = _snapshot(workdir)
    with pytest.raises(ValueError, match="hidden_size=32, but the config says 48"):
        loop.train(tiny_config(**{**BASE, "model.fresh.hidden_size": 48}), workdir, devices=jax.devices()[:1])
    assert _snapshot(workdir) == before

    other = workdir.parent / "other.jsonl"  # the demo data less one record: another sha256
    lines = (workdir / "data_cache" / "process0" / "demo" / "train.jsonl").read_text().splitlines(keepends=True)
    other.write_text("".join(lines[1:]))
    with pytest.raises(ValueError, match="trained on data with sha256"):
        loop.train(tiny_config(**{**BASE, "data.synthetic": False, "data.train": str(other)}), workdir,
                      devices=jax.devices()[:1])
    assert _snapshot(workdir) == before
    workdir_lib.restore_params(workdir)  # still the workdir its checkpoints describe


# ----------------------------------------------------------------------------- a full disk

# A process whose files may not grow past 64 KiB (RLIMIT_FSIZE; SIGXFSZ ignored, so a write past it
# fails with EFBIG as on a full disk) once step 1 is safely saved: step 2's tensorstore write fails.
_FULL_DISK = textwrap.dedent("""
    import pathlib, resource, signal, sys, time
    import jax
    import numpy as np
    from o1_jax.checkpoint import Checkpointer
    from o1_jax.cli import report
    from o1_jax.sharding import make_mesh
    from tests.test_checkpoint import _state

    state = _state(make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    ckpt = Checkpointer(sys.argv[1], save_every=2, async_save=True)
    ckpt.save(1, state, {"i": 1})
    ckpt.wait()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    big = np.random.default_rng(0).normal(size=(64, 1024)).astype(np.float32)  # 256 KiB, incompressible
    state["params"]["big"] = jax.device_put(big, jax.devices()[0])
    ckpt.save(2, state, {"i": 2})
    step = 3
    try:
        while not (pathlib.Path(sys.argv[1]) / "2" / "sha256_manifest.json").exists():
            ckpt.maybe_save(step, state)  # odd steps, as in the training loop: never a save, only the poll
            step += 2
            time.sleep(0.01)
        print("step 2 was saved: the file size limit did not bite")
        sys.exit(1)
    except OSError as e:
        report(e)  # as o1_jax.cli.run reports it
        ckpt.close()
        sys.exit(3)
""")


def test_a_full_disk_stops_at_the_failed_save_and_keeps_the_earlier_steps(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "ckpt")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert errors == [f"error: {tmp_path / 'ckpt'}: saving the checkpoint for step 2 failed: File too large "
                      "(errno 27); the steps saved before it (1) are intact"], proc.stderr
    assert proc.stderr.splitlines()[-1] == errors[0] and "ImportError" not in proc.stderr, proc.stderr[-3000:]
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    ckpt = Checkpointer(tmp_path / "ckpt", save_every=2)  # removes the half-written step 2
    assert ckpt.all_steps() == [1]
    _, meta = ckpt.restore(None, _abstract(_state(mesh), mesh))
    assert meta == {"i": 1}
    ckpt.close()
