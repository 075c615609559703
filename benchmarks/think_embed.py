"""Query embedding with one thought, SmolLM2-135M + the O1 special tokens: one pass vs two passes, both o1_jax.

(a) one pass: `generate(..., emb_id=<emb>)` prefills `<query>q</query><thought>`, decodes the
    thought greedily through a KV cache, then feeds `<eos><emb>` through the same cache and
    returns the normalised hidden state at `<emb>`.
(b) two passes, the original O1 Embedder method: `generate(...)` without `emb_id`, decode the
    thought tokens to text with the tokenizer, re-tokenise `<query>q</query><thought>{t}<eos><emb>`
    with `Formatter.collate_queries`, and run a full jitted forward (`forward.embed`). The
    decode / re-tokenise time on the host is part of (b).

The model is the pretrained SmolLM2 with `<query> </query> <thought> <emb>` added and the
embedding resized (new rows = the mean row), as training starts from. Both methods are compiled
and warmed up first (compile timed apart and excluded), then timed alternately, median of `--repeats`. The
embeddings must agree (cosine > 0.999) on every row whose re-tokenised thought equals the
generated tokens; rows that do not round-trip embed a different token sequence in (b).

    python benchmarks/think_embed.py [--rows 16 --thought_tokens 64 --repeats 5 --json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np
import transformers
from generate import (  # benchmarks/generate.py, next to this file
    compile_seconds,
    interleaved,
    load_queries,
)
from machine import (  # benchmarks/machine.py, next to this file
    describe_machine,
    machine,
    peak_rss_gib,
    write_json,
)

from o1_jax import forward, hf
from o1_jax.data.formatting import Formatter, add_special_tokens
from o1_jax.hf import fetch
from o1_jax.inference.generate import Sampling, generate
from o1_jax.models.vocab import resize_vocab
from o1_jax.models import LlamaForCausalLM

MODEL = "smollm2-135m-instruct"
COSINE_MIN = 0.999
MAX_QUERY_TOKENS = 128  # no SciFact query is longer: nothing is truncated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--thought_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 1 or args.thought_tokens < 1:
        parser.error("--repeats, --warmup and --thought_tokens must be at least 1")

    load_before = os.getloadavg()[0]
    path = fetch.fetch(MODEL)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, padding_side="left")
    known_rows = len(tokenizer)
    special = add_special_tokens(tokenizer)
    base, params = hf.load_pretrained(path, dtype="float32")
    params, cfg = resize_vocab(params, base.cfg, len(tokenizer), sorted(special.values()),
                                         min(known_rows, base.cfg.vocab_size))
    model = LlamaForCausalLM(cfg)
    fmt = Formatter(tokenizer, MAX_QUERY_TOKENS, args.thought_tokens, max_doc_tokens=8)

    queries, source = load_queries(args.rows)
    prompts = fmt.collate_prompts(queries)
    prompt_ids, prompt_mask = prompts["prompt_ids"], prompts["prompt_mask"]
    sampling = Sampling(max_new_tokens=args.thought_tokens)  # greedy
    ids_kw = dict(eos_id=fmt.eos_id, pad_id=fmt.pad_id)
    embed = jax.jit(lambda p, ids, mask: forward.embed(model, p, ids, mask))

    def one_pass():
        out = generate(model, params, prompt_ids, prompt_mask, jax.random.key(0), sampling, emb_id=fmt.emb_id,
                       **ids_kw)
        return jax.block_until_ready(out)

    def two_pass(parts: dict | None = None, forward: bool = True):
        start = time.perf_counter()
        out = generate(model, params, prompt_ids, prompt_mask, jax.random.key(0), sampling, **ids_kw)
        tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])  # waits for the device
        t_gen = time.perf_counter()
        # As the original: the thought as text (specials dropped), then the query format from text.
        thoughts = tokenizer.batch_decode([row[:n] for row, n in zip(tokens, lengths)], skip_special_tokens=True)
        batch = fmt.collate_queries(queries, thoughts)
        t_text = time.perf_counter()
        if not forward:
            return batch
        emb = jax.block_until_ready(embed(params, batch["query_ids"], batch["query_mask"]))
        if parts is not None:
            end = time.perf_counter()
            parts.setdefault("generate", []).append(t_gen - start)
            parts.setdefault("decode + re-tokenise", []).append(t_text - t_gen)
            parts.setdefault("full forward", []).append(end - t_text)
        return {"tokens": tokens, "lengths": lengths, "thoughts": thoughts, "batch": batch, "embeddings": emb}

    compile_one = compile_seconds(model, params, prompt_ids, prompt_mask, sampling, emb_id=fmt.emb_id, **ids_kw)
    compile_gen = compile_seconds(model, params, prompt_ids, prompt_mask, sampling, **ids_kw)
    shape = two_pass(forward=False)  # the re-tokenised batch's shape decides the forward's compile
    start = time.perf_counter()
    embed.lower(params, shape["query_ids"], shape["query_mask"]).compile()
    compile_fwd = time.perf_counter() - start

    parts: dict[str, list[float]] = {}
    times = interleaved({"one-pass": one_pass, "two-pass": lambda: two_pass(parts)}, args.repeats, args.warmup)
    parts = {k: v[args.warmup:] for k, v in parts.items()}  # drop the warm-up call's split

    # Agreement: the same greedy thought in both; embeddings equal where the text round-trips.
    a, b = one_pass(), two_pass()
    np.testing.assert_array_equal(np.asarray(a["tokens"]), b["tokens"])
    emb_a, emb_b = np.asarray(a["embeddings"]), np.asarray(b["embeddings"])
    cosine = (emb_a * emb_b).sum(-1) / (np.linalg.norm(emb_a, axis=-1) * np.linalg.norm(emb_b, axis=-1))
    round_trip = []
    for i in range(args.rows):
        row = b["batch"]["query_ids"][i][b["batch"]["query_mask"][i] == 1].tolist()
        retokenised = row[row.index(fmt.thought_id) + 1: -2] if row[-2] == fmt.eos_id else None
        round_trip.append(retokenised == b["tokens"][i, : b["lengths"][i]].tolist())
    round_trip = np.array(round_trip)
    agree = cosine[round_trip] > COSINE_MIN
    # Untimed control over every row: the full forward of exactly the generated tokens
    # (prompt + thought + <eos><emb>, no text round trip) must give (a)'s embedding.
    rows = [prompt_ids[i][prompt_mask[i] == 1].tolist() + b["tokens"][i, : b["lengths"][i]].tolist()
            + [fmt.eos_id, fmt.emb_id] for i in range(args.rows)]
    width = max(map(len, rows))
    exact_ids = np.array([[fmt.pad_id] * (width - len(r)) + r for r in rows], np.int32)
    exact_mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int32)
    emb_exact = np.asarray(embed(params, exact_ids, exact_mask))
    cosine_exact = (emb_a * emb_exact).sum(-1) / (np.linalg.norm(emb_a, axis=-1) * np.linalg.norm(emb_exact, axis=-1))
    lengths = b["lengths"]

    med = {k: statistics.median(v) for k, v in times.items()}
    med_parts = {k: statistics.median(v) for k, v in parts.items()}
    load_after = os.getloadavg()[0]

    print(describe_machine())
    print(f"1-min load average: {load_before:.2f} at start, {load_after:.2f} at end")
    print(f"versions: jax {jax.__version__} ({jax.default_backend()}), transformers {transformers.__version__}")
    print(f"model: {MODEL} float32 + 4 O1 special tokens (vocab {cfg.vocab_size}); queries: {source}; "
          f"{args.rows} rows, prompts padded to {prompt_ids.shape[1]}, re-tokenised queries to "
          f"{b['batch']['query_ids'].shape[1]}; greedy thoughts of up to {args.thought_tokens} tokens "
          f"(lengths {lengths.min()}-{lengths.max()}, mean {lengths.mean():.1f}); median of {args.repeats} "
          f"alternating runs after {args.warmup} warm-up")
    print()
    print("| method | s per batch of queries | ms per query | one-pass / two-pass |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| (a) one pass: generate + `<eos><emb>` through the KV cache | {med['one-pass']:.3f} | "
          f"{med['one-pass'] / args.rows * 1e3:.0f} | {med['one-pass'] / med['two-pass']:.2f} |")
    print(f"| (b) two passes: generate, decode + re-tokenise, full forward | {med['two-pass']:.3f} | "
          f"{med['two-pass'] / args.rows * 1e3:.0f} | 1.00 |")
    for name, value in med_parts.items():
        print(f"| &nbsp;&nbsp;(b) of which {name} | {value:.3f} | {value / args.rows * 1e3:.0f} | |")
    print()
    print(f"trace + compile (excluded above): one-pass {compile_one:.2f} s; two-pass {compile_gen + compile_fwd:.2f} s "
          f"(generate {compile_gen:.2f} s + forward {compile_fwd:.2f} s)")
    print(f"round trip: {int(round_trip.sum())}/{args.rows} rows re-tokenise to the generated thought tokens; "
          f"cosine(a, b) on those rows: min {cosine[round_trip].min() if round_trip.any() else float('nan'):.6f} "
          f"({int(agree.sum())}/{int(round_trip.sum())} > {COSINE_MIN}); on the other rows: "
          + (f"min {cosine[~round_trip].min():.6f}" if (~round_trip).any() else "none"))
    print(f"control: full forward of exactly the generated tokens vs (a), all {args.rows} rows: cosine min "
          f"{cosine_exact.min():.6f}, max |difference| {np.abs(emb_a - emb_exact).max():.2e}")
    peak_rss = peak_rss_gib()
    print(f"peak RSS: {peak_rss:.2f} GiB")

    if args.json:
        out = {
            "args": vars(args),
            "machine": machine(),
            "load_average_1min": {"start": load_before, "end": load_after},
            "times_s": times,
            "two_pass_parts_s": parts,
            "median_s": med,
            "ratio_one_over_two": med["one-pass"] / med["two-pass"],
            "compile_s": {"one-pass": compile_one, "two-pass generate": compile_gen, "two-pass forward": compile_fwd},
            "thought_lengths": lengths.tolist(),
            "round_trip": round_trip.tolist(),
            "cosine": cosine.tolist(),
            "cosine_exact_tokens": cosine_exact.tolist(),
            "peak_rss_gib": peak_rss,
        }
        write_json(args.json, out)
    if not agree.all() or not (cosine_exact > COSINE_MIN).all():
        raise SystemExit(f"one-pass and two-pass embeddings differ (cosine <= {COSINE_MIN}) on "
                         f"{int((~agree).sum())} rows whose thought round-trips, "
                         f"{int((cosine_exact <= COSINE_MIN).sum())} rows given the exact tokens")


if __name__ == "__main__":
    main()
