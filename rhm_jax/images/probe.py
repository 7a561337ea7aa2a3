"""Probe classifiers: named activations from pixels to logits, and their whitening.

A :class:`Probe` is what the forward–backward experiment measures images with: a static
``apply(params, images) -> tuple of activations`` (pixels first, logits last), its
parameters, the layers' names and per-layer whitening statistics computed from clean
images. Its argmax on the logits is the class.

Whitening (the protocol of the paper's authors; docs/theory/images.md). For a layer of
shape ``(n, …, channels)``, per channel over the batch and every spatial position:
``μ = E[a]``, ``m2 = E[a²]`` (the raw second moment, not the variance), and
``a' = (a - μ)/√(m2 + 1e-8)``. The logits get one scalar pair over all their entries.

Two probes:

* :class:`ProbeCNN` — a small convolutional classifier (two 3×3 convolution + ReLU +
  2×2 average-pool stages, a hidden dense layer, the logits), trained on clean training
  images (:func:`rhm_jax.images.train.train_probe`); layers ``pixels, conv1, conv2,
  hidden, logits``.
* :func:`nearest_neighbour_probe` — the 1-nearest-neighbour classifier of a labelled
  image set (logit of class ``c``: minus the squared distance to its nearest image of
  ``c``); layers ``pixels, logits``. Exact on the set's own images, it needs no training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rhm_jax.validation import check_int

__all__ = ["ProbeConfig", "ProbeCNN", "build_probe", "Probe", "classifier_probe",
           "nearest_neighbour_probe", "whitening_stats", "whiten", "WHITENING_EPS"]

#: The constant under the square root of the whitening.
WHITENING_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Shape of a :class:`ProbeCNN`.

    Args:
      channels: channels of the convolution stages (each halves the image; height and
        width must be multiples of ``2**len(channels)``).
      hidden: width of the hidden dense layer.
    """

    channels: tuple[int, ...] = (16, 32)
    hidden: int = 64

    def __post_init__(self):
        if not isinstance(self.channels, (tuple, list)) or not self.channels:
            raise ValueError(f"channels = {self.channels!r} must be a non-empty tuple of "
                             "integers")
        object.__setattr__(self, "channels",
                           tuple(check_int("channels", c, 1) for c in self.channels))
        object.__setattr__(self, "hidden", check_int("hidden", self.hidden, 1))


class ProbeCNN(nnx.Module):
    """A small CNN classifier whose :meth:`activations` name every stage.

    Examples:
      >>> net = nnx.eval_shape(lambda: ProbeCNN(ProbeConfig(), (8, 8, 1), 10, nnx.Rngs(0)))
      >>> net.layers  # shapes (n, 8, 8, 1), (n, 8, 8, 16), (n, 4, 4, 32), (n, 64), (n, 10)
      ('pixels', 'conv1', 'conv2', 'hidden', 'logits')
    """

    def __init__(self, config: ProbeConfig, image_shape, num_classes: int, rngs: nnx.Rngs):
        h, w, c = image_shape
        factor = 2 ** len(config.channels)
        if h % factor or w % factor:
            raise ValueError(f"image_shape = {tuple(image_shape)}: height and width must be "
                             f"multiples of 2**len(channels) = {factor}")
        convs, width = [], c
        for out in config.channels:
            convs.append(nnx.Conv(width, out, kernel_size=(3, 3), padding="SAME", rngs=rngs))
            width = out
        self.convs = nnx.List(convs)
        flat = (h // factor) * (w // factor) * width
        self.hidden = nnx.Linear(flat, config.hidden, rngs=rngs)
        self.readout = nnx.Linear(config.hidden, num_classes, rngs=rngs)
        self.layers = ("pixels",) + tuple(f"conv{i + 1}" for i in range(len(convs))) \
            + ("hidden", "logits")

    def activations(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """Pixels, each convolution stage (after its ReLU, before its pooling), the hidden
        layer (after its ReLU) and the logits."""
        out = [x]
        h = x
        for conv in self.convs:
            h = nnx.relu(conv(h))
            out.append(h)
            h = nnx.avg_pool(h, window_shape=(2, 2), strides=(2, 2))
        h = nnx.relu(self.hidden(h.reshape(h.shape[0], -1)))
        out.append(h)
        out.append(self.readout(h))
        return tuple(out)

    def __call__(self, x: jax.Array) -> jax.Array:
        """The logits."""
        return self.activations(x)[-1]


def build_probe(config: ProbeConfig, image_shape, num_classes: int, seed: int) -> ProbeCNN:
    """A :class:`ProbeCNN` for ``(H, W, C)`` images and ``num_classes`` classes."""
    if not isinstance(config, ProbeConfig):
        raise TypeError(f"config must be a ProbeConfig, got {type(config).__name__}")
    from rhm_jax.images.unet import jit_build

    num_classes = check_int("num_classes", num_classes, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    image_shape = tuple(check_int("image_shape", x, 1) for x in image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape = {image_shape} must be (H, W, C)")
    return jit_build(ProbeCNN, config, image_shape, num_classes, seed=seed)


class Probe(NamedTuple):
    """A classifier seen through its layers, with the whitening of each.

    Attributes:
      apply: ``apply(params, images) -> tuple of activations``, pixels first and logits
        last (static and hashable).
      params: its parameters (any pytree).
      layers: the activations' names.
      mean: per layer, ``μ`` (``(channels,)``; a scalar for the logits).
      second_moment: per layer, ``m2`` (same shapes).
    """

    apply: Callable[[Any, jax.Array], tuple]
    params: Any
    layers: tuple[str, ...]
    mean: tuple
    second_moment: tuple

    def activations(self, images: jax.Array) -> tuple[jax.Array, ...]:
        return self.apply(self.params, images)

    def whitened(self, images: jax.Array) -> tuple[jax.Array, ...]:
        """The activations of ``images``, each whitened with its layer's statistics."""
        return tuple(whiten(a, m, s) for a, m, s in
                     zip(self.activations(images), self.mean, self.second_moment))

    def classify(self, images: jax.Array) -> jax.Array:
        """``(n,)`` argmax of the logits."""
        return jnp.argmax(self.activations(images)[-1], axis=-1)


def whiten(activation, mean, second_moment):
    """``(a - μ)/√(m2 + 1e-8)``, the statistics broadcast over the channel (last) axis."""
    return (activation - mean) / jnp.sqrt(second_moment + WHITENING_EPS)


def _channel_sums(activation: jax.Array, is_logits: bool):
    """Sums of ``a`` and ``a²`` over every axis but the channel (last) one; over all axes
    for the logits."""
    axes = tuple(range(activation.ndim)) if is_logits else tuple(range(activation.ndim - 1))
    return jnp.sum(activation, axis=axes), jnp.sum(jnp.square(activation), axis=axes)


def whitening_stats(apply, params, images, *, batch_size: int = 512):
    """Per-layer ``(μ, m2)`` of the activations of clean ``images`` (see the module
    docstring); the last layer (logits) gets scalars. Accumulated in batches."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape "
                         f"{images.shape}")
    batch_size = check_int("batch_size", batch_size, minimum=1)

    @jax.jit
    def sums(params, batch):
        acts = apply(params, batch)
        return [_channel_sums(a, i == len(acts) - 1) for i, a in enumerate(acts)]

    totals = None
    for start in range(0, len(images), batch_size):
        part = jax.tree.map(lambda x: np.asarray(x, np.float64),
                            sums(params, jnp.asarray(images[start:start + batch_size])))
        totals = part if totals is None else jax.tree.map(np.add, totals, part)
    shapes = jax.eval_shape(apply, params, jnp.asarray(images[:1]))
    means, seconds = [], []
    for i, ((first, second), shape) in enumerate(zip(totals, shapes)):
        per_image = np.prod(shape.shape[1:]) if i == len(shapes) - 1 \
            else np.prod(shape.shape[1:-1], dtype=np.int64)
        count = len(images) * per_image
        means.append(jnp.asarray(first / count, jnp.float32))
        seconds.append(jnp.asarray(second / count, jnp.float32))
    return tuple(means), tuple(seconds)


@dataclasses.dataclass(frozen=True)
class _NNXActivations:
    """``apply(params, images)`` of an NNX model with an ``activations`` method."""

    graphdef: Any

    def __call__(self, params, images):
        return nnx.merge(self.graphdef, params).activations(images)


def classifier_probe(model: ProbeCNN, clean_images, *, batch_size: int = 512) -> Probe:
    """A trained :class:`ProbeCNN` as a :class:`Probe`, whitened on ``clean_images``."""
    if not hasattr(model, "activations") or not hasattr(model, "layers"):
        raise TypeError(f"model must have activations() and layers (a ProbeCNN), got "
                        f"{type(model).__name__}")
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    apply = _NNXActivations(graphdef)
    mean, second = whitening_stats(apply, params, clean_images, batch_size=batch_size)
    return Probe(apply, params, tuple(model.layers), mean, second)


def _nearest_neighbour_activations(params, images):
    references, onehot = params
    x = images.reshape(images.shape[0], -1)
    sq = (jnp.sum(x * x, 1)[:, None] - 2 * jnp.matmul(x, references.T,
                                                      precision=jax.lax.Precision.HIGHEST)
          + jnp.sum(references * references, 1)[None])
    # per class, minus the distance to its nearest reference
    logits = jnp.max(jnp.where(onehot.T[None], -sq[:, None, :], -jnp.inf), axis=-1)
    return images, logits


def nearest_neighbour_probe(images, labels, num_classes: int, clean_images=None) -> Probe:
    """The 1-nearest-neighbour classifier of ``(images, labels)`` as a :class:`Probe`.

    Args:
      images: ``(N, H, W, C)`` reference images.
      labels: ``(N,)`` their classes in ``[0, num_classes)``.
      num_classes: number of classes.
      clean_images: images for the whitening statistics (default: ``images``).

    Examples:
      >>> refs = np.stack([np.full((2, 2, 1), -1.0), np.full((2, 2, 1), 1.0)]).astype("float32")
      >>> probe = nearest_neighbour_probe(refs, np.array([1, 0]), num_classes=2)
      >>> probe.classify(jnp.full((3, 2, 2, 1), 0.4)).tolist(), probe.layers
      ([0, 0, 0], ('pixels', 'logits'))
    """
    images = np.asarray(images, np.float32)
    num_classes = check_int("num_classes", num_classes, minimum=1)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[0] == 0 or labels.shape != images.shape[:1]:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array with (N,) labels, "
                         f"got shapes {images.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 \
            or labels.max() >= num_classes:
        raise ValueError(f"labels must be integers in [0, num_classes = {num_classes})")
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"labels has no image of class {missing[0]}: every class in "
                         f"[0, num_classes = {num_classes}) needs a reference image")
    params = (jnp.asarray(images.reshape(len(images), -1)),
              jnp.asarray(np.eye(num_classes, dtype=bool)[labels]))
    apply = _nearest_neighbour_activations
    clean = images if clean_images is None else clean_images
    mean, second = whitening_stats(apply, params, clean)
    return Probe(apply, params, ("pixels", "logits"), mean, second)
