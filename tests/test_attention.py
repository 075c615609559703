"""Attention implementations (o1_jax/models/attention.py) against the einsum reference: outputs and
gradients of random tiny models with left padding, GQA / MQA and a sliding window, float32."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o1_jax import sharding
from o1_jax.inference.generate import Sampling, generate
from o1_jax.models import LlamaConfig, LlamaForCausalLM, attention, init_params
from o1_jax.models.config import ATTENTION_IMPLEMENTATIONS
from tolerances import reorder_atol

CASES = {  # name: (kv heads, sliding window)
    "gqa": (2, None),
    "mqa": (1, None),
    "mha_sliding_window": (4, 5),
}


def _model(impl, kv, window):
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv, sliding_window=window, max_position_embeddings=64, attention=impl)
    return LlamaForCausalLM(cfg)


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 64, (3, 13)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :9] = 0
    return jnp.asarray(ids), jnp.asarray(mask)


def _hidden_and_grads(impl, kv, window, params):
    model = _model(impl, kv, window)
    ids, mask = _inputs()

    def loss(p):  # only real rows count: padding queries' rows are nobody's output
        hidden = model.apply({"params": p}, ids, attention_mask=mask, compute_logits=False).last_hidden_state
        return jnp.sum(jnp.where(mask[..., None] == 1, hidden, 0.0) ** 2), hidden

    (_, hidden), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return np.asarray(hidden)[np.asarray(mask) == 1], grads


@pytest.mark.parametrize("impl", ["dot_product", "splash"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_implementation_matches_the_einsum(impl, case):
    kv, window = CASES[case]
    params = init_params(_model("xla", kv, window).cfg, jax.random.key(1))
    ref_h, ref_g = _hidden_and_grads("xla", kv, window, params)
    got_h, got_g = _hidden_and_grads(impl, kv, window, params)
    # Per layer a score is a 8-term dot product and an output a <= 13-term weighted sum; the two
    # implementations sum them in their own orders (splash also in blocks with an online softmax),
    # each within n * u * sum|x| (tests/tolerances.py), carried through 2 layers and the MLPs.
    atol = reorder_atol(2 * (8 + 13 + 64), float(np.abs(ref_h).max()))
    np.testing.assert_allclose(got_h, ref_h, rtol=0, atol=atol)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref_g), jax.tree_util.tree_leaves(got_g)):
        scale = float(jnp.abs(a).max())
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0,
                                   atol=reorder_atol(2 * 39 * (8 + 13 + 64), scale), err_msg=jax.tree_util.keystr(path))


def test_auto_resolves_by_backend_and_bad_names_are_one_sentence():
    assert attention.resolve("auto", "cpu") == "xla"
    assert attention.resolve("auto", "gpu") == "dot_product"
    assert attention.resolve("auto", "tpu") == "xla"  # splash is opt-in (see attention.py)
    assert attention.resolve("auto") == "xla"  # this suite runs on CPU
    for name in ("xla", "dot_product", "splash"):
        assert attention.resolve(name, "gpu") == name
    assert set(ATTENTION_IMPLEMENTATIONS) == {"xla", "dot_product", "splash", "auto"}
    # dot_product asks for cuDNN only where it exists and takes the dtype (jax's own default is XLA)
    assert attention.dot_product_backend("gpu", jnp.bfloat16) == "cudnn"
    assert attention.dot_product_backend("gpu", jnp.float16) == "cudnn"
    assert attention.dot_product_backend("gpu", jnp.float32) == "xla"
    assert attention.dot_product_backend("cpu", jnp.bfloat16) == "xla"
    with pytest.raises(ValueError, match=r"^attention='flash': expected one of \('xla', 'dot_product', 'splash', 'auto'\)$"):
        LlamaConfig(attention="flash")


def test_kv_cache_decoding_keeps_the_einsum(monkeypatch):
    """Generation (prefill and every decode step use the cache) never calls the configured kernel,
    while the same model's cache-free forward does; the tokens are the einsum model's."""
    calls = []
    real = attention.dot_product_attention
    monkeypatch.setattr(attention, "dot_product_attention", lambda *a: calls.append(1) or real(*a))
    params = init_params(_model("xla", 2, None).cfg, jax.random.key(2))
    ids, mask = _inputs()
    outs = [generate(_model(impl, 2, None), params, ids, mask, jax.random.key(0), Sampling(max_new_tokens=4),
                     eos_id=-1, pad_id=0)["tokens"] for impl in ("xla", "dot_product")]
    assert calls == []
    np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(outs[1]))
    _model("dot_product", 2, None).apply({"params": params}, ids, attention_mask=mask, compute_logits=False)
    assert calls == [1, 1]  # one call per layer


@pytest.mark.parametrize("impl", ["dot_product", "splash"])
def test_bfloat16_matches_the_einsum_within_bfloat16_rounding(impl):
    kv, window = CASES["gqa"]
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv, max_position_embeddings=64, dtype="bfloat16")
    params = init_params(cfg, jax.random.key(3))
    ids, mask = _inputs()
    real = np.asarray(mask) == 1
    out = {name: np.asarray(LlamaForCausalLM(dataclasses.replace(cfg, attention=name)).apply(
        {"params": params}, ids, attention_mask=mask, compute_logits=False).last_hidden_state, np.float32)[real]
        for name in ("xla", impl)}
    # Both round probabilities / outputs to bfloat16 (8 significant bits, u = 2**-8) at different
    # points; a few roundings per layer over 2 layers: 8 u of the largest hidden value bounds it.
    np.testing.assert_allclose(out[impl], out["xla"], rtol=0, atol=8 * 2**-8 * float(np.abs(out["xla"]).max()))


def test_splash_runs_per_device_under_a_sharded_mesh():
    """On a (data 2, fsdp 1, tensor 2) mesh with the training rules in context, splash runs under
    shard_map (each device its batch rows and kv head) and matches the einsum there."""
    mesh = sharding.make_mesh((2, 1, 2), jax.devices()[:4])
    kv, window = CASES["gqa"]
    params = init_params(_model("xla", kv, window).cfg, jax.random.key(4))
    ids, mask = _inputs()
    ids, mask = jnp.concatenate([ids, ids[:1]]), jnp.concatenate([mask, mask[2:3]])  # 4 rows: 2 per data shard
    real = np.asarray(mask) == 1
    out, specs = {}, []
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        assert attention.target_platform() == "cpu"
        specs.append(sharding.context_spec(("activation_batch", "kv_heads", None, None), (4, kv, 13, 8)))
        for impl in ("xla", "splash"):
            fn = jax.jit(lambda p, i, m, impl=impl: _model(impl, kv, window).apply(
                {"params": p}, i, attention_mask=m, compute_logits=False).last_hidden_state)
            out[impl] = np.asarray(fn(params, ids, mask))[real]
    assert specs == [jax.sharding.PartitionSpec(("data", "fsdp"), "tensor", None, None)]
    atol = reorder_atol(2 * (8 + 13 + 64), float(np.abs(out["xla"]).max()))  # as in the single-device test
    np.testing.assert_allclose(out["splash"], out["xla"], rtol=0, atol=atol)
    assert sharding.context_spec(("activation_batch",), (4,)) is None  # outside a mesh: no shard_map
