"""The train step: joint loss and gradients (in one shot, accumulated over micro-batches, or by
GradCache over chunks), the optimizer update, skipped when the loss or gradient is not finite; and its model FLOPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from o1_jax import flops as flops_lib
from o1_jax import forward
from o1_jax.models import LlamaConfig, LlamaForCausalLM
from o1_jax.training import chunks, grad_cache, trainable_params


def make_train_step(model: LlamaForCausalLM, tx, schedule, loss_cfg, special_ids, microbatches: int,
                    grad_cache_chunks: int = 1):
    """`step(state, frozen, batch) -> (state, metrics)`; `state` = {params, opt_state, step}.

    `microbatches` > 1 accumulates gradients over micro-batches (each one's InfoNCE sees only its
    own documents); `grad_cache_chunks` > 1 computes the one-shot loss and gradients in chunks
    (`grad_cache.py`). One of them at most.
    """
    if microbatches > 1 and grad_cache_chunks > 1:
        raise ValueError(f"train.microbatches={microbatches} and train.grad_cache_chunks={grad_cache_chunks}: "
                         "use one of them (GradCache already bounds memory at the whole batch's negatives)")
    def loss_fn(params, frozen, batch):
        full = trainable_params.combine(params, frozen, special_ids)
        return forward.joint_loss(model, full, batch, loss_cfg)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state, frozen, batch):
        if grad_cache_chunks > 1:
            metrics, grads = grad_cache.loss_and_grads(
                model, lambda p: trainable_params.combine(p, frozen, special_ids), state["params"], batch,
                loss_cfg, grad_cache_chunks)
        elif microbatches == 1:
            (_, metrics), grads = grad_fn(state["params"], frozen, batch)
        else:
            # Gradient accumulation: each micro-batch's InfoNCE sees its own in-batch negatives.
            micro = chunks.split(batch, microbatches)

            def body(acc, mb):
                (_, m), g = grad_fn(state["params"], frozen, mb)
                return jax.tree_util.tree_map(jnp.add, acc, (g, m)), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state["params"])
            m0 = jax.eval_shape(lambda: grad_fn(state["params"], frozen, jax.tree_util.tree_map(lambda x: x[0], micro))[0][1])
            m0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), m0)
            (grads, metrics), _ = jax.lax.scan(body, (zeros, m0), micro)
            grads = jax.tree_util.tree_map(lambda g: g / microbatches, grads)
            metrics = jax.tree_util.tree_map(lambda m: m / microbatches, metrics)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.tree.norm(grads)
        # A non-finite loss or gradient skips the update (as optax.apply_if_finite), so the steps
        # train.max_nonfinite_steps tolerates never corrupt the state; the host decides when to stop.
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        params, opt_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finite, new, old), (params, opt_state), (state["params"], state["opt_state"]))
        metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state["step"]))
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return step


def step_flops(cfg: LlamaConfig, local_batch: dict, process_count: int) -> float:
    """Model FLOPs of one step on the global batch whose process-local part is `local_batch`."""
    b, tq = local_batch["query_ids"].shape
    n, td = local_batch["doc_ids"].shape
    return flops_lib.train_step_flops(cfg, b * process_count, n // b, tq, td, local_batch["gen_positions"].shape[1])
