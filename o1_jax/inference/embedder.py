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
from typing import Any, Sequence

import jax
import numpy as np
import transformers

from o1_jax import defaults, forward, hf, model_specs, sharding
from o1_jax.data import formatting
from o1_jax.hf import o1_folder
from o1_jax.inference.generate import Sampling, generate
from o1_jax.models.llama import LlamaForCausalLM
from o1_jax.models.vocab import resize_vocab
from o1_jax.training import workdir as workdir_lib

AGGREGATIONS = ("mean_normalized", "mean")


@functools.lru_cache(maxsize=8)
def _embed_fn(model: LlamaForCausalLM):
    return jax.jit(lambda params, ids, mask: forward.embed(model, params, ids, mask))


class O1Embedder:
    def __init__(self, model: LlamaForCausalLM, params, tokenizer, *, max_query_tokens: int = 64,
                 max_thought_tokens: int = 128, max_doc_tokens: int = 256, batch_size: int = 32,
                 think_temperature: float = defaults.THINK_TEMPERATURE, think_top_p: float = defaults.THINK_TOP_P,
                 query_instruction: str = "", devices: Sequence[jax.Device] | None = None):
        # Data parallel over this process's devices: parameters replicated, batch rows split.
        devices = list(devices or jax.local_devices())
        replicated, self._rows = sharding.data_parallel(devices)
        self.model, self.tokenizer = model, tokenizer
        self.params = jax.device_put(params, replicated)  # a no-op for parameters restored onto it
        batch_size = -(-batch_size // len(devices)) * len(devices)  # a multiple of the device count
        self.special = formatting.add_special_tokens(tokenizer)
        if max(self.special.values()) >= model.cfg.vocab_size:
            raise ValueError(f"the tokenizer's special tokens reach id {max(self.special.values())}, "
                             f"but the model has only {model.cfg.vocab_size} embedding rows")
        self.formatter = formatting.Formatter(tokenizer, max_query_tokens, max_thought_tokens, max_doc_tokens)
        self.batch_size = batch_size
        self.max_thought_tokens = max_thought_tokens
        self.think_temperature, self.think_top_p = think_temperature, think_top_p
        # Prepended to every query before it is formatted (thinking and embedding alike), as in training.
        self.query_instruction = str(query_instruction)

    @classmethod
    def from_pretrained(cls, path, dtype: str = "float32", devices: Sequence[jax.Device] | None = None,
                        attention: str | None = None, **kwargs) -> "O1Embedder":
        """A training workdir (its latest intact checkpoint, parameters only; local or a URL such as
        gs://...), or an HF folder (special tokens added if missing); `path` is any model spec
        (o1_jax.model_specs: also shipped:NAME, package:MOD/dir). `attention` picks the kernel of the
        cache-free forwards (o1_jax.models.attention; None: the run's `model.attention`, "auto" for an
        HF folder). `kwargs` override the run's length limits and sampling (the keyword arguments of
        `O1Embedder`)."""
        folder = model_specs.resolve(path, "path")
        devices = list(devices or jax.local_devices())
        if workdir_lib.is_workdir(folder):
            replicated, _ = sharding.data_parallel(devices)
            restored = workdir_lib.restore_params(folder, devices=devices, shardings=replicated)
            model = restored.model
            model = LlamaForCausalLM(model.cfg.replace(dtype=dtype, attention=attention or model.cfg.attention))
            d, e = restored.config.data, restored.config.get("eval", {})
            run_defaults = dict(max_query_tokens=d.max_query_tokens, max_thought_tokens=d.max_thought_tokens,
                                max_doc_tokens=d.max_doc_tokens, think_temperature=e.get("temperature", defaults.THINK_TEMPERATURE),
                                think_top_p=e.get("top_p", defaults.THINK_TOP_P),
                                query_instruction=d.get("query_instruction", ""))
            return cls(model, restored.params, restored.tokenizer, devices=devices, **{**run_defaults, **kwargs})
        model, params = hf.load_pretrained(folder, dtype=dtype)
        model = LlamaForCausalLM(model.cfg.replace(attention=attention or "auto"))
        exported = o1_folder.read_settings(folder)  # an o1_jax export: its run's lengths and sampling
        exported.pop("num_thoughts", None)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        known = len(tokenizer)
        ids = sorted(formatting.add_special_tokens(tokenizer).values())
        if len(tokenizer) > known or max(ids) >= model.cfg.vocab_size:  # a plain LLM: give it the O1 tokens
            params, cfg = resize_vocab(params, model.cfg, len(tokenizer), ids, min(known, model.cfg.vocab_size))
            model = LlamaForCausalLM(cfg)
        return cls(model, params, tokenizer, devices=devices, **{**exported, **kwargs})

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
        """Greedy for one thought; for k > 1, temperature + top-p sampling at `think_temperature` and
        `think_top_p` (the run's `eval.temperature` / `eval.top_p`; by default the original's 0.1 and 0.9)."""
        if k <= 1:
            return Sampling(max_new_tokens=self.max_thought_tokens)
        return Sampling(max_new_tokens=self.max_thought_tokens, temperature=self.think_temperature,
                        top_p=self.think_top_p)

    def _generate(self, queries: Sequence[str], k: int, sampling: Sampling | None, seed: int, embed: bool):
        """Each query is prefilled once and its k thoughts share that cache: rows i*k .. i*k+k-1."""
        sampling = sampling or self.default_sampling(k)
        queries = self._instructed(queries)
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

    def _instructed(self, queries: Sequence[str]) -> list[str]:
        return [self.query_instruction + q for q in queries]

    def _texts(self, tokens, lengths, k: int) -> list[list[str]]:
        texts = [self.tokenizer.decode(t[:n], skip_special_tokens=True).strip()
                 for tb, lb in zip(tokens, lengths) for t, n in zip(tb, lb)]
        return [texts[i * k:(i + 1) * k] for i in range(len(texts) // k)]

    def think(self, queries: Sequence[str], k: int = 1, sampling: Sampling | None = None,
              seed: int = 0) -> list[list[str]]:
        """k thoughts per query, as text."""
        tokens, lengths, _ = self._generate(queries, k, sampling, seed, embed=False)
        return self._texts(tokens, lengths, k)

    def think_and_encode(self, queries: Sequence[str], num_thoughts: int, sampling: Sampling | None = None,
                         seed: int = 0, aggregate: str = "mean_normalized"):
        """What `encode_queries(num_thoughts=k >= 1)` and `think(k)` give, from ONE generation:
        `(vectors [Q, D], thoughts: k texts per query, thought_tokens [Q, k])`."""
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate={aggregate!r}: expected one of {AGGREGATIONS}")
        tokens, lengths, embeddings = self._generate(queries, num_thoughts, sampling, seed, embed=True)
        vectors = np.concatenate(embeddings).reshape(len(queries), num_thoughts, -1).mean(axis=1)
        if aggregate == "mean_normalized":
            vectors /= np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-6)
        counts = np.concatenate(lengths).reshape(len(queries), num_thoughts)
        return vectors.astype(np.float32), self._texts(tokens, lengths, num_thoughts), counts

    def encode_queries(self, queries: Sequence[str], num_thoughts: int = 0, sampling: Sampling | None = None,
                       seed: int = 0, aggregate: str = "mean_normalized") -> np.ndarray:
        """`[Q, D]`: without thinking (num_thoughts=0), or the aggregate of k think-then-embed vectors.

        aggregate: "mean_normalized" (mean, then L2-normalised) or "mean" (as the original, not
        re-normalised; inner products then shrink with the thoughts' disagreement).
        """
        if num_thoughts == 0:
            if aggregate not in AGGREGATIONS:
                raise ValueError(f"aggregate={aggregate!r}: expected one of {AGGREGATIONS}")
            return self.encode_with_thoughts(queries, [""] * len(queries))
        return self.think_and_encode(queries, num_thoughts, sampling, seed, aggregate)[0]

    def encode_with_thoughts(self, queries: Sequence[str], thoughts: Sequence[str]) -> np.ndarray:
        """`[Q, D]`: each query embedded with the thought it is given, none generated: the rows are
        `<query>{q}</query><thought>{t}<eos><emb>`, the training format (an empty thought is the
        no-think row). For controls such as a placebo thought, or an expert's thoughts for test queries."""
        if len(thoughts) != len(queries):
            raise ValueError(f"encode_with_thoughts: {len(queries)} queries but {len(thoughts)} thoughts")
        queries = self._instructed(queries)
        out = np.zeros((len(queries), self.model.cfg.hidden_size), np.float32)
        fn = _embed_fn(self.model)
        for start in range(0, len(queries), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            batch = self.formatter.collate_queries(queries[chunk], list(thoughts[chunk]), num_rows=self.batch_size)
            emb = fn(self.params, *self._shard(batch["query_ids"], batch["query_mask"]))
            out[chunk] = np.asarray(emb)[: len(queries[chunk])]
        return out

    # ------------------------------------------------------------------ the encoder protocol

    def encode(self, sentences: Sequence[Any], *, prompt_type=None, input_type: str | None = None,
               num_thoughts: int = 0, seed: int = 0, **kwargs) -> np.ndarray:
        """The `encode` that MTEB and sentence-transformers evaluators call: documents as
        `encode_corpus`, queries as `encode_queries` (thinking with `num_thoughts` > 0).

        Which one comes from `input_type` ("query" | "document") or MTEB's `prompt_type` (its
        `PromptType` enum or the same strings; "passage" and "corpus" count as documents); with
        neither, the texts are documents. Other keywords evaluators pass (task_name, batch_size,
        show_progress_bar, convert_to_numpy, ...) are accepted and ignored.
        """
        kind = input_type if input_type is not None else getattr(prompt_type, "value", prompt_type)
        kind = "document" if kind is None else str(kind).lower()
        if kind == "query":
            return self.encode_queries(list(sentences), num_thoughts=num_thoughts, seed=seed)
        if kind in ("document", "passage", "corpus"):
            return self.encode_corpus(list(sentences))
        raise ValueError(f"input_type / prompt_type {kind!r}: expected 'query' or 'document'")
