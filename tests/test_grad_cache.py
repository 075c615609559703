"""`train.grad_cache_chunks`: the step in chunks has the one-shot step's loss, metrics, gradients
and updated parameters (full fine-tuning and LoRA with remat, InfoNCE and distillation, on one
device and on a (2, 2, 2) mesh), and misconfigurations are one sentence."""

import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from o1_jax import forward
from o1_jax.training import batches as batches_lib, grad_cache, loop, run as run_lib, trainable_params
from o1_jax.training.chunks import join_documents, join_queries, split
from o1_jax.training.step import make_train_step
from test_train import tiny_config
from tolerances import reorder_atol

CASES = {  # name: (mesh shape, global batch, config changes)
    "full_1_device": ((1, 1, 1), 8, {}),
    "full_mesh_222": ((2, 2, 2), 16, {}),
    "lora_remat_distill_mesh_222": ((2, 2, 2), 16, {"model.lora.rank": 4, "model.lora.targets": ("q_proj", "v_proj"),
                                                   "model.remat_policy": "full", "loss.w_distill": 0.5}),
}


def _setup(tmp_path, case):
    mesh_shape, batch_size, changes = CASES[case]
    config = tiny_config(**{"mesh.shape": mesh_shape, "train.global_batch_size": batch_size, **changes})
    tokenizer = run_lib.load_tokenizer(config, None)
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    run = run_lib.build_run(config, tokenizer, len(tokenizer), 1, devices=devices)
    data = batches_lib.prepare_data(config, tmp_path)
    batch = batches_lib.make_batches(config, data, tokenizer).local_batch(0)
    if config.loss.w_distill:  # the synthetic records have no teacher scores: give most queries some
        batch["teacher_scores"] = np.random.default_rng(0).normal(size=batch["teacher_scores"].shape).astype(np.float32)
        batch["teacher_mask"] = (np.arange(batch_size) % 4 != 3).astype(np.float32)
    return config, run, jax.device_put(batch, run.batch_sharding)


def _tolerance(reference, batch) -> float:
    """Both compute the same sums in their own orders (other matmul shapes, another accumulation
    order over the chunks): a gradient entry sums at most one term per token position of the batch,
    so reorder_atol over that many terms of the largest entry's size. (Measured: about 2.6e-6 of a
    bound near 5e-4; splitting InfoNCE per chunk, as train.microbatches does, is off by 0.1 or more.)"""
    scale = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(reference))
    return reorder_atol(batch["query_ids"].size + batch["doc_ids"].size, scale)


def test_split_and_join_are_inverse():
    b, g = 8, 3
    batch = {"query_ids": np.arange(b)[:, None], "doc_ids": np.arange(b * g)[:, None]}
    for k in (1, 2, 4, 8):
        cut = split(batch, k)
        np.testing.assert_array_equal(join_queries(cut["query_ids"]), batch["query_ids"])
        np.testing.assert_array_equal(join_documents(cut["doc_ids"], g), batch["doc_ids"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_grad_cache_gives_the_one_shot_loss_and_gradients(tmp_path, case):
    config, run, batch = _setup(tmp_path, case)
    params, frozen = run.initial_views()

    def one_shot(p):
        return forward.joint_loss(run.model, trainable_params.combine(p, frozen, run.special_ids), batch, config.loss)

    (_, ref_metrics), ref_grads = jax.jit(jax.value_and_grad(one_shot, has_aux=True))(params)
    atol = _tolerance(ref_grads, batch)
    for chunks in (2, 4):
        metrics, grads = jax.jit(lambda p: grad_cache.loss_and_grads(
            run.model, lambda q: trainable_params.combine(q, frozen, run.special_ids), p, batch, config.loss,
            chunks))(params)
        assert sorted(metrics) == sorted(ref_metrics)
        for key in ref_metrics:  # float32 losses of O(1..30): a few roundings of each term's own order
            assert float(metrics[key]) == pytest.approx(float(ref_metrics[key]), rel=1e-5, abs=1e-6), (chunks, key)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref_grads), jax.tree_util.tree_leaves(grads)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=atol,
                                       err_msg=f"{chunks} chunks: {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("case", ["full_1_device", "lora_remat_distill_mesh_222"])
def test_a_grad_cache_step_updates_as_the_one_shot_step(tmp_path, case):
    """Through make_train_step and the run's jit (its shardings): with SGD at lr 1 the new parameters
    are the old minus the gradient; with the run's AdamW the metrics and grad_norm agree."""
    config, run, batch = _setup(tmp_path, case)
    params, frozen = run.initial_views()
    sgd, schedule = optax.sgd(1.0), optax.constant_schedule(1.0)
    state = {"params": params, "opt_state": sgd.init(params), "step": jnp.zeros((), jnp.int32)}
    results = {}
    for chunks in (1, 2):
        step = jax.jit(make_train_step(run.model, sgd, schedule, config.loss, run.special_ids, 1, chunks))
        results[chunks] = step(state, frozen, batch)
    grads = jax.tree_util.tree_map(jnp.subtract, params, results[1][0]["params"])
    atol = _tolerance(grads, batch)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(results[1][0]["params"]),
                            jax.tree_util.tree_leaves(results[2][0]["params"])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))
    for key in ("loss", "ctr_loss", "gen_loss", "grad_norm"):
        assert float(results[2][1][key]) == pytest.approx(float(results[1][1][key]), rel=1e-5), key

    config.train.grad_cache_chunks = 2  # the run's own jitted step (AdamW, donated state) reads the config
    config_one = run.config.copy_and_resolve_references()
    config_one.train.grad_cache_chunks = 1
    one = run_lib.Run(**{**run.__dict__, "config": config_one}).jit_train_step()
    two = run.jit_train_step()
    fresh = lambda: {"params": run.initial_views()[0], "opt_state": run.tx.init(params),  # noqa: E731
                     "step": jnp.zeros((), jnp.int32)}
    m1, m2 = one(fresh(), frozen, batch)[1], two(fresh(), frozen, batch)[1]
    for key in ("loss", "grad_norm", "accuracy"):
        assert float(m2[key]) == pytest.approx(float(m1[key]), rel=1e-5), key


def test_misconfigurations_are_one_sentence():
    config = tiny_config(**{"train.global_batch_size": 8, "train.grad_cache_chunks": 3})
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    with pytest.raises(ValueError, match=r"^config.train.grad_cache_chunks=3 must be >= 1 and divide "
                                         r"train.global_batch_size=8$"):
        batches_lib.check_batch(config, mesh)
    config.train.grad_cache_chunks, config.train.microbatches = 2, 2
    with pytest.raises(ValueError, match=r"^config.train.microbatches=2 and config.train.grad_cache_chunks=2: use one"):
        batches_lib.check_batch(config, mesh)
    config.train.microbatches, config.train.grad_cache_chunks = 1, 4
    mesh4 = jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(4, 1, 1), ("data", "fsdp", "tensor"))
    with pytest.raises(ValueError, match=r"^config.train.global_batch_size=8 \(per chunk 2\) must be divisible by "
                                         r"the mesh's data x fsdp = 4 devices$"):
        batches_lib.check_batch(config, mesh4)
    loss_cfg = ml_collections.ConfigDict(dict(temperature=0.02, w_ctr=0.8, w_gen=0.2, w_distill=0.0))
    with pytest.raises(ValueError, match=r"^train.microbatches=2 and train.grad_cache_chunks=2: use one of them"):
        make_train_step(None, None, None, loss_cfg, [], 2, 2)


def test_training_with_grad_cache_resumes_exactly_and_follows_the_one_shot_run(tmp_path):
    """On the (2, 2, 2) mesh: 6 steps in one go equal a restart from that run's step-4 checkpoint
    (its later one removed, as a kill before it was written); and the losses follow the one-shot run's (AdamW's first steps amplify reduction-order
    differences a little: rtol as the one-vs-eight-device test in test_train.py)."""
    mesh = {"mesh.shape": (2, 2, 2), "train.global_batch_size": 16}
    chunked = {**mesh, "train.grad_cache_chunks": 4}
    straight = loop.train(tiny_config(**chunked, **{"train.num_steps": 6}), tmp_path / "straight")
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")
    resumed = loop.train(tiny_config(**chunked, **{"train.num_steps": 6}), tmp_path / "resumed")
    assert [h["step"] for h in resumed.history] == [5, 6]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history[4:]]
    one_shot = loop.train(tiny_config(**mesh, **{"train.num_steps": 6}), tmp_path / "one_shot")
    np.testing.assert_allclose([h["loss"] for h in straight.history], [h["loss"] for h in one_shot.history],
                               rtol=2e-5)
