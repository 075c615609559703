"""KV-cache generation and one-pass think+embed, against plain full forwards and transformers."""

import jax
import numpy as np
import pytest
import torch
import transformers

from o1_jax import hf
from o1_jax.inference.generate import Sampling, _compiled, generate
from o1_jax.losses import l2_normalize
from o1_jax.models import LlamaConfig, LlamaForCausalLM, init_params

VOCAB, EOS, PAD, EMB = 13, 1, 0, 12


_CFG = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)


@pytest.fixture(scope="module")
def tiny():
    return LlamaForCausalLM(_CFG), init_params(_CFG, jax.random.key(3))


def _prompts(rng, lengths, width):
    ids = np.full((len(lengths), width), PAD, np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = rng.randint(2, EMB, n)
        mask[i, width - n:] = 1
    return ids, mask


def _unpadded(ids, mask, row):
    return [int(t) for t, m in zip(ids[row], mask[row]) if m]


WIDTH = 24


@jax.jit
def _forward(params, ids, mask):
    return LlamaForCausalLM(_CFG).apply({"params": params}, ids, attention_mask=mask)


def _full_hidden_last(model, params, seq):
    """A plain full forward of one unpadded sequence (left-padded to a fixed width: one compile)."""
    ids = np.full((1, WIDTH), PAD, np.int32)
    mask = np.zeros_like(ids)
    ids[0, WIDTH - len(seq):] = seq
    mask[0, WIDTH - len(seq):] = 1
    return _forward(params, ids, mask)


def test_greedy_equals_a_loop_of_full_forwards(tiny):
    model, params = tiny
    ids, mask = _prompts(np.random.RandomState(0), [5, 2, 8], 8)
    out = generate(model, params, ids, mask, jax.random.key(0), Sampling(max_new_tokens=10),
                   eos_id=EOS, pad_id=PAD)
    tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    for row in range(3):
        seq = _unpadded(ids, mask, row)
        expected = []
        for _ in range(10):
            nxt = int(np.argmax(np.asarray(_full_hidden_last(model, params, seq).logits)[0, -1]))
            if nxt == EOS:
                break
            expected.append(nxt)
            seq.append(nxt)
        assert lengths[row] == len(expected)
        assert tokens[row, : len(expected)].tolist() == expected
        if len(expected) < 10:
            assert tokens[row, len(expected)] == EOS and (tokens[row, len(expected) + 1:] == PAD).all()


def test_one_pass_embedding_equals_a_full_forward(tiny):
    model, params = tiny
    ids, mask = _prompts(np.random.RandomState(1), [6, 3, 7, 1], 8)
    out = generate(model, params, ids, mask, jax.random.key(7), Sampling(max_new_tokens=12, temperature=1.5),
                   eos_id=EOS, pad_id=PAD, emb_id=EMB)
    tokens, lengths, emb = np.asarray(out["tokens"]), np.asarray(out["lengths"]), np.asarray(out["embeddings"])
    assert len(set(lengths.tolist())) > 1, "rows should stop at different steps for this test to mean much"
    for row in range(4):
        seq = _unpadded(ids, mask, row) + tokens[row, : lengths[row]].tolist() + [EOS, EMB]
        hidden = _full_hidden_last(model, params, seq).last_hidden_state[:, -1]
        np.testing.assert_allclose(emb[row], np.asarray(l2_normalize(hidden))[0], atol=1e-4)


def test_top_p_near_zero_is_greedy_and_sampling_is_seeded(tiny):
    model, params = tiny
    ids, mask = _prompts(np.random.RandomState(2), [4, 4], 4)
    greedy = generate(model, params, ids, mask, jax.random.key(0), Sampling(8), eos_id=EOS, pad_id=PAD)
    nucleus = generate(model, params, ids, mask, jax.random.key(5), Sampling(8, temperature=1.0, top_p=1e-6),
                       eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(greedy["tokens"], nucleus["tokens"])
    a = generate(model, params, ids, mask, jax.random.key(1), Sampling(8, temperature=2.0), eos_id=EOS, pad_id=PAD)
    b = generate(model, params, ids, mask, jax.random.key(1), Sampling(8, temperature=2.0), eos_id=EOS, pad_id=PAD)
    c = generate(model, params, ids, mask, jax.random.key(2), Sampling(8, temperature=2.0), eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert not np.array_equal(a["tokens"], c["tokens"])


def test_same_shapes_compile_once(tiny):
    model, params = tiny
    sampling = Sampling(max_new_tokens=5)
    fn = _compiled(model, sampling, False, 1)
    for seed in range(3):
        ids, mask = _prompts(np.random.RandomState(seed), [3, 5], 6)
        generate(model, params, ids, mask, jax.random.key(seed), sampling, eos_id=EOS, pad_id=PAD)
    assert fn._cache_size() == 1


def test_bad_sampling_settings_are_clear_errors():
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        Sampling(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p=1.5"):
        Sampling(top_p=1.5)


def test_smollm2_greedy_matches_transformers_generate(smollm2_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_path)
    tokenizer.padding_side = "left"
    prompts = ["The capital of France is", "Dense retrieval is a method that"]
    batch = tokenizer(prompts, return_tensors="np", padding=True)
    model, params = hf.load_pretrained(smollm2_path)
    out = generate(model, params, batch["input_ids"], batch["attention_mask"], jax.random.key(0),
                   Sampling(max_new_tokens=8), eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = torch_model.generate(torch.tensor(batch["input_ids"]), attention_mask=torch.tensor(batch["attention_mask"]),
                                   max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    ref = ref[:, batch["input_ids"].shape[1]:].numpy()
    ours = np.asarray(out["tokens"])
    for row in range(2):
        n = int(out["lengths"][row])
        assert ours[row, :n].tolist() == ref[row, :n].tolist()


def test_samples_share_one_prefill_and_match_repeated_prompts(tiny):
    model, params = tiny
    ids, mask = _prompts(np.random.RandomState(4), [3, 6], 6)
    sampling = Sampling(max_new_tokens=6, temperature=1.0)
    shared = generate(model, params, ids, mask, jax.random.key(9), sampling, eos_id=EOS, pad_id=PAD,
                      emb_id=EMB, num_samples=3)
    repeated = generate(model, params, np.repeat(ids, 3, 0), np.repeat(mask, 3, 0), jax.random.key(9), sampling,
                        eos_id=EOS, pad_id=PAD, emb_id=EMB)
    np.testing.assert_array_equal(shared["tokens"], repeated["tokens"])
    np.testing.assert_allclose(shared["embeddings"], repeated["embeddings"], atol=1e-5)
    assert len({tuple(r) for r in np.asarray(shared["tokens"])[:3]}) > 1  # the samples differ


def test_nucleus_sampling_draws_only_from_the_nucleus_and_falls_back_to_a_full_sort():
    import jax.numpy as jnp

    from o1_jax.inference.generate import NUCLEUS_CANDIDATES, sample_token

    sampling = Sampling(4, temperature=1.0, top_p=0.9)
    # A peaked row: the nucleus (smallest prefix reaching 0.9) is the three best tokens.
    logits = np.full((1, 1000), -10.0, np.float32)
    logits[0, [7, 500, 999]] = [3.0, 2.5, 2.0]
    probs = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
    order = np.argsort(-probs)
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), 0.9)) + 1].tolist())
    assert nucleus == {7, 500, 999}
    draws = jax.vmap(lambda r: sample_token(jnp.asarray(logits), r, sampling))(jax.random.split(jax.random.key(0), 300))
    assert set(np.asarray(draws).ravel().tolist()) == nucleus
    # A flat row: the nucleus (900 tokens) is wider than the top-k candidates, so the full sort decides.
    flat = jnp.zeros((400, 1000), jnp.float32)
    draws = np.asarray(sample_token(flat, jax.random.key(1), sampling))
    assert draws.max() >= NUCLEUS_CANDIDATES and draws.max() < 1000


def test_generation_with_lora_adapters_equals_step_by_step_argmax():
    """Decoding unstacks the layers of a LoRA model too (adapters kept, not merged)."""
    import jax.numpy as jnp


    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, lora_rank=4, lora_targets=("q_proj", "up_proj"))
    params = jax.tree_util.tree_map_with_path(  # non-zero adapters, so they change the logits
        lambda path, x: x + 0.3 if "lora_b" in jax.tree_util.keystr(path) else x, init_params(cfg, jax.random.key(0)))
    model = LlamaForCausalLM(cfg)
    ids = jnp.asarray([[5, 6, 7, 8]], jnp.int32)
    out = generate(model, params, ids, jnp.ones_like(ids), jax.random.key(0), Sampling(max_new_tokens=5),
                   eos_id=-1, pad_id=0)["tokens"]
    seq = ids
    for _ in range(5):
        seq = jnp.concatenate([seq, jnp.argmax(model.apply({"params": params}, seq).logits[:, -1], -1)[:, None]], 1)
    np.testing.assert_array_equal(out, seq[:, 4:])
