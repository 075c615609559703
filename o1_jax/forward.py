"""The model applied to O1 batches (the array losses are in `losses.py`).

`embed` gives the `<emb>` vector of any row. `joint_loss` is the training objective: one forward
of `<query>q</query><thought>t<eos><emb>` gives both the thought's next-token loss and the query
embedding; documents `{title text}<emb>` are embedded directly; InfoNCE over the global batch
ties them together.

Rows are left-padded, so `<emb>` is the last position of every row.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from o1_jax import losses
from o1_jax.models.llama import LlamaForCausalLM


def embed(model: LlamaForCausalLM, params, ids, mask) -> jax.Array:
    """L2-normalised final hidden state at `<emb>` (the last position), `[B, D]` float32."""
    hidden = model.apply({"params": params}, ids, attention_mask=mask, compute_logits=False).last_hidden_state
    return losses.l2_normalize(hidden[:, -1])


def query_pass(model: LlamaForCausalLM, params, batch: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
    """One forward of the query rows: `(q [B, D], logits [B, Kg, V])`, the query embeddings and the
    LM head's logits at the positions that predict a thought token or its <eos> (the only positions
    the LM head runs at)."""
    out = model.apply(
        {"params": params}, batch["query_ids"], attention_mask=batch["query_mask"], compute_logits=False
    )
    hidden = out.last_hidden_state  # [B, Tq, D]
    q = losses.l2_normalize(hidden[:, -1])
    picked = jnp.take_along_axis(hidden, batch["gen_positions"][..., None], axis=1)  # [B, Kg, D]
    return q, model.apply({"params": params}, picked, method=LlamaForCausalLM.logits_from_hidden)


def embedding_losses(q: jax.Array, d: jax.Array, batch: dict[str, Any], loss_cfg) -> dict:
    """InfoNCE (and, when weighted, distillation) of the whole batch's embeddings:
    {ctr_loss, accuracy, false_negatives[, distill_loss]}. A query's known positives met elsewhere
    in the batch (as another query's positive or hard negative) are left out of its softmax;
    `false_negatives` is how many the batch had, per query. A query with `own_group_only` (its
    source has in_batch_negatives=False) is scored against its own group only."""
    group_size = d.shape[0] // q.shape[0]
    exclude = None
    if "positive_hash" in batch:
        exclude = losses.false_negatives(batch["positive_hash"], batch["doc_hash"], group_size)
    false_negatives = exclude
    if "own_group_only" in batch:  # a source trained without in-batch negatives
        others = losses.other_groups(batch["own_group_only"], d.shape[0], group_size)
        exclude = others if exclude is None else exclude | others
    ctr, accuracy = losses.contrastive_loss(q, d, loss_cfg.temperature, group_size, exclude)
    metrics = {"ctr_loss": ctr, "accuracy": accuracy}
    if false_negatives is not None:
        metrics["false_negatives"] = jnp.sum(false_negatives) / q.shape[0]
    if loss_cfg.w_distill:
        metrics["distill_loss"] = losses.distillation_loss(
            q, d, batch["teacher_scores"], batch["teacher_mask"], loss_cfg.temperature, group_size,
            teacher_temperature=loss_cfg.teacher_temperature,
        )
    return metrics


def total_loss(metrics: dict, loss_cfg) -> jax.Array:
    """w_ctr * InfoNCE + w_gen * thought CE (+ w_distill * KL), from the metrics that hold them."""
    total = loss_cfg.w_ctr * metrics["ctr_loss"] + loss_cfg.w_gen * metrics["gen_loss"]
    if loss_cfg.w_distill:
        total = total + loss_cfg.w_distill * metrics["distill_loss"]
    return total


def joint_loss(model: LlamaForCausalLM, params, batch: dict[str, Any], loss_cfg) -> tuple[jax.Array, dict]:
    """Total = w_ctr * InfoNCE + w_gen * thought CE (+ w_distill * KL); returns (total, metrics)."""
    q, logits = query_pass(model, params, batch)
    gen, gen_tokens = losses.generation_loss(logits, batch["gen_targets"], batch["gen_weights"])
    d = embed(model, params, batch["doc_ids"], batch["doc_mask"])  # [B*G, D]
    metrics = dict(embedding_losses(q, d, batch, loss_cfg), gen_loss=gen, gen_tokens=gen_tokens)
    metrics["loss"] = total_loss(metrics, loss_cfg)
    return metrics["loss"], metrics
