"""The one place that knows the device mesh and the logical-axis rules.

Models annotate parameters and activations with *logical* axis names
(``batch``, ``embed``, ``heads``, ...). :data:`LOGICAL_RULES` maps them onto the
mesh axes ``data`` / ``fsdp`` / ``tensor`` (MaxText's convention): the batch is
split over data and fsdp, parameters are split over fsdp along the embedding
dimension (ZeRO-3 style) and over tensor along heads / MLP columns / vocabulary.
Changing the mesh sizes is all it takes to move a config from one CPU to a pod.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tlm_jax.errors import TLMError

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("embed_out", None),
    ("length", None),
    ("positions", None),
    ("types", None),
    ("norm", None),
    ("classes", None),
    ("channels", None),
    ("conv_h", None),
    ("conv_w", None),
    ("stack", None),
    ("rank", None),
    ("nnz", None),  # SLTrain's sparse values and their index buffer (tlm_jax/models/sparse.py)
)


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolve one ``-1`` axis and check the product equals ``num_devices``."""
    sizes = [data, fsdp, tensor]
    if sum(s == -1 for s in sizes) > 1:
        raise TLMError("only one mesh axis may be -1", "set the others to explicit sizes")
    if any(s == 0 or s < -1 for s in sizes):
        raise TLMError(f"mesh sizes must be positive or -1, got {sizes}", "fix mesh.*")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise TLMError(
                f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}) does not divide "
                f"{num_devices} devices", "choose sizes whose product divides the device count")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise TLMError(
            f"mesh data*fsdp*tensor = {math.prod(sizes)} but there are {num_devices} devices",
            "make the product equal the device count (or use -1 on one axis)")
    return sizes[0], sizes[1], sizes[2]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` with axes ``(data, fsdp, tensor)`` in Auto (GSPMD) mode."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    if devices == jax.devices():
        # jax.make_mesh lays devices out for the interconnect; Auto axes keep GSPMD's
        # propagation (the default Explicit mode would demand sharding-typed code).
        return jax.make_mesh(shape, MESH_AXES,
                             axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_sharding(tree: Any, mesh: Mesh) -> Any:
    """Map a tree of logical ``PartitionSpec``s to ``NamedSharding``s on ``mesh``."""
    return nn.logical_to_mesh_sharding(tree, mesh, LOGICAL_RULES)


def shardings_of(abstract_boxed: Any, mesh: Mesh) -> Any:
    """Shardings for a tree whose leaves may be ``nn.LogicallyPartitioned`` boxes."""
    return logical_to_sharding(nn.get_partition_spec(abstract_boxed), mesh)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a ``[batch, ...]`` array: batch over (data, fsdp)."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding."""
    return NamedSharding(mesh, PartitionSpec())


def check_model_fits(mesh: Mesh, *, vocab: int, hidden: int, heads: int, intermediate: int,
                     batch: int, head_dim: int | None = None) -> None:
    """Refuse a mesh that does not divide the model or the batch, with a one-line reason."""
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))  # Mesh or AbstractMesh
    dp = sizes["data"] * sizes["fsdp"]
    checks = [
        (batch % dp == 0, f"global batch {batch} is not divisible by data*fsdp={dp}",
         f"use a batch that is a multiple of {dp}"),
        (hidden % sizes["fsdp"] == 0, f"hidden {hidden} is not divisible by fsdp={sizes['fsdp']}",
         "pick an fsdp size that divides hidden"),
        (heads % sizes["tensor"] == 0, f"heads {heads} is not divisible by tensor={sizes['tensor']}",
         "pick a tensor size that divides the number of heads"),
        (intermediate % sizes["tensor"] == 0,
         f"intermediate {intermediate} is not divisible by tensor={sizes['tensor']}",
         "pick a tensor size that divides the MLP width"),
        (vocab % sizes["tensor"] == 0, f"vocab {vocab} is not divisible by tensor={sizes['tensor']}",
         "pick a vocab_size that is a multiple of the tensor size"),
    ]
    for ok, cause, fix in checks:
        if not ok:
            raise TLMError(cause, fix)


def per_device_bytes(abstract: Any, shardings: Any) -> dict[str, float]:
    """Bytes each device holds for ``abstract`` arrays placed with ``shardings``.

    Returns ``max`` (the most loaded device) and ``total`` (unsharded size).
    """
    per_dev: dict[Any, float] = {}
    total = 0.0
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(
            shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)), strict=True):
        nbytes = math.prod(a.shape) * np.dtype(a.dtype).itemsize
        total += nbytes
        shard = s.shard_shape(a.shape)
        shard_bytes = math.prod(shard) * np.dtype(a.dtype).itemsize
        for d in s.device_set:
            per_dev[d] = per_dev.get(d, 0.0) + shard_bytes
    return {"max": max(per_dev.values()) if per_dev else 0.0, "total": total}


def abstract_mesh(data: int, fsdp: int, tensor: int, num_devices: int) -> jax.sharding.AbstractMesh:
    """A device-less mesh of ``num_devices`` (for sizing a layout larger than this host)."""
    shape = mesh_shape(data, fsdp, tensor, num_devices)
    return jax.sharding.AbstractMesh(shape, MESH_AXES,
                                     axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def shard_bytes(abstract: Any, shardings: Any) -> dict[str, float]:
    """Per-device and unsharded bytes from shapes alone (works on an ``AbstractMesh``).

    With every sharded dimension divisible by its mesh axes (what
    :func:`check_model_fits` enforces), each device holds the same shard shape,
    so the per-device bytes are the sum of the shard shapes' sizes.
    """
    per_device = total = 0.0
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(
            shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)), strict=True):
        itemsize = np.dtype(a.dtype).itemsize
        total += math.prod(a.shape) * itemsize
        per_device += math.prod(s.shard_shape(a.shape)) * itemsize
    return {"per_device": per_device, "total": total}


def per_shard(fn: Any, in_axes: Sequence[tuple[str | None, ...]],
              out_axes: tuple[str | None, ...]) -> Any:
    """``fn`` run by each device on its shard, the shards named by logical axes.

    For computations XLA cannot partition itself (a Pallas kernel) that are independent along
    the sharded axes. Under ``jax.jit`` on a mesh (``jax.set_mesh``) this is ``jax.shard_map``
    with the partition specs the logical-axis rules give ``in_axes`` (one tuple per argument)
    and ``out_axes``. Without a mesh (one device, or inside pmap), or where an argument does
    not split evenly (a one-example initialisation batch), it is ``fn`` itself.
    """
    def call(*args: Any) -> Any:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or mesh.size == 1:
            return fn(*args)
        specs = [nn.logical_to_mesh_axes(a) for a in in_axes]
        for arg, spec in zip(args, specs, strict=True):
            for dim, axes in zip(arg.shape, spec, strict=False):
                names = () if axes is None else (axes,) if isinstance(axes, str) else axes
                if dim % math.prod(mesh.shape[n] for n in names):
                    return fn(*args)
        return jax.shard_map(fn, mesh=mesh, in_specs=tuple(specs),
                             out_specs=nn.logical_to_mesh_axes(out_axes), check_vma=False)(*args)

    return call


def unbox(tree: Any) -> Any:
    """Strip ``nn.LogicallyPartitioned`` boxes without adding sharding constraints."""
    return jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
        tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
