"""O1 Embedder losses: thought generation, grouped contrastive (InfoNCE), teacher distillation.

Plain functions of arrays. Every loss upcasts to float32 first, whatever the
compute dtype of the model, because a bf16 softmax over 1,024 documents at
temperature 0.02 loses most of its precision.

The contrastive loss takes the GLOBAL batch. Called inside `jax.jit` on arrays
sharded over the 'data' axis, XLA inserts the all-gathers, so every query sees
every document on every device and the loss (and its gradient) is the same for
any device count, unlike the reference, where only the local slice of the
gathered embeddings carried gradient and DDP then averaged over devices.

Shape letters: B queries, G documents per query (positive first), N = B*G
documents, D embedding width, K selected LM-head positions per query, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["l2_normalize", "token_cross_entropy", "generation_loss", "false_negatives", "contrastive_loss",
           "distillation_loss"]


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / max(||x||, eps) along the last axis, in float32."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def _log_softmax(x: jax.Array) -> jax.Array:
    return x - jax.scipy.special.logsumexp(x, axis=-1, keepdims=True)


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`[B, K]` cross-entropy of each target under `logits [B, K, V]`, in float32."""
    logits = logits.astype(jnp.float32)
    lse = jax.scipy.special.logsumexp(logits, axis=-1)  # [B, K]
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - target_logit


def generation_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Token-mean cross-entropy on the thought tokens and the <eos> after them.

    Args:
      logits: [B, K, V] LM-head outputs at the K positions that predict a
        thought token or the closing <eos> (gathered before the LM head, so the
        [B, T, V] logits of the whole sequence are never formed).
      targets: [B, K] int token ids.
      weights: [B, K] 1 on real targets, 0 on padding.

    Returns:
      (loss, num_tokens): sum(ce * w) / max(sum(w), 1), and sum(w).
    """
    weights = weights.astype(jnp.float32)
    ce = token_cross_entropy(logits, targets)  # [B, K]
    num_tokens = jnp.sum(weights)
    loss = jnp.sum(ce * weights) / jnp.maximum(num_tokens, 1.0)
    return loss, num_tokens


def false_negatives(positive_hash: jax.Array, doc_hash: jax.Array, group_size: int) -> jax.Array:
    """`[B, N]` True where document n is a known positive of query i other than i's own positive slot.

    Args:
      positive_hash: [B, P] int hashes of each query's known positives (0 = padding).
      doc_hash: [N] int hashes of the batch's documents (0 = unknown: never matches).
      group_size: G; column i*G is query i's positive, which is never excluded.
    """
    b, n = positive_hash.shape[0], doc_hash.shape[0]
    same = (positive_hash[:, :, None] == doc_hash[None, None, :]) & (positive_hash[:, :, None] != 0)
    own = jnp.arange(n)[None, :] == (jnp.arange(b) * group_size)[:, None]
    return jnp.any(same, axis=1) & ~own


def other_groups(own_group_only: jax.Array, num_docs: int, group_size: int) -> jax.Array:
    """`[B, N]` True where document n is outside query i's own group and i has `own_group_only` set:
    a query of a source trained without in-batch negatives sees only its positive and hard negatives.

    Args:
      own_group_only: [B] 0/1 per query.
      num_docs: N = B*G.
      group_size: G; query i's group is columns i*G .. i*G+G-1.
    """
    b = own_group_only.shape[0]
    outside = (jnp.arange(num_docs)[None, :] // group_size) != jnp.arange(b)[:, None]  # [B, N]
    return outside & (own_group_only[:, None] != 0)


def contrastive_loss(
    q: jax.Array, d: jax.Array, temperature: float, group_size: int, exclude: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """InfoNCE of each query against every document in the global batch.

    Args:
      q: [B, D] L2-normalised query embeddings.
      d: [B*G, D] L2-normalised document embeddings; rows i*G .. i*G+G-1 are
        query i's group, its positive first, then its hard negatives.
      temperature: softmax temperature (0.02 in the paper).
      group_size: G.
      exclude: optional [B, N] bool, True where a document is left out of query
        i's softmax (a false negative: `false_negatives`); never its own positive.

    Returns:
      (loss, accuracy): mean cross-entropy over the B queries, and the fraction
      of queries whose top-scoring document is their positive.
    """
    b, n = q.shape[0], d.shape[0]
    if n != b * group_size:
        raise ValueError(
            f"contrastive_loss: d has {n} rows, expected B*group_size = {b}*{group_size} = {b * group_size}."
        )
    scores = jnp.einsum(
        "bd,nd->bn", q.astype(jnp.float32), d.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    ) / temperature  # [B, N]
    labels = jnp.arange(b) * group_size  # [B], the positive of query i
    if exclude is not None:
        scores = jnp.where(exclude, -jnp.inf, scores)
    logp = _log_softmax(scores)
    loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))
    accuracy = jnp.mean((jnp.argmax(scores, axis=-1) == labels).astype(jnp.float32))
    return loss, accuracy


def distillation_loss(
    q: jax.Array,
    d: jax.Array,
    teacher_scores: jax.Array,
    teacher_mask: jax.Array,
    temperature: float,
    group_size: int,
    teacher_temperature: float = 1.0,
) -> jax.Array:
    """KL(teacher || student) over each query's own group of G documents.

    Args:
      q: [B, D] and d: [B*G, D] as in `contrastive_loss`.
      teacher_scores: [B, G] teacher relevance scores of each query's group.
      teacher_mask: [B] 1 where the record has teacher scores, else 0.
      temperature: student temperature.
      group_size: G.
      teacher_temperature: the teacher scores are divided by this before softmax.

    Returns:
      Mean KL over the masked queries, 0 when no query has teacher scores.
    """
    b = q.shape[0]
    if d.shape[0] != b * group_size:
        raise ValueError(
            f"distillation_loss: d has {d.shape[0]} rows, expected B*group_size = {b * group_size}."
        )
    mask = teacher_mask.astype(jnp.float32)
    dg = d.astype(jnp.float32).reshape(b, group_size, -1)  # [B, G, D]
    student = jnp.einsum(
        "bd,bgd->bg", q.astype(jnp.float32), dg, precision=jax.lax.Precision.HIGHEST
    ) / temperature  # [B, G]
    log_s = _log_softmax(student)
    # Rows without teacher scores may hold anything (NaN included): zero them so
    # neither the value nor the gradient sees them.
    t = jnp.where(mask[:, None] > 0, teacher_scores.astype(jnp.float32), 0.0) / teacher_temperature
    log_t = _log_softmax(t)
    p_t = jnp.exp(log_t)
    kl = jnp.sum(jnp.where(p_t > 0, p_t * (log_t - log_s), 0.0), axis=-1)  # [B]
    return jnp.sum(kl * mask) / jnp.maximum(jnp.sum(mask), 1.0)
