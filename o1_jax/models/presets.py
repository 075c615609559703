"""Published architectures by name, for planning and fresh training without the weights at hand.

Each entry is the model's Hugging Face `config.json` (the keys o1_jax reads) plus
`tokenizer_size`, the length of its tokenizer before the O1 special tokens are added.
`config.model.architecture` names one; when `model.init_from` is an existing folder, its
own config.json is used instead, so a preset never overrides real weights.
"""

from __future__ import annotations

from o1_jax.models.config import LlamaConfig

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

PRESETS: dict[str, dict] = {
    # Qwen/Qwen2.5-7B-Instruct: the original O1 Embedder backbone.
    "qwen2.5-7b": dict(
        model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=False, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=151645, tokenizer_size=151665),
    # meta-llama/Llama-3.1-8B-Instruct.
    "llama3.1-8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE, max_position_embeddings=131072, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128009, tokenizer_size=128256),
    # meta-llama/Llama-3.2-1B-Instruct: the 1B-class model of the GPU benchmark.
    "llama3.2-1b": dict(
        model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(_LLAMA3_ROPE, factor=32.0), max_position_embeddings=131072, tie_word_embeddings=True,
        bos_token_id=128000, eos_token_id=128009, tokenizer_size=128256),
    # HuggingFaceTB/SmolLM2-135M-Instruct (also shipped: `shipped:smollm2-135m-instruct`).
    "smollm2-135m": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
        max_position_embeddings=8192, tie_word_embeddings=True, head_dim=64, bos_token_id=1, eos_token_id=2,
        pad_token_id=2,
        tokenizer_size=49152),
}


def preset(name: str, **overrides) -> tuple[LlamaConfig, int]:
    """(model config, tokenizer size) of a named architecture."""
    if name not in PRESETS:
        raise ValueError(f"config.model.architecture={name!r}: unknown (expected one of {sorted(PRESETS)})")
    hf = dict(PRESETS[name])
    tokenizer_size = hf.pop("tokenizer_size")
    return LlamaConfig.from_hf_dict(hf, source=f"preset {name!r}", **overrides), tokenizer_size
