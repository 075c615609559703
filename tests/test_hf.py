"""HF import/export: round trips, sharded files, placement on a mesh, bad input, real SmolLM2 weights."""

import json
import os
import stat

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from o1_jax import hf
from o1_jax.hf.safetensors_io import INDEX_FILE, SafetensorsFile, write_checkpoint
from o1_jax.models import abstract_params
from o1_jax.sharding import logical_to_shardings, make_mesh


def _tiny_llama(tmp_path, tie=False, shard_size=None, dtype=torch.float32):
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(tmp_path / "hf", **kwargs)
    return model, tmp_path / "hf"


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_hf_to_o1_to_hf_is_exact(tmp_path, tie):
    torch_model, folder = _tiny_llama(tmp_path, tie=tie)
    model, params = hf.load_pretrained(folder)
    out = hf.save_pretrained(model, params, tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    again, info = reloaded
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref = torch_model.state_dict()
    got = again.state_dict()
    assert set(ref) == set(got)
    for name, tensor in ref.items():
        assert torch.equal(tensor, got[name]), name
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] == tie


def test_sharded_bfloat16_checkpoint_loads_and_writes_sharded(tmp_path):
    torch_model, folder = _tiny_llama(tmp_path, shard_size="100KB", dtype=torch.bfloat16)
    assert (folder / INDEX_FILE).is_file()
    model, params = hf.load_pretrained(folder, dtype="bfloat16")
    emb = np.asarray(params["model"]["embed_tokens"]["embedding"].astype(jnp.float32))
    np.testing.assert_array_equal(emb, torch_model.model.embed_tokens.weight.detach().float().numpy())
    out = hf.save_pretrained(model, params, tmp_path / "out", max_shard_size="100KB")
    assert (out / INDEX_FILE).is_file()
    again = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    for name, tensor in torch_model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_load_places_tensors_on_a_mesh(tmp_path):
    _, folder = _tiny_llama(tmp_path)
    cfg = hf.read_config(folder)
    mesh = make_mesh((1, 2, 4))
    shardings = logical_to_shardings(abstract_params(cfg), mesh)
    model, sharded = hf.load_pretrained(folder, shardings=shardings)
    _, plain = hf.load_pretrained(folder)
    q = sharded["model"]["layers"]["self_attn"]["q_proj"]["kernel"]  # [L, embed, q_heads]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len({s.device for s in q.addressable_shards}) == 8
    assert q.addressable_shards[0].data.shape == (2, 32, 16)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), sharded, plain)
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
    with jax.set_mesh(mesh):
        logits = jax.jit(lambda p: model.apply({"params": p}, ids).logits)(sharded)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model.apply({"params": plain}, ids).logits), atol=1e-5)


def test_save_refuses_a_non_empty_folder_and_leaves_no_partial_output(tmp_path):
    _, folder = _tiny_llama(tmp_path)
    model, params = hf.load_pretrained(folder)
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        hf.save_pretrained(model, params, target)
    assert (target / "keep.txt").read_text() == "mine"
    broken = dict(params, model=dict(params["model"], norm={"weight": jnp.ones((3,))}))
    with pytest.raises(ValueError, match=r"parameter model/norm/weight has shape \(3,\), expected \(64,\)"):
        hf.save_pretrained(model, broken, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_saved_folder_has_the_permissions_of_a_new_folder(tmp_path):
    # Under umask 022 a folder from mkdir is 0755 and one from mkdtemp 0700, so the check can fail.
    _, folder = _tiny_llama(tmp_path)
    model, params = hf.load_pretrained(folder)
    before = os.umask(0o022)
    try:
        os.mkdir(tmp_path / "made")
        out = hf.save_pretrained(model, params, tmp_path / "out")
    finally:
        os.umask(before)
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o755
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load_pretrained(tmp_path)


def test_non_llama_config_is_a_clear_error(tmp_path):
    transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"config.json: model_type='gpt2' is not a Llama-family model"):
        hf.load_pretrained(tmp_path)


def test_missing_tensor_is_a_clear_error(tmp_path):
    _, folder = _tiny_llama(tmp_path)
    st = SafetensorsFile(folder / "model.safetensors")
    keep = [k for k in st.keys() if k != "model.layers.1.mlp.up_proj.weight"]
    specs = [(k, st.shape(k), st.get(k).dtype, (lambda k=k: st.get(k))) for k in keep]
    (tmp_path / "broken").mkdir()
    write_checkpoint(tmp_path / "broken", specs, max_shard_bytes=10**9)
    (tmp_path / "broken" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ValueError, match=r"tensor 'model.layers.1.mlp.up_proj.weight' is missing"):
        hf.load_pretrained(tmp_path / "broken")


def test_wrong_shape_is_a_clear_error(tmp_path):
    _, folder = _tiny_llama(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 100
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"down_proj.weight. has shape \(64, 128\), expected \(64, 100\) from config.json"):
        hf.load_pretrained(folder)


SENTENCES = [
    "The capital of France is",
    "Dense retrieval models embed queries and documents into one vector space, so that",
    "Hello!",
    "In 1905 Albert Einstein published four papers that changed physics; the first explained",
]


def test_smollm2_logits_match_transformers(smollm2_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(SENTENCES, return_tensors="np", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        ref = torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                          position_ids=torch.tensor(positions)).logits.numpy()
    model, params = hf.load_pretrained(smollm2_path)
    cfg = model.cfg
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    assert cfg.tie_word_embeddings and cfg.vocab_size == 49152
    logits = np.asarray(jax.jit(lambda p, i, m: model.apply({"params": p}, i, attention_mask=m).logits)(
        params, ids, mask))
    diff = np.abs(logits - ref)[mask.astype(bool)]
    assert diff.max() <= 1e-3, f"max |logit diff| {diff.max()}"
    np.testing.assert_array_equal(logits[:, -1].argmax(-1), ref[:, -1].argmax(-1))


def test_lora_model_exports_merged_with_equal_logits(tmp_path):
    torch_model, folder = _tiny_llama(tmp_path)
    targets = ("q_proj", "v_proj", "down_proj")
    model, params = hf.load_pretrained(folder, lora_rank=4, lora_alpha=8.0, lora_targets=targets)
    # Fill the (zero-initialised) adapters: the model must now differ from the base.
    base_model, base_params = hf.load_pretrained(folder)
    init = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    layers = init["model"]["layers"]
    for group, name in (("self_attn", "q_proj"), ("self_attn", "v_proj"), ("mlp", "down_proj")):
        a = layers[group][name]["lora_a"]
        params["model"]["layers"][group][name]["lora_a"] = a
        params["model"]["layers"][group][name]["lora_b"] = 0.05 * jax.random.normal(
            jax.random.key(1), layers[group][name]["lora_b"].shape)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 96, (2, 9)))
    ours = np.asarray(model.apply({"params": params}, ids).logits)
    base = np.asarray(base_model.apply({"params": base_params}, ids).logits)
    assert np.abs(ours - base).max() > 1e-2
    out = hf.save_pretrained(model, params, tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ref = merged(torch.tensor(np.asarray(ids))).logits.numpy()
    assert np.abs(ours - ref).max() <= 1e-4
    assert "lora" not in (out / "config.json").read_text()
