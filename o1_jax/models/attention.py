"""Attention implementations, chosen by `LlamaConfig.attention` (`config.model.attention`).

    xla          the einsum reference: `[B, K, G, T, S]` float32 scores, GQA without repeating K/V
    dot_product  `jax.nn.dot_product_attention`, the boolean mask passed as is: cuDNN flash
                 attention on GPU in bfloat16/float16 (`implementation="cudnn"`: jax's default,
                 None, is XLA's own attention in jax 0.10), XLA's elsewhere
    splash       Pallas splash attention (TPU, compile-only TPU devices of the planner included;
                 interpret mode elsewhere, slow, for tests only)
    auto         dot_product on GPU, xla on CPU and TPU (splash is opt-in: its speed on TPU is
                 not measured yet)

Splash is a per-device kernel: under a multi-device mesh it runs in `jax.shard_map`, each device
on its own batch rows and kv heads (the activation sharding rules in context).

All take the same mask (causal in slot order, left padding, Mistral's sliding window) and give the
same outputs at every real (non-padding) query; rows of padding queries, which nothing reads, may
differ. KV-cache decoding always uses the einsum (one query row per step: nothing to fuse).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_masks

from o1_jax import sharding
from o1_jax.models.config import ATTENTION_IMPLEMENTATIONS as IMPLEMENTATIONS

SPLASH_BLOCK = 128  # splash tiles T and S in blocks of this many slots: sequences are padded up to it
GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def target_platform() -> str:
    """The platform being compiled for: the devices of the mesh in context (`jax.set_mesh`, as
    training and the planner do: compile-only TPU devices included), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return getattr(device, "platform", None) or jax.default_backend()


def resolve(name: str, platform: str | None = None) -> str:
    """The implementation `name` means on `platform` (default: `target_platform()`)."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention={name!r}: expected one of {IMPLEMENTATIONS}")
    if name != "auto":
        return name
    platform = platform or target_platform()
    return "dot_product" if platform in GPU_PLATFORMS else "xla"


def einsum_attention(q, k, v, mask, scale: float, dtype):
    """q `[B, T, N, H]`, k/v `[B, K, S, H]`, mask `[B, 1, 1, T, S]` -> `[B, T, N, H]`."""
    b, t, n, h = q.shape
    kv = k.shape[1]
    q = q.reshape(b, t, kv, n // kv, h)  # query heads grouped per kv head
    scores = jnp.einsum("BTKGH,BKSH->BKGTS", q, k, preferred_element_type=jnp.float32)
    scores = scores * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("BKGTS,BKSH->BTKGH", probs, v).reshape(b, t, n, h)


CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)  # cuDNN's flash attention takes half precision only


def dot_product_backend(platform: str, dtype) -> str:
    """The `implementation` `dot_product_attention` asks jax for: cuDNN where it runs, else XLA."""
    cudnn = platform in GPU_PLATFORMS and platform != "rocm"  # cuDNN is NVIDIA's
    return "cudnn" if cudnn and jnp.dtype(dtype) in CUDNN_DTYPES else "xla"


def dot_product_attention(q, k, v, mask, scale: float):
    """`jax.nn.dot_product_attention` on the same arguments as `einsum_attention`."""
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, S, K, H]
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask[:, :, 0], scale=scale,
                                        implementation=dot_product_backend(target_platform(), q.dtype))


def _splash_kernel(group: int, length: int, window: int | None, interpret: bool):
    # Built in every trace that calls it (its mask tables become that trace's constants): a kernel
    # kept across traces would hold another trace's arrays, or need concrete arrays on the devices.
    if window is None:
        one = splash_masks.CausalMask((length, length))
    else:  # key s visible to query t when 0 <= t - s < window
        one = splash_masks.LocalMask((length, length), window_size=(window - 1, 0), offset=0)
    return splash_kernel.make_splash_mqa_single_device(splash_masks.MultiHeadMask([one] * group), interpret=interpret)


def splash_attention(q, k, v, mask, scale: float, window: int | None, interpret: bool | None = None):
    """Splash attention on the same arguments as `einsum_attention`, without a KV cache (T == S);
    per device under a multi-device mesh (batch rows and kv heads as the rules shard them)."""
    if interpret is None:  # the real kernel where the program is compiled for TPUs
        interpret = target_platform() != "tpu"
    local = functools.partial(_splash_local, scale=scale, window=window, interpret=interpret)
    kv_spec = sharding.context_spec(("activation_batch", "kv_heads", None, None), k.shape)
    if kv_spec is None:
        return local(q, k, v, mask)
    batch, heads = kv_spec[0], kv_spec[1]
    q_spec = PartitionSpec(batch, None, heads, None)  # query heads are kv-head-major: the same blocks
    mask_spec = PartitionSpec(batch, None, None, None, None)
    return jax.shard_map(local, in_specs=(q_spec, kv_spec, kv_spec, mask_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v, mask)


def _splash_local(q, k, v, mask, scale: float, window: int | None, interpret: bool):
    """Splash attention of one device's rows.

    Padding becomes segment ids (0 padding, 1 text), so a text query sees only text keys; the
    sequence is padded to a multiple of SPLASH_BLOCK with slots of a third segment, which see only
    themselves. Each kv head's query group is one MQA call; batch rows and kv heads are vmapped.
    """
    b, t, n, h = q.shape
    kv = k.shape[1]
    real = mask.any(axis=-2)[:, 0, 0].astype(jnp.int32)  # [B, S]: a text key is visible to itself at least
    length = -(-t // SPLASH_BLOCK) * SPLASH_BLOCK
    pad = length - t
    segments = jnp.pad(real, ((0, 0), (0, pad)), constant_values=2)
    q = q * jnp.asarray(scale, q.dtype)  # splash takes scaled queries
    qg = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, length, kv, n // kv, h).transpose(0, 2, 3, 1, 4)
    kp = jnp.pad(k, ((0, 0), (0, 0), (0, pad), (0, 0))).astype(q.dtype)  # [B, K, L, H]
    vp = jnp.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0))).astype(q.dtype)
    run = _splash_kernel(n // kv, length, window, interpret)

    def one(qh, kh, vh, seg):  # [G, L, H], [L, H], [L, H], [L]
        return run(qh, kh, vh, segment_ids=splash_kernel.SegmentIds(q=seg, kv=seg))

    per_kv_head = jax.vmap(one, in_axes=(0, 0, 0, None))
    out = jax.vmap(per_kv_head, in_axes=(0, 0, 0, 0))(qg, kp, vp, segments)  # [B, K, G, L, H]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, length, n, h)[:, :t]
