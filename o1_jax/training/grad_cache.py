"""GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): the one-shot step's loss and gradients, with the activations of one chunk of
the batch alive at a time (`train.grad_cache_chunks`).

InfoNCE couples every query to every document of the global batch, but its parameters enter
only through the embeddings. So:

1. embed every chunk's queries and documents, keeping no activations (nothing is differentiated);
2. take the embedding losses (InfoNCE, distillation) on the whole batch, and their gradient with
   respect to the embeddings: `[B, D]` and `[B*G, D]`, small;
3. run each chunk again with gradients, on the surrogate
       <q_c, dL/dq_c> + <d_c, dL/dd_c> + w_gen * sum(thought CE of chunk c) / thought tokens of the batch,
   whose parameter gradient is that chunk's share of the one-shot gradient; sum over chunks.

The thought CE is a token mean over the whole batch, so each chunk's sum is divided by the
batch's token count, known before anything runs. Every document stays a negative for every query,
unlike `train.microbatches`. The model has no dropout or other randomness, so the two forwards of
a chunk compute the same embeddings; a model that gains some must pass both the same key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from o1_jax import forward, losses
from o1_jax.models import LlamaForCausalLM
from o1_jax.training import chunks as chunks_lib


def loss_and_grads(model: LlamaForCausalLM, full_params, params, batch: dict, loss_cfg, num_chunks: int):
    """(metrics, grads) of `forward.joint_loss` with respect to `params`, in `num_chunks` chunks.

    `full_params(params)` is the model's parameter tree (e.g. trainable + frozen combined).
    """
    group = batch["doc_ids"].shape[0] // batch["query_ids"].shape[0]
    cut = chunks_lib.split(batch, num_chunks)
    w_gen = loss_cfg.w_gen

    def encode(p, chunk):
        q, logits = forward.query_pass(model, full_params(p), chunk)
        d = forward.embed(model, full_params(p), chunk["doc_ids"], chunk["doc_mask"])
        return q, d, logits

    # 1. The embeddings of every chunk, one chunk at a time, no activations kept.
    q, d = jax.lax.map(lambda chunk: encode(params, chunk)[:2], cut)  # [k, B/k, D], [k, B/k*G, D]

    # 2. The embedding losses on the whole batch and their gradients with respect to the embeddings.
    def embedding_objective(q, d):  # the total loss without its thought CE (added per chunk in 3.)
        m = forward.embedding_losses(chunks_lib.join_queries(q), chunks_lib.join_documents(d, group), batch, loss_cfg)
        return forward.total_loss(dict(m, gen_loss=0.0), loss_cfg), m

    (_, metrics), (dq, dd) = jax.value_and_grad(embedding_objective, argnums=(0, 1), has_aux=True)(q, d)
    gen_tokens = jnp.sum(batch["gen_weights"].astype(jnp.float32))
    per_token = 1.0 / jnp.maximum(gen_tokens, 1.0)

    # 3. Each chunk again, with gradients: its cached embedding gradients and its own thought CE.
    def surrogate(p, chunk, dq_c, dd_c):
        q_c, d_c, logits = encode(p, chunk)
        ce = losses.token_cross_entropy(logits, chunk["gen_targets"])
        gen_c = jnp.sum(ce * chunk["gen_weights"].astype(jnp.float32)) * per_token
        return jnp.sum(q_c * dq_c) + jnp.sum(d_c * dd_c) + w_gen * gen_c, gen_c

    chunk_grad = jax.value_and_grad(surrogate, has_aux=True)

    def body(carry, xs):
        grads, gen = carry
        (_, gen_c), g = chunk_grad(params, *xs)
        return (jax.tree_util.tree_map(jnp.add, grads, g), gen + gen_c), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    (grads, gen), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), (cut, dq, dd))
    metrics = dict(metrics, gen_loss=gen, gen_tokens=gen_tokens)
    metrics["loss"] = forward.total_loss(metrics, loss_cfg)
    return metrics, grads
