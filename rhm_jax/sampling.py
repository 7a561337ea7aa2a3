"""Sampling RHM data, and the exact bijection between data and ``[0, P_max)``
(``docs/theory/model.md``).

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

from rhm_jax.validation import check_bool, check_fits, check_int, check_int_values, check_key
from rhm_jax.config import RHMConfig
from rhm_jax.grammar import Grammar, check_grammar
from rhm_jax.parsing import parse_unchecked


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
        # makes XLA's compile time grow exponentially with L (time the first call of
        # sample_data at L = 12, 15 with mode="fill" to see it).
        children = jnp.take(flat_rules, symbols * cfg.m + choice, axis=0, mode="clip")
        symbols = children.reshape(children.shape[0], width * cfg.s)
        latents.append(symbols)
    return tuple(latents)


@partial(jax.jit, static_argnames=("n", "return_latents"))
def sample_data_unchecked(key, grammar, n, classes, return_latents):
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


def sample_data_bytes(config: RHMConfig, n: int) -> int:
    """Peak bytes that :func:`sample_data` allocates for ``n`` data of ``config``.

    Int32 rule choices and digits (``2·(1 + N)`` per datum, ``N`` internal nodes) and the
    symbols of every level (``(s**(L+1) - 1)/(s - 1)`` per datum, the tokens among them).
    """
    nodes = (config.s ** (config.L + 1) - 1) // (config.s - 1)
    return 4 * int(n) * (2 * (1 + config.num_internal_nodes) + nodes)


def sample_data(key: jax.Array, grammar: Grammar, n: int, *, classes=None,
                return_latents: bool = False) -> Data:
    """Draws ``n`` data i.i.d. from the RHM (uniform class, uniform rule at every node).

    Allocates about :func:`sample_data_bytes` (``4·n·(2(1+N) + (s**(L+1)-1)/(s-1))``
    bytes); a call that cannot fit in the device's memory is refused before any work,
    with its size.

    Args:
      key: a PRNG key (``jax.random.key`` or a legacy ``jax.random.PRNGKey``).
      grammar: the rules.
      n: number of data (static), a positive integer.
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
    check_key("key", key)
    cfg = check_grammar(grammar).config
    n = check_int("n", n, minimum=1)
    return_latents = check_bool("return_latents", return_latents)
    if classes is not None:
        if not isinstance(classes, jax.core.Tracer):
            classes = np.asarray(classes)  # checked before any int32 cast
        if classes.shape != (n,):
            raise ValueError(f"classes has shape {classes.shape}, expected (n,) = ({n},)")
        if classes.dtype == np.bool_ or not jnp.issubdtype(classes.dtype, jnp.integer):
            raise ValueError(f"classes has dtype {classes.dtype}; classes must be integers")
        if not isinstance(classes, jax.core.Tracer) and (
                int(classes.min()) < 0 or int(classes.max()) >= cfg.n_classes):
            raise ValueError(
                f"classes must lie in [0, n_classes={cfg.n_classes}), got values in "
                f"[{int(classes.min())}, {int(classes.max())}]")
        classes = jnp.asarray(classes, jnp.int32)
    check_fits(f"sample_data(n={n}) at d = {cfg.s}**{cfg.L} tokens", sample_data_bytes(cfg, n))
    return sample_data_unchecked(key, grammar, n, classes, return_latents)


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
    scalar = isinstance(index, (int, np.integer)) and not isinstance(index, bool)
    if isinstance(index, np.ndarray):
        index = index.tolist()
    if not scalar and not isinstance(index, (list, tuple, range)):
        raise TypeError(f"index must be an integer or a list of integers, got {index!r}")
    indices = [index] if scalar else list(index)
    radices = _radices(config)
    out = np.zeros((len(indices), len(radices)), np.int32)
    for row, idx in enumerate(indices):
        idx = check_int("index", idx)  # exact Python ints: 2.7 is refused, not truncated
        if not 0 <= idx < config.P_max:
            raise ValueError(f"index = {idx} must lie in [0, P_max = {config.P_max})")
        for col in range(len(radices) - 1, -1, -1):
            idx, out[row, col] = divmod(idx, radices[col])
    return out[0] if scalar else out


def _check_digits(config: RHMConfig, digits, name: str = "digits"):
    """``(n, 1 + N)`` integer digits, each (when concrete) below its radix: the class below
    ``n_classes``, every rule choice below ``m``. Returns int32 (a jax.Array)."""
    width = 1 + config.num_internal_nodes
    shape = tuple(getattr(digits, "shape", np.shape(digits)))
    if len(shape) != 2 or shape[1] != width:
        raise ValueError(f"{name} has shape {shape}, expected (n, 1 + N) = (n, {width}) "
                         f"for {config}")
    return check_int_values(name, digits, 0, np.asarray(_radices(config), np.int64))


def digits_to_index(config: RHMConfig, digits) -> list[int]:
    """``(n, 1 + N)`` digits → list of exact Python int indices (inverse of index_to_digits).

    Each digit must lie below its radix (``n_classes`` for the class, ``m`` for a rule
    choice); a digit out of range is refused rather than carried into the next place.
    """
    if np.ndim(digits) == 1:
        digits = np.asarray(digits)[None]
    digits = np.asarray(_check_digits(config, np.asarray(digits)))
    radices = _radices(config)
    out = []
    for row in digits:
        idx = 0
        for digit, radix in zip(row.tolist(), radices):
            idx = idx * radix + int(digit)
        out.append(idx)
    return out


@jax.jit
def _data_from_digits(grammar: Grammar, digits: jax.Array) -> Data:
    latents = _expand(grammar, digits[:, 0], digits[:, 1:])
    return Data(latents[-1], digits[:, 0], latents, digits)


def data_from_digits(grammar: Grammar, digits) -> Data:
    """Datum (tokens, class, latents) for each row of index digits ``(n, 1 + N)``.

    Concrete digits must each lie below their radix (class ``< n_classes``, rule choice
    ``< m``); out-of-range digits are refused, not clipped. Works under ``jax.jit``.
    """
    cfg = check_grammar(grammar).config
    return _data_from_digits(grammar, _check_digits(cfg, digits))


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


def _check_sequences(config: RHMConfig, tokens, name: str = "tokens"):
    """``(n, d)`` integer tokens, concrete values in ``[0, v)``; floats are refused."""
    shape = tuple(getattr(tokens, "shape", np.shape(tokens)))
    if len(shape) != 2 or shape[1] != config.d:
        raise ValueError(f"{name} has shape {shape}, expected (n, d) = (n, {config.d})")
    return check_int_values(name, tokens, 0, config.v)


def digits_from_tokens(grammar: Grammar, tokens):
    """Parses sequences ``(n, d)`` back to their index digits.

    ``tokens`` must be integers (concrete ones in ``[0, v)``; floats are refused, not
    truncated). Works under ``jax.jit``.

    Returns:
      ``(digits, valid)``: ``(n, 1 + N)`` int32 digits and ``(n,)`` bool, False for
      sequences that no tree of the grammar generates (their digits are meaningless).
    """
    cfg = check_grammar(grammar).config
    return _digits_from_tokens(grammar, _check_sequences(cfg, tokens))


@jax.jit
def _digits_from_tokens(grammar: Grammar, tokens: jax.Array):
    tree = parse_unchecked(grammar, tokens)  # the class, then each internal node's rule choice
    return jnp.concatenate([tree.latents[0], *tree.choices], axis=1), tree.valid[0][:, 0]


def index_from_data(grammar: Grammar, tokens) -> list[int]:
    """Exact Python int index of each sequence ``(n, d)``; raises if one is ungrammatical."""
    digits, valid = digits_from_tokens(grammar, tokens)
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
    check_key("key", key)
    if not isinstance(config, RHMConfig):
        raise TypeError(f"config must be an RHMConfig, got {type(config).__name__}")
    n = check_int("n", n, minimum=0)
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
      sizes: number of data in each set, e.g. ``(n_train, n_test)``: integers >= 0.

    Returns:
      A list of :class:`Data` (with latents and digits), one per size.
    """
    cfg = check_grammar(grammar).config
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"sizes must be a sequence of integers, got {sizes!r}")
    sizes = [check_int(f"sizes[{i}]", x, minimum=0) for i, x in enumerate(sizes)]
    check_fits(f"sample_disjoint_data(sizes={sizes})", sample_data_bytes(cfg, sum(sizes)))
    digits = sample_indices(key, cfg, sum(sizes))
    out, start = [], 0
    for size in sizes:
        out.append(data_from_digits(grammar, jnp.asarray(digits[start:start + size])))
        start += size
    return out
