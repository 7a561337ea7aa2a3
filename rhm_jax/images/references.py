"""Exact denoisers of a finite image set: what the network is compared with (docs/theory/images.md).

Both are :class:`~rhm_jax.images.diffusion.EpsPredictor` s, so they run through the same
forward–backward code as a trained network. Each computes ``E[x_0 | x_k]`` exactly for its
model of the data and returns Tweedie's ``ε̂ = (x_k - √ᾱ_k E[x_0|x_k])/√(1-ᾱ_k)``.

* :func:`memorising_denoiser` — the empirical distribution of the training images
  ``{x^μ}``: ``E[x_0 | x_k] = Σ_μ w_μ x^μ`` with ``w_μ ∝ exp(-‖x_k - √ᾱ_k x^μ‖²/(2(1-ᾱ_k)))``,
  the minimiser of the DDPM loss on the training set (a network that memorises tracks it).
* :func:`gaussian_denoiser` — one Gaussian ``N(m_c, Σ_c)`` per class, fitted to the class's
  training images (``Σ_c`` their covariance plus ``ridge · I``), mixed with the classes'
  frequencies: ``E[x_0 | x_k] = Σ_c p(c | x_k) (m_c + √ᾱ Σ_c (ᾱΣ_c + (1-ᾱ)I)^{-1}
  (x_k - √ᾱ m_c))``, with ``p(c | x_k) ∝ π_c N(x_k; √ᾱ m_c, ᾱΣ_c + (1-ᾱ)I)``: a
  posterior-weighted mixture of Wiener filters (smooth, generalising, no hierarchy).

Both sums run as a streaming log-sum-exp over chunks (training images, or classes), so
memory is bounded by one chunk whatever the training set's size.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.images.diffusion import EpsPredictor, RespacedSchedule, check_steps
from rhm_jax.validation import check_int

__all__ = ["memorising_denoiser", "gaussian_denoiser", "memorising_log_weights",
           "posterior_mean", "tweedie_eps"]

_HIGHEST = jax.lax.Precision.HIGHEST


def tweedie_eps(x_k: jax.Array, x0_mean: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """``ε̂ = (x_k - √ᾱ E[x_0|x_k])/√(1-ᾱ)`` (``alpha_bar`` per image or scalar)."""
    alpha_bar = jnp.asarray(alpha_bar, x_k.dtype).reshape((-1,) + (1,) * (x_k.ndim - 1))
    return (x_k - jnp.sqrt(alpha_bar) * x0_mean) / jnp.sqrt(1.0 - alpha_bar)


def _online_mixture(step, chunks, n: int, dim: int, dtype):
    """``Σ_j softmax(logits)_j v_j`` over every chunk, streamed (one chunk in memory).

    ``step(chunk) -> (logits (n, m), combine)``, ``combine(weights (n, m)) -> (n, dim)``
    the weights' sum of the chunk's values. Returns ``(mean (n, dim), logsumexp (n,))``.
    """
    def body(carry, chunk):
        running_max, total, acc = carry
        logits, combine = step(chunk)
        new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
        scale = jnp.exp(running_max - new_max)
        weights = jnp.exp(logits - new_max[:, None])
        return (new_max, total * scale + jnp.sum(weights, axis=1),
                acc * scale[:, None] + combine(weights)), None

    init = (jnp.full((n,), -jnp.inf, dtype), jnp.zeros((n,), dtype), jnp.zeros((n, dim), dtype))
    (running_max, total, acc), _ = jax.lax.scan(body, init, chunks)
    return acc / total[:, None], running_max + jnp.log(total)


# ---- memorising (empirical) ----------------------------------------------------------------
def _memorising_chunks(train_images: np.ndarray, chunk_size: int):
    """Training images flattened to ``(chunks, chunk_size, D)`` plus a validity mask."""
    flat = np.asarray(train_images, np.float32).reshape(len(train_images), -1)
    n, dim = flat.shape
    chunk_size = min(chunk_size, n)
    num_chunks = -(-n // chunk_size)
    padded = np.zeros((num_chunks * chunk_size, dim), np.float32)
    padded[:n] = flat
    valid = np.arange(num_chunks * chunk_size) < n
    return (jnp.asarray(padded.reshape(num_chunks, chunk_size, dim)),
            jnp.asarray(valid.reshape(num_chunks, chunk_size)))


def _memorising_logits(x, alpha_bar, images, valid):
    """``log w_μ`` up to a per-row constant: ``(√ᾱ x·x^μ - ᾱ‖x^μ‖²/2)/(1-ᾱ)`` (the
    ``‖x‖²`` term is common to every ``μ``; leaving it out avoids its cancellation)."""
    dot = jnp.matmul(x, images.T, precision=_HIGHEST)
    half_sq = 0.5 * jnp.sum(jnp.square(images), axis=1)
    logits = (jnp.sqrt(alpha_bar)[:, None] * dot - alpha_bar[:, None] * half_sq[None]) \
        / (1.0 - alpha_bar)[:, None]
    return jnp.where(valid[None], logits, -jnp.inf)


def _memorising_mean(params, x, alpha_bar):
    images, valid = params

    def step(chunk):
        chunk_images, chunk_valid = chunk
        logits = _memorising_logits(x, alpha_bar, chunk_images, chunk_valid)
        return logits, lambda w: jnp.matmul(w, chunk_images, precision=_HIGHEST)

    return _online_mixture(step, (images, valid), x.shape[0], x.shape[1], x.dtype)


@dataclasses.dataclass(frozen=True)
class _Memorising:
    """``apply(params, x_k, k)`` of the memorising denoiser (hashable: static for jit)."""

    schedule: RespacedSchedule

    def __call__(self, params, x_k, k):
        alpha_bar = self.schedule._table(x_k.dtype)[k]
        mean, _ = _memorising_mean(params, x_k.reshape(x_k.shape[0], -1), alpha_bar)
        return tweedie_eps(x_k, mean.reshape(x_k.shape), alpha_bar)


def memorising_denoiser(train_images, schedule: RespacedSchedule, *,
                        chunk_size: int = 2048) -> EpsPredictor:
    """The Bayes denoiser of the empirical distribution of ``train_images``.

    Args:
      train_images: ``(N, H, W, C)`` images (``N >= 1``).
      schedule: the respaced schedule (``ᾱ_k`` of the steps it is called with).
      chunk_size: training images per streamed chunk.

    Returns:
      :class:`~rhm_jax.images.diffusion.EpsPredictor` (its ``params`` hold the images).

    Examples:
      >>> import numpy as np
      >>> train = np.stack([np.full((2, 2, 1), -1.0), np.full((2, 2, 1), 1.0)]).astype("float32")
      >>> eps = memorising_denoiser(train, RespacedSchedule(10))
      >>> x_k = jnp.full((1, 2, 2, 1), 0.3)  # closer to the second image's √ᾱ x^μ
      >>> x0 = posterior_mean(eps, x_k, jnp.array([5]), RespacedSchedule(10))
      >>> bool(0 < x0[0, 0, 0, 0] <= 1)
      True
    """
    train_images = _check_image_set("train_images", train_images)
    if not isinstance(schedule, RespacedSchedule):
        raise TypeError(f"schedule must be a RespacedSchedule, got {type(schedule).__name__}")
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    return EpsPredictor(_Memorising(schedule), _memorising_chunks(train_images, chunk_size))


def memorising_log_weights(train_images, x_k, k, schedule: RespacedSchedule) -> jax.Array:
    """``(n, N)`` normalised ``log w_μ`` of the memorising posterior over training images.

    ``p(x_0 = x^μ | x_k) = w_μ ∝ exp(-‖x_k - √ᾱ_k x^μ‖²/(2(1-ᾱ_k)))`` (uniform prior).
    """
    train_images = _check_image_set("train_images", train_images)
    k = check_steps("k", k, schedule, minimum=1)
    flat = jnp.asarray(train_images.reshape(len(train_images), -1))
    x = jnp.asarray(x_k).reshape(jnp.shape(x_k)[0], -1)
    alpha_bar = jnp.broadcast_to(schedule._table(x.dtype)[k], x.shape[:1])
    logits = _memorising_logits(x, alpha_bar, flat, jnp.ones(flat.shape[0], bool))
    return logits - jax.scipy.special.logsumexp(logits, axis=1, keepdims=True)


# ---- class-conditional Gaussian --------------------------------------------------------------
def _gaussian_class_terms(x, alpha_bar, mean, eigvecs, eigvals, log_prior):
    """Per class: ``log π_c + log N(x; √ᾱ m_c, ᾱΣ_c + (1-ᾱ)I)`` and the Wiener filter's
    ``E[x_0 | x, c]``, in the eigenbasis of ``Σ_c = U diag(λ) Uᵀ``."""
    root = jnp.sqrt(alpha_bar)[:, None]
    centred = x - root * mean[None]
    z = jnp.matmul(centred, eigvecs, precision=_HIGHEST)  # (n, D) = Uᵀ y per row
    variance = alpha_bar[:, None] * eigvals[None] + (1.0 - alpha_bar)[:, None]
    dim = x.shape[1]
    log_density = (-0.5 * jnp.sum(z * z / variance, axis=1)
                   - 0.5 * jnp.sum(jnp.log(variance), axis=1) - 0.5 * dim * math.log(2 * math.pi))
    filtered = jnp.matmul(root * eigvals[None] / variance * z, eigvecs.T, precision=_HIGHEST)
    return log_prior + log_density, mean[None] + filtered


def _gaussian_mean(params, x, alpha_bar):
    def step(chunk):
        logits, mean = _gaussian_class_terms(x, alpha_bar, *chunk)
        return logits[:, None], lambda w: w * mean

    return _online_mixture(step, params, x.shape[0], x.shape[1], x.dtype)


@dataclasses.dataclass(frozen=True)
class _Gaussian:
    """``apply(params, x_k, k)`` of the class-conditional Gaussian denoiser (hashable)."""

    schedule: RespacedSchedule

    def __call__(self, params, x_k, k):
        alpha_bar = self.schedule._table(x_k.dtype)[k]
        mean, _ = _gaussian_mean(params, x_k.reshape(x_k.shape[0], -1), alpha_bar)
        return tweedie_eps(x_k, mean.reshape(x_k.shape), alpha_bar)


def fit_class_gaussians(train_images, train_labels, ridge: float = 1e-3):
    """``(means (C, D), eigvecs (C, D, D), eigvals (C, D), log_priors (C,))`` of the
    classes present in ``train_labels``: maximum-likelihood mean and covariance (plus
    ``ridge · I``) in float64, then float32."""
    train_images = _check_image_set("train_images", train_images)
    labels = np.asarray(train_labels)
    if labels.shape != (len(train_images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"train_labels must be ({len(train_images)},) integers matching "
                         f"train_images, got {labels.dtype} array of shape {labels.shape}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge > 0 \
            or not math.isfinite(ridge):
        raise ValueError(f"ridge = {ridge!r} must be a finite number > 0")
    flat = np.asarray(train_images, np.float64).reshape(len(train_images), -1)
    means, vecs, vals, log_priors = [], [], [], []
    for c in np.unique(labels):
        members = flat[labels == c]
        mean = members.mean(axis=0)
        centred = members - mean
        covariance = centred.T @ centred / len(members) + ridge * np.eye(flat.shape[1])
        eigvals, eigvecs = np.linalg.eigh(covariance)
        means.append(mean)
        vecs.append(eigvecs)
        vals.append(eigvals)
        log_priors.append(math.log(len(members) / len(flat)))
    return tuple(jnp.asarray(np.stack(a), jnp.float32) for a in (means, vecs, vals, log_priors))


def gaussian_denoiser(train_images, train_labels, schedule: RespacedSchedule, *,
                      ridge: float = 1e-3) -> EpsPredictor:
    """The Bayes denoiser of a mixture of one fitted Gaussian per class.

    Args:
      train_images: ``(N, H, W, C)`` images.
      train_labels: ``(N,)`` their classes (absent classes get no component).
      schedule: the respaced schedule.
      ridge: added to every class covariance's diagonal (pixel units of ``[-1, 1]``).

    Returns:
      :class:`~rhm_jax.images.diffusion.EpsPredictor`.
    """
    if not isinstance(schedule, RespacedSchedule):
        raise TypeError(f"schedule must be a RespacedSchedule, got {type(schedule).__name__}")
    return EpsPredictor(_Gaussian(schedule), fit_class_gaussians(train_images, train_labels,
                                                                 ridge))


# ---- shared ----------------------------------------------------------------------------
def posterior_mean(eps_hat, x_k, k, schedule: RespacedSchedule) -> jax.Array:
    """``E[x_0 | x_k]`` implied by a denoiser: ``(x_k - √(1-ᾱ_k) ε̂)/√ᾱ_k`` (no clipping)."""
    from rhm_jax.images.diffusion import predict_x0

    k = jnp.broadcast_to(check_steps("k", k, schedule, minimum=1), jnp.shape(x_k)[:1])
    return predict_x0(x_k, k, eps_hat(x_k, k), schedule, clip=False)


def _check_image_set(name: str, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, H, W, C) array, got shape "
                         f"{images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"{name} must be floating (pixels in [-1, 1]), got dtype {images.dtype}")
    return images
