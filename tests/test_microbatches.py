"""`train.microbatches`: each micro-batch holds whole query groups (a query, its positive and its
hard negatives), and a step with k micro-batches is the mean of the k per-group gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from o1_jax import forward, losses
from o1_jax.training import batches as batches_lib, run as run_lib, trainable_params
from o1_jax.training.chunks import _every_kth as _micro, split as split_microbatches
from o1_jax.training.step import make_train_step
from test_train import tiny_config
from tolerances import reorder_atol

B, G = 8, 3


def labelled_batch():
    """Query i's row holds i; document row i*G + g holds 10 * i + g (g = 0: its positive)."""
    rows = np.arange(B * G)
    return {"query_ids": np.arange(B)[:, None], "query_mask": np.ones((B, 1)),
            "gen_positions": np.arange(B)[:, None], "teacher_mask": np.arange(B),
            "doc_ids": (10 * (rows // G) + rows % G)[:, None], "doc_mask": np.ones((B * G, 1)),
            "teacher_scores": np.arange(B * G).reshape(B, G)}


@pytest.mark.parametrize("k", [2, 4])
def test_every_micro_batch_holds_its_queries_own_documents(k):
    micro = split_microbatches(labelled_batch(), k)
    for j in range(k):
        queries = micro["query_ids"][j, :, 0]
        np.testing.assert_array_equal(queries, np.arange(j, B, k))  # every k-th query: each device's own
        docs = micro["doc_ids"][j, :, 0].reshape(-1, G)
        np.testing.assert_array_equal(docs // 10, np.repeat(queries[:, None], G, 1))
        np.testing.assert_array_equal(docs[:, 0] % 10, 0)  # the positive first
        np.testing.assert_array_equal(micro["teacher_scores"][j], labelled_batch()["teacher_scores"][queries])


def test_ideal_embeddings_give_zero_loss_in_every_micro_batch():
    """Query i and its positive share a one-hot vector; negatives are orthogonal to every query.
    The old split (every k-th document row) gave 14.49 in the second micro-batch."""
    dim = B + B * (G - 1)
    eye = np.eye(dim, dtype=np.float32)
    q = eye[:B]
    d = np.stack([eye[i] if g == 0 else eye[B + i * (G - 1) + g - 1] for i in range(B) for g in range(G)])
    full, _ = losses.contrastive_loss(q, d, 0.02, G)
    assert float(full) == pytest.approx(0.0, abs=1e-12)
    batch = {"query_ids": q, "doc_ids": d}
    micro = split_microbatches(batch, 2)
    for j in range(2):
        loss, acc = losses.contrastive_loss(micro["query_ids"][j], micro["doc_ids"][j], 0.02, G)
        assert float(loss) == pytest.approx(0.0, abs=1e-12) and float(acc) == 1.0
    old = _micro(d, 2)[1]  # what the step used to take for micro-batch 1: wrong groups
    assert float(losses.contrastive_loss(_micro(q, 2)[1], old, 0.02, G)[0]) > 10


def test_a_step_with_microbatches_is_the_mean_of_its_groups_steps(tmp_path):
    """With plain SGD (lr 1) the update is minus the gradient, so the new parameters show the gradient."""
    config = tiny_config(**{"train.global_batch_size": 8})
    tokenizer = run_lib.load_tokenizer(config, None)
    original = len(tokenizer)
    run = run_lib.build_run(config, tokenizer, original, 1, devices=jax.devices()[:1])
    data = batches_lib.prepare_data(config, tmp_path)
    batch = {k: jnp.asarray(v) for k, v in batches_lib.make_batches(config, data, tokenizer).local_batch(0).items()}
    params, frozen = run.initial_views()
    sgd = optax.sgd(1.0)
    schedule = optax.constant_schedule(1.0)
    state = {"params": params, "opt_state": sgd.init(params), "step": jnp.zeros((), jnp.int32)}

    step = jax.jit(make_train_step(run.model, sgd, schedule, config.loss, run.special_ids, microbatches=2))
    new_state, metrics = step(state, frozen, batch)

    def loss_fn(p, mb):
        return forward.joint_loss(run.model, trainable_params.combine(p, frozen, run.special_ids), mb, config.loss)

    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    parts = [grad(params, jax.tree_util.tree_map(lambda x: x[j], split_microbatches(batch, 2))) for j in range(2)]
    mean_grad = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, parts[0][1], parts[1][1])
    expected = jax.tree_util.tree_map(lambda p, g: p - g, params, mean_grad)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(mean_grad))
    atol = reorder_atol(2 * B * 64, scale)  # the step sums the same terms in its own order
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol),
                           new_state["params"], expected)
    assert float(metrics["loss"]) == pytest.approx((float(parts[0][0][0]) + float(parts[1][0][0])) / 2, rel=1e-6)
    assert float(metrics["ctr_loss"]) == pytest.approx(
        (float(parts[0][0][1]["ctr_loss"]) + float(parts[1][0][1]["ctr_loss"])) / 2, rel=1e-6)

