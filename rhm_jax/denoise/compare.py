"""A trained denoiser against the exact BP denoiser (DESIGN.md §4, §7; issue 13 items 3-6).

Each measure puts the network and BP through the same code, on the same data and noise
(common random numbers), so their difference is the network's error alone:

* :func:`agreement` — per time ``t``, on held-out noisy data, the quantity the network's
  loss targets against BP's value of it (:meth:`Objective.bp_target`): ``KL(BP ‖ network)``
  per token and top-1 agreement, with standard errors. For a finite training set also
  ``KL(empirical ‖ network)``, against the exact posterior of the training set
  (:func:`empirical_marginals`): the network memorises when it tracks that one.
* :func:`compare_losses` — the held-out loss of the network next to the same loss with BP
  in the network's place (its floor) and ``log P_max / d``.
* :func:`sample_stats` — generated sequences: fraction valid per level (parser), class
  histogram, fraction copying a training datum (:func:`copy_fraction`).
* :func:`forward_backward_pair` — ``P_l(t)`` of the network's reverse chain and of exact
  BP through :func:`rhm_jax.experiments.forward_backward`, the same data and noise.
* :func:`representation_similarity` — per level of the tree U-Net's down path (per layer
  of the transformer), the cosine similarity of the activations on ``x0`` and on
  ``x̂0(t)`` (both fed clean, at ``t = 0``), next to ``P_l(t)`` of the same ``x̂0``.
* :func:`compare_run` runs them all on a run folder; :func:`sweep_table` tabulates several
  runs against the number of training data ``P`` in units of ``v·m**(L+1)``.

What is compared, per objective (the "target" below):

=====================  =========================================  =========================
objective              network's estimate                         compared on
=====================  =========================================  =========================
masking (MaskedELBO)   ``softmax(outputs)`` = ``p(x0_i | x_t)``   masked tokens only (the
                                                                  loss ignores the others)
D3PM (D3PMBound)       ``softmax(outputs)`` = ``p̃``, optimum      every token
                       ``w_L ∝ μ_L / lik`` (BP's downward
                       message)
Gaussian x0            ``softmax(outputs)``, optimum ``μ_L``      every token
Gaussian ε             implied posterior mean                     every token
                       ``(x_t - √(1-ᾱ) ε̂)/√ᾱ``, optimum ``μ_L``
                       (Tweedie)
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

import math
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rhm_jax.validation import check_int, check_key, check_tokens
from rhm_jax.denoise.models import Transformer, TreeUNet
from rhm_jax.denoise.objectives import PROCESS_OF_OBJECTIVE, D3PMBound, GaussianEps
from rhm_jax.denoise.sampling import (Denoiser, check_num_steps, generate, prior_sample,
                                      reverse_chain, reverse_sample)
from rhm_jax.stats import json_float, mean_se, nan_mean, ratio_se
from rhm_jax.grammar import Grammar, check_grammar, with_inverse_tables
from rhm_jax.noise import LOG_FLOOR, Gaussian, Masking, safe_log
from rhm_jax.parsing import parse

__all__ = ["Agreement", "LossComparison", "SampleStats", "Representation", "RunComparison",
           "TIE_TOLERANCE", "CLEAR_MARGIN", "EPS_MEAN_FLOOR", "network_predictor", "bp_predictor", "empirical_marginals",
           "agreement", "compare_losses", "copy_flags", "copy_fraction", "sample_stats",
           "network_samples", "bp_chain_samples", "forward_backward_pair",
           "layer_activations", "representation_similarity", "default_num_steps", "sampler_name",
           "snap_times", "P_unit", "compare_run", "sweep_table"]

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


# ---- small helpers ------------------------------------------------------------------------
def _host_chunks(fn, n: int, chunk: int, *arrays):
    """``fn(index, *chunk_arrays)`` over ``[0, n)`` in fixed-size chunks (the last padded by
    repeating the final row, so every call has one compiled shape); outputs concatenated
    on the host, padding dropped. ``arrays`` are indexed along their first axis."""
    chunk = max(1, min(chunk, n))
    outs = []
    for number, start in enumerate(range(0, n, chunk)):
        index = np.minimum(np.arange(start, start + chunk), n - 1)
        out = fn(number, *(a[index] for a in arrays))
        keep = min(chunk, n - start)
        outs.append(jax.tree.map(lambda y: np.asarray(y)[:keep], out))
    return jax.tree.map(lambda *ys: np.concatenate(ys), *outs)


def _as_times(times) -> np.ndarray:
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times must be a non-empty 1-d array, got shape {times.shape}")
    if not np.all(np.isfinite(times)) or times.min() <= 0 or times.max() > 1:
        raise ValueError(f"times must lie in (0, 1], got values in [{times.min()}, "
                         f"{times.max()}] (at t = 0 nothing is noised)")
    return times


def snap_times(objective, times) -> np.ndarray:
    """Times on the objective's training grid: ``k/T`` (``k >= 1``) for the discrete-time
    losses (D3PM, Gaussian), which never see other times; unchanged for masking."""
    times = _as_times(times)
    T = getattr(objective, "num_steps", None)
    if T is None:
        return times
    return np.maximum(np.round(times * T), 1) / T


def default_num_steps(objective, d: int) -> int | None:
    """Reverse steps of a chain: ``None`` for masking, which then unmasks one token at a
    time (:func:`~rhm_jax.denoise.sampling.first_hit_chain`: ``d`` steps, exact with exact
    marginals); the schedule's ``T`` for the discrete-time losses (the chain from ``t = 1``
    then walks the training grid); ``16·d`` otherwise. On a uniform grid every step draws
    the tokens it changes independently from their marginals — with exact BP marginals at
    ``(16, 4, 2, 4)`` the masking chain's samples are fully valid 49% of the time at ``d``
    steps, 81% at ``4d``, 96.5% at ``16d`` (:func:`bp_chain_samples` measures it)."""
    if isinstance(objective.process, Masking):
        return None
    T = getattr(objective, "num_steps", None)
    return int(T) if T is not None else 16 * d


def sampler_name(num_steps) -> str:
    """``"first_hit"`` (one token at a time) for ``num_steps=None``, else ``"grid"``."""
    return "first_hit" if num_steps is None else "grid"


# ---- the empirical posterior of a training set --------------------------------------------
def _empirical(train_tokens, loglik, chunk: int):
    """Traceable :func:`empirical_marginals`: an online log-sum-exp over chunks of the
    training set (running max, running normaliser, running weighted one-hot sum)."""
    n, d, v = loglik.shape
    P = train_tokens.shape[0]
    steps = -(-P // chunk)
    pad = steps * chunk - P
    rows = jnp.concatenate([train_tokens, jnp.zeros((pad, d), train_tokens.dtype)])
    real = jnp.arange(steps * chunk) < P
    positions = jnp.arange(d)[None, :]

    def body(carry, inputs):
        run_max, total, acc = carry
        block, ok = inputs  # (c, d), (c,)
        # log q(x_t | x^μ) up to a constant in μ: Σ_i log lik_i(x^μ_i)
        scores = jnp.sum(loglik[:, positions, block], axis=-1)  # (n, c)
        scores = jnp.where(ok[None], scores, -jnp.inf)
        new_max = jnp.maximum(run_max, jnp.max(scores, axis=-1))
        scale = jnp.exp(run_max - new_max)  # 0 on the first block (run_max = -inf)
        weights = jnp.exp(scores - new_max[:, None])
        onehot = jax.nn.one_hot(block, v, dtype=loglik.dtype)
        acc = acc * scale[:, None, None] + jnp.einsum(
            "nc,cdv->ndv", weights, onehot, precision=jax.lax.Precision.HIGHEST)
        return (new_max, total * scale + jnp.sum(weights, axis=-1), acc), None

    init = (jnp.full((n,), -jnp.inf, loglik.dtype), jnp.zeros((n,), loglik.dtype),
            jnp.zeros((n, d, v), loglik.dtype))
    (run_max, total, acc), _ = jax.lax.scan(
        body, init, (rows.reshape(steps, chunk, d), real.reshape(steps, chunk)))
    return acc / total[:, None, None], run_max + jnp.log(total) - math.log(P)


@partial(jax.jit, static_argnames=("chunk",))
def _empirical_jit(train_tokens, loglik, chunk):
    return _empirical(train_tokens, loglik, chunk)


def empirical_marginals(train_tokens, leaf_log_likelihood, *, chunk_size: int = 512):
    """Per-token marginals of the posterior of the empirical distribution (DESIGN.md §7).

    ``p_emp(x0 | x_t) ∝ Σ_μ q(x_t | x^μ) [x0 = x^μ]`` over the ``P`` training data: the
    optimum of any denoising loss on that training set (a network that memorises tracks
    it). Exact: ``log q(x_t | x^μ) = Σ_i log lik_i(x^μ_i)`` for every datum, normalised by a
    log-sum-exp over the training set, ``chunk_size`` data at a time.

    Args:
      train_tokens: ``(P, d)`` integer training data.
      leaf_log_likelihood: ``(n, d, v)`` ``log lik_i(a)`` of the observations (a per-token
        constant does not matter), e.g. ``process.leaf_log_likelihood(x_t, t)``.
      chunk_size: training data per step.

    Returns:
      ``(marginals, log_evidence)``: ``(n, d, v)`` per-token posterior marginals and
      ``(n,)`` ``log((1/P) Σ_μ q(x_t | x^μ))`` (with the leaf log-likelihoods' constants).
      With every datum of the RHM as the training set they are BP's leaf marginals and
      log-evidence. An observation that no training datum explains (e.g. a masked
      sequence none of them agrees with) has ``log_evidence`` about ``LOG_FLOOR`` or less;
      its marginals then come from the training data with the fewest contradictions.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> train = jnp.array([[0, 1], [0, 2], [1, 1]])
      >>> loglik = jnp.log(jnp.array([[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]) + 1e-30)
      >>> mu, _ = empirical_marginals(train, loglik)  # x0_0 = 0 observed, x0_1 unknown
      >>> mu[0, 1].round(3).tolist()
      [0.0, 0.5, 0.5]
    """
    loglik = jnp.asarray(leaf_log_likelihood)
    if loglik.ndim != 3:
        raise ValueError(f"leaf_log_likelihood has shape {loglik.shape}, but must be (n, d, v)")
    train = np.asarray(train_tokens)
    if train.ndim != 2 or train.shape[1] != loglik.shape[1] or train.shape[0] == 0:
        raise ValueError(f"train_tokens has shape {train.shape}, but must be (P, d) with "
                         f"P >= 1 and d = {loglik.shape[1]}")
    if not np.issubdtype(train.dtype, np.integer) or train.min() < 0 or \
            train.max() >= loglik.shape[2]:
        raise ValueError(f"train_tokens must hold integer tokens in [0, v={loglik.shape[2]})")
    chunk_size = check_int("chunk_size", chunk_size, 1)
    return _empirical_jit(jnp.asarray(train, jnp.int32), loglik, min(chunk_size, len(train)))


def _empirical_target(objective, marginals, loglik):
    """The loss's target computed from posterior marginals: the marginals themselves, or
    for D3PM the message ``∝ μ / lik`` (what BP's downward message is for BP's marginals)."""
    if isinstance(objective, D3PMBound):
        return jax.nn.softmax(safe_log(marginals) - loglik, axis=-1)
    return marginals


# ---- per-t agreement with BP --------------------------------------------------------------
def token_stats(ref, est, include, floor: float = 0.0):
    """Per datum, over the included tokens: ``Σ KL(ref ‖ est)``, ``Σ top-1 agreement``,
    ``Σ ‖est - ref‖²``, their number, ``Σ top-1 regret`` (``max ref - ref[argmax est]``),
    and over the clear ones (``ref``'s top two differ by at least :data:`CLEAR_MARGIN`)
    ``Σ top-1 agreement`` and their number: ``(n, 7)``. ``est`` is clipped at ``floor``
    and renormalised before the KL and the top-1 (the squared error takes it as it is)."""
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
        marginals, log_evidence = _empirical(train_tokens, loglik, empirical_chunk)
        emp = _empirical_target(objective, marginals, loglik)
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

            out = _host_chunks(chunk_fn, n, chunk_size, x0)
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
        per_datum.append(_host_chunks(
            lambda c, x: _loss_pair(predict, params, objective, grammar,
                                    jax.random.fold_in(base, c), jnp.asarray(x)),
            x0.shape[0], chunk_size, x0))
    network = np.mean([np.asarray(p[0], np.float64) for p in per_datum], axis=0) / cfg.d
    exact = np.mean([np.asarray(p[1], np.float64) for p in per_datum], axis=0) / cfg.d
    (net, net_se), (bp_mean, bp_se), (gap, gap_se) = map(mean_se, (network, exact,
                                                                    network - exact))
    return LossComparison(net, net_se, bp_mean, bp_se, gap, gap_se, cfg.log_P_max / cfg.d,
                          x0.shape[0], repeats)


# ---- generated samples --------------------------------------------------------------------
def _row_keys(tokens) -> list[bytes]:
    tokens = np.ascontiguousarray(np.asarray(tokens, np.int32))
    return [row.tobytes() for row in tokens]


def copy_flags(samples, data) -> np.ndarray:
    """``(n,)`` bool: sample ``i`` equals some row of ``data`` (exact match of all tokens)."""
    samples, data = np.asarray(samples), np.asarray(data)
    if samples.ndim != 2 or data.ndim != 2 or samples.shape[1] != data.shape[1]:
        raise ValueError(f"samples {samples.shape} and data {data.shape} must be (n, d) and "
                         "(P, d) with the same d")
    seen = set(_row_keys(data))
    return np.fromiter((k in seen for k in _row_keys(samples)), bool, count=len(samples))


def copy_fraction(samples, data) -> float:
    """Fraction of ``samples`` that copy a row of ``data``.

    Examples:
      >>> copy_fraction([[0, 1], [1, 1], [2, 2]], [[1, 1], [0, 1], [3, 3]])
      0.6666666666666666
    """
    return float(copy_flags(samples, data).mean())


class SampleStats(NamedTuple):
    """Statistics of a set of sequences (generated, or exact RHM samples).

    Attributes:
      valid, valid_se: ``(L+1,)`` mean fraction of valid nodes per level (the parser's
        validity: the node's whole subtree is produced by the rules) and its standard error.
      fully_valid, fully_valid_se: fraction of sequences valid at the root (every node).
      class_histogram: ``(n_classes,)`` counts of the parsed class of the valid sequences.
      class_tv: total-variation distance of that histogram from uniform (NaN if none).
      copy, copy_se: fraction of sequences that copy a training datum (``None`` without a
        training set).
      copy_perfect: what a perfect generaliser (exact RHM samples) copies, ``P / P_max``.
      distinct: fraction of distinct sequences among the samples.
      n: number of sequences.
    """

    valid: np.ndarray
    valid_se: np.ndarray
    fully_valid: float
    fully_valid_se: float
    class_histogram: np.ndarray
    class_tv: float
    copy: float | None
    copy_se: float | None
    copy_perfect: float | None
    distinct: float
    n: int


def sample_stats(grammar: Grammar, tokens, train_tokens=None) -> SampleStats:
    """Validity per level, class histogram and copying of ``(n, d)`` sequences.

    Examples:
      >>> import jax
      >>> from rhm_jax import RHMConfig, sample_grammar, sample_data
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> x = sample_data(jax.random.key(1), g, 100).tokens
      >>> stats = sample_stats(g, x, train_tokens=x)
      >>> stats.valid.tolist(), stats.copy
      ([1.0, 1.0, 1.0, 1.0], 1.0)
    """
    cfg = check_grammar(grammar).config
    tokens = np.asarray(check_tokens("tokens", tokens, cfg.d, cfg.v, batched=True))
    n = tokens.shape[0]
    tree = parse(grammar, jnp.asarray(tokens))
    per_level = [np.asarray(v, np.float64).mean(axis=1) for v in tree.valid]
    valid = np.array([x.mean() for x in per_level])
    valid_se = np.array([mean_se(x)[1] for x in per_level])
    root_valid = np.asarray(tree.valid[0][:, 0])
    fully, fully_se = mean_se(root_valid)
    classes = np.asarray(tree.latents[0][:, 0])[root_valid]
    histogram = np.bincount(classes, minlength=cfg.n_classes)
    tv = (0.5 * np.abs(histogram / histogram.sum() - 1.0 / cfg.n_classes).sum()
          if histogram.sum() else math.nan)
    copy = copy_se = perfect = None
    if train_tokens is not None:
        train = np.asarray(check_tokens("train_tokens", train_tokens, cfg.d, cfg.v, batched=True))
        copy, copy_se = mean_se(copy_flags(tokens, train))
        perfect = len({*_row_keys(train)}) / cfg.P_max
    distinct = len(set(_row_keys(tokens))) / n
    return SampleStats(valid, valid_se, fully, fully_se, histogram, float(tv), copy, copy_se,
                       perfect, distinct, n)


def network_samples(key, denoiser: Denoiser, n: int, num_steps: int | None = None, *,
                    chunk_size: int = 256) -> np.ndarray:
    """``(n, d)`` sequences generated by the network from pure noise (``denoise.generate``)."""
    key = check_key("key", key)
    n = check_int("n", n, 1)
    return _host_chunks(lambda c, _: generate(jax.random.fold_in(key, c), denoiser,
                                               min(chunk_size, n), num_steps),
                        n, chunk_size, np.zeros(n))


@partial(jax.jit, static_argnames=("objective", "n", "num_steps"))
def _bp_chain(key, objective, grammar, n, num_steps):
    prior_key, chain_key = jax.random.split(key)
    x_1 = prior_sample(prior_key, objective.process, n)
    t = jnp.ones((n,), jnp.result_type(float))
    return reverse_chain(objective.bp_predictor(grammar), objective, chain_key, x_1, t,
                         num_steps)


def bp_chain_samples(key, objective, grammar: Grammar, n: int, num_steps: int | None = None,
                     *, chunk_size: int = 256) -> np.ndarray:
    """``(n, d)`` sequences from the network's sampler with exact BP in the network's place.

    The grid chain draws each step's tokens independently from their marginals, so even
    with exact marginals it is exact only as ``num_steps`` grows: its validity is the floor
    that the network's samples can reach with the same sampler and ``num_steps`` (exact BP
    samples, :func:`rhm_jax.sample_data`, are valid by construction). Masking's
    one-token-at-a-time chain (``num_steps=None``) is exact: every sample valid.
    """
    key = check_key("key", key)
    n = check_int("n", n, 1)
    num_steps = check_num_steps(objective.process, num_steps)
    grammar = with_inverse_tables(grammar)
    size = min(chunk_size, n)
    return _host_chunks(lambda c, _: _bp_chain(jax.random.fold_in(key, c), objective, grammar,
                                               size, num_steps), n, chunk_size, np.zeros(n))


# ---- forward–backward ---------------------------------------------------------------------
def forward_backward_pair(key, denoiser: Denoiser, grammar: Grammar, times, n_data: int,
                          num_steps: int | None = None, **kwargs):
    """``(network, bp)`` :class:`~rhm_jax.experiments.ForwardBackwardResult` s: the
    network's reverse chain from ``x_t`` (``num_steps`` as in
    :func:`~rhm_jax.denoise.sampling.reverse_sample`) and exact BP, through the
    one code path of :func:`rhm_jax.experiments.forward_backward` with the same key, so
    the same data and noise. ``kwargs`` go to ``forward_backward`` (``chunk_size``,
    ``max_batch``, ``mesh``, ``progress``)."""
    from rhm_jax.denoise.sampling import experiment_denoiser
    from rhm_jax.experiments import forward_backward

    fn, params = experiment_denoiser(denoiser, num_steps)
    network = forward_backward(key, grammar, denoiser.process, times, n_data, denoiser=fn,
                               denoiser_params=params, **kwargs)
    exact = forward_backward(key, grammar, denoiser.process, times, n_data, **kwargs)
    return network, exact


# ---- hidden representations ---------------------------------------------------------------
def layer_activations(model, x, t) -> list:
    """Hidden activations of a network on input ``x`` at times ``t``.

    Tree U-Net: its down path, level ``0`` (root, one position) to ``L`` (one position per
    token) — :meth:`TreeUNet.levels`. Transformer: the embedding and the output of every
    block, ``(n, d, width)`` each (layer 0 = embedding). Each entry is ``(n, positions,
    width)``.
    """
    if isinstance(model, TreeUNet):
        return model.levels(x, t)
    if isinstance(model, Transformer):
        h, temb = model.input(x, t)
        if model.learned_positions:
            h = h + model.position.value[None]
        out = [h]
        for block in model.blocks:
            h = block(h, temb)
            out.append(h)
        return out
    raise TypeError(f"model must be a TreeUNet or a Transformer, got {type(model).__name__}")


def _clean_input(process, tokens):
    """``x_0`` as the network takes it: tokens, or their one-hot encoding (Gaussian)."""
    if isinstance(process, Gaussian):
        return jax.nn.one_hot(tokens, process.config.v, dtype=jnp.result_type(float))
    return tokens


def _cosine(a, b):
    """Mean over positions of the cosine similarity of ``(n, p, w)`` activations: ``(n,)``."""
    dot = jnp.sum(a * b, axis=-1)
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.mean(dot / jnp.maximum(norms, 1e-12), axis=-1)


@partial(jax.jit, static_argnames=("graphdef", "process"))
def _similarities(graphdef, params, process, x0, x_hat):
    model = nnx.merge(graphdef, params)
    t0 = jnp.zeros(x0.shape[:1], jnp.result_type(float))
    original = layer_activations(model, _clean_input(process, x0), t0)
    rebuilt = layer_activations(model, _clean_input(process, x_hat), t0)
    same = jnp.stack([_cosine(a, b) for a, b in zip(original, rebuilt)], axis=-1)
    # chance: x0 against another datum of the batch
    other = jnp.stack([_cosine(a, jnp.roll(a, 1, axis=0)) for a in original], axis=-1)
    return same, other


@jax.jit
def _kept(grammar, x_hat, x0):
    """Per datum and level, the fraction of nodes of ``x0`` that ``x̂0`` keeps (parsed)."""
    from rhm_jax.experiments import kept_and_valid
    from rhm_jax.parsing import parse_unchecked

    return kept_and_valid(grammar, x_hat, parse_unchecked(grammar, x0).latents)[0]


@partial(jax.jit, static_argnames=("process",))
def _noised(key, process, x0, t):
    return process.corrupt(key, x0, jnp.full(x0.shape[:1], t, jnp.result_type(float)))


class Representation(NamedTuple):
    """Similarity of hidden activations on ``x0`` and ``x̂0(t)``, per level (or layer).

    Attributes:
      times: ``(T,)``.
      kind: ``"level"`` (tree U-Net: entry ``l`` is level ``l``, one position per node) or
        ``"layer"`` (transformer: entry 0 is the embedding, entry ``k`` block ``k``).
      similarity, similarity_se: ``(T, K)`` mean cosine similarity over data and positions.
      chance: ``(K,)`` the same between two different data (what unrelated inputs give).
      P_sampled, P_sampled_se: ``(T, L+1)`` fraction of nodes of level ``l`` that the same
        ``x̂0`` keeps (parsed; an invalid node counts as changed).
      n_data: data per time.
    """

    times: np.ndarray
    kind: str
    similarity: np.ndarray
    similarity_se: np.ndarray
    chance: np.ndarray
    P_sampled: np.ndarray
    P_sampled_se: np.ndarray
    n_data: int


def representation_similarity(key, denoiser: Denoiser, grammar: Grammar, x0, times,
                              num_steps: int | None = None, *, chunk_size: int = 256
                              ) -> Representation:
    """Hidden representations as the seed paper measured them (issue 13 item 6).

    For each ``t``: noise ``x0``, run the network's reverse chain to ``x̂0(t)``, feed
    ``x0`` and ``x̂0`` to the network as clean inputs (``t = 0``) and compare the
    activations position by position (:func:`layer_activations`); ``P_l(t)`` comes from
    the same ``x̂0``.
    """
    key = check_key("key", key)
    cfg = check_grammar(grammar).config
    x0 = np.asarray(check_tokens("x0", x0, cfg.d, cfg.v, batched=True))
    times = snap_times(denoiser.objective, times)
    num_steps = check_num_steps(denoiser.process, num_steps)
    graphdef, params = nnx.split(denoiser.model)
    process = denoiser.process
    kind = "level" if isinstance(denoiser.model, TreeUNet) else "layer"

    def chunk_fn(j, t):
        def fn(c, x):
            x = jnp.asarray(x)
            noise_key, chain_key = jax.random.split(jax.random.fold_in(
                jax.random.fold_in(key, j), c))
            x_t = _noised(noise_key, process, x, t)
            x_hat = reverse_sample(chain_key, denoiser, process, x_t, t, num_steps)
            same, other = _similarities(graphdef, params, process, x, x_hat)
            return same, other, _kept(grammar, x_hat, x)

        return fn

    sims, sims_se, chance, kept, kept_se = [], [], [], [], []
    for j, t in enumerate(times):
        same, other, kept_rows = _host_chunks(chunk_fn(j, float(t)), x0.shape[0], chunk_size, x0)
        sims.append(same.mean(0))
        sims_se.append(same.std(0, ddof=1) / math.sqrt(len(same)) if len(same) > 1
                       else np.full(same.shape[1], np.nan))
        chance.append(other.mean(0))
        kept.append(kept_rows.mean(0))
        kept_se.append(kept_rows.std(0, ddof=1) / math.sqrt(len(kept_rows)) if len(kept_rows) > 1
                       else np.full(kept_rows.shape[1], np.nan))
    return Representation(times, kind, np.array(sims), np.array(sims_se),
                          np.mean(chance, axis=0), np.array(kept), np.array(kept_se),
                          x0.shape[0])


# ---- one run, and a sweep over runs --------------------------------------------------------
def P_unit(config) -> int:
    """The unit of training-set sizes in the sweep, ``v·m**(L+1)``."""
    return config.v * config.m ** (config.L + 1)


class RunComparison(NamedTuple):
    """Everything :func:`compare_run` measured on one run (see :meth:`rows`)."""

    run_dir: str
    config: Any  # TrainConfig
    step: int
    num_steps: int | None  # None: masking's one-token-at-a-time chain
    ema: bool  # the EMA parameters were used
    agreement: Agreement
    losses: LossComparison
    samples: dict  # source -> SampleStats ("network", "bp_chain", "bp_exact")
    network_fb: Any  # ForwardBackwardResult
    bp_fb: Any
    representation: Representation

    def summary(self) -> dict:
        """One row: each measure reduced to a number (the sweep table's row)."""
        from rhm_jax.theory import midpoint_crossing

        cfg = self.config.rhm_config
        agree = self.agreement
        half = int(np.argmin(np.abs(agree.times - 0.5)))
        P = self.config.train_size
        net_p0, net_se = self.network_fb.sampled[0, :, 0], self.network_fb.sampled_se[0, :, 0]
        # BP's curve from its marginal estimator: the same expectation as its sampled one,
        # with less variance. Network and BP see the same data and noise, so the gap's
        # standard error taken as if independent overstates it.
        bp_p0, bp_se = self.bp_fb.marginal[0, :, 0], self.bp_fb.marginal_se[0, :, 0]
        gap = net_p0 - bp_p0
        gap_se = np.sqrt(net_se**2 + bp_se**2)
        worst = int(np.argmax(np.abs(gap)))
        times = self.network_fb.times
        chance = 1.0 / cfg.n_classes
        grid = float(np.min(np.diff(times))) if len(times) > 1 else math.nan
        row = {**_run_columns(self), "num_steps": self.num_steps,
               "sampler": sampler_name(self.num_steps),
               "kl_mean": nan_mean(agree.kl), "top1_mean": nan_mean(agree.top1),
               "t_half": float(agree.times[half]), "kl_at_t_half": json_float(agree.kl[half]),
               "top1_at_t_half": json_float(agree.top1[half]),
               "top1_at_t_half_se": json_float(agree.top1_se[half]),
               "regret_at_t_half": json_float(agree.regret[half]),
               "regret_at_t_half_se": json_float(agree.regret_se[half]),
               "top1_clear_at_t_half": json_float(agree.top1_clear[half]),
               "top1_clear_at_t_half_se": json_float(agree.top1_clear_se[half]),
               "clear_at_t_half": json_float(agree.clear[half]),
               "kl_emp_mean": None if agree.kl_emp is None else nan_mean(agree.kl_emp),
               "top1_emp_mean": None if agree.top1_emp is None else nan_mean(agree.top1_emp),
               "kl_emp_bp_mean": None if agree.kl_emp_bp is None else nan_mean(agree.kl_emp_bp),
               "loss_network": self.losses.network, "loss_bp": self.losses.bp,
               "loss_gap": self.losses.gap, "loss_gap_se": self.losses.gap_se,
               "entropy": self.losses.entropy,
               "P0_gap_max": float(abs(gap[worst])), "P0_gap_max_se": json_float(gap_se[worst]),
               "P0_gap_max_t": float(times[worst]), "fb_data": self.network_fb.n_data,
               "P0_drop_t_network": json_float(midpoint_crossing(times, net_p0, chance, 1.0)),
               "P0_drop_t_bp": json_float(midpoint_crossing(times, bp_p0, chance, 1.0)),
               "time_grid_step": json_float(grid)}
        for source, stats in self.samples.items():
            row[f"{source}_fully_valid"] = stats.fully_valid
            row[f"{source}_valid"] = stats.valid.tolist()
            row[f"{source}_copy"] = stats.copy
            row[f"{source}_class_tv"] = json_float(stats.class_tv)
        row["copy_perfect"] = None if P is None else P / cfg.P_max
        return row

    def rows(self) -> list[dict]:
        """Tidy rows, one per measure × time × level (the ``measure`` column says which)."""
        from rhm_jax.experiments import to_rows

        base = _run_columns(self)
        out = []
        a = self.agreement
        for j, t in enumerate(a.times):
            row = {**base, "measure": "agreement", "t": float(t), "n_data": a.n_data,
                   "repeats": a.repeats, "tokens_per_datum": json_float(a.tokens[j])}
            for name in ("kl", "top1", "regret", "top1_clear", "sq_error", "kl_emp", "top1_emp",
                         "kl_emp_bp"):
                values = getattr(a, name)
                row[name] = None if values is None else json_float(values[j])
                row[f"{name}_se"] = None if values is None else json_float(getattr(a, f"{name}_se")[j])
            row["clear"] = json_float(a.clear[j])
            row["clear_margin"] = CLEAR_MARGIN
            row["explained"] = None if a.explained is None else json_float(a.explained[j])
            out.append(row)
        out.append({**base, "measure": "loss", "units": "nats per token",
                    **{k: json_float(v) for k, v in self.losses._asdict().items()}})
        for source, stats in self.samples.items():
            for level in range(len(stats.valid)):
                out.append({**base, "measure": "generation", "source": source, "level": level,
                            "valid": float(stats.valid[level]),
                            "valid_se": json_float(stats.valid_se[level]),
                            "fully_valid": stats.fully_valid,
                            "fully_valid_se": json_float(stats.fully_valid_se), "copy": stats.copy,
                            "copy_se": json_float(stats.copy_se), "copy_perfect": stats.copy_perfect,
                            "class_histogram": stats.class_histogram.tolist(),
                            "class_tv": json_float(stats.class_tv), "distinct": stats.distinct,
                            "n": stats.n, "num_steps": (None if source == "bp_exact"
                                                        else self.num_steps),
                            "sampler": (None if source == "bp_exact"
                                        else sampler_name(self.num_steps))})
        cfg = self.config.rhm_config
        for source, result in (("network", self.network_fb), ("bp", self.bp_fb)):
            for row in to_rows(result, cfg, PROCESS_OF_OBJECTIVE[self.config.loss], **base,
                               measure="forward_backward", source=source,
                               num_steps=self.num_steps if source == "network" else None,
                               sampler=(sampler_name(self.num_steps) if source == "network"
                                        else "bp_posterior")):
                out.append(row)
        r = self.representation
        for j, t in enumerate(r.times):
            for k in range(r.similarity.shape[1]):
                level = k if r.kind == "level" else None
                out.append({**base, "measure": "representation", "kind": r.kind, "t": float(t),
                            "index": k, "similarity": float(r.similarity[j, k]),
                            "similarity_se": json_float(r.similarity_se[j, k]),
                            "similarity_chance": float(r.chance[k]),
                            "P_sampled": None if level is None else float(r.P_sampled[j, level]),
                            "P_sampled_se": None if level is None else json_float(r.P_sampled_se[j, level]),
                            "n_data": r.n_data})
        return out


def _run_columns(result: RunComparison) -> dict:
    config = result.config
    cfg = config.rhm_config
    P = config.train_size
    return {"run": result.run_dir, "v": cfg.v, "m": cfg.m, "s": cfg.s, "L": cfg.L,
            "n_classes": cfg.n_classes, "loss_name": config.loss, "process": PROCESS_OF_OBJECTIVE[config.loss],
            "architecture": config.model.architecture, "width": config.model.width,
            "train_size": P, "online": P is None,
            "P_units": None if P is None else P / P_unit(cfg),
            "P_over_P_max": None if P is None else P / cfg.P_max, "step": result.step,
            "ema": result.ema}


def _stage(bar, text):
    if bar is not None:
        bar.set_postfix_str(text)


def compare_run(run_dir, *, key=None, times=None, n_data: int = 256, n_samples: int = 256,
                num_steps: int | None = None, repeats: int = 1, ema: bool = False,
                fb_data: int | None = None, chunk_size: int = 256, bp_chain: bool = True,
                mesh=None, progress: bool = False) -> RunComparison:
    """Runs every comparison on one training run folder (``rhm-jax train``'s output).

    Args:
      run_dir: the run folder (its latest checkpoint is loaded).
      key: PRNG key (default ``jax.random.key(0)``); every measure gets its own fold.
      times: ``(T,)`` times in ``(0, 1]`` (default ``0.1, 0.2, ..., 1.0``), snapped to the
        objective's grid.
      n_data: held-out data (the run's test set, at most its ``test_size``).
      n_samples: sequences generated from pure noise (network, BP chain, exact BP).
      num_steps: reverse steps (default :func:`default_num_steps`: for masking, one token
        at a time).
      repeats: noise draws per held-out datum (agreement and losses).
      ema: use the EMA parameters (when the run has them).
      fb_data: data per time of the forward–backward experiment (default ``n_data``).
      chunk_size: data per compiled call.
      bp_chain: also generate with BP in the network's sampler (the sampler's own floor).
      mesh: device mesh for the forward–backward experiment.
      progress: show progress.
    """
    from rhm_jax.denoise.train import datasets, load_run
    from rhm_jax.sampling import sample_data

    key = jax.random.key(0) if key is None else check_key("key", key)
    run = load_run(run_dir)
    config = run.config
    cfg = config.rhm_config
    objective = run.objective
    denoiser = Denoiser.from_run(run, ema=ema)
    times = snap_times(objective, np.round(np.linspace(0.1, 1.0, 10), 12)
                       if times is None else times)
    num_steps = default_num_steps(objective, cfg.d) if num_steps is None else \
        check_num_steps(objective.process, num_steps)
    n_data = check_int("n_data", n_data, 1)
    n_samples = check_int("n_samples", n_samples, 1)
    fb_data = n_data if fb_data is None else check_int("fb_data", fb_data, 1)
    train_tokens, test_tokens = datasets(config, run.grammar)
    train_np = None if train_tokens is None else np.asarray(train_tokens)
    x0 = np.asarray(test_tokens)[:n_data]
    grammar = with_inverse_tables(run.grammar)
    keys = [jax.random.fold_in(key, i) for i in range(8)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=5 + bp_chain, desc=Path(run_dir).name, unit="measure", leave=False)

    def done():
        if bar is not None:
            bar.update(1)

    predict, params = network_predictor(denoiser)
    _stage(bar, "agreement with BP")
    agree = agreement(keys[0], predict, params, objective, grammar, x0, times,
                      train_tokens=train_np, repeats=repeats, chunk_size=chunk_size)
    done()
    _stage(bar, "losses")
    losses = compare_losses(keys[1], predict, params, objective, grammar, x0,
                            repeats=max(repeats, 4), chunk_size=chunk_size)
    done()
    _stage(bar, "generation")
    samples = {"network": sample_stats(grammar, network_samples(
        keys[2], denoiser, n_samples, num_steps, chunk_size=chunk_size), train_np)}
    done()
    if bp_chain:
        _stage(bar, "generation, BP chain")
        samples["bp_chain"] = sample_stats(grammar, bp_chain_samples(
            keys[3], objective, grammar, n_samples, num_steps, chunk_size=chunk_size), train_np)
        done()
    samples["bp_exact"] = sample_stats(
        grammar, sample_data(keys[4], grammar, n_samples).tokens, train_np)
    _stage(bar, "forward-backward")
    network_fb, bp_fb = forward_backward_pair(keys[5], denoiser, grammar, times, fb_data,
                                              num_steps, mesh=mesh)
    done()
    _stage(bar, "representations")
    representation = representation_similarity(keys[6], denoiser, grammar, x0, times,
                                               num_steps, chunk_size=chunk_size)
    done()
    if bar is not None:
        bar.close()
    return RunComparison(str(run_dir), config, run.step, num_steps,
                         bool(ema and run.ema_model is not None), agree, losses, samples,
                         network_fb, bp_fb, representation)


def sweep_table(results) -> list[dict]:
    """One summary row per run, sorted by the number of training data ``P`` (online last):
    how each measure approaches BP as ``P`` grows (``P_units`` = ``P / (v·m**(L+1))``)."""
    rows = [r.summary() for r in results]
    return sorted(rows, key=lambda r: (r["train_size"] is None, r["train_size"] or 0))
