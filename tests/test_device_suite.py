"""benchmarks/device_suite.py: its `--cpu` run has every case, and each figure is what it says it is
(FLOPs recomputed here, tokens/s from the real tokens, no MFU without a known peak, dot_product
within float32 reordering of the einsum); its synthetic batch has `collate_train`'s layout."""

import importlib.util
import inspect
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from o1_jax import flops
from o1_jax.data import formatting
from o1_jax.models import presets
from o1_jax.training import step as step_lib
from tolerances import reorder_atol

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "device_suite.py"
PRESETS = ("llama3.2-1b", "smollm2-135m")
CPU_ATTENTIONS = ("xla", "dot_product")


def _suite_module():
    if str(SUITE.parent) not in sys.path:  # as when run as a script: benchmarks/machine.py beside it
        sys.path.insert(0, str(SUITE.parent))
    spec = importlib.util.spec_from_file_location("device_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return _suite_module()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(the JSON, stdout) of one `--cpu` run: about 30 s on 2 cores."""
    out = tmp_path_factory.mktemp("device_suite") / "suite.json"
    proc = subprocess.run([sys.executable, str(SUITE), "--cpu", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def _ok_rows(result, key):
    return [r for r in result[key] if r["status"] == "ok"]


def test_every_case_is_there(run):
    result, _ = run
    gc_expected = "ok" if "grad_cache_chunks" in inspect.signature(step_lib.make_train_step).parameters \
        else "unavailable"
    assert result["grad_cache_available"] == (gc_expected == "ok")
    assert result["attentions"] == list(CPU_ATTENTIONS)  # no splash off TPU; auto is only an alias
    rows = {(r["preset"], r["attention"], r["grad_cache"]): r for r in result["train"]}
    assert len(rows) == len(result["train"]) == 2 * 2 * 2
    for name in PRESETS:
        for attention in CPU_ATTENTIONS:
            assert rows[(name, attention, "off")]["status"] == "ok", rows[(name, attention, "off")]
            assert rows[(name, attention, "on")]["status"] == gc_expected, rows[(name, attention, "on")]
            if gc_expected == "ok":
                assert rows[(name, attention, "on")]["grad_cache_chunks"] > 1
    for key in ("attention_diff", "generate"):
        assert [r["preset"] for r in result[key]] == list(PRESETS)
        assert all(r["status"] == "ok" for r in result[key]), result[key]


def test_train_figures(run):
    result, _ = run
    for row in _ok_rows(result, "train"):
        p = result["presets"][row["preset"]]
        sizes, shapes = p["sizes"], row["shapes"]
        tq, kg, td = formatting.sequence_lengths(sizes["max_query"], sizes["max_thought"], sizes["max_doc"])
        assert shapes == dict(batch=sizes["batch"], group=sizes["group"], query_len=tq, doc_len=td, gen_positions=kg)
        assert all(math.isfinite(t) and t > 0 for t in row["step_times_s"]) and len(row["step_times_s"]) == 2
        assert row["step_s"] == pytest.approx(float(np.median(row["step_times_s"])))
        assert 0 < row["real_tokens"] <= row["padded_tokens"] == sizes["batch"] * (tq + sizes["group"] * td)
        assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["real_tokens"] / row["step_s"])
        cfg, _ = presets.preset(row["preset"], **p["overrides"][row["attention"]])
        assert cfg.attention == row["attention"] and cfg.num_hidden_layers == 2  # the CPU shrink
        expected = flops.train_step_flops(cfg, sizes["batch"], sizes["group"], tq, td, kg)
        assert row["flops"] == pytest.approx(expected, rel=1e-12) and expected > 0
        assert row["mfu"] is None  # no peak on a CPU
        assert row["finite"] and math.isfinite(row["loss_first"]) and row["loss_first"] > 0


def test_dot_product_matches_the_einsum(run):
    result, _ = run
    for row in result["attention_diff"]:
        cfg, _ = presets.preset(row["preset"], **result["presets"][row["preset"]]["overrides"]["xla"])
        assert row["dtype"] == cfg.dtype == "float32"
        assert math.isfinite(row["max_abs_diff"]) and 0 < row["max_abs_hidden"] < 100
        # Per layer: a score is a head_size-term dot product, an output a T-term weighted sum, the
        # projections hidden_size- and intermediate_size-term sums, each summed in its own order by
        # the two implementations (tests/tolerances.py), carried through the layers. A wrong mask or
        # scale changes hidden states by O(1), far above this (about 5e-5 of the largest value).
        sizes = result["presets"][row["preset"]]["sizes"]
        tq, _, td = formatting.sequence_lengths(sizes["max_query"], sizes["max_thought"], sizes["max_doc"])
        t = max(tq, td)
        n = cfg.num_hidden_layers * (cfg.head_size + t + cfg.hidden_size + cfg.intermediate_size)
        assert row["max_abs_diff"] <= reorder_atol(n, row["max_abs_hidden"]), row


def test_generation_and_machine(run):
    result, stdout = run
    for row in result["generate"]:
        sizes = result["presets"][row["preset"]]["sizes"]
        assert row["generated_tokens"] == sizes["gen_rows"] * sizes["gen_new"] == row["rows"] * row["new_tokens"]
        assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0
    assert result["device_kind"] == "cpu" and result["peak_bf16_flops"] is None and result["mode"] == "cpu"
    assert f"device kind: cpu | backend cpu | jax {result['jax_version']}" in stdout
    assert "| MFU |" in stdout and "| n/a |" in stdout
    assert not {"transformers", "torch", "scann", "tensorflow"} & set(result["third_party_modules"])


def test_synthetic_batch_has_the_collate_layout(suite):
    cfg, _ = presets.preset("smollm2-135m", **suite.cpu_shrink("smollm2-135m"))
    tok = suite.token_ids(cfg)
    assert max(tok.specials) < cfg.vocab_size and tok.eos < tok.text_limit and len(set(tok.specials)) == 4
    b, g, mq, mt, md = 3, 4, 5, 6, 7
    batch = suite.synthetic_batch(np.random.default_rng(1), tok, b, g, mq, mt, md)
    shapes = formatting.train_batch_shapes(b, g, mq, mt, md)
    assert set(batch) == set(shapes)
    for key, (shape, dtype) in shapes.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    for ids, mask in ((batch["query_ids"], batch["query_mask"]), (batch["doc_ids"], batch["doc_mask"])):
        assert (ids[:, -1] == tok.emb).all()  # <emb> last in every row
        assert (np.diff(mask, axis=1) >= 0).all() and (mask[:, -1] == 1).all()  # left padding
        assert (ids[mask == 0] == tok.pad).all()
    for i in range(b):
        k = int(batch["gen_weights"][i].sum())
        pos = batch["gen_positions"][i, :k]
        assert k >= 2 and (batch["gen_weights"][i, k:] == 0).all()
        assert batch["query_ids"][i, pos[0]] == tok.thought  # <thought> predicts the first thought token
        np.testing.assert_array_equal(batch["gen_targets"][i, :k], batch["query_ids"][i, pos + 1])
        assert batch["gen_targets"][i, k - 1] == tok.eos and pos[-1] + 2 == batch["query_ids"].shape[1] - 1


def test_peaks_and_backends(suite):
    assert suite.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert suite.peak_bf16_flops("NVIDIA H200") == 989.4e12
    assert suite.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert suite.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    for unknown in ("NVIDIA H100 NVL", "NVIDIA L4", "cpu", "TPU v5 lite"):
        assert suite.peak_bf16_flops(unknown) is None, unknown
    assert suite.backend_attentions("gpu") == suite.backend_attentions("cpu") == ["xla", "dot_product"]
    assert suite.backend_attentions("tpu") == ["xla", "dot_product", "splash"]


def test_budget_skips_and_survives_errors(suite):
    assert suite.Budget(0).run("train", lambda: {"status": "ok"})["status"] == "skipped"
    budget = suite.Budget(1e6)
    failed = budget.run("train", lambda: 1 / 0)
    assert failed["status"] == "error" and failed["note"].startswith("ZeroDivisionError")
    assert budget.run("train", lambda: {"status": "ok"})["status"] == "ok"


def test_grad_cache_rows_without_the_keyword_are_unavailable(suite):
    """Before `make_train_step` takes grad_cache_chunks, its rows say so (and nothing compiles)."""
    p = suite.Preset("smollm2-135m", suite.SIZES["cpu"]["smollm2-135m"], cfg=None, tok=None, batch=None, params=None)
    result = {"train": []}
    suite.train_rows(p, 2, ["xla", "dot_product"], False, None, suite.Budget(1e6), None, result)
    assert [(r["attention"], r["grad_cache"], r["status"]) for r in result["train"]] == [
        ("xla", "on", "unavailable"), ("dot_product", "on", "unavailable")]
