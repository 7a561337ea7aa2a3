"""Bottom-up parsing of token sequences into the latent tree of the RHM
(``docs/theory/model.md``, ``docs/theory/denoisers.md``).

Inside a level no s-tuple belongs to two (symbol, rule) slots, so a tuple of child symbols
has at most one parent: parsing is deterministic, one level at a time from the tokens up.
A node is *valid* when its whole subtree is produced by the rules: a token is valid when
it is a symbol of the alphabet ``[0, v)`` (so a mask token, ``v``, is not), an internal
node when all its children are valid and their tuple is one of the level's rules. A valid
subtree has exactly one parse; an invalid node has no symbol (:data:`INVALID`).

Lookup of a tuple's slot ``a * m + psi``. Each tuple is coded as the big-endian number
``c_0 v**(s-1) + ... + c_{s-1}`` in ``[0, v**s)`` and looked up

* ``"table"``: in a dense ``(v**s,)`` table of slots (``-1`` for tuples that are no rule),
  built from the rules inside the call (one scatter) — one gather per node;
* ``"search"``: by binary search in the sorted codes of the ``n_l * m`` rules — for
  alphabets whose table would be too large (``v**s > TABLE_LIMIT``);
* ``"compare"``: by comparing each tuple with every rule, ``(n, nodes, n_l * m)``
  booleans — only for ``v**s >= 2**31``, where codes overflow int32.

``"auto"`` picks the first that applies; ``parse``'s docstring compares their costs.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rhm_jax.grammar import Grammar, check_grammar
from rhm_jax.validation import as_array, check_int_values

#: Symbol and rule choice given to invalid nodes.
INVALID: int = -1

#: Largest ``v**s`` for which ``"auto"`` builds a dense lookup table (4 MiB of int32 per level).
TABLE_LIMIT: int = 2**20

_CODE_LIMIT = 2**31  # codes must fit in int32
_INT32_MIN, _INT32_END = -(2**31), 2**31  # tokens are parsed as int32: any int32 value is legal
METHODS = ("auto", "table", "search", "compare")


class Parse(NamedTuple):
    """The parse of a batch of sequences (natural node order, as :attr:`Data.latents`).

    Attributes:
      latents: tuple over levels ``l = 0..L`` of ``(n, s**l)`` int32 symbols;
        :data:`INVALID` where the node is invalid. Level ``L`` is the tokens as given.
      valid: tuple over levels of ``(n, s**l)`` bool: the node's whole subtree is produced
        by the rules. ``valid[0][:, 0]`` says whether the sequence is grammatical.
      choices: tuple over levels ``l = 0..L-1`` of ``(n, s**l)`` int32 rule index ``psi``
        by which each node expands (``rules[l][latents[l], psi]`` are its children);
        :data:`INVALID` where the node is invalid.
    """

    latents: tuple
    valid: tuple
    choices: tuple


def resolve_method(config, method: str = "auto") -> str:
    """The lookup :func:`parse` uses for ``config`` (``"auto"`` resolved), after checking it."""
    if method not in METHODS:
        raise ValueError(f"method = {method!r} must be one of {', '.join(map(repr, METHODS))}")
    size = config.v**config.s
    if method == "auto":
        return "table" if size <= TABLE_LIMIT else "search" if size < _CODE_LIMIT else "compare"
    if method != "compare" and size >= _CODE_LIMIT:
        raise ValueError(f"method = {method!r} codes tuples in int32, but v**s = "
                         f"{config.v}**{config.s} = {size} >= 2**31; use 'compare'")
    return method


def _codes(tuples: jax.Array, v: int) -> jax.Array:
    """Big-endian code ``Σ_k c_k v**(s-1-k)`` of each s-tuple (last axis) in int32."""
    s = tuples.shape[-1]
    powers = jnp.asarray([v ** (s - 1 - k) for k in range(s)], jnp.int32)
    return jnp.sum(tuples.astype(jnp.int32) * powers, axis=-1, dtype=jnp.int32)


def _slots(rules: jax.Array, children: jax.Array, v: int, method: str) -> jax.Array:
    """Slot ``a * m + psi`` of each s-tuple of ``children`` ``(n, nodes, s)``; ``-1`` when
    the tuple is no rule of the level. Children must lie in ``[0, v)``."""
    n_l, m, s = rules.shape
    flat = rules.reshape(n_l * m, s)
    if method == "compare":
        match = jnp.all(children[:, :, None, :] == flat[None, None], axis=-1)
        return jnp.where(jnp.any(match, axis=-1), jnp.argmax(match, axis=-1), -1).astype(jnp.int32)
    codes = _codes(children, v)
    rule_codes = _codes(flat, v)
    if method == "table":
        table = jnp.full((v**s,), -1, jnp.int32).at[rule_codes].set(
            jnp.arange(n_l * m, dtype=jnp.int32), mode="drop", unique_indices=True)
        return jnp.take(table, codes, mode="clip")
    order = jnp.argsort(rule_codes)
    ordered = rule_codes[order]
    position = jnp.minimum(jnp.searchsorted(ordered, codes), n_l * m - 1)
    return jnp.where(ordered[position] == codes, order[position], -1).astype(jnp.int32)


def parse_unchecked(grammar: Grammar, tokens: jax.Array, method: str = "auto") -> Parse:
    """:func:`parse` on an ``(n, d)`` batch, traceable (no checks; ``method`` static)."""
    cfg = grammar.config
    method = resolve_method(cfg, method)
    n = tokens.shape[0]
    symbols = tokens.astype(jnp.int32)
    valid = (symbols >= 0) & (symbols < cfg.v)
    latents, valids, choices = [symbols], [valid], []
    for level in range(cfg.L - 1, -1, -1):
        nodes = cfg.s**level  # explicit: an empty batch cannot infer a -1 axis
        children = jnp.where(valid, symbols, 0).reshape(n, nodes, cfg.s)
        slot = _slots(grammar.rules[level], children, cfg.v, method)
        valid = jnp.all(valid.reshape(n, nodes, cfg.s), axis=-1) & (slot >= 0)
        symbols = jnp.where(valid, slot // cfg.m, INVALID)
        latents.insert(0, symbols)
        valids.insert(0, valid)
        choices.insert(0, jnp.where(valid, slot % cfg.m, INVALID))
    return Parse(tuple(latents), tuple(valids), tuple(choices))


@partial(jax.jit, static_argnames=("method",))
def _parse_jit(grammar, tokens, method):
    return parse_unchecked(grammar, tokens, method)


def parse(grammar: Grammar, tokens, *, method: str = "auto") -> Parse:
    """Parses sequences bottom-up into the symbols of every level and a validity mask.

    Rules are unambiguous, so each valid s-tuple of a level has exactly one parent
    (``docs/theory/model.md``). Tokens outside ``[0, v)`` (e.g. the mask token ``v``, or
    ``-1``) are accepted and make their leaf, and every ancestor, invalid; they must be
    int32 values, and are checked as given before the int32 cast (``2**32 + 3`` is
    refused, not read as ``3``). Jitted (``method`` static); the traceable core
    (:func:`parse_unchecked`) runs inside other jitted code and under ``jax.vmap`` over
    grammars.

    Cost: ``"table"`` is one gather per node, ``"search"`` a binary search in the
    ``n_l * m`` rule codes per node, ``"compare"`` every tuple against every rule, so
    they are fastest to slowest in that order (the table costs ``v**s`` int32 per level,
    built inside the call). To measure them on a machine, time warm calls of
    ``parse(g, x, method=m).valid[0].block_until_ready()`` for each ``m``, e.g. with
    ``python -m timeit`` on a batch of 1024 sequences of (32, 8, 2, 9).

    Args:
      grammar: the rules, one grammar (``(n_l, m, s)`` rule arrays; ``jax.vmap`` over a
        stack).
      tokens: ``(n, d)`` or ``(d,)`` integer sequences (an array, or nested lists of ints
        as NumPy reads them); ``n = 0`` gives empty levels.
      method: ``"auto"``, ``"table"``, ``"search"`` or ``"compare"`` (module docstring);
        the result does not depend on it.

    Returns:
      :class:`Parse` (without the batch axis for ``(d,)`` input).

    Raises:
      TypeError: ``tokens`` are not integers (floats are not truncated).
      ValueError: a shape other than ``(d,)`` or ``(n, d)``, a ragged list, or a value
        outside int32.

    Examples:
      >>> import jax
      >>> from rhm_jax import RHMConfig, sample_grammar, sample_data
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> x = sample_data(jax.random.key(1), g, 4, return_latents=True)
      >>> tree = parse(g, x.tokens)
      >>> bool(all((a == b).all() for a, b in zip(tree.latents, x.latents)))
      True
      >>> broken = x.tokens.at[0, 5].set(8)  # not a symbol (e.g. a mask token)
      >>> [v[0].astype(int).tolist() for v in parse(g, broken).valid]
      [[0], [1, 0], [1, 1, 0, 1], [1, 1, 1, 1, 1, 0, 1, 1]]
    """
    cfg = check_grammar(grammar).config  # one grammar: map a stack with jax.vmap
    resolve_method(cfg, method)
    tokens = as_array("tokens", tokens)
    shape = tuple(jnp.shape(tokens))
    if len(shape) not in (1, 2) or shape[-1] != cfg.d:
        raise ValueError(f"tokens has shape {shape}, but must be (d,) or (n, d) with "
                         f"d = s**L = {cfg.d}")
    dtype = tokens.dtype  # as given: jnp.result_type would canonicalise int64 to int32
    if (jnp.issubdtype(dtype, jnp.integer) and dtype != jnp.bool_
            and jnp.iinfo(dtype).min >= _INT32_MIN and jnp.iinfo(dtype).max < _INT32_END):
        tokens = jnp.asarray(tokens, jnp.int32)  # every value of the dtype is an int32
    else:  # wider integers are range-checked before the cast; other dtypes refused
        tokens = check_int_values("tokens", tokens, _INT32_MIN, _INT32_END)
    if tokens.ndim == 1:
        return jax.tree.map(lambda x: x[0], _parse_jit(grammar, tokens[None], method))
    return _parse_jit(grammar, tokens, method)
