"""The tiny random Llama that tests save as a plain HF folder: one definition for every test file."""

import jax

from o1_jax import hf
from o1_jax.data import synthetic
from o1_jax.models import LlamaConfig, LlamaForCausalLM, init_params


def save_tiny_hf(out, *, chat_template: str | None = None, **config) -> str:
    """A 2-layer, 32-wide GQA Llama (seed 0) with the synthetic word-level tokenizer, written to `out`
    as an HF folder without the O1 tokens (O1Embedder adds them); `config` overrides LlamaConfig keys."""
    tokenizer = synthetic.make_tokenizer()
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    cfg = LlamaConfig(**{**dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                initializer_range=0.2), **config})
    hf.save_pretrained(LlamaForCausalLM(cfg), init_params(cfg, jax.random.key(0)), out, tokenizer=tokenizer)
    return str(out)
