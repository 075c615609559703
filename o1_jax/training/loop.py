"""`train(config, workdir)`: initialise or resume a run, then step, log and checkpoint until the end.

Order of initialisation: the run's own latest intact checkpoint, else `model.init_from` (an HF
folder), else a fresh model from `model.fresh`. The step is compiled once; batches are built from
process-local data with `jax.make_array_from_process_local_data`. SIGTERM (a preempted TPU VM)
checkpoints and stops; a non-finite loss or gradient skips its update and, past
`train.max_nonfinite_steps` in a row, stops training without saving the bad state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from o1_jax import defaults, sharding
from o1_jax.checkpoint import Checkpointer
from o1_jax.data import formatting
from o1_jax.metrics import MetricWriter, ProgressBar, mfu, peak_flops_per_device
from o1_jax.models import LlamaConfig
from o1_jax.training import workdir as workdir_lib
from o1_jax.training.batches import Batches, check_batch, make_batches, prepare_data
from o1_jax.training.run import Run, build_run, init_path, load_tokenizer
from o1_jax.training.step import step_flops


@dataclasses.dataclass
class TrainResult:
    history: list[dict]  # the metrics this call logged, one dict per logged step
    state: dict  # the final train state: params (the trainable ones), opt_state, step
    frozen: dict  # the frozen backbone under LoRA, else {}
    run: Run  # model, tokenizer, mesh and config the state belongs to
    data_path: pathlib.Path  # the JSONL file it trained on (the synthetic task's: beside its BEIR split)


def train(config, workdir: str | os.PathLike, devices: list | None = None) -> TrainResult:
    """Runs (or resumes) the job in `workdir` (a local folder or a URL), on `devices` (default: all)."""
    defaults.check_config(config)  # an impossible value stops here, naming its key, before any work
    _maybe_initialize_distributed(config)
    workdir = epath.Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(config, init_path(config))
    original_vocab = len(tokenizer)
    formatting.add_special_tokens(tokenizer)
    data = prepare_data(config, workdir)
    batches = make_batches(config, data, tokenizer)
    num_steps = config.train.num_steps or config.train.num_epochs * batches.order.steps_per_epoch

    run = build_run(config, tokenizer, original_vocab, num_steps, devices)
    check_batch(config, run.mesh)
    ckpt = run.checkpointer(workdir)
    data_fp = data.fingerprint

    try:
        with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
            frozen, state, start = _initial_state(run, ckpt, data_fp)
            # Only after _initial_state accepted the workdir's checkpoints (config, shapes, data):
            # a refused resume leaves run_config.json and tokenizer/ describing those checkpoints.
            if is_main:
                workdir_lib.save_tokenizer(tokenizer, workdir)
                workdir_lib.write_run_config(workdir, config, original_vocab)
            history, state = _loop(config, workdir, batches, run.jit_train_step(), state, frozen, start, num_steps,
                                   run.mesh, ckpt, data_fp, is_main, run.num_trainable, run.model_cfg)
    except BaseException:
        try:  # end orbax's threads; the error that stopped training is the one to report
            ckpt.close()
        except Exception:
            pass
        raise
    ckpt.close()
    return TrainResult(history, state, frozen, run, data.path)


def _maybe_initialize_distributed(config) -> None:
    dist = config.distributed
    if not dist.initialize:
        return
    kwargs = {}
    if dist.coordinator_address:
        kwargs.update(coordinator_address=dist.coordinator_address, num_processes=dist.num_processes,
                      process_id=dist.process_id)
    if dist.local_device_count > 0:
        kwargs["local_device_ids"] = list(range(dist.local_device_count))
    jax.distributed.initialize(**kwargs)


def _initial_state(run: Run, ckpt: Checkpointer, data_fp: str):
    """(frozen, state, start_step): own checkpoint, else init_from, else fresh."""
    latest = ckpt.latest_step()
    frozen = {}
    if latest is None or run.model_cfg.lora_rank:
        # The frozen backbone under LoRA is not checkpointed: it is rebuilt the same way.
        params, frozen = run.initial_views()
    if latest is not None:
        newest = latest
        latest, state, meta = ckpt.restore_step(None, run.abstract_state())  # the newest intact step
        if meta.get("data_sha256") != data_fp:
            raise ValueError(
                f"{ckpt.directory}: checkpoint {latest} was trained on data with sha256 {meta.get('data_sha256')}, "
                f"but {run.config.data.train or 'the synthetic data'} now has {data_fp}; resuming would not see "
                "the same batches (use a new workdir)")
        for step in ckpt.all_steps():
            if latest < step <= newest:  # corrupted: out of the way, so training saves the step afresh
                aside = ckpt.set_aside(step)
                if jax.process_index() == 0:
                    print(f"{ckpt.directory}: moved the corrupted step {step} to {aside.name}", flush=True)
        if jax.process_index() == 0:
            print(f"resumed from {ckpt.directory} at step {latest}", flush=True)
        return frozen, state, latest
    opt_state = jax.jit(run.tx.init, out_shardings=run.state_shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), run.state_shardings["step"])
    return frozen, {"params": params, "opt_state": opt_state, "step": step}, 0


def _loop(config, workdir, batches: Batches, step_fn, state, frozen, start, num_steps, mesh, ckpt, data_fp, is_main,
          num_trainable, cfg: LlamaConfig) -> list[dict]:
    batch_sharding = sharding.batch_sharding(mesh)
    history: list[dict] = []
    peak = peak_flops_per_device()
    compiled = {}  # per batch shape: sources with other group sizes give other shapes
    writer = MetricWriter(workdir, enabled=is_main, tensorboard=True, purge_step=start or None)
    if is_main:
        print(f"training steps {start}..{num_steps} on {mesh.devices.size} device(s), mesh "
              f"{dict(mesh.shape)}, {num_trainable:,} trainable parameters", flush=True)
    bar = ProgressBar(num_steps, initial=start, enabled=is_main)
    guard = _FiniteGuard(config.train.max_nonfinite_steps)

    def meta(step):
        return {"step": step, "seed": config.seed, "data_sha256": data_fp,
                "epoch": step // batches.order.steps_per_epoch}

    with _Stop() as stop, contextlib.ExitStack() as cleanup:
        cleanup.callback(writer.close)  # the metrics up to an error are kept too
        cleanup.callback(bar.close)
        for step, local in batches.iterate(start, num_steps):
            batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}
            shapes = tuple((k, v.shape) for k, v in sorted(local.items()))
            if shapes not in compiled:  # once per shape
                compiled[shapes] = (step_fn.lower(state, frozen, batch).compile(),
                                    step_flops(cfg, local, jax.process_count()))
                if len(compiled) == 1:
                    window_start, window_tokens, window_steps, window_flops = time.perf_counter(), 0, 0, 0.0
            fn, flops = compiled[shapes]
            window_tokens += int(local["query_mask"].sum() + local["doc_mask"].sum()) * jax.process_count()
            window_flops += flops or 0.0
            state, metrics = fn(state, frozen, batch)
            window_steps += 1
            done = step + 1
            guard.push(done, metrics)  # checks the step before, which the device has (nearly) finished
            if done % config.train.log_every == 0 or done == num_steps or done == start + 1:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                guard.check()  # the values are on the host now anyway
                elapsed = time.perf_counter() - window_start
                metrics["tokens_per_sec"] = window_tokens / elapsed
                metrics["seconds_per_step"] = elapsed / window_steps
                m = mfu(window_flops / window_steps, elapsed / window_steps, peak, mesh.devices.size) \
                    if window_flops else None
                if m is not None:
                    metrics["mfu"] = m
                for name, n in batches.queries_seen(done).items():  # several sources: how much of each
                    metrics[f"queries/{name}"] = float(n)
                writer.write(done, metrics)
                history.append({"step": done, **metrics})
                bar.update(done, {"loss": metrics["loss"]})
                window_start, window_tokens, window_steps, window_flops = time.perf_counter(), 0, 0, 0.0
            if _agree(stop.requested):
                guard.check()
                print(f"SIGTERM: saving a checkpoint at step {done} and stopping", flush=True)
                ckpt.save(done, state, meta(done))
                break
            if done % ckpt.save_every == 0 or done == num_steps:
                guard.check()  # never save (nor let keep-N drop a good step for) a state that went bad
            if ckpt.maybe_save(done, state, meta(done)):
                writer.flush()  # a remote workdir's metrics are copied there with each checkpoint
        else:
            if num_steps > start:
                ckpt.save(num_steps, state, meta(num_steps))
    return history, state


class _Stop:
    """SIGTERM (a preempted TPU VM, SLURM's timeout) asks the loop to checkpoint and exit."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _FiniteGuard:
    """Stops training at a non-finite loss or gradient norm, after `tolerated` such steps in a row.

    The jitted step already skips the update of a non-finite step, so tolerated steps leave the
    state as it was. The host reads the two scalars of step s only after step s+1 is dispatched
    (`push`), which keeps one step queued on the device instead of waiting for each to finish;
    `check` reads the newest step at once, before every save, so a bad state is never saved.
    """

    def __init__(self, tolerated: int):
        self.tolerated, self.in_a_row, self.pending = tolerated, 0, None

    def push(self, step: int, metrics: dict) -> None:
        self.check()
        self.pending = (step, metrics["loss"], metrics["grad_norm"])

    def check(self) -> None:
        if self.pending is None:
            return
        step, *values = self.pending
        self.pending = None
        values = dict(zip(("loss", "grad_norm"), (float(v) for v in jax.device_get(values))))
        bad = {k: v for k, v in values.items() if not np.isfinite(v)}
        if not bad:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        what = " and ".join(f"{k} is {v}" for k, v in bad.items())
        if self.in_a_row > self.tolerated:
            raise FloatingPointError(
                f"step {step}: the {what}, so training stopped without saving this state "
                f"({self.in_a_row} in a row, more than train.max_nonfinite_steps={self.tolerated})")
        if jax.process_index() == 0:
            print(f"step {step}: the {what}; its update was skipped ({self.in_a_row} of "
                  f"train.max_nonfinite_steps={self.tolerated} in a row)", flush=True)


def _agree(flag: bool) -> bool:
    """True when any process has the flag: a checkpoint save is collective, so all must stop together."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
