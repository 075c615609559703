"""LoRA: which parameters are adapters, and merging them into the kernels for export."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from o1_jax.models.config import LlamaConfig

LORA_LEAVES = ("lora_a", "lora_b")


def is_lora_path(path: tuple[str, ...]) -> bool:
    return path[-1] in LORA_LEAVES


def merge_lora(cfg: LlamaConfig, params: dict) -> tuple[LlamaConfig, dict]:
    """`kernel + a @ b * alpha/r` for every adapted projection; returns a config without LoRA."""
    if not cfg.lora_rank:
        return cfg, params
    scale = cfg.lora_alpha / cfg.lora_rank

    def merge(tree):
        if not isinstance(tree, dict):
            return tree
        if "lora_a" in tree:
            kernel = tree["kernel"]
            delta = jnp.einsum("...ir,...ro->...io", tree["lora_a"].astype(jnp.float32),
                               tree["lora_b"].astype(jnp.float32)) * scale
            merged = {k: v for k, v in tree.items() if k not in LORA_LEAVES}
            merged["kernel"] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
            return merged
        return {k: merge(v) for k, v in tree.items()}

    return cfg.replace(lora_rank=0, lora_targets=()), jax.jit(merge)(params)
