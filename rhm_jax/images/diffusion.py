"""Gaussian diffusion of images in discrete steps: DDPM's schedule respaced to ``K`` steps,
the noising ``q_sample``, the ε-prediction loss and the ancestral reverse chain.

Schedule (:class:`RespacedSchedule`). The base is :class:`~rhm_jax.schedules.LinearBeta`
(DDPM: β from 1e-4 to 0.02 over T = 1000). Respacing keeps ``K`` of its steps, evenly
spread with a fractional stride (the rule of ADM's ``space_timesteps``): step
``k = 1 … K`` is base step ``s_k = 1 + round((k - 1)(T - 1)/(K - 1))`` (``s_K = T``; ``s_1
= T`` when ``K = 1``). The respaced chain has ``ᾱ_k = ᾱ^base_{s_k}`` at the kept steps,
``ᾱ_0 = 1``, and its β are recomputed from consecutive ``ᾱ``:
``β_k = 1 - ᾱ_k/ᾱ_{k-1}``.

A denoiser is any function ``eps_hat(x_k, k)`` of the noisy images ``x_k`` ``(n, H, W, C)``
and their integer steps ``k`` ``(n,)``; networks see the time ``s_k / T`` (the base
step's fraction, so one network serves any ``K``).

Forward–backward convention (docs/theory/images.md). At step ``k`` this module noises
``x_0`` to ``x_k = √ᾱ_k x_0 + √(1-ᾱ_k) ε`` and runs the reverse chain at steps ``k, k-1,
…, 1`` (``k`` denoiser calls), so the first reverse step treats its input at the noise
level it has. The authors' code (ADM's zero-based step index) noises to the next step,
``ᾱ_{k+1}`` in our numbering, and runs the same ``k`` reverse steps: its first step
treats a sample as one step less noisy than it is (a shift of ``1/K`` in ``t``), and at
``k = K`` it starts from pure noise ``N(0, I)`` where we noise to ``ᾱ_K`` (``√ᾱ_K = 0.0064``
for the DDPM schedule at any ``K``).

Reverse step (DDPM, fixed "small" variance). From ``ε̂ = eps_hat(x_k, k)``:
``x̂_0 = (x_k - √(1-ᾱ_k) ε̂)/√ᾱ_k``, clipped to ``[-1, 1]`` unless ``clip=False`` (ADM's
``clip_denoised``), then ``x_{k-1} ~ N(μ̃_k, β̃_k I)`` with the posterior
``q(x_{k-1} | x_k, x̂_0)``: ``μ̃_k = √ᾱ_{k-1} β_k/(1-ᾱ_k) x̂_0 + √(1-β_k)(1-ᾱ_{k-1})/(1-ᾱ_k)
x_k`` and ``β̃_k = β_k (1-ᾱ_{k-1})/(1-ᾱ_k)``. With the exact ``E[x_0 | x_k]`` the mean is
the exact ``E[x_{k-1} | x_k]``; the Gaussian form is exact only as ``K → ∞``. The last
step (``k = 1``, ``β̃_1 = 0``) returns ``x̂_0`` itself.

References:
  Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
  Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.schedules import LinearBeta
from rhm_jax.validation import check_bool, check_int, check_key

__all__ = ["RespacedSchedule", "EpsPredictor", "q_sample", "ddpm_loss", "predict_x0", "reverse_step",
           "reverse_chain", "check_steps"]

#: ``eps_hat(x_k, k) -> ε̂``: noisy images ``(n, H, W, C)`` and their ``(n,)`` integer steps.
EpsFunction = Callable[[jax.Array, jax.Array], jax.Array]


class EpsPredictor(NamedTuple):
    """A denoiser as a static function and its parameters: ``apply(params, x_k, k) -> ε̂``.

    ``apply`` must be hashable (it is a static argument of ``jax.jit``: pass the same
    object to reuse the compiled program) and traceable; ``params`` is any pytree (it is
    replicated over the devices). Calling the tuple, ``predictor(x_k, k)``, is the
    ``eps_hat(x_k, k)`` of this module's functions.
    """

    apply: Callable[[Any, jax.Array, jax.Array], jax.Array]
    params: Any

    def __call__(self, x_k: jax.Array, k: jax.Array) -> jax.Array:
        return self.apply(self.params, x_k, k)


@functools.lru_cache(maxsize=32)
def _tables(base: LinearBeta, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept base steps (K,), ᾱ (K+1,) float64 with ᾱ_0 = 1)``; cached per schedule."""
    T = base.T
    if num_steps == 1:
        kept = np.array([T])
    else:
        stride = (T - 1) / (num_steps - 1)
        kept = 1 + np.round(np.arange(num_steps) * stride).astype(np.int64)
    log_alpha_bar = base._log_alpha_bar_table()
    alpha_bar = np.exp(np.concatenate([[0.0], log_alpha_bar[kept]]))
    kept.setflags(write=False)
    alpha_bar.setflags(write=False)
    return kept, alpha_bar


@dataclasses.dataclass(frozen=True)
class RespacedSchedule:
    """A :class:`~rhm_jax.schedules.LinearBeta` schedule respaced to ``num_steps`` steps.

    Hashable (a static argument of ``jax.jit``). See the module docstring for the rule.

    Args:
      num_steps: ``K``, in ``[1, base.T]``.
      base: the schedule respaced (default DDPM's: β from 1e-4 to 0.02, T = 1000).

    Examples:
      >>> sched = RespacedSchedule(250)
      >>> sched.kept_steps()[:3].tolist(), int(sched.kept_steps()[-1])
      ([1, 5, 9], 1000)
      >>> round(float(sched.alpha_bar(250)), 7) == round(float(LinearBeta().alpha_bar_at_step(1000)), 7)
      True
      >>> float(sched.alpha_bar(0)), round(float(sched.beta(1)), 6)
      (1.0, 0.0001)
    """

    num_steps: int = 250
    base: LinearBeta = LinearBeta()

    def __post_init__(self):
        if not isinstance(self.base, LinearBeta):
            raise TypeError(f"base must be a LinearBeta schedule, got {type(self.base).__name__}")
        object.__setattr__(self, "num_steps",
                           check_int("num_steps", self.num_steps, 1, self.base.T))

    def kept_steps(self) -> np.ndarray:
        """``(K,)`` base steps ``s_1 … s_K`` kept by the respacing."""
        return _tables(self.base, self.num_steps)[0]

    def alpha_bars(self) -> np.ndarray:
        """``(K+1,)`` float64 ``ᾱ_0 = 1, ᾱ_1 … ᾱ_K``."""
        return _tables(self.base, self.num_steps)[1]

    def _table(self, dtype=None):
        return jnp.asarray(self.alpha_bars(), dtype=dtype or jnp.result_type(float))

    def alpha_bar(self, k) -> jax.Array:
        """``ᾱ_k`` for integer steps ``k`` in ``[0, K]`` (any shape)."""
        return self._table()[check_steps("k", k, self, minimum=0)]

    def beta(self, k) -> jax.Array:
        """``β_k = 1 - ᾱ_k/ᾱ_{k-1}`` for integer steps ``k`` in ``[1, K]``."""
        k = check_steps("k", k, self, minimum=1)
        table = self.alpha_bars()
        betas = jnp.asarray(np.concatenate([[0.0], -np.expm1(np.diff(np.log(table)))]),
                            jnp.result_type(float))
        return betas[k]

    def time(self, k) -> jax.Array:
        """The network's time input ``s_k / T`` for steps ``k`` in ``[0, K]`` (0 at ``k = 0``)."""
        k = check_steps("k", k, self, minimum=0)
        fractions = np.concatenate([[0.0], self.kept_steps() / self.base.T])
        return jnp.asarray(fractions, jnp.float32)[k]


def check_steps(name: str, k, schedule: RespacedSchedule, minimum: int = 1):
    """``k`` as an int32 array after checking it holds integers in ``[minimum, K]``.

    Traced values get the dtype check only (their range cannot be known).
    """
    dtype = jnp.result_type(k)
    if dtype == jnp.bool_ or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer step (or array of steps), got dtype {dtype}")
    if not isinstance(k, jax.core.Tracer):
        array = np.asarray(k)
        bad = (array < minimum) | (array > schedule.num_steps)
        if bad.any():
            value = array[bad].ravel()[0]
            raise ValueError(f"{name} = {value} must be an integer step in [{minimum}, "
                             f"K = {schedule.num_steps}]")
    return jnp.asarray(k, jnp.int32)


def _per_image(values: jax.Array, x: jax.Array) -> jax.Array:
    """Scalars (or one per image) broadcast against ``(n, H, W, C)``."""
    values = jnp.asarray(values, x.dtype)
    return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def _check_images(name: str, x) -> None:
    if jnp.ndim(x) != 4:
        raise ValueError(f"{name} must have shape (n, H, W, C), got shape {jnp.shape(x)}")


def q_sample(key: jax.Array, x0: jax.Array, k, schedule: RespacedSchedule) -> jax.Array:
    """``x_k = √ᾱ_k x_0 + √(1-ᾱ_k) ε`` with ``ε ~ N(0, I)`` drawn from ``key``.

    Args:
      key: PRNG key.
      x0: ``(n, H, W, C)`` clean images.
      k: one step or ``(n,)`` steps in ``[0, K]``.
      schedule: the respaced schedule.

    Examples:
      >>> x0 = jnp.zeros((2, 8, 8, 1))
      >>> x = q_sample(jax.random.key(0), x0, jnp.array([0, 250]), RespacedSchedule(250))
      >>> x.shape, float(jnp.abs(x[0]).max())
      ((2, 8, 8, 1), 0.0)
    """
    check_key("key", key)
    _check_images("x0", x0)
    k = check_steps("k", k, schedule, minimum=0)
    noise = jax.random.normal(key, jnp.shape(x0), jnp.result_type(x0))
    return _noised(x0, noise, schedule._table(jnp.result_type(x0))[k])


def _noised(x0, noise, alpha_bar):
    alpha_bar = _per_image(alpha_bar, x0)
    return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def ddpm_loss(eps_hat: EpsFunction, key: jax.Array, x0: jax.Array,
              schedule: RespacedSchedule) -> jax.Array:
    """DDPM's simple loss per image: ``mean over pixels of (ε̂(x_k, k) - ε)²``.

    ``k`` is uniform on ``1 … K`` and ``ε ~ N(0, I)``, one draw per image from ``key``. Its
    minimiser over all functions is the Tweedie ``ε̂ = (x_k - √ᾱ_k E[x_0|x_k])/√(1-ᾱ_k)``
    of the data's distribution: on a finite training set, the memorising denoiser of
    :mod:`rhm_jax.images.references`.

    Returns:
      ``(n,)`` losses.
    """
    step_key, noise_key = jax.random.split(key)
    n = x0.shape[0]
    k = jax.random.randint(step_key, (n,), 1, schedule.num_steps + 1)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_k = _noised(x0, noise, schedule._table(x0.dtype)[k])
    error = eps_hat(x_k, k) - noise
    return jnp.mean(jnp.square(error), axis=tuple(range(1, x0.ndim)))


def predict_x0(x_k, k, eps, schedule: RespacedSchedule, clip: bool = True):
    """``x̂_0 = (x_k - √(1-ᾱ_k) ε̂)/√ᾱ_k``, clipped to ``[-1, 1]`` if ``clip``."""
    alpha_bar = _per_image(schedule._table(x_k.dtype)[k], x_k)
    x0 = (x_k - jnp.sqrt(1.0 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)
    return jnp.clip(x0, -1.0, 1.0) if clip else x0


def reverse_step(noise, x_k, k, eps, schedule: RespacedSchedule, clip: bool = True):
    """One ancestral step ``x_k -> x_{k-1}`` given ``ε̂`` and a standard normal ``noise``.

    ``k`` is ``(n,)`` in ``[1, K]``; see the module docstring for the formulas.
    """
    table = schedule._table(x_k.dtype)
    alpha_bar, alpha_bar_prev = table[k], table[k - 1]
    beta = 1.0 - alpha_bar / alpha_bar_prev
    x0 = predict_x0(x_k, k, eps, schedule, clip)
    coef_x0 = jnp.sqrt(alpha_bar_prev) * beta / (1.0 - alpha_bar)
    coef_xk = jnp.sqrt(1.0 - beta) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    variance = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    mean = _per_image(coef_x0, x_k) * x0 + _per_image(coef_xk, x_k) * x_k
    return mean + _per_image(jnp.sqrt(variance), x_k) * noise


def reverse_chain(keys: jax.Array, eps_hat: EpsFunction, x_k: jax.Array, k,
                  schedule: RespacedSchedule, clip: bool = True,
                  max_step: int | None = None) -> jax.Array:
    """The ancestral chain from steps ``k`` (one per image) down to ``x_0``.

    One ``jax.lax.scan`` over ``j = K … 1``: image ``i`` moves at the iterations ``j <=
    k_i`` and is left as it is before, so images starting at different steps share one
    batched call of ``eps_hat`` per iteration. The noise of image ``i`` at step ``j`` is
    drawn from ``fold_in(keys[i], j)``: the same for every start step (common random
    numbers), independent of the batch it is in.

    Args:
      keys: ``(n,)`` PRNG keys, one per image.
      eps_hat: the denoiser ``eps_hat(x_k, k)``.
      x_k: ``(n, H, W, C)`` noisy images.
      k: ``(n,)`` their steps in ``[0, K]`` (``0`` returns the image unchanged).
      schedule: the respaced schedule.
      clip: clip ``x̂_0`` to ``[-1, 1]`` in every step.
      max_step: the scan's first iteration (default ``K``); a bound on ``k`` known in
        advance saves the iterations above it.

    Returns:
      ``(n, H, W, C)`` generated ``x_0``.

    Examples:
      >>> sched = RespacedSchedule(10)
      >>> zero = lambda x, k: jnp.zeros_like(x)  # ε̂ = 0
      >>> keys = jax.random.split(jax.random.key(0), 2)
      >>> x = reverse_chain(keys, zero, jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 3]), sched)
      >>> x.shape, x[0].ravel().tolist()  # the image at step 0 is left as it is
      ((2, 2, 2, 1), [0.5, 0.5, 0.5, 0.5])
    """
    _check_images("x_k", x_k)
    keys = check_key("keys", keys, (x_k.shape[0],)) if not isinstance(
        keys, jax.core.Tracer) else keys
    k = check_steps("k", k, schedule, minimum=0)
    clip = check_bool("clip", clip)
    max_step = schedule.num_steps if max_step is None else check_int(
        "max_step", max_step, 1, schedule.num_steps)
    if not isinstance(k, jax.core.Tracer) and k.size and int(k.max()) > max_step:
        raise ValueError(f"k = {int(k.max())} must be <= max_step = {max_step} (the chain "
                         "starts there)")

    def body(x, j):
        active = j <= k
        steps = jnp.where(active, j, 1)
        eps = eps_hat(x, steps)
        noise = jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, j),
                                                       x.shape[1:], x.dtype))(keys)
        moved = reverse_step(noise, x, steps, eps, schedule, clip)
        return jnp.where(active.reshape((-1,) + (1,) * (x.ndim - 1)), moved, x), None

    x_0, _ = jax.lax.scan(body, x_k, jnp.arange(max_step, 0, -1, dtype=jnp.int32))
    return x_0
