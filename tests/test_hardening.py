"""Bad input is refused before any work, with a message naming the argument.

One parametrised table per class of problem: integers (NumPy integers accepted, bools,
floats and out-of-range values refused), PRNG keys (typed and legacy accepted, junk
refused), integer values checked before the int32 cast, hand-built grammars, times,
non-finite evidence (refused eagerly, visible NaN under jit), sizes that cannot fit,
command-line flags (one line, exit code 2, before any computation) and run folders
(replaced whole, never mixed).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax import (Cosine, EpsilonProcess, Gaussian, Masking, RHMConfig, UniformSubstitution,
                     bp, data_from_digits, digits_from_tokens, digits_to_index, exact,
                     index_from_data, index_to_digits, sample_data, sample_disjoint_data,
                     sample_grammar, sample_indices)
from rhm_jax.grammar import Grammar
from rhm_jax.sharding import pad_to_multiple

CFG = RHMConfig(v=4, m=2, s=2, L=2)  # d = 4, P_max = 4 * 2**3 = 32


@pytest.fixture(scope="module")
def grammar():
    return sample_grammar(jax.random.key(0), CFG)


@pytest.fixture(scope="module")
def data(grammar):
    return sample_data(jax.random.key(1), grammar, 3, return_latents=True)


@pytest.fixture(scope="module")
def loglik(data):
    return EpsilonProcess(CFG).leaf_log_likelihood(data.tokens, 0.3)


# ---- integers: one check everywhere ----------------------------------------------------------
def _integer_calls(grammar, loglik):
    key = jax.random.key(0)
    return {
        "RHMConfig.L": lambda x: RHMConfig(v=4, m=2, s=2, L=x),
        "sample_data.n": lambda x: sample_data(key, grammar, x),
        "sample_indices.n": lambda x: sample_indices(key, CFG, x),
        "sample_disjoint_data.sizes": lambda x: sample_disjoint_data(key, grammar, [x, 1]),
        "bp.marginals.chunk_size": lambda x: bp.marginals(grammar, loglik, chunk_size=x),
        "bp.sample_posterior.num_samples": lambda x: bp.sample_posterior(key, grammar, loglik, x),
        "pad_to_multiple.multiple": lambda x: pad_to_multiple(5, x),
        "index_to_digits.index": lambda x: index_to_digits(CFG, [x]),
    }


INTEGER_CASES = [
    # (call, bad value, error, text the message must contain)
    ("RHMConfig.L", 2.5, TypeError, "L must be an integer, got float 2.5"),
    ("RHMConfig.L", np.bool_(True), TypeError, "L must be an integer"),
    ("sample_data.n", 0, ValueError, "n = 0 must be >= 1"),
    ("sample_data.n", 2.0, TypeError, "n must be an integer, got float 2.0"),
    ("sample_data.n", "3", TypeError, "n must be an integer, got str '3'"),
    ("sample_indices.n", -1, ValueError, "n = -1 must be >= 0"),
    ("sample_disjoint_data.sizes", -1, ValueError, "sizes[0] = -1 must be >= 0"),
    ("sample_disjoint_data.sizes", 2.7, TypeError, "sizes[0] must be an integer, got float 2.7"),
    ("bp.marginals.chunk_size", 0, ValueError, "chunk_size = 0 must be >= 1"),
    ("bp.marginals.chunk_size", 2.5, TypeError, "chunk_size must be an integer"),
    ("bp.sample_posterior.num_samples", True, TypeError, "num_samples must be an integer, got bool"),
    ("pad_to_multiple.multiple", 0, ValueError, "multiple = 0 must be >= 1"),
    ("index_to_digits.index", 2.7, TypeError, "index must be an integer, got float 2.7"),
]


@pytest.mark.parametrize("call,bad,error,text", INTEGER_CASES, ids=lambda x: repr(x)[:30])
def test_bad_integer_is_refused_naming_it(grammar, loglik, call, bad, error, text):
    with pytest.raises(error, match=None) as info:
        _integer_calls(grammar, loglik)[call](bad)
    assert text in str(info.value), str(info.value)


@pytest.mark.parametrize("call", ["sample_data.n", "sample_indices.n", "bp.marginals.chunk_size",
                                  "bp.sample_posterior.num_samples", "RHMConfig.L"])
def test_numpy_integers_are_integers(grammar, loglik, call):
    run = _integer_calls(grammar, loglik)[call]
    a, b = run(np.int64(2)), run(2)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_pad_to_multiple_refuses_negative_n():
    with pytest.raises(ValueError, match="n = -5 must be >= 0"):
        pad_to_multiple(-5, 2)
    assert pad_to_multiple(np.int64(5), 2) == 6


# ---- PRNG keys --------------------------------------------------------------------------------
def _key_calls(grammar, data, loglik):
    proc = Masking(CFG)
    x_t = proc.corrupt(jax.random.key(5), data.tokens, 0.5)
    calls = {
        "sample_grammar": lambda k: sample_grammar(k, CFG).rules,
        "sample_data": lambda k: sample_data(k, grammar, 2),
        "sample_indices": lambda k: sample_indices(k, CFG, 3),
        "sample_disjoint_data": lambda k: sample_disjoint_data(k, grammar, [2, 1]),
        "bp.sample_posterior": lambda k: bp.sample_posterior(k, grammar, loglik, 2),
        "Masking.sample_reverse": lambda k: proc.sample_reverse(
            k, x_t, 0.2, 0.5, jnp.full(x_t.shape + (CFG.v,), 1 / CFG.v)),
        "exact.one_shot_sample": lambda k: exact.one_shot_sample(k, grammar, proc, x_t, 0.5),
        "exact.reverse_sample": lambda k: exact.reverse_sample(k, grammar, proc, x_t, 0.5, 2),
    }
    for process in (EpsilonProcess(CFG), Masking(CFG), UniformSubstitution(CFG), Gaussian(CFG)):
        calls[f"{type(process).__name__}.corrupt"] = (
            lambda k, p=process: p.corrupt(k, data.tokens, 0.5))
    return calls


KEY_CALLS = ["sample_grammar", "sample_data", "sample_indices", "sample_disjoint_data",
             "bp.sample_posterior", "Masking.sample_reverse", "exact.one_shot_sample",
             "exact.reverse_sample", "EpsilonProcess.corrupt", "Masking.corrupt",
             "UniformSubstitution.corrupt", "Gaussian.corrupt"]
BAD_KEYS = [
    (3, TypeError, "key must be a PRNG key from jax.random.key(seed), got int 3"),
    ("seed", TypeError, "key must be a PRNG key from jax.random.key(seed), got str 'seed'"),
    (np.zeros(3, np.uint32), TypeError, "got uint32 array of shape (3,)"),
    (np.zeros(2, np.float32), TypeError, "got float32 array of shape (2,)"),
    (jax.random.split(jax.random.key(0)), ValueError, "key must be one key, got a key array "
                                                      "of shape (2,)"),
]


@pytest.mark.parametrize("call", KEY_CALLS)
@pytest.mark.parametrize("bad,error,text", BAD_KEYS, ids=["int", "str", "uint32x3", "float", "two"])
def test_bad_key_is_refused_naming_key(grammar, data, loglik, call, bad, error, text):
    with pytest.raises(error) as info:
        _key_calls(grammar, data, loglik)[call](bad)
    assert text in str(info.value), str(info.value)


@pytest.mark.parametrize("call", [c for c in KEY_CALLS if c != "exact.reverse_sample"])
def test_legacy_and_typed_keys_give_the_same_draws(grammar, data, loglik, call):
    run = _key_calls(grammar, data, loglik)[call]
    typed, legacy = run(jax.random.key(7)), run(jax.random.PRNGKey(7))
    for a, b in zip(jax.tree.leaves(typed), jax.tree.leaves(legacy)):
        np.testing.assert_array_equal(a, b)


# ---- integer values: checked before the int32 cast ------------------------------------------
def _value_calls(grammar, data):
    return {
        "classes": lambda x: sample_data(jax.random.key(0), grammar, 2, classes=np.array(x)),
        "digits_to_index": lambda x: digits_to_index(CFG, np.array(x)),
        "data_from_digits": lambda x: data_from_digits(grammar, np.array(x)),
        "index_from_data": lambda x: index_from_data(grammar, x),
        "digits_from_tokens": lambda x: digits_from_tokens(grammar, x),
    }


VALUE_CASES = [
    ("classes", [2**32 + 3, 0], ValueError, "got values in [0, 4294967299]"),
    ("classes", [-1, 0], ValueError, "classes must lie in [0, n_classes=4)"),
    ("digits_to_index", [[9, 0, 0, 0]], ValueError, "digits[0, 0] = 9 must lie in [0, 4)"),
    ("digits_to_index", [[0, 0, 2, 0]], ValueError, "digits[0, 2] = 2 must lie in [0, 2)"),
    ("digits_to_index", [[0, 0, 0, 0, 0]], ValueError, "digits has shape (1, 5), expected (n, 1 + N)"),
    ("data_from_digits", [[9, 5, 0, 0]], ValueError, "digits[0, 0] = 9 must lie in [0, 4)"),
    ("data_from_digits", [[0.5, 0, 0, 0]], TypeError, "digits must have an integer dtype"),
    ("index_from_data", np.zeros((2, 4)) + 0.3, TypeError, "tokens must have an integer dtype, got float64"),
    ("digits_from_tokens", np.full((1, 4), 2**32 + 1), ValueError, "tokens[0, 0] = 4294967297 must lie in [0, 4)"),
    ("digits_from_tokens", np.zeros((1, 5), np.int32), ValueError, "tokens has shape (1, 5), expected (n, d)"),
]


@pytest.mark.parametrize("call,bad,error,text", VALUE_CASES, ids=lambda x: repr(x)[:25])
def test_out_of_range_integers_are_refused_not_wrapped(grammar, data, call, bad, error, text):
    with pytest.raises(error) as info:
        _value_calls(grammar, data)[call](bad)
    assert text in str(info.value), str(info.value)


def test_valid_indices_round_trip(grammar):
    digits = index_to_digits(CFG, [0, 17, CFG.P_max - 1])
    assert digits_to_index(CFG, digits) == [0, 17, 31]
    assert index_from_data(grammar, data_from_digits(grammar, digits).tokens) == [0, 17, 31]


# ---- hand-built grammars ---------------------------------------------------------------------
def _bad_grammars(grammar):
    rules = grammar.rules
    return {
        "all zeros": (Grammar(tuple(jnp.zeros_like(r) for r in rules), CFG),
                      ValueError, "grammar.rules[0] is ambiguous: the tuple (0, 0)"),
        "symbols +99": (Grammar(tuple(r + 99 for r in rules), CFG),
                        ValueError, "grammar.rules[0] has symbols in [99, 102], outside [0, v=4)"),
        "wrong m": (Grammar(tuple(r[:, :1] for r in rules), CFG),
                    ValueError, "grammar.rules[0] has shape (4, 1, 2), expected (n_l, m, s) = (4, 2, 2)"),
        "one level": (Grammar(rules[:1], CFG), ValueError, "grammar.rules must hold L = 2 arrays"),
        "float rules": (Grammar(tuple(r.astype(jnp.float32) for r in rules), CFG),
                        TypeError, "grammar.rules[0] has dtype float32"),
        "not a grammar": ("rules", TypeError, "grammar must be a Grammar, got str"),
    }


GRAMMAR_CALLS = {
    "bp.marginals": lambda g, ll, x: bp.marginals(g, ll),
    "bp.upward": lambda g, ll, x: bp.upward(g, ll),
    "bp.sample_posterior": lambda g, ll, x: bp.sample_posterior(jax.random.key(0), g, ll),
    "sample_data": lambda g, ll, x: sample_data(jax.random.key(0), g, 2),
    "data_from_digits": lambda g, ll, x: data_from_digits(g, x.digits),
    "digits_from_tokens": lambda g, ll, x: digits_from_tokens(g, x.tokens),
}


@pytest.mark.parametrize("call", sorted(GRAMMAR_CALLS))
@pytest.mark.parametrize("which", ["all zeros", "symbols +99", "wrong m", "one level",
                                   "float rules", "not a grammar"])
def test_hand_built_bad_grammar_is_refused(grammar, data, loglik, call, which):
    bad, error, text = _bad_grammars(grammar)[which]
    with pytest.raises(error) as info:
        GRAMMAR_CALLS[call](bad, loglik, data)
    assert text in str(info.value), str(info.value)


def test_a_valid_hand_built_grammar_is_accepted(grammar, loglik):
    rebuilt = Grammar(tuple(jnp.asarray(np.asarray(r)) for r in grammar.rules), CFG)
    np.testing.assert_allclose(bp.marginals(rebuilt, loglik).log_evidence,
                               bp.marginals(grammar, loglik).log_evidence, rtol=1e-6)


# ---- times, flags, schedules ----------------------------------------------------------------
@pytest.mark.parametrize("process", [EpsilonProcess(CFG), Masking(CFG), Gaussian(CFG)], ids=repr)
def test_time_as_a_list_equals_the_array(process, data):
    obs = process.corrupt(jax.random.key(2), data.tokens, jnp.array([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(process.leaf_log_likelihood(obs, [0.1, 0.2, 0.3]),
                                  process.leaf_log_likelihood(obs, np.array([0.1, 0.2, 0.3])))


@pytest.mark.parametrize("bad,error,text", [
    (None, TypeError, "t must be a real number or array, got None"),
    ("0.1", TypeError, "t must be a real number or array, got str '0.1'"),
    (True, TypeError, "t must be a real number or array, got bool True"),
    ([0.1, "a", 0.3], TypeError, "t must be a real number or array"),
    ([0.1, 1.5, 0.3], ValueError, "t = 1.5 must lie in [0, 1]"),
], ids=repr)
def test_bad_time_is_refused_naming_t(data, bad, error, text):
    with pytest.raises(error) as info:
        EpsilonProcess(CFG).leaf_log_likelihood(data.tokens, bad)
    assert text in str(info.value), str(info.value)


@pytest.mark.parametrize("bad,text", [("no", "return_latents must be True or False, got str 'no'"),
                                      (1, "return_latents must be True or False, got int 1")])
def test_flags_must_be_bools(grammar, bad, text):
    with pytest.raises(TypeError) as info:
        sample_data(jax.random.key(0), grammar, 2, return_latents=bad)
    assert text in str(info.value)


@pytest.mark.parametrize("offset,text", [(1e20, "offset = 1e+20 must be <= 1e+06"),
                                         (-0.1, "offset = -0.1 must be finite and >= 0")])
def test_cosine_refuses_offsets_that_break_it(offset, text):
    with pytest.raises(ValueError) as info:
        Cosine(offset=offset)
    assert text in str(info.value)


def test_cosine_with_the_largest_offset_is_finite_and_tends_to_one_minus_t_squared():
    t = np.linspace(0, 1, 11)
    alpha_bar = np.asarray(Cosine(offset=1e6).alpha_bar(t), np.float64)
    np.testing.assert_allclose(alpha_bar, (1 - t) ** 2, atol=2e-6)
    assert alpha_bar[0] == 1.0 and alpha_bar[-1] == 0.0


# ---- sizes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("L,text", [(64, "L = 64 gives d = s**L = 2**64 tokens per datum"),
                                    (40, "(4.4 TB as int32 for one datum)"),
                                    (31, "L must be <= 30 for s = 2"),
                                    (10**9, "L must be <= 30 for s = 2")])
def test_config_whose_datum_cannot_exist_is_refused(L, text):
    with pytest.raises(ValueError) as info:
        RHMConfig(v=4, m=2, s=2, L=L)
    assert text in str(info.value)


def test_allocation_that_cannot_fit_is_refused_with_its_size(grammar, monkeypatch):
    import rhm_jax.validation as checks

    monkeypatch.setattr(checks, "memory_limit", lambda *a, **k: (1000, "a 1 kB test device"))
    with pytest.raises(ValueError) as info:
        sample_data(jax.random.key(0), grammar, 100)
    # 100 data x 4 bytes x (2 x (1 + 3) digits and choices + 7 nodes) = 6000 bytes
    assert "sample_data(n=100) at d = 2**2 tokens would allocate about 6.0 kB, more than a 1 kB" \
        in str(info.value)
    sample_data(jax.random.key(0), grammar, 10)  # 600 bytes fit


# ---- non-finite evidence: refused eagerly, visible under jit --------------------------------
BP_CALLS = {
    "marginals": lambda g, ll: bp.marginals(g, ll),
    "upward": lambda g, ll: bp.upward(g, ll),
    "sample_posterior": lambda g, ll: bp.sample_posterior(jax.random.key(3), g, ll, 2),
}


@pytest.mark.parametrize("call", sorted(BP_CALLS))
@pytest.mark.parametrize("where,value,text", [
    ((0, 0, 0), jnp.nan, "leaf_log_likelihood[0, 0, 0] = nan"),
    ((2, 3, 1), jnp.nan, "leaf_log_likelihood[2, 3, 1] = nan"),
    ((1, 2, 0), jnp.inf, "leaf_log_likelihood[1, 2, 0] = +inf"),
], ids=["nan-first", "nan-last-datum", "+inf"])
def test_concrete_nan_or_plus_inf_evidence_is_refused(grammar, loglik, call, where, value, text):
    with pytest.raises(ValueError) as info:
        BP_CALLS[call](grammar, loglik.at[where].set(value))
    assert text in str(info.value), str(info.value)
    assert "must be finite or -inf" in str(info.value)


@pytest.mark.parametrize("call", sorted(BP_CALLS))
def test_overflowing_finite_evidence_is_refused(grammar, loglik, call):
    huge = loglik.at[1].add(3e38)  # every token's max is 3e38: the sum overflows
    with pytest.raises(ValueError, match=r"leaf_log_likelihood\[1\]: the per-token maxima sum"):
        BP_CALLS[call](grammar, huge)


def test_minus_inf_evidence_stays_legal(grammar, loglik):
    impossible = loglik.at[1].set(-jnp.inf)
    result = bp.marginals(grammar, impossible)
    assert result.log_evidence[1] == -jnp.inf
    assert all(np.isfinite(np.asarray(mu)).all() for mu in result.marginals)


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf], ids=["nan", "+inf"])
def test_under_jit_bad_evidence_is_nan_in_that_datum_only(grammar, loglik, value):
    bad = loglik.at[1, 2, 3].set(value)
    clean = bp.marginals(grammar, loglik, messages=True)
    got = jax.jit(lambda x: bp.marginals(grammar, x, messages=True))(bad)
    for mine, ref in zip(jax.tree.leaves(got), jax.tree.leaves(clean)):
        assert np.isnan(np.asarray(mine[1])).all()  # the poisoned datum: NaN everywhere
        np.testing.assert_allclose(mine[np.array([0, 2])], ref[np.array([0, 2])], rtol=1e-6, atol=1e-7)
    up = jax.jit(lambda x: bp.upward(grammar, x))(bad)
    assert np.isnan(np.asarray(up.class_posterior[1])).all() and np.isnan(up.log_evidence[1])
    assert np.isfinite(np.asarray(up.log_evidence[np.array([0, 2])])).all()
    draws = jax.jit(lambda x: bp.sample_posterior(jax.random.key(3), grammar, x, 2))(bad)
    ref = bp.sample_posterior(jax.random.key(3), grammar, loglik, 2)
    for mine, other in zip(jax.tree.leaves(draws), jax.tree.leaves(ref)):
        assert (np.asarray(mine[1]) == -1).all()  # integers cannot hold NaN: -1
        np.testing.assert_array_equal(mine[np.array([0, 2])], other[np.array([0, 2])])


def test_huge_gaussian_observation_gives_finite_evidence_and_the_right_posterior(grammar, data):
    proc = Gaussian(CFG)
    observation = 1e26 * jax.nn.one_hot(data.tokens, CFG.v)  # far beyond any noise
    result = bp.marginals(grammar, proc.leaf_log_likelihood(observation, 0.5))
    assert np.isfinite(np.asarray(result.log_evidence)).all()
    assert (np.asarray(result.log_evidence) <= 0).all()
    np.testing.assert_allclose(result.marginals[-1], jax.nn.one_hot(data.tokens, CFG.v), atol=1e-6)
    np.testing.assert_allclose(result.marginals[0][:, 0], jax.nn.one_hot(data.classes, 4), atol=1e-6)


# ---- command line: one line, exit code 2, before any computation ---------------------------
@pytest.fixture
def no_computation(monkeypatch):
    """Any sampling or sweep fails the test: errors must come before them."""
    import rhm_jax.experiments as experiments

    def forbidden(*args, **kwargs):
        raise AssertionError("computation started before the error")

    monkeypatch.setattr(experiments, "forward_backward", forbidden)
    monkeypatch.setattr(experiments, "sample_grammars", forbidden)
    monkeypatch.setattr("rhm_jax.sample_grammar", forbidden)


CLI_CASES = [
    (["phase", "--times", "0"], "--times = '0' must be a count N >= 1"),
    (["phase", "--times", "0.6:1.2:41"], "--times = '0.6:1.2:41' must be a grid START:STOP:N"),
    (["phase", "--times", "0.5,0.2"], "--times = '0.5,0.2' must be a comma list of increasing"),
    (["phase", "--n-data", "0"], "--n-data = 0 must be an integer >= 1"),
    (["phase", "--max-batch", "0"], "--max-batch = 0 must be an integer >= 1"),
    (["phase", "--n-grammars", "2.5"], "--n-grammars = '2.5' must be an integer >= 1"),
    (["phase", "--grammars", "2.5"], "--n-grammars = '2.5' must be an integer >= 1"),  # alias
    (["phase", "--L", ",,,"], "--L = ',,,' must be a comma-separated list of distinct integers"),
    (["phase", "--L", "2,2"], "--L = '2,2' must be a comma-separated list of distinct"),
    (["phase", "--L", "abc"], "--L = 'abc' must be"),
    (["phase", "--L", "40"], "--L 40: L = 40 gives d = s**L = 2**40 tokens"),
    (["phase", "--process", ""], "--process = '' must be a comma-separated list"),
    (["phase", "--processes", "epsilon,nonsense"], "('nonsense' is not one)"),
    (["phase", "--seed", "1180591620717411303424"], "--seed = 1180591620717411303424 must be an "
                                                   "integer in [0, 4294967295]"),
    (["phase", "--v", "2", "--m", "8"], "--v 2 --m 8 --s 2 --L 3: max(n_classes, v) * m"),
    (["phase", "--devices", "0"], "--devices = 0 must be an integer >= 1"),
    (["sample", "--n-data", "0"], "--n-data = 0 must be an integer >= 1"),
    (["sample", "--n", "0"], "--n-data = 0 must be an integer >= 1"),  # the older spelling
    (["sample", "--L", "31", "--v", "4", "--m", "2"], "L must be <= 30 for s = 2"),
]


def _expect_cli_error(argv, text, capsys):
    from rhm_jax.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line: no usage block, no traceback
    assert lines[0].startswith(f"rhm-jax {argv[0]}: error: ") and text in lines[0], lines[0]


@pytest.mark.parametrize("argv,text", CLI_CASES, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_bad_flag_is_one_line_before_any_computation(argv, text, tmp_path, capsys, no_computation):
    out = tmp_path / "out"
    _expect_cli_error(argv + ["--out", str(out)], text, capsys)
    assert not out.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["phase", "sample"])
@pytest.mark.parametrize("kind,text", [
    ("file", "is an existing file, not a folder"),
    ("under-file", "is a file, so no folder can be made under it"),
    ("foreign", "is a non-empty folder that is not an rhm-jax run"),
    ("proc", "/proc"),  # "cannot create a folder in /proc" (root) or "/proc is not writable"
])
def test_bad_output_folder_is_refused_before_any_computation(command, kind, text, tmp_path,
                                                             capsys, no_computation):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.tex").write_text("precious")
    out = {"file": tmp_path / "a_file", "under-file": tmp_path / "a_file" / "sub",
           "foreign": tmp_path / "foreign", "proc": "/proc/rhm-jax-test"}[kind]
    _expect_cli_error([command, "--quick", "--out", str(out)] if command == "phase"
                      else [command, "--out", str(out)], text, capsys)
    assert (tmp_path / "foreign" / "thesis.tex").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["a_file", "foreign"]  # no staging left behind


def test_a_call_too_large_for_memory_is_refused_before_any_computation(tmp_path, capsys,
                                                                      no_computation,
                                                                      monkeypatch):
    import rhm_jax.validation as checks

    monkeypatch.setattr(checks, "memory_limit", lambda *a, **k: (25 * 10**9, "25 GB here"))
    _expect_cli_error(["phase", "--L", "20", "--out", str(tmp_path / "o")],
                      "one compiled call of 2037 rows", capsys)
    _expect_cli_error(["sample", "--L", "30", "--v", "4", "--m", "2", "--n-data", "1", "--out",
                       str(tmp_path / "s")], "would allocate about", capsys)


@pytest.mark.parametrize("text,times", [
    ("5", [0.2, 0.4, 0.6, 0.8, 1.0]),
    ("4", [0.25, 0.5, 0.75, 1.0]),
    ("0.6:0.8:5", [0.6, 0.65, 0.7, 0.75, 0.8]),
    ("0:1:21", [round(0.05 * k, 12) for k in range(21)]),
    ("0.1, 0.15,0.3", [0.1, 0.15, 0.3]),
    ("0.5", [0.5]),
])
def test_times_flag_grid_and_list(text, times):
    from rhm_jax.cli.flags import times_flag

    grid = times_flag(text)
    assert grid.values == times and grid.given == text.strip()
    assert 0.15000000000000002 not in times_flag("0:1:21").values


# ---- run folders: one run per folder ---------------------------------------------------------
def _fake_sweep(monkeypatch, fail_at=None):
    """Replace the sweep by one returning constant P_l (no compilation), so the folder
    handling of ``rhm-jax phase`` is tested alone; ``fail_at`` makes call N raise."""
    import rhm_jax.experiments as experiments

    calls = []

    def forward_backward(key, grammars, process, times, n_data, **kwargs):
        calls.append(type(process).__name__)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt  # as a user's Ctrl-C in the middle of the run
        L = process.config.L
        fields = {}
        for name in experiments.ForwardBackwardResult._fields:
            fields[name] = (np.asarray(times) if name == "times" else int(n_data)
                            if name == "n_data" else np.full((1, len(times), L + 1), 0.5))
        return experiments.ForwardBackwardResult(**fields)

    monkeypatch.setattr(experiments, "forward_backward", forward_backward)
    return calls


def _phase(out, *extra):
    from rhm_jax.cli import main

    return main(["phase", "--quick", "--no-progress", "--L", "2", "--n-data", "4",
                 "--out", str(out), *extra])


def test_rerun_replaces_the_whole_folder(tmp_path, monkeypatch):
    _fake_sweep(monkeypatch)
    out = tmp_path / "run"
    assert _phase(out, "--processes", "epsilon,uniform", "--seed", "1") == 0
    assert (out / "phase_class.png").exists()
    assert _phase(out, "--process", "masking", "--seed", "2", "--times", "0.6:0.8:5",
                  "--overwrite") == 0
    names = sorted(os.listdir(out))
    assert names == ["finite_size.json", "meta.json", "phase_processes.png", "results.jsonl"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] is True and meta["command"] == "phase"
    assert meta["config"]["seed"] == 2 and meta["config"]["processes"] == ["masking"]
    assert meta["config"]["times"] == [0.6, 0.65, 0.7, 0.75, 0.8]
    assert meta["config"]["times_given"] == "0.6:0.8:5"
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    assert {r["process"] for r in rows} == {"masking"} and {r["seed"] for r in rows} == {2}
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no staging or old folder left


def test_interrupted_rerun_leaves_the_previous_run_untouched(tmp_path, monkeypatch):
    _fake_sweep(monkeypatch)
    out = tmp_path / "run"
    assert _phase(out, "--processes", "epsilon,uniform", "--seed", "1") == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    calls = _fake_sweep(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        _phase(out, "--processes", "epsilon,uniform", "--seed", "2", "--overwrite")
    assert len(calls) == 2
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_run_folder_api(tmp_path):
    from rhm_jax.io import RunFolder, is_run_folder, write_json

    target = tmp_path / "r"
    with RunFolder(target, command="demo") as folder:
        write_json(folder.file("a.json"), {"x": 1})
        assert not target.exists()  # nothing visible until the run completes
        folder.commit({"seed": 0})
    assert is_run_folder(target) and sorted(os.listdir(target)) == ["a.json", "meta.json"]
    with pytest.raises(RuntimeError):
        with RunFolder(target, command="demo", overwrite=True) as folder:
            write_json(folder.file("b.json"), {"x": 2})
            raise RuntimeError("crash")
    assert sorted(os.listdir(target)) == ["a.json", "meta.json"]
    assert sorted(os.listdir(tmp_path)) == ["r"]


def test_a_run_folder_is_replaced_only_with_overwrite_and_only_by_its_own_command(
        tmp_path, capsys, monkeypatch):
    from rhm_jax.io import RunFolder, write_json

    _fake_sweep(monkeypatch)
    out = tmp_path / "run"
    assert _phase(out, "--process", "epsilon") == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    _expect_cli_error(["phase", "--quick", "--out", str(out)], "add --overwrite", capsys)
    _expect_cli_error(["sample", "--out", str(out), "--overwrite"],
                      "holds an rhm-jax phase run", capsys)
    _expect_cli_error(["chi", "--quick", "--out", str(out), "--overwrite"],
                      "holds an rhm-jax phase run", capsys)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    train_run = tmp_path / "train_run"  # a training run is never replaced by another command
    train_run.mkdir()
    write_json(train_run / "meta.json", {"command": "train"})
    (train_run / "metrics.jsonl").write_text("{}\n")
    _expect_cli_error(["phase", "--quick", "--out", str(train_run), "--overwrite"],
                      "holds an rhm-jax train run", capsys)
    with pytest.raises(ValueError, match="holds an rhm-jax train run"):
        RunFolder(train_run, command="sample", overwrite=True)
    assert (train_run / "metrics.jsonl").exists()


def test_staging_folders_of_killed_runs_are_removed(tmp_path):
    import subprocess
    import sys

    from rhm_jax.io import RunFolder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".run.partial-{dead}-abc"
    stale.mkdir()
    (stale / "results.jsonl").write_text("half")
    mine = tmp_path / f".run.partial-{os.getpid()}-live"  # a live process's: kept
    mine.mkdir()
    with RunFolder(tmp_path / "run", command="demo") as folder:
        folder.commit({})
    assert not stale.exists() and mine.exists()
