"""Noise schedules: continuous time ``t ∈ [0, 1]`` to ``ᾱ_t`` (``docs/theory/noise.md``).

A schedule is a frozen, hashable dataclass (usable as a static ``jax.jit`` argument) whose
``alpha_bar(t)`` gives the signal level ``ᾱ_t`` at time ``t``: the cumulative product of
``1 - β`` for the Gaussian and uniform-substitution processes, the keep probability ``α_t``
for masking. Every ``alpha_bar`` is pure ``jax.numpy``, accepts traced scalars or arrays of
any shape (elementwise) and is decreasing from ``ᾱ_0 = 1``.

Provided (``docs/theory/noise.md``):

* :class:`LinearBeta` — DDPM linear-β, discrete with ``T`` steps; the defaults are the DDPM
  choice (β from 1e-4 to 0.02 over T = 1000), :meth:`LinearBeta.rhm` the RHM choice
  (β from 1e-3 to 0.1 over T = 200, the RHM diffusion study's exact convention).
* :class:`Cosine` — Nichol & Dhariwal's cosine schedule.
* :class:`LinearAlphaBar` — ``ᾱ_t = 1 - t``, the MD4/MDLM masking convention.

Concrete (non-traced) times are checked to lie in ``[0, 1]``; traced ones are not.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

__all__ = ["Schedule", "LinearBeta", "Cosine", "LinearAlphaBar"]


# ---- shared validation helpers (also used by rhm_jax.noise) -------------------------------
def is_concrete(value) -> bool:
    """True when ``value`` holds actual numbers (not a tracer under jit/vmap/grad)."""
    return not isinstance(value, jax.core.Tracer)


def default_float_dtype():
    """float32, or float64 under ``JAX_ENABLE_X64`` (decided at call time, not import)."""
    return jnp.result_type(float)


def check_unit_interval(name: str, value):
    """Raise if ``value`` is not real, or (when concrete) has entries outside ``[0, 1]``.

    Returns ``value``, with a list or tuple (one time per sequence) made a NumPy array.
    """
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a real number or array, got "
                            f"{type(value).__name__} {value!r}"[:200]) from None
    if value is None or isinstance(value, (str, bytes)) or not hasattr(value, "dtype") and (
            isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number or array, got "
                        f"{'None' if value is None else f'{type(value).__name__} {value!r}'}")
    dtype = jnp.result_type(value)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real number or array, got dtype {dtype}")
    if is_concrete(value):
        array = np.asarray(value, dtype=np.float64)
        bad = ~((array >= 0.0) & (array <= 1.0))  # also catches NaN
        if bad.any():
            offending = array[bad].ravel()[0] if array.ndim else array
            raise ValueError(f"{name} = {offending} must lie in [0, 1]")
    return value


def _as_time(name: str, value) -> Array:
    """Validate a time (or ε) and return it as a default-float jnp array."""
    return jnp.asarray(check_unit_interval(name, value), dtype=default_float_dtype())


def _check_positive_finite(name: str, value, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} = {value} must be finite and {rule}")


class Schedule(Protocol):
    """Anything with a hashable identity and ``alpha_bar(t)`` (``docs/theory/noise.md``)."""

    def alpha_bar(self, t: ArrayLike) -> Float[Array, "..."]: ...


# ---- linear β (DDPM) ------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _linear_beta_log_alpha_bar_table(beta_min: float, beta_max: float, T: int,
                                     product_from_zero: bool) -> np.ndarray:
    """``log ᾱ_k`` for k = 0..T in float64 (``ᾱ_0 = 1``); cached per schedule."""
    if product_from_zero:  # β_j = β1 + (β2-β1)·j/T, j = 0..T; ᾱ_k = Π_{j=0..k}(1-β_j)
        betas = beta_min + (beta_max - beta_min) * np.arange(T + 1, dtype=np.float64) / T
        log_keep = np.cumsum(np.log1p(-betas))[1:]
    else:  # DDPM: β_k = np.linspace(β1, β2, T)[k-1]; ᾱ_k = Π_{i=1..k}(1-β_i)
        log_keep = np.cumsum(np.log1p(-np.linspace(beta_min, beta_max, T, dtype=np.float64)))
    table = np.concatenate([[0.0], log_keep])
    table.setflags(write=False)
    return table


@dataclasses.dataclass(frozen=True)
class LinearBeta:
    """Linear-β schedule with ``T`` discrete steps (``docs/theory/noise.md`` and ``docs/theory/denoisers.md``).

    Two conventions, both with ``ᾱ_0 = 1`` (clean data) and steps ``k = 1..T``:

    * DDPM (default, ``product_from_zero=False``): ``β_k = beta_min + (beta_max -
      beta_min)·(k-1)/(T-1)`` for ``k = 1..T`` (``np.linspace`` as in DDPM) and
      ``ᾱ_k = Π_{i=1..k} (1 - β_i)``.
    * The RHM diffusion study's (``product_from_zero=True``, :meth:`rhm`): ``T + 1`` values
      ``β_j = beta_min + (beta_max - beta_min)·j/T``, ``j = 0..T``, and
      ``ᾱ_k = Π_{j=0..k} (1 - β_j)``: the product includes ``j = 0``, so the first step
      already multiplies two factors (``ᾱ_1 = 0.999·0.998505 = 0.997506`` for the defaults)
      and ``ᾱ_T = 2.73e-5``.

    ``beta(k) = 1 - ᾱ_k/ᾱ_{k-1}`` is the noise added by step ``k``. Continuous time maps to
    the fractional step ``t·T``; ``alpha_bar(t)`` is exact at integer steps and interpolates
    ``log ᾱ`` linearly in between (not the integral ``T∫log(1-β(u))du``, which the
    discrete sampler never needs). So ``alpha_bar(k/T) == alpha_bar_at_step(k)``.

    Args:
      beta_min: first β, in (0, 1).
      beta_max: last β, in [beta_min, 1).
      T: number of steps, an integer >= 1.
      product_from_zero: use the RHM study's convention above.

    Examples:
      >>> sched = LinearBeta()  # DDPM: 1e-4 -> 0.02 over 1000 steps
      >>> round(float(sched.alpha_bar_at_step(1)), 6), round(float(sched.beta(1)), 6)
      (0.9999, 0.0001)
      >>> float(sched.alpha_bar(0.0))
      1.0
      >>> rhm = LinearBeta.rhm()
      >>> rhm
      LinearBeta(beta_min=0.001, beta_max=0.1, T=200, product_from_zero=True)
      >>> round(float(rhm.alpha_bar_at_step(1)), 6), f"{float(rhm.alpha_bar(1.0)):.3g}"
      (0.997506, '2.73e-05')

    References:
      Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    """

    beta_min: float = 1e-4
    beta_max: float = 0.02
    T: int = 1000
    product_from_zero: bool = False

    def __post_init__(self):
        _check_positive_finite("beta_min", self.beta_min)
        _check_positive_finite("beta_max", self.beta_max)
        if not self.beta_min < 1:
            raise ValueError(f"beta_min = {self.beta_min} must be < 1")
        if not self.beta_min <= self.beta_max < 1:
            raise ValueError(
                f"beta_max = {self.beta_max} must satisfy beta_min = {self.beta_min} <= "
                "beta_max < 1"
            )
        if isinstance(self.T, bool) or not isinstance(self.T, numbers.Integral):
            raise TypeError(f"T must be an integer, got {self.T!r}")
        if self.T < 1:
            raise ValueError(f"T = {self.T} must be >= 1")
        if not isinstance(self.product_from_zero, (bool, np.bool_)):
            raise TypeError(f"product_from_zero must be a bool, got {self.product_from_zero!r}")
        # normalise numpy scalars so equal schedules hash equal
        object.__setattr__(self, "product_from_zero", bool(self.product_from_zero))
        object.__setattr__(self, "beta_min", float(self.beta_min))
        object.__setattr__(self, "beta_max", float(self.beta_max))
        object.__setattr__(self, "T", int(self.T))

    @classmethod
    def rhm(cls) -> LinearBeta:
        """The RHM diffusion study's schedule: β from 1e-3 to 0.1, T = 200, product from j = 0.

        Matches that study's ``ᾱ_k`` exactly at every step ``k = 1..T`` (``docs/theory/denoisers.md``).
        """
        return cls(beta_min=1e-3, beta_max=0.1, T=200, product_from_zero=True)

    def _log_alpha_bar_table(self) -> np.ndarray:
        return _linear_beta_log_alpha_bar_table(self.beta_min, self.beta_max, self.T,
                                                self.product_from_zero)

    def _check_step(self, name: str, k, minimum: int):
        dtype = jnp.result_type(k)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(f"{name} must be an integer step, got dtype {dtype}")
        if is_concrete(k):
            array = np.asarray(k)
            bad = (array < minimum) | (array > self.T)
            if bad.any():
                offending = array[bad].ravel()[0] if array.ndim else array
                raise ValueError(f"{name} = {offending} must be an integer in [{minimum}, T={self.T}]")
        return jnp.asarray(k)

    def alpha_bar_at_step(self, k: ArrayLike) -> Float[Array, "..."]:
        """Exact ``ᾱ_k = Π_{i≤k}(1-β_i)`` for integer steps ``k`` in ``0..T``."""
        k = self._check_step("k", k, 0)
        table = jnp.asarray(self._log_alpha_bar_table(), dtype=default_float_dtype())
        return jnp.exp(table[k])

    def beta(self, k: ArrayLike) -> Float[Array, "..."]:
        """``β_k = 1 - ᾱ_k/ᾱ_{k-1}`` for integer steps ``k`` in ``1..T``."""
        k = self._check_step("k", k, 1)
        dtype = default_float_dtype()
        if self.product_from_zero:
            table = self._log_alpha_bar_table()
            step_betas = -np.expm1(np.diff(table))  # exact in float64, then cast
            return jnp.asarray(step_betas, dtype=dtype)[k - 1]
        if self.T == 1:
            return jnp.full(jnp.shape(k), self.beta_min, dtype=dtype)
        slope = (self.beta_max - self.beta_min) / (self.T - 1)
        return (self.beta_min + slope * (k - 1)).astype(dtype)

    def alpha_bar(self, t: ArrayLike) -> Float[Array, "..."]:
        """``ᾱ`` at continuous time ``t ∈ [0, 1]`` (step ``t·T``, log-linear in between)."""
        t = _as_time("t", t)
        table = jnp.asarray(self._log_alpha_bar_table(), dtype=t.dtype)
        step = jnp.clip(t, 0.0, 1.0) * self.T
        lower = jnp.clip(jnp.floor(step).astype(jnp.int32), 0, self.T - 1)
        frac = step - lower
        log_alpha_bar = (1.0 - frac) * table[lower] + frac * table[lower + 1]
        return jnp.exp(log_alpha_bar)


# ---- cosine (Nichol & Dhariwal) -----------------------------------------------------------
#: Largest accepted :class:`Cosine` offset.
MAX_COSINE_OFFSET = 1e6


@dataclasses.dataclass(frozen=True)
class Cosine:
    """Cosine schedule ``ᾱ(t) = cos²((t+o)/(1+o)·π/2) / cos²(o/(1+o)·π/2)`` (``docs/theory/noise.md``).

    Evaluated as ``(sin((1-t)/(1+o)·π/2) / sin(1/(1+o)·π/2))²`` (the same function), so
    ``ᾱ(1) = 0`` exactly rather than a rounding residue of ``cos(π/2)``, and the ratio is
    taken before squaring so a large offset cannot underflow to ``0/0``; the result is
    clipped to ``[0, 1]``. Processes that divide by ``ᾱ`` or ``1-ᾱ`` handle both ends.

    Args:
      offset: the small offset ``o`` that keeps ``β`` from vanishing near ``t = 0``, in
        ``[0, MAX_COSINE_OFFSET]`` (as ``o`` grows the schedule tends to ``(1-t)²``, which
        it equals to float64 precision well before ``o = 1e6``).

    Examples:
      >>> sched = Cosine()
      >>> float(sched.alpha_bar(0.0)), float(sched.alpha_bar(1.0))
      (1.0, 0.0)
      >>> round(float(sched.alpha_bar(0.5)), 4)
      0.4938

    References:
      Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021.
    """

    offset: float = 0.008

    def __post_init__(self):
        _check_positive_finite("offset", self.offset, allow_zero=True)
        if self.offset > MAX_COSINE_OFFSET:
            raise ValueError(f"offset = {self.offset} must be <= {MAX_COSINE_OFFSET:g} (beyond, "
                             "the schedule is (1-t)**2 to float precision)")
        object.__setattr__(self, "offset", float(self.offset))

    def alpha_bar(self, t: ArrayLike) -> Float[Array, "..."]:
        """``ᾱ`` at continuous time ``t ∈ [0, 1]``."""
        t = _as_time("t", t)
        scale = 0.5 * math.pi / (1.0 + self.offset)
        scale = jnp.asarray(scale, dtype=t.dtype)
        normaliser = jnp.sin(scale)  # = cos(o/(1+o)·π/2)
        ratio = jnp.sin((1.0 - t) * scale) / normaliser
        # ᾱ(0) = 1 exactly: XLA may fold the constant normaliser with another sin rounding.
        return jnp.where(t == 0, 1.0, jnp.clip(ratio**2, 0.0, 1.0)).astype(t.dtype)


# ---- linear in ᾱ (MD4 / MDLM masking) --------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LinearAlphaBar:
    """``ᾱ_t = 1 - t``: the MD4/MDLM masking convention ``α_t = 1 - t`` (``docs/theory/noise.md``).

    Examples:
      >>> float(LinearAlphaBar().alpha_bar(0.25))
      0.75
    """

    def alpha_bar(self, t: ArrayLike) -> Float[Array, "..."]:
        """``1 - t`` for ``t ∈ [0, 1]``."""
        return 1.0 - _as_time("t", t)

