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

from rhm_jax.validation import check_int

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
    num_devices = check_int("num_devices", num_devices)
    if not 1 <= num_devices <= available:
        raise ValueError(f"num_devices = {num_devices} must be in [1, {available}] "
                         "(the number of available devices)")
    devices = jax.devices()[:num_devices]
    # Auto axes: jit's partitioner propagates the batch sharding through every op (newer
    # JAX defaults make_mesh to Explicit axes, which would demand typed shardings everywhere).
    return jax.make_mesh((num_devices,), (DATA_AXIS,), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def auto_axes(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
    """The same devices and axis names with every axis in auto mode, checked for a
    ``"data"`` axis.

    A user's mesh from ``jax.make_mesh`` has explicit axes by default; the experiment
    drivers place their batch on it and let ``jit`` propagate the sharding, which needs
    auto axes.

    Examples:
      >>> auto_axes(jax.make_mesh((1,), ("data",))).axis_types[0] == jax.sharding.AxisType.Auto
      True
    """
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh has axes {tuple(mesh.axis_names)}; the batch is sharded over "
                         f"an axis named {DATA_AXIS!r} (see rhm_jax.sharding.data_mesh)")
    return jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                             axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 1, batch_axis: int = 0) -> NamedSharding:
    """Sharding that splits axis ``batch_axis`` of an ``ndim``-array over the data axis."""
    ndim = check_int("ndim", ndim, minimum=1)
    batch_axis = check_int("batch_axis", batch_axis, minimum=-ndim, maximum=ndim - 1)
    spec = [None] * ndim
    spec[batch_axis] = DATA_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def put_global(tree, sharding: jax.sharding.Sharding):
    """``jax.device_put(tree, sharding)`` that also works across processes.

    Every process must pass the same host values. In multi-process JAX, ``device_put`` onto
    a sharding that spans other processes' devices refuses typed PRNG key arrays (JAX
    0.10), so keys travel as their raw ``key_data`` and are re-wrapped on arrival.
    Single-process, this is exactly ``jax.device_put``.

    Examples:
      >>> mesh = data_mesh(1)
      >>> keys = put_global(jax.random.split(jax.random.key(0), 4), batch_sharding(mesh))
      >>> keys.shape, keys.sharding == batch_sharding(mesh)
      ((4,), True)
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(place, tree)


def shard_batch(tree, mesh: jax.sharding.Mesh, batch_axis: int = 0):
    """Place every array of ``tree`` with its ``batch_axis`` split over the mesh."""
    size = mesh.devices.size

    def place(x):
        if x.shape[batch_axis] % size:
            raise ValueError(f"batch size {x.shape[batch_axis]} is not a multiple of the "
                             f"{size} devices of the mesh; pad it (see pad_to_multiple)")
        return put_global(x, batch_sharding(mesh, x.ndim, batch_axis))

    return jax.tree.map(place, tree)


def pad_to_multiple(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n`` (``n >= 0``, ``multiple >= 1``).

    Examples:
      >>> pad_to_multiple(5, 4), pad_to_multiple(0, 4)
      (8, 0)
    """
    n = check_int("n", n, minimum=0)
    multiple = check_int("multiple", multiple, minimum=1)
    return -(-n // multiple) * multiple


_ENV = {"coordinator_address": "RHM_JAX_COORDINATOR",
        "num_processes": "RHM_JAX_NUM_PROCESSES",
        "process_id": "RHM_JAX_PROCESS_ID"}


def initialize_distributed(**kwargs) -> bool:
    """Start multi-process JAX (``jax.distributed.initialize``) when asked to.

    Reads ``RHM_JAX_COORDINATOR`` (``host:port`` of process 0), ``RHM_JAX_NUM_PROCESSES``
    and ``RHM_JAX_PROCESS_ID`` (``0 .. N-1``) from the environment unless given as keyword
    arguments (which go to ``jax.distributed.initialize``); does nothing when none is set.
    On TPU pods and SLURM, call ``jax.distributed.initialize()`` yourself instead (it
    auto-detects all three). Must run before any JAX computation. On CPU, cross-process
    collectives use gloo (set here unless ``jax_cpu_collectives_implementation`` is set).

    Returns:
      True when this call started multi-process JAX, False otherwise (nothing asked, or
      already started).
    """
    settings = {}
    for arg, name in _ENV.items():
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        if arg == "coordinator_address":
            settings[arg] = value
            continue
        try:
            settings[arg] = int(value)
        except ValueError:
            raise ValueError(f"{name} = {value!r} must be an integer") from None
    settings.update(kwargs)
    if not settings:
        return False
    missing = [_ENV[arg] for arg in _ENV if settings.get(arg) is None]
    if missing:
        raise ValueError(f"multi-process JAX needs {', '.join(_ENV.values())} all set; "
                         f"missing: {', '.join(missing)}")
    num, pid = settings["num_processes"], settings["process_id"]
    if num < 1 or not 0 <= pid < num:
        raise ValueError(f"need RHM_JAX_NUM_PROCESSES >= 1 and 0 <= RHM_JAX_PROCESS_ID < "
                         f"RHM_JAX_NUM_PROCESSES; got {num} and {pid}")
    if jax.distributed.is_initialized():
        return False  # already initialised (by us or by the caller)
    if jax.config.jax_cpu_collectives_implementation is None:
        # Older JAX had no CPU cross-process collectives by default; JAX 0.10 uses gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**settings)
    return True


def is_main_process() -> bool:
    """True on the process that writes results (process 0)."""
    return jax.process_index() == 0


def gather_to_host(x) -> np.ndarray:
    """A (possibly multi-process, sharded) array as one host NumPy array on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
