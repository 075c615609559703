"""What training updates: all parameters, or LoRA adapters plus the special-token embedding rows.

Under LoRA the backbone is frozen, but the rows of the added tokens (`<query>`, `</query>`,
`<thought>`, `<emb>`) must learn: the original left them frozen, so the pooling token
kept its initial vector. Here they are a small trainable `[n, D]` array scattered into
the frozen embedding inside the step.
"""

from __future__ import annotations

import flax.traverse_util as traverse
import jax
import numpy as np

from o1_jax.models.config import LlamaConfig
from o1_jax.models.lora import is_lora_path
from o1_jax.models.vocab import EMBEDDING

SPECIAL_ROWS = "special_embedding_rows"


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
