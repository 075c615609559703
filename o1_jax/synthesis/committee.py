"""The retrieval committee: members score candidate thoughts, a vote picks one per record.

Every member scores a candidate thought the same way, so scores are comparable across members:
the thought is used as a query against the record's own pool (its positives and negatives), and
the score is the reciprocal rank of the best positive, `1 / (1 + #negatives scoring >= it)`
(ties count against the thought, so an empty thought that scores everything 0 gets the worst
rank). The original instead softmaxed cosine x100 over three candidates (nearly one-hot, so its
BM25 member barely counted) and ran BM25 with the positive as the query over the three thoughts
as the corpus (IDF over three documents).

Members: `BM25Member` (bm25s over the record's pool), `DenseMember` (a sentence-transformers
folder, cosine), `O1Member` (an o1_jax model, no-think query embeddings).

Votes: "soft" picks the highest weighted sum of member scores; "hard" gives each member's pick
its weight and picks the plurality, ties broken by the soft total, then the lowest index. Every
argmax takes the lowest candidate index among (near-)ties, so a vote is deterministic.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Sequence

import numpy as np

from o1_jax.data.records import doc_text
from o1_jax.inference.embedder import O1Embedder
from o1_jax.retrieval.bm25 import BM25
from o1_jax.retrieval.dense import DenseEncoder

RULES = ("soft", "hard")
KINDS = ("bm25", "dense", "o1")
_TIE = 1e-9  # relative tolerance under which two float scores are a tie


def record_pool(record: dict) -> tuple[list[str], list[str]]:
    """(positive texts, negative texts) of a record; a negative equal to a positive counts as positive."""
    pos = list(dict.fromkeys(doc_text(d) for d in record["pos"]))
    seen = set(pos)
    neg = [t for t in dict.fromkeys(doc_text(d) for d in record.get("neg") or []) if t not in seen]
    return pos, neg


def positive_rank(pos_scores: np.ndarray, neg_scores: np.ndarray) -> int:
    """Rank of the best positive among the pool; negatives that tie it rank above it."""
    best = np.max(pos_scores)
    return 1 + int(np.sum(np.asarray(neg_scores) >= best))


def tied_at_top(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Boolean mask of the values within a relative 1e-9 of their maximum along `axis`."""
    values = np.asarray(values, np.float64)
    top = values.max(axis=axis, keepdims=True)
    return values >= top - _TIE * np.maximum(1.0, np.abs(top))


def lowest_argmax(values: np.ndarray, axis: int = -1, tie_break: np.ndarray | None = None) -> np.ndarray:
    """argmax treating values within a relative 1e-9 of the maximum as tied: the lowest index wins, or,
    with `tie_break` (priorities of `values`' shape), the tied entry of highest priority."""
    near = tied_at_top(values, axis)
    if tie_break is None:
        return np.argmax(near, axis=axis)  # first True
    return np.argmax(np.where(near, tie_break, -np.inf), axis=axis)


class Member(abc.ABC):
    """A committee member: `score(records, candidates) -> [R, n]` reciprocal ranks in (0, 1]."""

    def __init__(self, name: str, weight: float = 1.0):
        if not weight >= 0:
            raise ValueError(f"committee member {name!r}: weight={weight}, expected >= 0")
        self.name, self.weight = name, float(weight)

    @abc.abstractmethod
    def similarities(self, records: Sequence[dict], candidates: Sequence[Sequence[str]]
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per record, `(pos [n, P], neg [n, N])`: each candidate's score for each pool document."""

    def score(self, records: Sequence[dict], candidates: Sequence[Sequence[str]]) -> np.ndarray:
        _check_shapes(records, candidates)
        n = len(candidates[0]) if candidates else 0
        out = np.zeros((len(records), n), np.float64)
        for i, (pos, neg) in enumerate(self.similarities(records, candidates)):
            for j in range(n):
                out[i, j] = 1.0 / positive_rank(pos[j], neg[j])
        return out


def _check_shapes(records, candidates) -> None:
    if len(records) != len(candidates):
        raise ValueError(f"{len(records)} records but {len(candidates)} candidate lists")
    if len({len(c) for c in candidates}) > 1:
        raise ValueError("every record needs the same number of candidates")


class BM25Member(Member):
    """bm25s (English stopwords, no stemming) over the record's pool, the thought as the query."""

    def __init__(self, name: str = "bm25", weight: float = 1.0, k1: float = 1.5, b: float = 0.75):
        super().__init__(name, weight)
        self.k1, self.b = k1, b

    def similarities(self, records, candidates):
        out = []
        for record, thoughts in zip(records, candidates):
            pos, neg = record_pool(record)
            scores = BM25(pos + neg, k1=self.k1, b=self.b).scores(list(thoughts))  # [n, P + N]
            out.append((scores[:, :len(pos)], scores[:, len(pos):]))
        return out


class _EmbeddingMember(Member):
    """Cosine of normalised embeddings; document vectors are cached across calls (by text)."""

    cache_limit = 200_000

    def __init__(self, name: str, weight: float = 1.0):
        super().__init__(name, weight)
        self._doc_cache: dict[str, np.ndarray] = {}

    @abc.abstractmethod
    def embed_queries(self, texts: list[str]) -> np.ndarray: ...

    @abc.abstractmethod
    def embed_docs(self, texts: list[str]) -> np.ndarray: ...

    def _docs(self, texts: list[str]) -> dict[str, np.ndarray]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._doc_cache]
        if len(self._doc_cache) + len(missing) > self.cache_limit:
            self._doc_cache.clear()
            missing = list(dict.fromkeys(texts))
        if missing:
            self._doc_cache.update(zip(missing, self.embed_docs(missing)))
        return self._doc_cache

    def similarities(self, records, candidates):
        pools = [record_pool(r) for r in records]
        docs = self._docs([t for pos, neg in pools for t in pos + neg])
        flat = [t for thoughts in candidates for t in thoughts]
        q = self.embed_queries(flat) if flat else np.zeros((0, 1), np.float32)
        n = len(candidates[0]) if candidates else 0
        out = []
        for i, (pos, neg) in enumerate(pools):
            qi = q[i * n:(i + 1) * n]
            p = qi @ np.stack([docs[t] for t in pos]).T
            ng = qi @ np.stack([docs[t] for t in neg]).T if neg else np.zeros((n, 0), np.float32)
            out.append((p, ng))
        return out


class DenseMember(_EmbeddingMember):
    """A sentence-transformers model from a local folder (e.g. all-MiniLM-L6-v2), cosine similarity."""

    def __init__(self, path: str, name: str = "dense", weight: float = 1.0, batch_size: int = 64):
        super().__init__(name, weight)
        self.encoder = DenseEncoder(path, batch_size=batch_size, key=f"config.committee.members.{name}.path")
        self.path = self.encoder.path

    def embed_queries(self, texts):
        return self.encoder.encode(texts)

    def embed_docs(self, texts):
        return self.encoder.encode(texts)


class O1Member(_EmbeddingMember):
    """An o1_jax model (training workdir or HF folder); the thought is embedded as a no-think query."""

    def __init__(self, path: str, name: str = "o1", weight: float = 1.0, batch_size: int = 32):
        super().__init__(name, weight)
        self.embedder = O1Embedder.from_pretrained(path, batch_size=batch_size)

    def embed_queries(self, texts):
        return self.embedder.encode_queries(texts, num_thoughts=0)

    def embed_docs(self, texts):
        return self.embedder.encode_corpus(texts)


def build_member(name: str, spec) -> Member:
    """A member from its config: `kind` (bm25 | dense | o1), `weight`, `path` (dense and o1)."""
    kind, weight, path = spec.kind, float(spec.weight), spec.get("path", "")
    if kind not in KINDS:
        raise ValueError(f"config.committee.members.{name}.kind={kind!r}: expected one of {KINDS}")
    if kind == "bm25":
        return BM25Member(name, weight)
    if not path:
        raise ValueError(f"config.committee.members.{name}.path is empty: a {kind} member needs a model folder")
    return (DenseMember if kind == "dense" else O1Member)(path, name=name, weight=weight)


# ----------------------------------------------------------------------------- votes


@dataclasses.dataclass
class Vote:
    rule: str
    chosen: np.ndarray  # [R] candidate index
    total: np.ndarray  # [R, n] soft totals (weighted score sums)
    picks: dict[str, np.ndarray]  # member -> [R] its own best candidate
    ballots: np.ndarray  # [R, n] weighted hard-vote counts


def vote(scores: dict[str, np.ndarray], weights: dict[str, float], rule: str = "soft",
         tie_break: np.ndarray | None = None) -> Vote:
    """Combines per-member `[R, n]` scores into one chosen candidate per record. Ties (a member's own
    pick and the vote) go to the lowest index, or with `tie_break` (`[R, n]` priorities, e.g. seeded
    uniform draws) to the tied candidate of highest priority."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: expected one of {RULES}")
    if not scores:
        raise ValueError("the committee has no members")
    if set(weights) != set(scores):
        raise ValueError(f"weights for {sorted(weights)} but scores from {sorted(scores)}")
    if any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"member weights {weights}: expected >= 0 with a positive sum")
    names = sorted(scores)
    total = sum(weights[m] * np.asarray(scores[m], np.float64) for m in names)
    picks = {m: lowest_argmax(scores[m], tie_break=tie_break) for m in names}
    r, n = total.shape
    ballots = np.zeros((r, n))
    for m in names:
        ballots[np.arange(r), picks[m]] += weights[m]
    if rule == "soft":
        chosen = lowest_argmax(total, tie_break=tie_break)
    else:
        # Plurality; among tied candidates the higher soft total, then the lowest index.
        top = ballots.max(axis=1, keepdims=True)
        tied = ballots >= top - _TIE * np.maximum(1.0, top)
        chosen = lowest_argmax(np.where(tied, total, -np.inf), tie_break=tie_break)
    return Vote(rule, chosen.astype(int), total, picks, ballots)
