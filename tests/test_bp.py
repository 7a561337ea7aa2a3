import jax
import jax.numpy as jnp
import numpy as np
import pytest
import chex

from rhm_jax import RHMConfig, bp, sample_data, sample_grammar, grammar_from_rules
from rhm_jax.sampling import digits_to_index

from oracle import brute_force_posterior

TINY = [
    RHMConfig(v=3, m=2, s=2, L=2, n_classes=2),
    RHMConfig(v=4, m=2, s=2, L=3),
    RHMConfig(v=4, m=3, s=2, L=2, n_classes=5),
    RHMConfig(v=3, m=3, s=3, L=2, n_classes=2),
    RHMConfig(v=2, m=2, s=3, L=2),
]


def _random_loglik(key, cfg, n, scale=2.0):
    return scale * jax.random.normal(key, (n, cfg.d, cfg.v))


def _noisy_onehot_loglik(key, grammar, n, eps):
    x = sample_data(key, grammar, n)
    lik = (1 - eps) * jax.nn.one_hot(x.tokens, grammar.config.v) + eps / grammar.config.v
    return jnp.log(lik), x


@pytest.mark.parametrize("cfg", TINY, ids=str)
def test_marginals_match_brute_force(cfg):
    g = sample_grammar(jax.random.key(1), cfg)
    k1, k2 = jax.random.split(jax.random.key(2))
    loglik = jnp.concatenate([_random_loglik(k1, cfg, 3),
                              _noisy_onehot_loglik(k2, g, 3, 0.3)[0]])
    result = bp.marginals(g, loglik)
    log_ev, marg, _, _ = brute_force_posterior(g, loglik)
    np.testing.assert_allclose(result.log_evidence, log_ev, rtol=1e-5, atol=1e-5)
    assert len(result.marginals) == cfg.L + 1
    for level in range(cfg.L + 1):
        assert result.marginals[level].shape == (6, cfg.s**level, cfg.num_symbols(level))
        np.testing.assert_allclose(result.marginals[level], marg[level], atol=1e-5)
    up = bp.upward(g, loglik)
    np.testing.assert_allclose(up.class_posterior, marg[0][:, 0], atol=1e-5)
    np.testing.assert_allclose(up.log_evidence, log_ev, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", TINY[:3], ids=str)
def test_marginals_match_brute_force_x64(cfg):
    with jax.enable_x64(True):
        g = sample_grammar(jax.random.key(1), cfg)
        loglik = _random_loglik(jax.random.key(3), cfg, 4).astype(jnp.float64)
        result = bp.marginals(g, loglik)
        assert result.marginals[-1].dtype == jnp.float64
        log_ev, marg, _, _ = brute_force_posterior(g, loglik)
        np.testing.assert_allclose(result.log_evidence, log_ev, rtol=1e-10, atol=1e-10)
        for level in range(cfg.L + 1):
            np.testing.assert_allclose(result.marginals[level], marg[level], atol=1e-10)


def test_x32_matches_x64():
    cfg = RHMConfig(v=8, m=3, s=2, L=5)
    g = sample_grammar(jax.random.key(0), cfg)
    loglik64 = np.asarray(_random_loglik(jax.random.key(5), cfg, 8), np.float64)
    r32 = bp.marginals(g, jnp.asarray(loglik64, jnp.float32))
    with jax.enable_x64(True):
        r64 = bp.marginals(g, jnp.asarray(loglik64))
        m64 = [np.asarray(x) for x in r64.marginals]
        e64 = np.asarray(r64.log_evidence)
    for a, b in zip(r32.marginals, m64):
        np.testing.assert_allclose(a, b, atol=2e-5)
    np.testing.assert_allclose(r32.log_evidence, e64, rtol=1e-5)


def test_posterior_samples_match_enumerated_posterior():
    cfg = RHMConfig(v=3, m=2, s=2, L=2, n_classes=2)  # P_max = 16 trees
    g = sample_grammar(jax.random.key(4), cfg)
    loglik = _random_loglik(jax.random.key(6), cfg, 2, scale=1.0)
    _, _, posterior, tokens = brute_force_posterior(g, loglik)
    num = 40_000
    draws = bp.sample_posterior(jax.random.key(7), g, loglik, num_samples=num)
    assert draws.tokens.shape == (2, num, cfg.d)
    for row in range(2):
        idx = np.asarray(digits_to_index(cfg, np.asarray(draws.digits[row])))
        counts = np.bincount(idx, minlength=cfg.P_max)
        # Data index i has tokens `tokens[i]` (enumeration order = index order).
        np.testing.assert_array_equal(
            np.asarray(draws.tokens[row, :50]), tokens[idx[:50]])
        p = posterior[row]
        se = np.sqrt(p * (1 - p) / num)
        assert np.all(np.abs(counts / num - p) <= 5 * se + 1e-12), (counts / num, p)


def test_zero_noise_grammatical_and_ungrammatical():
    cfg = RHMConfig(v=8, m=2, s=2, L=4)
    g = sample_grammar(jax.random.key(0), cfg)
    x = sample_data(jax.random.key(1), g, 4, return_latents=True)
    loglik = jnp.where(jax.nn.one_hot(x.tokens, cfg.v) > 0, 0.0, -jnp.inf)
    result = bp.marginals(g, loglik)
    for level in range(cfg.L + 1):
        np.testing.assert_allclose(
            result.marginals[level], jax.nn.one_hot(x.latents[level], cfg.num_symbols(level)),
            atol=1e-6)
    np.testing.assert_allclose(result.log_evidence, -cfg.log_P_max, rtol=1e-5)
    draws = bp.sample_posterior(jax.random.key(2), g, loglik, num_samples=3)
    np.testing.assert_array_equal(draws.tokens, np.repeat(x.tokens[:, None], 3, axis=1))
    # Ungrammatical: swap two tokens until some pair is not a rule.
    tokens = np.asarray(x.tokens).copy()
    rules0 = {tuple(t) for t in np.asarray(g.rules[-1]).reshape(-1, cfg.s).tolist()}
    bad = next((a, b) for a in range(cfg.v) for b in range(cfg.v) if (a, b) not in rules0)
    tokens[0, :2] = bad
    loglik_bad = jnp.where(jax.nn.one_hot(tokens, cfg.v) > 0, 0.0, -jnp.inf)
    result = bp.marginals(g, loglik_bad)
    assert result.log_evidence[0] == -jnp.inf
    assert np.all(np.isfinite(np.asarray(result.log_evidence[1:])))
    for mu in result.marginals:
        assert np.all(np.isfinite(np.asarray(mu)))
        np.testing.assert_allclose(np.asarray(mu).sum(-1), 1.0, atol=1e-5)
    assert bp.upward(g, loglik_bad).log_evidence[0] == -jnp.inf


def test_deep_tree_stays_finite():
    cfg = RHMConfig(v=4, m=2, s=2, L=16)
    g = sample_grammar(jax.random.key(0), cfg)
    x = sample_data(jax.random.key(1), g, 2)
    for eps in (1e-6, 0.3):
        lik = (1 - eps) * jax.nn.one_hot(x.tokens, cfg.v) + eps / cfg.v
        result = bp.marginals(g, jnp.log(lik))
        assert np.all(np.isfinite(np.asarray(result.log_evidence)))
        for mu in result.marginals:
            assert np.all(np.isfinite(np.asarray(mu)))
    # Near-deterministic evidence recovers the class.
    np.testing.assert_array_equal(jnp.argmax(result.marginals[0][:, 0], -1) * 0 +
                                  jnp.argmax(bp.marginals(g, jnp.log(
                                      (1 - 1e-6) * jax.nn.one_hot(x.tokens, cfg.v) + 1e-6 / cfg.v
                                  )).marginals[0][:, 0], -1), x.classes)


def test_jit_matches_no_jit():
    cfg = RHMConfig(v=5, m=2, s=2, L=3, n_classes=3)
    g = sample_grammar(jax.random.key(0), cfg)
    loglik = _random_loglik(jax.random.key(1), cfg, 5)
    with jax.disable_jit():
        slow = bp.marginals(g, loglik)
    fast = bp.marginals(g, loglik)
    for a, b in zip(slow.marginals, fast.marginals):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(slow.log_evidence, fast.log_evidence, rtol=1e-6)


def test_no_retrace_for_new_inputs():
    cfg = RHMConfig(v=5, m=2, s=2, L=3)
    counted = chex.assert_max_traces(bp._marginals, n=1)
    fn = jax.jit(counted, static_argnames="chunk")
    for seed in range(3):
        g = sample_grammar(jax.random.key(seed), cfg)
        fn(g, _random_loglik(jax.random.key(seed), cfg, 4), chunk=2)


@pytest.mark.parametrize("s", [2, 3])
def test_reverse_digits_is_the_digit_reversal_and_an_involution(s):
    depth = 3
    x = jnp.arange(s**depth)
    expected = [int(np.base_repr(j, s).zfill(depth)[::-1], s) for j in range(s**depth)]
    np.testing.assert_array_equal(bp.reverse_digits(x, s), expected)
    np.testing.assert_array_equal(bp.reverse_digits(bp.reverse_digits(x, s), s), x)
    y = jnp.arange(2 * s**depth * 3).reshape(2, s**depth, 3)
    np.testing.assert_array_equal(bp.reverse_digits(y, s, axis=1), y[:, np.asarray(expected)])
    with pytest.raises(ValueError, match="not a power of s"):
        bp.reverse_digits(jnp.arange(6), 4)


@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 4, 8])
def test_map_chunks_orders_give_the_unchunked_result(interleave, chunk):
    """Both data orders of the chunk loop (contiguous: one device; interleaved: several)."""
    cfg = RHMConfig(v=6, m=3, s=2, L=3, n_classes=4)
    g = sample_grammar(jax.random.key(0), cfg)
    loglik = _random_loglik(jax.random.key(1), cfg, 7)
    keys = jax.random.split(jax.random.key(2), 7)

    def per_chunk(batch):
        x, k = batch
        marginals = bp.marginals_and_messages(g, x)[0]
        return marginals[-1], jax.vmap(lambda key: jax.random.uniform(key))(k)

    whole = per_chunk((loglik, keys))
    parts = bp.map_chunks(per_chunk, (loglik, keys), chunk, interleave=interleave)
    np.testing.assert_allclose(parts[0], whole[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(parts[1], whole[1])


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7])
def test_chunking_does_not_change_results(chunk_size):
    """Ragged and exact chunkings give the one-chunk results (same keys → same draws)."""
    cfg = RHMConfig(v=6, m=3, s=2, L=3, n_classes=4)
    g = sample_grammar(jax.random.key(0), cfg)
    loglik = _random_loglik(jax.random.key(1), cfg, 7)
    whole = bp.marginals(g, loglik, chunk_size=7, messages=True)
    parts = bp.marginals(g, loglik, chunk_size=chunk_size, messages=True)
    assert len(jax.tree.leaves(whole)) == 3 * (cfg.L + 1) + 1
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(parts)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    up = bp.upward(g, loglik, chunk_size=chunk_size)
    np.testing.assert_allclose(up.log_evidence, whole.log_evidence, rtol=1e-6)
    draws = [bp.sample_posterior(jax.random.key(2), g, loglik, 2, chunk_size=c) for c in (7, chunk_size)]
    for a, b in zip(jax.tree.leaves(draws[0]), jax.tree.leaves(draws[1])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="chunk_size"):
        bp.marginals(g, loglik, chunk_size=0)


def test_bad_input_errors():
    cfg = RHMConfig(v=5, m=2, s=2, L=3)
    g = sample_grammar(jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="leaf_log_likelihood has shape"):
        bp.marginals(g, jnp.zeros((2, cfg.d, cfg.v + 1)))
    with pytest.raises(ValueError, match="dtype"):
        bp.marginals(g, jnp.zeros((2, cfg.d, cfg.v), jnp.int32))
    with pytest.raises(ValueError, match="num_samples"):
        bp.sample_posterior(jax.random.key(0), g, jnp.zeros((2, cfg.d, cfg.v)), num_samples=0)


def test_messages_only_when_asked():
    """Messages are returned on request, equal the NumPy oracle's, and asking for them does
    not change the marginals or the class posterior."""
    from rhm_jax.reference import numpy_upward

    cfg = RHMConfig(v=5, m=2, s=2, L=3, n_classes=3)
    g = sample_grammar(jax.random.key(0), cfg)
    loglik = _random_loglik(jax.random.key(1), cfg, 5)
    lean, full = bp.marginals(g, loglik), bp.marginals(g, loglik, messages=True)
    assert lean.upward is None and lean.downward is None
    for a, b in zip(lean.marginals, full.marginals):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(lean.log_evidence, full.log_evidence)
    up_lean, up_full = bp.upward(g, loglik), bp.upward(g, loglik, messages=True)
    assert up_lean.messages is None
    np.testing.assert_array_equal(up_lean.class_posterior, up_full.class_posterior)
    expected, _ = numpy_upward([np.asarray(r) for r in g.rules], cfg.n_classes,
                               np.asarray(loglik, np.float64))
    assert len(up_full.messages) == len(full.upward) == cfg.L + 1
    for level in range(cfg.L + 1):
        np.testing.assert_allclose(up_full.messages[level], expected[level], atol=1e-6)
        np.testing.assert_array_equal(full.upward[level], up_full.messages[level])
        # μ ∝ u · w: the downward messages complete the upward ones into the marginals
        product = full.upward[level] * full.downward[level]
        np.testing.assert_allclose(product / product.sum(-1, keepdims=True),
                                   full.marginals[level], atol=1e-6)
    with pytest.raises(TypeError, match="messages"):
        bp.marginals(g, loglik, messages="yes")


def test_categorical_inverts_the_cdf():
    """On a uniform grid of N points each category gets N·w/Σw draws (±1); a zero weight
    is never drawn; an all-zero row gives the last index."""
    weights = jnp.array([[0.0, 3.0, 1.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    n = 4000
    grid = (jnp.arange(n) + 0.5) / n
    idx = bp._categorical(jnp.broadcast_to(weights[:, :, None], (2, 5, n)),
                          jnp.broadcast_to(grid, (2, n)), axis=1)
    counts = np.bincount(np.asarray(idx[0]), minlength=5)
    np.testing.assert_allclose(counts, n * np.asarray(weights[0]) / 8.0, atol=1)
    assert counts[0] == counts[3] == 0
    assert np.all(np.asarray(idx[1]) == 4)
    top = bp._categorical(weights[:1], jnp.array([1.0 - 2**-24]), axis=1)
    assert int(top[0]) == 4  # the largest uniform still lands in range


def _mesh(kind):
    from rhm_jax.sharding import data_mesh

    if kind == "auto":
        return data_mesh(4)
    return jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))


@pytest.mark.parametrize("kind,where", [("auto", "plain"), ("explicit", "plain"),
                                        ("explicit", "mesh-context"), ("explicit", "in-jit")])
def test_sharded_batch_gives_the_unsharded_results(kind, where):
    """A batch sharded over 4 devices (auto or explicit mesh axes — the default of
    ``jax.make_mesh``) gives the unsharded results, draws included, and stays sharded."""
    from jax.sharding import NamedSharding, PartitionSpec

    cfg = RHMConfig(v=6, m=3, s=2, L=3, n_classes=4)
    g = sample_grammar(jax.random.key(0), cfg)
    loglik = _random_loglik(jax.random.key(1), cfg, 12)
    key = jax.random.key(2)

    def run(x):
        return (bp.marginals(g, x, messages=True), bp.upward(g, x),
                bp.sample_posterior(key, g, x, num_samples=2))

    expected = run(loglik)
    mesh = _mesh(kind)
    sharded = jax.device_put(loglik, NamedSharding(mesh, PartitionSpec("data")))
    if where == "plain":
        got = run(sharded)
    else:
        with jax.set_mesh(mesh):
            got = jax.jit(run)(sharded) if where == "in-jit" else run(sharded)
    for a, b in zip(jax.tree.leaves(expected[:2]), jax.tree.leaves(got[:2])):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(expected[2]), jax.tree.leaves(got[2])):
        np.testing.assert_array_equal(b, a)
    if where != "in-jit":  # a jit's outputs are placed by its partitioner
        for leaf in jax.tree.leaves(got):
            assert leaf.sharding.spec[0] == "data", leaf.sharding


def test_vmap_over_a_stack_of_grammars():
    """BP vmapped over grammars equals BP with each grammar alone; the downward loop's
    trip count stays unbatched (the max over the stack, which is correct for every member
    because extra trips only visit padded, all-zero slots)."""
    from rhm_jax.experiments import sample_grammars

    cfg = RHMConfig(v=8, m=2, s=2, L=3)
    stack = sample_grammars(jax.random.key(0), cfg, 3)
    loglik = _random_loglik(jax.random.key(1), cfg, 5)
    batched = jax.vmap(lambda g: bp.marginals(g, loglik))(stack)
    for k in range(3):
        alone = bp.marginals(jax.tree.map(lambda r: r[k], stack), loglik)
        for mu_batched, mu_alone in zip(batched.marginals, alone.marginals):
            np.testing.assert_allclose(mu_batched[k], mu_alone, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(batched.log_evidence[k], alone.log_evidence, rtol=1e-6)
    bound = jax.vmap(bp._loop_bound)(jnp.array([[1, 5], [7, 2]]))
    np.testing.assert_array_equal(bound, [7, 7])
