"""The Flax backbone against transformers (PyTorch CPU, float32) on random tiny configs."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from o1_jax import hf
from o1_jax.models import LlamaConfig, LlamaForCausalLM, init_params
from tests.tolerances import reorder_atol

VOCAB = 101


def _tiny(kind: str):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    if kind == "mha":
        return transformers.LlamaConfig(**{**common, "num_key_value_heads": 4})
    if kind == "gqa_tied":
        return transformers.LlamaConfig(**common, tie_word_embeddings=True)
    if kind == "mqa":
        return transformers.LlamaConfig(**{**common, "num_key_value_heads": 1})
    if kind == "llama3_rope":
        rope = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                    high_freq_factor=4.0, original_max_position_embeddings=8)
        return transformers.LlamaConfig(**{**common, "rope_parameters": rope})
    if kind == "attention_bias":
        return transformers.LlamaConfig(**common, attention_bias=True, mlp_bias=True)
    if kind == "qwen2_qkv_bias":
        return transformers.Qwen2Config(**common, tie_word_embeddings=True)
    if kind == "head_dim":
        return transformers.LlamaConfig(**common, head_dim=24)
    raise ValueError(kind)


KINDS = ["mha", "gqa_tied", "mqa", "llama3_rope", "attention_bias", "qwen2_qkv_bias", "head_dim"]


def _hf_model(hf_config, seed=0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
    # Random (not zero) biases, so the parity test sees them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def _left_padded_batch(rng, lengths, total):
    ids = rng.randint(0, VOCAB, (len(lengths), total))
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, total - n:] = 1
    return ids, mask


def _torch_logits(model, ids, mask):
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions))
    return out.logits.float().numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers(kind, tmp_path):
    torch_model = _hf_model(_tiny(kind))
    torch_model.save_pretrained(tmp_path)
    model, params = hf.load_pretrained(tmp_path)
    rng = np.random.RandomState(1)
    ids, mask = _left_padded_batch(rng, lengths=[13, 7, 1], total=13)
    ref = _torch_logits(torch_model, ids, mask)
    out = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits
    assert out.shape == (3, 13, VOCAB)
    diff = np.abs(np.asarray(out) - ref)[mask.astype(bool)]
    assert diff.max() <= 1e-4, f"{kind}: max |logit diff| {diff.max()}"


def test_left_and_right_padding_do_not_change_logits():
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    params = init_params(cfg, jax.random.key(0))
    seq = np.random.RandomState(0).randint(0, VOCAB, (1, 6))
    alone = np.asarray(model.apply({"params": params}, jnp.asarray(seq)).logits)[0]
    left = np.concatenate([np.zeros((1, 3), int), seq], axis=1)
    left_mask = np.concatenate([np.zeros((1, 3), int), np.ones((1, 6), int)], axis=1)
    right = np.concatenate([seq, np.zeros((1, 3), int)], axis=1)
    out_left = model.apply({"params": params}, jnp.asarray(left), attention_mask=jnp.asarray(left_mask)).logits
    out_right = model.apply({"params": params}, jnp.asarray(right), attention_mask=jnp.asarray(left_mask[:, ::-1]))
    np.testing.assert_allclose(np.asarray(out_left)[0, 3:], alone, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_right.logits)[0, :6], alone, atol=1e-5)
    assert np.isfinite(np.asarray(out_left)).all()


def test_hidden_states_without_lm_head():
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    params = init_params(cfg, jax.random.key(0))
    ids = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
    full = model.apply({"params": params}, ids)
    hidden_only = model.apply({"params": params}, ids, compute_logits=False)
    assert hidden_only.logits is None
    # The same ops on the same inputs: identical, not close.
    np.testing.assert_array_equal(np.asarray(hidden_only.last_hidden_state), np.asarray(full.last_hidden_state))
    last = full.last_hidden_state[:, -1]
    head = model.apply({"params": params}, last, method=LlamaForCausalLM.logits_from_hidden)
    # A [2, D] and a [2, 5, D] matmul may order the D-term sums differently.
    abs_sum = (np.abs(np.asarray(last)) @ np.abs(np.asarray(params["model"]["embed_tokens"]["embedding"])).T).max()
    np.testing.assert_allclose(np.asarray(head), np.asarray(full.logits[:, -1]), rtol=0,
                               atol=reorder_atol(cfg.hidden_size, abs_sum))
    # The LM head is not even traced when logits are not asked for.
    jaxpr = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, ids, compute_logits=False))(params))
    assert f"f32[2,5,{VOCAB}]" not in jaxpr
    assert f"f32[2,5,{VOCAB}]" in str(jax.make_jaxpr(lambda p: model.apply({"params": p}, ids))(params))


_REMAT_BASE = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2)


def _remat_loss(p, ids, cfg):
    logits = LlamaForCausalLM(cfg).apply({"params": p}, ids).logits
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])


_remat_value_and_grad = jax.jit(jax.value_and_grad(_remat_loss), static_argnums=2)


@functools.cache
def _remat_reference():
    """(params, ids, loss, grads) without rematerialisation, computed once for all policies."""
    params = init_params(_REMAT_BASE, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, VOCAB)
    return (params, ids, *_remat_value_and_grad(params, ids, _REMAT_BASE))


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_give_the_same_loss_and_gradients(policy):
    params, ids, ref_val, ref_grad = _remat_reference()
    val, grad = _remat_value_and_grad(params, ids, _REMAT_BASE.replace(remat_policy=policy))
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grad, ref_grad)


def test_bfloat16_compute_and_params(tmp_path):
    torch_model = _hf_model(_tiny("gqa_tied"))
    torch_model.save_pretrained(tmp_path)
    model32, params32 = hf.load_pretrained(tmp_path)
    model16, params16 = hf.load_pretrained(tmp_path, dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params16))
    ids = jnp.asarray(np.random.RandomState(0).randint(0, VOCAB, (2, 9)))
    out16 = model16.apply({"params": params16}, ids)
    out32 = model32.apply({"params": params32}, ids)
    assert out16.last_hidden_state.dtype == jnp.bfloat16
    assert out16.logits.dtype == jnp.float32  # the head's output is upcast for the loss
    np.testing.assert_allclose(np.asarray(out16.logits), np.asarray(out32.logits), atol=0.1)
    # float32 compute over bfloat16-stored weights also works (mixed precision storage).
    model_mixed, params_mixed = hf.load_pretrained(tmp_path, dtype="float32", param_dtype="bfloat16")
    out_mixed = model_mixed.apply({"params": params_mixed}, ids)
    assert out_mixed.last_hidden_state.dtype == jnp.float32


def test_config_round_trips_through_hf_dict():
    hf_config = _tiny("llama3_rope").to_dict()
    cfg = LlamaConfig.from_hf_dict(hf_config)
    assert cfg.rope_type == "llama3" and cfg.rope_original_max_position_embeddings == 8
    again = LlamaConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict())))
    assert again == cfg
    # The legacy layout (rope_theta + rope_scaling at top level) reads the same.
    legacy = dict(hf_config)
    rope = legacy.pop("rope_parameters")
    legacy["rope_theta"] = rope.pop("rope_theta")
    legacy["rope_scaling"] = rope
    assert LlamaConfig.from_hf_dict(legacy) == cfg


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="model_type='gpt2' is not a Llama-family model"):
        LlamaConfig.from_hf_dict({"model_type": "gpt2"}, source="x/config.json")
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        LlamaConfig(num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(ValueError, match="remat_policy"):
        LlamaConfig(remat_policy="sometimes")


def test_unscanned_layers_give_the_same_logits_and_cache():
    """`scan_layers=False` (decoding) with `unstack_layers` parameters is the same model."""
    from o1_jax.models.llama import init_cache, unstack_layers

    cfg = LlamaConfig.from_hf_dict(_tiny("gqa_tied").to_dict())
    params = init_params(cfg, jax.random.key(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 7)), jnp.int32)
    scanned = LlamaForCausalLM(cfg).apply({"params": params}, ids).logits
    flat_model = LlamaForCausalLM(cfg.replace(scan_layers=False))
    flat = unstack_layers(params)
    assert "layers" not in flat["model"] and f"layers_{cfg.num_hidden_layers - 1}" in flat["model"]
    np.testing.assert_allclose(flat_model.apply({"params": flat}, ids).logits, scanned, atol=1e-5)
    # With the per-layer cache: a prefill of 6 tokens, then the 7th through the cache, gives the
    # full forward's logits at the 7th position; the scanned layout refuses a cache.
    positions = jnp.broadcast_to(jnp.arange(7), (2, 7))
    key_mask = jnp.ones((2, 9), jnp.int32).at[:, 7:].set(0)
    cache = flat_model.apply({"params": flat}, ids[:, :6], position_ids=positions[:, :6], attention_mask=key_mask,
                             cache=init_cache(cfg, 2, 9)).cache
    assert len(cache["k"]) == cfg.num_hidden_layers and cache["k"][0].shape == (2, cfg.num_key_value_heads, 9, cfg.head_size)
    step = flat_model.apply({"params": flat}, ids[:, 6:], position_ids=positions[:, 6:], attention_mask=key_mask,
                            cache=cache, cache_index=6)
    np.testing.assert_allclose(step.logits[:, 0], scanned[:, 6], atol=1e-5)
    with pytest.raises(ValueError, match="scan_layers=False"):
        LlamaForCausalLM(cfg).apply({"params": params}, ids, position_ids=positions, cache=init_cache(cfg, 2, 9))
