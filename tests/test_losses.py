"""Losses against independent numpy references, finite-difference gradients, sharding invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from o1_jax import losses
from tests.tolerances import EPS32, U32, contrastive_loss_atol

# Jitted once per static config: eager dispatch compiles every primitive on
# its own and makes these tests several times slower.
gen_loss = jax.jit(losses.generation_loss)
con_loss = jax.jit(losses.contrastive_loss, static_argnums=(2, 3))
dist_loss = jax.jit(losses.distillation_loss, static_argnums=(4, 5, 6))


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ---- numpy references, written with loops on purpose ----

def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def np_generation(logits, targets, weights):
    total, count = 0.0, 0.0
    for b in range(logits.shape[0]):
        for k in range(logits.shape[1]):
            if weights[b, k]:
                total += -np_log_softmax(logits[b, k])[targets[b, k]] * weights[b, k]
                count += weights[b, k]
    return total / max(count, 1.0), count


def np_contrastive(q, d, temperature, g):
    q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
    losses_, hits = [], []
    for i in range(q.shape[0]):
        s = np.array([q[i] @ d[j] for j in range(d.shape[0])]) / temperature
        losses_.append(-np_log_softmax(s)[i * g])
        hits.append(float(np.argmax(s) == i * g))
    return np.mean(losses_), np.mean(hits)


def np_contrastive_dscores(q, d, temperature, g):
    """dL/d(q.d) of the mean InfoNCE: (softmax - onehot) / (B t), [B, N]."""
    q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
    b = q.shape[0]
    s = q @ d.T / temperature
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(b), np.arange(b) * g] -= 1.0
    return p / b / temperature


def np_contrastive_grad(q, d, temperature, g):
    """Analytic gradient of the mean InfoNCE."""
    ds = np_contrastive_dscores(q, d, temperature, g)
    return ds @ np.asarray(d, np.float64), ds.T @ np.asarray(q, np.float64)


def contrastive_grad_atol(q, d, temperature, g, *, reorder):
    """Bound on the gradients' rounding (tests/tolerances.py), unit vectors.

    dL/ds moves with the logits (each dim+1 roundings of size 1/t, doubled by the softmax's
    normalisation) and with each row's softmax denominator (n_docs terms); then dq sums n_docs
    terms and dd sums B. scale, the largest row or column l1 norm of dL/ds, bounds sum|x_i| of both.
    """
    ds = np.abs(np_contrastive_dscores(q, d, temperature, g))
    scale = max(ds.sum(1).max(), ds.sum(0).max())
    k = 2 * (q.shape[1] + 1) / temperature + 2 * d.shape[0]
    return k * (EPS32 if reorder else U32) * scale


def generation_loss_atol(logits, weights, loss):
    """Against the exact value: lse of V terms (V+2 roundings, and one of size |lse| <= max|logit| + log V),
    minus the target logit, then a weighted mean ((count + 1) roundings of size |loss|)."""
    v, top = logits.shape[-1], float(np.abs(logits).max())
    return U32 * (v + 2 + 3 * (top + np.log(v)) + (float(weights.sum()) + 1) * abs(loss))


def np_distillation(q, d, ts, tm, temperature, g, tt):
    q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
    kls = []
    for i in range(q.shape[0]):
        if not tm[i]:
            continue
        s = np.array([q[i] @ d[i * g + j] for j in range(g)]) / temperature
        log_s = np_log_softmax(s)
        log_t = np_log_softmax(np.asarray(ts[i], np.float64) / tt)
        kls.append(sum(np.exp(log_t[j]) * (log_t[j] - log_s[j]) for j in range(g)))
    return np.mean(kls) if kls else 0.0


# ---- tests ----

def test_l2_normalize():
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32) * 5
    y = losses.l2_normalize(jnp.asarray(x, jnp.bfloat16))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(y), axis=-1), 1.0, atol=1e-5)
    z = losses.l2_normalize(jnp.zeros((2, 3)))
    assert np.all(np.isfinite(np.asarray(z))) and np.all(np.asarray(z) == 0)


def test_generation_loss_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 4
    targets = rng.integers(0, 11, size=(3, 5)).astype(np.int32)
    weights = (rng.random((3, 5)) < 0.6).astype(np.float32)
    weights[0, 0] = 1.0
    loss, n = gen_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    ref, ref_n = np_generation(logits, targets, weights)
    np.testing.assert_allclose(float(loss), ref, rtol=0, atol=generation_loss_atol(logits, weights, ref))
    assert float(n) == ref_n


def test_generation_loss_bf16_and_stability():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 4, 7)).astype(np.float32) * 1e3  # would overflow a naive exp
    targets = rng.integers(0, 7, size=(2, 4)).astype(np.int32)
    weights = np.ones((2, 4), np.float32)
    loss, _ = gen_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    ref = np_generation(logits, targets, weights)[0]
    np.testing.assert_allclose(float(loss), ref, rtol=0, atol=generation_loss_atol(logits, weights, ref))
    loss16, _ = gen_loss(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets), jnp.asarray(weights))
    assert loss16.dtype == jnp.float32 and np.isfinite(float(loss16))


def test_generation_loss_all_zero_weights():
    logits = jnp.ones((2, 3, 5))
    targets = jnp.zeros((2, 3), jnp.int32)
    weights = jnp.zeros((2, 3))
    loss, n = gen_loss(logits, targets, weights)
    assert float(loss) == 0.0 and float(n) == 0.0
    g = jax.jit(jax.grad(lambda x: losses.generation_loss(x, targets, weights)[0]))(logits)
    assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("b,g,temperature", [(4, 3, 0.02), (5, 1, 0.05), (2, 6, 1.0)])
def test_contrastive_loss_matches_numpy(b, g, temperature):
    rng = np.random.default_rng(b * 10 + g)
    q, d = _unit(rng, b, 16), _unit(rng, b * g, 16)
    d[0] = q[0]  # make at least one query certainly right
    loss, acc = con_loss(jnp.asarray(q), jnp.asarray(d), temperature, g)
    ref_loss, ref_acc = np_contrastive(q, d, temperature, g)
    atol = contrastive_loss_atol(b, b * g, 16, temperature, ref_loss, reorder=False)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=0, atol=atol)
    np.testing.assert_allclose(float(acc), ref_acc)


def test_contrastive_loss_sees_other_queries_documents():
    # Query 0's positive is weak, but a document of query 1's group equals q0:
    # an in-group-only loss would not notice it, the global one must.
    q = np.eye(2, 4, dtype=np.float32)
    d = np.zeros((4, 4), np.float32)
    d[:, 3] = 1.0
    d[3] = q[0]
    loss, acc = con_loss(jnp.asarray(q), jnp.asarray(d), 0.1, 2)
    assert float(acc) == 0.0
    ref = np_contrastive(q, d, 0.1, 2)[0]
    np.testing.assert_allclose(float(loss), ref, rtol=0, atol=contrastive_loss_atol(2, 4, 4, 0.1, ref, reorder=False))


def test_contrastive_loss_wrong_shape():
    with pytest.raises(ValueError, match="expected B\\*group_size"):
        losses.contrastive_loss(jnp.ones((2, 4)), jnp.ones((5, 4)), 0.02, 2)


def test_contrastive_grad_matches_numpy_and_finite_differences():
    rng = np.random.default_rng(3)
    b, g, t = 3, 4, 0.5
    q, d = _unit(rng, b, 6), _unit(rng, b * g, 6)
    fn = lambda q_, d_: losses.contrastive_loss(q_, d_, t, g)[0]
    gq, gd = jax.jit(jax.grad(fn, argnums=(0, 1)))(jnp.asarray(q), jnp.asarray(d))
    ref_gq, ref_gd = np_contrastive_grad(q, d, t, g)
    atol = contrastive_grad_atol(q, d, t, g, reorder=False)
    np.testing.assert_allclose(np.asarray(gq), ref_gq, rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(gd), ref_gd, rtol=0, atol=atol)
    # Central differences on the float64 numpy reference, a few coordinates. In float64 with step
    # 1e-5 they are good to ~1e-9 (truncation ~ step^2 * third derivative, rounding ~ 1e-16 |L| / step),
    # so the float32 gradient's own bound is the tolerance.
    eps = 1e-5
    for (i, j) in [(0, 0), (1, 3), (2, 5)]:
        qp, qm = q.astype(np.float64), q.astype(np.float64)
        qp[i, j] += eps
        qm[i, j] -= eps
        fd = (np_contrastive(qp, d, t, g)[0] - np_contrastive(qm, d, t, g)[0]) / (2 * eps)
        np.testing.assert_allclose(float(gq[i, j]), fd, rtol=0, atol=atol + 1e-9)
    for (i, j) in [(0, 1), (7, 2), (11, 4)]:
        dp, dm = d.astype(np.float64), d.astype(np.float64)
        dp[i, j] += eps
        dm[i, j] -= eps
        fd = (np_contrastive(q, dp, t, g)[0] - np_contrastive(q, dm, t, g)[0]) / (2 * eps)
        np.testing.assert_allclose(float(gd[i, j]), fd, rtol=0, atol=atol + 1e-9)


def test_contrastive_loss_independent_of_device_count():
    """Sharded over 8, 4 or 2 devices inside jit: same loss and gradients as unsharded."""
    assert jax.device_count() >= 8, "tests/conftest.py should give 8 CPU devices"
    rng = np.random.default_rng(4)
    b, g, dim, t = 8, 4, 16, 0.05
    q, d = _unit(rng, b, dim), _unit(rng, b * g, dim)

    def loss_and_grad(q_, d_):
        (loss, acc), grads = jax.value_and_grad(
            lambda a, c: losses.contrastive_loss(a, c, t, g), argnums=(0, 1), has_aux=True
        )(q_, d_)
        return loss, acc, grads

    ref = jax.jit(loss_and_grad)(jnp.asarray(q), jnp.asarray(d))
    # Layouts may order the float32 reductions differently (the score dot products, the softmax
    # denominators, the gradients' sums over documents): compare within the reordering bound
    # (tests/tolerances.py), not with a guess that depends on the machine's reduction order.
    ref_loss = np_contrastive(q, d, t, g)[0]
    loss_atol = contrastive_loss_atol(b, b * g, dim, t, ref_loss, reorder=True)
    grad_atol = contrastive_grad_atol(q, d, t, g, reorder=True)
    # The accuracy is exact: no row's top two logits are within twice the logits' reordering bound.
    top2 = np.sort(np.asarray(q, np.float64) @ np.asarray(d, np.float64).T / t, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 4 * (dim + 1) * EPS32 / t)
    for n in (8, 4, 2):
        mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
        shard = NamedSharding(mesh, P("data"))
        qs, ds = jax.device_put(q, shard), jax.device_put(d, shard)
        assert len(qs.sharding.device_set) == n and len(ds.addressable_shards) == n
        out = jax.jit(loss_and_grad, out_shardings=(None, None, (shard, shard)))(qs, ds)
        np.testing.assert_allclose(float(out[0]), float(ref[0]), rtol=0, atol=loss_atol)
        assert float(out[1]) == float(ref[1])
        np.testing.assert_allclose(np.asarray(out[2][0]), np.asarray(ref[2][0]), rtol=0, atol=grad_atol)
        np.testing.assert_allclose(np.asarray(out[2][1]), np.asarray(ref[2][1]), rtol=0, atol=grad_atol)
    # And the unsharded value is the numpy reference's (half the reordering bound: u, not eps).
    np.testing.assert_allclose(float(ref[0]), ref_loss, rtol=0, atol=loss_atol / 2)


@pytest.mark.parametrize("tt", [1.0, 0.5])
def test_distillation_loss_matches_numpy(tt):
    rng = np.random.default_rng(5)
    b, g, t = 4, 3, 0.1
    q, d = _unit(rng, b, 8), _unit(rng, b * g, 8)
    ts = rng.normal(size=(b, g)).astype(np.float32) * 3
    tm = np.array([1, 0, 1, 1], np.float32)
    ts[1] = np.nan  # a record without teacher scores may carry anything
    loss = dist_loss(jnp.asarray(q), jnp.asarray(d), jnp.asarray(ts), jnp.asarray(tm), t, g, tt)
    ref = np_distillation(q, d, ts, tm, t, g, tt)
    # Against the exact value, in units of u: the student logits (dim+1 roundings of size 1/t) and the
    # teacher's (one of size |ts|/tt) enter each log-softmax twice; each log-softmax adds g+2 roundings
    # and two of size <= the log-probabilities' range; then g terms of size <= that range and the mean.
    keep = tm > 0
    log_range = 2 * (2 / t + 2 * np.abs(ts[keep]).max() / tt + np.log(g))
    k = 2 * (8 + 1) / t + 2 * np.abs(ts[keep]).max() / tt + 2 * (g + 2) + (2 * g + 5) * log_range
    np.testing.assert_allclose(float(loss), ref, rtol=0, atol=k * U32 + (keep.sum() + 1) * U32 * abs(ref))
    student = lambda x: losses.distillation_loss(x, jnp.asarray(d), jnp.asarray(ts), jnp.asarray(tm), t, g, tt)
    gq = jax.jit(jax.grad(student))(jnp.asarray(q))
    assert np.all(np.isfinite(np.asarray(gq)))
    assert np.all(np.asarray(gq)[1] == 0)  # the unmasked query gets no gradient


def test_distillation_loss_zero_when_student_equals_teacher():
    rng = np.random.default_rng(6)
    b, g, t = 2, 4, 0.5
    q, d = _unit(rng, b, 8), _unit(rng, b * g, 8)
    ts = np.einsum("bd,bgd->bg", q, d.reshape(b, g, -1)) / t
    loss = dist_loss(jnp.asarray(q), jnp.asarray(d), jnp.asarray(ts), jnp.ones(b), t, g)
    # The two sides' logits differ only by rounding, which moves the KL at second order (~1e-12);
    # what is left is each log-softmax's own rounding: g+2 of size 1 and a few of size <= 2/t + log g.
    assert abs(float(loss)) <= U32 * (2 * (g + 2) + 6 * (2 / t + np.log(g)))


def test_distillation_loss_mask_all_zero():
    rng = np.random.default_rng(7)
    q, d = _unit(rng, 3, 8), _unit(rng, 6, 8)
    ts = jnp.full((3, 2), jnp.nan)
    fn = lambda x: losses.distillation_loss(x, jnp.asarray(d), ts, jnp.zeros(3), 0.02, 2)
    assert float(jax.jit(fn)(jnp.asarray(q))) == 0.0
    assert np.all(np.asarray(jax.jit(jax.grad(fn))(jnp.asarray(q))) == 0)
