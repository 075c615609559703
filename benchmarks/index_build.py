"""Corpus encoding for an index: `index build` with 1 process vs 2 processes + `merge`, SmolLM2-135M.

`--n` (20000) deterministic synthetic documents (a title of 3 words and a text of `--words` (100,200)
words drawn from a fixed vocabulary of common English words, so about 110-230 tokens each; `--words
40,70` gives MS MARCO-like passages of about 60 tokens) are written as a BEIR corpus.jsonl, then encoded by the real command, each run a fresh subprocess:

  1 process    python -m o1_jax.index build --model M --corpus C --out ONE --shard_size S
  2 processes  python -m o1_jax.index build ... --shards TWO.shards --process_index i --process_count 2,
               both started at once, then python -m o1_jax.index merge --shards TWO.shards --out TWO

For each: wall seconds (the whole command: start-up, model load, compile, encoding, writing),
documents/s over that wall time, the encode-only documents/s the build records in its
build-process-I-of-P.json, and the peak RSS of each process (its own ru_maxrss, from wait4).
The two indexes must hold the same ids and vectors (shard s is the same batches either way).
The model is materialised once before the timed runs (`o1_jax.hf.fetch`, ~30 s the first time).

Last, an estimate (arithmetic, not a measurement): the time to encode the 8.8M MS MARCO passages on
a TPU v5p-8 (4 chips x 459 bf16 TFLOP/s peak) at an assumed MFU, from `o1_jax.flops.forward_flops`
of one passage of `--msmarco_tokens` tokens, for Llama-3.1-8B and for SmolLM2-135M.

    python benchmarks/index_build.py [--n 20000 --words 100,200 --shard_size 1000 --batch_size 32 --json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machine import describe_machine, machine, write_json  # benchmarks/machine.py, next to this file

from o1_jax.flops import forward_flops
from o1_jax.hf import fetch
from o1_jax.models.presets import preset

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = "shipped:smollm2-135m-instruct"
# Common English words, almost all one SmolLM2 token each (with their leading space).
VOCAB = """the of and to in is was for on that with as by at from his her their it an be this which or
are had not but one have were all they been has new more first also its who after two time other into
year can only over such used city world school between many some then would made during under most
where while about three water known later life part people name state family before through work since
music game river team system small number public south north began high called form day great these
each field film second found early both well house group local power light land long home like war
church being several four against following large main best line history park often well west series
place east book band road point around united language three member side within season came body""".split()
MSMARCO_PASSAGES = 8_800_000
V5P_CHIP_BF16_FLOPS = 459e12
V5P8_CHIPS = 4


def write_corpus(path: pathlib.Path, n: int, words: tuple[int, int] = (100, 200), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            title = " ".join(rng.choice(VOCAB, 3))
            text = " ".join(rng.choice(VOCAB, int(rng.integers(words[0], words[1] + 1))))
            f.write(json.dumps({"_id": f"doc{i}", "title": title, "text": text}) + "\n")


def mean_doc_tokens(model_folder: pathlib.Path, corpus: pathlib.Path, sample: int = 500) -> float:
    """Mean tokens of `{title} {text}<emb>` over the first `sample` documents (the build's format)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_folder)
    lengths = []
    with open(corpus, encoding="utf-8") as f:
        for line, _ in zip(f, range(sample)):
            doc = json.loads(line)
            lengths.append(len(tokenizer(f"{doc['title']} {doc['text']}", add_special_tokens=False).input_ids) + 1)
    return float(np.mean(lengths))


def start(argv: list[str], log: pathlib.Path) -> tuple[subprocess.Popen, float, pathlib.Path]:
    """`python -m o1_jax.index ARGV`, its output to the file `log` (a pipe could fill and block it)."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "o1_jax.index", *argv], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    return proc, time.perf_counter(), log


def finish(proc: subprocess.Popen, started: float, log: pathlib.Path) -> dict:
    """Waits for `proc` with wait4, for its own peak RSS (RUSAGE_CHILDREN would mix the processes)."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(proc.args)} failed ({proc.returncode}):\n{log.read_text()}")
    return {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20}


def encode_rate(shards_dir: pathlib.Path, process_index: int, process_count: int) -> float:
    record = json.loads((shards_dir / f"build-process-{process_index}-of-{process_count}.json").read_text())
    return record["docs_per_s"]


def estimate_line(name: str, tokens: float, mfu: float) -> str:
    cfg, _ = preset(name)
    per_doc = forward_flops(cfg, 1, round(tokens))
    total = per_doc * MSMARCO_PASSAGES
    seconds = total / (V5P8_CHIPS * V5P_CHIP_BF16_FLOPS * mfu)
    return (f"ESTIMATE (arithmetic, not measured): {name}, {MSMARCO_PASSAGES / 1e6:.1f}M passages x "
            f"{round(tokens)} tokens x {per_doc / round(tokens) / 1e9:.3g} GFLOP/token (forward, no LM head) = "
            f"{total:.3g} FLOP; v5p-8 = {V5P8_CHIPS} chips x {V5P_CHIP_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16 at "
            f"{mfu:.0%} MFU -> {seconds:,.0f} s = {seconds / 3600:.2f} h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="documents")
    parser.add_argument("--words", default="100,200", help="MIN,MAX words of a document's text")
    parser.add_argument("--shard_size", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workdir", help="where the corpus, shards and indexes go (default: a temporary folder)")
    parser.add_argument("--mfu", type=float, default=0.40, help="the MFU assumed by the TPU estimate")
    parser.add_argument("--msmarco_tokens", type=float, default=80.0,
                        help="mean MS MARCO passage length in tokens for the estimate (~56 words + <emb>)")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    args = parser.parse_args()
    try:
        words = tuple(int(w) for w in args.words.split(","))
        if len(words) != 2 or not 1 <= words[0] <= words[1]:
            raise ValueError
    except ValueError:
        parser.error(f"--words must be MIN,MAX with 1 <= MIN <= MAX, got {args.words!r}")
    print(describe_machine())
    folder = fetch.fetch(MODEL.split(":", 1)[1])  # materialised once, outside the timed runs
    with tempfile.TemporaryDirectory(prefix="o1_index_build.") as tmp:
        work = pathlib.Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "corpus.jsonl"
        write_corpus(corpus, args.n, words)
        tokens = mean_doc_tokens(folder, corpus)
        print(f"{args.n} synthetic documents, mean {tokens:.1f} tokens (of the first 500); shard_size "
              f"{args.shard_size}, batch_size {args.batch_size}, float32")
        common = ["--model", MODEL, "--corpus", str(corpus), "--shard_size", str(args.shard_size),
                  "--batch_size", str(args.batch_size)]

        one = finish(*start(["build", *common, "--out", str(work / "one"), "--keep_shards"], work / "one.log"))
        one["encode_docs_per_s"] = encode_rate(work / "one.shards", 0, 1)
        procs = [start(["build", *common, "--shards", str(work / "two.shards"), "--process_index", str(i),
                        "--process_count", "2"], work / f"two-{i}.log") for i in range(2)]
        began = min(t for _, t, _ in procs)
        two = [finish(*p) for p in procs]
        encode_wall = time.perf_counter() - began
        for i, p in enumerate(two):
            p["encode_docs_per_s"] = encode_rate(work / "two.shards", i, 2)
        merge = finish(*start(["merge", "--shards", str(work / "two.shards"), "--out", str(work / "two")],
                              work / "merge.log"))
        two_wall = encode_wall + merge["wall_s"]

        a, b = np.load(work / "one" / "dataset.npy"), np.load(work / "two" / "dataset.npy")
        same_ids = json.loads((work / "one" / "doc_ids.json").read_text()) == \
            json.loads((work / "two" / "doc_ids.json").read_text())
        max_diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("nan")

    rows = [
        ("1", one["wall_s"], args.n / one["wall_s"], one["encode_docs_per_s"], f"{one['peak_rss_gib']:.2f}"),
        ("2 (build, both at once)", encode_wall, args.n / encode_wall, sum(p["encode_docs_per_s"] for p in two),
         " / ".join(f"{p['peak_rss_gib']:.2f}" for p in two)),
        ("2 (+ merge)", two_wall, args.n / two_wall, None, f"merge {merge['peak_rss_gib']:.2f}"),
    ]
    print("\n| processes | wall s | docs/s (wall) | docs/s (encoding, summed) | peak RSS GiB per process |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, wall, rate, encode, rss in rows:
        encode_text = f"{encode:.2f}" if encode else ""
        print(f"| {name} | {wall:.1f} | {rate:.2f} | {encode_text} | {rss} |")
    print(f"\nmerge alone: {merge['wall_s']:.1f} s; the two indexes: same ids {same_ids}, max |vector difference| "
          f"{max_diff:.3g}")
    print(estimate_line("llama3.1-8b", args.msmarco_tokens, args.mfu))
    print(estimate_line("smollm2-135m", args.msmarco_tokens, args.mfu))
    if args.json:
        write_json(args.json, {"machine": machine(), "n": args.n, "words": words, "mean_tokens": tokens, "shard_size": args.shard_size,
                               "batch_size": args.batch_size, "one_process": one, "two_processes": two,
                               "two_processes_encode_wall_s": encode_wall, "merge": merge,
                               "same_ids": same_ids, "max_vector_difference": max_diff,
                               "estimates": [estimate_line(m, args.msmarco_tokens, args.mfu)
                                             for m in ("llama3.1-8b", "smollm2-135m")]})


if __name__ == "__main__":
    main()
