"""BEIR folder -> O1 training records, with BM25 hard negatives.

  python -m o1_jax.data.prepare --beir ../shared/data/scifact --split train \
      --negatives 15 --out scifact_train.jsonl [--seed 0] [--depth 100] [--max_queries N] [--overwrite]

One record per query with at least one positive (qrels score > 0):
{"id": query id, "query", "pos": [{title, text}, ...], "neg": [{title, text}, ...]}.
Negatives are the first `negatives` documents of the bm25s top-`depth` (English
stopwords, document = title + " " + text) that are not positives and score > 0;
when BM25 finds fewer, the rest are drawn at random from the corpus (seeded),
as FlagEmbedding's hard-negative miner does, so every record has the same count.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import numpy as np

from o1_jax import cli
from o1_jax.data.records import RecordError, doc_text, iter_json_lines, write_records

QRELS_HEADER = ("query-id", "corpus-id", "score")


def _id(value, where: str, key: str = "_id") -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise RecordError(f"{where}: '{key}' must be a non-empty string or integer, got {value!r}.")
    return str(value)


def _str_field(obj: dict, key: str, where: str, required: bool) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"{where}: '{key}' must be a string, got {value!r:.60}.")
    return value


def _read_jsonl_objects(path: pathlib.Path):
    if not path.is_file():
        raise RecordError(f"{path}: no such file (expected a BEIR JSONL file).")
    for lineno, obj in iter_json_lines(path):
        where = f"{path}:{lineno}"
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
        yield where, obj


def load_corpus(path: pathlib.Path) -> dict[str, dict]:
    corpus: dict[str, dict] = {}
    for where, obj in _read_jsonl_objects(path):
        did = _id(obj.get("_id"), where)
        if did in corpus:
            raise RecordError(f"{where}: duplicate document id {did!r} (ids must be unique).")
        corpus[did] = {
            "title": _str_field(obj, "title", where, required=False),
            "text": _str_field(obj, "text", where, required=True),
        }
    if not corpus:
        raise RecordError(f"{path}: no documents (expected one JSON object per line).")
    return corpus


def load_queries(path: pathlib.Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for where, obj in _read_jsonl_objects(path):
        qid = _id(obj.get("_id"), where)
        if qid in queries:
            raise RecordError(f"{where}: duplicate query id {qid!r} (ids must be unique).")
        queries[qid] = _str_field(obj, "text", where, required=True)
    if not queries:
        raise RecordError(f"{path}: no queries (expected one JSON object per line).")
    return queries


def load_qrels(path: pathlib.Path, corpus: dict, queries: dict) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise RecordError(f"{path}: no such file (expected a qrels TSV with header 'query-id<TAB>corpus-id<TAB>score').")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            fields = tuple(line.rstrip("\r\n").split("\t"))
            if lineno == 1:
                if fields != QRELS_HEADER:
                    raise RecordError(
                        f"{where}: expected the header 'query-id<TAB>corpus-id<TAB>score', got {line.rstrip()!r}."
                    )
                continue
            if not line.strip():
                continue
            if len(fields) != 3:
                raise RecordError(f"{where}: expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}.")
            qid, did, score = fields
            if qid not in queries:
                raise RecordError(f"{where}: query id {qid!r} is not in queries.jsonl.")
            if did not in corpus:
                raise RecordError(f"{where}: corpus id {did!r} is not in corpus.jsonl.")
            try:
                qrels.setdefault(qid, {})[did] = int(score)
            except ValueError:
                raise RecordError(f"{where}: score must be an integer, got {score!r}.") from None
    if not qrels:
        raise RecordError(f"{path}: no judgements (expected lines 'query-id<TAB>corpus-id<TAB>score' after the header).")
    return qrels


def load_beir(folder: str | os.PathLike, split: str):
    """(corpus: id -> {title, text}, queries: id -> text, qrels: query id -> {doc id -> score}) of a BEIR folder."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise RecordError(f"{folder}: no such folder (expected a BEIR folder with corpus.jsonl, queries.jsonl, qrels/).")
    corpus = load_corpus(folder / "corpus.jsonl")
    queries = load_queries(folder / "queries.jsonl")
    qrels = load_qrels(folder / "qrels" / f"{split}.tsv", corpus, queries)
    return corpus, queries, qrels


def bm25_candidates(doc_texts: list[str], query_texts: list[str], depth: int) -> list[list[tuple[int, float]]]:
    """For each query, up to `depth` (doc index, score) with score > 0, best first, ties by corpus order."""
    import bm25s  # imported here: it is slow to import and only this command needs it

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(doc_texts, stopwords="en", show_progress=False), show_progress=False)
    query_tokens = bm25s.tokenize(query_texts, stopwords="en", return_ids=False, show_progress=False)
    k = min(depth, len(doc_texts))
    out = []
    for tokens in query_tokens:
        ids = retriever.get_tokens_ids(tokens)
        if not ids:
            out.append([])
            continue
        scores = retriever.get_scores_from_ids(ids)  # [num_docs]
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))]  # score descending, then doc index
        out.append([(int(i), float(scores[i])) for i in top if scores[i] > 0])
    return out


def build_records(corpus, queries, qrels, negatives: int, depth: int, seed: int, max_queries: int = 0) -> list[dict]:
    """One O1 record per judged query with a positive, in qrels order; with `max_queries`, a seeded
    random subset of that many queries (still in qrels order)."""
    qids = [q for q, judged in qrels.items() if any(s > 0 for s in judged.values())]
    if 0 < max_queries < len(qids):
        keep = np.sort(np.random.default_rng(seed).choice(len(qids), size=max_queries, replace=False))
        qids = [qids[i] for i in keep]
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    candidates = bm25_candidates(texts, [queries[q] for q in qids], depth)
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
            "pos": [corpus[d] for d in pos],
            "neg": [corpus[d] for d in neg],
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
