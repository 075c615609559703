"""Device mesh and logical-axis sharding rules: the one place sharding is decided.

Parameters and activations carry logical axis names (`embed`, `mlp`, `q_heads`,
`activation_batch`, ...); a rules table maps each to a mesh axis of the mesh
`('data', 'fsdp', 'tensor')`. A logical axis whose size the mesh axis does not
divide falls back to replication for that parameter (e.g. 3 KV heads on tensor=2);
`undivided` lists those fallbacks, and the planner reports them.

Training (`train_state_shardings`: parameters, their trainable/frozen views, Adam's moments,
the batch), embedding (`data_parallel`) and planning all take their shardings from here.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import flax.traverse_util as traverse
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = PartitionSpec(("data", "fsdp"))  # batch rows over data x fsdp, as activation_batch

# Megatron-style tensor parallelism over heads and MLP width, FSDP over the hidden
# dimension, batch over data x fsdp; the residual stream is not split over `tensor`.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh `('data', 'fsdp', 'tensor')`; one entry may be -1 to take the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape {shape}: expected 3 sizes for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one size may be -1")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape}: {len(devices)} devices are not divisible by {known}")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, found {len(devices)}")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def rules_from_config(rules) -> tuple:
    """`config.mesh.rules` (lists, as a config or JSON holds them) as the tuples flax expects."""
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)


def _axes_size(axes, mesh: Mesh) -> int:
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return int(np.prod([mesh.shape[a] for a in names])) if names else 1


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide their dimension (replicating it instead)."""
    padded = tuple(spec) + (None,) * (len(shape) - len(spec))
    return PartitionSpec(*(axes if dim % _axes_size(axes, mesh) == 0 else None for dim, axes in zip(shape, padded)))


def context_spec(logical_axes: Sequence[str | None], shape: tuple[int, ...]) -> PartitionSpec | None:
    """The PartitionSpec of an activation with these logical axes under the mesh and rules in
    context (`jax.set_mesh`, `nn.logical_axis_rules`), axes that do not divide dropped; None
    outside a multi-device mesh (for code that must run per shard, e.g. under `jax.shard_map`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    return _fit(nn.logical_to_mesh_axes(tuple(logical_axes)), shape, mesh)


def _mesh_specs_and_shapes(boxed_tree, rules):
    mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(boxed_tree), rules)
    # Not nn.unbox: inside a mesh context it would apply sharding constraints to abstract values.
    shapes = jax.tree_util.tree_map(
        lambda x: (x.value if isinstance(x, nn.Partitioned) else x).shape, boxed_tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return mesh_specs, shapes


def logical_to_shardings(boxed_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a tree of `nn.LogicallyPartitioned` (e.g. from `abstract_params`)."""
    mesh_specs, shapes = _mesh_specs_and_shapes(boxed_tree, rules)
    return jax.tree_util.tree_map(lambda spec, shape: NamedSharding(mesh, _fit(spec, shape, mesh)),
                                  mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def undivided(boxed_tree, mesh: Mesh, rules=DEFAULT_RULES) -> list[str]:
    """One line per parameter dimension the rules shard but the mesh does not divide (so it is replicated)."""
    mesh_specs, shapes = _mesh_specs_and_shapes(boxed_tree, rules)
    flat_specs = traverse.flatten_dict(jax.tree_util.tree_map(lambda s: (s,), mesh_specs,
                                                              is_leaf=lambda x: isinstance(x, PartitionSpec)))
    flat_shapes = traverse.flatten_dict(jax.tree_util.tree_map(lambda s: (s,), shapes,
                                                               is_leaf=lambda x: isinstance(x, tuple)))
    lines = []
    for key, (spec,) in sorted(flat_specs.items()):
        (shape,) = flat_shapes[key]
        for i, (dim, axes) in enumerate(zip(shape, tuple(spec))):
            if axes is not None and dim % _axes_size(axes, mesh):
                lines.append(f"{'/'.join(key)} dim {i} (size {dim}) is replicated: mesh axes {axes} "
                             f"({_axes_size(axes, mesh)} devices) do not divide it")
    return lines


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, BATCH_AXES)


def data_parallel(devices: Sequence[jax.Device]) -> tuple[NamedSharding, NamedSharding]:
    """(replicated, rows) on a 1-D `data` mesh over `devices`: serving's layout, parameters copied
    to every device and the batch rows split over them."""
    mesh = Mesh(np.asarray(list(devices)), ("data",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded abstract arrays (`jax.ShapeDtypeStruct` with
    `.sharding`): the largest device's share, leaf by leaf."""
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
    return total


def with_shardings(tree, shardings):
    """`jax.ShapeDtypeStruct`s of `tree`'s leaves carrying `shardings` (a tree of the same structure)."""
    return jax.tree_util.tree_map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings)


def view_shardings(view_tree, full_shardings, mesh: Mesh, replicated_keys: Sequence[str] = ()):
    """Shardings of a view of the parameters (`training.trainable_params.split`'s trainable or
    frozen part): each leaf takes its full parameter's sharding; a flat `{'a/b/c': leaf}` view is
    looked up by path, and `replicated_keys` (small extra arrays, e.g. the special-token rows) are
    replicated."""
    if not isinstance(view_tree, dict) or not view_tree:
        return jax.tree_util.tree_map(lambda _: replicated(mesh), view_tree)
    full_flat = traverse.flatten_dict(full_shardings)
    if any(isinstance(v, dict) for v in view_tree.values()):  # a nested parameter tree
        return traverse.unflatten_dict({k: full_flat[k] for k in traverse.flatten_dict(view_tree)})
    return {k: replicated(mesh) if k in replicated_keys else full_flat[tuple(k.split("/"))] for k in view_tree}


def optimizer_shardings(tx: optax.GradientTransformation, abstract_params: Any, param_shardings: Any, mesh: Mesh):
    """Adam's moments sharded like their parameters; counters and other scalars replicated."""
    return optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, abstract_params), param_shardings,
                                 transform_non_params=lambda _: replicated(mesh))
