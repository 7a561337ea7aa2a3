"""Sampling RHM data and the exact datum <-> index bijection (``docs/theory/model.md``)."""

import itertools
import random

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rhm_jax import (
    RHMConfig,
    data_from_digits,
    data_from_index,
    digits_from_tokens,
    digits_to_index,
    grammar_from_rules,
    index_from_data,
    index_to_digits,
    sample_data,
    sample_disjoint_data,
    sample_indices,
    sampling,
)

# s = 3 and n_classes != v; P_max = 2 * 3**4 = 162, small enough to histogram every datum.
SMALL = RHMConfig(v=3, m=3, s=3, L=2, n_classes=2)
# P_max = 4 * 2**7 = 512: enumerable, and all v**d = 4**8 sequences can be parsed.
TINY = RHMConfig(v=4, m=2, s=2, L=3)
# P_max = 4 * 2**127 > 2**64: indices only exist as Python ints.
DEEP = RHMConfig(v=4, m=2, s=2, L=7)
NUM_SAMPLES = 50_000
NUM_DEEP = 40  # rows of DEEP data per call: one shape, one compile


def _numpy_grammar(cfg, seed):
    """A random grammar drawn with numpy (sample_grammar is tested in test_grammar.py, and
    this avoids compiling its sampler for every shape here)."""
    rng = np.random.default_rng(seed)
    rules = []
    for level in range(cfg.L):
        n_l = cfg.num_symbols(level)
        codes = rng.choice(cfg.v**cfg.s, size=n_l * cfg.m, replace=False)
        tuples = (codes[:, None] // cfg.v ** np.arange(cfg.s - 1, -1, -1)) % cfg.v
        rules.append(tuples.reshape(n_l, cfg.m, cfg.s))
    return grammar_from_rules(rules, cfg)


@pytest.fixture(scope="module")
def small_grammar():
    return _numpy_grammar(SMALL, 0)


@pytest.fixture(scope="module")
def tiny_grammar():
    return _numpy_grammar(TINY, 1)


@pytest.fixture(scope="module")
def deep_grammar():
    return _numpy_grammar(DEEP, 2)


@pytest.fixture(scope="module")
def small_data(small_grammar):
    return sample_data(jax.random.key(3), small_grammar, NUM_SAMPLES, return_latents=True)


def _node_offset(cfg, level):
    """Column of the first node of ``level`` among the psi digits (top-down, left to right)."""
    return sum(cfg.s**k for k in range(level))


def _psi_from_latents(rules, cfg, latents):
    """Rule index of every internal node, recovered from parent and children by search."""
    n = latents[0].shape[0]
    psi = np.full((n, cfg.num_internal_nodes), -1)
    for level in range(cfg.L):
        r = np.asarray(rules[level])
        parents, children = np.asarray(latents[level]), np.asarray(latents[level + 1])
        for j in range(cfg.s**level):
            kids = children[:, j * cfg.s:(j + 1) * cfg.s]
            candidates = r[parents[:, j]]  # (n, m, s)
            hit = np.all(candidates == kids[:, None, :], axis=-1)  # (n, m)
            assert np.all(hit.sum(axis=1) == 1), "children must match exactly one rule"
            psi[:, _node_offset(cfg, level) + j] = np.argmax(hit, axis=1)
    return psi


def _binomial_ok(counts, trials, p, n_se=5.0):
    counts = np.asarray(counts, np.float64)
    trials = np.asarray(trials, np.float64)
    se = np.sqrt(trials * p * (1 - p))
    return np.abs(counts - trials * p) <= n_se * se


def _all_sequences(rules, cfg):
    """Every datum by recursive expansion of the rules, independent of the library code."""
    rules = [np.asarray(r).tolist() for r in rules]

    def expand(level, symbol):
        if level == cfg.L:
            return [(symbol,)]
        out = []
        for children in rules[level][symbol]:
            parts = [expand(level + 1, c) for c in children]
            out.extend(sum(combo, ()) for combo in itertools.product(*parts))
        return out

    return {y: expand(0, y) for y in range(cfg.n_classes)}


# ---- sample_data ---------------------------------------------------------------------------
def test_shapes_dtypes_and_ranges(small_grammar, small_data):
    cfg, data = SMALL, small_data
    assert data.tokens.shape == (NUM_SAMPLES, cfg.d) and data.tokens.dtype == jnp.int32
    assert data.classes.shape == (NUM_SAMPLES,) and data.classes.dtype == jnp.int32
    assert len(data.latents) == cfg.L + 1
    for level, x in enumerate(data.latents):
        assert x.shape == (NUM_SAMPLES, cfg.s**level) and x.dtype == jnp.int32
        x = np.asarray(x)
        assert x.min() >= 0 and x.max() < cfg.num_symbols(level)
    assert data.digits.shape == (NUM_SAMPLES, 1 + cfg.num_internal_nodes)
    assert data.digits.dtype == jnp.int32
    np.testing.assert_array_equal(data.latents[0][:, 0], data.classes)
    np.testing.assert_array_equal(data.latents[-1], data.tokens)
    np.testing.assert_array_equal(data.digits[:, 0], data.classes)
    plain = sample_data(jax.random.key(3), small_grammar, NUM_SAMPLES)
    assert plain.latents is None and plain.digits is None
    assert plain.tokens.shape == (NUM_SAMPLES, cfg.d) and plain.classes.shape == (NUM_SAMPLES,)
    # Same key: the same data whether or not the latents are returned.
    np.testing.assert_array_equal(plain.tokens, data.tokens)


def test_latents_follow_the_rules(small_grammar, small_data):
    cfg, data = SMALL, small_data
    latents = [np.asarray(x) for x in data.latents]
    digits = np.asarray(data.digits)
    for level in range(cfg.L):
        r = np.asarray(small_grammar.rules[level])
        for j in range(cfg.s**level):
            psi = digits[:, 1 + _node_offset(cfg, level) + j]
            expected = r[latents[level][:, j], psi]  # (n, s)
            np.testing.assert_array_equal(latents[level + 1][:, j * cfg.s:(j + 1) * cfg.s],
                                          expected)
    # Parsing the tokens alone recovers the same digits.
    parsed, valid = digits_from_tokens(small_grammar, data.tokens)
    assert bool(np.all(valid))
    np.testing.assert_array_equal(parsed, digits)


def test_classes_and_rules_used_uniformly(small_grammar, small_data):
    cfg, data = SMALL, small_data
    latents = [np.asarray(x) for x in data.latents]
    psi = _psi_from_latents(small_grammar.rules, cfg, latents)
    np.testing.assert_array_equal(psi, np.asarray(data.digits)[:, 1:])
    classes = np.bincount(latents[0][:, 0], minlength=cfg.n_classes)
    assert np.all(_binomial_ok(classes, NUM_SAMPLES, 1 / cfg.n_classes)), classes
    # At every node and for every parent symbol, each of its m rules is equally likely.
    for level in range(cfg.L):
        for j in range(cfg.s**level):
            parent = latents[level][:, j]
            col = _node_offset(cfg, level) + j
            joint = np.zeros((cfg.num_symbols(level), cfg.m))
            np.add.at(joint, (parent, psi[:, col]), 1)
            trials = joint.sum(axis=1, keepdims=True)
            assert np.all(_binomial_ok(joint, trials, 1 / cfg.m)), (level, j, joint)
    # Every one of the P_max data is equally likely (indices exact: P_max is small here).
    index = np.asarray(digits_to_index(cfg, np.asarray(data.digits)))
    hist = np.bincount(index, minlength=cfg.P_max)
    assert hist.shape == (cfg.P_max,)
    assert np.all(_binomial_ok(hist, NUM_SAMPLES, 1 / cfg.P_max)), hist
    _, p_value = stats.chisquare(hist)
    assert p_value > 1e-6, p_value


def test_class_conditional_sampling(small_grammar):
    cfg = SMALL
    n = NUM_SAMPLES  # reuse the compiled shapes
    want = np.arange(n) % cfg.n_classes
    want[::7] = cfg.n_classes - 1
    data = sample_data(jax.random.key(4), small_grammar, n, classes=want, return_latents=True)
    np.testing.assert_array_equal(data.classes, want)
    np.testing.assert_array_equal(data.latents[0][:, 0], want)
    parsed, valid = digits_from_tokens(small_grammar, data.tokens)
    assert bool(np.all(valid))
    np.testing.assert_array_equal(parsed[:, 0], want)
    # Below the root the data are still random.
    assert len({row.tobytes() for row in np.asarray(data.tokens)}) == cfg.P_max
    # Also as a jnp array, and with a single class for everyone.
    only = sample_data(jax.random.key(5), small_grammar, n, classes=jnp.full((n,), 1, jnp.int32),
                       return_latents=True)
    assert np.all(np.asarray(only.classes) == 1)
    np.testing.assert_array_equal(digits_from_tokens(small_grammar, only.tokens)[0][:, 0], 1)


def test_deterministic_for_a_key(small_grammar, small_data):
    a = small_data
    b = sample_data(jax.random.key(3), small_grammar, NUM_SAMPLES, return_latents=True)
    c = sample_data(jax.random.key(10), small_grammar, NUM_SAMPLES, return_latents=True)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.tokens, c.tokens)


def test_jit_and_no_jit_agree(small_grammar, small_data):
    jitted = small_data
    with jax.disable_jit():
        eager = sample_data(jax.random.key(3), small_grammar, NUM_SAMPLES, return_latents=True)
    assert jax.tree.structure(jitted) == jax.tree.structure(eager)
    for x, y in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
        np.testing.assert_array_equal(x, y)


def test_inner_sampler_compiles_once_for_new_keys(small_grammar, small_data):
    inner = sampling.sample_data_unchecked.__wrapped__
    counted = chex.assert_max_traces(inner, n=1)
    fn = jax.jit(counted, static_argnames=("n", "return_latents"))
    chex.clear_trace_counter()
    try:
        outs = [fn(jax.random.key(k), small_grammar, n=NUM_SAMPLES, classes=None,
                   return_latents=True) for k in range(3, 7)]
        assert len({np.asarray(o.tokens).tobytes() for o in outs}) == 4
        np.testing.assert_array_equal(outs[0].tokens, small_data.tokens)  # key 3, as sampled
        # The counter does catch a retrace (a new static n).
        with pytest.raises(AssertionError, match="traced > 1 times"):
            fn(jax.random.key(0), small_grammar, n=NUM_SAMPLES - 1, classes=None,
               return_latents=True)
    finally:
        chex.clear_trace_counter()


@pytest.mark.parametrize("n,error,match", [
    (0, ValueError, "n = 0 must be >= 1"), (-1, ValueError, "n = -1 must be >= 1"),
    (2.0, TypeError, "n must be an integer, got float 2.0"),
    (True, TypeError, "n must be an integer, got bool True"),
    ("5", TypeError, "n must be an integer, got str '5'"),
    (None, TypeError, "n must be an integer, got None")], ids=repr)
def test_bad_n_raises(small_grammar, n, error, match):
    with pytest.raises(error, match=match):
        sample_data(jax.random.key(0), small_grammar, n)


@pytest.mark.parametrize("classes,match", [
    (np.zeros(599, np.int32), r"classes has shape \(599,\), expected \(n,\) = \(600,\)"),
    (np.zeros((600, 1), np.int32), r"classes has shape \(600, 1\)"),
    (np.full(600, 2, np.int32), r"classes must lie in \[0, n_classes=2\), got values in \[2, 2\]"),
    (np.full(600, -1, np.int32), r"classes must lie in \[0, n_classes=2\), got values in"),
    (np.zeros(600, np.float32), r"classes has dtype float32; classes must be integers"),
], ids=["short", "2d", "too-large", "negative", "float"])
def test_bad_classes_raise(small_grammar, classes, match):
    with pytest.raises(ValueError, match=match):
        sample_data(jax.random.key(0), small_grammar, 600, classes=classes)


# ---- exact indexing ------------------------------------------------------------------------
def _deep_indices():
    P = DEEP.P_max
    rng = random.Random(0)
    near = [0, 1, 2, P - 1, P - 2, P // 2, P // 4 - 1]
    near += [b + off for b in (2**63, 2**64) for off in (-2, -1, 0, 1, 2)]
    near += [2**128 - 1, 2**128, 3 * 2**127 + 12345]
    return near + [rng.randrange(P) for _ in range(NUM_DEEP - len(near))]


def test_round_trip_above_int64(deep_grammar):
    cfg = DEEP
    assert cfg.P_max == 4 * 2**127
    indices = _deep_indices()
    digits = index_to_digits(cfg, indices)
    assert digits.shape == (len(indices), 1 + cfg.num_internal_nodes) == (len(indices), 128)
    assert digits.dtype == np.int32
    assert np.all(digits[:, 0] < cfg.n_classes) and np.all(digits[:, 1:] < cfg.m)
    assert np.all(digits >= 0)
    # Big-endian mixed radix, checked against the binary expansion (m = 2, n_classes = 4).
    for idx, row in zip(indices, digits.tolist()):
        assert row[0] == idx >> 127
        assert "".join(map(str, row[1:])) == format(idx % 2**127, "0127b")
    data = data_from_digits(deep_grammar, jnp.asarray(digits))
    assert data.tokens.shape == (len(indices), cfg.d)
    parsed, valid = digits_from_tokens(deep_grammar, data.tokens)
    assert bool(np.all(valid))
    np.testing.assert_array_equal(parsed, digits)
    assert digits_to_index(cfg, np.asarray(parsed)) == indices
    # The convenience wrappers agree.
    assert index_from_data(deep_grammar, data.tokens) == indices
    np.testing.assert_array_equal(data_from_index(deep_grammar, indices).tokens, data.tokens)
    # A single Python int gives a single row.
    np.testing.assert_array_equal(index_to_digits(cfg, indices[3]), digits[3])
    assert digits_to_index(cfg, digits[3]) == [indices[3]]


@pytest.mark.parametrize("bad", [-1, 4 * 2**127, 2**200])
def test_index_out_of_range_raises(bad):
    with pytest.raises(ValueError, match=r"must lie in \[0, P_max = "):
        index_to_digits(DEEP, bad)
    with pytest.raises(ValueError, match=r"must lie in \[0, P_max = "):
        index_to_digits(DEEP, [0, bad])


def test_enumeration_is_a_bijection_onto_the_language(tiny_grammar):
    cfg = TINY
    data = data_from_index(tiny_grammar, range(cfg.P_max))
    tokens = np.asarray(data.tokens)
    assert tokens.shape == (cfg.P_max, cfg.d)
    assert len({row.tobytes() for row in tokens}) == cfg.P_max
    # Same set of sequences (per class) as an independent recursive expansion of the rules.
    expected = _all_sequences(tiny_grammar.rules, cfg)
    for y in range(cfg.n_classes):
        got = {tuple(row) for row in tokens[np.asarray(data.classes) == y].tolist()}
        assert got == set(expected[y]), y
        assert len(expected[y]) == cfg.P_max // cfg.n_classes
    assert index_from_data(tiny_grammar, tokens) == list(range(cfg.P_max))


def test_ungrammatical_sequences_are_flagged(tiny_grammar):
    cfg = TINY
    # Parse all v**d = 65536 sequences: exactly the P_max grammatical ones are valid.
    every = np.array(list(itertools.product(range(cfg.v), repeat=cfg.d)), np.int32)
    digits, valid = digits_from_tokens(tiny_grammar, jnp.asarray(every))
    valid = np.asarray(valid)
    assert valid.sum() == cfg.P_max
    language = {s for seqs in _all_sequences(tiny_grammar.rules, cfg).values() for s in seqs}
    assert {tuple(row) for row in every[valid].tolist()} == language
    index = digits_to_index(cfg, np.asarray(digits)[valid])
    assert sorted(index) == list(range(cfg.P_max))
    # index_from_data names the bad rows (a P_max-row batch reuses the compiled parser).
    mixed = every[valid].copy()
    bad = np.flatnonzero(~valid)
    mixed[[3, 100]] = every[bad[[0, -1]]]
    with pytest.raises(ValueError, match=r"tokens rows \[3, 100\] are not generated by"):
        index_from_data(tiny_grammar, mixed)


# ---- sample_indices / sample_disjoint_data -------------------------------------------------
# Rejection regime with real redraws: P_max = 513 * 2**15 just above 2**24, and 20000 draws
# give about n**2 / (2 P_max) = 12 duplicate pairs to redraw.
REJECT = RHMConfig(v=33, m=2, s=2, L=4, n_classes=513)


def _indices(cfg, digits):
    return digits_to_index(cfg, np.asarray(digits))


def test_sample_indices_enumerate_regime():
    cfg = TINY
    assert cfg.P_max <= sampling._ENUMERATE_LIMIT
    digits = sample_indices(jax.random.key(0), cfg, 300)
    assert digits.shape == (300, 1 + cfg.num_internal_nodes)
    idx = _indices(cfg, digits)
    assert len(set(idx)) == 300 and all(0 <= i < cfg.P_max for i in idx)
    np.testing.assert_array_equal(sample_indices(jax.random.key(0), cfg, 300), digits)
    assert _indices(cfg, sample_indices(jax.random.key(1), cfg, 300)) != idx
    # n == P_max: a permutation of all data.
    everything = _indices(cfg, sample_indices(jax.random.key(2), cfg, cfg.P_max))
    assert sorted(everything) == list(range(cfg.P_max))
    assert everything != list(range(cfg.P_max))


def test_sample_indices_rejection_regime():
    cfg = REJECT
    assert cfg.P_max > sampling._ENUMERATE_LIMIT
    n = 20_000
    digits = sample_indices(jax.random.key(0), cfg, n)
    assert digits.shape == (n, 1 + cfg.num_internal_nodes)
    assert len({row.tobytes() for row in digits}) == n
    assert np.all(digits >= 0) and np.all(digits[:, 0] < cfg.n_classes)
    assert np.all(digits[:, 1:] < cfg.m)
    # Marginals of the digits are uniform.
    hist = np.bincount(digits[:, 0], minlength=cfg.n_classes)
    assert np.all(_binomial_ok(hist, n, 1 / cfg.n_classes)), hist
    assert np.all(_binomial_ok(digits[:, 1:].sum(axis=0), n, 0.5))
    np.testing.assert_array_equal(sample_indices(jax.random.key(0), cfg, n), digits)
    # Far beyond int64 the same path applies.
    deep = sample_indices(jax.random.key(1), DEEP, 1000)
    assert len(set(_indices(DEEP, deep))) == 1000


def test_rejection_regime_on_a_tiny_config(monkeypatch):
    # Forcing the rejection path where P_max is small makes duplicates frequent, so the
    # redraw is exercised hard; n == P_max must still give a permutation.
    monkeypatch.setattr(sampling, "_ENUMERATE_LIMIT", 0)
    cfg = RHMConfig(v=3, m=2, s=2, L=2, n_classes=2)  # P_max = 16
    everything = _indices(cfg, sample_indices(jax.random.key(0), cfg, cfg.P_max))
    assert sorted(everything) == list(range(cfg.P_max))
    # 8 of 16 without replacement: every position is uniform over the 16 data.
    K, n = 250, 8
    draws = np.array([_indices(cfg, sample_indices(jax.random.key(k), cfg, n))
                      for k in range(K)])
    assert all(len(set(row)) == n for row in draws.tolist())
    for pos in (0, n - 1):
        hist = np.bincount(draws[:, pos], minlength=cfg.P_max)
        assert np.all(_binomial_ok(hist, K, 1 / cfg.P_max)), (pos, hist)
        assert stats.chisquare(hist).pvalue > 1e-6, (pos, hist)


@pytest.mark.parametrize("cfg", [TINY, REJECT], ids=["enumerate", "rejection"])
def test_sample_indices_bad_n(cfg):
    with pytest.raises(ValueError, match=r"exceeds P_max"):
        sample_indices(jax.random.key(0), cfg, cfg.P_max + 1)
    with pytest.raises(ValueError, match=r"n = -1 must be >= 0"):
        sample_indices(jax.random.key(0), cfg, -1)
    for bad in (2.0, True, None):
        with pytest.raises(TypeError, match=r"n must be an integer, got"):
            sample_indices(jax.random.key(0), cfg, bad)
    empty = sample_indices(jax.random.key(0), cfg, 0)
    assert empty.shape == (0, 1 + cfg.num_internal_nodes)


def test_sample_disjoint_data(tiny_grammar, deep_grammar):
    cfg = TINY
    half = cfg.P_max // 2
    train, test = sample_disjoint_data(jax.random.key(0), tiny_grammar, (half, half))
    assert train.tokens.shape == (half, cfg.d) and test.tokens.shape == (half, cfg.d)
    a, b = _indices(cfg, train.digits), _indices(cfg, test.digits)
    assert len(set(a)) == half and len(set(b)) == half
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(cfg.P_max))  # together: every datum once
    tokens = np.concatenate([train.tokens, test.tokens])
    assert index_from_data(tiny_grammar, tokens) == a + b  # the digits match the tokens
    again = sample_disjoint_data(jax.random.key(0), tiny_grammar, (half, half))
    np.testing.assert_array_equal(again[1].tokens, test.tokens)
    # Above int64 (rejection regime), three sets.
    sets = sample_disjoint_data(jax.random.key(1), deep_grammar, (NUM_DEEP,) * 3)
    idx = [set(index_from_data(deep_grammar, s.tokens)) for s in sets]
    assert [len(i) for i in idx] == [NUM_DEEP] * 3
    assert [set(_indices(DEEP, s.digits)) for s in sets] == idx
    assert len(idx[0] | idx[1] | idx[2]) == 3 * NUM_DEEP
    with pytest.raises(ValueError, match="exceeds P_max"):
        sample_disjoint_data(jax.random.key(0), tiny_grammar, (half, half + 1))
