"""The public API refuses numbers it cannot stand behind and says why in one line.

Each test is one case that the library used to get wrong: a value wrapped by an int32
cast, a fit that returned a number where it has none (the edge of its search grid, widths
that do not shrink), a raw error from deep inside (``ZeroDivisionError``,
``AttributeError``, a JAX key error), an allocation that cannot fit started anyway, an
option silently ignored, a NaN written to a JSON row.
"""

import json
import math

import jax
import numpy as np
import pytest

from rhm_jax import Masking, RHMConfig, parse, sample_data, sample_grammar

CFG = RHMConfig(v=8, m=2, s=2, L=3)  # d = 8


@pytest.fixture(scope="module")
def grammar():
    return sample_grammar(jax.random.key(0), CFG)


@pytest.fixture(scope="module")
def tokens(grammar):
    return np.asarray(sample_data(jax.random.key(1), grammar, 4).tokens)


@pytest.fixture
def tiny_memory(monkeypatch):
    """A device with 1 kB of memory: every sizeable call must be refused with its size."""
    import rhm_jax.validation as validation

    monkeypatch.setattr(validation, "memory_limit", lambda *a, **k: (1000, "a 1 kB test device"))


# ---- 1. tokens are range-checked before the int32 cast ---------------------------------------
@pytest.mark.parametrize("value", [2**32 + 3, 2**31, -(2**31) - 1])
def test_parse_refuses_int64_tokens_that_int32_would_wrap(grammar, tokens, value):
    wide = tokens.astype(np.int64)
    wide[1, 2] = value
    with pytest.raises(ValueError, match=rf"tokens\[1, 2\] = {value} must lie in \[-2147483648, "):
        parse(grammar, wide)
    assert bool(np.all(parse(grammar, tokens.astype(np.int64)).valid[0]))


def test_parse_accepts_every_int32_value_as_before(grammar, tokens):
    wide = tokens.astype(np.int64)
    wide[0, 0] = -(2**31)  # the smallest int32: an invalid leaf, not an error
    assert not bool(parse(grammar, wide).valid[0][0, 0])
    assert bool(np.all(parse(grammar, tokens.astype(np.uint8)).valid[0]))


# ---- 4. parse: lists and empty batches ---------------------------------------------------------
def test_parse_reads_lists_of_ints_like_numpy(grammar, tokens):
    from_list = parse(grammar, tokens.tolist())
    for got, want in zip(jax.tree.leaves(from_list), jax.tree.leaves(parse(grammar, tokens))):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="tokens must be a rectangular array"):
        parse(grammar, [[0] * 8, [0] * 7])
    with pytest.raises(TypeError, match="tokens must have an integer dtype, got float"):
        parse(grammar, [[0.5] * 8])


def test_parse_of_an_empty_batch_is_empty(grammar):
    tree = parse(grammar, np.zeros((0, CFG.d), np.int32))
    assert [x.shape for x in tree.valid] == [(0, 1), (0, 2), (0, 4), (0, 8)]
    assert [x.shape for x in tree.choices] == [(0, 1), (0, 2), (0, 4)]
