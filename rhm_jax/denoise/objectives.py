"""Training objectives, one per noise process, each with the exact BP quantity its optimum is.

An objective ties a noise process of :mod:`rhm_jax.noise` (which owns the forward process
and its schedule — nothing here re-implements them) to a loss on a network's per-token
outputs ``(n, d, v)``. A *predictor* is any function ``predict(x_t, t) -> outputs``: a
network, or BP itself through :meth:`Objective.bp_predictor`, which puts the exact
denoiser in the network's place (``docs/theory/denoisers.md``) — the loss at that point is the floor a
network can reach, and for masking it must equal ``log P_max`` nats per sequence.

=====================  ============================  ========================================
objective              network output                optimum (exact BP quantity)
=====================  ============================  ========================================
:class:`MaskedELBO`    logits of ``x0_i``            ``μ_L``: BP leaf marginal, masked tokens
                                                     uniform, others one-hot (independent of t)
:class:`D3PMBound`     logits of ``p̃(x0_i | x_t)``   ``w_L ∝ μ_L / lik``: BP downward message
                                                     (``exact.d3pm_x0_target``)
:class:`GaussianX0`    logits of ``x0_i``            ``μ_L`` with leaf message
                                                     ``softmax(√ᾱ x_t / (1 - ᾱ))``
:class:`GaussianEps`   ``ε̂`` (n, d, v)               ``(x_t - √ᾱ μ_L)/√(1 - ᾱ)`` (Tweedie)
=====================  ============================  ========================================

Every loss is returned per sequence in nats (divide by ``d·ln 2`` for bits per token).
Times are drawn stratified over the batch (MD4's antithetic sampling): one uniform ``u``
and ``t_i = (u + i/n) mod 1``, which lowers the variance of the estimate without biasing it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

from rhm_jax import bp
from rhm_jax.noise import safe_log, Gaussian, Masking, UniformSubstitution

__all__ = ["MaskedELBO", "D3PMBound", "GaussianX0", "GaussianEps", "make_objective",
           "OBJECTIVES", "PROCESS_OF_OBJECTIVE", "OPTIONS_OF_OBJECTIVE", "objectives_of"]

Predictor = Callable[[Array, Array], Array]

#: The objectives by name, each with the noise process (a key of
#: :data:`rhm_jax.noise.PROCESSES`) it trains a denoiser for. Gaussian noise has two.
PROCESS_OF_OBJECTIVE = {"masked_elbo": "masking", "d3pm": "uniform",
                        "gaussian_x0": "gaussian", "gaussian_eps": "gaussian"}
OBJECTIVES = tuple(PROCESS_OF_OBJECTIVE)


def objectives_of(process: str) -> tuple[str, ...]:
    """The objectives that train a denoiser for ``process`` (the first is the default).

    Examples:
      >>> objectives_of("gaussian")
      ('gaussian_x0', 'gaussian_eps')
    """
    found = tuple(name for name, p in PROCESS_OF_OBJECTIVE.items() if p == process)
    if not found:
        raise ValueError(f"process = {process!r} has no training objective; one of "
                         f"{', '.join(dict.fromkeys(PROCESS_OF_OBJECTIVE.values()))} has")
    return found


def _stratified_uniform(key, n: int, dtype=jnp.float32) -> Array:
    """``n`` stratified uniforms in ``[0, 1)``: ``(u + i/n) mod 1`` (each marginally uniform)."""
    u = jax.random.uniform(key, (), dtype=dtype)
    return jnp.mod(u + jnp.arange(n, dtype=dtype) / n, 1.0)


def _log_probs_of(log_probs: Array, tokens: Array) -> Array:
    """``log_probs[..., tokens]`` per token: ``(n, d, v), (n, d) -> (n, d)``."""
    return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


def _discrete_steps(process, num_steps: int | None) -> int:
    """T for a discrete-time loss: the schedule's own T (linear β), else ``num_steps``."""
    T = getattr(process.schedule, "T", None)
    if num_steps is None:
        num_steps = T if T is not None else 1000
    from rhm_jax.validation import check_int

    return check_int("num_steps", num_steps, 1)


def _check_process(process, cls, objective: str):
    if not isinstance(process, cls):
        raise TypeError(f"{objective} needs a {cls.__name__} process, got "
                        f"{type(process).__name__}")


def _bp_leaf_marginals(grammar, process, x_t, t):
    loglik = process.leaf_log_likelihood(x_t, t)
    return bp.marginals(grammar, loglik).marginals[-1]


@dataclasses.dataclass(frozen=True)
class MaskedELBO:
    """Continuous-time NELBO of masked diffusion (MD4 / MDLM), ``docs/theory/denoisers.md``.

    ``NELBO(x0) = E_t[ -α'_t/(1-α_t) · Σ_{i masked} log p_θ(x0_i | x_t) ]`` with ``α_t``
    the process's keep probability (weight ``1/t`` for ``α_t = 1 - t``). The optimal output
    for a masked token is ``p(x0_i | unmasked tokens)``, the BP leaf marginal with uniform
    leaf messages on masked tokens and one-hot ones elsewhere; it does not depend on ``t``.
    With it the NELBO equals ``-log p(x0) = log P_max`` for every datum (an average over
    unmasking orders of an exact chain rule), the floor :meth:`bp_predictor` reproduces.

    Args:
      process: a :class:`~rhm_jax.noise.Masking` process (its schedule gives ``α_t``).
    """

    process: Masking

    def __post_init__(self):
        _check_process(self.process, Masking, "MaskedELBO")

    @property
    def num_input_states(self) -> int:
        return self.process.num_states

    def sample_times(self, key, n: int) -> Array:
        """Stratified ``t ∈ (0, 1]`` (never 0, where the weight diverges)."""
        return 1.0 - _stratified_uniform(key, n)

    def weight(self, t: Array) -> Array:
        """``-α'_t / (1 - α_t)``."""
        alpha = self.process.schedule.alpha_bar
        slope = jax.vmap(jax.grad(lambda x: alpha(x)))(t)
        return -slope / jnp.maximum(1.0 - alpha(t), 1e-12)

    def loss(self, predict: Predictor, key, x0: Array) -> tuple[Array, dict]:
        """Per-sequence NELBO estimate (nats), one ``t`` per sequence."""
        time_key, noise_key = jax.random.split(key)
        t = self.sample_times(time_key, x0.shape[0])
        x_t = self.process.corrupt(noise_key, x0, t)
        log_probs = jax.nn.log_softmax(predict(x_t, t).astype(jnp.float32), axis=-1)
        masked = x_t == self.process.mask_token
        nll = jnp.sum(jnp.where(masked, -_log_probs_of(log_probs, x0), 0.0), axis=-1)
        return self.weight(t) * nll, {"masked_fraction": jnp.mean(masked)}

    def x0_probs(self, outputs: Array, x_t: Array, t: Array) -> Array:
        """``p(x0 | x_t)`` used by the reverse kernel: softmax on masked tokens, the token
        itself on unmasked ones (carry-over unmasking)."""
        probs = jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)
        v = probs.shape[-1]
        kept = jax.nn.one_hot(x_t, v, dtype=probs.dtype)
        return jnp.where((x_t == self.process.mask_token)[..., None], probs, kept)

    def bp_target(self, grammar, x_t: Array, t: Array) -> Array:
        """The optimal ``softmax(outputs)``: BP leaf marginals ``μ_L``."""
        return _bp_leaf_marginals(grammar, self.process, x_t, t)

    def target_probs(self, outputs: Array, x_t: Array, t: Array) -> Array:
        """The network's estimate of :meth:`bp_target`."""
        return jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)

    def bp_predictor(self, grammar) -> Predictor:
        """BP in the network's place: outputs ``log μ_L``."""
        return lambda x_t, t: safe_log(self.bp_target(grammar, x_t, t))

    def prior_nats(self, d: int) -> float:
        return 0.0  # at t = 1 every token is masked: q(x_1 | x0) is the prior


@dataclasses.dataclass(frozen=True)
class D3PMBound:
    """The D3PM variational bound for uniform substitution, x0-parameterised
    (``docs/theory/denoisers.md``).

    On the schedule's ``T`` discrete steps (``t_k = k/T``): draw ``k`` uniformly in
    ``1..T`` and estimate ``L = T·E_k[L_{k-1}] + L_T`` per sequence, with
    ``L_{k-1} = Σ_i KL(q(x_{k-1,i} | x_{k,i}, x0_i) ‖ p_θ(x_{k-1,i} | x_k))`` (for ``k = 1``
    this is ``-log p_θ(x0_i | x_1)``) and the prior term ``L_T = KL(q(x_T | x0) ‖ U)``.
    ``p_θ(x_{k-1} | x_k) ∝ Σ_a q(x_{k-1}, x_k | a) p̃_θ(a | x_k)``: the network's ``p̃`` is
    multiplied by ``q(x_k | a)`` = the leaf likelihood once more, so the exact kernel needs
    ``p̃ ∝ μ_L / lik`` — the BP downward leaf message :func:`rhm_jax.exact.d3pm_x0_target`.
    ``ce_weight = λ`` adds ``λ·Σ_i -log p̃_θ(x0_i | x_k)`` (D3PM's auxiliary loss; it pulls
    ``p̃`` towards ``μ_L``, away from the bound's optimum, so the default is 0).
    The bound stays above the entropy ``log P_max`` even at the optimum; its floor is the
    bound with BP plugged in (:meth:`bp_predictor`).

    Args:
      process: a :class:`~rhm_jax.noise.UniformSubstitution` process.
      num_steps: ``T``; default the schedule's own ``T`` (``LinearBeta``), else 1000.
      ce_weight: λ >= 0.
    """

    process: UniformSubstitution
    num_steps: int | None = None
    ce_weight: float = 0.0

    def __post_init__(self):
        _check_process(self.process, UniformSubstitution, "D3PMBound")
        object.__setattr__(self, "num_steps", _discrete_steps(self.process, self.num_steps))
        if isinstance(self.ce_weight, bool) or not (
                isinstance(self.ce_weight, (int, float)) and math.isfinite(self.ce_weight)
                and self.ce_weight >= 0):
            raise ValueError(f"ce_weight = {self.ce_weight!r} must be a finite number >= 0")
        object.__setattr__(self, "ce_weight", float(self.ce_weight))

    @property
    def num_input_states(self) -> int:
        return self.process.num_states

    def sample_times(self, key, n: int) -> Array:
        """Stratified steps ``t = k/T``, ``k ∈ 1..T``."""
        T = self.num_steps
        k = 1 + jnp.floor(_stratified_uniform(key, n) * T)
        return jnp.minimum(k, T) / T

    def x0_probs(self, outputs: Array, x_t: Array, t: Array) -> Array:
        """``∝ p̃_θ(a | x_t)·q(x_t | a)``: the posterior the reverse kernel uses."""
        loglik = self.process.leaf_log_likelihood(x_t, t)
        return jax.nn.softmax(jax.nn.log_softmax(outputs.astype(jnp.float32), -1) + loglik, -1)

    def loss(self, predict: Predictor, key, x0: Array) -> tuple[Array, dict]:
        time_key, noise_key = jax.random.split(key)
        t = self.sample_times(time_key, x0.shape[0])
        s = jnp.maximum(t - 1.0 / self.num_steps, 0.0)
        x_t = self.process.corrupt(noise_key, x0, t)
        outputs = predict(x_t, t)
        model_kernel = self.process.reverse_kernel(x_t, s, t, self.x0_probs(outputs, x_t, t))
        true_kernel = self.process.posterior_kernel(x_t, s, t, x0)
        kl = jnp.sum(true_kernel * (safe_log(true_kernel) - safe_log(model_kernel)), -1)
        kl = jnp.maximum(jnp.sum(kl, -1), 0.0)  # exact KL >= 0; clamp float32 rounding
        loss = self.num_steps * kl + self.prior_nats(x0.shape[-1])
        ce = -jnp.sum(_log_probs_of(jax.nn.log_softmax(outputs.astype(jnp.float32), -1), x0), -1)
        return loss + self.ce_weight * ce, {"vb": loss, "ce": ce}

    def prior_nats(self, d: int) -> float:
        """``L_T = d·KL(q(x_T | x0) ‖ uniform)``, exact (the same for every x0)."""
        with jax.ensure_compile_time_eval():  # a constant, also when called under jit
            a = float(self.process.schedule.alpha_bar(1.0))
        v = self.process.config.v
        p_same, p_other = a + (1 - a) / v, (1 - a) / v
        kl = p_same * math.log(p_same * v) + (v - 1) * (
            p_other * math.log(p_other * v) if p_other > 0 else 0.0)
        return d * kl

    def bp_target(self, grammar, x_t: Array, t: Array) -> Array:
        """The optimal ``softmax(outputs)``: BP downward leaf messages ``w_L``."""
        loglik = self.process.leaf_log_likelihood(x_t, t)
        return bp.marginals(grammar, loglik, messages=True).downward[-1]

    def target_probs(self, outputs: Array, x_t: Array, t: Array) -> Array:
        return jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)

    def bp_predictor(self, grammar) -> Predictor:
        return lambda x_t, t: safe_log(self.bp_target(grammar, x_t, t))


class _GaussianBase:
    process: Gaussian
    num_steps: int | None

    @property
    def num_input_states(self):
        return None  # float (n, d, v) input

    def sample_times(self, key, n: int) -> Array:
        """Stratified steps ``t = k/T``, ``k ∈ 1..T`` of the (discrete) schedule."""
        T = self.num_steps
        return jnp.minimum(1 + jnp.floor(_stratified_uniform(key, n) * T), T) / T

    def _noised(self, key, x0):
        time_key, noise_key = jax.random.split(key)
        t = self.sample_times(time_key, x0.shape[0])
        return t, self.process.corrupt(noise_key, x0, t)

    def _alpha_bar(self, t):
        return self.process.schedule.alpha_bar(t)[:, None, None]

    def bp_posterior_mean(self, grammar, x_t, t):
        return _bp_leaf_marginals(grammar, self.process, x_t, t)


@dataclasses.dataclass(frozen=True)
class GaussianX0(_GaussianBase):
    """Cross-entropy of ``x0`` under Gaussian noise on one-hot tokens
    (``docs/theory/denoisers.md``).

    ``Σ_i -log p_θ(x0_i | x_t)`` at a stratified step of the schedule; its optimum is the
    BP leaf marginal with leaf message ``softmax(√ᾱ_t x_t / (1 - ᾱ_t))`` and its floor the
    conditional entropy ``E[-log μ_L(x0)]`` (:meth:`bp_predictor`).
    """

    process: Gaussian
    num_steps: int | None = None

    def __post_init__(self):
        _check_process(self.process, Gaussian, "GaussianX0")
        object.__setattr__(self, "num_steps", _discrete_steps(self.process, self.num_steps))

    def loss(self, predict: Predictor, key, x0: Array) -> tuple[Array, dict]:
        t, x_t = self._noised(key, x0)
        log_probs = jax.nn.log_softmax(predict(x_t, t).astype(jnp.float32), -1)
        return -jnp.sum(_log_probs_of(log_probs, x0), -1), {}

    def x0_probs(self, outputs, x_t, t):
        return jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)

    target_probs = x0_probs

    def bp_target(self, grammar, x_t, t):
        return self.bp_posterior_mean(grammar, x_t, t)

    def bp_predictor(self, grammar) -> Predictor:
        return lambda x_t, t: safe_log(self.bp_target(grammar, x_t, t))

    def prior_nats(self, d: int) -> float:
        return 0.0


@dataclasses.dataclass(frozen=True)
class GaussianEps(_GaussianBase):
    """ε-prediction MSE under Gaussian noise on one-hot tokens (DDPM's simple loss).

    ``Σ_{i,a} (ε̂_θ(x_t, t) - ε)²`` with ``x_t = √ᾱ onehot(x0) + √(1-ᾱ) ε``. The optimum is
    ``E[ε | x_t] = (x_t - √ᾱ μ_L)/√(1-ᾱ)`` (Tweedie), with ``μ_L`` the BP leaf marginal.
    The implied posterior mean of ``x0`` is ``(x_t - √(1-ᾱ) ε̂)/√ᾱ``.
    """

    process: Gaussian
    num_steps: int | None = None

    def __post_init__(self):
        _check_process(self.process, Gaussian, "GaussianEps")
        object.__setattr__(self, "num_steps", _discrete_steps(self.process, self.num_steps))

    def loss(self, predict: Predictor, key, x0: Array) -> tuple[Array, dict]:
        t, x_t = self._noised(key, x0)
        alpha_bar = self._alpha_bar(t)
        onehot = jax.nn.one_hot(x0, x_t.shape[-1], dtype=x_t.dtype)
        eps = (x_t - jnp.sqrt(alpha_bar) * onehot) / jnp.sqrt(1.0 - alpha_bar)
        err = predict(x_t, t).astype(jnp.float32) - eps
        return jnp.sum(err * err, axis=(-2, -1)), {}

    def x0_probs(self, outputs, x_t, t):
        """The implied ``E[onehot(x0) | x_t]`` (not clipped to the simplex)."""
        alpha_bar = self._alpha_bar(t)
        return (x_t - jnp.sqrt(1.0 - alpha_bar) * outputs) / jnp.sqrt(alpha_bar)

    def target_probs(self, outputs, x_t, t):
        return self.x0_probs(outputs, x_t, t)

    def bp_target(self, grammar, x_t, t):
        """``E[onehot(x0) | x_t] = μ_L`` (compare with the implied mean of ``ε̂``)."""
        return self.bp_posterior_mean(grammar, x_t, t)

    def bp_predictor(self, grammar) -> Predictor:
        def predict(x_t, t):
            alpha_bar = self._alpha_bar(t)
            return (x_t - jnp.sqrt(alpha_bar) * self.bp_target(grammar, x_t, t)) / jnp.sqrt(
                1.0 - alpha_bar)
        return predict

    def prior_nats(self, d: int) -> float:
        return 0.0


#: The options of :func:`make_objective` each objective uses (``schedule`` is every one's).
OPTIONS_OF_OBJECTIVE = {"masked_elbo": (), "d3pm": ("num_steps", "ce_weight"),
                        "gaussian_x0": ("num_steps",), "gaussian_eps": ("num_steps",)}


def make_objective(name: str, config, *, schedule=None, num_steps: int | None = None,
                   ce_weight: float = 0.0):
    """The objective called ``name`` (see :data:`OBJECTIVES`) with its noise process.

    Default schedules: masking ``α_t = 1 - t``; uniform substitution the RHM diffusion
    study's linear β (:meth:`~rhm_jax.schedules.LinearBeta.rhm`, T = 200); Gaussian DDPM's
    linear β (T = 1000).

    An option the objective does not use is refused rather than ignored
    (:data:`OPTIONS_OF_OBJECTIVE`): ``num_steps`` (the ``T`` of a discrete-time loss) is
    for ``d3pm`` and the Gaussian objectives, not for masking's continuous-time ELBO;
    ``ce_weight`` (D3PM's auxiliary cross-entropy) is for ``d3pm`` only. Their defaults,
    ``num_steps=None`` and ``ce_weight=0.0``, are accepted by every objective.

    Examples:
      >>> from rhm_jax import RHMConfig
      >>> make_objective("masked_elbo", RHMConfig(v=8, m=2, s=2, L=3), ce_weight=5.0)
      Traceback (most recent call last):
      ...
      ValueError: ce_weight = 5.0 is not used by the 'masked_elbo' objective (only by 'd3pm'): leave it at its default 0.0
    """
    from rhm_jax.schedules import LinearAlphaBar, LinearBeta

    if name not in PROCESS_OF_OBJECTIVE:
        raise ValueError(f"loss = {name!r} must be one of {', '.join(OBJECTIVES)}")
    defaults = {"num_steps": num_steps is None,
                "ce_weight": isinstance(ce_weight, (int, float)) and not isinstance(
                    ce_weight, bool) and ce_weight == 0}
    for option, value, default in (("num_steps", num_steps, None), ("ce_weight", ce_weight, 0.0)):
        if option not in OPTIONS_OF_OBJECTIVE[name] and not defaults[option]:
            users = [k for k, used in OPTIONS_OF_OBJECTIVE.items() if option in used]
            raise ValueError(f"{option} = {value!r} is not used by the {name!r} objective "
                             f"(only by {', '.join(map(repr, users))}): leave it at its "
                             f"default {default!r}")
    if name == "masked_elbo":
        return MaskedELBO(Masking(config, schedule=schedule or LinearAlphaBar()))
    if name == "d3pm":
        return D3PMBound(UniformSubstitution(config, schedule=schedule or LinearBeta.rhm()),
                         num_steps=num_steps, ce_weight=ce_weight)
    cls = GaussianX0 if name == "gaussian_x0" else GaussianEps
    return cls(Gaussian(config, schedule=schedule or LinearBeta()), num_steps=num_steps)
