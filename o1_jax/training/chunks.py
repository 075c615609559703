"""A training batch cut into k chunks of whole query groups, and put back together.

Chunk j holds queries j, j + k, j + 2k, ... (every k-th row, so a device whose rows are a
contiguous block of the batch keeps its own rows in every chunk) and exactly their document
groups: document rows are query-major, G per query, positive first. Gradient accumulation
(`train.microbatches`) and GradCache (`train.grad_cache_chunks`) both cut batches this way.
"""

from __future__ import annotations

import jax


def _every_kth(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [k, B/k, ...]: row r goes to chunk r % k."""
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def _interleave(x: jax.Array) -> jax.Array:
    """[k, B/k, ...] -> [B, ...], the inverse of `_every_kth`."""
    return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def split(batch: dict, k: int) -> dict:
    """Each array of a training batch (`[B, ...]` or `[B*G, ...]` rows) as `[k, ...]` chunks."""
    b = batch["query_ids"].shape[0]
    group = batch["doc_ids"].shape[0] // b

    def one(x):
        if x.shape[0] == b:
            return _every_kth(x, k)
        if x.shape[0] == b * group:  # [B*G, ...] -> [B, G, ...] -> [k, B/k, G, ...] -> [k, B/k*G, ...]
            per_query = _every_kth(x.reshape(b, group, *x.shape[1:]), k)
            return per_query.reshape(k, (b // k) * group, *x.shape[1:])
        raise ValueError(f"a batch array of {x.shape[0]} rows: expected {b} (queries) or {b * group} (documents)")

    return jax.tree_util.tree_map(one, batch)


def join_queries(x: jax.Array) -> jax.Array:
    """`[k, B/k, ...]` query rows of `split` back in batch order `[B, ...]`."""
    return _interleave(x)


def join_documents(x: jax.Array, group: int) -> jax.Array:
    """`[k, B/k*G, ...]` document rows of `split` back in batch order `[B*G, ...]`."""
    k, rows = x.shape[:2]
    per_query = x.reshape(k, rows // group, group, *x.shape[2:])
    return _interleave(per_query).reshape(k * rows, *x.shape[2:])
