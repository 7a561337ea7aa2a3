"""Image data sets for the forward–backward experiment: a fixed train/test split in [-1, 1].

:func:`load_digits` gives scikit-learn's bundled handwritten digits (1,797 images of 8×8
pixels, 10 classes, no download; it needs the ``[images]`` extra); :func:`from_arrays`
takes any labelled images (uint8 in ``[0, 255]`` or floats in ``[0, 1]``, ``NHWC`` or
``NHW``, e.g. CIFAR-10) and prepares them the same way:

* pixels mapped linearly to ``[-1, 1]`` (the DDPM convention), float32, ``NHWC``;
* a seeded split: ``round(test_fraction · N)`` images, chosen by a permutation drawn from
  ``jax.random.key(seed)``, form the test set, the rest the training set (each kept in
  the data's order).

Every argument is checked before any work, with one error naming it, its value and the rule.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from rhm_jax.validation import check_int, describe

__all__ = ["ImageData", "load_digits", "from_arrays"]

#: Largest value of a scikit-learn digits pixel (each is a count of 0..16 on-pixels).
DIGITS_MAX = 16.0


class ImageData(NamedTuple):
    """A labelled image set split into training and test images.

    Attributes:
      train_images: ``(N_train, H, W, C)`` float32 in ``[-1, 1]``.
      train_labels: ``(N_train,)`` int32 in ``[0, num_classes)``.
      test_images: ``(N_test, H, W, C)`` float32 in ``[-1, 1]``.
      test_labels: ``(N_test,)`` int32.
      num_classes: number of classes.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        return tuple(self.train_images.shape[1:])


def _check_fraction(test_fraction) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction = {test_fraction!r} must be a number in (0, 1)")
    return float(test_fraction)


def _normalised_images(images) -> np.ndarray:
    """``images`` checked and mapped to float32 ``NHWC`` in ``[-1, 1]``."""
    if images is None or isinstance(images, (str, bytes, numbers.Number)):
        raise TypeError(f"images must be an array of shape (N, H, W) or (N, H, W, C), got "
                        f"{describe(images)}")
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, C), got shape "
                         f"{images.shape}")
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[0] == 0:
        raise ValueError(f"images is empty (shape {images.shape}): need at least 2 images, "
                         "one for each split")
    if min(images.shape[1:]) == 0:
        raise ValueError(f"images of shape {images.shape} have an empty height, width or "
                         "channel axis")
    if images.dtype == np.uint8:
        return (images.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be uint8 (pixels in [0, 255]) or floating (pixels in "
                        f"[0, 1]), got dtype {images.dtype}")
    bad = ~((images >= 0) & (images <= 1))  # also catches NaN
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"images{list(where)} = {images[where]}: floating pixels must lie in "
                         "[0, 1] (scale them, or pass uint8 pixels in [0, 255])")
    return (2.0 * images.astype(np.float64) - 1.0).astype(np.float32)


def _checked_labels(labels, n: int, num_classes) -> tuple[np.ndarray, int]:
    if labels is None or isinstance(labels, (str, bytes, numbers.Number)):
        raise TypeError(f"labels must be a 1-d integer array, got {describe(labels)}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape (N,) = ({n},) to match images, got shape "
                         f"{labels.shape}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
        num_classes = max(num_classes, 1)
    num_classes = check_int("num_classes", num_classes, minimum=1)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"labels[{i}] = {labels[i]} must lie in [0, num_classes = "
                         f"{num_classes})")
    return labels.astype(np.int32), num_classes


def from_arrays(images, labels, *, num_classes: int | None = None, test_fraction: float = 0.2,
                seed: int = 0) -> ImageData:
    """Labelled images, normalised to ``[-1, 1]`` and split into training and test sets.

    Args:
      images: ``(N, H, W)`` or ``(N, H, W, C)``; uint8 pixels in ``[0, 255]`` or floating
        pixels in ``[0, 1]``.
      labels: ``(N,)`` integers in ``[0, num_classes)``.
      num_classes: the number of classes (default: ``max(labels) + 1``).
      test_fraction: share of the images held out, in (0, 1); both splits must be non-empty.
      seed: seed of the split.

    Returns:
      :class:`ImageData`.

    Raises:
      TypeError: a wrong dtype (images neither uint8 nor floating, labels not integers).
      ValueError: a wrong shape, an out-of-range pixel or label, or an empty split.

    Examples:
      >>> import numpy as np
      >>> x = np.array([[[0, 255]], [[255, 0]], [[0, 0]], [[255, 255]]], np.uint8)  # NHW
      >>> data = from_arrays(x, [0, 1, 0, 1], test_fraction=0.25)
      >>> data.train_images.shape, data.test_images.shape, data.num_classes
      ((3, 1, 2, 1), (1, 1, 2, 1), 2)
      >>> float(data.train_images.min()), float(data.train_images.max())
      (-1.0, 1.0)
    """
    test_fraction = _check_fraction(test_fraction)
    seed = check_int("seed", seed, minimum=0)
    normalised = _normalised_images(images)
    n = normalised.shape[0]
    labels, num_classes = _checked_labels(labels, n, num_classes)
    num_test = int(round(test_fraction * n))
    if not 1 <= num_test <= n - 1:
        raise ValueError(f"test_fraction = {test_fraction} of N = {n} images gives "
                         f"{num_test} test and {n - num_test} training images: both splits "
                         "must be non-empty")
    import jax

    order = np.asarray(jax.random.permutation(jax.random.key(seed), n))
    test = np.sort(order[:num_test])
    train = np.sort(order[num_test:])
    return ImageData(normalised[train], labels[train], normalised[test], labels[test],
                     num_classes)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's handwritten digits: 1,797 images of 8×8 pixels, 10 classes.

    The pixels (counts ``0..16``) are divided by 16, then prepared by :func:`from_arrays`.
    Needs scikit-learn (the ``[images]`` extra); the data ship with it (no download).

    Args:
      test_fraction: share of the images held out.
      seed: seed of the split.

    Returns:
      :class:`ImageData` with images of shape ``(8, 8, 1)``.
    """
    test_fraction = _check_fraction(test_fraction)
    seed = check_int("seed", seed, minimum=0)
    try:
        from sklearn import datasets
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn: install rhm_jax with the "
                          "[images] extra (pip install 'rhm_jax[images]')") from None
    digits = datasets.load_digits()
    images = np.asarray(digits.images, np.float64) / DIGITS_MAX
    return from_arrays(images, np.asarray(digits.target), num_classes=10,
                       test_fraction=test_fraction, seed=seed)


def _fingerprint(array: np.ndarray) -> str:
    """A short content hash of an array (shape, dtype and bytes)."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(str((array.shape, str(array.dtype))).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def fingerprint(data: ImageData) -> str:
    """A content hash of the training and test sets: a stored run refuses other data."""
    parts = [_fingerprint(np.asarray(x)) for x in data[:4]] + [str(data.num_classes)]
    return _fingerprint(np.frombuffer("".join(parts).encode(), np.uint8))

