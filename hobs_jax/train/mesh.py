"""Device mesh and shardings: data parallel over a 'data' axis, optional FSDP.

The mesh is 1-D, ``('data',)``, over every device of every process. Its axis type is
``Auto`` (GSPMD sharding propagation, the classic pjit behaviour): zoo models are plain
Flax modules that are not annotated for JAX's explicit-sharding mode, which is the
default axis type of ``jax.make_mesh`` since 0.7.

* batch: sharded along its leading axis over 'data';
* parameters and optimizer state: replicated, or with ``fsdp=True`` each array larger
  than ``min_size`` elements is sharded along its largest axis divisible by the mesh size
  (ZeRO-3 / FSDP style); XLA inserts the all-gathers and reduce-scatters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ('data',) mesh over ``devices`` (default: all global devices)."""
    devices = list(devices) if devices is not None else jax.devices()
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data'."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], mesh_size: int, min_size: int) -> P:
    """PartitionSpec sharding the largest axis divisible by ``mesh_size``.

    Arrays with fewer than ``min_size`` elements, or with no divisible axis, are replicated
    (P()). Ties go to the last axis (the output-channel axis of HWIO conv kernels).
    """
    if mesh_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    best = None
    for axis, dim in enumerate(shape):
        if dim % mesh_size == 0 and (best is None or dim >= shape[best]):
            best = axis
    if best is None:
        return P()
    return P(*([None] * best + [DATA_AXIS]))


def state_shardings(abstract_state: Any, mesh: Mesh, *, fsdp: bool = False,
                    min_size: int = 2 ** 14) -> Any:
    """A NamedSharding for every leaf of ``abstract_state`` (arrays or ShapeDtypeStructs)."""
    size = mesh.shape[DATA_AXIS]

    def one(x):
        spec = fsdp_spec(x.shape, size, min_size) if fsdp else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, abstract_state)


def put_global(tree: Any, shardings: Any) -> Any:
    """Places a host pytree (identical on every process) on the mesh with ``shardings``.

    Each process materializes only its addressable shards (works for multi-host FSDP).
    """

    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(one, tree, shardings)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles per-host batches into global arrays sharded over 'data'.

    Args:
      local_batch: this host's slice, e.g. 'image' [b_local, H, W, C]; every host passes
        the same keys and shapes.
    Returns:
      global arrays [b_local * process_count, ...].
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def host_value(x: jax.Array) -> np.ndarray:
    """The value of a fully replicated (e.g. scalar metric) array on this host."""
    return np.asarray(x.addressable_data(0))
