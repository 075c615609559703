"""Ahead-of-time planning: presets, model FLOPs, and the planner on CPU devices (and a TPU topology, slow)."""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o1_jax import flops, plan
from o1_jax.hf import convert
from o1_jax.models import LlamaConfig, LlamaForCausalLM, param_shapes, presets
from o1_jax.data.synthetic import make_tokenizer
from o1_jax.training import run as run_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(name, variant=None):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _count(cfg):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(param_shapes(cfg)))


@pytest.mark.parametrize("name, published", [
    ("qwen2.5-7b", 7.62e9), ("llama3.1-8b", 8.03e9), ("llama3.2-1b", 1.24e9), ("smollm2-135m", 134.5e6)])
def test_presets_have_the_published_parameter_counts(name, published):
    cfg, tokenizer_size = presets.preset(name)
    assert tokenizer_size <= cfg.vocab_size
    assert _count(cfg) == pytest.approx(published, rel=0.005)


def test_smollm2_preset_equals_the_shipped_config(smollm2_path):
    shipped = convert.read_config(smollm2_path)
    assert presets.preset("smollm2-135m")[0] == shipped


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="config.model.architecture='gpt5'"):
        presets.preset("gpt5")


def _cost_flops(cfg, batch, length):
    model = LlamaForCausalLM(cfg)
    params = param_shapes(cfg)
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    compiled = jax.jit(lambda p, i: model.apply({"params": p}, i, compute_logits=False).last_hidden_state
                       ).lower(params, ids).compile()
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]


def test_forward_flops_agree_with_xla_for_one_layer():
    """With one layer, XLA's loop-body count is the whole forward; ours is its matmuls (within 10%)."""
    cfg = LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    ours, xla = flops.forward_flops(cfg, 4, 32), _cost_flops(cfg, 4, 32)
    assert ours == pytest.approx(xla, rel=0.1)
    # With three scanned layers XLA still counts one: the reason o1_jax counts FLOPs itself.
    deep = cfg.replace(num_hidden_layers=3)
    assert flops.forward_flops(deep, 4, 32) == pytest.approx(3 * ours)
    assert _cost_flops(deep, 4, 32) < 1.5 * xla


def test_train_step_flops_counts_lora_backward_once():
    cfg = presets.preset("smollm2-135m")[0]
    full = flops.train_step_flops(cfg, 4, 4, 101, 129, 65)
    lora = flops.train_step_flops(cfg.replace(lora_rank=8, lora_targets=("q_proj",)), 4, 4, 101, 129, 65)
    assert lora == pytest.approx(full * 2 / 3, rel=0.01)
    tokens = 4 * 101 + 16 * 129
    assert full == pytest.approx(6 * 106.2e6 * tokens, rel=0.2)  # about 6 N per token (N without embeddings)


def test_plan_on_cpu_devices_reports_memory_and_fit():
    config = _config("demo.py", "short")
    result = plan.plan(config, jax.devices()[:8], "8 CPU devices", hbm_gib=1.0)
    assert result.num_devices == 8 and result.mesh == {"data": 1, "fsdp": 8, "tensor": 1}
    assert 0 < result.argument_gib < result.peak_gib < 1.0
    assert result.fits is True and "fits: yes" in result.summary()
    assert result.flops_per_step > 0 and result.trainable == result.params
    tight = plan.plan(config, jax.devices()[:8], "8 CPU devices", hbm_gib=result.peak_gib / 2)
    assert tight.fits is False and "GiB over" in tight.summary()
    assert result.replicated == [] and "replicated instead of sharded" not in result.summary()


def test_plan_reports_what_the_mesh_could_not_divide():
    """The demo's vocabulary (191 words + 4 O1 tokens) does not split over tensor=4: its rows stay whole."""
    config = _config("demo.py", "short")
    config.mesh.shape = (1, 2, 4)
    result = plan.plan(config, jax.devices()[:8], "8 CPU devices")
    assert result.replicated == ["model/embed_tokens/embedding dim 0 (size 195) is replicated: mesh axes tensor "
                                 "(4 devices) do not divide it"]
    assert "replicated instead of sharded (1): model/embed_tokens/embedding dim 0" in result.summary()
    config.mesh.shape = (1, 8, 1)  # the fsdp axis shards the hidden dimension (128), which 8 divides
    assert plan.plan(config, jax.devices()[:8], "8 CPU devices").replicated == []


def test_plan_of_an_absent_model_folder_without_architecture_is_a_clear_error():
    config = _config("qwen25_7b_o1.py")
    config.model.architecture = ""
    with pytest.raises(ValueError, match="is not a folder here; set config.model.architecture"):
        plan.plan(config, jax.devices()[:8], "8 CPU devices")


def test_plan_command_exits_2_when_the_step_does_not_fit(tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "o1_jax.plan", "--config", "configs/demo.py:short", "--cpu_devices", "2",
         "--hbm_gib", "0.001", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "fits: NO" in proc.stdout and "2 CPU devices" in proc.stdout
    assert '"fits": false' in out.read_text()
    usage = subprocess.run([sys.executable, "-m", "o1_jax.plan", "--config", "configs/demo.py:short"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=False)
    assert usage.returncode != 0 and "exactly one of --topology" in usage.stderr


@pytest.mark.slow
def test_qwen_recipe_fits_a_v5p_slice():
    pytest.importorskip("libtpu", reason="libtpu is optional: pip install -r requirements-plan.txt")
    result = plan.plan(_config("qwen25_7b_o1.py"), plan.topology_devices("v5p:2x2x1"), "v5p:2x2x1")
    assert result.device_kind == "TPU v5" and result.hbm_gib == 95 and result.fits


def test_adam_moments_are_sharded_like_their_parameters():
    """A replicated optimizer state would need 8 bytes per parameter on every device."""
    tokenizer = make_tokenizer()
    run = run_lib.build_run(_config("demo.py", "short"), tokenizer, len(tokenizer), 10, jax.devices()[:8])
    params = run.state_shardings["params"]
    adam = run.state_shardings["opt_state"][1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    for moments in (adam.mu, adam.nu):
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: a.spec == b.spec, moments, params))
    assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree_util.tree_leaves(adam.mu))


@pytest.mark.slow
def test_full_finetuning_state_is_sharded_over_a_v5p_pod():
    """8B parameters + Adam, float32 (16 bytes each), over 64 chips: about 2 GiB per chip."""
    pytest.importorskip("libtpu", reason="libtpu is optional: pip install -r requirements-plan.txt")
    result = plan.plan(_config("llama3_8b_o1.py"), plan.topology_devices("v5p:4x4x4"), "v5p:4x4x4")
    assert result.argument_gib < 3 and result.fits


def test_grad_cache_lowers_the_planned_peak_and_says_so():
    config = _config("demo.py", "short")
    config.mesh.shape = (1, 1, 1)
    one_shot = plan.plan(config, jax.devices()[:1], "1 CPU device")
    config.train.grad_cache_chunks = 4
    chunked = plan.plan(config, jax.devices()[:1], "1 CPU device")
    assert chunked.grad_cache_chunks == 4 and "GradCache in 4 chunks" in chunked.summary()
    assert "GradCache" not in one_shot.summary()
    assert chunked.temp_gib < one_shot.temp_gib  # one chunk's activations instead of the batch's
    assert chunked.argument_gib == one_shot.argument_gib


def test_the_original_recipe_fits_one_80_gb_gpu_with_grad_cache_only():
    """configs/qwen25_7b_o1.py:h100x1 (GradCache in 8 chunks) fits 80 GB by the CPU compiler's
    estimate; the same step in one shot does not (README: Scale)."""
    config = _config("qwen25_7b_o1.py", "h100x1")
    fits = plan.plan(config, jax.devices()[:1], "1 CPU device", hbm_gib=80)
    assert fits.grad_cache_chunks == 8 and fits.fits, fits.summary()
    config.train.grad_cache_chunks = 1
    assert plan.plan(config, jax.devices()[:1], "1 CPU device", hbm_gib=80).fits is False


def test_a_step_the_compiler_refuses_is_reported_as_not_fitting(monkeypatch):
    """The TPU compiler refuses a program whose temporaries exceed HBM (seen for Llama-3.1-8B at
    1,024-token documents on v5p:2x2x2); the plan reports it instead of failing."""
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(99.30G) exceeds available HBM (95.74G).")

    class Refusing:
        def lower(self, *args):
            return self

        def compile(self):
            raise jax.errors.JaxRuntimeError(message)

    monkeypatch.setattr(run_lib.Run, "jit_train_step", lambda self: Refusing())
    result = plan.plan(_config("demo.py", "short"), jax.devices()[:8], "8 CPU devices", hbm_gib=1.0)
    assert result.fits is False and result.refused == message
    assert result.temp_gib == pytest.approx(99.30) and result.argument_gib > 0
    assert "fits: NO, the compiler refused the step" in result.summary() and "(99.30G)" in result.summary()
