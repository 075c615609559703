"""One command for one accelerator (H100 / H200): how fast o1_jax trains and generates there.

    python benchmarks/device_suite.py [--json out.json] [--max_seconds 400]
    python benchmarks/device_suite.py --cpu [--json out.json]     # the same code at tiny shapes

Per case it measures the whole O1 train step (`o1_jax.training.step.make_train_step`: query
forward with the LM head at the thought positions, documents forward, InfoNCE at temperature
0.02, 0.8 x InfoNCE + 0.2 x thought CE, w_distill 0, backward, global-norm clip 1.0, AdamW from
`o1_jax.training.optimizer`, full fine-tuning) and prints a table (and, with `--json`, writes it):

* step time: the median of `--steps` timed steps (each waited for with `jax.block_until_ready`)
  after `--warmup` untimed ones; compilation (`lower().compile()`) is timed on its own;
* tokens/s: real tokens (the sum of the query and document masks) per second of step time;
* model FLOPs per step: `o1_jax.flops.train_step_flops` of the padded shapes (no remat, no
  GradCache re-forward: recomputed work is not model work);
* MFU = FLOPs / step time / the device's dense bf16 peak, for bf16 compute on a device kind in
  `PEAK_BF16_FLOPS` only; on a CPU, an unknown kind, or float32 compute it is "n/a", never guessed.

Cases: presets `llama3.2-1b` and `smollm2-135m`, random-initialised (`presets.preset` +
`models.init_params`: no weights, no network), compute bfloat16 with float32 parameters (the
fp32 master weights and Adam moments of `configs/llama32_1b_o1.py`), full remat (that config's
choice, `--remat` to change it) x every `model.attention` the backend runs (`xla` and
`dot_product` everywhere, `splash` on TPU only; `auto` is an alias) x GradCache off / on
(`make_train_step(..., grad_cache_chunks=N)`; "unavailable" rows while `make_train_step` lacks
the keyword). Then per preset: the max abs difference of the final hidden states at real
(non-padding) positions, `dot_product` against `xla`, on the same parameters and batch, and greedy
generation tokens/s (`inference.generate.generate`, temperature 0, an `<eos>` that cannot occur,
so every row generates exactly `new_tokens`). The "cuDNN fmha" columns say whether a compiled
program calls cuDNN's fused attention: `dot_product` asks `jax.nn.dot_product_attention` for
implementation="cudnn" on a GPU in bfloat16 (`o1_jax.models.attention.dot_product_backend`; jax's
default, None, is XLA's own attention in jax 0.10), so there the check is cuDNN against the einsum.

Batches are synthetic, with `Formatter.collate_train`'s exact layout: left padded rows
`<query> q </query> <thought> t <eos> <emb>` of Tq = max_query + max_thought + 5 tokens, the
generation targets at the positions that predict `t` and its `<eos>`, documents `d <emb>` of
Td = max_doc + 1, teacher scores and mask (unused at w_distill 0); random ids, each row's text a
random length between half and all of its budget. The four ids at the top of the vocabulary
play the special tokens (under full fine-tuning `special_ids` selects nothing: every row trains).

Sizes on a device (`SIZES`): llama3.2-1b 8 queries x 8 documents per query, smollm2-135m 32 x 8,
both with Tq = 59 + 64 + 5 = 128 and Td = 255 + 1 = 256 (multiples of 128, the flash-attention
tile); GradCache in 4 chunks; 5 timed steps; generation 16 (1B) / 32 (135M) prompts of up to 64
tokens, 128 new tokens. `--cpu` runs every case through the same functions at tiny shapes
(`cpu_shrink`: 2 layers, width 64, vocabulary 512; 2 x 2 batch, Tq = Td = 16; GradCache in 2
chunks), in float32 (CPU bf16 matmuls are emulated, and float32 keeps the attention check tight),
with XLA's CPU compiles unoptimised (they are most of its time), in about 30 s on 2 cores.

Memory, planned on the CPU compiler (`compiled.memory_analysis()` of these very steps, no GPU; the
CPU compiler's temporaries are an estimate): with full remat the llama3.2-1b step holds 13.8 GiB of
parameters and Adam moments plus 19.2 GiB of temporaries (18.6 with GradCache), smollm2-135m 1.5 +
10.8 GiB (4.3): both fit an 80 GB H100. Without remat they plan to 108.5 and 151.8 GiB of
temporaries (45.8 and 40.0 with GradCache), which is why remat is on.

Time bound: the run is dominated by compilation: 8 train steps (14-21 s each on the CPU compiler
of a 2-core machine; on a GPU host not measured yet, autotuning included), 4 forwards and 2 decode
loops. `--max_seconds` (default 400) is a guard: before each case the suite adds the longest time
a case of its kind took so far (of any kind, for a kind not run yet) to the time elapsed, and
skips the case with a printed note when that passes the limit, so the run ends before 8 minutes
even when compiles are slower than expected. GradCache rows run last, so they are the first to go.
A case that fails (say, out of memory) is an error row, the others still run, and the exit status
is then 1.

What it needs: JAX with its accelerator plugin (a stock JAX-CUDA image: `jax[cuda12]` brings
jax, jaxlib, ml_dtypes, numpy, opt_einsum, scipy), plus `pip install flax optax ml_collections`
(flax brings etils, which `o1_jax.files` uses to write the JSON). It runs
from the repository as is (the script puts the repository root on `sys.path`; no `pip install
-e .`), and imports no transformers, torch, scann or tensorflow, and no tokenizer: the JSON lists
the third-party modules it loaded, and loading a forbidden one is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runs from a bare checkout, without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from machine import write_json  # noqa: E402  (benchmarks/machine.py, next to this file)

from o1_jax import flops as flops_lib  # noqa: E402
from o1_jax.data import formatting  # noqa: E402
from o1_jax.inference.generate import Sampling, generate  # noqa: E402
from o1_jax.models import LlamaConfig, LlamaForCausalLM, init_params, presets  # noqa: E402
from o1_jax.models.config import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES  # noqa: E402
from o1_jax.training import optimizer as optimizer_lib  # noqa: E402
from o1_jax.training import step as step_lib  # noqa: E402

PRESETS = ("llama3.2-1b", "smollm2-135m")
# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, by device kind
# (`jax.devices()[0].device_kind`, lower case); first match wins. A kind not listed has no MFU.
PEAK_BF16_FLOPS = (
    ("h200", 989.4e12),  # H200 SXM (and GH200: the same Hopper GPU)
    ("h100 pcie", 756e12),
    ("h100 80gb hbm3", 989.4e12),  # H100 SXM5
    ("h100 sxm", 989.4e12),
    ("a100", 312e12),  # A100 SXM4 and PCIe, 40 and 80 GB
)
LOSS = dict(temperature=0.02, w_ctr=0.8, w_gen=0.2, w_distill=0.0, teacher_temperature=1.0)
OPTIMIZER = dict(lr=1e-5, warmup_steps=0, warmup_fraction=0.0, decay="constant", end_lr_factor=1.0,
                 b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0)
# Per preset: queries, documents per query, the three token budgets, GradCache chunks (they must
# divide the queries), generation prompts, prompt budget and new tokens.
SIZES = {
    "device": {
        "llama3.2-1b": dict(batch=8, group=8, max_query=59, max_thought=64, max_doc=255, grad_cache_chunks=4,
                            gen_rows=16, gen_prompt=64, gen_new=128),
        "smollm2-135m": dict(batch=32, group=8, max_query=59, max_thought=64, max_doc=255, grad_cache_chunks=4,
                             gen_rows=32, gen_prompt=64, gen_new=128),
    },
    "cpu": {name: dict(batch=2, group=2, max_query=5, max_thought=6, max_doc=15, grad_cache_chunks=2,
                       gen_rows=2, gen_prompt=8, gen_new=4) for name in PRESETS},
}
# Heavy packages the suite must never load (a stock JAX image has none of them).
FORBIDDEN_MODULES = ("transformers", "torch", "scann", "tensorflow")


def cpu_shrink(name: str) -> dict:
    """Overrides that make preset `name` tiny but keep its kind: the same GQA ratio, RoPE, tying."""
    hf = presets.PRESETS[name]
    ratio = hf["num_attention_heads"] // hf["num_key_value_heads"]
    return dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2 * ratio,
                num_key_value_heads=2, head_dim=16, vocab_size=512)


# ----------------------------------------------------------------------------- the machine


def peak_bf16_flops(device_kind: str) -> float | None:
    kind = device_kind.lower()
    for pattern, peak in PEAK_BF16_FLOPS:
        if pattern in kind:
            return peak
    return None


def backend_attentions(backend: str) -> list[str]:
    """The `model.attention` values this backend runs natively (`auto` only names one of them)."""
    return [a for a in ATTENTION_IMPLEMENTATIONS if a != "auto" and (a != "splash" or backend == "tpu")]


def uses_cudnn_attention(compiled) -> bool:
    """Whether a compiled program calls cuDNN's fused attention (`jax.nn.dot_product_attention`
    picks it only when asked, or, in later JAX versions, when it applies)."""
    return "__cudnn$fmha" in compiled.as_text()


def grad_cache_available() -> bool:
    return "grad_cache_chunks" in inspect.signature(step_lib.make_train_step).parameters


def third_party_modules() -> list[str]:
    """Top-level modules loaded that are neither the standard library nor o1_jax."""
    names = {m.split(".")[0] for m in sys.modules}
    return sorted(n for n in names if n not in sys.stdlib_module_names and not n.startswith("_")
                  and n not in ("o1_jax", "device_suite", "cython_runtime"))


# ----------------------------------------------------------------------------- model and batch


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """Which ids play the O1 special tokens, `<eos>` and padding; text ids are below `specials`."""

    query: int
    query_end: int
    thought: int
    emb: int
    eos: int
    pad: int

    @property
    def specials(self) -> list[int]:
        return [self.query, self.query_end, self.thought, self.emb]

    @property
    def text_limit(self) -> int:
        return min(self.specials)


def token_ids(cfg: LlamaConfig) -> TokenIds:
    v = cfg.vocab_size
    eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
    eos = eos if isinstance(eos, int) and 0 <= eos < v - 4 else v - 5
    pad = cfg.pad_token_id if isinstance(cfg.pad_token_id, int) and 0 <= cfg.pad_token_id < v - 4 else eos
    return TokenIds(query=v - 4, query_end=v - 3, thought=v - 2, emb=v - 1, eos=eos, pad=pad)


def model_overrides(name: str, attention: str, args) -> dict:
    """Everything the suite changes in preset `name` (the JSON records it, so a reader can rebuild it)."""
    out = dict(dtype=args.dtype, param_dtype="float32", attention=attention, remat_policy=args.remat)
    if args.cpu:
        out.update(cpu_shrink(name))
    return out


def synthetic_batch(rng: np.random.Generator, tok: TokenIds, batch: int, group: int, max_query: int,
                    max_thought: int, max_doc: int) -> dict[str, np.ndarray]:
    """A training batch with `Formatter.collate_train`'s keys, shapes, dtypes and layout, random ids."""
    tq, kg, td = formatting.sequence_lengths(max_query, max_thought, max_doc)

    def text(budget):
        return rng.integers(0, tok.text_limit, int(rng.integers(max(1, budget // 2), budget + 1))).tolist()

    query_ids = np.full((batch, tq), tok.pad, np.int32)
    query_mask = np.zeros((batch, tq), np.int32)
    gen_positions = np.zeros((batch, kg), np.int32)
    gen_targets = np.zeros((batch, kg), np.int32)
    gen_weights = np.zeros((batch, kg), np.float32)
    for i in range(batch):
        head = [tok.query, *text(max_query), tok.query_end, tok.thought]
        thought = text(max_thought)
        row = np.asarray(head + thought + [tok.eos, tok.emb], np.int32)
        shift = tq - len(row)  # left padding
        query_ids[i, shift:], query_mask[i, shift:] = row, 1
        local = np.arange(len(head) - 1, len(head) + len(thought))  # <thought> .. last thought token predict t, <eos>
        gen_positions[i, :len(local)] = local + shift
        gen_targets[i, :len(local)] = row[local + 1]
        gen_weights[i, :len(local)] = 1.0
    doc_ids = np.full((batch * group, td), tok.pad, np.int32)
    doc_mask = np.zeros((batch * group, td), np.int32)
    for j in range(batch * group):
        row = text(max_doc) + [tok.emb]
        doc_ids[j, td - len(row):], doc_mask[j, td - len(row):] = row, 1
    doc_hash = np.arange(1, batch * group + 1, dtype=np.int32)
    positive_hash = np.zeros((batch, formatting.MAX_POSITIVE_KEYS), np.int32)
    positive_hash[:, 0] = doc_hash[::group]
    return {
        "query_ids": query_ids, "query_mask": query_mask,  # [B, Tq]
        "gen_positions": gen_positions, "gen_targets": gen_targets, "gen_weights": gen_weights,  # [B, Kg]
        "doc_ids": doc_ids, "doc_mask": doc_mask,  # [B*G, Td]
        "teacher_scores": np.zeros((batch, group), np.float32), "teacher_mask": np.zeros((batch,), np.float32),
        # every document distinct, each query's own positive its only known one: nothing is masked
        "doc_hash": doc_hash, "positive_hash": positive_hash,
    }


def synthetic_prompts(rng: np.random.Generator, tok: TokenIds, rows: int, max_query: int):
    """Left-padded thinking prompts `<query> q </query> <thought>`, `[rows, max_query + 3]`."""
    length = max_query + 3
    ids, mask = np.full((rows, length), tok.pad, np.int32), np.zeros((rows, length), np.int32)
    for i in range(rows):
        n = int(rng.integers(max(1, max_query // 2), max_query + 1))
        row = [tok.query, *rng.integers(0, tok.text_limit, n).tolist(), tok.query_end, tok.thought]
        ids[i, length - len(row):], mask[i, length - len(row):] = row, 1
    return ids, mask


# ----------------------------------------------------------------------------- the cases


def train_case(cfg: LlamaConfig, params0, batch_np: dict, tok: TokenIds, chunks: int, args, peak) -> dict:
    """One train step configuration: compile, warm up, time; FLOPs, tokens/s and MFU."""
    model = LlamaForCausalLM(cfg)
    opt = ml_collections.ConfigDict(OPTIMIZER)
    schedule = optimizer_lib.make_schedule(opt, 1000)
    tx = optimizer_lib.make_optimizer(opt, schedule)
    extra = {"grad_cache_chunks": chunks} if chunks > 1 else {}
    step = step_lib.make_train_step(model, tx, schedule, ml_collections.ConfigDict(LOSS), tok.specials,
                                    microbatches=1, **extra)
    params = jax.tree_util.tree_map(jnp.copy, params0)  # the state is donated; params0 serves every case
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    batch = jax.device_put(batch_np)
    frozen: dict = {}  # full fine-tuning: nothing frozen
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0,)).lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    fused = uses_cudnn_attention(compiled)
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(compiled(state, frozen, batch))
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
        losses.append(float(metrics["loss"]))
    b, tq = batch_np["query_ids"].shape
    n, td = batch_np["doc_ids"].shape
    kg = batch_np["gen_positions"].shape[1]
    real = int(batch_np["query_mask"].sum() + batch_np["doc_mask"].sum())
    median = statistics.median(times)
    flops = flops_lib.train_step_flops(cfg, b, n // b, tq, td, kg)
    mfu = flops / median / peak if peak and cfg.dtype == "bfloat16" else None
    return dict(
        status="ok", compile_s=compile_s, step_s=median, step_s_min=min(times), step_times_s=times,
        real_tokens=real, padded_tokens=b * tq + n * td, tokens_per_s=real / median, flops=flops, mfu=mfu,
        shapes=dict(batch=b, group=n // b, query_len=tq, doc_len=td, gen_positions=kg),
        temp_gib=memory.temp_size_in_bytes / 2**30 if memory is not None else None,
        loss_first=losses[0], loss_last=losses[-1], finite=bool(np.all(np.isfinite(losses))), cudnn_fmha=fused)


def hidden_difference(name: str, params, batch_np: dict, args) -> dict:
    """Max |h_dot_product - h_xla| over the real positions of the batch's queries and documents."""
    hidden, fused = {}, {}
    for impl in ("xla", "dot_product"):
        cfg, _ = presets.preset(name, **model_overrides(name, impl, args))
        model = LlamaForCausalLM(cfg)

        def forward(p, b, model=model):
            def last(ids, mask):
                return model.apply({"params": p}, ids, attention_mask=mask, compute_logits=False).last_hidden_state

            return last(b["query_ids"], b["query_mask"]), last(b["doc_ids"], b["doc_mask"])

        compiled = jax.jit(forward).lower(params, batch_np).compile()
        fused[impl] = uses_cudnn_attention(compiled)
        hidden[impl] = [np.asarray(h, np.float32) for h in jax.block_until_ready(compiled(params, batch_np))]
    diff = ref = 0.0
    for part, key in enumerate(("query_mask", "doc_mask")):
        real = batch_np[key] == 1  # padding queries' rows are nobody's output and may differ
        x, y = hidden["xla"][part][real], hidden["dot_product"][part][real]
        diff, ref = max(diff, float(np.abs(y - x).max())), max(ref, float(np.abs(x).max()))
    return dict(status="ok", reference="xla", candidate="dot_product", dtype=args.dtype, max_abs_diff=diff,
                max_abs_hidden=ref, relative=diff / ref if ref else None, cudnn_fmha=fused["dot_product"],
                real_positions=int(batch_np["query_mask"].sum() + batch_np["doc_mask"].sum()))


def generate_case(cfg: LlamaConfig, params, tok: TokenIds, sizes: dict, args) -> dict:
    """Greedy tokens/s: `sizes['gen_rows']` prompts, exactly `gen_new` new tokens each."""
    model = LlamaForCausalLM(cfg)
    ids, mask = synthetic_prompts(np.random.default_rng(args.seed + 1), tok, sizes["gen_rows"], sizes["gen_prompt"])
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    sampling = Sampling(max_new_tokens=sizes["gen_new"], temperature=0.0)

    def run():  # eos_id -1 never occurs: no row stops early, none suppresses <eos>
        return generate(model, params, ids, mask, jax.random.key(0), sampling, eos_id=-1, pad_id=tok.pad)

    start = time.perf_counter()
    out = jax.block_until_ready(run())
    first_s = time.perf_counter() - start
    times = []
    for _ in range(args.gen_repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    tokens = int(np.prod(out["tokens"].shape))
    median = statistics.median(times)
    return dict(status="ok", rows=int(ids.shape[0]), prompt_len=int(ids.shape[1]), new_tokens=sizes["gen_new"],
                generated_tokens=tokens, first_call_s=first_s, s=median, times_s=times, tokens_per_s=tokens / median)


# ----------------------------------------------------------------------------- the run


class Budget:
    """Skips a case when the time so far plus the longest case of its kind would pass the limit."""

    def __init__(self, seconds: float):
        self.seconds, self.start, self.longest = seconds, time.perf_counter(), {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def refuses(self, kind: str) -> str | None:
        # A kind not run yet is assumed as long as the longest case so far.
        estimate = self.longest.get(kind, max(self.longest.values(), default=0.0))
        if self.elapsed() + estimate > self.seconds:
            return (f"skipped: {self.elapsed():.0f} s elapsed + ~{estimate:.0f} s for a {kind} case would pass "
                    f"--max_seconds {self.seconds:g}")
        return None

    def run(self, kind: str, fn) -> dict:
        note = self.refuses(kind)
        if note:
            print(note, flush=True)
            return dict(status="skipped", note=note)
        start = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # one case's failure (out of memory, a missing kernel) must not lose the rest
            first = (str(e).strip().splitlines() or [""])[0][:300]
            out = dict(status="error", note=f"{type(e).__name__}: {first}")
            print(f"{kind} case failed: {out['note']}", flush=True)
        out["wall_s"] = time.perf_counter() - start
        self.longest[kind] = max(self.longest.get(kind, 0.0), out["wall_s"])
        return out


@dataclasses.dataclass
class Preset:
    """One preset's shared inputs: every case of it runs on these parameters and this batch."""

    name: str
    sizes: dict
    cfg: LlamaConfig  # attention="xla"; the train cases replace it
    tok: TokenIds
    batch: dict
    params: dict


def prepare_preset(name: str, sizes: dict, attentions: list[str], args, result: dict) -> Preset:
    """The preset's batch and random parameters, and its description in `result`."""
    cfg, _ = presets.preset(name, **model_overrides(name, "xla", args))
    tok = token_ids(cfg)
    batch = synthetic_batch(np.random.default_rng(args.seed), tok, sizes["batch"], sizes["group"],
                            sizes["max_query"], sizes["max_thought"], sizes["max_doc"])
    params = jax.jit(lambda key: init_params(cfg, key))(jax.random.key(args.seed))
    result["presets"][name] = dict(sizes=sizes, tokens=dataclasses.asdict(tok),
                                   overrides={a: model_overrides(name, a, args) for a in attentions},
                                   parameters=int(sum(x.size for x in jax.tree_util.tree_leaves(params))))
    return Preset(name, sizes, cfg, tok, batch, params)


def train_rows(p: Preset, chunks: int, attentions: list[str], have_gc: bool, peak, budget: Budget, args,
               result: dict) -> None:
    """The train rows of one preset with GradCache in `chunks` chunks (1: off), one per attention."""
    for attention in attentions:
        row = dict(preset=p.name, attention=attention, grad_cache="on" if chunks > 1 else "off",
                   grad_cache_chunks=chunks)
        if chunks > 1 and not have_gc:
            row.update(status="unavailable",
                       note="o1_jax.training.step.make_train_step has no grad_cache_chunks keyword yet")
        else:
            cfg, _ = presets.preset(p.name, **model_overrides(p.name, attention, args))
            row.update(budget.run("train (GradCache)" if chunks > 1 else "train",
                                  lambda: train_case(cfg, p.params, p.batch, p.tok, chunks, args, peak)))
        result["train"].append(row)
        _print_progress("train", row)


def run_suite(args) -> dict:
    device = jax.devices()[0]
    backend = jax.default_backend()
    kind = "cpu" if device.platform == "cpu" else device.device_kind
    peak = peak_bf16_flops(kind) if device.platform != "cpu" else None
    sizes_all = SIZES["cpu" if args.cpu else "device"]
    attentions = backend_attentions(backend)
    have_gc = grad_cache_available()
    budget = Budget(args.max_seconds)
    result = dict(
        suite="benchmarks/device_suite.py",
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        jax_version=jax.__version__, jaxlib_version=jaxlib.__version__,
        python=platform.python_version(), backend=backend, device_kind=kind, device_count=jax.device_count(),
        peak_bf16_flops=peak, mode="cpu" if args.cpu else "device", dtype=args.dtype, param_dtype="float32",
        remat_policy=args.remat, attentions=attentions, grad_cache_available=have_gc,
        args={k: v for k, v in vars(args).items()}, loss=LOSS, optimizer=OPTIMIZER,
        presets={}, train=[], attention_diff=[], generate=[])
    print(f"device: {kind} ({backend}, {jax.device_count()} device(s), using 1); jax {jax.__version__}; "
          f"{result['date']}", flush=True)
    # GradCache rows last: when the time guard cuts the run short, it cuts those first.
    prepared = [prepare_preset(name, sizes_all[name], attentions, args, result) for name in args.presets]
    for p in prepared:
        train_rows(p, 1, attentions, have_gc, peak, budget, args, result)
        row = dict(preset=p.name, **budget.run("attention check", lambda: hidden_difference(p.name, p.params, p.batch,
                                                                                           args)))
        result["attention_diff"].append(row)
        _print_progress("attention check", row)
        row = dict(preset=p.name, **budget.run("generate", lambda: generate_case(p.cfg, p.params, p.tok, p.sizes,
                                                                                args)))
        result["generate"].append(row)
        _print_progress("generate", row)
    for p in prepared:
        train_rows(p, p.sizes["grad_cache_chunks"], attentions, have_gc, peak, budget, args, result)
    result["total_s"] = budget.elapsed()
    result["third_party_modules"] = third_party_modules()
    return result


def _print_progress(what: str, row: dict) -> None:
    detail = " ".join(f"{k}={row[k]}" for k in ("attention", "grad_cache") if k in row)
    took = f" ({row['wall_s']:.1f} s)" if "wall_s" in row else ""
    note = f" {row['note']}" if row.get("note") else ""
    print(f"  {what} {row['preset']} {detail}: {row['status']}{took}{note}", flush=True)


def _fmt(x, spec: str, missing: str = "n/a") -> str:
    return missing if x is None else format(x, spec)


def print_tables(r: dict) -> None:
    print()
    print(f"device kind: {r['device_kind']} | backend {r['backend']} | jax {r['jax_version']} "
          f"(jaxlib {r['jaxlib_version']}) | {r['date']}")
    peak = f"{r['peak_bf16_flops'] / 1e12:.1f} TFLOP/s bf16 dense" if r["peak_bf16_flops"] else "unknown (MFU n/a)"
    print(f"compute {r['dtype']}, parameters {r['param_dtype']}, remat {r['remat_policy']}; peak {peak}; "
          f"GradCache {'available' if r['grad_cache_available'] else 'unavailable'}")
    for name, p in r["presets"].items():
        s = p["sizes"]
        tq, _, td = formatting.sequence_lengths(s["max_query"], s["max_thought"], s["max_doc"])
        print(f"{name}: {p['parameters']:,} parameters; batch {s['batch']} queries x {tq} tokens + "
              f"{s['batch'] * s['group']} documents (group {s['group']}) x {td} tokens")
    print()
    print("| preset | attention | GradCache | status | compile s | step s (median) | real tokens/s | "
          "model TFLOP/step | MFU | temp GiB | cuDNN fmha |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in r["train"]:
        gc = "off" if row["grad_cache"] == "off" else f"{row['grad_cache_chunks']} chunks"
        if row["status"] != "ok":
            print(f"| {row['preset']} | {row['attention']} | {gc} | {row['status']}: {row.get('note', '')} "
                  "| | | | | | | |")
            continue
        mfu = _fmt(None if row["mfu"] is None else 100 * row["mfu"], ".1f")
        print(f"| {row['preset']} | {row['attention']} | {gc} | ok | {row['compile_s']:.1f} | {row['step_s']:.4f} | "
              f"{row['tokens_per_s']:,.0f} | {row['flops'] / 1e12:.4g} | {mfu if mfu == 'n/a' else mfu + '%'} | "
              f"{_fmt(row['temp_gib'], '.2f')} | {'yes' if row['cudnn_fmha'] else 'no'} |")
    print()
    print("| preset | attention check | max abs diff (real positions) | max abs hidden | relative | cuDNN fmha |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for row in r["attention_diff"]:
        if row["status"] != "ok":
            print(f"| {row['preset']} | {row['status']}: {row.get('note', '')} | | | | |")
            continue
        print(f"| {row['preset']} | dot_product vs xla ({row['dtype']}) | {row['max_abs_diff']:.3g} | "
              f"{row['max_abs_hidden']:.3g} | {_fmt(row['relative'], '.2g')} | "
              f"{'yes' if row['cudnn_fmha'] else 'no'} |")
    print()
    print("| preset | generation (greedy) | first call s (compile) | s (median) | tokens/s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in r["generate"]:
        if row["status"] != "ok":
            print(f"| {row['preset']} | {row['status']}: {row.get('note', '')} | | | |")
            continue
        print(f"| {row['preset']} | {row['rows']} prompts x {row['prompt_len']} + {row['new_tokens']} new | "
              f"{row['first_call_s']:.1f} | {row['s']:.3f} | {row['tokens_per_s']:,.0f} |")
    print()
    print(f"total {r['total_s']:.1f} s; third-party modules loaded: {', '.join(r['third_party_modules'])}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true",
                        help="run on the CPU at tiny shapes (the same code; MFU n/a), in well under a minute")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--steps", type=int, default=None, help="timed train steps per case (5; --cpu: 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--gen_repeats", type=int, default=None, help="timed generation calls (3; --cpu: 1)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                        help="compute dtype (bfloat16; --cpu: float32); parameters are float32")
    parser.add_argument("--remat", default="full", choices=REMAT_POLICIES,
                        help="remat policy (full: what configs/llama32_1b_o1.py trains with; see above)")
    parser.add_argument("--max_seconds", type=float, default=400.0,
                        help="skip the remaining cases (with a note) once one more would pass this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (2 if args.cpu else 5)
    args.gen_repeats = args.gen_repeats if args.gen_repeats is not None else (1 if args.cpu else 3)
    args.dtype = args.dtype or ("float32" if args.cpu else "bfloat16")
    if args.steps < 1 or args.warmup < 0 or args.gen_repeats < 1:
        parser.error("--steps and --gen_repeats must be at least 1, --warmup at least 0")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json}: its folder does not exist")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu:
        # Before any backend starts. The CPU run checks the code path, not the speed: unoptimised
        # compiles, without XLA:CPU's fusion emitters, take a third of the time (they are most of it).
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_disable_most_optimizations", True)
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_cpu_use_fusion_emitters=false"])
    result = run_suite(args)
    print_tables(result)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    loaded = [m for m in FORBIDDEN_MODULES if m in result["third_party_modules"]]
    if loaded:
        print(f"error: the suite loaded {loaded}, which a stock JAX image lacks", file=sys.stderr)
        return 1
    failed = [row for rows in (result["train"], result["attention_diff"], result["generate"]) for row in rows
              if row["status"] == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
