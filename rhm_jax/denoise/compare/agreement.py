"""Per-token agreement of a predictor with exact BP, and its loss next to BP's.

The network and BP go through one code path (:func:`network_predictor`,
:func:`bp_predictor`), on the same data and noise: :func:`agreement` compares, per time
``t``, the quantity the loss targets (:meth:`Objective.bp_target`) token by token
(:func:`token_stats`); :func:`compare_losses` puts the network's held-out loss next to the
same loss with BP plugged in.

What is compared, per objective (the "target" below):

=====================  =========================================  =========================
objective              network's estimate                         compared on
=====================  =========================================  =========================
masking (MaskedELBO)   ``softmax(outputs)`` = ``p(x0_i | x_t)``   masked tokens only (the
                                                                  loss ignores the others)
D3PM (D3PMBound)       ``softmax(outputs)`` = ``p̃``, optimum      every token
                       ``w_L ∝ μ_L / lik`` (BP's downward message)
Gaussian x0            ``softmax(outputs)``, optimum ``μ_L``      every token
Gaussian ε             implied posterior mean ``(x_t - √(1-ᾱ) ε̂)/   every token
                       √ᾱ``, optimum ``μ_L`` (Tweedie)
=====================  =========================================  =========================

The ε-network's implied mean is not a distribution: it is clipped at
:data:`EPS_MEAN_FLOOR` and renormalised before the KL and the top-1 (a symbol it puts at or
below 0 while BP does not then costs ``μ_a log(μ_a / 1e-6)``, not an infinite KL); the
squared error ``Σ_a (est_a - μ_a)²``, which the ε-loss weights and which is reported for
every objective, takes it as it is. Top-1 agreement counts a token when the network's most
probable symbol is one of BP's most probable ones (within :data:`TIE_TOLERANCE`): BP's
posterior often ties (a masked token whose siblings are masked too), and ties must not
count as disagreement. Per-token means are ratio estimates over data (sum over a datum's
included tokens / their number); their standard errors are over data (the tokens of one
datum are not independent).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rhm_jax.denoise.compare.common import host_chunks, snap_times
from rhm_jax.denoise.compare.empirical import empirical_marginals_traced, empirical_target
from rhm_jax.denoise.objectives import GaussianEps
from rhm_jax.denoise.sampling import Denoiser
from rhm_jax.grammar import Grammar, check_grammar, with_inverse_tables
from rhm_jax.noise import LOG_FLOOR, Masking, safe_log
from rhm_jax.stats import mean_se, ratio_se
from rhm_jax.validation import check_int, check_key, check_tokens

__all__ = ["TIE_TOLERANCE", "CLEAR_MARGIN", "EPS_MEAN_FLOOR", "network_predictor",
           "bp_predictor", "token_stats", "Agreement", "agreement", "LossComparison",
           "compare_losses"]

#: Top-1 agreement: the network's argmax counts as BP's when BP gives it at least BP's
#: largest probability minus this (ties of the exact posterior are exact up to rounding).
TIE_TOLERANCE = 1e-4
#: A compared token is *clear* when BP's most probable symbol beats its second by at least
#: this much: top-1 agreement on clear tokens leaves out BP's near-ties, where any
#: approximation of the posterior flips the argmax however small its KL.
CLEAR_MARGIN = 0.05

#: The ε-network's implied posterior mean is clipped at this value and renormalised before
#: its KL and top-1 are taken (about the float32 precision of ``(x_t - √(1-ᾱ) ε̂)/√ᾱ``).
EPS_MEAN_FLOOR = 1e-6

#: Probabilities below this are treated as 0 in the logarithm of an estimate (a clipped
#: implied mean can hold exact zeros where the reference does not).
_PROB_FLOOR = 1e-30


# ---- predictors: the network and BP, through one code path --------------------------------
class _NetworkPredict:
    """``predict(params, x_t, t) -> outputs`` of a network (hashes by its graph, for jit)."""

    def __init__(self, graphdef):
        self.graphdef = graphdef

    def __call__(self, params, x_t, t):
        return nnx.merge(self.graphdef, params)(x_t, t)

    def __hash__(self):
        return hash(("network", self.graphdef))

    def __eq__(self, other):
        return isinstance(other, _NetworkPredict) and other.graphdef == self.graphdef


class _BPPredict:
    """BP in the network's place: ``predict(grammar, x_t, t)`` = ``objective.bp_predictor``."""

    def __init__(self, objective):
        self.objective = objective

    def __call__(self, grammar, x_t, t):
        return self.objective.bp_predictor(grammar)(x_t, t)

    def __hash__(self):
        return hash(("bp", self.objective))

    def __eq__(self, other):
        return isinstance(other, _BPPredict) and other.objective == self.objective


def network_predictor(denoiser: Denoiser):
    """``(predict, params)`` of a trained network: ``predict(params, x_t, t) -> outputs``."""
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be a rhm_jax.denoise.Denoiser, got "
                        f"{type(denoiser).__name__}")
    graphdef, params = nnx.split(denoiser.model)
    return _NetworkPredict(graphdef), params


def bp_predictor(objective, grammar: Grammar):
    """``(predict, params)`` that put exact BP where a network would be (``params`` is the
    grammar): every measure then compares BP with itself — KL 0, top-1 agreement 1."""
    check_grammar(grammar)
    return _BPPredict(objective), with_inverse_tables(grammar)


# ---- per-t agreement with BP --------------------------------------------------------------
def token_stats(ref, est, include, floor: float = 0.0):
    """Per-datum sums of the per-token statistics of an estimate against a reference.

    Traceable. ``est`` is clipped at ``floor`` and renormalised before the KL and the
    top-1 (the squared error takes it as it is); top-1 counts BP's ties as agreement
    (:data:`TIE_TOLERANCE`).

    Args:
      ref: ``(n, d, v)`` reference distributions (BP's target).
      est: ``(n, d, v)`` estimates.
      include: ``(n, d)`` bool, the tokens compared.
      floor: the clip of ``est``.

    Returns:
      ``(n, 7)``, per datum over the included tokens: ``Σ KL(ref ‖ est)``, ``Σ top-1
      agreement``, ``Σ ‖est - ref‖²``, their number, ``Σ top-1 regret`` (``max ref -
      ref[argmax est]``), and over the clear ones (``ref``'s top two differ by at least
      :data:`CLEAR_MARGIN`) ``Σ top-1 agreement`` and their number.

    Examples:
      >>> import jax.numpy as jnp
      >>> ref = jnp.array([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])  # a tie, then a clear token
      >>> est = jnp.array([[[0.4, 0.6, 0.0], [0.5, 0.5, 0.0]]])
      >>> [round(float(x), 4) for x in token_stats(ref, est, jnp.array([[True, True]]))[0]]
      [0.7136, 2.0, 0.52, 2.0, 0.0, 1.0, 1.0]
    """
    squared = jnp.sum((est - ref) ** 2, axis=-1)
    est = jnp.clip(est, floor, None)
    est = est / jnp.maximum(jnp.sum(est, axis=-1, keepdims=True), _PROB_FLOOR)
    log_est = jnp.log(jnp.maximum(est, _PROB_FLOOR))
    kl = jnp.sum(jnp.where(ref > 0, ref * (safe_log(ref) - log_est), 0.0), axis=-1)
    kl = jnp.maximum(kl, 0.0)  # exact KL >= 0; float rounding can dip below
    picked = jnp.take_along_axis(ref, jnp.argmax(est, axis=-1)[..., None], axis=-1)[..., 0]
    top_two = jax.lax.top_k(ref, 2)[0]
    agree = picked >= top_two[..., 0] - TIE_TOLERANCE
    regret = jnp.maximum(top_two[..., 0] - picked, 0.0)
    w = include.astype(ref.dtype)
    clear = w * (top_two[..., 0] - top_two[..., 1] >= CLEAR_MARGIN)
    return jnp.stack([jnp.sum(w * kl, -1), jnp.sum(w * agree, -1), jnp.sum(w * squared, -1),
                      jnp.sum(w, -1), jnp.sum(w * regret, -1), jnp.sum(clear * agree, -1),
                      jnp.sum(clear, -1)], axis=-1)


@partial(jax.jit, static_argnames=("predict", "objective", "empirical_chunk"))
def _agreement_chunk(predict, params, objective, grammar, key, x0, t, train_tokens,
                     empirical_chunk):
    process = objective.process
    t = jnp.full(x0.shape[:1], t, dtype=jnp.result_type(float))
    x_t = process.corrupt(key, x0, t)
    est = objective.target_probs(predict(params, x_t, t), x_t, t)
    ref = objective.bp_target(grammar, x_t, t)
    if isinstance(process, Masking):
        include = x_t == process.mask_token  # the loss only scores masked tokens
    else:
        include = jnp.ones(x0.shape, bool)
    # the ε-network's implied mean is no distribution: floored (module docstring)
    floor = EPS_MEAN_FLOOR if isinstance(objective, GaussianEps) else 0.0
    stats = {"bp": token_stats(ref, est, include, floor)}
    if train_tokens is not None:
        loglik = process.leaf_log_likelihood(x_t, t)
        marginals, log_evidence = empirical_marginals_traced(train_tokens, loglik, empirical_chunk)
        emp = empirical_target(objective, marginals, loglik)
        explained = log_evidence > 0.5 * LOG_FLOOR  # some training datum agrees with x_t
        emp_include = include & explained[:, None]
        stats["emp"] = token_stats(emp, est, emp_include, floor)
        stats["emp_vs_bp"] = token_stats(emp, ref, emp_include)  # KL(emp ‖ BP), finite
        stats["explained"] = explained.astype(ref.dtype)
    return stats


class Agreement(NamedTuple):
    """Per-t agreement of a network with BP (and with the empirical posterior).

    Every array is ``(T,)``, a mean per compared token with its standard error over data.

    Attributes:
      times: the times (on the objective's grid, :func:`snap_times`).
      kl, kl_se: ``KL(BP target ‖ network estimate)`` in nats per compared token.
      top1, top1_se: fraction of compared tokens where the network's most probable symbol
        is one of BP's (:data:`TIE_TOLERANCE`).
      regret, regret_se: ``max_a μ_a - μ_{argmax of the network}`` per compared token, with
        ``μ`` BP's target: how much less often the network's argmax is the true token than
        BP's argmax (masking: exactly that, in expectation over ``x_0`` given ``x_t``).
      top1_clear, top1_clear_se: top-1 agreement over the clear tokens only
        (:data:`CLEAR_MARGIN`); ``clear``: the fraction of compared tokens that are clear.
      sq_error, sq_error_se: ``Σ_a (estimate_a - target_a)²`` per compared token.
      tokens: mean number of compared tokens per datum (masking: the masked ones).
      kl_emp, kl_emp_se, top1_emp, top1_emp_se: the same against the empirical posterior
        of the training set (``None`` without one), over the observations it explains.
      kl_emp_bp, kl_emp_bp_se: ``KL(empirical ‖ BP)``: how far apart the two optima are.
      explained: fraction of observations that some training datum explains.
      n_data: held-out data; repeats: noise draws per datum and time.
    """

    times: np.ndarray
    kl: np.ndarray
    kl_se: np.ndarray
    top1: np.ndarray
    top1_se: np.ndarray
    regret: np.ndarray
    regret_se: np.ndarray
    top1_clear: np.ndarray
    top1_clear_se: np.ndarray
    clear: np.ndarray
    sq_error: np.ndarray
    sq_error_se: np.ndarray
    tokens: np.ndarray
    kl_emp: np.ndarray | None
    kl_emp_se: np.ndarray | None
    top1_emp: np.ndarray | None
    top1_emp_se: np.ndarray | None
    kl_emp_bp: np.ndarray | None
    kl_emp_bp_se: np.ndarray | None
    explained: np.ndarray | None
    n_data: int
    repeats: int


def agreement(key, predict, params, objective, grammar: Grammar, x0, times, *,
              train_tokens=None, repeats: int = 1, chunk_size: int = 256,
              empirical_chunk: int | None = None) -> Agreement:
    """Per-t agreement of a predictor with exact BP on the quantity its loss targets.

    For each ``t``, every held-out datum is noised ``repeats`` times; the predictor's
    estimate of the loss's target (``objective.target_probs``) is compared with BP's
    (``objective.bp_target``) token by token (module docstring: which tokens, and what the
    ε-network is compared on).

    Args:
      key: PRNG key (the noise of chunk ``c``, repeat ``r``, time ``j`` uses
        ``fold_in(fold_in(fold_in(key, j), r), c)``: the same for any predictor).
      predict, params: from :func:`network_predictor` or :func:`bp_predictor`.
      objective: the loss (it fixes the noise process and the target).
      grammar: the rules.
      x0: ``(n, d)`` held-out data.
      times: ``(T,)`` times in ``(0, 1]``, snapped to the objective's grid.
      train_tokens: ``(P, d)`` training set: also compare with its empirical posterior.
      repeats: noise draws per datum and time.
      chunk_size: data per compiled call.
      empirical_chunk: training data per step of the empirical posterior (default: the
        ``(chunk, empirical_chunk, d)`` log-likelihood gather holds about 2**22 floats).

    Returns:
      :class:`Agreement`.
    """
    key = check_key("key", key)
    cfg = check_grammar(grammar).config
    if getattr(objective.process, "config", None) != cfg:
        raise ValueError(f"the objective's process has config {objective.process.config}, "
                         f"but grammar.config = {cfg}")
    x0 = np.asarray(check_tokens("x0", x0, cfg.d, cfg.v, batched=True))
    times = snap_times(objective, times)
    repeats = check_int("repeats", repeats, 1)
    chunk_size = check_int("chunk_size", chunk_size, 1)
    if empirical_chunk is None:
        empirical_chunk = max(1, 2**22 // (min(chunk_size, len(x0)) * cfg.d))
    empirical_chunk = check_int("empirical_chunk", empirical_chunk, 1)
    train = None
    if train_tokens is not None:
        train = check_tokens("train_tokens", train_tokens, cfg.d, cfg.v, batched=True)
        empirical_chunk = min(empirical_chunk, train.shape[0])
    grammar = with_inverse_tables(grammar)
    n = x0.shape[0]
    fields = {name: [] for name in Agreement._fields[1:-2]}
    for j, t in enumerate(times):
        sums = None
        for r in range(repeats):
            base = jax.random.fold_in(jax.random.fold_in(key, j), r)

            def chunk_fn(c, x):
                return _agreement_chunk(predict, params, objective, grammar,
                                        jax.random.fold_in(base, c), jnp.asarray(x), t, train,
                                        empirical_chunk)

            out = host_chunks(chunk_fn, n, chunk_size, x0)
            out = jax.tree.map(lambda y: np.asarray(y, np.float64), out)
            sums = out if sums is None else jax.tree.map(np.add, sums, out)
        bp = sums["bp"]
        for name, column in (("kl", 0), ("top1", 1), ("sq_error", 2)):
            mean, se = ratio_se(bp[:, column], bp[:, 3])
            fields[name].append(mean)
            fields[f"{name}_se"].append(se)
        for name, column, count in (("regret", 4, 3), ("top1_clear", 5, 6)):
            mean, se = ratio_se(bp[:, column], bp[:, count])
            fields[name].append(mean)
            fields[f"{name}_se"].append(se)
        fields["clear"].append(bp[:, 6].sum() / max(bp[:, 3].sum(), 1.0))
        fields["tokens"].append(bp[:, 3].mean() / repeats)
        for name, source, column in (("kl_emp", "emp", 0), ("top1_emp", "emp", 1),
                                     ("kl_emp_bp", "emp_vs_bp", 0)):
            if train is None:
                continue
            mean, se = ratio_se(sums[source][:, column], sums[source][:, 3])
            fields[name].append(mean)
            fields[f"{name}_se"].append(se)
        if train is not None:
            fields["explained"].append(sums["explained"].mean() / repeats)
    arrays = {k: (np.asarray(v, np.float64) if v else None) for k, v in fields.items()}
    return Agreement(times, **arrays, n_data=n, repeats=repeats)


# ---- losses -------------------------------------------------------------------------------
class LossComparison(NamedTuple):
    """Held-out loss of the network and of BP in its place, nats per token (``/ d``).

    ``gap`` = network − BP on the same data, times and noise (paired); ``entropy`` is
    ``log P_max / d``, the floor of the masking NELBO (the D3PM and Gaussian losses' floor
    is the BP-plugged loss, ``bp``).
    """

    network: float
    network_se: float
    bp: float
    bp_se: float
    gap: float
    gap_se: float
    entropy: float
    n_data: int
    repeats: int


@partial(jax.jit, static_argnames=("predict", "objective"))
def _loss_pair(predict, params, objective, grammar, key, x0):
    network = objective.loss(lambda x_t, t: predict(params, x_t, t), key, x0)[0]
    exact = objective.loss(objective.bp_predictor(grammar), key, x0)[0]
    return network, exact


def compare_losses(key, predict, params, objective, grammar: Grammar, x0, *,
                   repeats: int = 4, chunk_size: int = 256) -> LossComparison:
    """The loss of ``predict`` next to the loss with BP plugged in (same keys: the same
    times and noise for both), per datum averaged over ``repeats`` noise draws."""
    key = check_key("key", key)
    cfg = check_grammar(grammar).config
    x0 = np.asarray(check_tokens("x0", x0, cfg.d, cfg.v, batched=True))
    repeats = check_int("repeats", repeats, 1)
    grammar = with_inverse_tables(grammar)
    per_datum = []
    for r in range(repeats):
        base = jax.random.fold_in(key, r)
        per_datum.append(host_chunks(
            lambda c, x: _loss_pair(predict, params, objective, grammar,
                                    jax.random.fold_in(base, c), jnp.asarray(x)),
            x0.shape[0], chunk_size, x0))
    network = np.mean([np.asarray(p[0], np.float64) for p in per_datum], axis=0) / cfg.d
    exact = np.mean([np.asarray(p[1], np.float64) for p in per_datum], axis=0) / cfg.d
    (net, net_se), (bp_mean, bp_se), (gap, gap_se) = map(mean_se, (network, exact,
                                                                    network - exact))
    return LossComparison(net, net_se, bp_mean, bp_se, gap, gap_se, cfg.log_P_max / cfg.d,
                          x0.shape[0], repeats)
