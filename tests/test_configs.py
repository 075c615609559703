"""Every file in configs/ loads, with each variant it documents, and only known keys."""

import importlib.util
import pathlib

import ml_collections
import pytest

from o1_jax.defaults import train_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))
VARIANTS = {"demo.py": [None, "short"], "smollm2_scifact.py": [None, "lora"], "qwen25_7b_o1.py": [None, "h100x8", "h100x1"],
            "repro_smollm2.py": [None, "gpu"], "repro_smollm2_nothink.py": [None, "gpu"],
            "smollm2_multi.py": [None, "mixed"]}
# Built on o1_jax.defaults.train_config.
TRAINING = {"demo.py", "smollm2_scifact.py", "qwen25_7b_o1.py", "llama3_8b_o1.py", "llama32_1b_o1.py",
            "repro_smollm2.py", "repro_smollm2_nothink.py", "smollm2_multi.py"}


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(c, prefix=""):
    out = set()
    for k, v in c.items():
        out.add(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out |= _keys(v, prefix + k + ".")
    return out


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"demo.py", "smollm2_scifact.py"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    module = _load(path)
    defaults = _keys(train_config())
    for variant in VARIANTS.get(path.name, [None]):
        config = module.get_config(variant)
        assert isinstance(config, ml_collections.ConfigDict)
        if path.name in TRAINING:
            assert _keys(config) == defaults, f"{path.name}:{variant} adds or drops keys"


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        _load(next(p for p in CONFIGS if p.name == "demo.py")).get_config("huge")


def _flat(c, prefix=""):
    out = {}
    for k, v in c.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("variant", [None, "gpu"])
def test_repro_twins_differ_only_in_thinking(variant):
    """The no-think twin trains the same model on the same data for the same steps: only the thought goes."""
    joint = _flat(_load(CONFIGS[0].with_name("repro_smollm2.py")).get_config(variant))
    plain = _flat(_load(CONFIGS[0].with_name("repro_smollm2_nothink.py")).get_config(variant))
    differ = {k for k in joint if joint[k] != plain[k]}
    assert differ == {"data.thought_dropout", "data.max_thought_tokens", "loss.w_gen"}
    assert plain["data.thought_dropout"] == 1.0 and plain["loss.w_gen"] == 0.0
    assert joint["loss.w_gen"] == 0.2 and joint["loss.temperature"] == 0.02 and joint["data.thought_dropout"] == 0.1
