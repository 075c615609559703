"""BEIR evaluation of an O1 embedder: encode (or reuse) the corpus, index it, retrieve, score.

Metrics with pytrec_eval, as the original: nDCG@10, MRR@10, Recall@100, Recall@1000 over the
split's queries that have relevance judgements, for the no-think and think(k) modes side by side,
and the same metrics for two baselines (BM25 and a sentence-transformers model).
The corpus encoding is cached under a fingerprint of the model parameters, the tokenizer, the
document length and the corpus file, so a stale cache from another checkpoint is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import pytrec_eval

from o1_jax.data.beir import load_beir
from o1_jax.data.records import doc_text, read_records
from o1_jax.files import atomic_open
from o1_jax.retrieval.bm25 import BM25
from o1_jax.retrieval.dense import DenseEncoder
from o1_jax.retrieval.vector_index import Index, recall_at_k

METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")


def drop_self_hits(run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """The run without documents whose id is their query's id (BEIR's `ignore_identical_ids`, on by
    default there: in ArguAna or Quora a query is also a corpus document and would find itself)."""
    return {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}


def per_query_metrics(run: Mapping[str, Mapping[str, float]],
                      qrels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, float]]:
    """{query id: {metric: value}} for every judged query (one missing from the run scores 0)."""
    run = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in qrels}
    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100,1000"}).evaluate(run)
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)

    names = {"ndcg@10": (full, "ndcg_cut_10"), "mrr@10": (rr, "recip_rank"), "recall@100": (full, "recall_100"),
             "recall@1000": (full, "recall_1000")}
    return {q: {m: float(table.get(q, {}).get(key, 0.0)) for m, (table, key) in names.items()} for q in qrels}


def _means(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {m: float(np.mean([row[m] for row in per_query.values()])) for m in METRICS}


def ir_metrics(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean metrics over the judged queries (a judged query missing from the run scores 0)."""
    return _means(per_query_metrics(run, qrels))


def scored(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
           ignore_identical_ids: bool) -> dict[str, Any]:
    """A mode's entry of the results: the mean metrics and, under "per_query", each query's (for paired
    comparisons), after dropping self-hits when `ignore_identical_ids`."""
    if ignore_identical_ids:
        run = drop_self_hits(run)
    per_query = per_query_metrics(run, qrels)
    return {**_means(per_query), "per_query": per_query}


def params_fingerprint(params) -> str:
    """sha256 over every parameter's path, shape, dtype and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        arr = np.asarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{arr.shape}|{arr.dtype}".encode())
        h.update(np.ascontiguousarray(arr).view(np.uint8).tobytes())
    return h.hexdigest()


def corpus_fingerprint(embedder, corpus_file: pathlib.Path) -> str:
    h = hashlib.sha256()
    h.update(params_fingerprint(embedder.params).encode())
    h.update(json.dumps(embedder.tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(f"max_doc_tokens={embedder.formatter.max_doc_tokens}|dtype={embedder.model.cfg.dtype}".encode())
    with open(corpus_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encode_corpus_cached(embedder, folder: pathlib.Path, corpus: dict, cache_dir: pathlib.Path | None):
    """(doc ids, embeddings [N, D], fingerprint); reuses `cache_dir/<fingerprint>.npz` when present."""
    doc_ids = list(corpus)
    fp = corpus_fingerprint(embedder, folder / "corpus.jsonl")
    path = cache_dir / f"corpus-{fp[:24]}.npz" if cache_dir else None
    if path is not None and path.is_file():
        cached = np.load(path, allow_pickle=False)
        if str(cached["fingerprint"]) == fp and list(cached["doc_ids"]) == doc_ids:
            return doc_ids, cached["embeddings"], fp, True
    embeddings = embedder.encode_corpus([corpus[d] for d in doc_ids])
    if path is not None:
        with atomic_open(path, "wb") as f:
            np.savez(f, embeddings=embeddings, doc_ids=np.asarray(doc_ids), fingerprint=np.asarray(fp))
    return doc_ids, embeddings, fp, False


def judged_split(folder: pathlib.Path, split: str, max_queries: int = 0):
    """(corpus, judged query ids, their texts, their qrels) of a BEIR split; `max_queries` keeps the first ones."""
    corpus, queries, qrels = load_beir(folder, split)
    judged = [q for q in qrels if q in queries]
    if max_queries:
        judged = judged[:max_queries]
    return corpus, judged, [queries[q] for q in judged], {q: qrels[q] for q in judged}


def search_run(index: Index, queries: np.ndarray, qids: Sequence[str], top_k: int) -> dict[str, dict[str, float]]:
    scores, ids = index.search(queries, top_k)
    return {qid: {d: float(s) for d, s in zip(row_ids, row_scores)}
            for qid, row_ids, row_scores in zip(qids, ids, scores)}


def overlap_at(run: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]], k: int) -> float:
    """Mean fraction of `reference`'s top-k documents that `run`'s top-k also holds (ScaNN's recall@k against exact)."""
    def top(docs):
        return [d for d, _ in sorted(docs.items(), key=lambda kv: -kv[1])[:k]]

    return recall_at_k([top(run[q]) for q in reference], [top(reference[q]) for q in reference], k)


class Mode(NamedTuple):
    """An evaluation mode: its name in the results, the thoughts generated per query (0: none), the
    thoughts it is given instead ("query": the query itself, a placebo; else an O1 JSONL file), and
    whether those thoughts are shuffled across queries (each query gets another query's thought)."""

    name: str
    k: int
    given: str | None = None
    shuffled: bool = False


MODES_HELP = ("'no_think', 'think', 'think:K' (K thoughts), 'placebo_query', 'thoughts:FILE' (O1 JSONL) "
              "or 'shuffled:FILE'")


def parse_mode(mode: str, num_thoughts: int) -> Mode:
    """A mode string: "no_think" (also the empty-thought placebo: an empty thought is the same tokens);
    "think" (num_thoughts) or "think:K"; "placebo_query" (the query repeated as its thought: does a
    thought help by its content or by its form?); "thoughts:FILE" (each query's thought from an O1 JSONL
    file by id, e.g. an expert's thoughts for the test queries); "shuffled:FILE" (the same thoughts,
    each query given another query's: a fluent thought of the wrong content)."""
    if mode == "no_think":
        return Mode("no_think", 0)
    if mode == "placebo_query":
        return Mode("placebo(thought=query)", 0, "query")
    for prefix, shuffled in (("thoughts:", False), ("shuffled:", True)):
        if mode.startswith(prefix) and mode[len(prefix):]:
            path = mode[len(prefix):]
            label = "shuffled_thoughts" if shuffled else "given_thoughts"
            return Mode(f"{label}({pathlib.Path(path).stem})", 0, path, shuffled)
    if mode == "think":
        k = num_thoughts
    elif mode.startswith("think:") and mode[len("think:"):].isdigit():
        k = int(mode[len("think:"):])
    else:
        raise ValueError(f"evaluation mode {mode!r}: expected {MODES_HELP}")
    if k < 1:
        raise ValueError(f"evaluation mode {mode!r}: thinking needs at least one thought, got k={k}")
    return Mode(f"think(k={k})", k)


def given_thoughts(mode: Mode, qids: Sequence[str], texts: Sequence[str], seed: int = 0) -> list[str]:
    """The thoughts a "placebo_query", "thoughts:FILE" or "shuffled:FILE" mode gives the judged queries,
    in order. Shuffled: a seeded derangement (no query keeps its own thought; a cycle through a random
    permutation), so every thought of the file is used once, by a query it was not written for."""
    if mode.given == "query":
        return list(texts)
    by_id = {r["id"]: r.get("thought") or "" for r in read_records(mode.given)}
    missing = [q for q in qids if q not in by_id]
    if missing:
        raise ValueError(f"{mode.given}: no record for query id {missing[0]!r} ({len(missing)} of the {len(qids)} "
                         "judged queries have none); expected one O1 record with a 'thought' per query id")
    thoughts = [by_id[q] for q in qids]
    if not mode.shuffled:
        return thoughts
    if len(thoughts) < 2:
        raise ValueError(f"{mode.given}: shuffling thoughts across queries needs at least 2 judged queries, "
                         f"got {len(thoughts)}")
    order = np.random.default_rng(seed).permutation(len(thoughts))
    out = [""] * len(thoughts)
    for i, j in zip(order, np.roll(order, -1)):  # query order[n] gets the thought of query order[n + 1]
        out[i] = thoughts[j]
    return out


def evaluate_beir(embedder, folder: str | os.PathLike, split: str = "test", *, num_thoughts: int = 3,
                  modes: tuple[str, ...] = ("no_think", "think"), top_k: int = 1000, index_mode: str = "auto",
                  cache_dir: str | os.PathLike | None = None, max_queries: int = 0, seed: int = 0,
                  aggregate: str = "mean_normalized", compare_scann: bool = False,
                  ignore_identical_ids: bool = True) -> dict[str, Any]:
    """Scores each mode on a BEIR folder; returns {"modes": {mode: metrics}, ...timings and settings}.

    A mode is "no_think", "think" (num_thoughts thoughts), "think:K", "placebo_query",
    "thoughts:FILE" or "shuffled:FILE" (`parse_mode`). With `compare_scann`, the
    same query vectors are also searched in a ScaNN index (tree + AH + reordering, forced whatever
    the corpus size) and each mode gets a "scann" entry: its metrics and the recall of its top-10
    against exact search (the evaluation's own index when it is exact, else an exact one built for it).
    `ignore_identical_ids` drops a document retrieved for the query of the same id before scoring.
    """
    folder = pathlib.Path(folder)
    parsed = [parse_mode(m, num_thoughts) for m in modes]  # bad modes fail before any encoding
    corpus, judged, texts, qrels = judged_split(folder, split, max_queries)

    t0 = time.perf_counter()
    doc_ids, doc_emb, fp, reused = encode_corpus_cached(
        embedder, folder, corpus, pathlib.Path(cache_dir) if cache_dir else None)
    encode_s = time.perf_counter() - t0
    info = {"corpus_fingerprint": fp}
    index = Index.build(doc_emb, doc_ids, mode=index_mode, embedding_info=info)
    exact = scann = None
    if compare_scann:  # reuse the evaluation's index for whichever side it already is
        exact = index if index.mode == "exact" else Index.build(doc_emb, doc_ids, mode="exact", embedding_info=info)
        scann = index if index.mode == "scann" else Index.build(doc_emb, doc_ids, mode="scann", embedding_info=info)

    results: dict[str, Any] = {"folder": str(folder), "split": split, "num_queries": len(judged),
                               "num_docs": len(doc_ids), "corpus_cache_reused": reused,
                               "corpus_encode_s": encode_s, "index_mode": index.mode, "modes": {}}
    if scann is not None:
        results["scann_params"] = scann.params
    # a bad file fails before encoding
    thoughts = {m.name: given_thoughts(m, judged, texts, seed) for m in parsed if m.given}
    for name, k, given, _ in parsed:
        t = time.perf_counter()
        if given:
            q = embedder.encode_with_thoughts(texts, thoughts[name])
        elif k == 0:
            q = embedder.encode_queries(texts)
        else:
            q = embedder.encode_queries(texts, num_thoughts=k, seed=seed, aggregate=aggregate)
        encode_q = time.perf_counter() - t
        run = search_run(index, q, judged, top_k)
        results["modes"][name] = {**scored(run, qrels, ignore_identical_ids), "query_encode_s": encode_q}
        if compare_scann:
            runs = {i.mode: run if i is index else search_run(i, q, judged, top_k) for i in (exact, scann)}
            results["modes"][name]["scann"] = {**scored(runs["scann"], qrels, ignore_identical_ids),
                                               "recall@10_vs_exact": overlap_at(runs["scann"], runs["exact"], 10)}
    return results


# ----------------------------------------------------------------------------- baselines


def evaluate_bm25(folder: str | os.PathLike, split: str = "test", *, top_k: int = 1000,
                  max_queries: int = 0, ignore_identical_ids: bool = True) -> dict[str, Any]:
    """BM25 (o1_jax.retrieval.bm25) as a baseline row."""
    folder = pathlib.Path(folder)
    corpus, judged, texts, qrels = judged_split(folder, split, max_queries)
    doc_ids = list(corpus)
    t = time.perf_counter()
    hits = BM25([doc_text(corpus[d]) for d in doc_ids]).top(texts, top_k)
    run = {qid: {doc_ids[i]: s for i, s in row} for qid, row in zip(judged, hits)}
    return {"folder": str(folder), "split": split, "num_queries": len(judged), "num_docs": len(doc_ids),
            "index_mode": "bm25", "modes": {"bm25": {**scored(run, qrels, ignore_identical_ids), "seconds": time.perf_counter() - t}}}


def evaluate_dense(model_path: str, folder: str | os.PathLike, split: str = "test", *, top_k: int = 1000,
                   max_queries: int = 0, batch_size: int = 64, ignore_identical_ids: bool = True) -> dict[str, Any]:
    """A sentence-transformers model (e.g. all-MiniLM-L6-v2) as a baseline row: normalised embeddings,
    exact inner-product search, document = title + " " + text."""
    folder = pathlib.Path(folder)
    corpus, judged, texts, qrels = judged_split(folder, split, max_queries)
    doc_ids = list(corpus)
    encoder = DenseEncoder(model_path, batch_size=batch_size, key="config.model.path")
    t = time.perf_counter()
    doc_emb = encoder.encode([doc_text(corpus[d]) for d in doc_ids])
    encode_s = time.perf_counter() - t
    index = Index.build(doc_emb, doc_ids, mode="exact")
    t = time.perf_counter()
    run = search_run(index, encoder.encode(texts), judged, top_k)
    return {"folder": str(folder), "split": split, "num_queries": len(judged), "num_docs": len(doc_ids),
            "corpus_encode_s": encode_s, "index_mode": "exact",
            "modes": {"dense": {**scored(run, qrels, ignore_identical_ids), "query_encode_s": time.perf_counter() - t}}}


def format_table(results: Mapping[str, Any]) -> str:
    header = "| mode | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + " --- |" * (len(METRICS) + 1)]
    for mode, m in results["modes"].items():
        lines.append(f"| {mode} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
        if "scann" in m:
            lines.append(f"| {mode}, ScaNN (top-10 recall vs exact {m['scann']['recall@10_vs_exact']:.4f}) | "
                         + " | ".join(f"{m['scann'][k]:.4f}" for k in METRICS) + " |")
    return "\n".join(lines)
