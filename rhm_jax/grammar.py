"""Production rules of the RHM: drawing them, validating user rules (``docs/theory/model.md``)."""

from __future__ import annotations

import dataclasses
import math
import weakref
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.validation import check_key
from rhm_jax.config import RHMConfig


class InverseTable(NamedTuple):
    """Which (symbol, rule) slots produce child symbol ``b`` in position ``k`` (one level).

    For each position ``k`` and child symbol ``b`` the ``C`` slots are listed, padded with
    the sentinel parent ``n_l`` (a zero row in the downward pass). This turns the downward
    pass's scatter-add into gathers (``docs/theory/belief_propagation.md``; see ``bp.downward_step``).

    Attributes:
      parent: ``(s, v, C)`` int32 parent symbol ``a`` of each slot (``n_l`` = padding).
      tuples: ``(s, v, C, s)`` int32 the slot's whole tuple ``R[a, psi]``.
    """

    parent: jax.Array
    tuples: jax.Array


@partial(jax.tree_util.register_dataclass, data_fields=["rules", "inverse"],
         meta_fields=["config"])
@dataclasses.dataclass(frozen=True)
class Grammar:
    """The rules of one RHM.

    Attributes:
      rules: one int32 array per level ``l = 0..L-1`` of shape ``(n_l, m, s)``:
        ``rules[l][a, psi]`` is the ``psi``-th s-tuple that symbol ``a`` expands into.
        A stack of K grammars (``jax.vmap`` over keys) has shapes ``(K, n_l, m, s)``.
      config: the static :class:`RHMConfig`.
      inverse: ``None`` or one :class:`InverseTable` per level, sized to this grammar
        (built on the host when the rules are concrete; BP builds padded ones otherwise).
    """

    rules: tuple
    config: RHMConfig
    inverse: tuple | None = None


#: Concrete rule arrays already found valid, keyed by (id, config, level): a jax.Array is
#: immutable, and the entry goes when the array does, so an id is never reused stale.
_VALID_RULES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _check_level_values(name: str, rules: np.ndarray, config: RHMConfig, level: int) -> None:
    """Symbols in ``[0, v)`` and no s-tuple twice in a level (of each grammar of a stack)."""
    if rules.size and (rules.min() < 0 or rules.max() >= config.v):
        raise ValueError(f"{name} has symbols in [{rules.min()}, {rules.max()}], outside "
                         f"[0, v={config.v})")
    for flat in rules.reshape(-1, rules.shape[-3] * rules.shape[-2], config.s):
        uniq, counts = np.unique(flat, axis=0, return_counts=True)
        if np.any(counts > 1):
            dup = tuple(int(x) for x in uniq[np.argmax(counts)])
            raise ValueError(
                f"{name} is ambiguous: the tuple {dup} appears {counts.max()} times; each "
                "s-tuple may belong to at most one (symbol, rule) in a level")


def check_grammar(grammar, name: str = "grammar", *, stacked: bool | None = False) -> "Grammar":
    """Raise unless ``grammar`` is a :class:`Grammar` whose rules fit its config.

    Always (also under ``jit``): the type, the number of levels, each level's shape
    ``(n_l, m, s)`` (``(K, n_l, m, s)`` for a stack) and an integer dtype. On concrete rules
    also the values: symbols in ``[0, v)`` and an unambiguous level (no tuple twice), so a
    hand-built ``Grammar(...)`` with wrong rules is refused instead of giving finite
    nonsense. Concrete ``jax.Array`` rules are checked once and remembered.

    Args:
      grammar: the value to check.
      name: the argument's name in messages.
      stacked: ``False`` for one grammar, ``True`` for a stack, ``None`` for either.

    Returns:
      ``grammar``.
    """
    if not isinstance(grammar, Grammar):
        raise TypeError(f"{name} must be a Grammar, got {type(grammar).__name__}")
    cfg = grammar.config
    if not isinstance(cfg, RHMConfig):
        raise TypeError(f"{name}.config must be an RHMConfig, got {type(cfg).__name__}")
    rules = grammar.rules
    if not isinstance(rules, (tuple, list)) or len(rules) != cfg.L:
        got = f"{len(rules)} levels" if isinstance(rules, (tuple, list)) else type(rules).__name__
        raise ValueError(f"{name}.rules must hold L = {cfg.L} arrays (one per level), got {got}")
    ranks = {False: (3,), True: (4,), None: (3, 4)}[stacked]
    batch = None
    for level, r in enumerate(rules):
        where = f"{name}.rules[{level}]"
        shape = tuple(getattr(r, "shape", ()))
        want = (cfg.num_symbols(level), cfg.m, cfg.s)
        if len(shape) not in ranks or shape[-3:] != want:
            form = " or ".join({3: f"{want}", 4: f"(K, *{want})"}[k] for k in ranks)
            raise ValueError(f"{where} has shape {shape}, expected (n_l, m, s) = {form} for "
                             f"{name}.config = {cfg}")
        if batch is not None and shape[:-3] != batch:
            raise ValueError(f"{where} has stack shape {shape[:-3]}, but level 0 has {batch}")
        batch = shape[:-3]
        dtype = np.dtype(r.dtype)
        if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
            raise TypeError(f"{where} has dtype {dtype}; rules must be integers")
        if isinstance(r, jax.core.Tracer):
            continue
        memo = (id(r), cfg, level)
        if _VALID_RULES.get(memo) is r:
            continue
        _check_level_values(where, np.asarray(r), cfg, level)
        if isinstance(r, jax.Array):
            _VALID_RULES[memo] = r
    return grammar


def max_slots_per_child(config: RHMConfig, level: int) -> int:
    """Upper bound on the slots that share one child symbol in one position.

    Distinct tuples with a fixed symbol in position ``k`` number at most ``v**(s-1)``.
    """
    return min(config.num_symbols(level) * config.m, config.v ** (config.s - 1))


def typical_slots_per_child(config: RHMConfig, level: int) -> int:
    """A per-config table width that a random grammar's counts rarely exceed.

    The count of slots sharing a child symbol has mean ``n_l*m/v``; padding every table to
    the mean plus four standard deviations keeps shapes (hence compiled BP) the same for
    almost every grammar of a config, while staying well below the worst-case bound.
    """
    mean = config.num_symbols(level) * config.m / config.v
    return min(max_slots_per_child(config, level), int(math.ceil(mean + 4 * math.sqrt(mean))) + 1)


@partial(jax.jit, static_argnames=("v", "num_slots"))
def inverse_table(rules: jax.Array, v: int, num_slots: int) -> InverseTable:
    """Inverse of one level's rules, ``(n_l, m, s) -> InverseTable`` with ``C = num_slots``.

    ``num_slots`` must be at least the largest number of slots sharing a child symbol in a
    position (:func:`max_slots_per_child` is always safe). Jittable and vmappable.
    """
    n_l, m, s = rules.shape
    flat = rules.reshape(n_l * m, s)
    symbols = jnp.arange(v)
    parents, tuples = [], []
    for k in range(s):
        order = jnp.argsort(flat[:, k], stable=True)
        sorted_keys = flat[order, k]
        start = jnp.searchsorted(sorted_keys, symbols, side="left")
        pos = start[:, None] + jnp.arange(num_slots)[None, :]  # (v, C)
        safe = jnp.minimum(pos, n_l * m - 1)
        valid = (pos < n_l * m) & (sorted_keys[safe] == symbols[:, None])
        slot = order[safe]
        parents.append(jnp.where(valid, slot // m, n_l).astype(jnp.int32))
        tuples.append(jnp.where(valid[..., None], flat[slot], 0).astype(jnp.int32))
    return InverseTable(jnp.stack(parents), jnp.stack(tuples))


def with_inverse_tables(grammar: Grammar) -> Grammar:
    """The grammar with :class:`InverseTable` s sized to its concrete rules.

    Works for one grammar or a stack (the tables are padded to the largest count in the
    stack). BP runs faster with tight tables than with the padded bound it uses otherwise.
    """
    cfg = check_grammar(grammar, stacked=None).config
    tables = []
    for level, rules in enumerate(grammar.rules):
        if isinstance(rules, jax.core.Tracer):
            return grammar
        flat = np.asarray(rules).reshape(-1, rules.shape[-2] * rules.shape[-3], cfg.s)
        counts = max(int(np.bincount(f[:, k], minlength=cfg.v).max())
                     for f in flat for k in range(cfg.s))
        build = partial(inverse_table, v=cfg.v,
                        num_slots=max(counts, typical_slots_per_child(cfg, level)))
        for _ in range(rules.ndim - 3):
            build = jax.vmap(build)
        tables.append(build(rules))
    return dataclasses.replace(grammar, inverse=tuple(tables))


@partial(jax.jit, static_argnames=("num", "v", "s"))
def _distinct_tuples(key: jax.Array, num: int, v: int, s: int) -> jax.Array:
    """``num`` distinct s-tuples over ``range(v)``, uniform without replacement.

    Sequential rejection: the i-th tuple is redrawn until it differs from the i-1 before
    it, which makes the ordered result an exact uniform draw without replacement. It never
    enumerates the ``v**s`` tuples (memory ``num * s``), so huge vocabularies are cheap.
    """

    def draw(i, tuples):
        def is_taken(cand):
            same = jnp.all(tuples == cand, axis=-1) & (jnp.arange(num) < i)
            return jnp.any(same)

        def body(carry):
            attempt, _ = carry
            cand = jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, i), attempt),
                                      (s,), 0, v, dtype=jnp.int32)
            return attempt + 1, cand

        first = body((0, jnp.zeros((s,), jnp.int32)))
        _, cand = jax.lax.while_loop(lambda c: is_taken(c[1]), body, first)
        return tuples.at[i].set(cand)

    return jax.lax.fori_loop(0, num, draw, jnp.zeros((num, s), jnp.int32))


def _sample_rules(key, config: RHMConfig):
    # Not jitted as a whole: levels of equal shape share one compiled `_distinct_tuples`.
    keys = jax.random.split(key, config.L)
    rules = []
    for level in range(config.L):
        n_l = config.num_symbols(level)
        tuples = _distinct_tuples(keys[level], num=n_l * config.m, v=config.v, s=config.s)
        rules.append(tuples.reshape(n_l, config.m, config.s))
    return tuple(rules)


def sample_grammar(key: jax.Array, config: RHMConfig) -> Grammar:
    """Draws the rules of an RHM: each level's ``n_l * m`` tuples without replacement.

    Levels are independent; the result is a deterministic function of ``key``. Works under
    ``jax.jit`` and ``jax.vmap`` (over keys, giving a stack of grammars).

    Args:
      key: a PRNG key.
      config: the model's shape.

    Returns:
      A :class:`Grammar`.

    Examples:
      >>> import jax
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=4, m=2, s=2, L=2))
      >>> [r.shape for r in g.rules]
      [(4, 2, 2), (4, 2, 2)]
    """
    if not isinstance(config, RHMConfig):
        raise TypeError(f"config must be an RHMConfig, got {type(config).__name__}")
    check_key("key", key)
    return with_inverse_tables(Grammar(rules=_sample_rules(key, config), config=config))


def grammar_from_rules(rules, config: RHMConfig) -> Grammar:
    """Builds a :class:`Grammar` from user-given rule arrays, after checking them.

    Args:
      rules: a sequence of ``L`` integer arrays, level ``l`` of shape ``(n_l, m, s)``.
      config: the model's shape.

    Raises:
      ValueError: wrong number of levels, wrong shape, symbols out of ``[0, v)``, or an
        ambiguous level (a tuple used twice: the grammar must be unambiguous).

    Examples:
      >>> cfg = RHMConfig(v=2, m=1, s=2, L=1)
      >>> grammar_from_rules([[[[0, 1]], [[1, 1]]]], cfg).rules[0].shape
      (2, 1, 2)
    """
    if not isinstance(config, RHMConfig):
        raise TypeError(f"config must be an RHMConfig, got {type(config).__name__}")
    rules = list(rules)
    if len(rules) != config.L:
        raise ValueError(f"rules has {len(rules)} levels but config.L = {config.L}")
    checked = []
    for level, r in enumerate(rules):
        r = np.asarray(r)
        want = (config.num_symbols(level), config.m, config.s)
        if r.shape != want:
            raise ValueError(f"rules[{level}] has shape {r.shape}, expected (n_l, m, s) = {want}")
        if r.dtype == np.bool_ or not np.issubdtype(r.dtype, np.integer):
            raise ValueError(f"rules[{level}] has dtype {r.dtype}; rules must be integers")
        _check_level_values(f"rules[{level}]", r, config, level)  # before the int32 cast
        checked.append(jnp.asarray(r, dtype=jnp.int32))
    return with_inverse_tables(Grammar(rules=tuple(checked), config=config))
