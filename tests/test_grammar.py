"""Grammar: drawing rules without replacement, uniformity, jit/vmap, validation (``docs/theory/model.md``)."""

import itertools

import jax
import numpy as np
import pytest

from rhm_jax import Grammar, RHMConfig, grammar_from_rules, sample_grammar
from rhm_jax import grammar as grammar_module

# Few distinct (n_l * m, v, s) shapes, since each one compiles the tuple sampler anew.
CONFIGS = [
    RHMConfig(v=3, m=2, s=2, L=2, n_classes=4),  # n_classes > v
    RHMConfig(v=3, m=3, s=3, L=2, n_classes=2),  # n_classes < v, s = 3
    RHMConfig(v=2, m=2, s=3, L=3, n_classes=4),  # root uses all 2**3 tuples
]
# Tiny enough that many grammars cover the 9 possible pairs many times: 6 of 9 per level.
TINY = RHMConfig(v=3, m=2, s=2, L=2, n_classes=3)
NUM_GRAMMARS = 2000


def assert_valid_rules(rules, cfg):
    """Shapes (n_l, m, s), int32, symbols in [0, v), no tuple twice within a level."""
    assert len(rules) == cfg.L
    for level, r in enumerate(rules):
        r = np.asarray(r)
        assert r.shape == (cfg.num_symbols(level), cfg.m, cfg.s), (level, r.shape)
        assert r.dtype == np.int32
        assert r.min() >= 0 and r.max() < cfg.v, level
        flat = r.reshape(-1, cfg.s)
        assert len(np.unique(flat, axis=0)) == flat.shape[0], f"level {level} repeats a tuple"


@pytest.fixture(scope="module", params=CONFIGS, ids=str)
def config_and_grammar(request):
    cfg = request.param
    return cfg, sample_grammar(jax.random.key(0), cfg)


def test_rules_are_distinct_in_range_and_well_shaped(config_and_grammar):
    cfg, g = config_and_grammar
    assert isinstance(g, Grammar)
    assert g.config == cfg
    assert_valid_rules(g.rules, cfg)


def test_deterministic_for_a_key_and_different_for_another(config_and_grammar):
    cfg, g = config_and_grammar
    again = sample_grammar(jax.random.key(0), cfg)
    for a, b in zip(g.rules, again.rules):
        np.testing.assert_array_equal(a, b)
    other = sample_grammar(jax.random.key(1), cfg)
    assert any(not np.array_equal(a, b) for a, b in zip(g.rules, other.rules))


def test_jit_and_no_jit_agree(monkeypatch):
    cfg = CONFIGS[0]
    g = sample_grammar(jax.random.key(0), cfg)
    # The BP lookup tables derived from the rules take seconds to build op by op; they are
    # a function of the rules, which is what is compared here.
    monkeypatch.setattr(grammar_module, "with_inverse_tables", lambda grammar: grammar,
                        raising=False)
    with jax.disable_jit():
        eager = sample_grammar(jax.random.key(0), cfg)
    jitted = jax.jit(sample_grammar, static_argnames="config")(jax.random.key(0), cfg)
    assert jitted.config == cfg
    for a, b, c in zip(g.rules, eager.rules, jitted.rules):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.fixture(scope="module")
def stacked_tiny():
    keys = jax.random.split(jax.random.key(11), NUM_GRAMMARS)
    return keys, jax.vmap(sample_grammar, in_axes=(0, None))(keys, TINY)


def test_vmap_over_keys_stacks_individual_draws(stacked_tiny):
    keys, stacked = stacked_tiny
    assert stacked.config == TINY
    for level, r in enumerate(stacked.rules):
        assert r.shape == (NUM_GRAMMARS, TINY.num_symbols(level), TINY.m, TINY.s)
    for k in [0, 1, 2, NUM_GRAMMARS - 1]:
        single = sample_grammar(keys[k], TINY)
        for a, b in zip(stacked.rules, single.rules):
            np.testing.assert_array_equal(a[k], b)
    # The draws are not all the same grammar.
    assert len({np.asarray(stacked.rules[0][k]).tobytes() for k in range(20)}) > 10


def test_big_vocabulary_builds_without_enumeration():
    cfg = RHMConfig(v=256, m=8, s=4, L=3)  # v**s = 2**32 tuples: must not be enumerated
    g = sample_grammar(jax.random.key(3), cfg)
    assert_valid_rules(g.rules, cfg)
    # Levels are drawn independently: they are not copies of each other.
    assert not np.array_equal(g.rules[1], g.rules[2])


@pytest.mark.parametrize("cfg", [
    RHMConfig(v=3, m=3, s=2, L=1),               # 3 * 3 == 3**2
    CONFIGS[2],                                  # 4 * 2 == 2**3 at the root
], ids=str)
def test_full_occupancy_uses_every_tuple_once(cfg):
    g = sample_grammar(jax.random.key(5), cfg)
    assert_valid_rules(g.rules, cfg)
    all_tuples = set(itertools.product(range(cfg.v), repeat=cfg.s))
    full = [level for level in range(cfg.L) if cfg.num_symbols(level) * cfg.m == cfg.v**cfg.s]
    assert full
    for level in full:
        flat = {tuple(t) for t in np.asarray(g.rules[level]).reshape(-1, cfg.s).tolist()}
        assert flat == all_tuples


def _binomial_ok(counts, trials, p, n_se=5.0):
    """Per-cell check: |count - trials p| <= n_se binomial standard errors."""
    counts = np.asarray(counts, np.float64)
    se = np.sqrt(trials * p * (1 - p))
    return np.abs(counts - trials * p) <= n_se * se


def test_drawn_tuples_are_uniform_without_replacement(stacked_tiny):
    _, stacked = stacked_tiny
    cfg, K = TINY, NUM_GRAMMARS
    num_tuples = cfg.v**cfg.s
    codes_by_level = []
    for level, r in enumerate(stacked.rules):
        r = np.asarray(r).reshape(K, -1, cfg.s)  # (K, slots, s), slot = symbol * m + psi
        codes = r[..., 0] * cfg.v + r[..., 1]  # tuple id in [0, 9)
        codes_by_level.append(codes)
        slots = codes.shape[1]
        assert all(len(set(row)) == slots for row in codes.tolist())
        # Each tuple belongs to the level with probability n_l * m / v**s.
        used = np.zeros(num_tuples)
        for t in range(num_tuples):
            used[t] = np.sum(np.any(codes == t, axis=1))
        p_used = slots / num_tuples
        assert np.all(_binomial_ok(used, K, p_used)), (level, used, K * p_used)
        # Each (symbol, psi) slot is uniform over the 9 tuples.
        for slot in range(slots):
            hist = np.bincount(codes[:, slot], minlength=num_tuples)
            assert np.all(_binomial_ok(hist, K, 1 / num_tuples)), (level, slot, hist)
        # The first and last slots are jointly uniform over the 72 ordered distinct pairs
        # (a biased rejection step would show up in the later slots).
        pair = codes[:, 0] * num_tuples + codes[:, -1]
        hist = np.bincount(pair, minlength=num_tuples**2).reshape(num_tuples, num_tuples)
        assert np.all(np.diag(hist) == 0)
        off = hist[~np.eye(num_tuples, dtype=bool)]
        assert np.all(_binomial_ok(off, K, 1 / (num_tuples * (num_tuples - 1)))), hist
    # Levels are independent: slot 0 of level 0 and of level 1 are jointly uniform.
    joint = np.bincount(codes_by_level[0][:, 0] * num_tuples + codes_by_level[1][:, 0],
                        minlength=num_tuples**2)
    assert np.all(_binomial_ok(joint, K, 1 / num_tuples**2)), joint


# ---- grammar_from_rules ------------------------------------------------------------------
RULES_CFG = CONFIGS[0]  # v=3, m=2, s=2, L=2, n_classes=4
VALID_RULES = [
    np.array([[[0, 1], [2, 2]], [[1, 0], [0, 0]], [[1, 1], [2, 1]], [[0, 2], [1, 2]]]),  # (4, 2, 2)
    np.array([[[0, 0], [0, 1]], [[1, 1], [2, 0]], [[0, 2], [1, 2]]]),        # (3, 2, 2)
]


def test_grammar_from_rules_accepts_valid_rules():
    g = grammar_from_rules(VALID_RULES, RULES_CFG)
    assert g.config == RULES_CFG
    assert_valid_rules(g.rules, RULES_CFG)
    for a, b in zip(g.rules, VALID_RULES):
        np.testing.assert_array_equal(a, b)
    # Nested lists and other integer dtypes are accepted too.
    g2 = grammar_from_rules([r.astype(np.uint8).tolist() for r in VALID_RULES], RULES_CFG)
    for a, b in zip(g2.rules, VALID_RULES):
        np.testing.assert_array_equal(a, b)
    # Sampled rules round-trip through validation.
    sampled = sample_grammar(jax.random.key(0), RULES_CFG)
    g3 = grammar_from_rules(sampled.rules, RULES_CFG)
    for a, b in zip(g3.rules, sampled.rules):
        np.testing.assert_array_equal(a, b)


def _edit(level, fn):
    rules = [r.copy() for r in VALID_RULES]
    rules[level] = fn(rules[level])
    return rules


def _set(index, value):
    def fn(r):
        r[index] = value
        return r
    return fn


@pytest.mark.parametrize("rules,match", [
    (VALID_RULES[:1], r"rules has 1 levels but config.L = 2"),
    (VALID_RULES + [VALID_RULES[1]], r"rules has 3 levels but config.L = 2"),
    (_edit(0, lambda r: r[:, :1]), r"rules\[0\] has shape \(4, 1, 2\), expected .*\(4, 2, 2\)"),
    (_edit(1, lambda r: r[:2]), r"rules\[1\] has shape \(2, 2, 2\), expected .*\(3, 2, 2\)"),
    (_edit(1, lambda r: r[..., :1]), r"rules\[1\] has shape \(3, 2, 1\)"),
    (_edit(1, _set((2, 1, 0), 3)), r"rules\[1\] has symbols in \[0, 3\], outside \[0, v=3\)"),
    (_edit(0, _set((0, 0, 1), -1)), r"rules\[0\] has symbols in \[-1, 2\], outside \[0, v=3\)"),
    (_edit(0, lambda r: r.astype(np.float32)), r"rules\[0\] has dtype float32.*integers"),
    (_edit(1, _set((0, 1), [0, 0])),
     r"rules\[1\] is ambiguous: the tuple \(0, 0\) appears 2 times"),
    (_edit(0, _set((1, 0), [2, 2])),  # same tuple under two different symbols
     r"rules\[0\] is ambiguous: the tuple \(2, 2\) appears 2 times"),
], ids=["too-few-levels", "too-many-levels", "shape-m", "shape-n_l", "shape-s",
        "symbol-too-large", "negative-symbol", "float", "duplicate-same-symbol",
        "duplicate-across-symbols"])
def test_grammar_from_rules_rejects_bad_rules(rules, match):
    with pytest.raises(ValueError, match=match):
        grammar_from_rules(rules, RULES_CFG)


def test_config_must_be_an_rhm_config():
    with pytest.raises(TypeError, match="config must be an RHMConfig"):
        sample_grammar(jax.random.key(0), dict(v=3, m=2, s=2, L=2))
    with pytest.raises(TypeError, match="config must be an RHMConfig"):
        grammar_from_rules(VALID_RULES, (3, 2, 2, 2))
