"""The forward–backward experiment on images (docs/theory/images.md).

For each start image ``x_0`` and each step ``k`` of a grid: noise it to ``x_k``
(:func:`~rhm_jax.images.diffusion.q_sample`), run the ancestral chain of a denoiser back to
a generated ``x̂_0`` (:func:`~rhm_jax.images.diffusion.reverse_chain`), and compare the two
through a :class:`~rhm_jax.images.probe.Probe`:

* class kept: the probe's argmax on ``x̂_0`` equals its argmax on ``x_0``;
* per layer (pixels first, logits last): the cosine similarity of the flattened whitened
  activations of ``x̂_0`` and ``x_0``, and the L2 distance between them (the pixels'
  cosine is the pixel-level similarity).

Each is averaged over the images, with its standard error, at every ``t = k/K``.

Any :class:`~rhm_jax.images.diffusion.EpsPredictor` runs through the same code: a trained
U-Net (:func:`~rhm_jax.images.unet.unet_predictor`) and the exact references of
:mod:`rhm_jax.images.references`.

Design. Image ``i`` draws its noise and its chain's noise from ``fold_in(key, i)``, the
same at every ``k`` (common random numbers), so results depend neither on the chunking
nor on the device count. The noise levels are folded into the batch (``vmap`` over the
grid, then one row per image and level), and the chain is one ``lax.scan`` over steps in
which every row moves once its own step is reached. Each chunk of images is split over a
``"data"`` device mesh (``jax.shard_map``); sums and sums of squares are reduced across
devices inside the compiled call.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.images.diffusion import EpsPredictor, RespacedSchedule, check_steps, reverse_chain
from rhm_jax.images.probe import Probe, whiten
from rhm_jax.sharding import (DATA_AXIS, auto_axes, batch_sharding, data_mesh, pad_to_multiple,
                              put_global, replicated)
from rhm_jax.validation import check_bool, check_int, check_key

__all__ = ["ImageForwardBackwardResult", "forward_backward", "noised_starts", "to_rows",
           "grid_steps"]


class ImageForwardBackwardResult(NamedTuple):
    """Forward–backward metrics at ``T`` steps for ``n_images`` start images.

    Attributes:
      steps: ``(T,)`` steps ``k``.
      times: ``(T,)`` ``t = k/K``.
      num_steps: ``K``.
      layers: the probe's layer names (pixels first, logits last).
      class_kept: ``(T,)`` fraction of images whose probe class is kept.
      class_kept_se: ``(T,)`` its standard error over images.
      cosine: ``(T, layers)`` mean cosine similarity of whitened activations.
      cosine_se: ``(T, layers)``.
      l2: ``(T, layers)`` mean L2 distance between whitened activations.
      l2_se: ``(T, layers)``.
      n_images: number of start images.
      generated: ``(n_images, T, H, W, C)`` the generated images, when asked for.
    """

    steps: np.ndarray
    times: np.ndarray
    num_steps: int
    layers: tuple
    class_kept: np.ndarray
    class_kept_se: np.ndarray
    cosine: np.ndarray
    cosine_se: np.ndarray
    l2: np.ndarray
    l2_se: np.ndarray
    n_images: int
    generated: np.ndarray | None = None

    @property
    def pixel_cosine(self) -> np.ndarray:
        """``(T,)`` the cosine similarity of the whitened pixels."""
        return self.cosine[:, 0]


def grid_steps(num_steps: int,
               fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) -> np.ndarray:
    """The steps ``k = round(f · K)`` of a grid of fractions ``f`` (default 0.1 … 1.0).

    Examples:
      >>> grid_steps(250).tolist()
      [25, 50, 75, 100, 125, 150, 175, 200, 225, 250]
    """
    num_steps = check_int("num_steps", num_steps, 1)
    fractions = np.asarray(fractions, np.float64)
    if fractions.ndim != 1 or fractions.size == 0 or (fractions <= 0).any() or (fractions > 1).any():
        raise ValueError(f"fractions must be a non-empty 1-d array in (0, 1], got {fractions}")
    return np.maximum(1, np.round(fractions * num_steps)).astype(np.int64)


def _row_metrics(start_acts, generated_acts, num_levels: int):
    """Per image and level: ``[class kept, cosine per layer…, L2 per layer…]``.

    ``start_acts[l]`` is ``(c, …)``, ``generated_acts[l]`` ``(c·T, …)`` (image-major).
    """
    columns = []
    for start, generated in zip(start_acts, generated_acts):
        a = jnp.repeat(start.reshape(start.shape[0], -1), num_levels, axis=0)
        b = generated.reshape(generated.shape[0], -1)
        norms = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
        cosine = jnp.sum(a * b, axis=1) / jnp.maximum(norms, jnp.finfo(a.dtype).tiny)
        columns.append((cosine, jnp.linalg.norm(a - b, axis=1)))
    kept = jnp.argmax(generated_acts[-1], -1) == jnp.repeat(jnp.argmax(start_acts[-1], -1),
                                                            num_levels)
    stats = [kept.astype(jnp.float32)] + [c for c, _ in columns] + [d for _, d in columns]
    return jnp.stack(stats, axis=1)


def _noised(keys, images, steps, schedule):
    """``(x_k (c, T, H, W, C), chain keys (c,))``: every image noised to every step with
    its own ``ε`` (the same at every step), drawn from its key."""
    split = jax.vmap(jax.random.split)(keys)  # (c, 2)
    noise_keys, chain_keys = split[:, 0], split[:, 1]
    noise = jax.vmap(lambda key: jax.random.normal(key, images.shape[1:], images.dtype))(noise_keys)
    alpha_bars = schedule._table(images.dtype)[jnp.asarray(steps, jnp.int32)]

    def at_level(alpha_bar):  # x_k of every image at one level
        return jnp.sqrt(alpha_bar) * images + jnp.sqrt(1.0 - alpha_bar) * noise

    return jnp.swapaxes(jax.vmap(at_level)(alpha_bars), 0, 1), chain_keys


def noised_starts(key: jax.Array, images, steps, schedule: RespacedSchedule) -> jax.Array:
    """``(n, T, H, W, C)``: the noisy images ``x_k`` from which :func:`forward_backward` with
    the same ``key`` starts its chains (for paired comparisons with exact posteriors).

    Examples:
      >>> x = noised_starts(jax.random.key(0), np.zeros((3, 2, 2, 1), "float32"), [1, 5],
      ...                   RespacedSchedule(5))
      >>> x.shape
      (3, 2, 2, 2, 1)
    """
    key = check_key("key", key)
    steps = check_steps("steps", np.asarray(steps), schedule, minimum=1)
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, H, W, C), got shape {images.shape}")
    keys = jax.vmap(partial(jax.random.fold_in, key))(jnp.arange(images.shape[0], dtype=jnp.uint32))
    return _noised(keys, jnp.asarray(images), tuple(int(k) for k in np.asarray(steps)), schedule)[0]


def _chunk(keys, weights, images, eps_params, probe_params, whitening, *, eps_apply,
           probe_apply, schedule, steps, clip, return_images):
    """One device's block: the generated images of every level and the metrics' sums."""
    c = images.shape[0]
    num_levels = len(steps)
    x_k, chain_keys = _noised(keys, images, steps, schedule)
    step_array = jnp.asarray(steps, jnp.int32)
    rows = x_k.reshape((c * num_levels,) + images.shape[1:])
    row_steps = jnp.tile(step_array, c)
    row_keys = jnp.repeat(chain_keys, num_levels)
    generated = reverse_chain(row_keys, partial(eps_apply, eps_params), rows, row_steps,
                              schedule, clip, max_step=max(steps))
    means, seconds = whitening
    start_acts = [whiten(a, m, s) for a, m, s in zip(probe_apply(probe_params, images), means,
                                                      seconds)]
    generated_acts = [whiten(a, m, s) for a, m, s in
                      zip(probe_apply(probe_params, generated), means, seconds)]
    stats = _row_metrics(start_acts, generated_acts, num_levels).reshape(c, num_levels, -1)
    w = weights[:, None, None].astype(stats.dtype)
    sums = jax.lax.psum(jnp.stack([jnp.sum(w * stats, 0), jnp.sum(w * stats * stats, 0)]),
                        DATA_AXIS)
    out = generated.reshape((c, num_levels) + images.shape[1:]) if return_images else None
    return sums, out


_DATA = jax.sharding.PartitionSpec(DATA_AXIS)
_REPLICATED = jax.sharding.PartitionSpec()


@partial(jax.jit, static_argnames=("eps_apply", "probe_apply", "schedule", "steps", "clip",
                                   "return_images", "mesh"))
def _sharded_chunk(keys, weights, images, eps_params, probe_params, whitening, *, eps_apply,
                   probe_apply, schedule, steps, clip, return_images, mesh):
    body = partial(_chunk, eps_apply=eps_apply, probe_apply=probe_apply, schedule=schedule,
                   steps=steps, clip=clip, return_images=return_images)
    return jax.shard_map(body, mesh=mesh,
                         in_specs=(_DATA, _DATA, _DATA, _REPLICATED, _REPLICATED, _REPLICATED),
                         out_specs=(_REPLICATED, _DATA if return_images else _REPLICATED),
                         check_vma=False)(keys, weights, images, eps_params, probe_params,
                                          whitening)


def _check_inputs(key, eps_hat, images, steps, schedule, probe):
    key = check_key("key", key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if not isinstance(eps_hat, EpsPredictor):
        raise TypeError(f"eps_hat must be an EpsPredictor(apply, params) (see "
                        f"rhm_jax.images.unet.unet_predictor and rhm_jax.images.references), "
                        f"got {type(eps_hat).__name__}")
    try:
        hash(eps_hat.apply)
    except TypeError:
        raise TypeError("eps_hat.apply must be hashable (a static argument of jax.jit)") from None
    if not isinstance(schedule, RespacedSchedule):
        raise TypeError(f"schedule must be a RespacedSchedule, got {type(schedule).__name__}")
    if not isinstance(probe, Probe):
        raise TypeError(f"probe must be a Probe (see rhm_jax.images.probe), got "
                        f"{type(probe).__name__}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (n, H, W, C) array, got shape "
                         f"{images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be floating (pixels in [-1, 1]), got dtype {images.dtype}")
    steps = np.asarray(steps)
    if steps.ndim != 1 or steps.size == 0:
        raise ValueError(f"steps must be a non-empty 1-d array of integer steps, got shape "
                         f"{steps.shape}")
    if steps.dtype == np.bool_ or not np.issubdtype(steps.dtype, np.integer):
        raise TypeError(f"steps must be integers, got dtype {steps.dtype}")
    bad = (steps < 1) | (steps > schedule.num_steps)
    if bad.any():
        raise ValueError(f"steps = {int(steps[bad][0])} must be an integer step in [1, K = "
                         f"{schedule.num_steps}]")
    return key, images.astype(np.float32), tuple(int(k) for k in steps)


def forward_backward(key: jax.Array, eps_hat: EpsPredictor, images, steps,
                     schedule: RespacedSchedule, probe: Probe, *, clip: bool = True,
                     chunk_size: int | None = None, max_rows: int = 4096,
                     mesh: jax.sharding.Mesh | None = None, return_images: bool = False,
                     progress: bool = False) -> ImageForwardBackwardResult:
    """Forward–backward with ``eps_hat`` at every step of ``steps``, measured by ``probe``.

    Args:
      key: PRNG key; image ``i`` uses ``fold_in(key, i)`` at every step.
      eps_hat: the denoiser, an :class:`~rhm_jax.images.diffusion.EpsPredictor`.
      images: ``(n, H, W, C)`` start images in ``[-1, 1]``.
      steps: ``(T,)`` integer steps in ``[1, K]`` (e.g. :func:`grid_steps`).
      schedule: the respaced schedule.
      probe: the classifier that measures (with its whitening statistics).
      clip: clip ``x̂_0`` to ``[-1, 1]`` in every reverse step.
      chunk_size: images per compiled call (default ``max_rows // T``, at least one per
        device), rounded up to a multiple of the device count.
      max_rows: bound on images × steps per call (sets the memory of one call).
      mesh: a device mesh with a ``"data"`` axis (default: all devices).
      return_images: also return the generated images.
      progress: show a progress bar over chunks.

    Returns:
      :class:`ImageForwardBackwardResult`.

    Examples:
      >>> from rhm_jax.images.references import memorising_denoiser
      >>> from rhm_jax.images.probe import nearest_neighbour_probe
      >>> train = np.stack([np.full((2, 2, 1), -1.0), np.full((2, 2, 1), 1.0)]).astype("float32")
      >>> sched = RespacedSchedule(20)
      >>> probe = nearest_neighbour_probe(train, np.array([0, 1]), num_classes=2)
      >>> res = forward_backward(jax.random.key(0), memorising_denoiser(train, sched), train,
      ...                        [1, 20], sched, probe)
      >>> res.times.tolist(), float(res.class_kept[0])  # at k = 1 every class survives
      ([0.05, 1.0], 1.0)
    """
    key, images, steps = _check_inputs(key, eps_hat, images, steps, schedule, probe)
    clip, return_images = check_bool("clip", clip), check_bool("return_images", return_images)
    max_rows = check_int("max_rows", max_rows, minimum=1)
    mesh = data_mesh() if mesh is None else auto_axes(mesh)
    devices = mesh.devices.size
    n = images.shape[0]
    if chunk_size is None:
        chunk_size = max(1, max_rows // len(steps))
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    chunk_size = pad_to_multiple(min(chunk_size, pad_to_multiple(n, devices)), devices)
    num_chunks = math.ceil(n / chunk_size)
    replicate = replicated(mesh)
    eps_params, probe_params, whitening = put_global(
        (eps_hat.params, probe.params, (probe.mean, probe.second_moment)), replicate)
    sharding = batch_sharding(mesh)
    totals, generated = None, []
    chunks = range(num_chunks)
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc="forward-backward", unit="chunk", leave=False)
    for chunk in chunks:
        index = chunk * chunk_size + np.arange(chunk_size)
        keys = jax.vmap(partial(jax.random.fold_in, key))(jnp.asarray(index, jnp.uint32))
        weights = (index < n).astype(np.float32)
        block = images[np.minimum(index, n - 1)]
        keys, weights, block = put_global((keys, jnp.asarray(weights), jnp.asarray(block)),
                                          sharding)
        sums, out = _sharded_chunk(keys, weights, block, eps_params, probe_params, whitening,
                                   eps_apply=eps_hat.apply, probe_apply=probe.apply,
                                   schedule=schedule, steps=steps, clip=clip,
                                   return_images=return_images, mesh=mesh)
        sums = np.asarray(sums, np.float64)
        totals = sums if totals is None else totals + sums
        if return_images:
            generated.append(np.asarray(out)[index < n])
    mean = totals[0] / n
    se = np.sqrt(np.maximum(totals[1] / n - mean**2, 0.0) / max(n - 1, 1))
    num_layers = len(probe.layers)
    cos, l2 = slice(1, 1 + num_layers), slice(1 + num_layers, 1 + 2 * num_layers)
    steps_arr = np.asarray(steps)
    return ImageForwardBackwardResult(
        steps_arr, steps_arr / schedule.num_steps, schedule.num_steps, tuple(probe.layers),
        mean[:, 0], se[:, 0], mean[:, cos], se[:, cos], mean[:, l2], se[:, l2], n,
        np.concatenate(generated) if return_images else None)


def to_rows(result: ImageForwardBackwardResult, denoiser: str, **extra) -> list[dict]:
    """Tidy rows, one per step and measurement: ``metric`` is ``class_kept`` (``layer``
    ``None``), ``cosine`` or ``l2`` (per ``layer``); ``value`` and its ``se``.

    Examples:
      >>> res = ImageForwardBackwardResult(np.array([5]), np.array([0.5]), 10, ("pixels",),
      ...     np.array([0.9]), np.array([0.1]), np.array([[0.8]]), np.array([[0.01]]),
      ...     np.array([[2.0]]), np.array([[0.2]]), 30)
      >>> [(r["metric"], r["layer"], r["value"]) for r in to_rows(res, "unet")]
      [('class_kept', None, 0.9), ('cosine', 'pixels', 0.8), ('l2', 'pixels', 2.0)]
    """
    rows = []
    for i, (k, t) in enumerate(zip(result.steps, result.times)):
        base = {"denoiser": denoiser, "t": float(t), "k": int(k), "K": int(result.num_steps),
                "n_images": int(result.n_images)}
        rows.append({**base, "metric": "class_kept", "layer": None,
                     "value": float(result.class_kept[i]), "se": float(result.class_kept_se[i]),
                     **extra})
        for metric, values, errors in (("cosine", result.cosine, result.cosine_se),
                                       ("l2", result.l2, result.l2_se)):
            for j, layer in enumerate(result.layers):
                rows.append({**base, "metric": metric, "layer": layer,
                             "value": float(values[i, j]), "se": float(errors[i, j]), **extra})
    return rows
