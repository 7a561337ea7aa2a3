"""Reverse diffusion with a trained network, called like the exact samplers of ``rhm_jax.exact``.

:func:`reverse_sample` runs the step-by-step reverse chain from a noisy ``x_t`` at time
``t`` back to 0, exactly as :func:`rhm_jax.exact.reverse_sample` with ``joint=False`` does
with BP's marginals (for masking, by default one token at a time: :func:`first_hit_chain`),
but with the network's estimate of ``p(x0 | x_t)`` in their place
(each objective says how its outputs become that estimate; D3PM's x0-parameterisation
multiplies its ``p̃`` by the leaf likelihood first). :func:`generate` starts from pure noise
at ``t = 1``. :func:`experiment_denoiser` turns a network into the ``denoise(params, key,
x_t, t)`` function that :func:`rhm_jax.experiments.forward_backward` takes, so the phase
transition experiment runs on the network through the same code as on BP.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rhm_jax.noise import Gaussian, Masking, UniformSubstitution
from rhm_jax.schedules import LinearAlphaBar

__all__ = ["Denoiser", "reverse_sample", "generate", "experiment_denoiser", "predict_x0",
           "first_hit_chain", "check_num_steps", "check_denoiser", "generate_bytes"]


class Denoiser(NamedTuple):
    """A trained network and the objective it was trained with (which fixes its process)."""

    model: nnx.Module
    objective: object

    @property
    def process(self):
        return self.objective.process

    @classmethod
    def from_run(cls, run, ema: bool = False) -> "Denoiser":
        """From a :class:`~rhm_jax.denoise.train.Run` (its EMA parameters if ``ema``)."""
        model = run.ema_model if ema and run.ema_model is not None else run.model
        return cls(model, run.objective)


def check_denoiser(name: str, denoiser) -> Denoiser:
    """``denoiser`` if it is a :class:`Denoiser`; a training run (a ``Run``, with ``model``
    and ``objective``) or anything else is refused naming the argument and saying how to
    make one (``Denoiser.from_run(run)``, whose ``ema`` picks the parameters)."""
    if isinstance(denoiser, Denoiser):
        return denoiser
    hint = ""
    if hasattr(denoiser, "model") and hasattr(denoiser, "objective"):
        hint = (": wrap a training run with Denoiser.from_run(run) (ema=True for its EMA "
                "parameters)")
    from rhm_jax.validation import describe

    raise TypeError(f"{name} must be a rhm_jax.denoise.Denoiser, got "
                    f"{type(denoiser).__name__ if hint else describe(denoiser)}{hint}")


def _x0_draw(key, probs):
    """Per-token draw from (possibly unnormalised, for ε-prediction) posterior means."""
    probs = jnp.clip(probs, 0.0, None)
    probs = probs / jnp.maximum(jnp.sum(probs, -1, keepdims=True), 1e-30)
    return jax.random.categorical(key, jnp.log(jnp.maximum(probs, 1e-38))).astype(jnp.int32)


def check_num_steps(process, num_steps):
    """``num_steps`` of a reverse chain: an int ``>= 1`` (steps on the uniform time grid), or
    ``None`` for masking's one-token-at-a-time chain (:func:`first_hit_chain`)."""
    from rhm_jax.validation import check_int

    if num_steps is None:
        if not isinstance(process, Masking):
            raise ValueError(f"num_steps = None (unmask one token at a time) needs the masking "
                             f"process, got {type(process).__name__}: give a number of reverse "
                             f"steps >= 1")
        return None
    return check_int("num_steps", num_steps, 1)


def reverse_chain(predict, objective, key, x_t, t, num_steps: int | None):
    """The reverse chain with any predictor ``predict(x_t, t) -> outputs`` (traceable).

    With ``objective.bp_predictor(grammar)`` it is the exact marginals' chain; with a
    network, the network's. ``t`` is ``(n,)``. ``num_steps`` steps on the grid
    ``t_k = t·(K-k)/K``, each drawing its tokens independently from their marginals; for
    masking, ``num_steps=None`` runs :func:`first_hit_chain` instead.
    """
    if num_steps is None:
        return first_hit_chain(predict, objective, key, x_t, t)
    return _grid_chain(predict, objective, key, x_t, t, num_steps)


def _grid_chain(predict, objective, key, x_t, t, num_steps: int):
    model = predict
    process = objective.process
    fractions = (num_steps - jnp.arange(num_steps + 1, dtype=t.dtype)) / num_steps

    def body(x, inputs):
        step_key, t_frac, s_frac = inputs
        t_now, s_next = t_frac * t, s_frac * t
        probs = objective.x0_probs(model(x, t_now), x, t_now)
        draw_key, reverse_key = jax.random.split(step_key)
        if isinstance(process, Gaussian):
            mean, variance = process._posterior_mean_variance(x, s_next, t_now, probs)
            x_s = mean + jnp.sqrt(variance) * jax.random.normal(reverse_key, mean.shape, mean.dtype)
        else:
            x_s = process._sample_reverse(reverse_key, x, s_next, t_now, probs)
        return x_s, _x0_draw(draw_key, probs)

    inputs = (jax.random.split(key, num_steps), fractions[:-1], fractions[1:])
    x_0, x0_draws = jax.lax.scan(body, x_t, inputs)
    if isinstance(process, Gaussian):
        return x0_draws[-1]  # s = 0: the DDPM posterior is a point mass at E[x0], not tokens
    # a mask left at s = 0 only follows a mask observed at α_t = 1 (probability 0)
    return jnp.where(x_0 < process.config.v, x_0, x0_draws[-1]).astype(jnp.int32)


def _masked_time(schedule, mask_prob):
    """The time ``τ`` at which a token is masked with probability ``1 - α_τ = mask_prob``
    (``α`` decreasing): exact for ``α_t = 1 - t``, else bisection to float precision."""
    if isinstance(schedule, LinearAlphaBar):
        return mask_prob

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = 1.0 - schedule.alpha_bar(mid) < mask_prob
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    _, hi = jax.lax.fori_loop(0, 48, halve, (jnp.zeros_like(mask_prob), jnp.ones_like(mask_prob)))
    return hi


def first_hit_chain(predict, objective, key, x_t, t):
    """Masking's reverse chain one token at a time (traceable; ``d`` steps, ``t`` ``(n,)``).

    Going back from ``t``, each of the ``n`` masked tokens was masked at an independent
    time with ``P(τ <= s) = (1-α_s)/(1-α_t)``; the next token to unmask is a uniformly
    random one of them, at the latest of those times, ``1-α_τ = (1-α_t)·u^(1/n)``. The step
    evaluates the predictor at ``(x, τ)`` and draws that one token from its marginal, so
    no two tokens are ever drawn independently of each other: with exact marginals the
    chain is an exact draw from ``p(x0 | x_t)`` (a chain rule over a random order), and a
    network's samples differ from BP's only by the network's errors. Rows with no mask
    left are unchanged.
    """
    process = objective.process
    mask, d = process.mask_token, x_t.shape[-1]

    def body(carry, step_key):
        x, t_now = carry
        masked = x == mask
        n = jnp.sum(masked, axis=-1)
        time_key, position_key, draw_key = jax.random.split(step_key, 3)
        u = jax.random.uniform(time_key, n.shape, t_now.dtype)
        mask_prob = (1.0 - process.schedule.alpha_bar(t_now)) * u ** (1.0 / jnp.maximum(n, 1))
        tau = jnp.where(n > 0, _masked_time(process.schedule, mask_prob), t_now)
        probs = objective.x0_probs(predict(x, tau), x, tau)
        scores = jnp.where(masked, jax.random.uniform(position_key, x.shape, t_now.dtype), -1.0)
        pick = jax.nn.one_hot(jnp.argmax(scores, axis=-1), d, dtype=bool) & masked
        return (jnp.where(pick, _x0_draw(draw_key, probs), x), tau), None

    (x_0, _), _ = jax.lax.scan(body, (x_t, t), jax.random.split(key, d))
    return x_0.astype(jnp.int32)


@partial(jax.jit, static_argnames=("graphdef", "objective", "num_steps"))
def _reverse_sample(key, graphdef, params, objective, x_t, t, num_steps):
    return reverse_chain(nnx.merge(graphdef, params), objective, key, x_t, t, num_steps)


def _check(denoiser, process, x_t, t):
    from rhm_jax.exact import check_observation

    denoiser = check_denoiser("denoiser", denoiser)
    if process is not None and process != denoiser.process:
        raise ValueError(f"process = {process} differs from the process the network was "
                         f"trained on, {denoiser.process}")
    x_t, t, unbatched = check_observation(denoiser.process, "x_t", x_t, t)
    return x_t, jnp.broadcast_to(t, x_t.shape[:1]), unbatched


def reverse_sample(key, denoiser: Denoiser, process, x_t, t, num_steps: int | None = None):
    """Reverse diffusion from time ``t`` to 0 with the network.

    The same calling convention as :func:`rhm_jax.exact.reverse_sample` (a trained network
    in the grammar's place). With ``num_steps = K`` the chain steps on ``t_k = t·(K-k)/K``
    and each step is the factorised one (``joint=False``), since a network gives per-token
    posteriors: tokens that change in the same step are drawn independently, which even
    exact marginals pay for in invalid sequences unless ``K`` is large. For masking the
    default ``num_steps=None`` unmasks one token at a time (:func:`first_hit_chain`,
    ``d`` network calls), exact with exact marginals. For D3PM on a discrete schedule,
    start at a step ``t = k/T`` and take ``num_steps = k`` to step along the schedule's own
    grid.

    Args:
      key: a PRNG key.
      denoiser: a :class:`Denoiser`.
      process: the noise process (must be the one the network was trained on).
      x_t: ``(n, d)`` int (``(n, d, v)`` float for the Gaussian), or one unbatched datum.
      t: a scalar or ``(n,)`` start time in ``(0, 1]`` (a chain from ``t = 0`` has no
        step to take, and its grid ``t·(K-k)/K`` collapses: refused).
      num_steps: number of reverse steps (static); ``None`` (masking only) for one token
        at a time.

    Returns:
      ``(n, d)`` int32 tokens ``x̂0``.
    """
    from rhm_jax.validation import check_key

    key = check_key("key", key)
    t_given = t
    x_t, t, unbatched = _check(denoiser, process, x_t, t)
    _check_start_time(t_given)  # as given: the checked t is broadcast to (n,)
    num_steps = check_num_steps(denoiser.process, num_steps)
    graphdef, params = nnx.split(denoiser.model)
    out = _reverse_sample(key, graphdef, params, denoiser.objective, x_t, t, num_steps)
    return out[0] if unbatched else out


def _check_start_time(t) -> None:
    """Concrete start times must be ``> 0`` (``check_observation`` has checked ``<= 1``)."""
    if isinstance(t, jax.core.Tracer):
        return
    values = np.asarray(t)
    if values.size and not np.all(values > 0):
        where = np.flatnonzero(~(values.ravel() > 0))[0]
        position = f"[{where}]" if values.ndim else ""
        raise ValueError(f"t{position} = {values.ravel()[where]} must be in (0, 1]: the reverse "
                         "chain runs from time t > 0 back to 0")


def prior_sample(key, process, n: int):
    """``x_1`` drawn from the forward process's end point (all masks, uniform tokens, N(0, I))."""
    cfg = process.config
    if isinstance(process, Masking):
        return jnp.full((n, cfg.d), process.mask_token, jnp.int32)
    if isinstance(process, UniformSubstitution):
        return jax.random.randint(key, (n, cfg.d), 0, cfg.v, dtype=jnp.int32)
    return jax.random.normal(key, (n, cfg.d, cfg.v), dtype=jnp.result_type(float))


def _model_width(model) -> int:
    """Channels of the network's first activation (``model.input.width`` for the
    library's networks), 0 when the model does not say."""
    width = getattr(getattr(model, "input", None), "width", 0)
    return width if isinstance(width, int) and width > 0 else 0


def generate_bytes(denoiser: Denoiser, n: int) -> int:
    """A lower bound on the bytes :func:`generate` allocates for ``n`` sequences.

    Every step of the chain runs the network on all ``n`` sequences at once, so it holds
    ``4·n·d·(c + 3v + 2w)`` bytes: the chain's state (``c = 1`` int32 token, ``c = v``
    floats for the Gaussian), the network's outputs, the posterior and its draw's log
    probabilities (``v`` floats each), and two activations of width ``w`` (the input
    embedding and one block; ``w = model.input.width``, 0 if unknown). The network's
    other activations come on top, so a run refused by this bound cannot fit.

    Examples:
      >>> from flax import nnx
      >>> from rhm_jax import RHMConfig
      >>> from rhm_jax.denoise import ModelConfig, TreeUNet, make_objective
      >>> cfg = RHMConfig(v=8, m=2, s=2, L=3)
      >>> objective = make_objective("masked_elbo", cfg)
      >>> net = TreeUNet(cfg, ModelConfig(width=16), num_states=9, rngs=nnx.Rngs(0))
      >>> generate_bytes(Denoiser(net, objective), 10)  # 4 * 10 * 8 * (1 + 24 + 32)
      18240
    """
    denoiser = check_denoiser("denoiser", denoiser)
    cfg = denoiser.process.config
    state = cfg.v if isinstance(denoiser.process, Gaussian) else 1
    return 4 * int(n) * cfg.d * (state + 3 * cfg.v + 2 * _model_width(denoiser.model))


def generate(key, denoiser: Denoiser, n: int, num_steps: int | None = None):
    """``n`` new sequences: reverse diffusion from pure noise at ``t = 1``
    (``num_steps`` as in :func:`reverse_sample`).

    ``denoiser`` must be a :class:`Denoiser` (``Denoiser.from_run(run)`` for a training
    run). A call that cannot fit in the device's memory (:func:`generate_bytes`, a lower
    bound) is refused before any work, with its size.
    """
    from rhm_jax.validation import check_fits, check_int, check_key

    key = check_key("key", key)
    denoiser = check_denoiser("denoiser", denoiser)
    n = check_int("n", n, 1)
    num_steps = check_num_steps(denoiser.process, num_steps)
    cfg = denoiser.process.config
    check_fits(f"generate(n={n}) at d = {cfg.s}**{cfg.L} tokens", generate_bytes(denoiser, n),
               advice="generate fewer sequences per call")
    prior_key, chain_key = jax.random.split(key)
    x_1 = prior_sample(prior_key, denoiser.process, n)
    return reverse_sample(chain_key, denoiser, None, x_1, 1.0, num_steps)


def predict_x0(denoiser: Denoiser, x_t, t):
    """The network's estimate of the quantity its loss targets (compare with
    ``objective.bp_target``): ``(n, d, v)``."""
    x_t, t, unbatched = _check(denoiser, None, x_t, t)
    graphdef, params = nnx.split(denoiser.model)
    out = _predict(graphdef, params, denoiser.objective, x_t, t)
    return out[0] if unbatched else out


@partial(jax.jit, static_argnames=("graphdef", "objective"))
def _predict(graphdef, params, objective, x_t, t):
    return objective.target_probs(nnx.merge(graphdef, params)(x_t, t), x_t, t)


def experiment_denoiser(denoiser: Denoiser, num_steps: int | None = None):
    """``(denoise, params)`` for ``experiments.forward_backward(..., denoiser=denoise,
    denoiser_params=params)``: ``denoise(params, key, x_t, t)`` runs :func:`reverse_sample`'s
    chain (traceable, ``t`` of shape ``(c,)``; ``num_steps`` as there). ``denoiser`` must
    be a :class:`Denoiser` (``Denoiser.from_run(run)`` for a training run)."""
    denoiser = check_denoiser("denoiser", denoiser)
    num_steps = check_num_steps(denoiser.process, num_steps)
    graphdef, params = nnx.split(denoiser.model)
    objective = denoiser.objective

    def denoise(params, key, x_t, t):
        return _reverse_sample(key, graphdef, params, objective, x_t, t, num_steps)

    return _HashableDenoise(denoise, (graphdef, objective, num_steps)), params


class _HashableDenoise:
    """A function that hashes by what it computes, so jit caches it across calls."""

    def __init__(self, fn, identity):
        self.fn, self.identity = fn, identity

    def __call__(self, *args):
        return self.fn(*args)

    def __hash__(self):
        return hash(self.identity)

    def __eq__(self, other):
        return isinstance(other, _HashableDenoise) and self.identity == other.identity
