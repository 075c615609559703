"""BEIR folder -> O1 training records, with BM25 hard negatives.

  python -m o1_jax.data.prepare --beir ../shared/data/scifact --split train \
      --negatives 15 --out scifact_train.jsonl [--seed 0] [--depth 100] [--max_queries N] [--overwrite]

One record per query with at least one positive (qrels score > 0):
{"id": query id, "query", "pos": [{title, text, id}, ...], "neg": [{title, text, id}, ...]}
(documents carry their corpus id, so training can mask a positive met as another query's document).
Negatives are the first `negatives` documents of the bm25s top-`depth` (English
stopwords, document = title + " " + text) that are not positives and score > 0;
when BM25 finds fewer, the rest are drawn at random from the corpus (seeded),
as FlagEmbedding's hard-negative miner does, so every record has the same count.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from o1_jax import cli
from o1_jax.data.beir import load_beir
from o1_jax.data.records import RecordError, doc_text, write_records
from o1_jax.retrieval.bm25 import BM25

def build_records(corpus, queries, qrels, negatives: int, depth: int, seed: int, max_queries: int = 0) -> list[dict]:
    """One O1 record per judged query with a positive, in qrels order; with `max_queries`, a seeded
    random subset of that many queries (still in qrels order)."""
    qids = [q for q, judged in qrels.items() if any(s > 0 for s in judged.values())]
    if 0 < max_queries < len(qids):
        keep = np.sort(np.random.default_rng(seed).choice(len(qids), size=max_queries, replace=False))
        qids = [qids[i] for i in keep]
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    candidates = BM25(texts).top([queries[q] for q in qids], depth)
    records = []
    for n, (qid, hits) in enumerate(zip(qids, candidates)):
        pos = [d for d, s in qrels[qid].items() if s > 0]
        excluded = set(pos)
        neg = [doc_ids[i] for i, _ in hits if doc_ids[i] not in excluded][:negatives]
        if len(neg) < negatives:
            # Too few BM25 matches: fill with random non-positive documents, seeded per query.
            rng = np.random.default_rng([seed, n])
            taken = excluded | set(neg)
            for i in rng.permutation(len(doc_ids)):
                if len(neg) == negatives:
                    break
                if doc_ids[i] not in taken:
                    neg.append(doc_ids[i])
        records.append({
            "id": qid,
            "query": queries[qid],
            "pos": [dict(corpus[d], id=d) for d in pos],  # the ids let training mask false negatives
            "neg": [dict(corpus[d], id=d) for d in neg],
        })
    return records


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m o1_jax.data.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--beir", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    parser.add_argument("--split", default="train", help="qrels split to read (default: train)")
    parser.add_argument("--negatives", type=int, default=15, help="hard negatives per record (default: 15)")
    parser.add_argument("--depth", type=int, default=100, help="BM25 depth the negatives come from (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed for filling short negative lists (default: 0)")
    parser.add_argument("--max_queries", type=int, default=0,
                        help="keep a seeded random subset of this many queries (default: 0, all)")
    parser.add_argument("--out", required=True, help="output JSONL of O1 records")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if args.negatives < 0:
        parser.error(f"--negatives must be >= 0, got {args.negatives}")
    if args.depth < 1:
        parser.error(f"--depth must be >= 1, got {args.depth}")
    if args.negatives > args.depth:
        parser.error(f"--negatives ({args.negatives}) must be <= --depth ({args.depth})")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.max_queries < 0:
        parser.error(f"--max_queries must be >= 0 (0: all), got {args.max_queries}")

    return cli.run(_prepare, args)


def _prepare(args) -> None:
    cli.check_output(args.out, args.overwrite)  # before BM25 runs
    start = time.perf_counter()
    corpus, queries, qrels = load_beir(args.beir, args.split)
    records = build_records(corpus, queries, qrels, args.negatives, args.depth, args.seed, args.max_queries)
    if not records:
        raise RecordError(f"{args.beir}: no query in qrels/{args.split}.tsv has a positive (score > 0).")
    write_records(records, args.out)
    seconds = time.perf_counter() - start
    with_pos = sum(any(score > 0 for score in judged.values()) for judged in qrels.values())
    subset = f"a seeded subset of {len(records)} of {with_pos} queries with a positive, " if len(records) < with_pos else ""
    skipped = len(qrels) - with_pos
    mean_pos = sum(len(r["pos"]) for r in records) / max(len(records), 1)
    mean_neg = sum(len(r["neg"]) for r in records) / max(len(records), 1)
    print(
        f"{args.out}: {len(records)} records ({subset}{skipped} judged queries without a positive skipped), "
        f"{mean_pos:.2f} positives and {mean_neg:.2f} negatives per record, "
        f"corpus {len(corpus)} docs, {seconds:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
