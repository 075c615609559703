"""Hugging Face interop: load and save Llama-family checkpoints, materialise shipped models."""
