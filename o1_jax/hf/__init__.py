"""Hugging Face interop: load and save Llama-family checkpoints (convert, safetensors_io), write the O1
export folder (o1_folder, over causal_lm_view, sentence_transformers_view and model_card), and
materialise shipped models (fetch)."""

from o1_jax.hf.convert import load_pretrained, read_config, save_pretrained

__all__ = ["load_pretrained", "read_config", "save_pretrained"]
