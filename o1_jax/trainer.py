"""Joint next-token + InfoNCE training over a device mesh, resumable to the exact batch.

`train(config, workdir)` is the whole job; `python -m o1_jax.train` is its command line.
Order of initialisation: the run's own latest checkpoint, else `model.init_from` (an HF
folder), else a fresh model from `model.fresh`. The step is compiled once with
`jax.jit(in_shardings, out_shardings, donate_argnums)`; batches are built from
process-local data with `jax.make_array_from_process_local_data`.

The workdir is an `etils.epath.Path`: a local folder or a URL such as `gs://bucket/run` (a TPU
pod). Checkpoints, `run_config.json`, `tokenizer/`, `eval/` and the metrics go there; the
array_record data cache never does, since it is read by memory-mapped random access (see
`data_cache_dir`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import queue
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from o1_jax import flops as flops_lib
from o1_jax import defaults, objective, sharding, trainable
from o1_jax.checkpoint import Checkpointer, atomic_write_json
from o1_jax.data import formatting, storage
from o1_jax.data.synthetic import make_tokenizer, write_demo_data
from o1_jax.hf import convert, fetch
from o1_jax.metrics import MetricWriter, ProgressBar, mfu, peak_flops_per_device
from o1_jax.models import LlamaConfig, LlamaForCausalLM, abstract_params, param_shapes, presets


BATCH_AXES = PartitionSpec(("data", "fsdp"))


# ----------------------------------------------------------------------------- model + tokenizer


def resolve_model_path(spec: str) -> pathlib.Path | None:
    """`model.init_from`: '' (fresh), an HF folder, or `shipped:NAME` (materialised by fetch)."""
    if not spec:
        return None
    if spec.startswith("shipped:"):
        return fetch.fetch(spec.split(":", 1)[1])
    return pathlib.Path(spec).expanduser()


def load_tokenizer(config, init_path: pathlib.Path | None):
    import transformers

    source = config.model.tokenizer or (str(init_path) if init_path else "")
    if source == "synthetic":
        return make_tokenizer()
    if not source:
        raise ValueError("config.model.tokenizer is empty and config.model.init_from is empty: "
                         "expected a tokenizer folder, 'synthetic', or an HF model to take it from")
    return transformers.AutoTokenizer.from_pretrained(source)


def model_config(config, init_path: pathlib.Path | None, vocab_size: int) -> LlamaConfig:
    m = config.model
    overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat_policy=m.remat_policy,
                     lora_rank=m.lora.rank, lora_alpha=float(m.lora.alpha), lora_targets=tuple(m.lora.targets))
    if init_path is not None:
        cfg = convert.read_config(init_path, **overrides)
    elif m.architecture:  # a named architecture trained from scratch (or planned without its weights)
        cfg, _ = presets.preset(m.architecture, **overrides)
    else:
        cfg = LlamaConfig(vocab_size=vocab_size, **m.fresh.to_dict(), **overrides)
    return cfg.replace(vocab_size=max(cfg.vocab_size, vocab_size))


# ----------------------------------------------------------------------------- optimizer


def make_schedule(opt, num_steps: int) -> optax.Schedule:
    warmup = opt.warmup_steps if opt.warmup_steps >= 0 else int(round(opt.warmup_fraction * num_steps))
    decay_steps = max(num_steps - warmup, 1)
    end = opt.lr * opt.end_lr_factor
    if opt.decay == "cosine":
        decay = optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.end_lr_factor)
    elif opt.decay == "linear":
        decay = optax.linear_schedule(opt.lr, end, decay_steps)
    elif opt.decay == "constant":
        decay = optax.constant_schedule(opt.lr)
    else:
        raise ValueError(f"config.optimizer.decay={opt.decay!r}: expected one of {defaults.DECAYS}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), decay], [warmup])


def make_optimizer(opt, schedule) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(opt.clip_norm) if opt.clip_norm > 0 else optax.identity(),
        optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay),
    )


# ----------------------------------------------------------------------------- the step


def _micro(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [k, B/k, ...] taking every k-th row, so each device keeps its own rows."""
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def make_train_step(model: LlamaForCausalLM, tx, schedule, loss_cfg, special_ids, microbatches: int):
    def loss_fn(params, frozen, batch):
        full = trainable.combine(params, frozen, special_ids)
        return objective.joint_loss(model, full, batch, loss_cfg)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state, frozen, batch):
        if microbatches == 1:
            (_, metrics), grads = grad_fn(state["params"], frozen, batch)
        else:
            # Gradient accumulation: each micro-batch's InfoNCE sees its own in-batch negatives.
            micro = jax.tree_util.tree_map(lambda x: _micro(x, microbatches), batch)

            def body(acc, mb):
                (_, m), g = grad_fn(state["params"], frozen, mb)
                return jax.tree_util.tree_map(jnp.add, acc, (g, m)), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state["params"])
            m0 = jax.eval_shape(lambda: grad_fn(state["params"], frozen, jax.tree_util.tree_map(lambda x: x[0], micro))[0][1])
            m0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), m0)
            (grads, metrics), _ = jax.lax.scan(body, (zeros, m0), micro)
            grads = jax.tree_util.tree_map(lambda g: g / microbatches, grads)
            metrics = jax.tree_util.tree_map(lambda m: m / microbatches, metrics)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.tree.norm(grads)
        # A non-finite loss or gradient skips the update (as optax.apply_if_finite), so the steps
        # train.max_nonfinite_steps tolerates never corrupt the state; the host decides when to stop.
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        params, opt_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finite, new, old), (params, opt_state), (state["params"], state["opt_state"]))
        metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state["step"]))
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return step


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class Batches:
    """Deterministic batches: the global batch of step s is a pure function of (seed, s)."""

    source: storage.RecordSource
    order: storage.BatchOrder
    formatter: formatting.Formatter
    group_size: int
    thought_dropout: float
    seed: int

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        local = self.order.indices(step)
        first = self.order.process_index * self.order.local_batch_size
        records = [self.source[int(i)] for i in local]
        examples = [
            formatting.build_example(
                r, storage.example_rng(self.seed, step, first + j), self.group_size, self.thought_dropout)
            for j, r in enumerate(records)
        ]
        return self.formatter.collate_train(examples)

    def iterate(self, start: int, stop: int, prefetch: int = 2) -> Iterator[tuple[int, dict]]:
        """Batches for steps [start, stop), prepared by a background thread."""
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        done = threading.Event()

        def produce():
            try:
                for s in range(start, stop):
                    if done.is_set():
                        return
                    q.put((s, self.local_batch(s)))
            except BaseException as e:  # surfaced in the consumer
                q.put((None, e))

        threading.Thread(target=produce, daemon=True).start()
        try:
            for _ in range(start, stop):
                s, batch = q.get()
                if s is None:
                    raise batch
                yield s, batch
        finally:
            done.set()


def is_remote(path: str | os.PathLike) -> bool:
    """A URL (gs://, s3://, ...): no memory maps, no appends, no atomic folder renames there."""
    return "://" in os.fspath(path)


LOCAL_CACHE_ROOT = "~/.cache/o1_jax"


def local_cache_for(url: str | os.PathLike, kind: str) -> pathlib.Path:
    """A folder on this machine's disk for a remote folder's memory-mapped caches (`kind`: data,
    eval), named by the URL so that a restart on the same machine reuses it."""
    digest = hashlib.sha256(os.fspath(url).encode()).hexdigest()[:16]
    return pathlib.Path(LOCAL_CACHE_ROOT).expanduser() / kind / digest


def data_cache_dir(config, workdir: epath.Path) -> pathlib.Path:
    """The local folder for the array_record cache (memory-mapped, so never a URL)."""
    if config.data.cache_dir:
        if is_remote(config.data.cache_dir):
            raise ValueError(f"config.data.cache_dir={config.data.cache_dir!r}: expected a local folder "
                             "(the array_record cache is read by memory-mapped random access)")
        return pathlib.Path(config.data.cache_dir).expanduser()
    if not is_remote(workdir):
        return pathlib.Path(workdir) / "data_cache"
    cache = local_cache_for(workdir, "data")
    if jax.process_index() == 0:
        print(f"data cache: {cache} (local, as the workdir {workdir} is remote; set config.data.cache_dir "
              "to choose another folder)", flush=True)
    return cache


def prepare_data(config, workdir: epath.Path, tokenizer) -> tuple[storage.RecordSource, pathlib.Path]:
    d = config.data
    cache = data_cache_dir(config, workdir) / f"process{jax.process_index()}"
    if d.synthetic:
        demo = write_demo_data(cache / "demo", seed=config.seed, num_train=d.synthetic_train,
                               num_test=d.synthetic_test)
        path = demo / "train.jsonl"
    elif d.train:
        path = pathlib.Path(d.train).expanduser()
    else:
        raise ValueError("config.data.train is empty and config.data.synthetic is False: expected a JSONL file")
    return storage.ensure_dataset(path, cache / "records", num_shards=d.num_shards), path


# ----------------------------------------------------------------------------- the job


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


def _fingerprint(cfg: LlamaConfig, config) -> dict:
    model = dataclasses.asdict(cfg)
    model.pop("remat_policy")  # changing remat does not change what is stored
    model.pop("scan_layers")
    model.pop("dtype")
    return {"model": model, "init_from": config.model.init_from, "seed": config.seed,
            "global_batch_size": config.train.global_batch_size}


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


@dataclasses.dataclass
class TrainResult:
    history: list[dict]  # the metrics this call logged, one dict per logged step
    state: dict  # the final train state: params (the trainable ones), opt_state, step
    frozen: dict  # the frozen backbone under LoRA, else {}
    run: "Run"  # model, tokenizer, mesh and config the state belongs to
    data_path: pathlib.Path  # the JSONL file it trained on (the synthetic task's: beside its BEIR split)


@dataclasses.dataclass
class Run:
    """Everything about a run that does not depend on the data: model, tokenizer, mesh, shardings."""

    config: Any
    cfg: LlamaConfig
    model: LlamaForCausalLM
    tokenizer: Any
    special_ids: list[int]
    original_vocab: int  # the tokenizer's size before the O1 special tokens were added
    init_path: pathlib.Path | None
    mesh: Any
    rules: tuple
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    full_shardings: Any
    state_shardings: dict
    frozen_shardings: Any
    num_trainable: int

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, BATCH_AXES)

    def abstract_state(self) -> dict:
        """The train state's shapes, dtypes and shardings (for restoring and ahead-of-time compiling)."""
        cfg, special_ids = self.cfg, self.special_ids
        abstract_train, _ = jax.eval_shape(lambda p: trainable.split(p, cfg, special_ids), param_shapes(cfg))
        state = {"params": abstract_train, "opt_state": jax.eval_shape(self.tx.init, abstract_train),
                 "step": jax.ShapeDtypeStruct((), jnp.int32)}
        return with_shardings(state, self.state_shardings)

    def abstract_frozen(self):
        """The frozen backbone's (under LoRA; else {}) shapes, dtypes and shardings."""
        _, frozen = jax.eval_shape(lambda p: trainable.split(p, self.cfg, self.special_ids), param_shapes(self.cfg))
        return with_shardings(frozen, self.frozen_shardings)

    def jit_train_step(self):
        """The train step, jitted over the mesh: state donated, metrics replicated."""
        t = self.config.train
        return jax.jit(
            make_train_step(self.model, self.tx, self.schedule, self.config.loss, self.special_ids, t.microbatches),
            in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=(0,),
        )

    def checkpointer(self, workdir: epath.Path) -> Checkpointer:
        t = self.config.train
        return Checkpointer(workdir / "checkpoints", save_every=t.checkpoint_every, keep=t.keep_checkpoints,
                            async_save=True, config_fingerprint=_fingerprint(self.cfg, self.config))


def with_shardings(tree, shardings):
    """`jax.ShapeDtypeStruct`s of `tree`'s leaves carrying `shardings` (a tree of the same structure)."""
    return jax.tree_util.tree_map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings)


def build_run(config, tokenizer, original_vocab: int, num_steps: int, devices=None) -> Run:
    init_path = resolve_model_path(config.model.init_from)
    special_ids = sorted(formatting.add_special_tokens(tokenizer).values())
    cfg = model_config(config, init_path, len(tokenizer))
    return assemble_run(config, cfg, tokenizer, special_ids, original_vocab, init_path, num_steps, devices)


def assemble_run(config, cfg: LlamaConfig, tokenizer, special_ids: list[int], original_vocab: int,
                 init_path: pathlib.Path | None, num_steps: int, devices=None) -> Run:
    """The mesh, optimizer and every sharding for a model config; `tokenizer` may be None (planning)."""
    mesh = sharding.make_mesh(tuple(config.mesh.shape), devices)
    rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.mesh.rules)
    schedule = make_schedule(config.optimizer, num_steps)
    tx = make_optimizer(config.optimizer, schedule)

    # Shardings: the full parameter tree from its logical axes, then the trainable / frozen views.
    full_shardings = sharding.logical_to_shardings(abstract_params(cfg), mesh, rules)
    abstract_full = with_shardings(param_shapes(cfg), full_shardings)
    abstract_train, abstract_frozen = jax.eval_shape(lambda p: trainable.split(p, cfg, special_ids), abstract_full)
    replicated = NamedSharding(mesh, PartitionSpec())
    train_shardings = _match_shardings(abstract_train, full_shardings, cfg, replicated)
    frozen_shardings = _match_shardings(abstract_frozen, full_shardings, cfg, replicated)
    abstract_train = with_shardings(abstract_train, train_shardings)
    # Adam's moments are sharded like their parameters; counters and other scalars are replicated.
    opt_shardings = optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, abstract_train),
                                          train_shardings, transform_non_params=lambda _: replicated)
    state_shardings = {"params": train_shardings, "opt_state": opt_shardings, "step": replicated}
    return Run(config, cfg, LlamaForCausalLM(cfg), tokenizer, special_ids, original_vocab, init_path, mesh, rules,
               tx, schedule, full_shardings, state_shardings, frozen_shardings, trainable.count(abstract_train))


def train(config, workdir: str | os.PathLike, devices: list | None = None) -> TrainResult:
    """Runs (or resumes) the job in `workdir` (a local folder or a URL), on `devices` (default: all)."""
    defaults.check_config(config)  # an impossible value stops here, naming its key, before any work
    _maybe_initialize_distributed(config)
    workdir = epath.Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(config, resolve_model_path(config.model.init_from))
    original_vocab = len(tokenizer)
    formatting.add_special_tokens(tokenizer)
    d = config.data
    source, data_path = prepare_data(config, workdir, tokenizer)
    order = storage.BatchOrder(len(source), config.train.global_batch_size, seed=config.seed,
                               process_index=jax.process_index(), process_count=jax.process_count())
    num_steps = config.train.num_steps or config.train.num_epochs * order.steps_per_epoch
    formatter = formatting.Formatter(tokenizer, d.max_query_tokens, d.max_thought_tokens, d.max_doc_tokens)
    batches = Batches(source, order, formatter, d.group_size, d.thought_dropout, config.seed)

    run = build_run(config, tokenizer, original_vocab, num_steps, devices)
    _check_batch(config, run.mesh)
    ckpt = run.checkpointer(workdir)
    data_fp = storage.fingerprint(data_path)["sha256"]

    try:
        with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
            frozen, state, start = _initial_state(run, ckpt, data_fp)
            # Only after _initial_state accepted the workdir's checkpoints (config, shapes, data):
            # a refused resume leaves run_config.json and tokenizer/ describing those checkpoints.
            if is_main:
                _save_tokenizer(tokenizer, workdir / "tokenizer")
                atomic_write_json(workdir / RUN_CONFIG, {"config": config.to_dict(), "original_vocab": original_vocab})
            history, state = _loop(config, workdir, batches, run.jit_train_step(), state, frozen, start, num_steps,
                                   run.mesh, ckpt, data_fp, is_main, run.num_trainable, run.cfg)
    except BaseException:
        try:  # end orbax's threads; the error that stopped training is the one to report
            ckpt.close()
        except Exception:
            pass
        raise
    ckpt.close()
    return TrainResult(history, state, frozen, run, data_path)


RUN_CONFIG = "run_config.json"
# Written last into a remote workdir's tokenizer/ (as orbax marks finished checkpoints on GCS):
# an object store cannot rename a folder atomically, so a folder without it is a cut-off upload.
TOKENIZER_COMMIT = "commit_success.txt"


def restore_trained(workdir: str | os.PathLike, step: int | None = None, devices=None, mesh_shape=(1, -1, 1)):
    """(model, full params, tokenizer, config) of a run's latest (or given) checkpoint, LoRA unmerged.

    The parameters are placed on `mesh_shape` over `devices` (default: FSDP over all of them),
    whatever mesh the run trained on. `workdir` may be a URL (gs://...).
    """
    import ml_collections

    workdir = epath.Path(workdir)
    for needed in (RUN_CONFIG, "tokenizer", "checkpoints"):
        if not (workdir / needed).exists():
            raise FileNotFoundError(f"{workdir}: no {needed} (expected the workdir of a `python -m o1_jax.train` run)")
    saved = json.loads((workdir / RUN_CONFIG).read_text())
    config = ml_collections.ConfigDict(saved["config"])
    config.mesh.shape = tuple(mesh_shape)  # the training mesh may need more devices than are here
    tokenizer = _load_tokenizer(workdir / "tokenizer")
    run = build_run(config, tokenizer, saved["original_vocab"], num_steps=1, devices=devices)
    ckpt = run.checkpointer(workdir)
    if not ckpt.all_steps():
        raise FileNotFoundError(f"{workdir / 'checkpoints'}: no finished checkpoint to restore")
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
        state, _ = ckpt.restore(step, run.abstract_state())  # step None: the latest intact one
        frozen = {}
        if run.cfg.lora_rank:
            _, frozen = trainable.split(_initial_params(run), run.cfg, run.special_ids)
        params = trainable.combine(state["params"], frozen, run.special_ids)
    ckpt.close()
    return run.model, params, tokenizer, config


def _check_batch(config, mesh) -> None:
    """The global batch is split over data x fsdp, and into micro-batches: both must divide it."""
    b, k = config.train.global_batch_size, config.train.microbatches
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if k < 1 or b % k:
        raise ValueError(f"config.train.microbatches={k} must be >= 1 and divide train.global_batch_size={b}")
    if (b // k) % shards:
        raise ValueError(f"config.train.global_batch_size={b} (per micro-batch {b // k}) must be divisible by the "
                         f"mesh's data x fsdp = {shards} devices")


def _save_tokenizer(tokenizer, out: epath.Path) -> None:
    """`save_pretrained` into `out`, never leaving a half folder that `restore_trained` would load."""
    if not is_remote(out):
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=out.parent))
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return
    # No atomic folder rename on an object store: the commit file goes first and comes back last.
    with tempfile.TemporaryDirectory(prefix="o1_jax_tokenizer.") as tmp:
        tokenizer.save_pretrained(tmp)
        (out / TOKENIZER_COMMIT).unlink(missing_ok=True)
        out.rmtree(missing_ok=True)  # files of an earlier tokenizer
        for f in sorted(pathlib.Path(tmp).iterdir()):
            (out / f.name).write_bytes(f.read_bytes())
        (out / TOKENIZER_COMMIT).write_text("")


def _load_tokenizer(folder: epath.Path):
    """The tokenizer saved by `_save_tokenizer`; a remote folder is copied to a local one first."""
    import transformers

    if not is_remote(folder):
        return transformers.AutoTokenizer.from_pretrained(os.fspath(folder))
    if not (folder / TOKENIZER_COMMIT).exists():
        raise FileNotFoundError(f"{folder}: no {TOKENIZER_COMMIT}, so its upload was cut off (expected a complete "
                                "tokenizer folder; rerunning the training command rewrites it)")
    with tempfile.TemporaryDirectory(prefix="o1_jax_tokenizer.") as tmp:
        for f in folder.iterdir():
            if f.name != TOKENIZER_COMMIT:
                (pathlib.Path(tmp) / f.name).write_bytes(f.read_bytes())
        return transformers.AutoTokenizer.from_pretrained(tmp)


def _match_shardings(abstract_tree, full_shardings, cfg, replicated):
    """Sharding of each trainable/frozen leaf: the full parameter's, replicated for the special rows."""
    if not isinstance(abstract_tree, dict) or not abstract_tree:
        return jax.tree_util.tree_map(lambda _: replicated, abstract_tree)
    import flax.traverse_util as traverse

    full_flat = traverse.flatten_dict(full_shardings)
    if any(isinstance(v, dict) for v in abstract_tree.values()):  # a nested parameter tree
        return traverse.unflatten_dict({k: full_flat[k] for k in traverse.flatten_dict(abstract_tree)})
    return {k: replicated if k == trainable.SPECIAL_ROWS else full_flat[tuple(k.split("/"))]
            for k in abstract_tree}


def _initial_state(run: Run, ckpt: Checkpointer, data_fp: str):
    """(frozen, state, start_step): own checkpoint, else init_from, else fresh."""
    latest = ckpt.latest_step()
    frozen = {}
    if latest is None or run.cfg.lora_rank:
        # The frozen backbone under LoRA is not checkpointed: it is rebuilt the same way.
        split = jax.jit(lambda p: trainable.split(p, run.cfg, run.special_ids),
                        out_shardings=(run.state_shardings["params"], run.frozen_shardings))
        params, frozen = split(_initial_params(run))
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


def _initial_params(run: Run):
    """Full parameters before training: `init_from` with the vocabulary grown, or a fresh init."""
    cfg = run.cfg
    if run.init_path is None:
        init = jax.jit(lambda r: nn.unbox(run.model.init(r, jnp.zeros((1, 8), jnp.int32))["params"]),
                       out_shardings=run.full_shardings)
        return init(jax.random.key(run.config.seed))
    lora = dict(lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets)
    base_cfg = convert.read_config(run.init_path, dtype=cfg.dtype, param_dtype=cfg.param_dtype, **lora)
    base_shardings = sharding.logical_to_shardings(abstract_params(base_cfg), run.mesh, run.rules)
    _, params = convert.load_pretrained(run.init_path, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                        shardings=base_shardings, lora_seed=run.config.seed, **lora)
    known = min(run.original_vocab, base_cfg.vocab_size)
    resize = jax.jit(lambda p: trainable.resize_vocab(p, base_cfg, cfg.vocab_size, run.special_ids, known)[0],
                     out_shardings=run.full_shardings)
    return resize(params)


def _loop(config, workdir, batches, step_fn, state, frozen, start, num_steps, mesh, ckpt, data_fp, is_main,
          num_trainable, cfg: LlamaConfig) -> list[dict]:
    batch_sharding = NamedSharding(mesh, BATCH_AXES)
    history: list[dict] = []
    peak = peak_flops_per_device()
    compiled = None
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
            if compiled is None:  # compiled once
                compiled = step_fn.lower(state, frozen, batch).compile()
                flops = step_flops(cfg, local)
                window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
            window_tokens += int(local["query_mask"].sum() + local["doc_mask"].sum()) * jax.process_count()
            state, metrics = compiled(state, frozen, batch)
            window_steps += 1
            done = step + 1
            guard.push(done, metrics)  # checks the step before, which the device has (nearly) finished
            if done % config.train.log_every == 0 or done == num_steps or done == start + 1:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                guard.check()  # the values are on the host now anyway
                elapsed = time.perf_counter() - window_start
                metrics["tokens_per_sec"] = window_tokens / elapsed
                metrics["seconds_per_step"] = elapsed / window_steps
                m = mfu(flops, elapsed / window_steps, peak, mesh.devices.size) if flops else None
                if m is not None:
                    metrics["mfu"] = m
                writer.write(done, metrics)
                history.append({"step": done, **metrics})
                bar.update(done, {"loss": metrics["loss"]})
                window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
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
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def step_flops(cfg: LlamaConfig, local_batch: dict) -> float:
    """Model FLOPs of one step on the global batch whose process-local part is `local_batch`."""
    b, tq = local_batch["query_ids"].shape
    n, td = local_batch["doc_ids"].shape
    return flops_lib.train_step_flops(cfg, b * jax.process_count(), n // b, tq, td,
                                      local_batch["gen_positions"].shape[1])
