"""BM25, the lexical baseline: the one wrapper of bm25s that mining, the committee and evaluation share.

English stopwords, no stemming, Lucene's k1 = 1.5 and b = 0.75 (bm25s' defaults); a document is
`title + " " + text` (o1_jax.data.records.doc_text). A query with no indexed word scores 0 everywhere.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class BM25:
    """An index over `texts`; `scores` of one query against all of them, `top` hits of many."""

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75):
        import bm25s  # slow to import; only what uses BM25 pays for it

        self._bm25s = bm25s
        self.num_docs = len(texts)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)

    def _tokens(self, queries: Sequence[str]) -> list[list[str]]:
        return self._bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)

    def _scores(self, tokens: list[str]) -> np.ndarray:
        ids = self.retriever.get_tokens_ids(tokens)
        return self.retriever.get_scores_from_ids(ids) if ids else np.zeros(self.num_docs)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """`[Q, N]` scores of each query against every document."""
        return np.stack([self._scores(t) for t in self._tokens(queries)]) if queries else np.zeros((0, self.num_docs))

    def top(self, queries: Sequence[str], depth: int) -> list[list[tuple[int, float]]]:
        """For each query, up to `depth` (doc index, score) with score > 0, best first, ties by index."""
        k = min(depth, self.num_docs)
        out = []
        for tokens in self._tokens(queries):
            scores = self._scores(tokens)
            top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
            top = top[np.lexsort((top, -scores[top]))]  # score descending, then doc index
            out.append([(int(i), float(scores[i])) for i in top if scores[i] > 0])
        return out
