"""The Llama backbone in Flax linen, used functionally.

Parameter names follow Hugging Face (`model/embed_tokens`, `model/layers/self_attn/q_proj/kernel`,
`model/norm`, `lm_head`) with kernels laid out `[in, out]` and the decoder layers stacked
on a leading `layers` axis by `nn.scan`, so HF conversion is a fixed renaming plus a
transpose. RoPE is HF's half-split variant, so no weight permutation is needed.

Shape letters: B batch, T query length, S key length, D hidden, K kv heads,
G query heads per kv head, H head size, F MLP width, V vocabulary, L layers.
"""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from o1_jax.models import attention
from o1_jax.models.config import LlamaConfig

# Activation logical axes at block boundaries; the rules table maps them to mesh axes.
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@flax.struct.dataclass
class CausalLMOutput:
    logits: jax.Array | None  # [B, T, V], or None when not asked for
    last_hidden_state: jax.Array  # [B, T, D], after the final norm
    cache: dict | None = None  # the updated KV cache when one was passed in


def init_cache(cfg: LlamaConfig, batch: int, length: int) -> dict:
    """An empty KV cache for a `scan_layers=False` model: `k`, `v`, each a list of one
    `[B, K, S, H]` array per layer, in the compute dtype. One array per layer, so a decode step
    updates a layer's slots in place and attends over them without a copy; slots (S) next to the
    head size, so without a transpose."""
    shape = (batch, cfg.num_key_value_heads, length, cfg.head_size)
    layers = range(cfg.num_hidden_layers)
    return {"k": [jnp.zeros(shape, cfg.compute_dtype) for _ in layers],
            "v": [jnp.zeros(shape, cfg.compute_dtype) for _ in layers]}


def _init(cfg: LlamaConfig, axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), axes)


def rope_inverse_frequencies(cfg: LlamaConfig) -> np.ndarray:
    """Inverse frequencies as transformers computes them (float32), with llama3 scaling."""
    dim = cfg.head_size
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv_freq = inv_freq.astype(np.float32)
    if cfg.rope_type != "llama3":
        return inv_freq
    factor = cfg.rope_factor
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old_len = cfg.rope_original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(cfg: LlamaConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables `[B, T, H]` in float32 for integer positions `[B, T]`."""
    inv_freq = jnp.asarray(rope_inverse_frequencies(cfg))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """HF's half-split rotation: x*cos + rotate_half(x)*sin, x `[B, T, N, H]`."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions that skip padding, so a left-padded row gets the same RoPE as unpadded."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def attention_bias_mask(cfg: LlamaConfig, key_mask: jax.Array, num_queries: int, offset=0) -> jax.Array:
    """Boolean `[B, 1, 1, T, S]`: key slot s is visible to query t, which sits at slot offset + t.

    Visible = causal in slot order, not padding (`key_mask [B, S]`), inside the sliding window.
    Without a cache, offset = 0 and S = T; with one, S is the cache length.
    """
    q_slot = offset + jnp.arange(num_queries)[:, None]
    k_slot = jnp.arange(key_mask.shape[-1])[None, :]
    visible = k_slot <= q_slot
    if cfg.sliding_window is not None:
        visible &= q_slot - k_slot < cfg.sliding_window
    visible = visible[None] & key_mask.astype(bool)[:, None, :]  # [B, T, S]
    return visible[:, None, None]


class RMSNorm(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x):
        weight = self.param(
            "weight",
            nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            (x.shape[-1],),
            self.cfg.weight_dtype,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.rms_norm_eps)
        # As HF: cast back to the input dtype, then scale.
        return weight.astype(self.cfg.compute_dtype) * normed.astype(self.cfg.compute_dtype)


class Linear(nn.Module):
    """`x @ kernel (+ bias)`, kernel `[in, out]`, with an optional LoRA update `(x @ a) @ b * alpha/r`."""

    cfg: LlamaConfig
    features: int
    axes: tuple[str, str]
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dtype = cfg.compute_dtype
        kernel = self.param("kernel", _init(cfg, self.axes), (x.shape[-1], self.features), cfg.weight_dtype)
        x = x.astype(dtype)
        y = jax.lax.dot_general(x, kernel.astype(dtype), (((x.ndim - 1,), (0,)), ((), ())))
        if self.use_bias:
            init = nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:])
            y = y + self.param("bias", init, (self.features,), cfg.weight_dtype).astype(dtype)
        if cfg.lora_rank and self.name in cfg.lora_targets:
            # As PEFT: a random, b zero, so training starts from the base model exactly.
            a_init = nn.with_logical_partitioning(nn.initializers.he_uniform(), (self.axes[0], None))
            b_init = nn.with_logical_partitioning(nn.initializers.zeros, (None, self.axes[1]))
            a = self.param("lora_a", a_init, (x.shape[-1], cfg.lora_rank), cfg.weight_dtype).astype(dtype)
            b = self.param("lora_b", b_init, (cfg.lora_rank, self.features), cfg.weight_dtype).astype(dtype)
            y = y + (x @ a) @ b * (cfg.lora_alpha / cfg.lora_rank)
        return y


def _dense(cfg: LlamaConfig, features: int, axes: tuple[str, str], use_bias: bool, name: str) -> Linear:
    return Linear(cfg, features, axes, use_bias, name=name)


class Attention(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache_index, cache, layer):
        cfg = self.cfg
        b, t, _ = x.shape
        n, k, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_size
        qkv_bias = cfg.attention_bias or cfg.qkv_bias
        q = _dense(cfg, n * h, ("embed", "q_heads"), qkv_bias, "q_proj")(x).reshape(b, t, n, h)
        kk = _dense(cfg, k * h, ("embed", "kv_heads"), qkv_bias, "k_proj")(x).reshape(b, t, k, h)
        v = _dense(cfg, k * h, ("embed", "kv_heads"), qkv_bias, "v_proj")(x).reshape(b, t, k, h)
        q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)
        kk, v = kk.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, H]
        if cache is not None:
            # Write the new entries into this layer's slots (in place inside the decode loop),
            # then attend over all of them.
            where = (0, 0, cache_index, 0)
            ks, vs = list(cache["k"]), list(cache["v"])
            ks[layer] = jax.lax.dynamic_update_slice(ks[layer], kk.astype(ks[layer].dtype), where)
            vs[layer] = jax.lax.dynamic_update_slice(vs[layer], v.astype(vs[layer].dtype), where)
            cache, kk, v = {"k": ks, "v": vs}, ks[layer], vs[layer]

        scale = h**-0.5
        impl = "xla" if cache is not None else attention.resolve(cfg.attention)  # decoding: one row a step
        if impl == "xla":
            out = attention.einsum_attention(q, kk, v, mask, scale, cfg.compute_dtype)
        elif impl == "dot_product":
            out = attention.dot_product_attention(q, kk, v, mask, scale)
        else:
            out = attention.splash_attention(q, kk, v, mask, scale, cfg.sliding_window)
        out = out.reshape(b, t, n * h)
        return _dense(cfg, cfg.hidden_size, ("q_heads", "embed"), cfg.attention_bias, "o_proj")(out), cache


class MLP(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        gate = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), cfg.mlp_bias, "gate_proj")(x)
        up = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), cfg.mlp_bias, "up_proj")(x)
        return _dense(cfg, cfg.hidden_size, ("mlp", "embed"), cfg.mlp_bias, "down_proj")(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, carry, cos, sin, mask, cache_index):
        x, cache, layer = carry  # cache and (static) layer index only in the unscanned layout
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        attn, cache = Attention(self.cfg, name="self_attn")(
            RMSNorm(self.cfg, name="input_layernorm")(x), cos, sin, mask, cache_index, cache, layer)
        x = x + attn
        x = x + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="post_attention_layernorm")(x))
        return (nn.with_logical_constraint(x, ACTIVATION_AXES), cache, layer + 1), None


def _layer_class(cfg: LlamaConfig):
    if cfg.remat_policy == "none":
        return DecoderLayer
    return nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)


def _scanned_layers(cfg: LlamaConfig) -> nn.Module:
    return nn.scan(
        _layer_class(cfg),
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_hidden_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, name="layers")


class LlamaModel(nn.Module):
    """Embedding, scanned decoder layers and the final norm: the HF `model.*` tree."""

    cfg: LlamaConfig

    def setup(self):
        cfg = self.cfg
        self.embed_tokens = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            embedding_init=_init(cfg, ("vocab", "embed")),
        )
        if cfg.scan_layers:
            self.layers = _scanned_layers(cfg)
        else:
            self.layers = [_layer_class(cfg)(cfg, name=f"layers_{i}") for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache=None, cache_index=0):
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if cache is not None and self.cfg.scan_layers:
            raise ValueError("a KV cache needs the unscanned layout: LlamaConfig(scan_layers=False) with "
                             "parameters from unstack_layers (as o1_jax.inference.generate decodes)")
        if position_ids is None:
            if cache is not None:
                raise ValueError("with a KV cache, position_ids must be given (the cache does not know them)")
            position_ids = default_positions(attention_mask)
        cos, sin = rope_cos_sin(self.cfg, position_ids)
        mask = attention_bias_mask(self.cfg, attention_mask, input_ids.shape[1], cache_index)
        x = self.embed_tokens(input_ids).astype(self.cfg.compute_dtype)
        if self.cfg.scan_layers:
            (x, _, _), _ = self.layers((x, None, jnp.int32(0)), cos, sin, mask, cache_index)
        else:
            carry = (x, cache, 0)
            for layer in self.layers:
                carry, _ = layer(carry, cos, sin, mask, cache_index)
            x, cache, _ = carry
        return self.norm(x), cache


class LlamaForCausalLM(nn.Module):
    """`apply({"params": p}, ids, attention_mask=m)` -> CausalLMOutput(logits, last_hidden_state, cache).

    `compute_logits=False` skips the LM head (the embedder needs only a hidden state);
    `method=LlamaForCausalLM.logits_from_hidden` applies it to hidden states picked later.
    """

    cfg: LlamaConfig

    def setup(self):
        self.model = LlamaModel(self.cfg)
        if not self.cfg.tie_word_embeddings:
            self.lm_head = _dense(self.cfg, self.cfg.vocab_size, ("embed", "vocab"), False, "lm_head")

    def __call__(self, input_ids, attention_mask=None, position_ids=None, compute_logits: bool = True,
                 cache=None, cache_index=0):
        """With `cache` (from `init_cache`), `input_ids [B, T]` are written at slots
        `cache_index .. cache_index+T-1`, `attention_mask [B, S]` covers every cache slot, and
        `position_ids [B, T]` are required; the output carries the updated cache."""
        hidden, cache = self.model(input_ids, attention_mask, position_ids, cache, cache_index)
        logits = self.logits_from_hidden(hidden) if compute_logits else None
        return CausalLMOutput(logits=logits, last_hidden_state=hidden, cache=cache)

    def logits_from_hidden(self, hidden):
        """LM head on hidden states `[..., D]` -> logits `[..., V]` in float32."""
        if self.cfg.tie_word_embeddings:
            logits = self.model.embed_tokens.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return logits.astype(jnp.float32)


def unstack_layers(params: dict) -> dict:
    """Parameters of a scanned model (`model/layers/*` stacked [L, ...]) for the same config with
    `scan_layers=False` (`model/layers_{i}/*`)."""
    model = dict(params["model"])
    stacked = model.pop("layers")
    num_layers = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    for i in range(num_layers):
        model[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
    return {**params, "model": model}


def init_params(cfg: LlamaConfig, rng: jax.Array, seq_len: int = 8):
    """Random parameters (unboxed) for a config; for tests and training from scratch."""
    model = LlamaForCausalLM(cfg)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return nn.unbox(model.init(rng, ids)["params"])


def abstract_params(cfg: LlamaConfig):
    """Parameter shapes/dtypes, boxed with logical axis names, allocating nothing."""
    model = LlamaForCausalLM(cfg)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    # The key is made inside eval_shape too: no computation runs, even under a compile-only mesh.
    return jax.eval_shape(lambda i: model.init(jax.random.key(0), i), ids)["params"]


def param_shapes(cfg: LlamaConfig):
    """`abstract_params` without the logical-axis boxes (safe inside a mesh context)."""
    return jax.tree_util.tree_map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
        abstract_params(cfg), is_leaf=lambda x: isinstance(x, nn.Partitioned))
