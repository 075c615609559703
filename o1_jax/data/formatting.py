"""Token sequences of the O1 Embedder formats, for training and inference (numpy; no jax).

  query (training, thinking):  <query>{q}</query><thought>{thought}<eos><emb>
  query (empty thought):       <query>{q}</query><thought><emb>
  thinking prompt:             <query>{q}</query><thought>
  document:                    {title} {text}<emb>

Rows are LEFT padded, so the pooling token `<emb>` is always the last position
of every row (`ids[:, -1]`) and generation can append to the prompt rows.
Every text piece is tokenised on its own with `add_special_tokens=False` and
the ids are concatenated with the special ids, so no BOS or chat template is
inserted, truncation cuts the text and never a control token, and a special
token's spelling inside the data (e.g. a passage containing "<emb>") is split
as ordinary text instead of becoming a control token.

Training batches have fixed shapes (one jit compile); inference batches are
padded to the batch's own longest row rounded up to `bucket` tokens, which
bounds the number of compiled shapes.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple, Sequence

import numpy as np

from o1_jax.data.records import doc_key, doc_text  # one definition each; re-exported for the batches

# A query's known positives, as hashes, travel with the batch so that the step can keep them out
# of its InfoNCE negatives wherever they appear in the global batch (losses.false_negatives).
MAX_POSITIVE_KEYS = 8  # the chosen positive first, then the record's other positives

__all__ = [
    "SPECIAL_TOKENS",
    "add_special_tokens",
    "doc_text",
    "build_example",
    "QueryTokens",
    "Formatter",
    "sequence_lengths",
    "train_batch_shapes",
    "round_up",
]

SPECIAL_TOKENS = ("<query>", "</query>", "<thought>", "<emb>")


def add_special_tokens(tokenizer) -> dict[str, int]:
    """Adds the O1 special tokens (idempotent) and returns {token: id}; the caller resizes the embedding."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        # transformers 5 key; replace=False keeps the tokenizer's own extra specials.
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return _special_ids(tokenizer)


def _special_ids(tokenizer) -> dict[str, int]:
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(
            f"tokenizer lacks the special tokens {missing}; call "
            "o1_jax.data.formatting.add_special_tokens(tokenizer) (and resize the model's embedding) first."
        )
    return {t: int(vocab[t]) for t in SPECIAL_TOKENS}


def build_example(
    record: dict, rng: np.random.Generator, group_size: int, thought_dropout: float
) -> dict:
    """Samples one training example (query, thought, G documents positive first) from an O1 record.

    One positive at random; G-1 hard negatives without replacement when the
    record has enough, otherwise every negative once (shuffled) topped up by
    draws with replacement; the thought is emptied with probability
    `thought_dropout`; teacher scores come along for the chosen documents when
    the record has them. Deterministic given `rng`.

    Returns:
      {"id", "query", "thought", "docs": [G str], "teacher_scores": [G float] or None,
       "doc_keys": [G str] (`doc_key` of each document), "positive_keys": the chosen positive's key,
       then the record's other positives' keys}
    """
    rid = record.get("id", "<no id>")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}.")
    if not 0.0 <= thought_dropout <= 1.0:
        raise ValueError(f"thought_dropout must be in [0, 1], got {thought_dropout}.")
    pos, neg = record.get("pos"), record.get("neg") or []
    if not isinstance(pos, list) or not pos:
        raise ValueError(f"record {rid}: 'pos' must be a non-empty list of documents.")
    if not isinstance(neg, list):
        raise ValueError(f"record {rid}: 'neg' must be a list of documents, got {type(neg).__name__}.")
    k = group_size - 1
    if k > 0 and not neg:
        raise ValueError(f"record {rid} has no negatives but group_size={group_size} needs {k}.")

    p = int(rng.integers(len(pos)))
    if k == 0:
        n_idx = np.zeros((0,), np.int64)
    elif len(neg) >= k:
        n_idx = rng.choice(len(neg), size=k, replace=False)
    else:  # too few: use each one, then repeat random ones
        n_idx = np.concatenate([rng.permutation(len(neg)), rng.integers(len(neg), size=k - len(neg))])
    drop = rng.random() < thought_dropout

    thought = "" if drop else str(record.get("thought") or "")
    docs = [doc_text(pos[p])] + [doc_text(neg[j]) for j in n_idx]

    teacher = None
    ps, ns = record.get("pos_scores"), record.get("neg_scores")
    if ps is not None and (k == 0 or ns is not None):
        if len(ps) != len(pos) or (k > 0 and len(ns) != len(neg)):
            raise ValueError(
                f"record {rid}: pos_scores/neg_scores must have one score per document "
                f"(got {len(ps)} for {len(pos)} pos, {len(ns or [])} for {len(neg)} neg)."
            )
        teacher = [float(ps[p])] + [float(ns[j]) for j in n_idx]
    doc_keys = [doc_key(pos[p])] + [doc_key(neg[j]) for j in n_idx]
    positive_keys = [doc_keys[0]] + [doc_key(d) for i, d in enumerate(pos) if i != p]
    return {"id": rid, "query": str(record["query"]), "thought": thought, "docs": docs, "teacher_scores": teacher,
            "doc_keys": doc_keys, "positive_keys": positive_keys}


def key_hash(key: str) -> int:
    """A document key as a positive int32 (0 is padding): 31 bits of blake2b. Two different
    documents share a hash with probability 2**-31, which would drop one true negative."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF or 1


class QueryTokens(NamedTuple):
    """A query row before padding: its ids, and the indices (into ids) whose next token is a generation target."""

    ids: list[int]
    gen_positions: list[int]


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` >= n (0 stays 0; every caller pads a length >= 1)."""
    return -(-n // multiple) * multiple


def left_pad(rows: Sequence[Sequence[int]], length: int, num_rows: int | None, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded `[num_rows, length]` int32 ids and mask (num_rows None: one per row; extra rows are
    all padding): the one padding rule of every batch the model sees."""
    n = len(rows) if num_rows is None else num_rows
    if n < len(rows):
        raise ValueError(f"num_rows={num_rows} is smaller than the {len(rows)} rows given.")
    ids = np.full((n, length), pad_id, np.int32)
    mask = np.zeros((n, length), np.int32)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    return ids, mask


def sequence_lengths(max_query_tokens: int, max_thought_tokens: int, max_doc_tokens: int) -> tuple[int, int, int]:
    """(Tq, Kg, Td) of a training batch: `<query>q</query><thought>t<eos><emb>` has five specials,
    the generation targets are the thought and its `<eos>`, a document ends with `<emb>`."""
    return max_query_tokens + max_thought_tokens + 5, max_thought_tokens + 1, max_doc_tokens + 1


def train_batch_shapes(batch: int, group: int, max_query_tokens: int, max_thought_tokens: int,
                       max_doc_tokens: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """{key: (shape, dtype)} of `Formatter.collate_train`'s output, without a tokenizer (for planning)."""
    tq, kg, td = sequence_lengths(max_query_tokens, max_thought_tokens, max_doc_tokens)
    return {"query_ids": ((batch, tq), np.int32), "query_mask": ((batch, tq), np.int32),
            "gen_positions": ((batch, kg), np.int32), "gen_targets": ((batch, kg), np.int32),
            "gen_weights": ((batch, kg), np.float32),
            "doc_ids": ((batch * group, td), np.int32), "doc_mask": ((batch * group, td), np.int32),
            "teacher_scores": ((batch, group), np.float32), "teacher_mask": ((batch,), np.float32),
            "doc_hash": ((batch * group,), np.int32), "positive_hash": ((batch, MAX_POSITIVE_KEYS), np.int32)}


class Formatter:
    """Tokenises and pads O1 queries and documents.

    Fixed training shapes: Tq = max_query_tokens + max_thought_tokens + 5
    (the five specials <query> </query> <thought> <eos> <emb>),
    Td = max_doc_tokens + 1, Kg = max_thought_tokens + 1 (thought tokens + <eos>).
    """

    def __init__(self, tokenizer, max_query_tokens: int, max_thought_tokens: int, max_doc_tokens: int,
                 bucket: int = 16):
        for key, v in [("max_query_tokens", max_query_tokens), ("max_thought_tokens", max_thought_tokens),
                       ("max_doc_tokens", max_doc_tokens), ("bucket", bucket)]:
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Formatter: {key} must be a positive int, got {v!r}.")
        self.tokenizer = tokenizer
        self.max_query_tokens, self.max_thought_tokens = int(max_query_tokens), int(max_thought_tokens)
        self.max_doc_tokens, self.bucket = int(max_doc_tokens), int(bucket)
        self.special = _special_ids(tokenizer)
        self.query_id, self.query_end_id = self.special["<query>"], self.special["</query>"]
        self.thought_id, self.emb_id = self.special["<thought>"], self.special["<emb>"]
        if tokenizer.eos_token_id is None:
            raise ValueError("Formatter: the tokenizer has no eos_token; the thought must end with one.")
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        self.Tq, self.Kg, self.Td = sequence_lengths(self.max_query_tokens, self.max_thought_tokens,
                                                     self.max_doc_tokens)

    # ---- tokenisation ----

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        out = self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)
        return [list(ids) for ids in out["input_ids"]]

    def _query_tokens(self, q: list[int], t: list[int]) -> QueryTokens:
        q, t = q[: self.max_query_tokens], t[: self.max_thought_tokens]
        head = [self.query_id, *q, self.query_end_id, self.thought_id]
        if not t:  # empty thought: nothing to generate, no <eos>
            return QueryTokens(head + [self.emb_id], [])
        ids = head + t + [self.eos_id, self.emb_id]
        start = len(head) - 1  # <thought> predicts the first thought token
        return QueryTokens(ids, list(range(start, start + len(t) + 1)))

    def query_ids(self, query: str, thought: str | None = "") -> QueryTokens:
        """`<query>{q}</query><thought>{t}<eos><emb>` (or the empty-thought form) and its generation positions."""
        q, t = self._encode([query.strip(), (thought or "").strip()])
        return self._query_tokens(q, t)

    def prompt_ids(self, query: str) -> list[int]:
        """The thinking prompt `<query>{q}</query><thought>`."""
        return self._prompts([query])[0]

    def doc_ids(self, text: Any) -> list[int]:
        """`{passage}<emb>`, the passage truncated to max_doc_tokens."""
        return self._docs([text])[0]

    def _prompts(self, queries: Sequence[str]) -> list[list[int]]:
        return [[self.query_id, *q[: self.max_query_tokens], self.query_end_id, self.thought_id]
                for q in self._encode([q.strip() for q in queries])]

    def _docs(self, docs: Sequence[Any]) -> list[list[int]]:
        return [d[: self.max_doc_tokens] + [self.emb_id] for d in self._encode([doc_text(x) for x in docs])]

    def _queries(self, queries: Sequence[str], thoughts: Sequence[str]) -> list[QueryTokens]:
        n = len(queries)
        enc = self._encode([q.strip() for q in queries] + [(t or "").strip() for t in thoughts])
        return [self._query_tokens(enc[i], enc[n + i]) for i in range(n)]

    # ---- padding ----

    def _left_pad(self, rows: list[list[int]], length: int, num_rows: int | None = None):
        return left_pad(rows, length, num_rows, self.pad_id)

    def _bucket_len(self, rows: list[list[int]], cap: int) -> int:
        longest = max((len(r) for r in rows), default=1)
        return min(cap, round_up(longest, self.bucket))

    # ---- batches ----

    def collate_train(self, examples: Sequence[dict]) -> dict[str, np.ndarray]:
        """Fixed-shape training batch from `build_example` outputs (B examples, G docs each).

        Returns query_ids/query_mask [B, Tq] int32, gen_positions/gen_targets
        [B, Kg] int32, gen_weights [B, Kg] float32, doc_ids/doc_mask [B*G, Td]
        int32, teacher_scores [B, G] float32, teacher_mask [B] float32, doc_hash [B*G] int32 and
        positive_hash [B, MAX_POSITIVE_KEYS] int32 (`key_hash` of the documents' and of each query's
        known positives' keys, 0 = none; examples without keys get none, so nothing is masked).
        """
        if not examples:
            raise ValueError("collate_train: got no examples.")
        b, g = len(examples), len(examples[0]["docs"])
        for ex in examples:
            if len(ex["docs"]) != g:
                raise ValueError(
                    f"collate_train: example {ex.get('id', '<no id>')} has {len(ex['docs'])} docs, expected {g} "
                    "like the first example."
                )
        rows = self._queries([ex["query"] for ex in examples], [ex.get("thought") for ex in examples])
        query_ids, query_mask = self._left_pad([r.ids for r in rows], self.Tq)
        gen_positions = np.zeros((b, self.Kg), np.int32)
        gen_targets = np.zeros((b, self.Kg), np.int32)
        gen_weights = np.zeros((b, self.Kg), np.float32)
        for i, r in enumerate(rows):
            k = len(r.gen_positions)
            local = np.asarray(r.gen_positions, np.int64)
            gen_positions[i, :k] = local + (self.Tq - len(r.ids))  # shift by the left padding
            gen_targets[i, :k] = np.asarray(r.ids, np.int64)[local + 1]
            gen_weights[i, :k] = 1.0
        doc_ids, doc_mask = self._left_pad(self._docs([d for ex in examples for d in ex["docs"]]), self.Td)
        teacher_scores = np.zeros((b, g), np.float32)
        teacher_mask = np.zeros((b,), np.float32)
        for i, ex in enumerate(examples):
            if ex.get("teacher_scores") is not None:
                teacher_scores[i] = ex["teacher_scores"]
                teacher_mask[i] = 1.0
        doc_hash = np.zeros((b * g,), np.int32)
        positive_hash = np.zeros((b, MAX_POSITIVE_KEYS), np.int32)
        for i, ex in enumerate(examples):
            if ex.get("doc_keys"):
                doc_hash[i * g:(i + 1) * g] = [key_hash(k) for k in ex["doc_keys"]]
                keys = ex["positive_keys"][:MAX_POSITIVE_KEYS]
                positive_hash[i, :len(keys)] = [key_hash(k) for k in keys]
        return {
            "query_ids": query_ids, "query_mask": query_mask,  # [B, Tq]
            "gen_positions": gen_positions, "gen_targets": gen_targets, "gen_weights": gen_weights,  # [B, Kg]
            "doc_ids": doc_ids, "doc_mask": doc_mask,  # [B*G, Td]
            "teacher_scores": teacher_scores, "teacher_mask": teacher_mask,  # [B, G], [B]
            "doc_hash": doc_hash, "positive_hash": positive_hash,  # [B*G], [B, P]
        }

    def collate_queries(self, queries: Sequence[str], thoughts: Sequence[str] | None = None,
                        num_rows: int | None = None) -> dict[str, np.ndarray]:
        """Queries to embed: with thoughts `<query>q</query><thought>t<eos><emb>`, else the empty-thought form.

        Padded to the longest row rounded up to `bucket` (at most Tq); `num_rows`
        pads the batch with empty rows (mask 0) to a fixed batch size.
        Returns query_ids, query_mask [n, T] int32.
        """
        if thoughts is None:
            thoughts = [""] * len(queries)
        if len(thoughts) != len(queries):
            raise ValueError(f"collate_queries: {len(queries)} queries but {len(thoughts)} thoughts.")
        rows = [r.ids for r in self._queries(queries, thoughts)]
        ids, mask = self._left_pad(rows, self._bucket_len(rows, self.Tq), num_rows)
        return {"query_ids": ids, "query_mask": mask}

    def collate_prompts(self, queries: Sequence[str], num_rows: int | None = None) -> dict[str, np.ndarray]:
        """Thinking prompts `<query>q</query><thought>`, left padded so generation appends on the right.

        Returns prompt_ids, prompt_mask [n, T] int32, T a bucket multiple (at most max_query_tokens + 3).
        """
        rows = self._prompts(queries)
        ids, mask = self._left_pad(rows, self._bucket_len(rows, self.max_query_tokens + 3), num_rows)
        return {"prompt_ids": ids, "prompt_mask": mask}

    def collate_docs(self, docs: Sequence[Any], num_rows: int | None = None) -> dict[str, np.ndarray]:
        """Documents (str or {"title", "text"}) to embed. Returns doc_ids, doc_mask [n, T] int32, T <= Td."""
        rows = self._docs(docs)
        ids, mask = self._left_pad(rows, self._bucket_len(rows, self.Td), num_rows)
        return {"doc_ids": ids, "doc_mask": mask}
