"""Device mesh and logical-axis sharding rules: the one place sharding is decided.

Parameters and activations carry logical axis names (`embed`, `mlp`, `q_heads`,
`activation_batch`, ...); a rules table maps each to a mesh axis of the mesh
`('data', 'fsdp', 'tensor')`. A logical axis whose size the mesh axis does not
divide falls back to replication for that parameter (e.g. 3 KV heads on tensor=2).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

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


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide their dimension (replicating it instead)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        fitted.append(axes if dim % size == 0 else None)
    return PartitionSpec(*fitted)


def logical_to_shardings(boxed_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a tree of `nn.LogicallyPartitioned` (e.g. from `abstract_params`)."""
    logical = nn.get_partition_spec(boxed_tree)
    mesh_specs = nn.logical_to_mesh(logical, rules)
    # Not nn.unbox: inside a mesh context it would apply sharding constraints to abstract values.
    shapes = jax.tree_util.tree_map(
        lambda x: (x.value if isinstance(x, nn.Partitioned) else x).shape, boxed_tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return jax.tree_util.tree_map(
        lambda spec, shape: NamedSharding(mesh, _fit(spec, shape, mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
