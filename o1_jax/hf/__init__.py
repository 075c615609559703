"""Hugging Face interop: load and save Llama-family checkpoints, materialise shipped models."""

from o1_jax.hf.convert import load_pretrained, read_config, save_pretrained

__all__ = ["load_pretrained", "read_config", "save_pretrained"]
