"""Writes ``03_denoiser_vs_bp.ipynb`` and ``04_correlated_changes.ipynb`` from the cells below.

The notebooks' text and code live here, as plain strings, so a change is reviewed as a
change of Python source; the notebook files are generated. The first code cell is copied
from ``01_quickstart.ipynb`` unchanged (notebooks/README.md, convention 2). The written
notebooks get their outputs from a full-size execution:

    python notebooks/build_03_04.py                 # both; or name one: 03 / 04
    python notebooks/check_outputs.py --write notebooks/03_denoiser_vs_bp.ipynb
    python notebooks/check_outputs.py --write notebooks/04_correlated_changes.ipynb

A rebuild keeps the outputs of the code cells that did not change (nor did any code cell
before them), so editing prose needs no re-execution; any other change leaves cells
without outputs, which the tests refuse until ``--write`` (minutes) has run.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import textwrap

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent
INSTALL_SOURCE = NOTEBOOK_DIR / "01_quickstart.ipynb"


def md(text: str) -> tuple[str, str]:
    return "markdown", textwrap.dedent(text).strip("\n")


def code(text: str) -> tuple[str, str]:
    return "code", textwrap.dedent(text).strip("\n")


INSTALL = ("code", None)  # replaced by the install cell of 01_quickstart.ipynb

SETUP_PROSE = md("""
    ## Setup

    The next cell imports `rhm_jax` and installs it only if that import fails:

    * in a clone of the repository (Jupyter started inside it), with `pip install -e` from the clone;
    * anywhere else — Colab in particular — from the Git repository in the form field
      `REPO_URL`. **Set `REPO_URL` to the address of the rhm_jax repository you opened this
      notebook from** (the default is a placeholder and stops with an error that says so).

    Colab ships `jax` built for its GPUs and TPUs; the cell pins the `jax` and `jaxlib` that are
    already installed, so pip can never replace them (rhm_jax needs `jax >= 0.8`). It ends by
    printing the devices JAX sees: everything below runs on them, CPU, GPU or TPU alike.
""")

PARAMETER_HEAD = '''
    # @title Parameters
    import os


    def _env_flag(name):
        return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


    FORCE_SMOKE = False  # @param {type:"boolean"}
    # CI sets CI=true; the test suite sets RHM_JAX_SMOKE=1. Smoke mode = tiny sizes, seconds.
    SMOKE = FORCE_SMOKE or _env_flag("CI") or _env_flag("RHM_JAX_SMOKE")
'''

REPORT = '''

    def report(name, value, se=0.0):
        """Prints a key number as `RESULT name = value ± se` (se = 0: exact up to rounding).

        notebooks/check_outputs.py re-runs the notebook and compares these lines with the
        committed ones within their standard errors.
        """
        print(f"RESULT {name} = {float(value):.6g} ± {float(se):.2g}")
'''


# ------------------------------------------------------------------------------------------
# 03: a trained denoiser against exact BP
# ------------------------------------------------------------------------------------------
NOTEBOOK_03 = [
    md("""
    # A trained denoiser next to the exact one

    The Bayes-optimal denoiser of Random Hierarchy Model data is known exactly: belief
    propagation (BP) on the tree. A neural network trained with a diffusion loss has that
    denoiser as the optimum of its loss, so on RHM data we can measure against an exact
    reference how close a trained network gets — not only in loss, but in the quantity it
    predicts, in the phase transition of its reconstructions, and in the sequences it
    generates.

    This notebook

    1. configures a small masked-diffusion experiment: the RHM `(v, m, s, L) = (8, 2, 2, 3)`
       and a tree-shaped U-Net;
    2. trains the network on fresh data (online) and draws its held-out loss next to the
       loss of BP in its place — the floor no network can go below;
    3. compares the network's predictions with BP's, noise level by noise level:
       `KL(BP ‖ network)` and how often their most probable token agrees;
    4. runs the forward–backward experiment of `02_phase_transition.ipynb` with the network
       in BP's place: the probability `P_l(t)` that a reconstruction keeps level `l` of the
       tree, network next to BP;
    5. generates sequences from pure noise and checks, level by level, whether the grammar
       could have produced them.

    At full size it takes five to six minutes on a 2-core CPU, two of them training. It
    uses the library's public API only:
    `rhm_jax.denoise` (training, loading, sampling) and `rhm_jax.denoise.compare` (the
    measurements); `rhm-jax train` and `rhm-jax compare` do the same from a shell.
    """),
    SETUP_PROSE,
    INSTALL,
    md("""
    ## Parameters

    The cell below is a form on Colab. `(V, M, S, L)` fix the RHM; `WIDTH` the network's
    channels and `BLOCK_DEPTH` the position-wise MLP layers after each of its tree
    convolutions; `STEPS` × `BATCH_SIZE` the training data seen (fresh data every step);
    `N_DATA` the held-out data per noise level of the comparisons, `N_SAMPLES` the sequences
    generated, `NUM_TIMES` the noise levels `t = 0.1, 0.2, …, 1` and `NUM_STEPS` the
    reverse sampler: `None` (the default for masking) reveals one token per network call,
    at the time the forward process would have masked it — `d` calls, and an exact posterior
    draw when the marginals are exact; an integer `K` instead runs `K` steps on a uniform
    time grid, each drawing the tokens it reveals independently of each other.
    The full-size values are those of the repository's README, where this network reached a
    mean KL of 0.011 nats per masked token.

    `SMOKE` (on under CI, or with `FORCE_SMOKE`) trains a smaller network (width 32, no MLP
    layers, which compiles faster) for 100 steps at a higher learning rate and measures on
    tiny sizes, only to check that everything runs. The claims the notebook asserts hold at
    both sizes, but less can be claimed of a network trained for 100 steps than of one
    trained for 3,000: the thresholds that depend on training are set here, for each size —
    measured values with a margin of several standard errors, and at smoke size still far
    from what an untrained network gives (the printed numbers show how far from them a run
    lands). `report(...)` prints the key numbers as `RESULT` lines for
    `notebooks/check_outputs.py`.
    """),
    code(PARAMETER_HEAD + '''
    V = 8  # @param {type:"integer"}
    M = 2  # @param {type:"integer"}
    S = 2  # @param {type:"integer"}
    L = 3  # @param {type:"integer"}
    WIDTH = 64  # @param {type:"integer"}
    BLOCK_DEPTH = 1  # @param {type:"integer"}
    STEPS = 3000  # @param {type:"integer"}
    BATCH_SIZE = 64  # @param {type:"integer"}
    LEARNING_RATE = 2e-3  # @param {type:"number"}
    N_DATA = 256  # @param {type:"integer"}
    N_SAMPLES = 256  # @param {type:"integer"}
    NUM_TIMES = 10  # @param {type:"integer"}
    SEED = 0  # @param {type:"integer"}
    NUM_STEPS = None  # one token at a time; an integer K: K grid steps
    STEPS_PER_CALL, EVAL_EVERY, WARMUP = 50, 250, 100
    # Thresholds of the claims that depend on how long the network trained (see the prose).
    EXPECT = dict(top1_min=0.95, kl_max=0.05, loss_gap_max=0.05, p_gap_max=0.02,
                  rules_valid_min=0.95, fully_valid_min=0.8)
    if SMOKE:
        WIDTH, BLOCK_DEPTH, LEARNING_RATE = 32, 0, 5e-3
        STEPS, STEPS_PER_CALL, EVAL_EVERY, WARMUP = 100, 25, 25, 5
        N_DATA, N_SAMPLES, NUM_TIMES = 32, 128, 4
        EXPECT = dict(top1_min=0.6, kl_max=0.8, loss_gap_max=1.0, p_gap_max=0.35,
                      rules_valid_min=0.5, fully_valid_min=0.02)
    ''' + REPORT + '''

    print(f"SMOKE = {SMOKE}: {STEPS} training steps of {BATCH_SIZE} data; {N_DATA} held-out "
          f"data x {NUM_TIMES} noise levels, {N_SAMPLES} generated sequences, "
          f"{'one token per reverse step' if NUM_STEPS is None else f'{NUM_STEPS} reverse steps'}")
    '''),
    md("""
    ## 1. The experiment

    A `TrainConfig` describes a training run completely: the RHM and its grammar seed, the
    loss (which fixes the noise process), the network (`ModelConfig`), the data regime
    (`train_size=None`: a fresh batch from the grammar at every step), the optimiser and the
    seeds. Here the loss is `masked_elbo`, the continuous-time NELBO of masked diffusion
    (MD4/MDLM): a token is masked with probability `t`, and the network predicts the masked
    tokens from the visible ones. Its optimum is exact BP's leaf marginal given the visible
    tokens, the same at every `t` — so the network gets no time input.

    The network is the tree U-Net: each down-block maps the `s` children of every node to the
    node (a convolution with filter = stride = `s`), so its `l`-th level has one position per
    node of level `l` of the RHM tree; the up-blocks mirror it with skip connections.

    For masking the floor of the loss is known in closed form: with exact conditionals the
    NELBO of a sequence is `−log p(x0)`, and RHM data are uniform over the `P_max` sequences
    the grammar can produce, so the floor is `log₂ P_max / d` bits per token.
    """),
    code('''
    import json
    import tempfile
    import time

    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    from rhm_jax import sample_data
    from rhm_jax.denoise import Denoiser, ModelConfig, TrainConfig, build_model, load_run, train
    from rhm_jax.denoise import compare

    plt.rcParams.update({"figure.dpi": 80, "font.size": 9})
    start = time.time()

    config = TrainConfig(
        v=V, m=M, s=S, L=L, grammar_seed=SEED, loss="masked_elbo", train_size=None,
        test_size=256, model=ModelConfig(architecture="unet", width=WIDTH, block_depth=BLOCK_DEPTH),
        batch_size=BATCH_SIZE, steps=STEPS, learning_rate=LEARNING_RATE, warmup_steps=WARMUP,
        seed=SEED, steps_per_call=STEPS_PER_CALL, log_every=EVAL_EVERY, eval_every=EVAL_EVERY,
        checkpoint_every=STEPS)
    rhm = config.rhm_config
    entropy_bits = rhm.log_P_max / (rhm.d * np.log(2))
    print(rhm)
    print(f"d = {rhm.d} tokens, P_max = {rhm.P_max} distinct sequences: floor of the loss "
          f"log2(P_max)/d = {entropy_bits:.4f} bits per token")
    print(f"network: {config.model}")
    '''),
    md("""
    ## 2. Training

    `train(config, run_dir)` runs the experiment into a run folder: `config.json`,
    `metrics.jsonl` (the training loss, and at every evaluation the held-out loss in bits per
    token with its standard error, next to the same loss with BP in the network's place) and
    orbax checkpoints of the whole training state — from which `load_run(run_dir)` rebuilds
    the network, its grammar and its objective. Steps run `STEPS_PER_CALL` at a time inside
    one compiled `lax.scan`, and every random number of step `k` comes from `fold_in(seed, k)`,
    so a run resumed from a checkpoint ends bit-identical to an uninterrupted one. The folder
    here is a temporary one; `rhm-jax train` does the same from a shell.

    The figure: the held-out NELBO (error bars: one standard error over the held-out data)
    against the number of training sequences seen, the BP floor (dashed; measured on the
    same data and noise) and `log₂ P_max / d` (dotted). Note that `P_max = 1024` here: the
    online network sees every sequence of the grammar many times, so "held-out" means only
    "not in the batch the step used". What is tested is whether it learns the conditionals
    of the distribution, the quantity BP computes exactly.
    """),
    code('''
    run_dir = tempfile.mkdtemp(prefix="rhm_jax_denoiser_")
    tic = time.time()
    train(config, run_dir, progress=False, plot=False)
    print(f"trained {STEPS} steps in {time.time() - tic:.0f} s into {run_dir}")

    rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    held_out = [row for row in rows if row["split"] == "test"]
    seen = np.array([row["data_seen"] for row in held_out])
    loss = np.array([row["loss_bits_per_token"] for row in held_out])
    loss_se = np.array([row["loss_se"] for row in held_out])
    floor, floor_se = held_out[-1]["floor_bits_per_token"], held_out[-1]["floor_se"]

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.errorbar(np.maximum(seen, BATCH_SIZE / 2), loss, loss_se, marker="o", ms=3,
                label="network, held-out NELBO")
    ax.axhline(floor, color="k", ls="--", lw=1, label=f"BP in its place: {floor:.3f} ± {floor_se:.3f}")
    ax.axhline(entropy_bits, color="k", ls=":", lw=1, label=f"log2(P_max)/d = {entropy_bits:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("training sequences seen (step 0 drawn at the left edge)")
    ax.set_ylabel("bits per token")
    ax.legend()
    '''),
    md("""
    How to read it: the loss falls fast at first — the network learns which tokens the
    grammar allows at all — then slowly approaches the floor as it learns the longer-range
    constraints of the upper levels of the tree.

    The assertions: training lowered the held-out loss (by more than four standard errors of
    the difference); and BP's NELBO equals `log₂ P_max / d` within four standard errors — the
    exact property of the masked-diffusion loss stated above, checked on the library's loss.
    The network is then loaded back from its checkpoint (`load_run`), which must hold the
    last step and the run's configuration.
    """),
    code('''
    drop = loss[0] - loss[-1]
    drop_se = float(np.hypot(loss_se[0], loss_se[-1]))
    print(f"held-out NELBO: {loss[0]:.3f} ± {loss_se[0]:.3f} at step 0 -> {loss[-1]:.3f} ± "
          f"{loss_se[-1]:.3f} bits per token after {STEPS} steps; BP floor {floor:.4f} ± "
          f"{floor_se:.4f} (log2(P_max)/d = {entropy_bits:.4f})")
    assert drop > 4 * drop_se, "training lowers the held-out loss"
    assert abs(floor - entropy_bits) <= 4 * floor_se, "BP's NELBO is log2(P_max)/d"
    report("loss_final_bits_per_token", loss[-1], loss_se[-1])
    report("bp_floor_bits_per_token", floor, floor_se)

    run = load_run(run_dir)
    denoiser = Denoiser.from_run(run)  # the network and the objective it was trained with
    objective, grammar = run.objective, run.grammar
    assert run.step == STEPS and run.config == config
    '''),
    md("""
    ## 3. The network's predictions against BP's, noise level by noise level

    `compare.agreement` noises held-out data at each time `t` and compares, token by token,
    the network's estimate of the quantity its loss targets with BP's exact value of it, on
    the same noisy inputs. For masking that is `p(x0_i | visible tokens)` on the masked
    tokens (the loss ignores the others). It reports `KL(BP ‖ network)` in nats per masked
    token and the top-1 agreement: the fraction of masked tokens where the network's most
    probable symbol is one of BP's most probable ones (BP's posterior often has exact ties).
    Errors are standard errors over data.

    `compare.network_predictor(denoiser)` wraps the network for these measures (and
    `compare.bp_predictor(objective, grammar)` would put BP itself in its place: KL 0 and
    top-1 agreement 1, the test suite's check of the measurement). Two networks go through
    the same code with the same key, hence the same data and noise: the trained one and the
    same network before training (`build_model` with the run's seed) — what "no agreement"
    looks like.

    Also in this cell: `compare.compare_losses`, the held-out loss of the network next to the
    loss with BP in its place, paired on the same data, times and noise — a sharper
    measure of the gap than the two curves above (nats per token).
    """),
    code('''
    times = np.round(np.linspace(1.0 / NUM_TIMES, 1.0, NUM_TIMES), 6)
    data_key, agreement_key, loss_key, fb_key, sample_key = jax.random.split(
        jax.random.key(SEED + 1), 5)
    x0 = sample_data(data_key, grammar, N_DATA).tokens

    untrained = Denoiser(build_model(rhm, config.model, objective.num_input_states, SEED),
                         objective)
    predictors = {"trained network": compare.network_predictor(denoiser),
                  "untrained network": compare.network_predictor(untrained)}
    tic = time.time()
    agree = {name: compare.agreement(agreement_key, predict, params, objective, grammar, x0,
                                     times)
             for name, (predict, params) in predictors.items()}
    losses = compare.compare_losses(loss_key, *predictors["trained network"], objective,
                                    grammar, x0)
    print(f"agreement at {NUM_TIMES} noise levels and losses in {time.time() - tic:.0f} s")

    fig, (ax_kl, ax_top) = plt.subplots(1, 2, figsize=(10, 3.6))
    for (name, result), color in zip(agree.items(), ("tab:blue", "0.6")):
        ax_kl.errorbar(result.times, result.kl, result.kl_se, marker="o", ms=3, color=color,
                       label=name)
        ax_top.errorbar(result.times, result.top1, result.top1_se, marker="o", ms=3,
                        color=color, label=name)
    ax_kl.set_yscale("log")
    ax_kl.set_ylabel("KL(BP ‖ network), nats per masked token")
    ax_top.set_ylabel("top-1 agreement with BP")
    ax_top.set_ylim(-0.02, 1.02)
    for ax in (ax_kl, ax_top):
        ax.set_xlabel("t (fraction of tokens masked)")
        ax.legend()
    fig.tight_layout()
    '''),
    md("""
    How to read it: the trained network's KL is about a hundred times smaller than the
    untrained network's at every noise level, and its top-1 choice is BP's almost
    everywhere (the untrained network's on 20–40% of the masked tokens). The KL is smallest
    at the ends: at small `t` a masked token's neighbours are mostly visible and pin it
    down, and at `t = 1` nothing is visible and the answer is each token's prior marginal.
    It is largest at intermediate `t`, where a masked token is constrained only through the
    upper levels of the tree — the long-range inference that BP does by passing messages up
    and down the tree, and that the network has to learn.

    The assertions: training improved the mean top-1 agreement by more than four standard
    errors; the trained network's mean top-1 agreement is at least `EXPECT["top1_min"]` and
    its mean KL at most `EXPECT["kl_max"]` (each within four standard errors); and its loss
    lies above BP's (the floor: the paired gap is not negative beyond four standard errors)
    by at most `EXPECT["loss_gap_max"]` nats per token.
    """),
    code('''
    def mean_over_times(values, errors):
        """Mean over the noise levels and its standard error (levels use independent noise)."""
        return values.mean(), float(np.sqrt(np.sum(errors**2))) / len(values)


    trained, before = agree["trained network"], agree["untrained network"]
    top1, top1_se = mean_over_times(trained.top1, trained.top1_se)
    top1_before, top1_before_se = mean_over_times(before.top1, before.top1_se)
    kl, kl_se = mean_over_times(trained.kl, trained.kl_se)
    half = int(np.argmin(np.abs(trained.times - 0.5)))
    print(f"mean over t: top-1 {top1:.4f} ± {top1_se:.4f} (untrained {top1_before:.4f}), "
          f"KL {kl:.4f} ± {kl_se:.4f} nats per masked token")
    print(f"at t = {trained.times[half]}: top-1 {trained.top1[half]:.4f} ± "
          f"{trained.top1_se[half]:.4f}, KL {trained.kl[half]:.4f} ± {trained.kl_se[half]:.4f}")
    print(f"loss: network {losses.network:.4f} ± {losses.network_se:.4f}, BP {losses.bp:.4f} ± "
          f"{losses.bp_se:.4f}, paired gap {losses.gap:.4f} ± {losses.gap_se:.4f} nats per token")
    assert top1 - top1_before > 4 * np.hypot(top1_se, top1_before_se), "training helps"
    assert top1 + 4 * top1_se >= EXPECT["top1_min"], "top-1 agreement with BP"
    assert kl - 4 * kl_se <= EXPECT["kl_max"], "KL(BP || network)"
    assert losses.gap >= -4 * losses.gap_se, "no network beats BP's loss"
    assert losses.gap - 4 * losses.gap_se <= EXPECT["loss_gap_max"], "loss near the floor"
    report("top1_mean", top1, top1_se)
    report("kl_mean", kl, kl_se)
    report(f"top1_t{trained.times[half]:.1f}", trained.top1[half], trained.top1_se[half])
    report("loss_gap_nats_per_token", losses.gap, losses.gap_se)
    '''),
    md("""
    ## 4. The phase transition, network next to BP

    `02_phase_transition.ipynb` showed that exact denoising has a phase transition: as the
    noise grows, the class (the root of the tree) is kept almost surely up to a threshold and
    lost beyond it, while the tokens fade smoothly. Does a trained network reproduce it?

    `compare.forward_backward_pair(key, denoiser, grammar, times, n_data, num_steps)` runs
    the forward–backward experiment twice through one code path
    (`rhm_jax.experiments.forward_backward`) with the same data and noise: once with exact BP
    posterior samples, once with the network's reverse diffusion from `x_t` (one masked
    token revealed per network call, drawn from the network's prediction for it). The reconstruction `x̂0` is parsed back up the tree, and `P_l(t)` is the
    fraction of level-`l` nodes of `x0` it keeps; a node whose subtree the grammar cannot
    produce counts as changed.

    Left: `P_l(t)` per level, the network solid and BP dashed (error bars: one standard
    error over data). Right: the difference network − BP per level.
    """),
    code('''
    tic = time.time()
    network_fb, bp_fb = compare.forward_backward_pair(fb_key, denoiser, grammar, times, N_DATA,
                                                      NUM_STEPS)
    print(f"forward-backward, network and BP: {time.time() - tic:.0f} s")
    net, net_se = network_fb.sampled[0], network_fb.sampled_se[0]  # (T, L+1), one grammar
    exact_p, exact_se = bp_fb.marginal[0], bp_fb.marginal_se[0]

    level_colors = plt.cm.plasma(np.linspace(0.0, 0.85, L + 1))
    fig, (ax, ax_diff) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for level in range(L + 1):
        name = "class" if level == 0 else ("tokens" if level == L else f"l = {level}")
        ax.errorbar(times, net[:, level], net_se[:, level], color=level_colors[level], marker="o",
                    ms=3, lw=1.2, label=name)
        ax.errorbar(times, exact_p[:, level], exact_se[:, level], color=level_colors[level],
                    ls="--", lw=1)
        ax_diff.errorbar(times, net[:, level] - exact_p[:, level],
                         np.hypot(net_se[:, level], exact_se[:, level]),
                         color=level_colors[level], marker="o", ms=3, lw=1, label=name)
    ax.axhline(1 / rhm.n_classes, color="0.6", lw=0.8)
    ax.set_ylabel("$P_l(t)$: network (solid), exact BP (dashed)")
    ax.set_ylim(-0.02, 1.02)
    ax_diff.axhline(0, color="k", lw=0.8)
    ax_diff.set_ylabel("$P_l$ network − $P_l$ BP")
    for a in (ax, ax_diff):
        a.set_xlabel("t (fraction of tokens masked)")
        a.legend(fontsize=8)
    fig.tight_layout()
    '''),
    md("""
    How to read it: the trained network's curves lie on BP's at every level — the class
    drops at the same noise, the tokens fade at the same rate — so the network's reverse
    diffusion has the same phase transition as exact denoising. The differences scatter
    around zero within about two standard errors; the largest, for the class at high noise,
    are where the network keeps slightly less than BP (the differences of different levels
    are correlated: they come from the same reconstructions). Only the network differs between
    the curves: with exact marginals the one-token sampler is itself an exact posterior
    draw. BP's curve is its marginal estimator (the posterior probability of the true
    symbol, averaged over data): the same expectation as counting kept symbols in
    posterior samples, with less variance.

    The assertions: at `t = 1` nothing is visible and BP keeps the class only by chance,
    `P_0 = 1/v` within four standard errors; and at every noise level and every level of the
    tree the network's `P_l` is within `EXPECT["p_gap_max"]` plus four standard errors of
    BP's. The noise at which each class curve crosses halfway between 1 and chance is
    reported.
    """),
    code('''
    from rhm_jax import theory

    chance = 1 / rhm.n_classes
    assert abs(exact_p[-1, 0] - chance) <= 4 * exact_se[-1, 0], "BP at t = 1: chance"
    gap = np.abs(net - exact_p)
    gap_se = np.hypot(net_se, exact_se)
    for level in range(L + 1):
        j = int(np.argmax(gap[:, level]))
        print(f"level {level}: largest |P_l network - P_l BP| = {gap[j, level]:.3f} ± "
              f"{gap_se[j, level]:.3f} at t = {times[j]}")
    assert np.all(gap <= EXPECT["p_gap_max"] + 4 * gap_se), "the network's P_l(t) follows BP's"
    for name, curve in (("network", net[:, 0]), ("bp", exact_p[:, 0])):
        t_half = theory.midpoint_crossing(times, curve, chance, 1.0)
        print(f"{name}: P_0 crosses its midpoint at t = {t_half:.3f}")
    p0_at = int(np.argmin(np.abs(times - 0.5)))
    report(f"P0_network_t{times[p0_at]:.1f}", net[p0_at, 0], net_se[p0_at, 0])
    report(f"P0_bp_t{times[p0_at]:.1f}", exact_p[p0_at, 0], exact_se[p0_at, 0])
    '''),
    md("""
    ## 5. Generating from pure noise

    `compare.network_samples(key, denoiser, n, num_steps)` runs the network's reverse chain
    from `t = 1` (every token masked) to 0. `compare.sample_stats` parses each generated
    sequence back up the tree and reports, per level, the fraction of nodes whose subtree the
    grammar can produce (level 0: the whole sequence is a valid datum), the histogram of the
    parsed classes, and more. Two references: the same sampler with exact BP in the network's
    place (`compare.bp_chain_samples`) — with exact marginals the one-token sampler draws
    exact RHM samples, so every sequence it makes is valid and whatever the network loses
    is the network's own error (a sampler on a time grid, `NUM_STEPS = K`, draws the tokens
    of one step independently and loses validity even with exact marginals) — and exact RHM
    samples (`rhm_jax.sample_data`), valid by construction.

    The figure: fraction of valid nodes per level for the three sources (error bars: one
    standard error over sequences).
    """),
    code('''
    tic = time.time()
    keys = jax.random.split(sample_key, 3)
    generated = {
        "network": compare.network_samples(keys[0], denoiser, N_SAMPLES, NUM_STEPS),
        "BP in the same sampler": compare.bp_chain_samples(keys[1], objective, grammar,
                                                           N_SAMPLES, NUM_STEPS),
        "exact RHM samples": sample_data(keys[2], grammar, N_SAMPLES).tokens,
    }
    stats = {name: compare.sample_stats(grammar, tokens) for name, tokens in generated.items()}
    print(f"generated and parsed {N_SAMPLES} sequences per source in {time.time() - tic:.0f} s")
    print("first network samples:\\n", np.asarray(generated["network"][:3]))

    fig, ax = plt.subplots(figsize=(6, 3.6))
    levels = np.arange(L + 1)
    for k, (name, result) in enumerate(stats.items()):
        ax.bar(levels + (k - 1) * 0.27, result.valid, 0.27, yerr=result.valid_se, label=name,
               color=("tab:blue", "0.6", "k")[k])
    lowest = min(float(result.valid.min()) for result in stats.values())
    ax.set_ylim(max(0.0, lowest - 0.1), 1.01)
    ax.set_xticks(levels)
    ax.set_xlabel("level l (0 = class: the whole sequence is valid)")
    ax.set_ylabel("fraction of valid nodes")
    ax.legend(loc="lower right")
    for name, result in stats.items():
        print(f"{name:>24}: valid per level {np.round(result.valid, 3).tolist()}, "
              f"classes' distance from uniform (TV) {result.class_tv:.3f}, "
              f"distinct {result.distinct:.2f}")
    '''),
    md("""
    How to read it: the tokens (right) are always valid symbols; going up, a node is valid
    only if its whole subtree is, so validity can only fall towards the root. The network's
    sequences are valid most of the time at every level, while the same sampler with exact
    BP marginals is always valid; the gap, largest at the root, is the network's error on
    the long-range constraints.

    The assertions: exact RHM samples are valid at every level (a check of the parser); the
    network's nodes just above the tokens — the rules of the lowest level — are valid at
    least a fraction `EXPECT["rules_valid_min"]` of the time, and whole sequences at least
    `EXPECT["fully_valid_min"]` (each within four standard errors; random tokens would give
    `m·v/v²` and about `P_max/v^d`); and with exact marginals the one-token sampler's
    sequences are all valid.
    """),
    code('''
    network, chain = stats["network"], stats["BP in the same sampler"]
    assert np.all(stats["exact RHM samples"].valid == 1.0), "exact samples are valid"
    assert network.valid[L - 1] + 4 * network.valid_se[L - 1] >= EXPECT["rules_valid_min"]
    assert network.fully_valid + 4 * network.fully_valid_se >= EXPECT["fully_valid_min"]
    if NUM_STEPS is None:  # one token at a time: exact with exact marginals
        assert np.all(chain.valid == 1.0), "BP in the one-token sampler is always valid"
    report("fully_valid_network", network.fully_valid, network.fully_valid_se)
    report("fully_valid_bp_chain", chain.fully_valid, chain.fully_valid_se)
    print(f"notebook ran in {time.time() - start:.0f} s")
    '''),
    md("""
    ## Summary and where next

    * Trained online on `(8, 2, 2, 3)`, the tree U-Net's predictions match exact BP's: a
      small KL per masked token, the same top-1 choice almost everywhere, a loss a little
      above the exact floor `log₂ P_max / d`.
    * Its reverse diffusion has the phase transition of exact denoising: `P_l(t)` follows
      BP's at every level of the tree.
    * Its generated sequences are grammatical most of the time; with exact marginals the
      same sampler always is.
    * With a finite training set instead (`train_size=P`), the network can memorise:
      `compare.agreement(..., train_tokens=...)` then also measures it against the exact
      posterior of the training set, and `compare.sample_stats(..., train_tokens)` counts
      generated copies. `rhm-jax compare RUN_DIR ...` runs every measure on training runs and
      tabulates them against `P`; the README shows such a sweep.
    """),
]


# ------------------------------------------------------------------------------------------
# 04: correlated changes and the susceptibility chi(t)
# ------------------------------------------------------------------------------------------
NOTEBOOK_04 = [
    md("""
    # Correlated changes: the susceptibility of denoising

    `02_phase_transition.ipynb` showed that exact denoising of Random Hierarchy Model data
    has a phase transition: as the noise grows, the class of a reconstruction `x̂0` switches
    from "almost surely the original one" to "random" over a window that narrows with the
    depth `L`. In physics a continuous phase transition comes with correlations over large
    distances.
    Here the analogue: when a reconstruction changes tokens of `x0`, does it change them one by
    one, or in blocks — and how large do the blocks get at the transition?

    The measurement (DESIGN.md §6): from one start `x0`, run many forward–backward
    *trajectories* (noise `x0` to `x_t`, draw `x̂0 ~ p(x0 | x_t)` with exact BP) and record
    the spins `σ_i = [x̂0_i ≠ x0_i]`. Their connected correlation over trajectories,

    `C_ij = ⟨σ_i σ_j⟩ − ⟨σ_i⟩⟨σ_j⟩`,

    averaged over starts, says which tokens change together; the *susceptibility*

    `χ(t) = Σ_ij C_ij / Σ_i C_ii`

    is the typical number of tokens that change together (1 for independent changes). The
    prediction: `χ` peaks at the class transition, and the peak grows with the depth. The
    control: a Gaussian random field, which has correlations but no hierarchy, and no peak.

    This notebook

    1. draws many reconstructions of one datum at the transition and shows the blocks;
    2. measures `χ(t)` at several depths with `rhm_jax.correlations.change_correlations`,
       next to the class reconstruction `P_0(t)`;
    3. shows how the correlations are organised: by distance in the tree, not along the
       sequence;
    4. repeats the measurement with masking noise;
    5. runs the Gaussian-random-field control;
    6. estimates the exponent `ν` from how the transition narrows with depth.

    At full size it takes about three minutes on a 2-core CPU, much of it compiling one
    program per depth and noise process. `rhm-jax chi` runs the same measurement from a shell.
    """),
    SETUP_PROSE,
    INSTALL,
    md("""
    ## Parameters

    `(V, M, S)` fix the RHM (the one of notebook 02, where the transition is at
    `ε* ≈ 0.73`); `DEPTHS` are the depths compared; `N_STARTS` starts `x0` per depth and
    `N_TRAJECTORIES` trajectories per start (the error bars are over starts); `NUM_TIMES`
    noise levels per depth, placed around that depth's transition; `GRF_D` and
    `GRF_EXPONENT` the length and the power spectrum `P_k ∝ k^(−a)` of the control field.
    Smoke mode (on under CI, or with `FORCE_SMOKE`) uses three shallow depths, few
    trajectories and a coarse grid, only to check that everything runs. `report(...)` prints the key numbers as `RESULT`
    lines for `notebooks/check_outputs.py`.
    """),
    code(PARAMETER_HEAD + """
    V = 32  # @param {type:"integer"}
    M = 8  # @param {type:"integer"}
    S = 2  # @param {type:"integer"}
    DEPTHS = "5, 7, 9"  # @param {type:"string"}
    MASKING_DEPTH = 7  # @param {type:"integer"}
    N_STARTS = 64  # @param {type:"integer"}
    N_TRAJECTORIES = 64  # @param {type:"integer"}
    NUM_TIMES = 15  # @param {type:"integer"}
    GRF_D = 256  # @param {type:"integer"}
    GRF_EXPONENT = 2.0  # @param {type:"number"}
    SEED = 0  # @param {type:"integer"}
    if SMOKE:
        DEPTHS, MASKING_DEPTH, N_STARTS, N_TRAJECTORIES, NUM_TIMES, GRF_D = "2, 3, 4", 3, 64, 16, 7, 64
    depths = sorted(int(x) for x in DEPTHS.split(","))
    """ + REPORT + """

    print(f"SMOKE = {SMOKE}: depths {depths}, {N_STARTS} starts x {N_TRAJECTORIES} "
          f"trajectories, {NUM_TIMES} noise levels; masking at L = {MASKING_DEPTH}")
    """),
    md("""
    ## 1. One start, many reconstructions

    First the definitions on one datum, by hand. The ε-process (`t` is `ε`) gives every
    token soft evidence `(1−ε)·[a = x0_i] + ε/v` and samples nothing, so the trajectories of
    a start differ only by the posterior draw: `bp.sample_posterior(key, grammar, loglik,
    num_samples)` draws `N_TRAJECTORIES` whole trees from `p(x0 | x_t)` at once. The noise is
    the mean-field threshold of the smallest depth (`theory.MeanField`, notebook 02), where
    the class is kept about half of the time.

    The figure, left: one row per reconstruction, one column per token; dark = changed
    (`σ_i = 1`); rows with a changed class are on top. Vertical lines mark the subtrees two
    levels above the tokens (groups of `s²` tokens). Right: `C_ij` of this start, from the
    rows on the left.
    """),
    code("""
    import time

    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    from rhm_jax import EpsilonProcess, Masking, RHMConfig, bp, sample_data, sample_grammar, theory
    from rhm_jax.correlations import (change_correlations, grf_change_correlations,
                                      spin_statistics, width_exponent)
    from rhm_jax.experiments import forward_backward

    plt.rcParams.update({"figure.dpi": 80, "font.size": 9})
    start = time.time()
    mf = theory.MeanField(V, M, S)
    half = 0.5 * (1 + 1 / V)  # P_0 halfway between 1 and chance
    root = jax.random.key(SEED)
    configs = {L: RHMConfig(v=V, m=M, s=S, L=L) for L in depths}
    grammars = {L: sample_grammar(jax.random.fold_in(root, L), configs[L]) for L in depths}

    L0 = depths[0]
    cfg0, process0 = configs[L0], EpsilonProcess(configs[L0])
    eps0 = float(mf.eps_at_class_belief(half, L0))
    data_key, draw_key = jax.random.split(jax.random.fold_in(root, 1000))
    x0 = sample_data(data_key, grammars[L0], 1)
    loglik = process0.leaf_log_likelihood(process0.corrupt(data_key, x0.tokens, eps0), eps0)
    draws = bp.sample_posterior(draw_key, grammars[L0], loglik, num_samples=N_TRAJECTORIES)
    spins = np.asarray(draws.tokens[0] != x0.tokens[0])  # (trajectories, d)
    class_changed = np.asarray(draws.classes[0] != x0.classes[0])
    order = np.lexsort((-spins.sum(1), ~class_changed))  # changed class first, then by size

    sigma = spins.astype(np.float64)
    C = sigma.T @ sigma / len(sigma) - np.outer(sigma.mean(0), sigma.mean(0))
    chi_start = C.sum() / np.trace(C)
    print(f"L = {L0}, eps = {eps0:.3f}: class changed in {class_changed.mean():.2f} of "
          f"{N_TRAJECTORIES} reconstructions; {spins.mean():.3f} of the tokens changed; "
          f"chi of this start = {chi_start:.2f}")

    fig, (ax, ax_c) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    ax.imshow(spins[order], aspect="auto", cmap="Greys", interpolation="nearest")
    for edge in range(0, cfg0.d + 1, S**2):
        ax.axvline(edge - 0.5, color="tab:orange", lw=0.6)
    ax.axhline(class_changed.sum() - 0.5, color="tab:red", lw=1.2)
    ax.set_xlabel("token position i")
    ax.set_ylabel("reconstruction (above the red line: class changed)")
    ax.set_title(f"changed tokens, L = {L0}, ε = {eps0:.3f}")
    image = ax_c.imshow(C, cmap="RdBu_r", vmin=-np.abs(C).max(), vmax=np.abs(C).max())
    ax_c.set_title("$C_{ij}$ of this start")
    ax_c.set_xlabel("j")
    ax_c.set_ylabel("i")
    fig.colorbar(image, ax=ax_c, shrink=0.8)
    fig.tight_layout()
    """),
    md("""
    How to read it: a reconstruction does not change scattered tokens. It changes whole
    subtrees — when BP resamples a node high in the tree, every token below it is redrawn
    together — so the changed tokens come in blocks aligned with the orange subtree
    boundaries, and the reconstructions that changed the class (top) changed the most. `C_ij`
    is accordingly block-structured: positive within subtrees, larger within smaller ones.

    `rhm_jax.correlations.spin_statistics` computes the same sums without forming the
    `d × d` matrix — `Σ_ij C_ij` as the variance of `Σ_i σ_i`, the sums over pairs within
    subtrees as variances of subtree sums — which is how the library measures long
    sequences. The assertion checks those identities against the matrix built by hand.
    """),
    code("""
    fast = spin_statistics(jax.numpy.asarray(spins), S, with_matrix=True)
    tree_sums = np.asarray(fast.tree, np.float64)
    assert np.allclose(np.asarray(fast.matrix), C, atol=1e-5), "C_ij"
    assert np.isclose(tree_sums[-1], C.sum(), atol=1e-4) and np.isclose(tree_sums[0], np.trace(C), atol=1e-5)
    same_subtree = np.arange(cfg0.d)[:, None] // S**2 == np.arange(cfg0.d)[None, :] // S**2
    assert np.isclose(tree_sums[2], C[same_subtree].sum(), atol=1e-4), "pairs within s^2-subtrees"
    print(f"sum C_ij = {tree_sums[-1]:.4f}, sum C_ii = {tree_sums[0]:.4f}: "
          f"chi = {tree_sums[-1] / tree_sums[0]:.3f}")
    """),
    md("""
    ## 2. The susceptibility `χ(t)` across the transition

    `change_correlations(key, grammar, process, times, n_starts, n_trajectories)` runs the
    measurement above at every noise level for `n_starts` starts (each with its own data;
    each trajectory with its own noise and posterior draw, shared across noise levels), and
    returns `χ(t)` with its standard error over starts, the changed fraction, `C` by tree
    and by position distance, and `P_0(t)` from the same trajectories. It runs each start's
    trajectories through BP in chunks and shards the starts over devices.

    Each depth gets its own noise grid, `NUM_TIMES` levels centred on its mean-field threshold
    `ε_1/2(L)` and spanning ±2.5 mean-field 10–90% widths of its transition — the deeper
    the tree, the narrower the transition and the grid.

    The figure, top: `χ(ε)` per depth (error bars: one standard error over starts), with each
    depth's measured `P_0` midpoint dotted. Bottom: `P_0(ε)` from the same trajectories.
    """),
    code("""
    sweeps = {}
    for L in depths:
        centre = float(mf.eps_at_class_belief(half, L))
        span = 2.5 * mf.transition_width(L)
        times = np.linspace(max(centre - span, 0.0), min(centre + span, 1.0), NUM_TIMES)
        tic = time.time()
        sweeps[L] = change_correlations(jax.random.fold_in(root, 10 + L), grammars[L],
                                        EpsilonProcess(configs[L]), times, N_STARTS,
                                        N_TRAJECTORIES)
        print(f"L = {L}: {NUM_TIMES} noise levels x {N_STARTS} starts x {N_TRAJECTORIES} "
              f"trajectories in {time.time() - tic:.1f} s")


    def peak(result):
        \"\"\"Index of the largest chi and the P_0 midpoint of a sweep.\"\"\"
        finite = np.isfinite(result.chi)
        i = int(np.flatnonzero(finite)[np.argmax(result.chi[finite])])
        return i, theory.midpoint_crossing(result.times, result.class_kept, 1 / V, 1.0)


    colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(depths)))
    fig, (ax_chi, ax_p0) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                        gridspec_kw={"height_ratios": [1.6, 1]})
    for color, L in zip(colors, depths):
        result = sweeps[L]
        ax_chi.errorbar(result.times, result.chi, result.chi_se, color=color, marker="o", ms=3,
                        label=f"L = {L}")
        ax_p0.plot(result.times, result.class_kept, color=color, marker="o", ms=3)
        midpoint = peak(result)[1]
        for ax in (ax_chi, ax_p0):
            ax.axvline(midpoint, color=color, ls=":", lw=1)
    ax_chi.axhline(1, color="0.6", lw=0.8)
    ax_chi.set_ylabel("χ(ε)")
    ax_chi.legend()
    ax_p0.axhline(1 / V, color="0.6", lw=0.8)
    ax_p0.set_ylabel("$P_0$ (class kept)")
    ax_p0.set_xlabel("noise ε (dotted: $P_0$ midpoint per depth)")
    fig.tight_layout()
    """),
    md("""
    How to read it: away from the transition `χ` is small — at low noise BP changes little,
    and what it changes are single tokens or small subtrees; at high noise the class is
    lost and every reconstruction is close to a fresh datum, whose tokens differ from `x0`'s
    nearly independently. In between, where `P_0` drops, `χ` peaks: there a reconstruction
    either keeps the class or redraws the tree from near the root, so tokens change in
    large blocks. The peak sits at the class transition of each depth and grows with the
    depth, as the blocks can be larger in a larger tree.

    The assertions, per depth: the largest `χ` lies inside the grid, not at its edge;
    its noise level is within two grid steps of the measured `P_0` midpoint; and the
    peak of the deepest tree exceeds that of the shallowest by more than four standard errors.
    """),
    code("""
    chi_max = {}
    for L in depths:
        result = sweeps[L]
        i, midpoint = peak(result)
        step = float(np.diff(result.times).mean())
        chi_max[L] = (result.chi[i], result.chi_se[i])
        print(f"L = {L}: chi peaks at eps = {result.times[i]:.4f} with {result.chi[i]:.2f} ± "
              f"{result.chi_se[i]:.2f}; P_0 midpoint {midpoint:.4f}; grid step {step:.4f}")
        assert 0 < i < len(result.times) - 1, f"L = {L}: chi has an interior peak"
        assert abs(result.times[i] - midpoint) <= 2 * step + 1e-9, f"L = {L}: peak at the transition"
        report(f"chi_max_L{L}", *chi_max[L])
    (low, low_se), (high, high_se) = chi_max[depths[0]], chi_max[depths[-1]]
    assert high - low > 4 * np.hypot(low_se, high_se), "the peak grows with depth"
    """),
    md("""
    ## 3. Correlations are organised by the tree

    Two distances between tokens `i` and `j`: along the sequence, `r = |i − j|`, and in the
    tree, `h` = the number of levels up to their lowest common ancestor (`h = 1`: siblings,
    `h = L`: tokens in different halves of the sequence). `C(r)` and `C(h)` are the means of
    `C_ij` over the `N(r)`, `N(h)` ordered pairs at that distance (`result.position`,
    `result.tree_distance`, `result.position_pairs`, `result.tree_pairs`). The figure shows
    the deepest tree at three noise levels: below, at and above its `χ` peak. Left: `C(r)`.
    Right: how much the pairs at each tree distance add to `χ`, `N(h)·C(h) / Σ_i C_ii` —
    these contributions sum to `χ` (the diagonal, `h = 0`, contributes 1).
    """),
    code("""
    deep = sweeps[depths[-1]]
    i_peak = peak(deep)[0]
    picks = sorted({max(i_peak - 4, 0), i_peak, min(i_peak + 4, len(deep.times) - 1)})
    # what the pairs at each tree distance add to chi: N(h) C(h) / sum_i C_ii (sums to chi)
    contribution = deep.tree_distance * deep.tree_pairs / (deep.tree_distance[:, :1] * deep.tree_pairs[0])
    fig, (ax_r, ax_h) = plt.subplots(1, 2, figsize=(10.5, 3.6))
    r = np.arange(1, deep.position.shape[1])
    h = np.arange(1, depths[-1] + 1)
    for i, color in zip(picks, ("tab:blue", "k", "tab:red")):
        label = f"ε = {deep.times[i]:.3f}" + (" (χ peak)" if i == i_peak else "")
        ax_r.plot(r, deep.position[i, 1:], color=color, lw=1, label=label)
        ax_h.plot(h, contribution[i, 1:], color=color, marker="o", ms=4,
                  label=f"{label}: χ = {deep.chi[i]:.2f}")
    ax_r.set_xscale("log")
    ax_r.set_xlabel("distance along the sequence r")
    ax_r.set_ylabel("C(r)")
    ax_h.set_xlabel("tree distance h (levels to the common ancestor)")
    ax_h.set_ylabel("N(h) C(h) / Σ$_i$ C$_{ii}$")
    for ax in (ax_r, ax_h):
        ax.axhline(0, color="0.6", lw=0.8)
        ax.legend()
    fig.tight_layout()
    """),
    md("""
    How to read it: along the sequence (left), `C(r)` falls off within a few tokens at every
    noise level, with a long, small tail. The tree view (right) shows where `χ` comes from.
    Below and above the transition the contributions fall with `h`: what changes together
    is a small subtree. At the `χ` peak every level of the tree contributes about the same —
    `C(h)` halves with each level up while the number of pairs at distance `h` doubles —
    all the way to the two halves of the sequence (`h = L`). Each added level of the tree
    therefore adds about the same to the peak of `χ`: the peaks of section 2 grow by equal
    steps from `L = 5` to 7 to 9. The hierarchy, not the distance along the sequence,
    organises what changes together.

    The assertions check the estimator's identities on the results, at every depth and noise
    level: the contributions sum to `χ`, and the pair counts `N(h)` and `N(r)` each add up
    to all `d²` ordered pairs. The cell prints `C(h)` at the peak of the deepest tree.
    """),
    code("""
    for L in depths:
        result = sweeps[L]
        total = (result.tree_distance * result.tree_pairs).sum(-1)
        diagonal = result.tree_distance[:, 0] * result.tree_pairs[0]
        ok = np.isfinite(result.chi)
        assert np.allclose(total[ok] / diagonal[ok], result.chi[ok], rtol=1e-4), f"L = {L}"
        d = configs[L].d
        assert result.tree_pairs.sum() == d * d and result.position_pairs.sum() == d * d
    print(f"L = {depths[-1]} at its chi peak: C(h) = {np.round(deep.tree_distance[i_peak], 5).tolist()}")
    """),
    md("""
    ## 4. Masking noise

    The same measurement with masking, the noise of masked diffusion models: each token is
    hidden with probability `t`, and every trajectory has its own mask. There is no mean
    field for masking, so a pilot run finds the transition first: `forward_backward` (notebook
    02) on an even grid gives `P_0(t)`, and the grid of `χ` spans ±2.5 of its 10–90% widths
    around its midpoint.
    """),
    code("""
    cfg_m = RHMConfig(v=V, m=M, s=S, L=MASKING_DEPTH)
    grammar_m = (grammars[MASKING_DEPTH] if MASKING_DEPTH in grammars
                 else sample_grammar(jax.random.fold_in(root, MASKING_DEPTH), cfg_m))
    masking = Masking(cfg_m)
    tic = time.time()
    pilot_times = np.linspace(0.0, 1.0, 41)
    pilot = forward_backward(jax.random.fold_in(root, 2000), grammar_m, masking, pilot_times, 64)
    pilot_p0 = pilot.marginal[0, :, 0]
    centre = theory.midpoint_crossing(pilot_times, pilot_p0, 1 / V, 1.0)
    width = max(theory.curve_width(pilot_times, pilot_p0, 1 / V, 1.0), 0.05)
    times_m = np.linspace(max(centre - 2.5 * width, 0.01), min(centre + 2.5 * width, 1.0), NUM_TIMES)
    masked = change_correlations(jax.random.fold_in(root, 3000), grammar_m, masking, times_m,
                                 N_STARTS, N_TRAJECTORIES)
    print(f"pilot: P_0 midpoint t = {centre:.3f}, width {width:.3f}; chi sweep in "
          f"{time.time() - tic:.1f} s")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.errorbar(masked.times, masked.chi, masked.chi_se, marker="o", ms=3, label="χ(t)")
    ax.set_xlabel("t (fraction of tokens masked)")
    ax.set_ylabel("χ(t)")
    ax2 = ax.twinx()
    ax2.plot(masked.times, masked.class_kept, color="tab:green", marker="s", ms=3, lw=1)
    ax2.set_ylabel("$P_0$", color="tab:green")
    i_m, midpoint_m = peak(masked)
    ax.axvline(midpoint_m, color="tab:green", ls=":", lw=1)
    ax.set_title(f"masking, L = {MASKING_DEPTH} (green: $P_0$, dotted: its midpoint)")
    fig.tight_layout()
    """),
    md("""
    How to read it: the same picture — `χ` peaks where the class is lost. The peak is lower
    than the ε-process's at the same depth: under masking only masked tokens can change, and
    which tokens are masked is drawn independently for every token and trajectory, so part
    of what changes is decided by independent noise.

    The assertions: the peak is interior and within two grid steps of the `P_0` midpoint,
    and it exceeds `χ` at both ends of the grid by more than four standard errors.
    """),
    code("""
    step_m = float(np.diff(masked.times).mean())
    print(f"masking, L = {MASKING_DEPTH}: chi peaks at t = {masked.times[i_m]:.4f} with "
          f"{masked.chi[i_m]:.2f} ± {masked.chi_se[i_m]:.2f}; P_0 midpoint {midpoint_m:.4f}")
    assert 0 < i_m < len(masked.times) - 1, "masking: interior peak"
    assert abs(masked.times[i_m] - midpoint_m) <= 2 * step_m + 1e-9, "masking: peak at the transition"
    for end in (0, -1):
        assert masked.chi[i_m] - masked.chi[end] > 4 * np.hypot(masked.chi_se[i_m], masked.chi_se[end])
    report(f"chi_max_masking_L{MASKING_DEPTH}", masked.chi[i_m], masked.chi_se[i_m])
    """),
    md("""
    ## 5. The control: a Gaussian random field

    Is a peak of `χ` special? Any data with correlations give correlated changes. The
    control has correlations and no hierarchy: a periodic 1-D Gaussian random field `x0` of
    length `GRF_D` with power spectrum `P_k ∝ k^(−a)`, noised by Gaussian diffusion
    `x_t = √(1−t)·x0 + √t·η`, and denoised exactly — the posterior is Gaussian and diagonal in
    Fourier space, sampled mode by mode. The spins are sign changes,
    `σ_i = [sign(x̂0_i) ≠ sign(x0_i)]`. `grf_change_correlations` runs it with the same
    trajectory convention, on an even grid of `t`.
    """),
    code("""
    grf_times = np.linspace(0.05, 1.0, NUM_TIMES)
    control = grf_change_correlations(jax.random.fold_in(root, 4000), GRF_D, GRF_EXPONENT,
                                      grf_times, N_STARTS, N_TRAJECTORIES)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.errorbar(control.times, control.chi, control.chi_se, marker="o", ms=3)
    ax.set_xlabel("t (ᾱ = 1 − t)")
    ax.set_ylabel("χ(t)")
    ax.set_title(f"control: Gaussian random field, d = {GRF_D}, $P_k ∝ k^{{-{GRF_EXPONENT:g}}}$")
    """),
    md("""
    How to read it: `χ` of the field grows steadily with the noise — the more noise, the
    larger the stretches of the field the posterior redraws — and fastest at the end, where
    the posterior forgets `x0` and redraws the whole field. It has no interior maximum:
    without a hierarchy there is no transition for it to mark.

    The assertion: no interior point exceeds the larger of the two end points by more than
    four standard errors.
    """),
    code("""
    ends = max(control.chi[0], control.chi[-1])
    excess = control.chi[1:-1] - ends
    bound = 4 * np.hypot(control.chi_se[1:-1], control.chi_se[[0, -1]][np.argmax(control.chi[[0, -1]])])
    print(f"control: chi from {control.chi[0]:.2f} to {control.chi[-1]:.2f}; largest interior "
          f"excess over the ends {excess.max():.3f}")
    assert np.all(excess <= bound), "the control has no interior peak"
    report("chi_grf_t1", control.chi[-1], control.chi_se[-1])
    """),
    md("""
    ## 6. The exponent `ν`

    Near the transition the correlation length grows as `ξ ~ |ε − ε*|^(−ν)`, and a tree of
    `d = s^L` tokens cuts it off: the transition's width shrinks as `d^(−1/ν)`, i.e. by
    `s^(1/ν)` per level. Mean-field theory predicts `ν = ln s / ln F'(p*)`.
    `width_exponent(depths, widths, s)` fits `ln width` against `L` by least squares and
    returns `ν` with its standard error, here from the 10–90% widths of the measured `P_0`
    curves above (`theory.curve_width`).

    The figure: the measured widths against depth (log scale), the fit (dashed) and the
    mean-field widths (dotted). The assertion: the transition narrows with every added depth.
    The fitted `ν` is printed next to the mean-field `ν` and next to the same fit applied to
    the mean-field widths at the same depths (at small depths the widths have not reached
    their asymptotic scaling yet). Its error is that of a least-squares fit through three
    points, not a statistical error of the widths; `rhm-jax chi` (whose summary's `nu_fit`
    also tries a data collapse of `χ`) is the tool for a careful estimate.
    """),
    code("""
    widths = [theory.curve_width(sweeps[L].times, sweeps[L].class_kept, 1 / V, 1.0) for L in depths]
    nu, nu_se = width_exponent(depths, widths, S)
    mean_field_widths = [mf.transition_width(L) for L in depths]
    for L, w, w_mf in zip(depths, widths, mean_field_widths):
        print(f"L = {L}: P_0 width (90% -> 10%) {w:.4f}  (mean field {w_mf:.4f})")
    print(f"nu = {nu:.3f} ± {nu_se:.3f}; mean field {mf.nu:.3f}, and "
          f"{width_exponent(depths, mean_field_widths, S)[0]:.3f} from its widths at these depths")

    fig, ax = plt.subplots(figsize=(5, 3.6))
    fitted = np.polyfit(depths, np.log(widths), 1)
    L_axis = np.linspace(depths[0], depths[-1], 50)
    ax.semilogy(depths, widths, "o", label="measured")
    ax.semilogy(L_axis, np.exp(np.polyval(fitted, L_axis)), "--", label=f"fit, ν = {nu:.2f}")
    ax.semilogy(depths, mean_field_widths, "k:", label=f"mean field, ν = {mf.nu:.2f}")
    ax.set_xlabel("depth L")
    ax.set_ylabel("width of the class transition in ε")
    ax.legend()
    assert np.all(np.diff(widths) < 0), "the class transition narrows as L grows"
    report("nu_from_widths", nu, nu_se)
    print(f"notebook ran in {time.time() - start:.0f} s")
    """),
    md("""
    ## Summary and where next

    * Reconstructions change tokens in blocks that follow the tree; their typical size, the
      susceptibility `χ`, peaks at the class transition and the peak grows with depth —
      for the ε-process and for masking alike.
    * A Gaussian random field, correlated but not hierarchical, has no such peak.
    * `rhm-jax chi --L 5,7,9 --processes epsilon,masking` runs the measurement from a shell
      (noise grids from pilot runs, results as JSONL, figures, `ν` two ways).
    * `change_correlations(..., denoiser=fn, denoiser_params=params)` measures a trained
      network's reconstructions the same way (`rhm_jax.denoise.experiment_denoiser`, see
      `03_denoiser_vs_bp.ipynb`).
    """),
]


# ------------------------------------------------------------------------------------------
NOTEBOOKS = {"03": ("03_denoiser_vs_bp.ipynb", NOTEBOOK_03),
             "04": ("04_correlated_changes.ipynb", NOTEBOOK_04)}


def _install_cell_source() -> str:
    notebook = json.loads(INSTALL_SOURCE.read_text(encoding="utf-8"))
    first = next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")
    source = first["source"]
    return source if isinstance(source, str) else "".join(source)


def _source(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def build(cells, name: str, previous: dict | None = None) -> tuple[dict, int]:
    """An nbformat-4.5 notebook of ``cells`` (cell ids are stable hashes of the position).

    A code cell whose id and source are those of a code cell of ``previous`` (the notebook
    written before, with its outputs) keeps that cell's outputs, but only if every code cell
    before it kept its outputs too — a changed cell may change what the later ones print.
    Returns the notebook and the number of code cells that kept their outputs.
    """
    install = _install_cell_source()
    metadata = json.loads(INSTALL_SOURCE.read_text(encoding="utf-8"))["metadata"]
    old = {cell.get("id"): cell for cell in (previous or {}).get("cells", [])
           if cell["cell_type"] == "code"}
    out, kept, unchanged = [], 0, True
    for index, (kind, text) in enumerate(cells):
        text = install if text is None else text
        cell_id = hashlib.sha1(f"{name}:{index}".encode()).hexdigest()[:8]
        cell = {"cell_type": kind, "id": cell_id, "metadata": {},
                "source": text.splitlines(keepends=True)}
        if kind == "code":
            before = old.get(cell_id)
            unchanged = unchanged and before is not None and _source(before) == text \
                and before.get("execution_count") is not None
            if unchanged:
                cell.update(execution_count=before["execution_count"], outputs=before["outputs"])
                kept += 1
            else:
                cell.update(execution_count=None, outputs=[])
        out.append(cell)
    return {"cells": out, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}, kept


def main(argv) -> int:
    wanted = argv or sorted(NOTEBOOKS)
    for key in wanted:
        if key not in NOTEBOOKS:
            print(f"unknown notebook {key!r}: choose from {', '.join(sorted(NOTEBOOKS))}",
                  file=sys.stderr)
            return 2
        filename, cells = NOTEBOOKS[key]
        path = NOTEBOOK_DIR / filename
        previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        notebook, kept = build(cells, filename, previous)
        # formatted as nbformat writes it, so check_outputs.py --write leaves no spurious diff
        path.write_text(json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False,
                                   separators=(",", ": ")) + "\n", encoding="utf-8")
        total = sum(kind == "code" for kind, _ in cells)
        print(f"wrote {path.name}: {len(cells)} cells; {kept} of {total} code cells kept "
              "their outputs" + ("" if kept == total else
                                 " (run check_outputs.py --write to execute the rest)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
