"""Model FLOPs of an O1 training step, counted from the architecture and the batch shapes.

XLA's cost analysis counts the body of a loop once, and the decoder layers run under
`nn.scan` (a loop), so it under-counts a step by about the number of layers. MFU and the
planner use this count instead: matmul FLOPs (2 per multiply-add) of the forward pass, the
backward pass's share, no rematerialisation (recomputed work is not model work).
"""

from __future__ import annotations

from o1_jax.models.config import LlamaConfig

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _projection_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, int]]:
    d, h = cfg.hidden_size, cfg.head_size
    q, kv, f = cfg.num_attention_heads * h, cfg.num_key_value_heads * h, cfg.intermediate_size
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def forward_flops(cfg: LlamaConfig, num_sequences: int, length: int) -> float:
    """Decoder forward over `num_sequences` x `length` tokens (no LM head), attention over all
    `length` keys (the causal half is not subtracted, as in the usual MFU convention)."""
    tokens = num_sequences * length
    per_token = sum(2 * i * o for i, o in _projection_shapes(cfg).values())
    if cfg.lora_rank:
        per_token += sum(2 * cfg.lora_rank * (i + o) for name, (i, o) in _projection_shapes(cfg).items()
                         if name in cfg.lora_targets)
    attention = 4 * cfg.num_attention_heads * cfg.head_size * length  # scores + weighted sum, per token
    return float(cfg.num_hidden_layers * tokens * (per_token + attention))


def train_step_flops(cfg: LlamaConfig, batch: int, group: int, query_len: int, doc_len: int,
                     gen_positions: int) -> float:
    """One step: queries and documents forward, the LM head at the thought positions, backward.

    Backward costs twice the forward when every weight is trained (gradients of activations and
    of weights) and about once the forward under LoRA (activation gradients; the adapters' own
    weight gradients are small and counted with the forward's adapter FLOPs)."""
    forward = forward_flops(cfg, batch, query_len) + forward_flops(cfg, batch * group, doc_len)
    forward += 2.0 * batch * gen_positions * cfg.hidden_size * cfg.vocab_size
    return forward * (2.0 if cfg.lora_rank else 3.0)
