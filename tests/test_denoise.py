"""Trained denoisers: architectures, objectives against exact BP, training, resume, sampling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rhm_jax import RHMConfig, bp, sample_data, sample_grammar
from rhm_jax.denoise import (Denoiser, ModelConfig, TrainConfig, TreeUNet, generate, load_run,
                             make_objective, reverse_sample, train)
from rhm_jax.denoise.sampling import reverse_chain
from rhm_jax.denoise.train import datasets, init_state, make_eval, make_train_steps, train_batch

CFG = RHMConfig(v=8, m=2, s=2, L=3)
LOSSES = ("masked_elbo", "d3pm", "gaussian_x0", "gaussian_eps")


@pytest.fixture(scope="module")
def grammar():
    return sample_grammar(jax.random.key(0), CFG)


# ---- architectures ------------------------------------------------------------------------
def _compiled(net):
    """``(levels, output)`` of ``net`` as one compiled call (op-by-op dispatch of the same
    forward pass takes several times longer on the test machine)."""
    graphdef, params = nnx.split(net)

    @jax.jit
    def run(params, x, t):
        net = nnx.merge(graphdef, params)
        return net.levels(x, t), net(x, t)

    return lambda x, t: run(params, x, t)


@pytest.mark.parametrize("s,L", [(2, 3), (3, 2)])
def test_unet_block_at_depth_l_has_one_position_per_node(s, L):
    cfg = RHMConfig(v=9, m=2, s=s, L=L)
    net = TreeUNet(cfg, ModelConfig(width=8, block_depth=2), num_states=10, rngs=nnx.Rngs(0))
    levels, output = _compiled(net)(jnp.zeros((3, cfg.d), jnp.int32), jnp.zeros(3))
    assert [h.shape[1] for h in levels] == [s**level for level in range(L + 1)]
    assert output.shape == (3, cfg.d, cfg.v)


@pytest.mark.parametrize("mlp_levels", [None, 0, 2, 9])
def test_unet_mlps_sit_only_on_levels_below_mlp_levels(mlp_levels):
    cfg = RHMConfig(v=4, m=2, s=2, L=3)
    net = TreeUNet(cfg, ModelConfig(width=8, block_depth=2, mlp_levels=mlp_levels),
                   num_states=5, rngs=nnx.Rngs(0))
    on = lambda level: mlp_levels is None or level < mlp_levels
    # leaves (level L), down blocks to levels L-1..0, up blocks to levels 1..L
    assert len(net.leaf_mlps) == 2 * on(cfg.L)
    assert [len(b) for b in net.down_mlps] == [2 * on(l) for l in range(cfg.L - 1, -1, -1)]
    assert [len(b) for b in net.up_mlps] == [2 * on(l) for l in range(1, cfg.L + 1)]
    _, output = _compiled(net)(jnp.zeros((3, cfg.d), jnp.int32), jnp.zeros(3))
    assert output.shape == (3, cfg.d, cfg.v)


def test_unet_root_sees_every_token_and_leaf_position_j_only_its_subtree():
    # the down path is a tree: the depth-1 node 0 depends on tokens 0..d/s-1 only
    cfg = RHMConfig(v=4, m=2, s=2, L=3)
    net = TreeUNet(cfg, ModelConfig(width=8), num_states=5, rngs=nnx.Rngs(1))
    x = jnp.zeros((1, cfg.d), jnp.int32)
    y = x.at[0, cfg.d - 1].set(3)  # change the last token
    run = _compiled(net)
    (a, _), (b, _) = run(x, jnp.zeros(1)), run(y, jnp.zeros(1))
    assert not np.allclose(a[0], b[0])  # the root sees it
    np.testing.assert_array_equal(a[1][:, 0], b[1][:, 0])  # the left half does not
    assert not np.allclose(a[1][:, 1], b[1][:, 1])


# ---- objectives against exact BP ----------------------------------------------------------
def test_masked_elbo_with_bp_in_place_of_the_network_is_log_p_max(grammar):
    """With exact conditionals the NELBO is -log p(x0) = log P_max for every datum: the
    only error is Monte-Carlo over the mask and t, from the per-sequence spread."""
    objective = make_objective("masked_elbo", CFG)
    x0 = sample_data(jax.random.key(1), grammar, 4096).tokens
    loss = jax.jit(lambda k, x: objective.loss(objective.bp_predictor(grammar), k, x)[0])(
        jax.random.key(2), x0)
    loss = np.asarray(loss, np.float64)
    se = loss.std(ddof=1) / np.sqrt(loss.size)
    assert abs(loss.mean() - CFG.log_P_max) < 4 * se, (loss.mean(), CFG.log_P_max, se)
    assert se < 0.03 * CFG.log_P_max  # the test has power


def test_masked_elbo_weight_is_one_over_t_for_linear_schedule():
    objective = make_objective("masked_elbo", CFG)
    t = jnp.array([0.1, 0.5, 1.0])
    np.testing.assert_allclose(objective.weight(t), 1.0 / np.asarray(t), rtol=1e-6)


@pytest.mark.parametrize("t", [0.05, 0.3, 0.8])
def test_d3pm_optimum_is_bp_downward_message(grammar, t):
    """p̃ = w_L (BP's message from the rest of the tree), multiplied by the leaf likelihood
    as D3PM's parameterisation does, gives back the exact posterior μ_L, hence the exact
    per-token reverse kernel."""
    objective = make_objective("d3pm", CFG)
    process = objective.process
    x0 = sample_data(jax.random.key(3), grammar, 64).tokens
    x_t = process.corrupt(jax.random.key(4), x0, t)
    tt = jnp.full((64,), t)
    outputs = objective.bp_predictor(grammar)(x_t, tt)
    mu = bp.marginals(grammar, process.leaf_log_likelihood(x_t, tt)).marginals[-1]
    np.testing.assert_allclose(objective.x0_probs(outputs, x_t, tt), mu, atol=2e-5)
    s = tt - 1.0 / objective.num_steps
    np.testing.assert_allclose(process.reverse_kernel(x_t, s, tt, objective.x0_probs(outputs, x_t, tt)),
                               process.reverse_kernel(x_t, s, tt, mu), atol=2e-5)


def test_d3pm_bound_with_bp_is_at_least_the_entropy(grammar):
    objective = make_objective("d3pm", CFG)
    x0 = sample_data(jax.random.key(5), grammar, 2048).tokens
    loss = np.asarray(objective.loss(objective.bp_predictor(grammar), jax.random.key(6), x0)[0],
                      np.float64)
    se = loss.std(ddof=1) / np.sqrt(loss.size)
    assert loss.mean() > CFG.log_P_max - 3 * se  # a variational bound on -log p(x0)


def test_gaussian_eps_bp_predictor_implies_the_posterior_mean(grammar):
    objective = make_objective("gaussian_eps", CFG)
    process = objective.process
    x0 = sample_data(jax.random.key(7), grammar, 32).tokens
    t = jnp.full((32,), 0.6)
    x_t = process.corrupt(jax.random.key(8), x0, t)
    eps = objective.bp_predictor(grammar)(x_t, t)
    np.testing.assert_allclose(objective.x0_probs(eps, x_t, t),
                               objective.bp_target(grammar, x_t, t), atol=2e-4)


# ---- training -----------------------------------------------------------------------------
def _tiny(loss, arch="unet", **kw):
    model = ModelConfig(arch, width=32, num_layers=2, num_heads=2)
    base = dict(v=8, m=2, s=2, L=3, loss=loss, model=model, batch_size=32, steps=60,
                learning_rate=3e-3, warmup_steps=5, test_size=64, steps_per_call=30,
                log_every=30, eval_every=30, checkpoint_every=30)
    base.update(kw)
    return TrainConfig(**base)


def test_held_out_loss_does_not_depend_on_the_training_batch_size(grammar):
    """Same test set, seed and repeats: the same held-out masks, whatever the batch size
    (a tail chunk included: 600 = 512 + 88)."""
    from rhm_jax.denoise.train import bp_floor

    floors = []
    for batch_size in (16, 256):
        config = _tiny("masked_elbo", test_size=600, batch_size=batch_size)
        _, test_tokens = datasets(config, grammar)
        floors.append(bp_floor(config, grammar, test_tokens))
    assert floors[0] == floors[1]


@pytest.mark.parametrize("arch", ["unet", "transformer"])
@pytest.mark.parametrize("loss", LOSSES)
def test_a_few_steps_lower_the_held_out_loss(loss, arch):
    config = _tiny(loss, arch, m=4, L=2, test_size=256, batch_size=64)
    grammar = sample_grammar(jax.random.key(config.grammar_seed), config.rhm_config)
    graphdef, state = init_state(config)
    _, test = datasets(config, grammar)
    evaluate = make_eval(config, graphdef)
    keys = jax.random.split(jax.random.key(9), 4)

    def held_out(params):  # per datum, averaged over 4 noise draws
        return np.mean([np.asarray(evaluate(params, test, k), np.float64) for k in keys], 0)

    before = held_out(state.params)
    state, metrics = make_train_steps(config, graphdef, grammar)(state, None, 60)
    after = held_out(state.params)
    # same data and noise (common random numbers): the paired difference and its error
    diff = before - after
    assert diff.mean() > 4 * diff.std(ddof=1) / np.sqrt(diff.size), (before.mean(), after.mean())
    assert np.all(np.isfinite(metrics["loss"]))


def _resume_config():
    return _tiny("masked_elbo", train_size=96, ema_decay=0.9, steps=60, steps_per_call=10,
                 log_every=10, eval_every=30, checkpoint_every=20)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """``(folder, Run)`` of one uninterrupted run, trained once for the tests that need a
    finished run folder (resume compares against it; others check it is never mixed)."""
    path = tmp_path_factory.mktemp("finished") / "whole"
    return path, train(_resume_config(), path, progress=False, plot=False)


def _snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_gives_bit_identical_parameters(tmp_path, finished_run):
    from rhm_jax.denoise.train import compiled_train_steps, make_eval

    config = _resume_config()
    whole_dir, whole = finished_run
    programs = (compiled_train_steps.cache_info().misses, make_eval.cache_info().misses)
    train(config, tmp_path / "split", progress=False, plot=False, stop_after=40)
    assert load_run(tmp_path / "split").step == 40
    resumed = train(config, tmp_path / "split", resume=True, progress=False, plot=False)
    # the configuration was trained before in this process: its programs are reused
    assert (compiled_train_steps.cache_info().misses, make_eval.cache_info().misses) == programs
    for a, b in zip(jax.tree.leaves(nnx.state(whole.model)), jax.tree.leaves(nnx.state(resumed.model))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(nnx.state(whole.ema_model)),
                    jax.tree.leaves(nnx.state(resumed.ema_model))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the checkpoint alone rebuilds the model and its grammar
    loaded = load_run(tmp_path / "split")
    assert loaded.step == 60 and loaded.config == config
    for a, b in zip(loaded.grammar.rules, resumed.grammar.rules):
        np.testing.assert_array_equal(a, b)
    rows = [r for r in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    whole_rows = (whole_dir / "metrics.jsonl").read_text().splitlines()
    strip = lambda r: {k: v for k, v in __import__("json").loads(r).items() if k != "wall_s"}
    assert [strip(r) for r in rows] == [strip(r) for r in whole_rows]


def test_fixed_training_set_is_visited_once_per_epoch_and_disjoint_from_test():
    config = _tiny("masked_elbo", train_size=48, batch_size=16)
    grammar = sample_grammar(jax.random.key(0), config.rhm_config)
    train_tokens, test_tokens = datasets(config, grammar)
    key = jax.random.key(1)
    seen = np.concatenate([np.asarray(train_batch(config, grammar, train_tokens, key, jnp.int32(k)))
                           for k in range(6)])  # two epochs of three batches
    as_set = lambda x: sorted(map(tuple, np.asarray(x).tolist()))
    assert as_set(seen[:48]) == as_set(train_tokens) == as_set(seen[48:])
    assert not set(map(tuple, np.asarray(train_tokens).tolist())) & set(
        map(tuple, np.asarray(test_tokens).tolist()))
    # a batch that straddles two epochs (48 is not a multiple of 20)
    config = dataclasses.replace(config, batch_size=20)
    seen = np.concatenate([np.asarray(train_batch(config, grammar, train_tokens, key, jnp.int32(k)))
                           for k in range(12)])
    for epoch in range(5):
        assert as_set(seen[48 * epoch:48 * (epoch + 1)]) == as_set(train_tokens)


@pytest.mark.parametrize("kwargs, error", [
    (dict(loss="bogus"), "loss = 'bogus' must be one of"),
    (dict(batch_size=0), "batch_size = 0 must be >= 1"),
    (dict(steps=2.5), "steps must be an integer"),
    (dict(train_size=10**9), "exceeds P_max"),
    (dict(learning_rate=-1.0), "learning_rate = -1.0 must be a finite number >= 0"),
    (dict(ema_decay=1.0), "ema_decay = 1.0 must be in"),
    (dict(log_every=7), "log_every = 7 must be a multiple of steps_per_call"),
    (dict(m=9), "exceeds v\\*\\*s"),
    (dict(model=dict(architecture="transformer", width=30, num_heads=4)), "multiple of num_heads"),
    (dict(model=dict(architecture="mlp")), "architecture = 'mlp' must be one of"),
    (dict(model=dict(width=0)), "width = 0 must be >= 1"),
    (dict(model=dict(mlp_levels=-1)), "mlp_levels = -1 must be >= 0"),
])
def test_bad_training_configurations_are_refused(kwargs, error):
    kwargs = {"loss": "masked_elbo", **kwargs}
    with pytest.raises((ValueError, TypeError), match=error):
        _tiny(**kwargs)


def test_existing_run_folder_is_not_mixed(tmp_path, finished_run):
    config, (run, _) = _resume_config(), finished_run
    before = _snapshot(run)
    with pytest.raises(ValueError, match="is not empty"):
        train(config, run, progress=False)
    with pytest.raises(ValueError, match="configuration differs .*seed"):
        train(dataclasses.replace(config, seed=1), run, resume=True, progress=False)
    assert _snapshot(run) == before  # refused before touching the run
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a training run folder"):
        train(config, tmp_path / "other", overwrite=True, progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


# ---- sampling -----------------------------------------------------------------------------
def test_reverse_chain_with_bp_draws_masked_tokens_from_bp_marginals(grammar):
    """One step from t to 0: every masked token is drawn from the predictor's posterior, here
    BP's μ_L — a sample-frequency test with binomial standard errors."""
    objective = make_objective("masked_elbo", CFG)
    process = objective.process
    x0 = sample_data(jax.random.key(10), grammar, 1).tokens
    x_t = jnp.where(jnp.arange(CFG.d) % 3 == 0, x0, process.mask_token)  # a fixed mask
    n = 4000
    x_t = jnp.broadcast_to(x_t, (n, CFG.d))
    t = jnp.full((n,), 0.7)
    draws = jax.jit(lambda k: reverse_chain(objective.bp_predictor(grammar), objective, k, x_t, t, 1))(
        jax.random.key(11))
    mu = np.asarray(objective.bp_target(grammar, x_t[:1], t[:1])[0], np.float64)
    freq = np.stack([np.mean(np.asarray(draws) == a, axis=0) for a in range(CFG.v)], -1)
    se = np.sqrt(mu * (1 - mu) / n) + 1e-12
    assert np.all(np.abs(freq - mu) <= 4.5 * se + 1e-9)
    np.testing.assert_array_equal(np.asarray(draws)[:, ::3], np.broadcast_to(x0[:, ::3], (n, 3)))


@pytest.mark.parametrize("loss", LOSSES)
def test_network_samplers_return_tokens(loss, grammar):
    config = _tiny(loss)
    graphdef, state = init_state(config)
    denoiser = Denoiser(nnx.merge(graphdef, state.params), config.objective())
    out = generate(jax.random.key(0), denoiser, 5, num_steps=4)
    assert out.shape == (5, CFG.d) and out.dtype == jnp.int32
    assert int(out.min()) >= 0 and int(out.max()) < CFG.v
    x0 = sample_data(jax.random.key(1), grammar, 5).tokens
    x_t = denoiser.process.corrupt(jax.random.key(2), x0, 0.5)
    assert reverse_sample(jax.random.key(3), denoiser, denoiser.process, x_t, 0.5, 3).shape == (5, CFG.d)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        generate(3, denoiser, 5, num_steps=4)
    with pytest.raises(ValueError, match="num_steps = 0 must be >= 1"):
        generate(jax.random.key(0), denoiser, 5, num_steps=0)
    if loss == "masked_elbo":  # default: one token at a time, every mask filled
        out = generate(jax.random.key(4), denoiser, 5)
        assert out.shape == (5, CFG.d) and int(out.max()) < CFG.v
    else:
        with pytest.raises(ValueError, match="num_steps = None .* needs the masking process"):
            generate(jax.random.key(4), denoiser, 5)


# ---- command line -------------------------------------------------------------------------
def test_train_cli_runs_resumes_and_writes_its_run_folder(tmp_path, capsys):
    from rhm_jax.cli import main
    from rhm_jax.io import read_jsonl

    out = tmp_path / "run"
    flags = ["train", "--quick", "--no-progress", "--v", "8", "--m", "4", "--L", "2",
             "--test-size", "32", "--steps", "20", "--out", str(out)]
    assert main(flags) == 0
    for name in ("config.json", "meta.json", "metrics.jsonl", "loss_curve.png", "checkpoints"):
        assert (out / name).exists(), name
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "test"] == [0, 20]
    assert "held-out loss" in capsys.readouterr().out
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0  # done: no-op
    assert load_run(out).step == 20


@pytest.mark.parametrize("flags, message", [
    (["--width", "0"], "--width = 0 must be an integer >= 1"),
    (["--steps", "-3"], "--steps = -3 must be an integer >= 1"),
    (["--lr", "nan"], "--lr = nan must be a finite number"),
    (["--train-size", "100000"], "exceeds P_max"),
    (["--resume"], "holds no run"),
    (["--resume", "--overwrite"], "exclude each other"),
    (["--log-every", "7"], "--log-every = 7 must be a multiple of steps_per_call"),
])
def test_train_cli_refuses_bad_flags_before_any_work(tmp_path, capsys, flags, message):
    from rhm_jax.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--quick", "--v", "8", "--m", "4", "--L", "2", "--out",
              str(tmp_path / "x")] + flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
