"""Sampling RHM data, and the exact bijection between data and ``[0, P_max)`` (DESIGN.md §1).

A datum is fixed by its class and the rule index ``psi`` chosen at each of the
``(s**L - 1)/(s - 1)`` internal nodes; since the grammar is unambiguous this is a bijection.
The *digits* of a datum are these choices in mixed radix, ``(class, psi_0, psi_1, ...)``
with internal nodes listed level by level, top-down and left to right. The index of a
datum is the big-endian number those digits spell: ``class * m**N + sum psi_j m**(N-1-j)``.
Indices can exceed 2**63, so in arrays a datum index is carried as its digits; the
helpers :func:`digits_to_index` / :func:`index_to_digits` convert to Python ints.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.config import RHMConfig
from rhm_jax.grammar import Grammar


class Data(NamedTuple):
    """A batch of RHM data.

    Attributes:
      tokens: ``(n, d)`` int32 visible sequences.
      classes: ``(n,)`` int32 classes (root symbols).
      latents: ``None``, or a tuple over levels ``l = 0..L`` of ``(n, s**l)`` int32 arrays;
        level 0 is the class, level L the tokens.
      digits: ``None``, or ``(n, 1 + num_internal_nodes)`` int32 digits of each datum's index.
    """

    tokens: jax.Array
    classes: jax.Array
    latents: tuple | None = None
    digits: jax.Array | None = None


def _expand(grammar: Grammar, classes: jax.Array, psi: jax.Array) -> tuple:
    """Latent symbols of every level from classes ``(n,)`` and rule choices ``(n, N)``."""
    cfg = grammar.config
    symbols = classes[:, None]
    latents = [symbols]
    offset = 0
    for level in range(cfg.L):
        width = cfg.s**level
        choice = psi[:, offset:offset + width]
        offset += width
        flat_rules = grammar.rules[level].reshape(-1, cfg.s)
        # mode="clip": indices are in range by construction, and the default "fill" mode
        # makes XLA's compile time grow exponentially with L (10 s at L = 15).
        children = jnp.take(flat_rules, symbols * cfg.m + choice, axis=0, mode="clip")
        symbols = children.reshape(children.shape[0], width * cfg.s)
        latents.append(symbols)
    return tuple(latents)


@partial(jax.jit, static_argnames=("n", "return_latents"))
def _sample_data(key, grammar, n, classes, return_latents):
    cfg = grammar.config
    class_key, psi_key = jax.random.split(key)
    if classes is None:
        classes = jax.random.randint(class_key, (n,), 0, cfg.n_classes, dtype=jnp.int32)
    psi = jax.random.randint(psi_key, (n, cfg.num_internal_nodes), 0, cfg.m, dtype=jnp.int32)
    # Without the barrier XLA fuses the RNG into every per-level slice, and the compile
    # time grows steeply with L.
    classes, psi = jax.lax.optimization_barrier((classes, psi))
    latents = _expand(grammar, classes, psi)
    digits = jnp.concatenate([classes[:, None], psi], axis=1)
    return Data(latents[-1], classes, latents if return_latents else None,
                digits if return_latents else None)


def sample_data(key: jax.Array, grammar: Grammar, n: int, *, classes=None,
                return_latents: bool = False) -> Data:
    """Draws ``n`` data i.i.d. from the RHM (uniform class, uniform rule at every node).

    Args:
      key: a PRNG key.
      grammar: the rules.
      n: number of data (static).
      classes: optional ``(n,)`` int classes for class-conditional sampling.
      return_latents: also return the symbols of every level and the index digits.

    Returns:
      :class:`Data`.

    Examples:
      >>> import jax
      >>> from rhm_jax import RHMConfig, sample_grammar
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> data = sample_data(jax.random.key(1), g, 5, return_latents=True)
      >>> data.tokens.shape, [x.shape[1] for x in data.latents]
      ((5, 8), [1, 2, 4, 8])
    """
    cfg = grammar.config
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n = {n!r} must be a positive integer")
    if classes is not None:
        classes = jnp.asarray(classes)
        if classes.shape != (n,):
            raise ValueError(f"classes has shape {classes.shape}, expected (n,) = ({n},)")
        if not jnp.issubdtype(classes.dtype, jnp.integer):
            raise ValueError(f"classes has dtype {classes.dtype}; classes must be integers")
        if not isinstance(classes, jax.core.Tracer) and (
                int(classes.min()) < 0 or int(classes.max()) >= cfg.n_classes):
            raise ValueError(
                f"classes must lie in [0, n_classes={cfg.n_classes}), got values in "
                f"[{int(classes.min())}, {int(classes.max())}]")
        classes = classes.astype(jnp.int32)
    return _sample_data(key, grammar, int(n), classes, bool(return_latents))


# ---- exact indexing -----------------------------------------------------------------------
def _radices(config: RHMConfig) -> list[int]:
    return [config.n_classes] + [config.m] * config.num_internal_nodes


def index_to_digits(config: RHMConfig, index) -> np.ndarray:
    """Python int(s) in ``[0, P_max)`` → ``(..., 1 + N)`` int32 digits (host-side, exact).

    Examples:
      >>> cfg = RHMConfig(v=4, m=2, s=2, L=1)
      >>> index_to_digits(cfg, [0, 5, 7]).tolist()
      [[0, 0], [2, 1], [3, 1]]
    """
    indices = [index] if isinstance(index, (int, np.integer)) else list(index)
    radices = _radices(config)
    out = np.zeros((len(indices), len(radices)), np.int32)
    for row, idx in enumerate(indices):
        idx = int(idx)
        if not 0 <= idx < config.P_max:
            raise ValueError(f"index = {idx} must lie in [0, P_max = {config.P_max})")
        for col in range(len(radices) - 1, -1, -1):
            idx, out[row, col] = divmod(idx, radices[col])
    return out[0] if isinstance(index, (int, np.integer)) else out


def digits_to_index(config: RHMConfig, digits) -> list[int]:
    """``(n, 1 + N)`` digits → list of exact Python int indices (inverse of index_to_digits)."""
    digits = np.asarray(digits).reshape(-1, 1 + config.num_internal_nodes)
    radices = _radices(config)
    out = []
    for row in digits:
        idx = 0
        for digit, radix in zip(row.tolist(), radices):
            idx = idx * radix + int(digit)
        out.append(idx)
    return out


@jax.jit
def data_from_digits(grammar: Grammar, digits: jax.Array) -> Data:
    """Datum (tokens, class, latents) for each row of index digits ``(n, 1 + N)``."""
    latents = _expand(grammar, digits[:, 0], digits[:, 1:])
    return Data(latents[-1], digits[:, 0], latents, digits)


def data_from_index(grammar: Grammar, indices) -> Data:
    """Datum for each exact Python int index in ``[0, P_max)``.

    Examples:
      >>> import jax
      >>> from rhm_jax import RHMConfig, sample_grammar
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=4, m=2, s=2, L=2))
      >>> data = data_from_index(g, [0, 11, g.config.P_max - 1])
      >>> index_from_data(g, data.tokens)
      [0, 11, 31]
    """
    return data_from_digits(grammar, jnp.asarray(index_to_digits(grammar.config, indices)))


@jax.jit
def digits_from_tokens(grammar: Grammar, tokens: jax.Array):
    """Parses sequences ``(n, d)`` back to their index digits.

    Returns:
      ``(digits, valid)``: ``(n, 1 + N)`` int32 digits and ``(n,)`` bool, False for
      sequences that no tree of the grammar generates (their digits are meaningless).
    """
    cfg = grammar.config
    n = tokens.shape[0]
    symbols = tokens
    valid = jnp.ones((n,), bool)
    psis = []
    for level in range(cfg.L - 1, -1, -1):
        rules = grammar.rules[level]  # (n_l, m, s)
        groups = symbols.reshape(n, -1, 1, 1, cfg.s)
        match = jnp.all(groups == rules[None, None], axis=-1)  # (n, nodes, n_l, m)
        flat = match.reshape(n, groups.shape[1], -1)
        found = jnp.any(flat, axis=-1)
        where = jnp.argmax(flat, axis=-1)
        valid &= jnp.all(found, axis=-1)
        symbols = (where // cfg.m).astype(jnp.int32)
        psis.insert(0, (where % cfg.m).astype(jnp.int32))
    digits = jnp.concatenate([symbols] + psis, axis=1)
    return digits, valid


def index_from_data(grammar: Grammar, tokens) -> list[int]:
    """Exact Python int index of each sequence ``(n, d)``; raises if one is ungrammatical."""
    digits, valid = digits_from_tokens(grammar, jnp.asarray(tokens, jnp.int32))
    valid = np.asarray(valid)
    if not valid.all():
        raise ValueError(f"tokens rows {np.flatnonzero(~valid).tolist()} are not generated by "
                         "the grammar, so they have no index")
    return digits_to_index(grammar.config, np.asarray(digits))


_ENUMERATE_LIMIT = 2**24


def sample_indices(key: jax.Array, config: RHMConfig, n: int) -> np.ndarray:
    """``n`` distinct data indices, uniform without replacement, as ``(n, 1 + N)`` digits.

    Never materialises ``range(P_max)`` when it is large: for ``P_max > 2**24`` it draws
    uniform digit rows and redraws duplicates (exact: the ordered result is a uniform draw
    without replacement), so it works for any ``P_max``, including above 2**63. Split the
    result to get disjoint training and test sets.

    Examples:
      >>> import jax
      >>> cfg = RHMConfig(v=4, m=2, s=2, L=3)
      >>> d = sample_indices(jax.random.key(0), cfg, 100)
      >>> len(set(digits_to_index(cfg, d)))
      100
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n = {n!r} must be a non-negative integer")
    if n > config.P_max:
        raise ValueError(f"n = {n} exceeds P_max = {config.P_max}: cannot draw that many "
                         "distinct data")
    if config.P_max <= _ENUMERATE_LIMIT:
        perm = np.asarray(jax.random.permutation(key, config.P_max))[:n]
        return index_to_digits(config, perm.tolist()).reshape(n, 1 + config.num_internal_nodes)
    width = 1 + config.num_internal_nodes
    maxval = jnp.asarray(_radices(config), jnp.int32)
    rows = np.zeros((0, width), np.int32)
    attempt = 0
    while rows.shape[0] < n:
        need = n - rows.shape[0]
        # Always n rows, of which the first `need` are used: one compiled shape, where a
        # (need, width) draw would recompile (seconds) at every redraw round.
        draw = jax.random.randint(jax.random.fold_in(key, attempt), (n, width), 0, maxval,
                                  dtype=jnp.int32)
        rows = np.concatenate([rows, np.asarray(draw)[:need]])
        _, first = np.unique(rows, axis=0, return_index=True)
        rows = rows[np.sort(first)]  # keep the first occurrence, preserving draw order
        attempt += 1
    return rows


def sample_disjoint_data(key: jax.Array, grammar: Grammar, sizes) -> list[Data]:
    """Disjoint sets of distinct data (e.g. train and test), each without replacement.

    Args:
      key: a PRNG key.
      grammar: the rules.
      sizes: number of data in each set, e.g. ``(n_train, n_test)``.

    Returns:
      A list of :class:`Data` (with latents and digits), one per size.
    """
    sizes = [int(x) for x in sizes]
    digits = sample_indices(key, grammar.config, sum(sizes))
    out, start = [], 0
    for size in sizes:
        out.append(data_from_digits(grammar, jnp.asarray(digits[start:start + size])))
        start += size
    return out
