"""Candidate thoughts per second: the synthesis expert (SmolLM2-135M-Instruct, float32) through o1_jax
generation vs transformers `model.generate`, on the same prompts, batches and sampling settings.

Prompts are the pipeline's own: `--queries` SciFact train queries (evenly spaced over the train
records built by o1_jax.data.prepare, no negatives needed), `--candidates` thoughts per query, from
the chat template around the few-shot prompt (`--examples` examples from other records, passages
cut to `--example_words` words): one prompt per query sampled n times (the pipeline's default), or
with `--fresh_examples` one prompt per candidate. `LlamaExpert.plan` sorts the prompts by length
and cuts the batches; o1_jax runs `LlamaExpert.propose` end to end (tokenised prompts in, decoded
texts out; a shared prompt is prefilled once and sampled n times from its KV cache), transformers
gets each batch as the same left-padded tensors (same width, without o1_jax's empty padding rows)
and `generate(do_sample=True, temperature, top_p, top_k=0, max_new_tokens, num_return_sequences=n,
eos=pad=<|im_end|>)` (which repeats each prompt n times before its prefill), then decodes. Both
stop a batch when all its rows have emitted <|im_end|> (or at max new tokens); since the samples
differ, the thoughts' token counts are reported beside the thoughts/s. Timed: each side's batches
(generation + decoding to text; building and tokenising the prompts is common to both and not
timed), batch by batch in turn.

o1_jax compiles once per prompt width: every width in the plan is compiled (one batch each) before
timing, and that time is reported as "compile warm-up". The two sides then run batch by batch in
turn, `--repeats` rounds, and the medians of the totals are compared. torch uses the fastest of `--torch_threads`
on one batch's prefill.

    python benchmarks/synthesize.py [--queries 64 --candidates 3 --batch_size 48 --new_tokens 64 --fresh_examples]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time

import jax
import numpy as np
import torch
import transformers
from machine import (  # benchmarks/machine.py, next to this file
    cpu_model,
    describe_machine,
    write_json,
)

from o1_jax.data import beir, prepare
from o1_jax.hf import fetch
from o1_jax.synthesis.expert import FewShotPool, GenerationSettings, LlamaExpert

MODEL = "smollm2-135m-instruct"
SCIFACT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beir", default=str(SCIFACT))
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=48, help="generated rows per batch")
    parser.add_argument("--fresh_examples", action="store_true", help="one prompt per candidate")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.9)
    parser.add_argument("--examples", type=int, default=3)
    parser.add_argument("--example_words", type=int, default=32)
    parser.add_argument("--bucket", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch_threads", default="1,2")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    thread_counts = [int(x) for x in args.torch_threads.split(",")]
    load_before = os.getloadavg()[0]

    corpus, queries, qrels = beir.load_beir(args.beir, "train")
    records = prepare.build_records(corpus, queries, qrels, negatives=0, depth=1, seed=0)
    picked = [records[int(i)] for i in np.linspace(0, len(records) - 1, args.queries).round()]

    path = fetch.fetch(MODEL)
    pool = FewShotPool(records, num_examples=args.examples, seed=args.seed, max_words=args.example_words)
    settings = GenerationSettings(max_new_tokens=args.new_tokens, temperature=args.temperature, top_p=args.top_p,
                                  bucket=args.bucket)
    expert = LlamaExpert.load(str(path), pool, batch_size=args.batch_size, settings=settings,
                              fresh_examples=args.fresh_examples)
    tok = expert.tokenizer
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    plan = expert.plan(picked, args.candidates)
    prompts, batches, samples = plan.prompts, plan.batches, plan.samples
    collated = [expert.collate([prompts[u] for u in b], expert.prompts_per_batch(samples)) for b in batches]
    widths = [ids.shape[1] for ids, _ in collated]
    prompt_tokens = [len(p) for p in prompts]
    count = len(picked) * args.candidates
    gen_config = transformers.GenerationConfig(
        do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0, max_new_tokens=args.new_tokens,
        num_return_sequences=samples, eos_token_id=expert.eos_id, pad_token_id=expert.pad_id)

    def run_jax(k):
        return [t for group in expert.generate_batch([prompts[u] for u in batches[k]], samples, args.seed, k)
                for t in group]

    def run_torch(k):
        (ids, mask), n = collated[k], len(batches[k])
        with torch.no_grad():
            out = torch_model.generate(input_ids=torch.from_numpy(ids[:n].astype(np.int64)),
                                       attention_mask=torch.from_numpy(mask[:n].astype(np.int64)),
                                       generation_config=gen_config)
        texts, lengths = [], []
        for row in out[:, ids.shape[1]:].numpy():
            cut = np.flatnonzero(row == expert.eos_id)
            row = row[: cut[0]] if len(cut) else row
            lengths.append(len(row))
            texts.append(tok.decode(row, skip_special_tokens=True).strip())
        return texts

    # torch threads: the fastest prefill of 4 rows of the widest batch.
    default_threads = torch.get_num_threads()
    calibration = {}
    ids, mask = collated[-1][0][:4], collated[-1][1][:4]
    for threads in thread_counts:
        torch.set_num_threads(threads)
        one = transformers.GenerationConfig(do_sample=False, max_new_tokens=1, eos_token_id=None,
                                            pad_token_id=expert.pad_id)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            with torch.no_grad():
                torch_model.generate(input_ids=torch.from_numpy(ids.astype(np.int64)),
                                     attention_mask=torch.from_numpy(mask.astype(np.int64)), generation_config=one)
            times.append(time.perf_counter() - start)
        calibration[threads] = min(times)
    torch_threads = min(calibration, key=calibration.get)
    torch.set_num_threads(torch_threads)

    # o1_jax: compile every prompt width once (one batch each).
    start = time.perf_counter()
    first_of_width = {}
    for k, w in enumerate(widths):
        first_of_width.setdefault(w, k)
    for k in first_of_width.values():
        expert.generate_batch([prompts[u] for u in batches[k]], samples, args.seed, 0)
    warmup = time.perf_counter() - start

    # Batch by batch, the two sides in turn (the order flipping every batch), so that a change in
    # the machine's load hits both alike; `--repeats` rounds, the median of each side's totals.
    times = {"o1_jax": [], "torch": []}
    texts = {"o1_jax": [], "torch": []}
    for _ in range(args.repeats):
        total = {"o1_jax": 0.0, "torch": 0.0}
        texts = {"o1_jax": [], "torch": []}
        for k in range(len(batches)):
            sides = [("o1_jax", run_jax), ("torch", run_torch)]
            for name, fn in sides if k % 2 == 0 else sides[::-1]:
                start = time.perf_counter()
                texts[name] += fn(k)
                total[name] += time.perf_counter() - start
        for name in total:
            times[name].append(total[name])
    assert len(texts["o1_jax"]) == len(texts["torch"]) == count
    tokens = {name: sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts[name]) for name in texts}
    med = {k: statistics.median(v) for k, v in times.items()}
    load_after = os.getloadavg()[0]

    print(describe_machine())
    print(f"1-min load average: {load_before:.2f} at start, {load_after:.2f} at end")
    print(f"versions: jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} (threads "
          f"{torch_threads}, default {default_threads}; prefill of one batch: "
          + ", ".join(f"{k}: {v:.2f} s" for k, v in calibration.items()) + f"), transformers {transformers.__version__}")
    layout = "one prompt per candidate" if args.fresh_examples else f"one prompt per query, sampled {samples} times"
    print(f"model: {MODEL} float32; {args.queries} SciFact train queries x {args.candidates} candidates = {count} "
          f"thoughts, {layout}: {len(prompts)} prompts ({args.examples} few-shot examples of <= {args.example_words} "
          f"words), prompt tokens {min(prompt_tokens)}-{max(prompt_tokens)} (mean {np.mean(prompt_tokens):.0f}); "
          f"{len(batches)} batches of {expert.prompts_per_batch(samples)} prompts, widths {sorted(set(widths))}; sampling temperature {args.temperature}, top-p "
          f"{args.top_p}, <= {args.new_tokens} new tokens, stop at <|im_end|>; median of {args.repeats} alternating runs")
    print()
    print("| side | seconds | candidate thoughts/s | thought tokens (re-tokenised) | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    j, t = med["o1_jax"], med["torch"]
    print(f"| o1_jax (LlamaExpert.generate_batch) | {j:.1f} | {count / j:.2f} | {tokens['o1_jax']} | {t / j:.2f}x |")
    print(f"| transformers generate | {t:.1f} | {count / t:.2f} | {tokens['torch']} | 1.00x |")
    print()
    print(f"o1_jax compile warm-up ({len(first_of_width)} widths, one batch each): {warmup:.1f} s")
    print("first o1_jax thoughts:", [t[:80] for t in texts["o1_jax"][:2]])
    print("first torch thoughts:", [t[:80] for t in texts["torch"][:2]])

    if args.json:
        out = {"args": vars(args), "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
               "load_average_1min": {"start": load_before, "end": load_after}, "times_s": times, "median_s": med,
               "candidates": count, "thought_tokens": tokens, "warmup_s": warmup, "torch_threads": torch_threads,
               "widths": widths}
        write_json(args.json, out)


if __name__ == "__main__":
    main()
