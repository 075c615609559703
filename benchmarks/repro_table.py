"""The reproduction's table (issue 7) from the JSON files `python -m o1_jax.evaluate` wrote.

  python benchmarks/repro_table.py --results DIR/results [--timings DIR/timings.tsv] [--out DIR/table.md]

Reads `<set>-<row>.json` for the sets scifact, nfcorpus and the rows of ROWS (launch/local/repro_smollm2.sh
writes exactly these) and prints four Markdown tables: the metrics, paired tests of each O1 row against
O1 without thinking (o1_jax.retrieval.paired: mean nDCG@10 difference, 95% bootstrap CI, randomisation
p, over the common queries), ScaNN against exact search for the O1 model, and the wall time of each
step. A missing result file of ROWS is an error naming it, unless `--partial` (a run still going, or
one stopped early): then each of its rows reads "not run". CONTROLS (the placebo and expert thoughts,
the second seed) are shown when their results exist, so a results folder from before them still reads.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from o1_jax.retrieval import paired

SETS = (("scifact", "SciFact"), ("nfcorpus", "NFCorpus"))
# (file name, mode inside the file, row label)
ROWS = (
    ("bm25", "bm25", "BM25 (bm25s, English stopwords)"),
    ("minilm", "dense", "all-MiniLM-L6-v2 (exact search)"),
    ("untrained", "no_think", "SmolLM2-135M-Instruct, untrained (`<emb>` pooling)"),
    ("nothink", "no_think", "SmolLM2, contrastive only (no thoughts, no generation loss)"),
    ("o1", "no_think", "O1 SmolLM2, without thinking"),
    ("o1", "think(k=1)", "O1 SmolLM2, thinking, k = 1 (greedy)"),
    ("o1", "think(k=3)", "O1 SmolLM2, thinking, k = 3 (sampled, averaged)"),
)
# Shown when present: (file name, mode or a prefix of it ending in "(", row label).
CONTROLS = (
    ("o1", "placebo(thought=query)", "O1 SmolLM2, placebo thought: the query repeated (no generation)"),
    ("o1", "shuffled_thoughts(", "O1 SmolLM2, placebo thought: another test query's expert thought"),
    ("o1", "given_thoughts(", "O1 SmolLM2, the expert's committee-picked test thoughts (sees the test positives)"),
    ("nothink_seed1", "no_think", "SmolLM2, contrastive only, seed 1"),
    ("o1_seed1", "no_think", "O1 SmolLM2, without thinking, seed 1"),
    ("o1_seed1", "think(k=1)", "O1 SmolLM2, thinking, k = 1, seed 1"),
    ("o1_seed1", "think(k=3)", "O1 SmolLM2, thinking, k = 3, seed 1"),
)
BASELINE = ("o1", "no_think")  # the paired tests' A
# Further paired tests, shown when both sides exist: (A, B, what B - A measures).
PAIRS = (
    (("nothink", "no_think"), ("o1", "think(k=3)"), "O1 thinking (k = 3) against the contrastive twin"),
    (("nothink", "no_think"), ("o1", "given_thoughts("), "the expert's thoughts (O1) against the contrastive twin"),
    (("o1", "think(k=3)"), ("o1", "given_thoughts("), "the expert's thoughts against O1's own (k = 3)"),
    (("o1", "shuffled_thoughts("), ("o1", "given_thoughts("), "the expert's thoughts, right query against wrong"),
    (("o1", "placebo(thought=query)"), ("o1", "think(k=3)"), "O1's own thoughts (k = 3) against the query repeated"),
    # What a second seed alone moves: the noise floor of every other difference between trainings.
    (("nothink", "no_think"), ("nothink_seed1", "no_think"), "the contrastive twin, seed 1 against seed 0"),
    (("o1", "no_think"), ("o1_seed1", "no_think"), "O1 without thinking, seed 1 against seed 0"),
)
METRICS = (("ndcg@10", "nDCG@10"), ("mrr@10", "MRR@10"), ("recall@100", "R@100"))


def load(results: pathlib.Path, partial: bool = False) -> dict[tuple[str, str], dict]:
    out = {}
    for set_name, _ in SETS:
        for name in dict.fromkeys(row[0] for row in ROWS):
            path = results / f"{set_name}-{name}.json"
            if not path.is_file() and partial:
                continue
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing (expected `python -m o1_jax.evaluate` output for the "
                                        f"{name!r} row on {set_name}; see launch/local/repro_smollm2.sh)")
            out[set_name, name] = json.loads(path.read_text())
        for name in dict.fromkeys(row[0] for row in CONTROLS):
            path = results / f"{set_name}-{name}.json"
            if path.is_file():
                out[set_name, name] = json.loads(path.read_text())
    return out


def find_mode(res: dict, set_name: str, name: str, mode: str) -> dict | None:
    """The metrics of `mode` (or of the first mode starting with it, for a prefix ending in "(")."""
    modes = res.get((set_name, name), {}).get("modes", {})
    if mode.endswith("("):
        mode = next((m for m in modes if m.startswith(mode)), mode)
    return modes.get(mode)


def present_rows(res: dict) -> list[tuple[str, str, str]]:
    return list(ROWS) + [row for row in CONTROLS if all(find_mode(res, s, row[0], row[1]) for s, _ in SETS)]


def metrics_table(res: dict) -> str:
    head = "| system | " + " | ".join(f"{label} {m}" for _, label in SETS for _, m in METRICS) + " |"
    lines = [head, "| --- |" + " ---: |" * (len(SETS) * len(METRICS))]
    for name, mode, label in present_rows(res):
        cells = []
        for set_name, _ in SETS:
            m = find_mode(res, set_name, name, mode)
            cells += [f"{m[key]:.4f}" if m else "not run" for key, _ in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_line(res: dict, label: str, a: tuple[str, str], b: tuple[str, str]) -> list[str]:
    """One Markdown row per set: B - A on nDCG@10 over the common queries (sets lacking either side or
    its per-query metrics are left out)."""
    lines = []
    for set_name, set_label in SETS:
        ma, mb = find_mode(res, set_name, *a), find_mode(res, set_name, *b)
        if not ma or not mb or "per_query" not in ma or "per_query" not in mb:
            continue
        r = paired.compare(ma["per_query"], mb["per_query"], ["ndcg@10"])["ndcg@10"]
        mark = " *" if r["p_value"] < 0.05 else ""
        lines.append(f"| {label} | {set_label} | {r['diff']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | "
                     f"{r['p_value']:.4f}{mark} | {r['n']} |")
    return lines


def paired_table(res: dict) -> str:
    """Each row against O1 without thinking, per set, on nDCG@10 (rows whose results have per-query
    metrics), then the PAIRS whose both sides exist."""
    lines = ["| B (A = O1 without thinking) | set | nDCG@10 B - A | 95% CI | p | queries |",
             "| --- | --- | ---: | --- | ---: | ---: |"]
    for name, mode, label in present_rows(res):
        if (name, mode) == BASELINE or name in ("bm25", "minilm", "untrained"):
            continue
        lines += paired_line(res, label, BASELINE, (name, mode))
    pairs = [line for a, b, label in PAIRS for line in paired_line(res, label, a, b)]
    if pairs:
        lines += ["", "| B - A | set | nDCG@10 B - A | 95% CI | p | queries |",
                  "| --- | --- | ---: | --- | ---: | ---: |", *pairs]
    return "\n".join(lines + ["* p < 0.05 (paired randomisation test, 10,000 sign flips, seed 0)"])


def scann_table(res: dict) -> str:
    lines = ["| set | O1 mode | nDCG@10 exact | nDCG@10 ScaNN | ScaNN top-10 recall vs exact | ScaNN params |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for set_name, label in SETS:
        r = res.get((set_name, "o1"), {"modes": {}})
        p = r.get("scann_params", {})
        params = f"leaves {p.get('num_leaves_to_search')}/{p.get('num_leaves')}, reorder {p.get('reorder')}"
        for mode, m in r["modes"].items():
            if "scann" not in m:
                continue
            lines.append(f"| {label} | {mode} | {m['ndcg@10']:.4f} | {m['scann']['ndcg@10']:.4f} | "
                         f"{m['scann']['recall@10_vs_exact']:.4f} | {params} |")
    return "\n".join(lines)


def timing_table(res: dict, timings: pathlib.Path | None) -> str:
    lines = ["| step | wall s |", "| --- | ---: |"]
    if timings is not None and timings.is_file():
        for line in timings.read_text().splitlines():
            output, seconds = line.rsplit("\t", 1)
            lines.append(f"| {pathlib.Path(output).name} | {int(seconds):,} |")
    for (set_name, name), r in sorted(res.items()):
        if "corpus_encode_s" in r:
            lines.append(f"| {set_name} {name}: corpus encoding ({r['num_docs']:,} docs"
                         f"{', cached' if r.get('corpus_cache_reused') else ''}) | {r['corpus_encode_s']:,.0f} |")
        for mode, m in r["modes"].items():
            if "query_encode_s" in m:
                lines.append(f"| {set_name} {name}: {mode} queries ({r['num_queries']}) | {m['query_encode_s']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, type=pathlib.Path, help="folder of <set>-<row>.json files")
    parser.add_argument("--timings", type=pathlib.Path, help="timings.tsv of launch/local/repro_smollm2.sh")
    parser.add_argument("--out", type=pathlib.Path, help="also write the tables here (Markdown)")
    parser.add_argument("--partial", action="store_true", help="rows whose result files are missing read 'not run'")
    args = parser.parse_args(argv)
    try:
        res = load(args.results, args.partial)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = "\n\n".join([metrics_table(res), paired_table(res), scann_table(res),
                        timing_table(res, args.timings)]) + "\n"
    print(text, end="")
    if args.out:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
