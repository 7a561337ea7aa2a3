"""Data-parallel scale-out on JAX's own sharding machinery.

Every batch-heavy function in rhm_jax is written batch-first with per-datum PRNG keys, so
placing the batch axis on a one-axis device mesh (``jax.make_mesh`` + ``NamedSharding``)
is all it takes: ``jax.jit`` partitions the computation, and results do not depend on the
number of devices (same keys, same draws).

Multi-host: call :func:`initialize_distributed` (a thin wrapper of
``jax.distributed.initialize``) at the start of every process; :func:`data_mesh` then spans
all devices of all processes, and only process 0 should write files (:func:`is_main_process`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A one-axis mesh named ``"data"`` over the first ``num_devices`` devices (all by default).

    Examples:
      >>> mesh = data_mesh(1)
      >>> mesh.axis_names
      ('data',)
    """
    available = jax.device_count()
    if num_devices is None:
        num_devices = available
    if not 1 <= num_devices <= available:
        raise ValueError(f"num_devices = {num_devices} must be in [1, {available}] "
                         "(the number of available devices)")
    devices = jax.devices()[:num_devices]
    # Auto axes: jit's partitioner propagates the batch sharding through every op (newer
    # JAX defaults make_mesh to Explicit axes, which would demand typed shardings everywhere).
    return jax.make_mesh((num_devices,), (DATA_AXIS,), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 1, batch_axis: int = 0) -> NamedSharding:
    """Sharding that splits axis ``batch_axis`` of an ``ndim``-array over the data axis."""
    spec = [None] * ndim
    spec[batch_axis] = DATA_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(tree, mesh: jax.sharding.Mesh, batch_axis: int = 0):
    """Place every array of ``tree`` with its ``batch_axis`` split over the mesh."""
    size = mesh.devices.size

    def place(x):
        if x.shape[batch_axis] % size:
            raise ValueError(f"batch size {x.shape[batch_axis]} is not a multiple of the "
                             f"{size} devices of the mesh; pad it (see pad_to_multiple)")
        return jax.device_put(x, batch_sharding(mesh, x.ndim, batch_axis))

    return jax.tree.map(place, tree)


def pad_to_multiple(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-int(n) // int(multiple)) * int(multiple)


def initialize_distributed(**kwargs) -> None:
    """Start multi-process JAX (``jax.distributed.initialize``) when asked to.

    Reads ``RHM_JAX_COORDINATOR``, ``RHM_JAX_NUM_PROCESSES`` and ``RHM_JAX_PROCESS_ID`` from
    the environment unless given as keyword arguments; does nothing when neither is set (on
    TPU pods and SLURM, ``jax.distributed.initialize()`` with no arguments also works).
    """
    env = {"coordinator_address": os.environ.get("RHM_JAX_COORDINATOR"),
           "num_processes": os.environ.get("RHM_JAX_NUM_PROCESSES"),
           "process_id": os.environ.get("RHM_JAX_PROCESS_ID")}
    env = {k: (int(v) if k != "coordinator_address" else v) for k, v in env.items() if v}
    env.update(kwargs)
    if env:
        jax.distributed.initialize(**env)


def is_main_process() -> bool:
    """True on the process that writes results (process 0)."""
    return jax.process_index() == 0


def gather_to_host(x) -> np.ndarray:
    """A (possibly multi-process, sharded) array as one host NumPy array on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
