"""Checkpointer: round trips across meshes, keep-N, save policy, and the errors a mismatched resume gives."""

import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from o1_jax import checkpoint
from o1_jax.checkpoint import Checkpointer
from o1_jax.sharding import make_mesh

FP = {"model": {"hidden_size": 64, "num_layers": 2}, "lora": {"rank": 8, "targets": ["q_proj", "v_proj"]}}
SPECS = {"kernel": P("fsdp", "tensor"), "embed": P(None, ("data", "fsdp"))}


def _state(mesh, kernel_shape=(8, 4)):
    """A train-state-like pytree: sharded params, optax (namedtuple) state, step, rng key data."""
    rng = np.random.default_rng(0)
    params = {
        "layer": {
            "kernel": jnp.asarray(rng.normal(size=kernel_shape), jnp.float32),
            "bias": jnp.arange(kernel_shape[1], dtype=jnp.float32),
        },
        "embed": jnp.asarray(rng.normal(size=(6, 16)), jnp.bfloat16),
    }
    state = {
        "params": params,
        "opt": optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init(params),
        "step": jnp.asarray(7, jnp.int32),
        "rng": jax.random.key_data(jax.random.key(3)),
    }
    return jax.tree_util.tree_map_with_path(lambda p, x: jax.device_put(x, _sharding(mesh, p, x)), state)


def _sharding(mesh, path, x):
    name = getattr(path[-1], "key", None)
    return NamedSharding(mesh, SPECS.get(name, P()) if x.ndim else P())


def _abstract(state, mesh):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_sharding(mesh, p, x)), state
    )


@pytest.fixture(scope="module")
def mesh8():
    return make_mesh((2, 2, 2))


def test_round_trip_onto_other_meshes(tmp_path, mesh8):
    state = _state(mesh8)
    assert state["params"]["layer"]["kernel"].sharding.spec == P("fsdp", "tensor")
    meta = {"data": {"epoch": 1, "offset": np.int64(1234)}, "seed": 0}
    with Checkpointer(tmp_path, save_every=10, config_fingerprint=FP) as ckpt:
        assert ckpt.save(10, state, meta)
        ckpt.wait()

    ckpt = Checkpointer(tmp_path, save_every=10, config_fingerprint=FP)
    assert ckpt.latest_step() == 10
    for mesh in (make_mesh((1, 8, 1)), make_mesh((1, 1, 1), devices=jax.devices()[:1])):
        abstract = _abstract(state, mesh)
        restored, got_meta = ckpt.restore(ckpt.latest_step(), abstract)
        assert got_meta == {"data": {"epoch": 1, "offset": 1234}, "seed": 0}
        assert jax.tree.structure(restored) == jax.tree.structure(state)
        for want, got, spec in zip(jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(abstract)):
            assert got.dtype == want.dtype and got.sharding == spec.sharding
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert len(restored["params"]["layer"]["kernel"].sharding.device_set) == 1
    ckpt.close()


def test_keep_maybe_save_and_latest(tmp_path, mesh8):
    state = {"w": jax.device_put(jnp.ones((8, 2)), NamedSharding(mesh8, P(("data", "fsdp"))))}
    ckpt = Checkpointer(tmp_path, save_every=3, keep=2, async_save=False)
    assert ckpt.latest_step() is None
    saved = [s for s in range(1, 11) if ckpt.maybe_save(s, state, {"s": s})]
    assert saved == [3, 6, 9]
    assert ckpt.latest_step() == 9 and ckpt.all_steps() == [6, 9]
    assert ckpt.save(10, state, {"s": 10}, force=True)  # e.g. SIGTERM at step 10
    assert not ckpt.save(10, state, {"s": 10}, force=True)  # never overwrites
    ckpt.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["10", "9"]
    assert Checkpointer(tmp_path, save_every=3).latest_step() == 10


def test_async_save_then_wait(tmp_path, mesh8):
    state = _state(mesh8)
    ckpt = Checkpointer(tmp_path, save_every=1, async_save=True, config_fingerprint=FP)
    assert ckpt.save(1, state, {"i": 1})
    assert ckpt.save(2, state, {"i": 2})  # waits for step 1 inside orbax, then goes async again
    ckpt.wait()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "1" in names and "2" in names and not any("tmp" in n for n in names)
    _, meta = ckpt.restore(None, _abstract(state, mesh8))
    assert meta == {"i": 2}
    ckpt.close()


def test_interrupted_save_is_not_latest(tmp_path, mesh8):
    state = {"w": jnp.ones((4,))}
    with Checkpointer(tmp_path, save_every=1, async_save=False) as ckpt:
        ckpt.save(2, state)
    # What a save killed mid-write leaves: orbax's temp dir, never renamed to "5".
    partial = tmp_path / "5.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 16)

    ckpt = Checkpointer(tmp_path, save_every=1, async_save=False)
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [2]
    assert ckpt.save(5, state)  # the step can be written properly afterwards
    ckpt.close()
    assert not partial.exists()
    assert Checkpointer(tmp_path, save_every=1).latest_step() == 5


def test_fingerprint_mismatch_names_the_keys(tmp_path, mesh8):
    state = _state(mesh8)
    with Checkpointer(tmp_path, save_every=1, async_save=False, config_fingerprint=FP) as ckpt:
        ckpt.save(4, state)
    other = {"model": {"hidden_size": 128, "num_layers": 2}, "lora": {"rank": 8, "targets": ("q_proj", "v_proj")}}
    ckpt = Checkpointer(tmp_path, save_every=1, config_fingerprint=other)
    with pytest.raises(ValueError) as e:
        ckpt.restore(4, _abstract(state, mesh8))
    msg = str(e.value)
    assert re.search(r"checkpoint at .*4 was trained with model\.hidden_size=64, but the config says 128$", msg), msg
    # A tuple in the config equals the list JSON gave back: not reported.
    assert "lora" not in msg and "num_layers" not in msg

    ckpt = Checkpointer(tmp_path, save_every=1, config_fingerprint={**FP, "extra": {"dropout": 0.1}})
    with pytest.raises(ValueError, match=r"no extra\.dropout, but the config says 0\.1"):
        ckpt.restore(4, _abstract(state, mesh8))


def test_shape_mismatch_names_the_parameter(tmp_path, mesh8):
    state = _state(mesh8)
    with Checkpointer(tmp_path, save_every=1, async_save=False) as ckpt:
        ckpt.save(1, state)
    ckpt = Checkpointer(tmp_path, save_every=1)
    wider = _abstract(_state(mesh8, kernel_shape=(8, 6)), mesh8)
    with pytest.raises(ValueError) as e:
        ckpt.restore(1, wider)
    msg = str(e.value)
    # Leaves in tree order: optax's adam moments ("opt") come before "params".
    assert msg.endswith("/1 has opt.1.0.mu.layer.bias with shape (4,), but the state expects (6,) (6 arrays differ in all)"), msg

    fewer = _abstract(state, mesh8)
    del fewer["params"]["embed"]
    with pytest.raises(ValueError, match=r"parameter\(s\) the state does not expect, the first params\.embed "):
        ckpt.restore(1, fewer)
    more = _abstract(state, mesh8)
    more["params"]["head"] = jax.ShapeDtypeStruct((3,), jnp.float32, sharding=NamedSharding(mesh8, P()))
    with pytest.raises(ValueError, match=r"has no params\.head \(shape \(3,\)\), which the state expects$"):
        ckpt.restore(1, more)

    unsharded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _abstract(state, mesh8))
    with pytest.raises(ValueError, match="has no sharding"):
        ckpt.restore(1, unsharded)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 3 .* found steps \[1\]"):
        ckpt.restore(3, _abstract(state, mesh8))


def test_late_callbacks_to_a_closed_event_loop_are_dropped_and_other_unraisables_kept(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "__unraisablehook__", seen.append)
    hook = checkpoint._quiet_closed_loop_callbacks
    closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
    other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
    hook(closed)
    hook(other)
    assert seen == [other]
