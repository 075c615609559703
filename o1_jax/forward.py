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


def joint_loss(model: LlamaForCausalLM, params, batch: dict[str, Any], loss_cfg) -> tuple[jax.Array, dict]:
    """Total = w_ctr * InfoNCE + w_gen * thought CE (+ w_distill * KL); returns (total, metrics)."""
    out = model.apply(
        {"params": params}, batch["query_ids"], attention_mask=batch["query_mask"], compute_logits=False
    )
    hidden = out.last_hidden_state  # [B, Tq, D]
    q = losses.l2_normalize(hidden[:, -1])
    # The LM head runs only at the positions that predict a thought token or its <eos>.
    picked = jnp.take_along_axis(hidden, batch["gen_positions"][..., None], axis=1)  # [B, Kg, D]
    logits = model.apply({"params": params}, picked, method=LlamaForCausalLM.logits_from_hidden)
    gen, gen_tokens = losses.generation_loss(logits, batch["gen_targets"], batch["gen_weights"])

    d = embed(model, params, batch["doc_ids"], batch["doc_mask"])  # [B*G, D]
    group_size = batch["doc_ids"].shape[0] // batch["query_ids"].shape[0]
    ctr, accuracy = losses.contrastive_loss(q, d, loss_cfg.temperature, group_size)
    total = loss_cfg.w_ctr * ctr + loss_cfg.w_gen * gen
    metrics = {"ctr_loss": ctr, "gen_loss": gen, "accuracy": accuracy, "gen_tokens": gen_tokens}
    if loss_cfg.w_distill:
        distill = losses.distillation_loss(
            q, d, batch["teacher_scores"], batch["teacher_mask"], loss_cfg.temperature, group_size,
            teacher_temperature=loss_cfg.teacher_temperature,
        )
        total = total + loss_cfg.w_distill * distill
        metrics["distill_loss"] = distill
    metrics["loss"] = total
    return total, metrics
