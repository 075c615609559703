"""Batched generation with a KV cache, and thinking + embedding in one pass.

One prefill over the (left-padded) prompts, then a compiled `lax.while_loop` that feeds one
token per step and stops when every row has emitted `<eos>` or `max_new_tokens` is reached.
With `embed=True`, `<eos><emb>` is then fed through the same cache and the hidden state at
`<emb>` is the query embedding: the original decoded the thought to text, re-tokenised it and
ran a second full forward pass; here the thought's keys and values are reused.

Cache slots: the prompt occupies [0, P); generated token t goes to slot P + t. A row that has
finished stops writing visible slots (its key mask stays 0 there), and RoPE positions are
counted per row, so every row sees exactly `prompt + thought (+ <eos><emb>)`, contiguous.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from o1_jax.losses import l2_normalize
from o1_jax.models.llama import (
    LlamaForCausalLM,
    default_positions,
    init_cache,
    unstack_layers,
)


@dataclasses.dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: expected at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature={self.temperature}, top_p={self.top_p}: expected >= 0 and (0, 1]")


# Nucleus sampling looks for the nucleus among the best NUCLEUS_CANDIDATES tokens first: a partial
# top-k is about 60x cheaper on a CPU than sorting the vocabulary (7 vs 457 ms for 48 x 49k logits).
# Rows whose nucleus is wider fall back to the full sort, so the distribution is exact either way.
NUCLEUS_CANDIDATES = 256


def argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, -1)` (the first maximum) as a max and a min over positions: XLA's CPU argmax
    is a variadic reduce, 6x slower on `[16, 49152]` logits (5.1 vs 0.8 ms, paid at every token)."""
    positions = jnp.arange(x.shape[-1], dtype=jnp.int32)
    first = jnp.min(jnp.where(x == jnp.max(x, axis=-1, keepdims=True), positions, x.shape[-1]), axis=-1)
    return jnp.minimum(first, x.shape[-1] - 1)  # a row of NaNs gives its last position, not out of range


def categorical(rng: jax.Array, logits: jax.Array) -> jax.Array:
    """A sample from softmax(logits) per row: the Gumbel-max trick, with the fast `argmax`."""
    return argmax(logits + jax.random.gumbel(rng, logits.shape, logits.dtype))


def sample_token(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """Greedy, or temperature + nucleus (top-p) sampling, from logits `[B, V]`."""
    if sampling.temperature == 0:
        return argmax(logits)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_p >= 1:
        return categorical(rng, logits)
    k = min(NUCLEUS_CANDIDATES, logits.shape[-1])
    best, best_ids = jax.lax.top_k(logits, k)  # [B, k], descending
    probs = jnp.exp(best - jax.nn.logsumexp(logits, axis=-1, keepdims=True))  # of the whole vocabulary

    def among_best(_):
        # The smallest prefix whose mass reaches top_p (always at least the best token).
        keep = jnp.cumsum(probs, axis=-1) - probs < sampling.top_p
        pick = categorical(rng, jnp.where(keep, best, -jnp.inf))
        return jnp.take_along_axis(best_ids, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)

    def full_sort(_):
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
        keep = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs < sampling.top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        return categorical(rng, jnp.where(logits < threshold, -jnp.inf, logits))

    covered = jnp.all(probs.sum(axis=-1) >= sampling.top_p)
    return jax.lax.cond(covered, among_best, full_sort, None)


@functools.lru_cache(maxsize=32)
def _compiled(model: LlamaForCausalLM, sampling: Sampling, embed: bool, num_samples: int = 1):
    """One jitted function per (model, sampling, embed, num_samples); shapes add their own compilations."""

    # Decoding runs one module per layer. Under nn.scan every token would copy each layer's
    # weights out of the stacked arrays (XLA slices them into new buffers for the matmuls).
    decoder = LlamaForCausalLM(model.cfg.replace(scan_layers=False, remat_policy="none"))

    def run(params, prompt_ids, prompt_mask, rng, eos_id, pad_id, emb_id):
        if model.cfg.scan_layers:
            params = unstack_layers(params)  # once per call, not once per token
        prompt_ids, prompt_mask = prompt_ids.astype(jnp.int32), prompt_mask.astype(jnp.int32)
        u, p = prompt_ids.shape
        b = u * num_samples  # row i * num_samples + j is sample j of prompt i
        n = sampling.max_new_tokens
        slots = p + n + (2 if embed else 0)
        cache = init_cache(model.cfg, u, slots)  # one [B, K, S, H] per layer
        key_mask = jnp.zeros((u, slots), jnp.int32).at[:, :p].set(prompt_mask)

        def forward(ids, positions, key_mask, cache, index, logits=True):
            out = decoder.apply({"params": params}, ids, attention_mask=key_mask, position_ids=positions,
                                compute_logits=False, cache=cache, cache_index=index)
            last = out.last_hidden_state[:, -1]
            if logits:
                last = decoder.apply({"params": params}, last, method=LlamaForCausalLM.logits_from_hidden)
            return last, out.cache

        logits, cache = forward(prompt_ids, default_positions(prompt_mask), key_mask, cache, 0)
        if num_samples > 1:  # the prompt is prefilled once, then its cache is shared by its samples
            cache = {k: [jnp.repeat(x, num_samples, axis=0) for x in v] for k, v in cache.items()}  # [B, K, S, H]
            key_mask, logits = jnp.repeat(key_mask, num_samples, 0), jnp.repeat(logits, num_samples, 0)
        prompt_len = key_mask[:, :p].sum(-1).astype(jnp.int32)
        rng, sub = jax.random.split(rng)
        tok = sample_token(logits, sub, sampling)
        tokens = jnp.full((b, n), pad_id, jnp.int32)
        state = (jnp.int32(0), tok, jnp.zeros((b,), bool), tokens, cache, key_mask, rng)

        # Without embedding, the last token needs no forward pass (nothing reads its keys and values):
        # the loop stops one step early and the token is recorded after it.
        steps = n if embed else n - 1

        def cond(state):
            t, _, done, *_ = state
            return (t < steps) & ~jnp.all(done)

        def body(state):
            t, tok, done, tokens, cache, key_mask, rng = state
            finished = done | (tok == eos_id)
            tokens = tokens.at[:, t].set(jnp.where(done, pad_id, tok))
            key_mask = jax.lax.dynamic_update_slice(key_mask, (~finished).astype(jnp.int32)[:, None], (0, p + t))
            logits, cache = forward(tok[:, None], (prompt_len + t)[:, None], key_mask, cache, p + t)
            rng, sub = jax.random.split(rng)
            return t + 1, sample_token(logits, sub, sampling), finished, tokens, cache, key_mask, rng

        t, tok, done, tokens, cache, key_mask, _ = jax.lax.while_loop(cond, body, state)
        if not embed:  # t = n - 1, or earlier with every row done (then this writes padding)
            tokens = tokens.at[:, t].set(jnp.where(done, pad_id, tok))
        thought_len = _first(tokens, eos_id, n)  # everything before a row's first <eos>
        result = {"tokens": tokens, "lengths": thought_len}
        if embed:
            tail = jnp.stack([jnp.full((b,), eos_id), jnp.full((b,), emb_id)], axis=1).astype(jnp.int32)
            key_mask = jax.lax.dynamic_update_slice(key_mask, jnp.ones((b, 2), jnp.int32), (0, p + t))
            positions = (prompt_len + thought_len)[:, None] + jnp.arange(2)[None]
            hidden, _ = forward(tail, positions, key_mask, cache, p + t, logits=False)
            result["embeddings"] = l2_normalize(hidden)
        return result

    return jax.jit(run)


def _first(tokens: jax.Array, value, n: int) -> jax.Array:
    """Index of the first `value` in each row, or n."""
    hit = tokens == value
    return jnp.where(hit.any(-1), jnp.argmax(hit, axis=-1), n).astype(jnp.int32)


def generate(model: LlamaForCausalLM, params, prompt_ids, prompt_mask, rng, sampling: Sampling, *,
             eos_id: int, pad_id: int, emb_id: int | None = None, num_samples: int = 1) -> dict:
    """Generates up to `sampling.max_new_tokens` per left-padded prompt row, `num_samples` times
    (rows `i * num_samples + j` of the outputs; the prompt is prefilled once).

    Returns `tokens [B, N]` (pad after a row's `<eos>`), `lengths [B]` (tokens before `<eos>`)
    and, when `emb_id` is given, `embeddings [B, D]`: the L2-normalised hidden state at `<emb>`
    after `prompt + thought + <eos><emb>`, computed through the same KV cache.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: expected at least 1")
    fn = _compiled(model, sampling, emb_id is not None, num_samples)
    return fn(params, prompt_ids, prompt_mask, rng,
              jnp.int32(eos_id), jnp.int32(pad_id), jnp.int32(emb_id if emb_id is not None else 0))
