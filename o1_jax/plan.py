"""Ahead-of-time memory plan: compile the real train step for hardware this machine does not have.

  python -m o1_jax.plan --config configs/qwen25_7b_o1.py --topology v5p:2x2x1
  python -m o1_jax.plan --config configs/llama3_8b_o1.py --topology v5p:4x4x4
  python -m o1_jax.plan --config configs/qwen25_7b_o1.py:h100x8 --cpu_devices 8 --hbm_gib 80

With `--topology`, the step is compiled by XLA's TPU compiler for compile-only TPU devices
(`jax.experimental.topologies`, needs `libtpu`: `pip install -r requirements-plan.txt`).
With `--cpu_devices N`, it is compiled for N fake CPU devices: the same sharding and program,
but the CPU compiler's fusion and buffer reuse, so its temporary memory is an estimate.
Nothing is allocated and no weights are read: shapes come from the model folder's
config.json when it exists here, else from `config.model.architecture` (o1_jax.models.presets).

Every config key, its default and its meaning: `python -m o1_jax.defaults`. `--json FILE` is refused
if FILE exists, unless `--overwrite`; bad input stops with one `error:` line and exit code 2.

Reported per device: arguments (train state, frozen weights, batch), outputs, the part of the
outputs that reuses donated arguments, temporaries, and their sum as the step's peak; FLOPs
per step from the compiler's cost analysis; the device's HBM and whether the step fits.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
import time

# Importing jax does not start a backend: main() can still set XLA_FLAGS for --cpu_devices first.
import flax.linen as nn
import jax
import numpy as np
import transformers
from absl import flags
from jax.experimental import topologies
from ml_collections import config_flags

from o1_jax import cli, defaults, model_specs, sharding
from o1_jax.data import formatting
from o1_jax.data.synthetic import make_tokenizer
from o1_jax.files import atomic_write_json
from o1_jax.models import abstract_params, attention, param_shapes, presets
from o1_jax.training.batches import check_batch
from o1_jax.training.run import INIT_FROM, assemble_run, model_config
from o1_jax.training.step import step_flops

# HBM per chip in GiB, by the `device_kind` a compile-only device reports.
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}
GIB = 2**30


@dataclasses.dataclass
class Plan:
    target: str  # "v5p:4x4x4" or "8 CPU devices"
    device_kind: str
    num_devices: int
    mesh: dict
    model: str
    params: int
    trainable: int
    global_batch: int
    microbatches: int
    grad_cache_chunks: int  # 1: off
    argument_gib: float
    output_gib: float
    alias_gib: float
    temp_gib: float
    peak_gib: float  # arguments + outputs - aliased + temporaries, per device
    hbm_gib: float | None
    flops_per_step: float  # model FLOPs of the whole step (o1_jax.flops), all devices together
    compile_s: float
    replicated: list[str]  # parameter dimensions the rules shard but the mesh does not divide
    refused: str | None = None  # the compiler's out-of-memory message, when it would not compile the step

    @property
    def fits(self) -> bool | None:
        if self.refused:
            return False
        return None if self.hbm_gib is None else self.peak_gib <= self.hbm_gib

    def summary(self) -> str:
        lines = [
            f"target: {self.target} ({self.num_devices} x {self.device_kind}), mesh {self.mesh}",
            (f"model: {self.model}, {self.params / 1e9:.2f}B parameters, {self.trainable / 1e6:,.1f}M trainable; "
             f"global batch {self.global_batch} queries"
             + (f", {self.microbatches} micro-batches" if self.microbatches > 1 else "")
             + (f", GradCache in {self.grad_cache_chunks} chunks" if self.grad_cache_chunks > 1 else "")),
            (f"per device: arguments {self.argument_gib:.2f} GiB + outputs {self.output_gib:.2f} GiB "
             f"- donated {self.alias_gib:.2f} GiB + temporaries {self.temp_gib:.2f} GiB = peak {self.peak_gib:.2f} GiB"),
        ]
        lines.append(f"model FLOPs per step: {self.flops_per_step:.3e} (all devices); compiled in {self.compile_s:.1f} s")
        if self.replicated:
            lines.append(f"replicated instead of sharded ({len(self.replicated)}): " + "; ".join(self.replicated))
        if self.refused:
            lines.append(f"fits: NO, the compiler refused the step (arguments and temporaries above are its "
                         f"lower bound): {self.refused}")
        elif self.hbm_gib is None:
            lines.append("HBM: unknown for this device (pass --hbm_gib to compare)")
        elif self.fits:
            lines.append(f"fits: yes, {self.peak_gib:.2f} of {self.hbm_gib:g} GiB "
                         f"({self.hbm_gib - self.peak_gib:.2f} GiB free)")
        else:
            lines.append(f"fits: NO, {self.peak_gib:.2f} GiB needed on {self.hbm_gib:g} GiB: "
                         f"{self.peak_gib - self.hbm_gib:.2f} GiB over (try model.remat_policy, a larger fsdp "
                         "axis, train.grad_cache_chunks or a shorter data.max_*_tokens)")
        return "\n".join(lines)


def topology_devices(topology: str) -> list:
    """Compile-only devices of a TPU slice, e.g. 'v5p:4x4x4' or 'v5e:16x16'."""
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(f"--topology {topology}: libtpu is not installed; "
                         "pip install -r requirements-plan.txt (or use --cpu_devices N)") from None
    try:
        return list(topologies.get_topology_desc(topology, "tpu").devices)
    except Exception as e:  # noqa: BLE001  (libtpu raises several types; its message's first line names the problem)
        raise ValueError(f"--topology {topology}: not a TPU topology libtpu knows "
                         f"(expected e.g. v5p:2x2x1, v5e:4x4, v4:2x2x2): {str(e).splitlines()[0]}") from None


def planned_model(config):
    """(LlamaConfig, tokenizer size, description) without loading weights."""
    m = config.model
    folder = None
    if m.init_from.startswith(model_specs.PREFIXES) or (m.init_from and os.path.isdir(os.path.expanduser(m.init_from))):
        folder = model_specs.resolve_hf_folder(m.init_from, INIT_FROM)
    if folder is not None:
        tokenizer = model_specs.resolve(m.tokenizer, "config.model.tokenizer") if m.tokenizer else folder
        size, source = len(transformers.AutoTokenizer.from_pretrained(tokenizer)), str(folder)
    elif m.architecture:
        size, source = presets.preset(m.architecture)[1], f"architecture {m.architecture!r}"
    elif m.init_from:
        raise ValueError(f"config.model.init_from={m.init_from!r} is not a folder here; set "
                         "config.model.architecture to plan without the weights")
    elif m.tokenizer == "synthetic":
        size, source = len(make_tokenizer()), "fresh model"
    else:
        raise ValueError("config.model: a fresh model needs model.tokenizer='synthetic' or model.architecture "
                         "to plan")
    return model_config(config, folder, size), size, source


def plan(config, devices: list, target: str, hbm_gib: float | None = None) -> Plan:
    cfg, tokenizer_size, source = planned_model(config)
    special_ids = list(range(tokenizer_size, tokenizer_size + len(formatting.SPECIAL_TOKENS)))
    cfg = cfg.replace(vocab_size=max(cfg.vocab_size, tokenizer_size + len(special_ids)))
    num_steps = config.train.num_steps or 1000
    run = assemble_run(config, cfg, None, special_ids, tokenizer_size, None, num_steps, devices)
    check_batch(config, run.mesh)
    d, b = config.data, config.train.global_batch_size
    shapes = formatting.train_batch_shapes(b, d.group_size, d.max_query_tokens, d.max_thought_tokens,
                                           d.max_doc_tokens)
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=run.batch_sharding) for k, (shape, dtype) in shapes.items()}

    arguments = (run.abstract_state(), run.abstract_frozen(), batch)
    refused = None
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
        start = time.perf_counter()
        try:
            compiled = run.jit_train_step().lower(*arguments).compile()
        except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a program that cannot fit its HBM
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            refused = str(e).strip().splitlines()[0]
        compile_s = time.perf_counter() - start

    if refused is None:
        mem = compiled.memory_analysis()
        arg, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
        alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    else:  # what is known without the compiled program: the arguments, and the temporaries it asked for
        arg, out, alias = sharding.per_device_bytes(arguments), 0, 0
        asked = re.search(r"temporaries \(([0-9.]+)G\)", refused)
        temp = float(asked.group(1)) * GIB if asked else 0
    kind = devices[0].device_kind
    hbm = hbm_gib if hbm_gib is not None else HBM_GIB.get(kind)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(param_shapes(cfg)))
    return Plan(
        target=target, device_kind=kind, num_devices=len(devices), mesh=dict(run.mesh.shape),
        model=f"{cfg.model_type} from {source}, {cfg.dtype} compute / {cfg.param_dtype} params, remat "
              f"{cfg.remat_policy}, attention {attention.resolve(cfg.attention, devices[0].platform)}, "
              + (f"LoRA r={cfg.lora_rank}" if cfg.lora_rank else "full fine-tuning"),
        params=num_params, trainable=run.num_trainable, global_batch=b,
        microbatches=config.train.microbatches, grad_cache_chunks=config.train.grad_cache_chunks,
        argument_gib=arg / GIB, output_gib=out / GIB, alias_gib=alias / GIB, temp_gib=temp / GIB,
        peak_gib=(arg + out - alias + temp) / GIB, hbm_gib=hbm,
        flops_per_step=step_flops(cfg, batch, 1), compile_s=compile_s,
        replicated=sharding.undivided(abstract_params(cfg), run.mesh, run.rules), refused=refused)


def _cpu_devices_from_argv(argv: list[str]) -> int:
    """--cpu_devices must be known before JAX starts: it becomes XLA_FLAGS (absl checks the value later)."""
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--cpu_devices=") else (
            argv[i + 1] if a == "--cpu_devices" and i + 1 < len(argv) else None)
        if value is not None:
            return int(value) if value.isdigit() else 0
    return 0


def main() -> None:
    n = _cpu_devices_from_argv(sys.argv)
    if n:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    config = config_flags.DEFINE_config_file("config", None, f"experiment config (configs/*.py[:variant]); "
                                             f"{cli.CONFIG_KEYS_HINT}", lock_config=True)
    topology = flags.DEFINE_string("topology", None, "TPU topology to compile for, e.g. v5p:4x4x4 or v5e:16x16")
    cpu_devices = flags.DEFINE_integer("cpu_devices", 0, "compile for N fake CPU devices instead of a TPU")
    hbm = flags.DEFINE_float("hbm_gib", None, "device memory to compare against (default: the TPU's HBM)")
    json_out = flags.DEFINE_string("json", None, "also write the plan to this JSON file")
    overwrite = flags.DEFINE_bool("overwrite", False, "replace an existing --json file")
    flags.mark_flag_as_required("config")

    def run(argv):
        del argv  # cli.run_absl refuses stray arguments
        if bool(topology.value) == bool(cpu_devices.value):
            raise ValueError("give exactly one of --topology (e.g. v5p:4x4x4) or --cpu_devices N")
        if cpu_devices.value < 0:
            raise ValueError(f"--cpu_devices={cpu_devices.value}: expected a positive count")
        if hbm.value is not None and not hbm.value > 0:
            raise ValueError(f"--hbm_gib={hbm.value}: expected a positive size in GiB")
        defaults.check_config(config.value)
        if json_out.value:
            cli.check_output(json_out.value, overwrite.value)  # before the compile
        if cpu_devices.value:
            devices, target = jax.devices("cpu")[: cpu_devices.value], f"{cpu_devices.value} CPU devices"
            if len(devices) < cpu_devices.value:
                raise ValueError(f"--cpu_devices {cpu_devices.value}: only {len(devices)} CPU devices exist")
        else:
            devices, target = topology_devices(topology.value), topology.value
        result = plan(config.value, devices, target, hbm.value)
        print(result.summary(), flush=True)
        if json_out.value:
            atomic_write_json(json_out.value, dict(dataclasses.asdict(result), fits=result.fits))
        return 2 if result.fits is False else 0

    cli.run_absl(run)


if __name__ == "__main__":
    main()
