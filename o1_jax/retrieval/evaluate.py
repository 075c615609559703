"""BEIR evaluation of an O1 embedder: encode (or reuse) the corpus, index it, retrieve, score.

Metrics with pytrec_eval, as the original: nDCG@10, MRR@10, Recall@100, Recall@1000 over the
split's queries that have relevance judgements, for the no-think and think(k) modes side by side.
The corpus encoding is cached under a fingerprint of the model parameters, the tokenizer, the
document length and the corpus file, so a stale cache from another checkpoint is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from typing import Any, Mapping

import jax
import numpy as np
import pytrec_eval

from o1_jax.data.prepare import load_beir
from o1_jax.retrieval.index import Index

METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")


def ir_metrics(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean metrics over the judged queries (a judged query missing from the run scores 0)."""
    run = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in qrels}
    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100,1000"}).evaluate(run)
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)

    def mean(table, key):
        return float(np.mean([table.get(q, {}).get(key, 0.0) for q in qrels]))

    return {"ndcg@10": mean(full, "ndcg_cut_10"), "mrr@10": mean(rr, "recip_rank"),
            "recall@100": mean(full, "recall_100"), "recall@1000": mean(full, "recall_1000")}


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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, embeddings=embeddings, doc_ids=np.asarray(doc_ids), fingerprint=np.asarray(fp))
        os.replace(tmp, path)
    return doc_ids, embeddings, fp, False


def evaluate_beir(embedder, folder: str | os.PathLike, split: str = "test", *, num_thoughts: int = 3,
                  modes: tuple[str, ...] = ("no_think", "think"), top_k: int = 1000, index_mode: str = "auto",
                  cache_dir: str | os.PathLike | None = None, max_queries: int = 0, seed: int = 0,
                  aggregate: str = "mean_normalized") -> dict[str, Any]:
    """Scores each mode on a BEIR folder; returns {"modes": {mode: metrics}, ...timings and settings}."""
    folder = pathlib.Path(folder)
    corpus, queries, qrels = load_beir(folder, split)
    judged = [q for q in qrels if q in queries]
    if max_queries:
        judged = judged[:max_queries]
    qrels = {q: qrels[q] for q in judged}
    texts = [queries[q] for q in judged]

    t0 = time.perf_counter()
    doc_ids, doc_emb, fp, reused = encode_corpus_cached(
        embedder, folder, corpus, pathlib.Path(cache_dir) if cache_dir else None)
    encode_s = time.perf_counter() - t0
    index = Index.build(doc_emb, doc_ids, mode=index_mode, embedding_info={"corpus_fingerprint": fp})

    results: dict[str, Any] = {"folder": str(folder), "split": split, "num_queries": len(judged),
                               "num_docs": len(doc_ids), "corpus_cache_reused": reused,
                               "corpus_encode_s": encode_s, "index_mode": index.mode, "modes": {}}
    for mode in modes:
        t = time.perf_counter()
        if mode == "no_think":
            q = embedder.encode_queries(texts)
            name = "no_think"
        elif mode == "think":
            q = embedder.encode_queries(texts, num_thoughts=num_thoughts, seed=seed, aggregate=aggregate)
            name = f"think(k={num_thoughts})"
        else:
            raise ValueError(f"evaluation mode {mode!r}: expected 'no_think' or 'think'")
        scores, ids = index.search(q, top_k)
        run = {qid: {d: float(s) for d, s in zip(row_ids, row_scores)}
               for qid, row_ids, row_scores in zip(judged, ids, scores)}
        results["modes"][name] = {**ir_metrics(run, qrels), "query_encode_s": time.perf_counter() - t}
    return results


def format_table(results: Mapping[str, Any]) -> str:
    header = "| mode | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + " --- |" * (len(METRICS) + 1)]
    for mode, m in results["modes"].items():
        lines.append(f"| {mode} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
    return "\n".join(lines)
