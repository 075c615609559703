"""The backbone's configuration: one frozen dataclass for Llama, Mistral and Qwen2.

The three architectures differ only by flags (q/k/v bias, sliding window), so
they share one model; `from_hf_dict` / `to_hf_dict` translate to and from a
Hugging Face `config.json`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# model_type -> (architecture class name, q/k/v bias by default)
SUPPORTED_MODEL_TYPES = {
    "llama": ("LlamaForCausalLM", False),
    "mistral": ("MistralForCausalLM", False),
    "qwen2": ("Qwen2ForCausalLM", True),
}

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product", "splash", "auto")  # o1_jax.models.attention
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    # RoPE scaling: None or "llama3" (Llama 3.1+); the llama3 fields are used only then.
    rope_type: str | None = None
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    attention_bias: bool = False  # bias on q, k, v and o (Llama's flag)
    qkv_bias: bool = False  # bias on q, k, v only (Qwen2)
    mlp_bias: bool = False
    sliding_window: int | None = None  # Mistral; None = full causal attention
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    # Compute and parameter dtypes: "float32" | "bfloat16" | "float16".
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"  # one of REMAT_POLICIES
    attention: str = "xla"  # one of o1_jax.models.attention.IMPLEMENTATIONS; how, not what: never stored
    # Layers under nn.scan (stacked weights, one compiled layer: training, long inputs), or one
    # module per layer (`layers_0`, ...: decoding, where slicing stacked weights every token costs).
    scan_layers: bool = True
    # LoRA adapters on the named projections (q_proj, k_proj, v_proj, o_proj, gate_proj,
    # up_proj, down_proj); rank 0 = none. Not part of the HF config: export merges them.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ()

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r}: expected one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPES:
                raise ValueError(f"{key}={getattr(self, key)!r}: expected one of {tuple(DTYPES)}")
        if self.rope_type not in (None, "default", "llama3"):
            raise ValueError(f"rope_type={self.rope_type!r}: only default RoPE and 'llama3' scaling are supported")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type={self.model_type!r}: expected one of {tuple(SUPPORTED_MODEL_TYPES)}")
        unknown = set(self.lora_targets) - set(LORA_TARGETS)
        if unknown:
            raise ValueError(f"lora_targets has {sorted(unknown)}: expected names from {LORA_TARGETS}")
        if self.lora_rank < 0 or (self.lora_rank and not self.lora_targets):
            raise ValueError(f"lora_rank={self.lora_rank} needs lora_targets (and must not be negative)")

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **changes) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "LlamaConfig":
        """Reads a Hugging Face config dict; `source` names it in errors."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{source}: model_type={model_type!r} is not a Llama-family model "
                f"(expected one of {sorted(SUPPORTED_MODEL_TYPES)})"
            )
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if not isinstance(hf.get(key), int):
                raise ValueError(f"{source}: key {key!r} is missing or not an integer")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act={hf['hidden_act']!r}, expected 'silu'")
        # transformers 5 nests rope settings in `rope_parameters`; older files use rope_theta + rope_scaling.
        rope = dict(hf.get("rope_scaling") or {})
        rope.update(hf.get("rope_parameters") or {})
        rope_type = rope.get("rope_type", rope.get("type"))
        if rope_type not in (None, "default", "llama3"):
            raise ValueError(f"{source}: rope type {rope_type!r} is not supported (expected default or 'llama3')")
        sliding = hf.get("sliding_window") if hf.get("use_sliding_window", model_type == "mistral") else None
        eos = hf.get("eos_token_id")
        kwargs = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            rope_type="llama3" if rope_type == "llama3" else None,
            attention_bias=bool(hf.get("attention_bias", False)),
            qkv_bias=SUPPORTED_MODEL_TYPES[model_type][1],
            mlp_bias=bool(hf.get("mlp_bias", False)),
            sliding_window=sliding,
            model_type=model_type,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"),
            initializer_range=hf.get("initializer_range", 0.02),
        )
        if rope_type == "llama3":
            kwargs.update(
                rope_factor=float(rope["factor"]),
                rope_low_freq_factor=float(rope["low_freq_factor"]),
                rope_high_freq_factor=float(rope["high_freq_factor"]),
                rope_original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict that transformers loads as the matching *ForCausalLM."""
        architecture, _ = SUPPORTED_MODEL_TYPES[self.model_type]
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_type == "llama3":
            rope.update(
                rope_type="llama3",
                factor=self.rope_factor,
                low_freq_factor=self.rope_low_freq_factor,
                high_freq_factor=self.rope_high_freq_factor,
                original_max_position_embeddings=self.rope_original_max_position_embeddings,
            )
        hf = {
            "architectures": [architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_size,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_parameters": rope,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": self.param_dtype,
            "use_cache": True,
        }
        if self.model_type == "qwen2":
            hf["use_sliding_window"] = False
        else:
            hf["attention_bias"] = self.attention_bias
            hf["mlp_bias"] = self.mlp_bias
        if self.model_type == "mistral":
            hf["sliding_window"] = self.sliding_window
        return hf
