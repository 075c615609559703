"""Growing a model's vocabulary for the O1 special tokens (`<query>`, `</query>`, `<thought>`, `<emb>`)."""

from __future__ import annotations

import flax.traverse_util as traverse
import jax.numpy as jnp

from o1_jax.models.config import LlamaConfig

EMBEDDING = ("model", "embed_tokens", "embedding")
LM_HEAD = ("lm_head", "kernel")


def resize_vocab(params: dict, cfg: LlamaConfig, new_vocab: int, new_ids: list[int],
                 known_rows: int) -> tuple[dict, LlamaConfig]:
    """Grows the embedding (and untied head) to `new_vocab` and sets the rows of `new_ids` to the
    mean of the first `known_rows` rows (the tokenizer's ordinary tokens): an untrained row then
    looks like an average token rather than noise at the scale of a fresh init."""
    flat = traverse.flatten_dict(params)
    emb = flat[EMBEDDING]
    ids = jnp.asarray(new_ids, jnp.int32)
    if new_vocab > emb.shape[0]:
        emb = jnp.concatenate([emb, jnp.zeros((new_vocab - emb.shape[0], emb.shape[1]), emb.dtype)])
    mean = jnp.mean(emb[:known_rows].astype(jnp.float32), axis=0)
    flat[EMBEDDING] = emb.at[ids].set(mean.astype(emb.dtype))
    if LM_HEAD in flat:
        head = flat[LM_HEAD]
        if new_vocab > head.shape[1]:
            head = jnp.concatenate([head, jnp.zeros((head.shape[0], new_vocab - head.shape[1]), head.dtype)], 1)
        col = jnp.mean(head[:, :known_rows].astype(jnp.float32), axis=1)
        flat[LM_HEAD] = head.at[:, ids].set(col[:, None].astype(head.dtype))
    return traverse.unflatten_dict(flat), cfg.replace(vocab_size=max(new_vocab, cfg.vocab_size))
