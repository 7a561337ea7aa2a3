"""Noise processes: forward corruption, leaf likelihoods and reverse kernels (``docs/theory/noise.md``).

Everything a noise process does to inference enters through the leaf log-likelihoods
``log lik_i(a) = log p(observation_i | x0_i = a)`` (up to a constant in ``a``), which is
what belief propagation consumes. Four processes share one interface:

============================  =========================  ==================================
process                       observation                ``leaf_log_likelihood``
============================  =========================  ==================================
:class:`EpsilonProcess`       the clean tokens (n, d)    ``log((1-ε)[a = x0_i] + ε/v)``
:class:`Masking`              int (n, d) in ``[0, v]``   0 if masked, else one-hot (log)
:class:`UniformSubstitution`  int (n, d) in ``[0, v)``   ``log(ᾱ[a = x_t,i] + (1-ᾱ)/v)``
:class:`Gaussian`             float (n, d, v)            ``sqrt(ᾱ)/(1-ᾱ) · x_t,i[a]``
============================  =========================  ==================================

Common interface (``t ∈ [0, 1]`` is a scalar or one time per sequence, shape ``(n,)``, an
array or a list; a noise sweep is one ``jax.vmap`` over ``t``; ``key`` is a typed
``jax.random.key`` or a legacy ``jax.random.PRNGKey``):

* ``corrupt(key, tokens, t)`` draws the observation from the forward kernel.
* ``leaf_log_likelihood(observation, t)`` returns float (n, d, v) — float32, or float64
  under ``JAX_ENABLE_X64`` — finite everywhere: impossible values get :data:`LOG_FLOOR`
  (the Gaussian's, whose constant per token makes its largest entry 0, is ``-inf`` only
  where a gap between two entries of one token overflows the float).

Step-by-step reverse samplers use ``reverse_kernel`` / ``posterior_kernel`` (masking,
uniform) or ``posterior_mean_variance`` / ``score`` (Gaussian), and ``sample_reverse``.

Each process is a frozen, hashable dataclass (a valid static ``jax.jit`` argument); every
method is pure ``jax.numpy`` and jit/vmap-able. Public methods check their inputs: shapes
and dtypes always, values (``t`` in ``[0, 1]``, tokens in range) only when concrete (not
traced), raising errors that name the parameter, its value and the rule; they then call a
jitted implementation with the process as static argument.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from rhm_jax.validation import check_key, check_tokens
from rhm_jax.config import RHMConfig
from rhm_jax.schedules import (
    Cosine,
    LinearAlphaBar,
    LinearBeta,
    Schedule,
    check_unit_interval,
    default_float_dtype,
    is_concrete,
)

__all__ = [
    "LOG_FLOOR",
    "PROCESSES",
    "make_process",
    "safe_log",
    "MIN_NOISE_VARIANCE",
    "NoiseProcess",
    "EpsilonProcess",
    "Masking",
    "UniformSubstitution",
    "Gaussian",
]

#: Log-likelihood given to impossible values. Finite in float32 (so sums of a few thousand
#: stay finite and no NaN arises from ``-inf - -inf``), and ``exp(LOG_FLOOR - max)`` is
#: exactly 0 whenever some entry is possible.
LOG_FLOOR: float = -1e30

#: Lower clamp on ``1 - ᾱ_t`` in the Gaussian likelihood and score. At ``ᾱ = 1`` the
#: log-likelihood gap between the true token and the others becomes ~``1/1e-12``, i.e.
#: effectively one-hot evidence, while staying finite in float32.
MIN_NOISE_VARIANCE: float = 1e-12


# ---- small helpers ------------------------------------------------------------------------
def safe_log(p: Array) -> Array:
    """``log p`` with ``LOG_FLOOR`` where ``p <= 0`` (and no NaN in the gradient)."""
    positive = p > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, p, 1.0)), LOG_FLOOR)


def _expand(values: Array, num_trailing: int) -> Array:
    """Append ``num_trailing`` unit axes so per-sequence values broadcast over tokens."""
    return jnp.reshape(values, jnp.shape(values) + (1,) * num_trailing)


def _check_process_fields(process, *, schedule: bool = True) -> None:
    if not isinstance(process.config, RHMConfig):
        raise TypeError(f"config must be an RHMConfig, got {type(process.config).__name__}")
    if schedule and not callable(getattr(process.schedule, "alpha_bar", None)):
        raise TypeError(
            f"schedule must have an alpha_bar(t) method, got {type(process.schedule).__name__}"
        )
    if schedule:
        hash(process.schedule)  # a static jit argument must be hashable; fail early


def _check_float_array(name: str, values, expected_shape: tuple[int, ...]) -> Array:
    dtype = jnp.result_type(values)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {dtype}")
    if jnp.shape(values) != expected_shape:
        raise ValueError(f"{name} has shape {jnp.shape(values)}, but must be {expected_shape}")
    if is_concrete(values) and not np.isfinite(np.asarray(values)).all():
        raise ValueError(f"{name} contains non-finite values; they must all be finite")
    return jnp.asarray(values, dtype=default_float_dtype())


def _check_probs(name: str, probs, expected_shape: tuple[int, ...]) -> Array:
    """Per-token probability vectors over the v symbols (last axis sums to 1)."""
    probs = _check_float_array(name, probs, expected_shape)
    if is_concrete(probs):
        array = np.asarray(probs, dtype=np.float64)
        if (array < 0).any():
            raise ValueError(f"{name} contains {array.min()}, but probabilities must be >= 0")
        sums = array.sum(axis=-1)
        if sums.size and np.abs(sums - 1.0).max() > 1e-3:
            raise ValueError(
                f"{name} has a row summing to {sums.ravel()[np.abs(sums - 1).argmax()]}, but "
                "each token's probabilities over the last axis must sum to 1"
            )
    return probs


def check_time(name: str, t, batch_shape: tuple[int, ...]) -> Array:
    """A time in [0, 1]: a scalar or one per sequence (shape ``batch_shape``; a list works)."""
    t = check_unit_interval(name, t)
    shape = jnp.shape(t)
    if shape not in ((), batch_shape):
        raise ValueError(
            f"{name} has shape {shape}, but must be a scalar or one value per sequence "
            f"(shape {batch_shape})"
        )
    return jnp.asarray(t, dtype=default_float_dtype())


def check_time_pair(s, t, batch_shape: tuple[int, ...]) -> tuple[Array, Array]:
    """Times of a reverse step, ``0 <= s <= t <= 1``."""
    s_checked = check_time("s", s, batch_shape)
    t_checked = check_time("t", t, batch_shape)
    if is_concrete(s) and is_concrete(t):  # compare the values as given, before rounding
        s_arr, t_arr = np.broadcast_arrays(np.asarray(s, np.float64), np.asarray(t, np.float64))
        bad = s_arr > t_arr
        if bad.any():
            raise ValueError(
                f"s = {s_arr[bad].ravel()[0]} must be <= t = {t_arr[bad].ravel()[0]} "
                "(the reverse step goes from time t back to the earlier time s)"
            )
    return s_checked, t_checked


def _alpha_bar_t_given_s(alpha_bar_s: Array, alpha_bar_t: Array) -> Array:
    """Signal kept by the s -> t transition, ``ᾱ_t/ᾱ_s`` (1, i.e. identity, if ``ᾱ_s = 0``)."""
    positive = alpha_bar_s > 0
    ratio = jnp.where(positive, alpha_bar_t / jnp.where(positive, alpha_bar_s, 1.0), 1.0)
    return jnp.clip(ratio, 0.0, 1.0)


def _sample_categorical(key: PRNGKeyArray, probs: Array) -> Array:
    return jax.random.categorical(key, safe_log(probs), axis=-1).astype(jnp.int32)


#: Decorator for the implementation methods: jitted with the (hashable) process static.
_jit_method = functools.partial(jax.jit, static_argnums=0)


class NoiseProcess(Protocol):
    """The interface every noise process provides (``docs/theory/noise.md``)."""

    config: RHMConfig

    def corrupt(self, key: PRNGKeyArray, tokens: ArrayLike, t: ArrayLike) -> Array: ...

    def leaf_log_likelihood(
        self, observation: ArrayLike, t: ArrayLike
    ) -> Float[Array, "*batch d v"]: ...


# ---- ε-process ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EpsilonProcess:
    """The deterministic ε-process of the mean-field theory (``docs/theory/noise.md`` and ``docs/theory/mean_field.md``).

    Here the time ``t`` *is* ε ∈ [0, 1]. Nothing is sampled: the observation is the clean
    sequence and the evidence itself is soft,
    ``lik_i(a) = (1-ε)·[a = x0_i] + ε/v`` (centred on the TRUE token). There is no
    sampled forward process, hence no reverse kernel.

    Args:
      config: the RHM shape (``v`` and ``d`` are used).

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> proc = EpsilonProcess(RHMConfig(v=4, m=2, s=2, L=1))
      >>> log_lik = proc.leaf_log_likelihood(jnp.array([[0, 3]]), 0.4)
      >>> np.exp(np.asarray(log_lik, np.float64)).round(2).tolist()
      [[[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]]
    """

    config: RHMConfig

    def __post_init__(self):
        _check_process_fields(self, schedule=False)

    def corrupt(self, key: PRNGKeyArray, tokens: ArrayLike, t: ArrayLike) -> Int[Array, "*batch d"]:
        """Return ``tokens`` unchanged (after validation); ``key`` is unused but checked."""
        check_key("key", key)
        tokens = check_tokens("tokens", tokens, self.config.d, self.config.v)
        check_time("t", t, tokens.shape[:-1])
        return tokens

    def leaf_log_likelihood(self, observation: ArrayLike, t: ArrayLike) -> Float[Array, "*batch d v"]:
        """``log((1-ε)·[a = x0_i] + ε/v)`` with ``ε = t``; ``observation`` = clean tokens."""
        tokens = check_tokens("observation", observation, self.config.d, self.config.v)
        return self._leaf_log_likelihood(tokens, check_time("t", t, tokens.shape[:-1]))

    @_jit_method
    def _leaf_log_likelihood(self, tokens: Array, epsilon: Array) -> Array:
        epsilon = _expand(epsilon, 2)
        onehot = jax.nn.one_hot(tokens, self.config.v, dtype=epsilon.dtype)
        return safe_log((1.0 - epsilon) * onehot + epsilon / self.config.v)


# ---- masking (absorbing) ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Masking:
    """Absorbing-state (masking) diffusion (``docs/theory/noise.md``).

    Each token is kept with probability ``α_t = schedule.alpha_bar(t)`` and otherwise
    replaced by the mask symbol ``v`` (:attr:`mask_token`), so observations are int32 in
    ``[0, v]``. With ``exact_fraction=True`` every sequence instead gets exactly
    ``round((1-α_t)·d)`` masked tokens (half to even) at uniformly random positions.
    Leaf log-likelihood: 0 for every ``a`` if masked (uniform), otherwise 0 on the token and
    :data:`LOG_FLOOR` elsewhere (one-hot).

    Reverse kernel over ``K = v + 1`` states (last = mask), for ``s <= t``: an unmasked
    ``x_t`` stays; a masked one becomes symbol ``c`` with probability
    ``(α_s - α_t)/(1 - α_t) · x0_probs[c]`` and stays masked with ``(1 - α_s)/(1 - α_t)``.

    Args:
      config: the RHM shape.
      schedule: maps ``t`` to the keep probability ``α_t``; default ``α_t = 1 - t``.
      exact_fraction: mask an exact number of tokens per sequence instead of i.i.d.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> proc = Masking(RHMConfig(v=3, m=1, s=2, L=2), exact_fraction=True)
      >>> x_t = proc.corrupt(jax.random.key(0), jnp.array([[0, 1, 2, 0]]), 0.5)
      >>> int((x_t == proc.mask_token).sum())
      2
      >>> log_lik = proc.leaf_log_likelihood(jnp.array([[3, 1, 3, 3]]), 0.5)
      >>> (log_lik == LOG_FLOOR).astype(int).tolist()  # position 1 is unmasked: one-hot on 1
      [[[0, 0, 0], [1, 0, 1], [0, 0, 0], [0, 0, 0]]]
    """

    config: RHMConfig
    schedule: Schedule = LinearAlphaBar()
    exact_fraction: bool = False

    def __post_init__(self):
        _check_process_fields(self)
        if not isinstance(self.exact_fraction, bool):
            raise TypeError(f"exact_fraction must be a bool, got {self.exact_fraction!r}")

    @property
    def mask_token(self) -> int:
        """The mask symbol, ``v``."""
        return self.config.v

    @property
    def num_states(self) -> int:
        """``K = v + 1``: the ``v`` symbols and the mask."""
        return self.config.v + 1

    def corrupt(self, key: PRNGKeyArray, tokens: ArrayLike, t: ArrayLike) -> Int[Array, "*batch d"]:
        """Mask each token with probability ``1 - α_t`` (or an exact fraction)."""
        check_key("key", key)
        tokens = check_tokens("tokens", tokens, self.config.d, self.config.v)
        return self._corrupt(key, tokens, check_time("t", t, tokens.shape[:-1]))

    @_jit_method
    def _corrupt(self, key: PRNGKeyArray, tokens: Array, t: Array) -> Array:
        keep_prob = _expand(self.schedule.alpha_bar(t), 1)
        uniforms = jax.random.uniform(key, tokens.shape, dtype=keep_prob.dtype)
        if self.exact_fraction:
            num_masked = jnp.round((1.0 - keep_prob) * self.config.d)
            # the ranks of i.i.d. uniforms are a uniformly random permutation of positions
            ranks = jnp.argsort(jnp.argsort(uniforms, axis=-1), axis=-1)
            masked = ranks < num_masked
        else:
            masked = uniforms >= keep_prob
        return jnp.where(masked, self.mask_token, tokens).astype(jnp.int32)

    def leaf_log_likelihood(self, observation: ArrayLike, t: ArrayLike) -> Float[Array, "*batch d v"]:
        """0 for all ``a`` where masked, else 0 on the token and ``LOG_FLOOR`` elsewhere."""
        observation = check_tokens("observation", observation, self.config.d, self.num_states)
        check_time("t", t, observation.shape[:-1])  # the likelihood does not depend on t
        return self._leaf_log_likelihood(observation)

    @_jit_method
    def _leaf_log_likelihood(self, observation: Array) -> Array:
        is_token = jax.nn.one_hot(observation, self.config.v, dtype=bool)  # mask -> all False
        is_masked = (observation == self.mask_token)[..., None]
        return jnp.where(is_token | is_masked, 0.0, LOG_FLOOR).astype(default_float_dtype())

    def _check_reverse_inputs(self, x_t, s, t, x0_probs):
        x_t = check_tokens("x_t", x_t, self.config.d, self.num_states)
        s, t = check_time_pair(s, t, x_t.shape[:-1])
        x0_probs = _check_probs("x0_probs", x0_probs, x_t.shape + (self.config.v,))
        return x_t, s, t, x0_probs

    def reverse_kernel(
        self, x_t: ArrayLike, s: ArrayLike, t: ArrayLike, x0_probs: ArrayLike
    ) -> Float[Array, "*batch d K"]:
        """``Σ_a q(x_s | x_t, x0 = a)·x0_probs[a]`` over the ``v + 1`` states of ``x_s``.

        ``q(x_s | x_t, x0) ∝ q(x_t | x_s) q(x_s | x0)`` with ``q(x_t | x_s)`` the s→t
        transition (keep with probability ``α_t/α_s``). Where that conditioning has
        probability zero (``x_t`` unmasked but ``≠ a``; ``x_t`` masked at ``α_t = 1``)
        the kernel is ``x_s = x_t``. ``x0_probs`` is (n, d, v).
        """
        return self._reverse_kernel(*self._check_reverse_inputs(x_t, s, t, x0_probs))

    @_jit_method
    def _reverse_kernel(self, x_t: Array, s: Array, t: Array, x0_probs: Array) -> Array:
        keep_s = _expand(self.schedule.alpha_bar(s), 2)
        keep_t = _expand(self.schedule.alpha_bar(t), 2)
        unmask_weight = jnp.maximum(keep_s - keep_t, 0.0)  # ∝ q(x_t=M | x_s=c) q(x_s=c | x0=c)
        stay_weight = 1.0 - keep_s  # ∝ q(x_t=M | x_s=M) q(x_s=M | x0)
        # normalise by the sum of the weights rather than by 1 - α_t: equal in exact
        # arithmetic, but this stays normalised when α_s ≈ α_t ≈ 1 in float32
        total = unmask_weight + stay_weight
        reachable = total > 0
        safe_total = jnp.where(reachable, total, 1.0)
        unmask = jnp.where(reachable, unmask_weight / safe_total, 0.0)
        stay = jnp.where(reachable, stay_weight / safe_total, 1.0)
        from_masked = jnp.concatenate(
            [unmask * x0_probs, jnp.broadcast_to(stay, x0_probs.shape[:-1] + (1,))], axis=-1
        )
        carry_over = jax.nn.one_hot(x_t, self.num_states, dtype=x0_probs.dtype)
        is_masked = (x_t == self.mask_token)[..., None]
        return jnp.where(is_masked, from_masked, carry_over)

    def posterior_kernel(
        self, x_t: ArrayLike, s: ArrayLike, t: ArrayLike, x0: ArrayLike
    ) -> Float[Array, "*batch d K"]:
        """``q(x_s | x_t, x0)`` for known integer tokens ``x0`` (one-hot ``x0_probs``)."""
        x0 = check_tokens("x0", x0, self.config.d, self.config.v)
        return self.reverse_kernel(x_t, s, t, jax.nn.one_hot(x0, self.config.v, dtype=default_float_dtype()))

    def sample_reverse(
        self, key: PRNGKeyArray, x_t: ArrayLike, s: ArrayLike, t: ArrayLike, x0_probs: ArrayLike
    ) -> Int[Array, "*batch d"]:
        """Draw ``x_s`` from :meth:`reverse_kernel` (int32 in ``[0, v]``)."""
        check_key("key", key)
        return self._sample_reverse(key, *self._check_reverse_inputs(x_t, s, t, x0_probs))

    @_jit_method
    def _sample_reverse(self, key, x_t, s, t, x0_probs) -> Array:
        return _sample_categorical(key, self._reverse_kernel(x_t, s, t, x0_probs))


# ---- uniform substitution (D3PM-uniform) --------------------------------------------------
@dataclasses.dataclass(frozen=True)
class UniformSubstitution:
    """D3PM-uniform substitution noise (``docs/theory/noise.md``).

    ``x_t ~ Cat(ᾱ_t·onehot(x0) + (1-ᾱ_t)/v)``: kept with probability ``ᾱ_t``, else
    redrawn uniformly (possibly equal to ``x0``). Leaf log-likelihood
    ``log(ᾱ_t·[a = x_t,i] + (1-ᾱ_t)/v)``, centred on the NOISY token.

    Reverse kernel (``s <= t``, ``K = v``): Bayes on the forward kernels,
    ``q(x_s | x_t, x0) = q(x_t | x_s) q(x_s | x0) / q(x_t | x0)`` with the s→t transition
    ``ᾱ_{t|s} = ᾱ_t/ᾱ_s`` (identity when ``ᾱ_s = 0``); a conditioning of probability zero
    (``ᾱ_t = 1``, ``a ≠ x_t``) contributes ``x_s = x_t``.

    Args:
      config: the RHM shape.
      schedule: maps ``t`` to ``ᾱ_t``; default :class:`~rhm_jax.schedules.Cosine`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> proc = UniformSubstitution(RHMConfig(v=4, m=2, s=2, L=1), schedule=LinearAlphaBar())
      >>> log_lik = proc.leaf_log_likelihood(jnp.array([[2, 0]]), 0.6)
      >>> np.exp(np.asarray(log_lik[0, 0], np.float64)).round(2).tolist()
      [0.15, 0.15, 0.55, 0.15]
    """

    config: RHMConfig
    schedule: Schedule = Cosine()

    def __post_init__(self):
        _check_process_fields(self)

    @property
    def num_states(self) -> int:
        """``K = v``."""
        return self.config.v

    def corrupt(self, key: PRNGKeyArray, tokens: ArrayLike, t: ArrayLike) -> Int[Array, "*batch d"]:
        """Keep each token with probability ``ᾱ_t``, otherwise draw it uniformly."""
        check_key("key", key)
        tokens = check_tokens("tokens", tokens, self.config.d, self.config.v)
        return self._corrupt(key, tokens, check_time("t", t, tokens.shape[:-1]))

    @_jit_method
    def _corrupt(self, key: PRNGKeyArray, tokens: Array, t: Array) -> Array:
        alpha_bar = _expand(self.schedule.alpha_bar(t), 1)
        # one draw for both decisions (a single threefry call compiles much faster)
        keep_uniform, redraw_uniform = jax.random.uniform(key, (2,) + tokens.shape, dtype=alpha_bar.dtype)
        redrawn = jnp.minimum(jnp.floor(redraw_uniform * self.config.v), self.config.v - 1).astype(jnp.int32)
        return jnp.where(keep_uniform < alpha_bar, tokens, redrawn)

    def leaf_log_likelihood(self, observation: ArrayLike, t: ArrayLike) -> Float[Array, "*batch d v"]:
        """``log(ᾱ_t·[a = x_t,i] + (1-ᾱ_t)/v)``."""
        observation = check_tokens("observation", observation, self.config.d, self.config.v)
        return self._leaf_log_likelihood(observation, check_time("t", t, observation.shape[:-1]))

    @_jit_method
    def _leaf_log_likelihood(self, observation: Array, t: Array) -> Array:
        alpha_bar = _expand(self.schedule.alpha_bar(t), 2)
        onehot = jax.nn.one_hot(observation, self.config.v, dtype=alpha_bar.dtype)
        return safe_log(alpha_bar * onehot + (1.0 - alpha_bar) / self.config.v)

    def _check_reverse_inputs(self, x_t, s, t, x0_probs):
        x_t = check_tokens("x_t", x_t, self.config.d, self.config.v)
        s, t = check_time_pair(s, t, x_t.shape[:-1])
        x0_probs = _check_probs("x0_probs", x0_probs, x_t.shape + (self.config.v,))
        return x_t, s, t, x0_probs

    def reverse_kernel(
        self, x_t: ArrayLike, s: ArrayLike, t: ArrayLike, x0_probs: ArrayLike
    ) -> Float[Array, "*batch d v"]:
        """``Σ_a q(x_s | x_t, x0 = a)·x0_probs[a]`` (``x0_probs`` is (n, d, v))."""
        return self._reverse_kernel(*self._check_reverse_inputs(x_t, s, t, x0_probs))

    @_jit_method
    def _reverse_kernel(self, x_t: Array, s: Array, t: Array, x0_probs: Array) -> Array:
        v = self.config.v
        alpha_bar_s = _expand(self.schedule.alpha_bar(s), 2)
        alpha_bar_t_given_s = _alpha_bar_t_given_s(alpha_bar_s, _expand(self.schedule.alpha_bar(t), 2))
        is_x_t = jax.nn.one_hot(x_t, v, dtype=x0_probs.dtype)
        transition = alpha_bar_t_given_s * is_x_t + (1.0 - alpha_bar_t_given_s) / v  # q(x_t | x_s = c)
        # q(x_t | x0 = a) = Σ_c q(x_t | x_s = c) q(x_s = c | x0 = a), using Σ_c transition = 1.
        # Equal to ᾱ_t[a = x_t] + (1-ᾱ_t)/v in exact arithmetic; composing it from the same
        # factors keeps the kernel normalised when ᾱ_s ≈ ᾱ_t ≈ 1 in float32.
        marginal = alpha_bar_s * transition + (1.0 - alpha_bar_s) / v
        possible = marginal > 0
        weights = jnp.where(possible, x0_probs / jnp.where(possible, marginal, 1.0), 0.0)
        impossible_mass = jnp.sum(jnp.where(possible, 0.0, x0_probs), axis=-1, keepdims=True)
        # Σ_a weights[a]·q(x_s = c | x0 = a) in O(v) rather than a (v, v) matrix per token
        prior_s = alpha_bar_s * weights + (1.0 - alpha_bar_s) / v * jnp.sum(weights, axis=-1, keepdims=True)
        return transition * prior_s + impossible_mass * is_x_t

    def posterior_kernel(
        self, x_t: ArrayLike, s: ArrayLike, t: ArrayLike, x0: ArrayLike
    ) -> Float[Array, "*batch d v"]:
        """``q(x_s | x_t, x0)`` for known integer tokens ``x0`` (one-hot ``x0_probs``)."""
        x0 = check_tokens("x0", x0, self.config.d, self.config.v)
        return self.reverse_kernel(x_t, s, t, jax.nn.one_hot(x0, self.config.v, dtype=default_float_dtype()))

    def sample_reverse(
        self, key: PRNGKeyArray, x_t: ArrayLike, s: ArrayLike, t: ArrayLike, x0_probs: ArrayLike
    ) -> Int[Array, "*batch d"]:
        """Draw ``x_s`` from :meth:`reverse_kernel` (int32 in ``[0, v)``)."""
        check_key("key", key)
        return self._sample_reverse(key, *self._check_reverse_inputs(x_t, s, t, x0_probs))

    @_jit_method
    def _sample_reverse(self, key, x_t, s, t, x0_probs) -> Array:
        return _sample_categorical(key, self._reverse_kernel(x_t, s, t, x0_probs))


# ---- Gaussian (DDPM on one-hot) -----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Gaussian:
    """DDPM Gaussian noise on one-hot tokens (``docs/theory/noise.md``).

    ``x_t = sqrt(ᾱ_t)·onehot(x0) + sqrt(1-ᾱ_t)·η`` with ``η ~ N(0, I_v)`` per token; the
    observation is float (n, d, v). Leaf log-likelihood: the part of
    ``log N(x_t,i; sqrt(ᾱ_t) e_a, (1-ᾱ_t) I)`` that depends on ``a``,
    ``sqrt(ᾱ_t)/(1-ᾱ_t) · x_t,i[a]``, shifted per token so that its largest entry is 0.
    ``1 - ᾱ_t`` is clamped from below by
    :data:`MIN_NOISE_VARIANCE` in the likelihood and :meth:`score`, so ``ᾱ = 1`` gives
    finite, effectively one-hot evidence; :meth:`posterior_mean_variance` treats
    ``ᾱ_t = 1`` exactly (a point mass at ``x_t``).

    Args:
      config: the RHM shape.
      schedule: maps ``t`` to ``ᾱ_t``; default DDPM :class:`~rhm_jax.schedules.LinearBeta`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> proc = Gaussian(RHMConfig(v=3, m=1, s=2, L=1))
      >>> x_t = proc.corrupt(jax.random.key(0), jnp.array([[2, 0]]), 0.0)
      >>> x_t.tolist()  # t = 0: the one-hot encoding itself
      [[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]
      >>> jax.nn.softmax(proc.leaf_log_likelihood(x_t, 0.0)).tolist()
      [[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]
    """

    config: RHMConfig
    schedule: Schedule = LinearBeta()

    def __post_init__(self):
        _check_process_fields(self)

    def check_observation(self, name: str, x_t) -> Array:
        shape = jnp.shape(x_t)
        tail = (self.config.d, self.config.v)
        if len(shape) not in (2, 3) or shape[-2:] != tail:
            raise ValueError(
                f"{name} has shape {shape}, but must be (d, v) or (n, d, v) with "
                f"(d, v) = {tail}"
            )
        return _check_float_array(name, x_t, shape)

    def _alpha_bar_and_variance(self, t: Array) -> tuple[Array, Array]:
        """``ᾱ_t`` and ``max(1 - ᾱ_t, MIN_NOISE_VARIANCE)``, shaped to broadcast on (n, d, v)."""
        alpha_bar = _expand(self.schedule.alpha_bar(t), 2)
        return alpha_bar, jnp.maximum(1.0 - alpha_bar, MIN_NOISE_VARIANCE)

    def corrupt(self, key: PRNGKeyArray, tokens: ArrayLike, t: ArrayLike) -> Float[Array, "*batch d v"]:
        """``sqrt(ᾱ_t)·onehot(x0) + sqrt(1-ᾱ_t)·η``."""
        check_key("key", key)
        tokens = check_tokens("tokens", tokens, self.config.d, self.config.v)
        return self._corrupt(key, tokens, check_time("t", t, tokens.shape[:-1]))

    @_jit_method
    def _corrupt(self, key: PRNGKeyArray, tokens: Array, t: Array) -> Array:
        alpha_bar = _expand(self.schedule.alpha_bar(t), 2)
        onehot = jax.nn.one_hot(tokens, self.config.v, dtype=alpha_bar.dtype)
        noise = jax.random.normal(key, onehot.shape, dtype=alpha_bar.dtype)
        return jnp.sqrt(alpha_bar) * onehot + jnp.sqrt(1.0 - alpha_bar) * noise

    def leaf_log_likelihood(self, observation: ArrayLike, t: ArrayLike) -> Float[Array, "*batch d v"]:
        """``sqrt(ᾱ_t)/(1-ᾱ_t) · (x_t,i[a] - max_b x_t,i[b])`` (exact up to a constant in ``a``).

        The per-token constant is chosen so that each token's largest entry is 0: every
        entry is ``<= 0`` (``-inf`` where the gap overflows the float), so huge finite
        observations never give ``+inf`` or NaN, and BP's ``log_evidence`` is ``<= 0``.
        """
        x_t = self.check_observation("observation", observation)
        return self._leaf_log_likelihood(x_t, check_time("t", t, x_t.shape[:-2]))

    @_jit_method
    def _leaf_log_likelihood(self, x_t: Array, t: Array) -> Array:
        alpha_bar, variance = self._alpha_bar_and_variance(t)
        # The per-token constant is free: take it so each token's largest entry is 0. Then
        # no finite observation overflows to +inf (x_t = 1e26 did), and log_evidence <= 0.
        # The floor keeps a gap too large for the float as -inf after scaling, never NaN.
        gap = x_t - jnp.max(x_t, axis=-1, keepdims=True)
        gap = jnp.maximum(gap, jnp.finfo(gap.dtype).min)
        return jnp.sqrt(alpha_bar) / variance * gap

    def score(self, x_t: ArrayLike, t: ArrayLike, x0_mean: ArrayLike) -> Float[Array, "*batch d v"]:
        """``∇ log p_t(x_t) = (sqrt(ᾱ_t)·E[x0 | x_t] - x_t)/(1-ᾱ_t)`` (``docs/theory/belief_propagation.md``)."""
        x_t = self.check_observation("x_t", x_t)
        t = check_time("t", t, x_t.shape[:-2])
        return self._score(x_t, t, _check_float_array("x0_mean", x0_mean, x_t.shape))

    @_jit_method
    def _score(self, x_t: Array, t: Array, x0_mean: Array) -> Array:
        alpha_bar, variance = self._alpha_bar_and_variance(t)
        return (jnp.sqrt(alpha_bar) * x0_mean - x_t) / variance

    def posterior_mean_variance(
        self, x_t: ArrayLike, s: ArrayLike, t: ArrayLike, x0_mean: ArrayLike
    ) -> tuple[Float[Array, "*batch d v"], Float[Array, "*batch d v"]]:
        """Mean and variance of the DDPM posterior ``q(x_s | x_t, x0 = x0_mean)``, ``s <= t``.

        With ``ᾱ_{t|s} = ᾱ_t/ᾱ_s`` and ``β_{t|s} = 1 - ᾱ_{t|s}``:
        ``mean = sqrt(ᾱ_s)·β_{t|s}/(1-ᾱ_t)·x0 + sqrt(ᾱ_{t|s})·(1-ᾱ_s)/(1-ᾱ_t)·x_t`` and
        ``variance = β_{t|s}·(1-ᾱ_s)/(1-ᾱ_t)`` (broadcast to the shape of ``x_t``). At
        ``ᾱ_t = 1`` (so ``ᾱ_s = 1``) the posterior is a point mass at ``x_t``.
        """
        x_t = self.check_observation("x_t", x_t)
        s, t = check_time_pair(s, t, x_t.shape[:-2])
        x0_mean = _check_float_array("x0_mean", x0_mean, x_t.shape)
        return self._posterior_mean_variance(x_t, s, t, x0_mean)

    @_jit_method
    def _posterior_mean_variance(self, x_t: Array, s: Array, t: Array, x0_mean: Array) -> tuple[Array, Array]:
        alpha_bar_s = _expand(self.schedule.alpha_bar(s), 2)
        alpha_bar_t = _expand(self.schedule.alpha_bar(t), 2)
        alpha_bar_t_given_s = _alpha_bar_t_given_s(alpha_bar_s, alpha_bar_t)
        beta_t_given_s = 1.0 - alpha_bar_t_given_s
        noisy = (1.0 - alpha_bar_t) > 0
        denominator = jnp.where(noisy, 1.0 - alpha_bar_t, 1.0)
        coef_x0 = jnp.where(noisy, jnp.sqrt(alpha_bar_s) * beta_t_given_s / denominator, 0.0)
        coef_x_t = jnp.where(noisy, jnp.sqrt(alpha_bar_t_given_s) * (1.0 - alpha_bar_s) / denominator, 1.0)
        variance = jnp.where(noisy, beta_t_given_s * (1.0 - alpha_bar_s) / denominator, 0.0)
        mean = coef_x0 * x0_mean + coef_x_t * x_t
        return mean, jnp.broadcast_to(jnp.maximum(variance, 0.0), mean.shape)

    def sample_reverse(
        self, key: PRNGKeyArray, x_t: ArrayLike, s: ArrayLike, t: ArrayLike, x0_probs: ArrayLike
    ) -> Float[Array, "*batch d v"]:
        """Draw ``x_s`` from the posterior with ``x0`` replaced by ``E[onehot(x0)] = x0_probs``."""
        x_t = self.check_observation("x_t", x_t)
        s, t = check_time_pair(s, t, x_t.shape[:-2])
        x0_probs = _check_probs("x0_probs", x0_probs, x_t.shape)
        check_key("key", key)
        return self._sample_reverse(key, x_t, s, t, x0_probs)

    @_jit_method
    def _sample_reverse(self, key, x_t, s, t, x0_probs) -> Array:
        mean, variance = self._posterior_mean_variance(x_t, s, t, x0_probs)
        return mean + jnp.sqrt(variance) * jax.random.normal(key, mean.shape, dtype=mean.dtype)


#: The noise processes by the name every command and function uses for them.
PROCESSES = {"epsilon": EpsilonProcess, "masking": Masking, "uniform": UniformSubstitution,
             "gaussian": Gaussian}


def make_process(name: str, config: RHMConfig, **kwargs):
    """The noise process called ``name`` (a key of :data:`PROCESSES`) for ``config``.

    Examples:
      >>> from rhm_jax import RHMConfig
      >>> make_process("masking", RHMConfig(v=4, m=2, s=2, L=2)).__class__.__name__
      'Masking'
    """
    if name not in PROCESSES:
        raise ValueError(f"process = {name!r} is not one of {', '.join(PROCESSES)}")
    return PROCESSES[name](config, **kwargs)
