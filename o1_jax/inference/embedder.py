"""`O1Embedder`: think, embed queries (with or without thinking) and embed corpora.

    emb = O1Embedder.from_pretrained("/tmp/o1_demo")          # a training workdir or an HF folder
    thoughts = emb.think(["where does the friend of kamo rizel live ?"], k=1)
    q = emb.encode_queries(queries, num_thoughts=3)          # [Q, D], L2-normalised
    d = emb.encode_corpus([{"title": t, "text": x}, ...])    # [N, D]

Formats are the training ones: documents `{title} {text}<emb>`, queries without thinking
`<query>{q}</query><thought><emb>`, with thinking the thought is generated from
`<query>{q}</query><thought>` and `<eos><emb>` is fed through the same KV cache.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Sequence

import jax
import numpy as np
import transformers
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from o1_jax import hf, objective, trainable, trainer
from o1_jax.data import formatting
from o1_jax.inference.generate import Sampling, generate
from o1_jax.models.llama import LlamaForCausalLM

AGGREGATIONS = ("mean_normalized", "mean")


@functools.lru_cache(maxsize=8)
def _embed_fn(model: LlamaForCausalLM):
    return jax.jit(lambda params, ids, mask: objective.embed(model, params, ids, mask))


class O1Embedder:
    def __init__(self, model: LlamaForCausalLM, params, tokenizer, *, max_query_tokens: int = 64,
                 max_thought_tokens: int = 128, max_doc_tokens: int = 256, batch_size: int = 32,
                 devices: Sequence[jax.Device] | None = None):
        # Data parallel over this process's devices: parameters replicated, batch rows split.
        devices = list(devices or jax.local_devices())
        mesh = Mesh(np.asarray(devices), ("data",))
        self._rows = NamedSharding(mesh, PartitionSpec("data"))
        self.model, self.tokenizer = model, tokenizer
        self.params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        batch_size = -(-batch_size // len(devices)) * len(devices)  # a multiple of the device count
        self.special = formatting.add_special_tokens(tokenizer)
        if max(self.special.values()) >= model.cfg.vocab_size:
            raise ValueError(f"the tokenizer's special tokens reach id {max(self.special.values())}, "
                             f"but the model has only {model.cfg.vocab_size} embedding rows")
        self.formatter = formatting.Formatter(tokenizer, max_query_tokens, max_thought_tokens, max_doc_tokens)
        self.batch_size = batch_size
        self.max_thought_tokens = max_thought_tokens

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path, dtype: str = "float32", **kwargs) -> "O1Embedder":
        """A training workdir (its latest checkpoint; local or a URL such as gs://...) or a local HF folder
        (special tokens added if missing)."""
        workdir = epath.Path(path)
        if trainer.is_remote(workdir) or (workdir / trainer.RUN_CONFIG).is_file():
            model, params, tokenizer, config = trainer.restore_trained(workdir)
            if dtype != model.cfg.dtype:
                model = LlamaForCausalLM(model.cfg.replace(dtype=dtype))
            d = config.data
            defaults = dict(max_query_tokens=d.max_query_tokens, max_thought_tokens=d.max_thought_tokens,
                            max_doc_tokens=d.max_doc_tokens)
            return cls(model, params, tokenizer, **{**defaults, **kwargs})
        path = pathlib.Path(path)
        model, params = hf.load_pretrained(path, dtype=dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        known = len(tokenizer)
        ids = sorted(formatting.add_special_tokens(tokenizer).values())
        if len(tokenizer) > known or max(ids) >= model.cfg.vocab_size:  # a plain LLM: give it the O1 tokens
            params, cfg = trainable.resize_vocab(params, model.cfg, len(tokenizer), ids, min(known, model.cfg.vocab_size))
            model = LlamaForCausalLM(cfg)
        return cls(model, params, tokenizer, **kwargs)

    def _shard(self, *arrays):
        return [jax.device_put(np.asarray(a), self._rows) for a in arrays]

    # ------------------------------------------------------------------ documents

    def encode_corpus(self, docs: Sequence[Any], batch_size: int | None = None) -> np.ndarray:
        """`[N, D]` float32 embeddings of documents (str or {"title", "text"}), in input order.

        Documents are sorted by length so each batch pads to a short bucket; every batch has the
        same number of rows, so only a few shapes (one per length bucket) are compiled.
        """
        batch_size = batch_size or self.batch_size
        token_lists = [self.formatter.doc_ids(doc) for doc in docs]
        order = np.argsort([len(t) for t in token_lists], kind="stable")
        out = np.zeros((len(docs), self.model.cfg.hidden_size), np.float32)
        fn = _embed_fn(self.model)
        for start in range(0, len(docs), batch_size):
            idx = order[start:start + batch_size]
            batch = self.formatter.collate_docs([docs[i] for i in idx], num_rows=batch_size)
            emb = fn(self.params, *self._shard(batch["doc_ids"], batch["doc_mask"]))
            out[idx] = np.asarray(emb)[: len(idx)]
        return out

    # ------------------------------------------------------------------ queries

    def default_sampling(self, k: int) -> Sampling:
        """The original's inference sampling (temperature 0.1, top-p 0.9); greedy for one thought."""
        if k <= 1:
            return Sampling(max_new_tokens=self.max_thought_tokens)
        return Sampling(max_new_tokens=self.max_thought_tokens, temperature=0.1, top_p=0.9)

    def _generate(self, queries: Sequence[str], k: int, sampling: Sampling | None, seed: int, embed: bool):
        """Each query is prefilled once and its k thoughts share that cache: rows i*k .. i*k+k-1."""
        sampling = sampling or self.default_sampling(k)
        n_dev = self._rows.mesh.size  # prompt rows are split over the devices too
        per_batch = max(self.batch_size // k // n_dev, 1) * n_dev
        tokens, lengths, embeddings = [], [], []
        rng = jax.random.key(seed)
        for start in range(0, len(queries), per_batch):
            chunk = list(queries[start:start + per_batch])
            batch = self.formatter.collate_prompts(chunk, num_rows=per_batch)
            out = generate(self.model, self.params, *self._shard(batch["prompt_ids"], batch["prompt_mask"]),
                           jax.random.fold_in(rng, start), sampling, eos_id=self.tokenizer.eos_token_id,
                           pad_id=self.formatter.pad_id, emb_id=self.special["<emb>"] if embed else None,
                           num_samples=k)
            rows = len(chunk) * k
            tokens.append(np.asarray(out["tokens"])[:rows])
            lengths.append(np.asarray(out["lengths"])[:rows])
            if embed:
                embeddings.append(np.asarray(out["embeddings"])[:rows])
        return tokens, lengths, embeddings

    def think(self, queries: Sequence[str], k: int = 1, sampling: Sampling | None = None,
              seed: int = 0) -> list[list[str]]:
        """k thoughts per query, as text."""
        tokens, lengths, _ = self._generate(queries, k, sampling, seed, embed=False)
        texts = [self.tokenizer.decode(t[:n], skip_special_tokens=True).strip()
                 for tb, lb in zip(tokens, lengths) for t, n in zip(tb, lb)]
        return [texts[i * k:(i + 1) * k] for i in range(len(queries))]

    def encode_queries(self, queries: Sequence[str], num_thoughts: int = 0, sampling: Sampling | None = None,
                       seed: int = 0, aggregate: str = "mean_normalized") -> np.ndarray:
        """`[Q, D]`: without thinking (num_thoughts=0), or the aggregate of k think-then-embed vectors.

        aggregate: "mean_normalized" (mean, then L2-normalised) or "mean" (as the original, not
        re-normalised; inner products then shrink with the thoughts' disagreement).
        """
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate={aggregate!r}: expected one of {AGGREGATIONS}")
        if num_thoughts == 0:
            out = np.zeros((len(queries), self.model.cfg.hidden_size), np.float32)
            fn = _embed_fn(self.model)
            for start in range(0, len(queries), self.batch_size):
                chunk = list(queries[start:start + self.batch_size])
                batch = self.formatter.collate_queries(chunk, num_rows=self.batch_size)
                emb = fn(self.params, *self._shard(batch["query_ids"], batch["query_mask"]))
                out[start:start + len(chunk)] = np.asarray(emb)[: len(chunk)]
            return out
        _, _, embeddings = self._generate(queries, num_thoughts, sampling, seed, embed=True)
        vectors = np.concatenate(embeddings).reshape(len(queries), num_thoughts, -1).mean(axis=1)
        if aggregate == "mean_normalized":
            vectors /= np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-6)
        return vectors.astype(np.float32)
