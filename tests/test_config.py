"""RHMConfig: validation messages, exact derived quantities, hashability (``docs/theory/model.md``)."""

import dataclasses
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax import RHMConfig

VALID = dict(v=4, m=2, s=2, L=3)
PARAMS = ["v", "m", "s", "L", "n_classes"]


NON_INTEGERS = [2.0, 4.5, True, False, "4", None, np.float32(3.0), [4]]


# n_classes=None is the documented default (n_classes = v), so it is not a bad value there.
@pytest.mark.parametrize("name,bad", [(name, bad) for name in PARAMS for bad in NON_INTEGERS
                                      if not (name == "n_classes" and bad is None)], ids=repr)
def test_non_integer_parameter_raises_type_error_naming_it(name, bad):
    kwargs = {**VALID, name: bad}
    with pytest.raises(TypeError) as info:
        RHMConfig(**kwargs)
    msg = str(info.value)
    assert msg.startswith(f"{name} must be an integer"), msg
    assert repr(bad) in msg, msg


@pytest.mark.parametrize("name,bad,minimum", [
    ("v", 1, 2), ("v", 0, 2), ("v", -3, 2),
    ("m", 0, 1), ("m", -1, 1),
    ("s", 1, 2), ("s", 0, 2),
    ("L", 0, 1), ("L", -2, 1),
    ("n_classes", 0, 1), ("n_classes", -1, 1),
])
def test_too_small_parameter_raises_naming_value_and_bound(name, bad, minimum):
    with pytest.raises(ValueError) as info:
        RHMConfig(**{**VALID, name: bad})
    msg = str(info.value)
    assert f"{name} = {bad}" in msg, msg
    assert f">= {minimum}" in msg, msg


@pytest.mark.parametrize("kwargs", [
    dict(v=2, m=3, s=2, L=1),               # 2*3 = 6 > 4
    dict(v=4, m=5, s=2, L=2),               # 4*5 = 20 > 16
    dict(v=3, m=4, s=2, L=1, n_classes=2),  # max(2, 3)*4 = 12 > 9: v dominates
    dict(v=3, m=2, s=2, L=2, n_classes=5),  # n_classes > v: 5*2 = 10 > 9
    dict(v=2, m=1, s=2, L=2, n_classes=5),  # 5*1 = 5 > 4
    dict(v=2, m=3, s=3, L=1, n_classes=3),  # 3*3 = 9 > 8
])
def test_infeasible_rule_count_raises_with_the_numbers(kwargs):
    cfg_v, m, s = kwargs["v"], kwargs["m"], kwargs["s"]
    n_max = max(kwargs.get("n_classes", cfg_v), cfg_v)
    with pytest.raises(ValueError) as info:
        RHMConfig(**kwargs)
    msg = str(info.value)
    assert "max(n_classes, v) * m" in msg, msg
    assert f"= {n_max * m}" in msg, msg
    assert f"v**s = {cfg_v}**{s} = {cfg_v ** s}" in msg, msg


@pytest.mark.parametrize("kwargs", [
    dict(v=3, m=3, s=2, L=1),               # 9 == 9: full occupancy is allowed
    dict(v=3, m=2, s=2, L=1, n_classes=4),  # 8 <= 9 with n_classes > v
    dict(v=2, m=2, s=2, L=1),               # 4 == 4
    dict(v=2, m=4, s=3, L=1),               # 8 == 8
])
def test_feasibility_boundary_is_accepted(kwargs):
    cfg = RHMConfig(**kwargs)
    assert max(cfg.n_classes, cfg.v) * cfg.m <= cfg.v**cfg.s


def test_n_classes_defaults_to_v_and_numpy_ints_are_normalised():
    assert RHMConfig(v=5, m=2, s=2, L=1).n_classes == 5
    cfg = RHMConfig(v=np.int64(4), m=np.int32(2), s=np.int16(2), L=np.int8(3),
                    n_classes=np.uint8(3))
    for name in PARAMS:
        assert type(getattr(cfg, name)) is int, name
    assert cfg == RHMConfig(v=4, m=2, s=2, L=3, n_classes=3)
    assert hash(cfg) == hash(RHMConfig(v=4, m=2, s=2, L=3, n_classes=3))


def _internal_nodes_by_counting(s, L):
    return sum(s**level for level in range(L))


@pytest.mark.parametrize("kwargs", [
    dict(v=4, m=2, s=2, L=3),
    dict(v=3, m=3, s=3, L=2, n_classes=2),
    dict(v=8, m=4, s=2, L=5, n_classes=3),
    dict(v=4, m=2, s=2, L=7),                # P_max = 4 * 2**127
    dict(v=5, m=7, s=3, L=5, n_classes=4),   # P_max = 4 * 7**121
    dict(v=256, m=8, s=4, L=3),
])
def test_derived_quantities_are_exact(kwargs):
    cfg = RHMConfig(**kwargs)
    v, m, s, L = kwargs["v"], kwargs["m"], kwargs["s"], kwargs["L"]
    n_c = kwargs.get("n_classes", v)
    assert cfg.d == s**L
    assert cfg.f == pytest.approx(float(Fraction(m, v ** (s - 1))), rel=1e-15)
    nodes = _internal_nodes_by_counting(s, L)
    assert cfg.num_internal_nodes == nodes
    exponent = Fraction(s**L - 1, s - 1)
    assert exponent.denominator == 1 and exponent.numerator == nodes
    P_max = cfg.P_max
    assert type(P_max) is int
    assert P_max == n_c * m**nodes
    # Count the data another way: one class times m choices at every internal node.
    count = n_c
    for _ in range(nodes):
        count *= m
    assert P_max == count
    assert cfg.P_star == n_c * m**L
    assert cfg.log_P_max == pytest.approx(math.log(P_max), rel=1e-12)  # math.log takes big ints
    assert [cfg.num_symbols(level) for level in range(L + 1)] == [n_c] + [v] * L
    assert [cfg.num_nodes(level) for level in range(L + 1)] == [s**level for level in range(L + 1)]


def test_deep_config_P_max_exceeds_int64():
    cfg = RHMConfig(v=4, m=2, s=2, L=7)
    assert cfg.P_max == 4 * 2**127 == 2**129
    assert cfg.P_max > 2**63
    assert cfg.log_P_max == pytest.approx(129 * math.log(2), rel=1e-14)


def test_log_P_max_finite_where_P_max_is_astronomical():
    cfg = RHMConfig(v=64, m=16, s=2, L=20)
    expected = math.log(64) + (2**20 - 1) * math.log(16)
    assert math.isfinite(cfg.log_P_max)
    assert cfg.log_P_max == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("level", [-1, 4])
def test_level_out_of_range_raises(level):
    cfg = RHMConfig(**VALID)
    with pytest.raises(ValueError, match=rf"level = {level} must be in \[0, L=3\]"):
        cfg.num_symbols(level)
    with pytest.raises(ValueError, match=rf"level = {level} must be in \[0, L=3\]"):
        cfg.num_nodes(level)


def test_frozen():
    cfg = RHMConfig(**VALID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.v = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_classes = 2
    assert cfg.v == 4 and cfg.n_classes == 4


def test_hashable_and_usable_as_jit_static_argument():
    a = RHMConfig(**VALID)
    b = RHMConfig(v=4, m=2, s=2, L=3, n_classes=4)
    c = RHMConfig(v=4, m=2, s=2, L=2)
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2

    traces = []

    def f(x, config):
        traces.append(config)
        return x * config.d + config.P_max

    jf = jax.jit(f, static_argnames="config")
    x = jnp.ones(3, jnp.int32)
    np.testing.assert_array_equal(jf(x, a), np.full(3, 8 + 4 * 2**7))
    np.testing.assert_array_equal(jf(x, b), np.full(3, 8 + 4 * 2**7))
    assert len(traces) == 1  # an equal config hits the cache
    np.testing.assert_array_equal(jf(x, c), np.full(3, 4 + 4 * 2**3))
    assert len(traces) == 2  # a different config retraces
