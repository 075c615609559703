"""What training updates: all parameters, or LoRA adapters plus the special-token embedding rows.

Under LoRA the backbone is frozen, but the rows of the added tokens (`<query>`, `</query>`,
`<thought>`, `<emb>`) must learn: the original left them frozen, so the pooling token
kept its initial vector. Here they are a small trainable `[n, D]` array scattered into
the frozen embedding inside the step.
"""

from __future__ import annotations

import flax.traverse_util as traverse
import jax
import jax.numpy as jnp
import numpy as np

from o1_jax.models.config import LlamaConfig
from o1_jax.models.lora import is_lora_path

EMBEDDING = ("model", "embed_tokens", "embedding")
LM_HEAD = ("lm_head", "kernel")
SPECIAL_ROWS = "special_embedding_rows"


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


def split(params: dict, cfg: LlamaConfig, special_ids: list[int]) -> tuple[dict, dict]:
    """(trainable, frozen). Full fine-tuning: everything is trainable and nothing frozen."""
    if not cfg.lora_rank:
        return params, {}
    flat = traverse.flatten_dict(params)
    trainable = {"/".join(k): v for k, v in flat.items() if is_lora_path(k)}
    trainable[SPECIAL_ROWS] = flat[EMBEDDING][np.asarray(special_ids)]
    frozen = traverse.unflatten_dict({k: v for k, v in flat.items() if not is_lora_path(k)})
    return trainable, frozen


def combine(trainable: dict, frozen: dict, special_ids: list[int]) -> dict:
    """Inverse of `split`: the full parameter tree the model applies."""
    if not frozen:
        return trainable
    flat = traverse.flatten_dict(frozen)
    for key, value in trainable.items():
        if key != SPECIAL_ROWS:
            flat[tuple(key.split("/"))] = value
    flat[EMBEDDING] = flat[EMBEDDING].at[np.asarray(special_ids)].set(trainable[SPECIAL_ROWS])
    return traverse.unflatten_dict(flat)


def count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
