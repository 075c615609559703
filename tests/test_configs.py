"""Every file in configs/ loads, with each variant it documents, and only known keys."""

import importlib.util
import pathlib

import ml_collections
import pytest

from o1_jax.defaults import train_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))
VARIANTS = {"demo.py": [None, "short"], "smollm2_scifact.py": [None, "lora"], "qwen25_7b_o1.py": [None, "h100x8"]}
# Built on o1_jax.defaults.train_config.
TRAINING = {"demo.py", "smollm2_scifact.py", "qwen25_7b_o1.py", "llama3_8b_o1.py", "llama32_1b_o1.py"}


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
