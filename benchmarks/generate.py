"""Greedy batched generation, SmolLM2-135M float32: o1_jax `generate` vs transformers `model.generate`.

Both sides get the same left-padded prompt ids (16 SciFact queries of different lengths, or
built-in sentences when the SciFact data is absent) and must produce exactly `--new_tokens`
tokens per row: o1_jax is given an `<eos>` id that cannot occur (-1) and transformers
`eos_token_id=None`, so neither stops early and neither suppresses the real `<eos>` (which
`min_new_tokens` would do, changing the greedy path). Generated tokens = rows x new tokens.

o1_jax's trace + compile is timed on its own (`lower().compile()`) and reported separately; then
both sides are warmed up and timed alternately (median of `--repeats`), so compilation is
excluded and background load hits both alike. The greedy tokens are compared row by row (float
differences may flip a late token, after which a row diverges). A second measurement with one new
token splits the time into prefill and per-step decode: step = (t[N] - t[1]) / (N - 1).

    python benchmarks/generate.py [--rows 16 --new_tokens 64 --repeats 5 --json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from machine import (  # benchmarks/machine.py, next to this file
    SENTENCES,
    describe_machine,
    machine,
    peak_rss_gib,
    write_json,
)

from o1_jax import hf
from o1_jax.hf import fetch
from o1_jax.inference.generate import Sampling, _compiled, generate

MODEL = "smollm2-135m-instruct"
SCIFACT_QUERIES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact" / "queries.jsonl"


def load_queries(rows: int) -> tuple[list[str], str]:
    """`rows` real sentences spread over lengths: SciFact queries sorted by length, evenly spaced."""
    if SCIFACT_QUERIES.exists():
        with open(SCIFACT_QUERIES) as f:
            texts = [json.loads(line)["text"].strip() for line in f if line.strip()]
        texts = sorted(set(texts), key=lambda t: (len(t), t))
        picked = [texts[int(i)] for i in np.linspace(0, len(texts) - 1, rows).round()]
        return picked, f"SciFact queries ({SCIFACT_QUERIES}), {rows} evenly spaced by length"
    if rows > len(SENTENCES):
        raise SystemExit(f"{SCIFACT_QUERIES} is absent and there are only {len(SENTENCES)} built-in sentences")
    return SENTENCES[:rows], "built-in sentences"


def compile_seconds(model, params, ids, mask, sampling: Sampling, *, eos_id: int, pad_id: int,
                    emb_id: int | None = None) -> float:
    """Trace + XLA compile time of `generate` for these shapes (the jitted function it calls)."""
    fn = _compiled(model, sampling, emb_id is not None)
    start = time.perf_counter()
    fn.lower(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jax.random.key(0),
             jnp.int32(eos_id), jnp.int32(pad_id), jnp.int32(emb_id or 0)).compile()
    return time.perf_counter() - start


def interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Warms every function up, then times them in turn, `repeats` rounds: shared noise hits all."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--torch_threads", default="1,2",
                        help="torch thread counts to try; the fastest on a prefill is used (on a loaded machine "
                             "torch's default of one thread per core can be several times slower than one)")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 1 or args.new_tokens < 2:
        parser.error("--repeats and --warmup must be at least 1, --new_tokens at least 2")
    try:
        thread_counts = [int(x) for x in args.torch_threads.split(",")]
    except ValueError:
        parser.error(f"--torch_threads={args.torch_threads!r}: expected comma-separated integers, e.g. 1,2")

    load_before = os.getloadavg()[0]
    path = fetch.fetch(MODEL)
    model, params = hf.load_pretrained(path, dtype="float32")
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, padding_side="left")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    queries, source = load_queries(args.rows)
    enc = tokenizer(queries, return_tensors="np", padding=True)
    ids_np, mask_np = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    ids_t, mask_t = torch.from_numpy(ids_np.astype(np.int64)), torch.from_numpy(mask_np.astype(np.int64))
    prompt_lengths = mask_np.sum(1)
    n = args.new_tokens
    generated = args.rows * n

    def jax_fn(new_tokens):
        sampling = Sampling(max_new_tokens=new_tokens)  # temperature 0: greedy
        # eos -1 never matches a token: every row runs the full new_tokens.
        return lambda: jax.block_until_ready(
            generate(model, params, ids_np, mask_np, jax.random.key(0), sampling, eos_id=-1, pad_id=pad_id))

    def torch_fn(new_tokens):
        config = transformers.GenerationConfig(do_sample=False, max_new_tokens=new_tokens, eos_token_id=None,
                                               pad_token_id=pad_id)

        def run():
            with torch.no_grad():
                return torch_model.generate(input_ids=ids_t, attention_mask=mask_t, generation_config=config)
        return run

    # torch thread count: the fastest prefill + 1 token (median of 3 after a warm-up) wins.
    default_threads = torch.get_num_threads()
    calibration = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        calibration[threads] = statistics.median(interleaved({"t": torch_fn(1)}, 3, 1)["t"])
    torch_threads = min(calibration, key=calibration.get)
    torch.set_num_threads(torch_threads)

    compile_n = compile_seconds(model, params, ids_np, mask_np, Sampling(max_new_tokens=n), eos_id=-1, pad_id=pad_id)
    compile_1 = compile_seconds(model, params, ids_np, mask_np, Sampling(max_new_tokens=1), eos_id=-1, pad_id=pad_id)

    times = interleaved({"o1_jax": jax_fn(n), "torch": torch_fn(n)}, args.repeats, args.warmup)
    times_1 = interleaved({"o1_jax": jax_fn(1), "torch": torch_fn(1)}, args.repeats, args.warmup)

    jax_tokens = np.asarray(jax_fn(n)()["tokens"])
    torch_tokens = torch_fn(n)()[:, ids_np.shape[1]:].numpy()
    if torch_tokens.shape != (args.rows, n) or jax_tokens.shape != (args.rows, n):
        raise SystemExit(f"expected {args.rows}x{n} generated tokens, got o1_jax {jax_tokens.shape}, "
                         f"torch {torch_tokens.shape}")
    same = jax_tokens == torch_tokens
    rows_equal = int(same.all(1).sum())
    first_diff = [int(np.argmin(row)) if not row.all() else None for row in same]
    tokens_equal = int(same.sum())
    eos_emitted = int((torch_tokens == tokenizer.eos_token_id).sum())

    med = {k: statistics.median(v) for k, v in times.items()}
    med_1 = {k: statistics.median(v) for k, v in times_1.items()}
    step = {k: (med[k] - med_1[k]) / (n - 1) for k in med}
    load_after = os.getloadavg()[0]

    print(describe_machine())
    print(f"1-min load average: {load_before:.2f} at start, {load_after:.2f} at end")
    print(f"versions: jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"(threads {torch_threads}, default {default_threads}; attention {torch_model.config._attn_implementation}), "
          f"transformers {transformers.__version__}")
    print("torch threads tried, prefill + 1 token median: "
          + ", ".join(f"{k}: {v:.3f} s" for k, v in calibration.items()) + f"; using {torch_threads}")
    print(f"model: {MODEL} float32; prompts: {source}; {args.rows} rows, prompt tokens "
          f"{prompt_lengths.min()}-{prompt_lengths.max()} (left-padded to {ids_np.shape[1]}); greedy, "
          f"exactly {n} new tokens per row = {generated} generated tokens; median of {args.repeats} "
          f"alternating runs after {args.warmup} warm-up")
    print()
    print("| measurement | o1_jax s | torch s | o1_jax tokens/s | torch tokens/s | speed-up (torch/o1_jax) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    j, t = med["o1_jax"], med["torch"]
    print(f"| generate {args.rows} x {n} tokens | {j:.3f} | {t:.3f} | {generated / j:,.0f} | "
          f"{generated / t:,.0f} | {t / j:.2f}x |")
    j1, t1 = med_1["o1_jax"], med_1["torch"]
    print(f"| prefill + 1 token | {j1:.3f} | {t1:.3f} | | | {t1 / j1:.2f}x |")
    print(f"| per decode step ({args.rows} rows) | {step['o1_jax'] * 1e3:.1f} ms | {step['torch'] * 1e3:.1f} ms | "
          f"{args.rows / step['o1_jax']:,.0f} | {args.rows / step['torch']:,.0f} | "
          f"{step['torch'] / step['o1_jax']:.2f}x |")
    print()
    print(f"o1_jax trace + compile (excluded above): {compile_n:.2f} s for {n} new tokens, "
          f"{compile_1:.2f} s for 1")
    print(f"greedy tokens: {rows_equal}/{args.rows} rows identical, {tokens_equal}/{generated} tokens equal; "
          f"first differing step per differing row: {[d for d in first_diff if d is not None]}; "
          f"<eos> generated {eos_emitted} times (neither side stops on it)")
    peak_rss = peak_rss_gib()
    print(f"peak RSS: {peak_rss:.2f} GiB")

    if args.json:
        out = {
            "args": vars(args),
            "machine": machine(),
            "load_average_1min": {"start": load_before, "end": load_after},
            "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
            "prompt_source": source,
            "torch_threads": {"used": torch_threads, "default": default_threads, "prefill_s": calibration},
            "times_s": times,
            "times_1_token_s": times_1,
            "median_s": med,
            "median_1_token_s": med_1,
            "decode_step_s": step,
            "compile_s": {"new_tokens": compile_n, "one_token": compile_1},
            "rows_identical": rows_equal,
            "tokens_equal": tokens_equal,
            "first_differing_step": first_diff,
            "peak_rss_gib": peak_rss,
        }
        write_json(args.json, out)


if __name__ == "__main__":
    main()
