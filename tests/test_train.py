"""Training: device-count invariance, multi-process, kill/resume, SIGTERM, config errors, the demo."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from o1_jax import training_job
from o1_jax.training import loop, trainable_params, workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import demo  # noqa: E402

# A tiny variant of the demo: quick to compile, still every part of the step.
TINY = {
    "model.fresh.hidden_size": 32,
    "model.fresh.intermediate_size": 64,
    "model.fresh.num_hidden_layers": 2,
    "model.fresh.num_attention_heads": 4,
    "model.fresh.num_key_value_heads": 2,
    "data.synthetic_train": 64,
    "data.synthetic_test": 8,
    "train.global_batch_size": 8,
    "train.num_steps": 6,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "eval.at_end": False,  # test_demo_short_learns covers it
}


def tiny_config(**changes):
    config = demo.get_config("short")
    for key, value in {**TINY, **changes}.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def overrides(**changes) -> list[str]:
    return [f"--config.{k}={v}" for k, v in {**TINY, **changes}.items()]


def losses(history):
    return np.array([h["loss"] for h in history])


def run_cli(workdir, *extra, env_extra=None, wait=True):
    env = dict(os.environ, **(env_extra or {}))
    cmd = [sys.executable, "-m", "o1_jax.train", "--config", str(ROOT / "configs/demo.py:short"),
           "--workdir", str(workdir), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=600)
        return proc.returncode, out
    return proc


def logged(workdir) -> dict[int, float]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return {}
    # Only whole lines: a run still writing (or killed mid-write) may have left half of its last one.
    lines = path.read_text().split("\n")[:-1]
    rows = [json.loads(line) for line in lines if line.strip()]
    return {r["step"]: r["loss"] for r in rows}


# Runs that several tests only read, trained once per module: compiling a train step is most of a
# test's time on two cores.
@pytest.fixture(scope="module")
def eight_run(tmp_path_factory):
    """(workdir, result) of 3 steps of the tiny config on a (2, 2, 2) mesh of the 8 devices."""
    workdir = tmp_path_factory.mktemp("eight") / "w"
    return workdir, loop.train(tiny_config(**{"train.num_steps": 3, "mesh.shape": (2, 2, 2)}), workdir)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """(workdir, result) of 2 steps with rank-4 LoRA adapters on q_proj and v_proj."""
    workdir = tmp_path_factory.mktemp("lora") / "w"
    changes = {"train.num_steps": 2, "model.lora.rank": 4, "model.lora.targets": ("q_proj", "v_proj")}
    return workdir, loop.train(tiny_config(**changes), workdir)


def test_one_device_and_an_eight_device_mesh_train_identically(tmp_path, eight_run):
    one = loop.train(tiny_config(**{"train.num_steps": 3, "mesh.shape": (1, 1, 1)}), tmp_path / "one",
                        devices=jax.devices()[:1])
    eight = eight_run[1]
    np.testing.assert_allclose(losses(eight.history), losses(one.history), rtol=2e-5)
    assert len({s.device for s in jax.tree_util.tree_leaves(eight.state["params"])[0].addressable_shards}) == 8
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6),
        eight.state["params"], one.state["params"])


def test_lora_trains_adapters_and_special_rows_only(lora_run):
    result = lora_run[1]
    params = result.state["params"]
    assert set(params) == {"model/layers/self_attn/q_proj/lora_a", "model/layers/self_attn/q_proj/lora_b",
                           "model/layers/self_attn/v_proj/lora_a", "model/layers/self_attn/v_proj/lora_b",
                           "special_embedding_rows"}
    assert params["special_embedding_rows"].shape == (4, 32)
    assert np.abs(np.asarray(params["model/layers/self_attn/q_proj/lora_b"])).max() > 0  # it moved
    assert result.frozen["model"]["embed_tokens"]["embedding"].shape[1] == 32


def test_sigkill_then_resume_sees_the_same_batches(tmp_path):
    long = {"train.num_steps": 40}
    reference = loop.train(tiny_config(**long), tmp_path / "reference")
    ref = {h["step"]: h["loss"] for h in reference.history}
    assert len(ref) == 40

    workdir = tmp_path / "killed"
    proc = run_cli(workdir, *overrides(**long), wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not (workdir / "checkpoints" / "4").is_dir():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (workdir / "checkpoints" / "4").is_dir(), "the run never reached its step-4 checkpoint"
    first = logged(workdir)
    assert max(first) < 40, "the run finished before it was killed: nothing to resume"

    resumed = loop.train(tiny_config(**long), workdir)
    start = resumed.history[0]["step"] - 1
    assert 4 <= start <= max(first) and start % 2 == 0  # from the last complete checkpoint
    assert [h["step"] for h in resumed.history] == list(range(start + 1, 41))
    for h in resumed.history:
        assert h["loss"] == pytest.approx(ref[h["step"]], rel=1e-6), h["step"]
    for step, loss in first.items():
        assert loss == pytest.approx(ref[step], rel=1e-6), step


def test_sigterm_saves_a_checkpoint_at_the_current_step(tmp_path):
    workdir = tmp_path / "term"
    proc = run_cli(workdir, *overrides(**{"train.num_steps": 400, "train.checkpoint_every": 1000}), wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and max(logged(workdir), default=0) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    last_logged = max(logged(workdir))
    assert steps == [last_logged] and 3 <= last_logged < 400


def test_misspelt_override_is_an_error(tmp_path):
    code, out = run_cli(tmp_path, "--config.optimizer.lrr=0.1")
    assert code != 0 and "lrr" in out


def test_bad_training_data_fails_before_any_step(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["d"]}\n{"query": "no positives"}\n')
    config = tiny_config(**{"data.synthetic": False, "data.train": str(bad)})
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*pos"):
        loop.train(config, tmp_path / "w")
    assert not (tmp_path / "w" / "checkpoints").exists() or not any((tmp_path / "w" / "checkpoints").iterdir())


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, eight_run):
    shutil.copytree(eight_run[0], tmp_path / "w")  # a copy: the shared run stays as it was
    with pytest.raises(ValueError, match="hidden_size=32, but the config says 48"):
        loop.train(tiny_config(**{"train.num_steps": 4, "model.fresh.hidden_size": 48}), tmp_path / "w")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two_processes(tmp_path, **changes) -> pathlib.Path:
    """Two `python -m o1_jax.train` processes of 4 CPU devices each on one workdir; returns it."""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    for attempt in range(3):
        # A free port can be taken by another program before the coordinator binds it: then try another.
        port = _free_port()
        workdir = tmp_path / f"multi{attempt}"
        procs = [
            run_cli(workdir, *overrides(**{
                **changes, "distributed.initialize": True, "distributed.coordinator_address": f"localhost:{port}",
                "distributed.num_processes": 2, "distributed.process_id": i}), env_extra=env, wait=False)
            for i in range(2)
        ]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        if all(p.returncode == 0 for p in procs) or not any(
                w in out.lower() for out in outs for w in ("address already in use", "failed to add port")):
            break
    assert all(p.returncode == 0 for p in procs), outs
    return workdir


def test_two_processes_match_one_process_on_eight_devices(tmp_path, eight_run):
    single = eight_run[1]
    workdir = run_two_processes(tmp_path, **{"train.num_steps": 3, "mesh.shape": "(2,2,2)"})
    multi = logged(workdir)
    for h in single.history:
        assert multi[h["step"]] == pytest.approx(h["loss"], rel=2e-5)


def test_demo_short_learns(tmp_path, capsys):
    result, _ = training_job.train_and_evaluate(demo.get_config("short"), tmp_path / "demo")
    hist = result.history
    out = capsys.readouterr().out
    assert "| no_think |" in out and "| think(k=1) |" in out  # it ends by evaluating both modes
    assert (tmp_path / "demo" / "eval" / "demo-test.json").is_file()
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert (tmp_path / "demo" / "checkpoints" / "12").is_dir()
    assert (tmp_path / "demo" / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_full_demo_learns(tmp_path):
    # Its wall time is the README's to report (1 to 4.5 min on 2 cores), not a test's to assert.
    result = loop.train(demo.get_config(), tmp_path / "demo")
    hist = result.history
    first, last = hist[0], hist[-1]
    assert last["loss"] < 0.5 * first["loss"]
    assert np.mean([h["accuracy"] for h in hist[-3:]]) > np.mean([h["accuracy"] for h in hist[:3]]) + 0.3


@pytest.mark.parametrize("lora", [False, True])
def test_restore_trained_returns_the_final_parameters(request, lora):
    workdir, result = request.getfixturevalue("lora_run" if lora else "eight_run")
    restored = workdir_lib.restore_params(workdir)
    model, params, tokenizer, config = restored.model, restored.params, restored.tokenizer, restored.config
    expected = trainable_params.combine(result.state["params"], result.frozen, sorted(
        tokenizer.convert_tokens_to_ids(["<query>", "</query>", "<thought>", "<emb>"])))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, expected)
    assert model.cfg.lora_rank == (4 if lora else 0)
    assert config.train.num_steps == (2 if lora else 3)


def test_restore_on_fewer_devices_than_the_training_mesh(eight_run):
    workdir, result = eight_run
    params = workdir_lib.restore_params(workdir, devices=jax.devices()[:1]).params
    emb = params["model"]["embed_tokens"]["embedding"]
    assert len(emb.sharding.device_set) == 1
    np.testing.assert_array_equal(np.asarray(emb), np.asarray(result.state["params"]["model"]["embed_tokens"]["embedding"]))
