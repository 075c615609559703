"""SmolLM2-135M forward and forward+backward: o1_jax (jax.jit) vs transformers (torch), same run.

Both sides load the same float32 safetensors and see the same seeded random token ids.
Forward: logits for the whole batch (jit-compiled o1_jax vs torch eval under no_grad).
Forward+backward: the next-token cross-entropy and its gradient with respect to every
parameter (`jax.value_and_grad` vs `loss.backward()`). Each figure is the median of
`--repeats` timed runs after `--warmup` untimed ones (for o1_jax, compilation happens
in the warm-up); o1_jax and torch runs alternate, so load that drifts during the run
falls on both sides alike. The two forward losses must agree, so we know the same thing is timed.

    python benchmarks/forward.py [--batch 8 --seq 128 --repeats 7 --warmup 2 --json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers
from machine import (  # benchmarks/machine.py, next to this file
    describe_machine,
    machine,
    peak_rss_gib,
    write_json,
)

from o1_jax import hf
from o1_jax.hf import fetch

MODEL = "smollm2-135m-instruct"
LOSS_RTOL = 1e-4


def next_token_loss_np(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean cross-entropy of token t+1 given logits at t, in float64 (the agreement check)."""
    logits = logits[:, :-1].astype(np.float64)
    targets = ids[:, 1:]
    m = logits.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return float((logz - picked).mean())


def timed_pair(fn_a, fn_b, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall times of `fn_a` and `fn_b`, alternated run by run so drifting load hits both alike."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times_a, times_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32"], help="both sides run float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1 (o1_jax compiles during warm-up)")

    load_before = os.getloadavg()[0]  # other work on the machine skews CPU timings: report it
    path = fetch.fetch(MODEL)
    model, params = hf.load_pretrained(path, dtype=args.dtype)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens = args.batch * args.seq

    rng = np.random.default_rng(args.seed)
    ids_np = rng.integers(0, model.cfg.vocab_size, size=(args.batch, args.seq), dtype=np.int64)
    ids = jnp.asarray(ids_np, jnp.int32)
    mask = jnp.ones_like(ids)
    ids_t = torch.from_numpy(ids_np)

    # --- o1_jax ---------------------------------------------------------------------------
    @jax.jit
    def jax_logits(p, ids, mask):
        return model.apply({"params": p}, ids, attention_mask=mask).logits  # [B, T, V]

    def jax_loss(p, ids, mask):
        logits = model.apply({"params": p}, ids, attention_mask=mask).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    jax_grad = jax.jit(jax.value_and_grad(jax_loss))

    # --- transformers ----------------------------------------------------------------------
    def torch_logits():
        with torch.no_grad():
            return torch_model(ids_t).logits

    def torch_grad():
        torch_model.zero_grad(set_to_none=True)
        loss = torch_model(ids_t, labels=ids_t).loss  # HF shifts labels: the same next-token loss
        loss.backward()
        return loss

    results = {}
    times = {
        "forward": timed_pair(
            lambda: jax_logits(params, ids, mask).block_until_ready(), torch_logits, args.repeats, args.warmup
        ),
        "forward+backward": timed_pair(
            lambda: jax.block_until_ready(jax_grad(params, ids, mask)), torch_grad, args.repeats, args.warmup
        ),
    }

    # Same thing measured: forward losses from both sides' logits, and the loss each grad step reports.
    jax_fwd_loss = next_token_loss_np(np.asarray(jax_logits(params, ids, mask)), ids_np)
    torch_fwd_loss = next_token_loss_np(torch_logits().numpy(), ids_np)
    jax_step_loss = float(jax_grad(params, ids, mask)[0])
    torch_step_loss = torch_grad().item()
    checks = {
        "forward loss o1_jax": jax_fwd_loss,
        "forward loss torch": torch_fwd_loss,
        "grad-step loss o1_jax": jax_step_loss,
        "grad-step loss torch": torch_step_loss,
    }
    rel = max(abs(a - torch_fwd_loss) / abs(torch_fwd_loss) for a in checks.values())
    losses_agree = rel <= LOSS_RTOL

    load_after = os.getloadavg()[0]
    print(describe_machine())
    print(f"1-min load average: {load_before:.2f} at start, {load_after:.2f} at end")
    print(
        f"versions: jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"(threads {torch.get_num_threads()}, attention {torch_model.config._attn_implementation}), "
        f"transformers {transformers.__version__}"
    )
    print(
        f"model: {MODEL} {args.dtype}, batch {args.batch} x seq {args.seq} = {tokens} tokens, "
        f"median of {args.repeats} runs after {args.warmup} warm-up"
    )
    print()
    print("| measurement | o1_jax s | torch s | speed-up (torch/o1_jax) | tokens/s o1_jax | tokens/s torch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (jax_times, torch_times) in times.items():
        j, t = statistics.median(jax_times), statistics.median(torch_times)
        results[name] = {
            "o1_jax_s": j,
            "torch_s": t,
            "speedup": t / j,
            "o1_jax_tokens_per_s": tokens / j,
            "torch_tokens_per_s": tokens / t,
            "o1_jax_times_s": jax_times,
            "torch_times_s": torch_times,
        }
        print(f"| {name} | {j:.3f} | {t:.3f} | {t / j:.2f}x | {tokens / j:,.0f} | {tokens / t:,.0f} |")
    print()
    print(
        "losses: "
        + ", ".join(f"{k} {v:.6f}" for k, v in checks.items())
        + f"; max relative difference {rel:.1e} ({'agree' if losses_agree else 'DISAGREE'} at {LOSS_RTOL:g})"
    )
    peak_rss = peak_rss_gib()
    print(f"peak RSS: {peak_rss:.2f} GiB")

    if args.json:
        out = {
            "args": vars(args),
            "machine": machine(),
            "load_average_1min": {"start": load_before, "end": load_after},
            "torch_threads": torch.get_num_threads(),
            "torch_attention": torch_model.config._attn_implementation,
            "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
            "results": results,
            "losses": checks,
            "max_relative_loss_difference": rel,
            "losses_agree": losses_agree,
            "peak_rss_gib": peak_rss,
        }
        write_json(args.json, out)
    if not losses_agree:
        raise SystemExit(f"o1_jax and torch losses differ by {rel:.1e} (relative), more than {LOSS_RTOL:g}")


if __name__ == "__main__":
    main()
