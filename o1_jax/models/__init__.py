"""The Llama-family backbone (Llama, Mistral, Qwen2) in Flax."""

from o1_jax.models.config import LlamaConfig
from o1_jax.models.llama import CausalLMOutput, LlamaForCausalLM, init_cache, abstract_params, init_params, param_shapes

__all__ = ["CausalLMOutput", "LlamaConfig", "LlamaForCausalLM", "abstract_params", "init_cache", "init_params", "param_shapes"]
