"""Hidden representations: what the network keeps of ``x0`` after noising to ``t``.

:func:`representation_similarity` noises ``x0``, runs the network's reverse chain to
``x̂0(t)`` and compares the network's activations on ``x0`` and on ``x̂0`` (both fed
clean, at ``t = 0``) per level of the tree U-Net's down path, or per layer of the
transformer (:func:`layer_activations`), next to ``P_l(t)`` of the same ``x̂0``
(``docs/theory/denoisers.md``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rhm_jax.denoise.compare.common import host_chunks, snap_times
from rhm_jax.denoise.models import Transformer, TreeUNet
from rhm_jax.denoise.sampling import Denoiser, check_num_steps, reverse_sample
from rhm_jax.grammar import Grammar, check_grammar
from rhm_jax.noise import Gaussian
from rhm_jax.validation import check_key, check_tokens

__all__ = ["layer_activations", "Representation", "representation_similarity"]


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
    """Hidden representations of ``x0`` and of its reconstruction ``x̂0(t)``, per level.

    For each ``t``: noise ``x0``, run the network's reverse chain to ``x̂0(t)``, feed
    ``x0`` and ``x̂0`` to the network as clean inputs (``t = 0``) and compare the
    activations position by position (:func:`layer_activations`); ``P_l(t)`` comes from
    the same ``x̂0``.

    Args:
      key: PRNG key (time ``j``, chunk ``c`` use ``fold_in(fold_in(key, j), c)``).
      denoiser: the trained network.
      grammar: the rules.
      x0: ``(n, d)`` held-out data.
      times: ``(T,)`` times in ``(0, 1]``, snapped to the objective's grid.
      num_steps: reverse steps (as in :func:`~rhm_jax.denoise.sampling.reverse_sample`).
      chunk_size: data per compiled call.

    Returns:
      :class:`Representation`.
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
        same, other, kept_rows = host_chunks(chunk_fn(j, float(t)), x0.shape[0], chunk_size, x0)
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
