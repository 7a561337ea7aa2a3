"""The exact (Bayes-optimal) denoiser of the RHM, built on belief propagation (``docs/theory/belief_propagation.md``).

Given a noisy observation ``x_t`` of a datum, BP on the tree gives everything an ideal
denoiser knows:

* :func:`posterior_mean` — ``E[onehot(x0) | x_t] = μ_L``, the leaf marginals;
* :func:`gaussian_score` — ``∇ log p_t(x_t) = (sqrt(ᾱ_t)·μ_L - x_t)/(1-ᾱ_t)`` (Tweedie);
* :func:`d3pm_x0_target` — the optimum of D3PM's x0-parameterisation: the message from the
  rest of the tree, ``w_L ∝ μ_L / lik`` (``docs/theory/belief_propagation.md``, trained models);
* :func:`one_shot_sample` — ``x̂0 ~ p(x0 | x_t)`` in one shot (BP posterior sampling);
* :func:`reverse_step` / :func:`reverse_sample` — step-by-step reverse diffusion with the
  exact kernels;
* :func:`reconstruction_by_level` — the per-level overlap of ``x̂0`` with ``x0`` whose mean
  is ``P_l(t)`` (``docs/theory/phase_transition.md``).

Joint versus factorised reverse steps. The exact reverse kernel from ``t`` to ``s < t`` is
``p(x_s | x_t) = Σ_{x0} p(x0 | x_t) Π_i q(x_s,i | x_t,i, x0_i)``. ``joint=True`` samples it
exactly, for any step size: draw a whole tree ``x0 ~ p(x0 | x_t)`` with
:func:`rhm_jax.bp.sample_posterior`, then ``x_s,i ~ q(x_s,i | x_t,i, x0_i)``.
``joint=False`` is what a trained D3PM/DDPM/MDLM network does: every token is drawn
independently from ``Σ_a q(x_s,i | x_t,i, x0_i = a)·μ_{L,i}(a)``. Each token's law is
exact, but the correlations between tokens that the shared ``x0`` induces are lost, so
the joint law is exact only as the step size goes to 0; with few steps it produces
sequences that no tree generates (then also ``p(x_s) = 0``, and BP falls back to its
documented uniform messages, see :mod:`rhm_jax.bp`).

Batching. Observations are ``(n, d)`` int tokens (``(n, d, v)`` floats for the Gaussian)
or a single unbatched sequence ``(d,)`` / ``(d, v)``; ``t`` is a scalar or one time per
sequence ``(n,)``. Every function is pure, jit- and vmap-able (a noise sweep is one
``jax.vmap`` over ``t``); the process, ``joint`` and ``num_steps`` are static. Value checks
(times in range, ``s < t``) run only on concrete (non-traced) inputs.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from rhm_jax import bp
from rhm_jax.validation import check_bool, check_int, check_key, check_tokens
from rhm_jax.grammar import Grammar
from rhm_jax.noise import (
    Gaussian,
    Masking,
    UniformSubstitution,
    check_time,
)
from rhm_jax.sampling import data_from_digits, digits_from_tokens
from rhm_jax.schedules import is_concrete

__all__ = [
    "posterior_mean",
    "gaussian_score",
    "d3pm_x0_target",
    "one_shot_sample",
    "reverse_step",
    "reverse_sample",
    "reconstruction_by_level",
]

#: Processes with a sampled forward process, hence a reverse process.
_REVERSIBLE = (Masking, UniformSubstitution, Gaussian)


# ---- validation ---------------------------------------------------------------------------
def _check_grammar_and_process(grammar, process, *, reversible: bool = False) -> None:
    if not isinstance(grammar, Grammar):
        raise TypeError(f"grammar must be a Grammar, got {type(grammar).__name__}")
    if reversible and not isinstance(process, _REVERSIBLE):
        raise TypeError(
            f"process must be one of Masking, UniformSubstitution, Gaussian (a process with a "
            f"sampled forward corruption, hence a reverse process), got "
            f"{type(process).__name__}")
    if not callable(getattr(process, "leaf_log_likelihood", None)):
        raise TypeError(f"process must be a noise process with leaf_log_likelihood, got "
                        f"{type(process).__name__}")
    cfg, pcfg = grammar.config, process.config
    if (pcfg.d, pcfg.v) != (cfg.d, cfg.v):
        raise ValueError(f"process.config has (d, v) = ({pcfg.d}, {pcfg.v}) but grammar.config "
                         f"has (d, v) = ({cfg.d}, {cfg.v}); they must agree")


def check_observation(process, name: str, observation, t) -> tuple[Array, Array, bool]:
    """Validate a noisy observation and its time; return them batched and an unbatched flag."""
    cfg = process.config
    if isinstance(process, Gaussian):
        observation = process.check_observation(name, observation)
        unbatched = observation.ndim == 2
    else:
        observation = check_tokens(name, observation, cfg.d, getattr(process, "num_states", cfg.v))
        unbatched = observation.ndim == 1
    if unbatched:
        observation = observation[None]
        if jnp.shape(t) != ():
            raise ValueError(f"t has shape {jnp.shape(t)}, but must be a scalar for an "
                             f"unbatched {name}")
    return observation, check_time("t", t, observation.shape[:1]), unbatched


def _check_earlier(s, t) -> None:
    """``s < t`` strictly (when both are concrete)."""
    if is_concrete(s) and is_concrete(t):
        s_arr, t_arr = np.broadcast_arrays(np.asarray(s, np.float64), np.asarray(t, np.float64))
        bad = s_arr >= t_arr
        if bad.any():
            raise ValueError(f"s = {s_arr[bad].ravel()[0]} must be < t = {t_arr[bad].ravel()[0]}: "
                             "a reverse step goes from time t back to an earlier time s")


def _unbatch(tree, unbatched: bool):
    return jax.tree.map(lambda x: x[0], tree) if unbatched else tree


# ---- exact denoiser quantities ------------------------------------------------------------
def _bp_marginals(grammar, process, observation, t, messages: bool = False) -> bp.BPResult:
    return bp.marginals(grammar, process.leaf_log_likelihood(observation, t), messages=messages)


def posterior_mean(grammar: Grammar, process, observation: ArrayLike,
                   t: ArrayLike) -> Float[Array, "*n d v"]:
    """``E[onehot(x0) | x_t] = μ_L``, the BP leaf marginals (``docs/theory/belief_propagation.md``).

    Args:
      grammar: the rules.
      process: any noise process of :mod:`rhm_jax.noise` (the ε-process included).
      observation: ``x_t``, ``(n, d)`` int (``(n, d, v)`` float for the Gaussian), or one
        unbatched sequence.
      t: time (ε for the ε-process), a scalar or ``(n,)``.

    Returns:
      ``(n, d, v)`` posterior marginals of the tokens (``(d, v)`` if unbatched).

    Examples:
      >>> import jax
      >>> from rhm_jax import RHMConfig, Masking, sample_data, sample_grammar
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> proc = Masking(g.config)
      >>> x0 = sample_data(jax.random.key(1), g, 4).tokens
      >>> mu = posterior_mean(g, proc, proc.corrupt(jax.random.key(2), x0, 0.3), 0.3)
      >>> mu.shape, bool(jax.numpy.allclose(mu.sum(-1), 1))
      ((4, 8, 8), True)
    """
    _check_grammar_and_process(grammar, process)
    observation, t, unbatched = check_observation(process, "observation", observation, t)
    return _unbatch(_bp_marginals(grammar, process, observation, t).marginals[-1], unbatched)


def gaussian_score(grammar: Grammar, process: Gaussian, x_t: ArrayLike,
                   t: ArrayLike) -> Float[Array, "*n d v"]:
    """Exact score ``∇ log p_t(x_t) = (sqrt(ᾱ_t)·E[x0 | x_t] - x_t)/(1-ᾱ_t)`` (``docs/theory/belief_propagation.md``).

    ``E[x0 | x_t]`` is :func:`posterior_mean`; ``p_t`` is the law of ``x_t`` with ``x0``
    drawn from the RHM (Tweedie's formula, via :meth:`Gaussian.score`).

    Args:
      grammar: the rules.
      process: a :class:`~rhm_jax.noise.Gaussian` process.
      x_t: ``(n, d, v)`` or ``(d, v)`` float observation.
      t: a scalar or ``(n,)``.

    Returns:
      The score, shaped like ``x_t``.
    """
    _check_grammar_and_process(grammar, process)
    if not isinstance(process, Gaussian):
        raise TypeError(f"process must be Gaussian for a score, got {type(process).__name__}")
    x_t, t, unbatched = check_observation(process, "x_t", x_t, t)
    mean = _bp_marginals(grammar, process, x_t, t).marginals[-1]
    return _unbatch(process.score(x_t, t, mean), unbatched)


def d3pm_x0_target(grammar: Grammar, process, observation: ArrayLike,
                   t: ArrayLike) -> Float[Array, "*n d v"]:
    """The optimum of D3PM's x0-parameterisation: the BP downward leaf message ``w_L``.

    D3PM forms ``p(x_s | x_t) ∝ Σ_a q(x_s, x_t | x0 = a)·p̃(a | x_t)``, multiplying the
    network output ``p̃`` by ``q(x_t,i | x0_i = a) = lik_i(a)`` once more; the exact kernel
    needs ``lik_i·p̃ ∝ μ_{L,i}``, so the optimum is ``p̃_i ∝ μ_{L,i} / lik_i`` = the message
    from the rest of the tree, ``p(x0_i = a | x_t with token i's own evidence removed)``
    (``docs/theory/belief_propagation.md``, trained models). Computed as BP's downward message, so no
    division: it is also defined where ``lik_i(a) = 0`` (e.g. an unmasked token), where the
    parameterisation leaves ``p̃`` free.

    Args:
      grammar: the rules.
      process: any noise process.
      observation: ``x_t`` as for :func:`posterior_mean`.
      t: a scalar or ``(n,)``.

    Returns:
      ``(n, d, v)`` normalised per-token distributions (``(d, v)`` if unbatched).
    """
    _check_grammar_and_process(grammar, process)
    observation, t, unbatched = check_observation(process, "observation", observation, t)
    return _unbatch(_bp_marginals(grammar, process, observation, t, messages=True).downward[-1], unbatched)


def one_shot_sample(key: PRNGKeyArray, grammar: Grammar, process, x_t: ArrayLike,
                    t: ArrayLike) -> Int[Array, "*n d"]:
    """One exact draw ``x̂0 ~ p(x0 | x_t)`` per sequence, by BP posterior sampling (``docs/theory/belief_propagation.md``).

    The exact backward diffusion from ``t`` to 0 in one shot; compare :func:`reverse_sample`.

    Args:
      key: a PRNG key.
      grammar: the rules.
      process: any noise process.
      x_t: the observation, as for :func:`posterior_mean`.
      t: a scalar or ``(n,)``.

    Returns:
      ``(n, d)`` int32 tokens (``(d,)`` if unbatched).
    """
    check_key("key", key)
    _check_grammar_and_process(grammar, process)
    x_t, t, unbatched = check_observation(process, "x_t", x_t, t)
    return _unbatch(_one_shot(key, grammar, process, x_t, t), unbatched)


def _one_shot(key, grammar, process, x_t, t) -> Array:
    loglik = process.leaf_log_likelihood(x_t, t)
    return bp.sample_posterior(key, grammar, loglik).tokens[:, 0]


# ---- step-by-step reverse diffusion -------------------------------------------------------
def _step(x0_key, reverse_key, grammar, process, x_t, s, t, joint: bool
          ) -> tuple[Array, Array]:
    """One reverse step ``t -> s``; returns ``x_s`` and the ``x0`` draw it used.

    ``joint``: ``x0`` is a whole-tree posterior draw and ``x_s ~ q(x_s | x_t, x0)``.
    Otherwise ``x_s,i ~ Σ_a q(x_s,i | x_t,i, a) μ_{L,i}(a)`` and the ``x0`` returned is a
    per-token draw from ``μ_L`` (the factorised denoiser's own guess of ``x0``).
    """
    v = grammar.config.v
    loglik = process.leaf_log_likelihood(x_t, t)
    if joint:
        x0 = bp.sample_posterior(x0_key, grammar, loglik).tokens[:, 0]
        x0_probs = jax.nn.one_hot(x0, v, dtype=loglik.dtype)
    else:
        x0_probs = bp.marginals(grammar, loglik).marginals[-1]
        x0 = jax.random.categorical(x0_key, jnp.log(x0_probs)).astype(jnp.int32)
    return process.sample_reverse(reverse_key, x_t, s, t, x0_probs), x0


@partial(jax.jit, static_argnames=("process", "joint"))
def _reverse_step(key, grammar, process, x_t, s, t, joint):
    return _step(*jax.random.split(key), grammar, process, x_t, s, t, joint)[0]


def reverse_step(key: PRNGKeyArray, grammar: Grammar, process, x_t: ArrayLike, s: ArrayLike,
                 t: ArrayLike, *, joint: bool = True) -> Array:
    """One exact reverse-diffusion step from time ``t`` to ``s < t`` (``docs/theory/belief_propagation.md``).

    ``joint=True`` draws ``x_s`` exactly from ``p(x_s | x_t)`` for any step size: a whole
    tree ``x0 ~ p(x0 | x_t)`` by BP posterior sampling, then ``x_s ~ q(x_s | x_t, x0)``.
    ``joint=False`` is the factorised step of a trained D3PM/DDPM network: the BP marginals
    ``μ_L`` go into ``process.sample_reverse``, giving the exact per-token kernel
    ``Σ_a q(x_s,i | x_t,i, a)·μ_{L,i}(a)`` but independent tokens, so the step is exact
    jointly only as ``t - s -> 0`` (see the module docstring).

    Args:
      key: a PRNG key.
      grammar: the rules.
      process: :class:`~rhm_jax.noise.Masking`, :class:`~rhm_jax.noise.UniformSubstitution`
        or :class:`~rhm_jax.noise.Gaussian` (the ε-process has no reverse process).
      x_t: the observation at time ``t`` (``(n, d)`` int, ``(n, d, v)`` float for the
        Gaussian, or unbatched).
      s: the earlier time, a scalar or ``(n,)``, ``0 <= s < t``.
      t: the current time, a scalar or ``(n,)``.
      joint: exact joint step (default) or the factorised per-token step (static).

    Returns:
      ``x_s``, of the same shape and kind as ``x_t``.
    """
    check_key("key", key)
    _check_grammar_and_process(grammar, process, reversible=True)
    joint = check_bool("joint", joint)
    x_t, t_checked, unbatched = check_observation(process, "x_t", x_t, t)
    s_checked = check_time("s", s, x_t.shape[:1])
    _check_earlier(s, t)  # the values as given, before rounding to float32
    return _unbatch(_reverse_step(key, grammar, process, x_t, s_checked, t_checked, joint),
                    unbatched)


@partial(jax.jit, static_argnames=("process", "num_steps", "joint"))
def _reverse_sample(key, grammar, process, x_t, t, num_steps, joint):
    # the uniform grid t_k = t·(K-k)/K; the fraction is exact at k = 0 (t) and k = K (0)
    fractions = (num_steps - jnp.arange(num_steps + 1, dtype=t.dtype)) / num_steps

    def body(carry, inputs):
        x, _ = carry
        step_keys, t_now, s_next = inputs
        return _step(*step_keys, grammar, process, x, s_next * t, t_now * t, joint), None

    x0_init = jnp.zeros(x_t.shape[:2], jnp.int32)
    # all keys drawn before the loop: a split inside the body is one more RNG to compile
    inputs = (jax.random.split(key, (num_steps, 2)), fractions[:-1], fractions[1:])
    (x_0, x0_draw), _ = jax.lax.scan(body, (x_t, x0_init), inputs)
    if joint:
        # The last step's x0 draw *is* x_0: q(x_0 | x_1, x0) is a point mass on x0.
        return x0_draw
    if isinstance(process, Gaussian):
        # At s = 0 the DDPM posterior is a point mass at E[x0] = μ_L, not a token: draw the
        # tokens from μ_L, as the discrete kernels at s = 0 do on every uncertain token.
        return x0_draw
    # A mask left at s = 0 only follows a mask observed at α_t = 1 (probability 0).
    return jnp.where(x_0 < grammar.config.v, x_0, x0_draw).astype(jnp.int32)


def reverse_sample(key: PRNGKeyArray, grammar: Grammar, process, x_t: ArrayLike,
                   t: ArrayLike, num_steps: int, *, joint: bool = True) -> Int[Array, "*n d"]:
    """Step-by-step reverse diffusion from time ``t`` to 0 with exact kernels (``docs/theory/belief_propagation.md``).

    ``num_steps`` :func:`reverse_step` calls on the uniform grid ``t_k = t·(K-k)/K``,
    ``k = 0..K``, as one ``jax.lax.scan``. With ``joint=True`` the result is an exact draw
    from ``p(x0 | x_t)`` whatever ``num_steps`` (the same law as :func:`one_shot_sample`;
    the last step's ``x0`` draw is returned, since ``q(x_0 | x_{t_{K-1}}, x0)`` is a point
    mass on it). With ``joint=False`` (factorised steps) it is exact only as
    ``num_steps -> ∞``; its last step draws each token from ``Σ_a q(x_0 | x_t, a) μ(a)``,
    i.e. from ``μ_L`` for uncertain tokens — for the Gaussian, whose DDPM posterior at
    ``s = 0`` is the point mass ``E[x0]``, the tokens are drawn from ``μ_L``.

    Args:
      key: a PRNG key.
      grammar: the rules.
      process: Masking, UniformSubstitution or Gaussian (static).
      x_t: the observation at time ``t`` (batched or unbatched, as for :func:`reverse_step`).
      t: the starting time, ``0 < t <= 1``, a scalar or ``(n,)``.
      num_steps: number of reverse steps ``K >= 1`` (static).
      joint: exact joint steps (default) or factorised per-token steps (static).

    Returns:
      ``(n, d)`` int32 tokens ``x̂0`` (``(d,)`` if unbatched).
    """
    check_key("key", key)
    _check_grammar_and_process(grammar, process, reversible=True)
    num_steps = check_int("num_steps", num_steps, minimum=1)
    joint = check_bool("joint", joint)
    x_t, t_checked, unbatched = check_observation(process, "x_t", x_t, t)
    if is_concrete(t_checked) and (np.asarray(t_checked) <= 0).any():
        raise ValueError("t = 0 must be > 0: reverse diffusion starts from a noisy time t and "
                         "runs back to 0")
    return _unbatch(_reverse_sample(key, grammar, process, x_t, t_checked, num_steps, joint),
                    unbatched)


# ---- observables --------------------------------------------------------------------------
@jax.jit
def _reconstruction_by_level(grammar, x0_latents, x_hat_tokens):
    cfg = grammar.config
    digits, valid = digits_from_tokens(grammar, x_hat_tokens)
    hat_latents = data_from_digits(grammar, digits).latents
    dtype = jnp.result_type(float)
    rows = []
    for level in range(cfg.L):
        same = jnp.mean(x0_latents[level] == hat_latents[level], axis=-1, dtype=dtype)
        rows.append(jnp.where(valid, same, 0.0))
    rows.append(jnp.mean(x0_latents[cfg.L] == x_hat_tokens, axis=-1, dtype=dtype))
    return jnp.stack(rows, axis=-1)


def reconstruction_by_level(grammar: Grammar, x0_latents, x_hat_tokens: ArrayLike
                            ) -> Float[Array, "*n levels"]:
    """Per level, the fraction of nodes where ``x̂0``'s latent symbol equals ``x0``'s.

    Its mean over data and noise is the counting form of ``P_l(t)`` (``docs/theory/phase_transition.md``). ``x̂0``
    is parsed with :func:`~rhm_jax.sampling.digits_from_tokens`. A sequence that no tree
    generates (possible with factorised reverse steps, ``joint=False``) has no latent
    symbols: it counts as not reconstructed at every level ``l < L``, while level ``L``
    still compares its tokens.

    Args:
      grammar: the rules.
      x0_latents: tuple over levels ``l = 0..L`` of ``(n, s**l)`` int latent symbols of
        ``x0`` (:attr:`Data.latents`), or of ``(s**l,)`` for one datum.
      x_hat_tokens: ``(n, d)`` (or ``(d,)``) int tokens of ``x̂0``.

    Returns:
      ``(n, L + 1)`` float fractions (``(L + 1,)`` if unbatched); column 0 is the class.
    """
    if not isinstance(grammar, Grammar):
        raise TypeError(f"grammar must be a Grammar, got {type(grammar).__name__}")
    cfg = grammar.config
    x_hat_tokens = check_tokens("x_hat_tokens", x_hat_tokens, cfg.d, cfg.v)
    unbatched = x_hat_tokens.ndim == 1
    if not isinstance(x0_latents, (tuple, list)) or len(x0_latents) != cfg.L + 1:
        raise ValueError(f"x0_latents must be a tuple of L + 1 = {cfg.L + 1} arrays (one per "
                         f"level, as Data.latents), got {type(x0_latents).__name__}"
                         + (f" of length {len(x0_latents)}" if isinstance(x0_latents, (tuple, list))
                            else ""))
    checked = []
    for level, latent in enumerate(x0_latents):
        expected = x_hat_tokens.shape[:-1] + (cfg.s**level,)
        dtype = jnp.result_type(latent)
        if not jnp.issubdtype(dtype, jnp.integer) or jnp.shape(latent) != expected:
            raise ValueError(f"x0_latents[{level}] has shape {jnp.shape(latent)} and dtype "
                             f"{dtype}, but must be an integer array of shape {expected}")
        checked.append(jnp.asarray(latent, jnp.int32))
    if unbatched:
        x_hat_tokens, checked = x_hat_tokens[None], [x[None] for x in checked]
    return _unbatch(_reconstruction_by_level(grammar, tuple(checked), x_hat_tokens), unbatched)
