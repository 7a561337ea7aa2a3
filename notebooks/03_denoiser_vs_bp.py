# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A trained denoiser next to the exact one
#
# The Bayes-optimal denoiser of Random Hierarchy Model data is known exactly: belief
# propagation (BP) on the tree. A neural network trained with a diffusion loss has that
# denoiser as the optimum of its loss, so on RHM data we can measure against an exact
# reference how close a trained network gets — not only in loss, but in the quantity it
# predicts, in how much of each level of the tree its reconstructions keep, and in the
# sequences it generates (theory page: [trained denoisers](../docs/theory/denoisers.md)).
#
# This notebook
#
# 1. configures a small masked-diffusion experiment: the RHM `(v, m, s, L) = (8, 2, 2, 3)`
#    and a tree-shaped U-Net;
# 2. trains the network on fresh data (online) and draws its held-out loss next to the
#    loss of BP in its place — the floor no network can go below;
# 3. compares the network's predictions with BP's, noise level by noise level:
#    `KL(BP ‖ network)` and how often their most probable token agrees;
# 4. runs the forward–backward experiment of `02_phase_transition.ipynb` with the network
#    in BP's place: the probability `P_l(t)` that a reconstruction keeps level `l` of the
#    tree, network next to BP;
# 5. generates sequences from pure noise and checks, level by level, whether the grammar
#    could have produced them.
#
# At full size it takes two to three minutes on a 2-core CPU, about one of them training. It
# uses the library's public API only:
# `rhm_jax.denoise` (training, loading, sampling) and `rhm_jax.denoise.compare` (the
# measurements); `rhm-jax train` and `rhm-jax compare` do the same from a shell.

# %% [markdown]
# ## Setup
#
# The next cell imports `rhm_jax` and installs it only if that import fails:
#
# * in a clone of the repository (Jupyter started inside it), with `pip install -e` from the clone;
# * anywhere else — Colab in particular — from the Git repository in the form field
#   `REPO_URL`. **Set `REPO_URL` to the address of the rhm_jax repository you opened this
#   notebook from** (the default is a placeholder and stops with an error that says so).
#
# Colab ships `jax` built for its GPUs and TPUs; the cell pins the `jax` and `jaxlib` that are
# already installed, so pip can never replace them (rhm_jax needs `jax >= 0.8`). It ends by
# printing the devices JAX sees: everything below runs on them, CPU, GPU or TPU alike.

# %%
# @title Import rhm_jax (install it only if missing) and list the devices JAX sees
REPO_URL = "https://github.com/OWNER/rhm_jax"  # @param {type:"string"}

import importlib
import importlib.metadata
import pathlib
import site
import subprocess
import sys


def install_rhm_jax(repo_url):
    """pip-installs rhm_jax, editable from the clone around this notebook, else from repo_url.

    The jax and jaxlib already installed (e.g. Colab's GPU/TPU build) are pinned, so pip
    never replaces them.
    """
    here = pathlib.Path.cwd()
    clone = next((folder for folder in (here, *here.parents)
                  if (folder / "pyproject.toml").is_file()
                  and (folder / "rhm_jax" / "__init__.py").is_file()), None)
    if clone is not None:
        target = ["-e", str(clone)]
    elif "OWNER" in repo_url:
        raise RuntimeError(
            f"rhm_jax is not installed and REPO_URL = {repo_url!r} is the placeholder: set it "
            "to the Git URL of the rhm_jax repository in this cell's form, then run the cell again")
    else:
        target = [repo_url if repo_url.startswith("git+") else f"git+{repo_url}"]
    pins = []
    for name in ("jax", "jaxlib"):
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *target, *pins],
                   check=True)
    importlib.invalidate_caches()
    for folder in getattr(site, "getsitepackages", list)():
        site.addsitedir(folder)  # an editable install adds a .pth file: read it in this process


try:
    import rhm_jax
except ImportError:
    install_rhm_jax(REPO_URL)
    import rhm_jax

import jax

print(f"rhm_jax {rhm_jax.__version__}, jax {jax.__version__}; JAX sees {jax.devices()}")

# %% [markdown]
# ## Parameters
#
# The cell below is a form on Colab. `(V, M, S, L)` fix the RHM; `WIDTH` the network's
# channels and `BLOCK_DEPTH` the position-wise MLP layers after each of its tree
# convolutions; `STEPS` × `BATCH_SIZE` the training data seen (fresh data every step);
# `N_DATA` the held-out data per noise level of the comparisons, `N_SAMPLES` the sequences
# generated, `NUM_TIMES` the noise levels `t = 0.1, 0.2, …, 1` and `NUM_STEPS` the
# reverse sampler: `None` (the default for masking) reveals one token per network call,
# at the time the forward process would have masked it — `d` calls, and an exact posterior
# draw when the marginals are exact; an integer `K` instead runs `K` steps on a uniform
# time grid, each drawing the tokens it reveals independently of each other.
# The full-size values are those of the documentation's results pages. Losses and KL divergences are
# in bits (per token, or per masked token) throughout.
#
# `SMOKE` (on under CI, or with `FORCE_SMOKE`) trains a smaller network (width 32, no MLP
# layers, which compiles faster) for 100 steps at a higher learning rate and measures on
# tiny sizes, only to check that everything runs. The claims the notebook asserts hold at
# both sizes, but less can be claimed of a network trained for 100 steps than of one
# trained for 3,000: the thresholds that depend on training are set here, for each size —
# measured values with a margin of several standard errors, and at smoke size still far
# from what an untrained network gives (the printed numbers show how far from them a run
# lands). `report(...)` prints the key numbers as `RESULT` lines for
# `notebooks/check_outputs.py`.

# %%
# @title Parameters
import os


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


FORCE_SMOKE = False  # @param {type:"boolean"}
# CI sets CI=true; the test suite sets RHM_JAX_SMOKE=1. Smoke mode = tiny sizes, seconds.
SMOKE = FORCE_SMOKE or _env_flag("CI") or _env_flag("RHM_JAX_SMOKE")

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
# (KL and loss gap in bits.)
EXPECT = dict(top1_min=0.95, kl_max=0.07, loss_gap_max=0.07, p_gap_max=0.02,
              rules_valid_min=0.95, fully_valid_min=0.8)
if SMOKE:
    WIDTH, BLOCK_DEPTH, LEARNING_RATE = 32, 0, 5e-3
    STEPS, STEPS_PER_CALL, EVAL_EVERY, WARMUP = 100, 25, 25, 5
    N_DATA, N_SAMPLES, NUM_TIMES = 32, 128, 4
    EXPECT = dict(top1_min=0.6, kl_max=1.2, loss_gap_max=1.5, p_gap_max=0.35,
                  rules_valid_min=0.5, fully_valid_min=0.02)


def report(name, value, se=0.0):
    """Prints a key number as `RESULT name = value ± se` (se = 0: exact up to rounding).

    notebooks/check_outputs.py re-runs the notebook and compares these lines with the
    committed ones within their standard errors.
    """
    print(f"RESULT {name} = {float(value):.6g} ± {float(se):.2g}")


print(f"SMOKE = {SMOKE}: {STEPS} training steps of {BATCH_SIZE} data; {N_DATA} held-out "
      f"data x {NUM_TIMES} noise levels, {N_SAMPLES} generated sequences, "
      f"{'one token per reverse step' if NUM_STEPS is None else f'{NUM_STEPS} reverse steps'}")

# %% [markdown]
# ## 1. The experiment
#
# A `TrainConfig` describes a training run completely: the RHM and its grammar seed, the
# loss (which fixes the noise process), the network (`ModelConfig`), the data regime
# (`train_size=None`: a fresh batch from the grammar at every step), the optimiser and the
# seeds. Here the loss is `masked_elbo`, the continuous-time NELBO of masked diffusion
# (MD4/MDLM): a token is masked with probability `t`, and the network predicts the masked
# tokens from the visible ones. Its optimum is exact BP's leaf marginal given the visible
# tokens, the same at every `t` — so the network gets no time input.
#
# The network is the tree U-Net: each down-block maps the `s` children of every node to the
# node (a convolution with filter = stride = `s`), so its `l`-th level has one position per
# node of level `l` of the RHM tree; the up-blocks mirror it with skip connections.
#
# For masking the floor of the loss is known in closed form: with exact conditionals the
# NELBO of a sequence is `−log p(x0)`, and RHM data are uniform over the `P_max` sequences
# the grammar can produce, so the floor is `log₂ P_max / d` bits per token.

# %%
import json
import tempfile
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

from rhm_jax import sample_data
from rhm_jax.denoise import Denoiser, ModelConfig, TrainConfig, build_model, load_run, train
from rhm_jax.denoise import compare

plt.rcParams.update({"figure.dpi": 80, "font.size": 10})
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

# %% [markdown]
# ## 2. Training
#
# `train(config, run_dir)` runs the experiment into a run folder: `config.json`,
# `metrics.jsonl` (the training loss, and at every evaluation the held-out loss in bits per
# token with its standard error, next to the same loss with BP in the network's place) and
# orbax checkpoints of the whole training state — from which `load_run(run_dir)` rebuilds
# the network, its grammar and its objective. Steps run `STEPS_PER_CALL` at a time inside
# one compiled `lax.scan`, and every random number of step `k` comes from `fold_in(seed, k)`,
# so a run resumed from a checkpoint ends bit-identical to an uninterrupted one. The folder
# here is a temporary one; `rhm-jax train` does the same from a shell.
#
# The figure: the held-out NELBO (error bars: one standard error over the held-out data)
# against the number of training sequences seen, the BP floor (dashed; measured on the
# same data and noise) and `log₂ P_max / d` (dotted). Note that `P_max = 1024` here: the
# online network sees every sequence of the grammar many times, so "held-out" means only
# "not in the batch the step used". What is tested is whether it learns the conditionals
# of the distribution, the quantity BP computes exactly.

# %%
run_dir = tempfile.mkdtemp(prefix="rhm_jax_denoiser_")
tic = time.time()
train(config, run_dir, progress=False, plot=False)
print(f"trained {STEPS} steps in {time.time() - tic:.0f} s")

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
ax.legend();

# %% [markdown]
# How to read it: the loss falls fast at first — the network learns which tokens the
# grammar allows at all — then slowly approaches the floor as it learns the longer-range
# constraints of the upper levels of the tree.
#
# The assertions: training lowered the held-out loss (by more than four standard errors of
# the difference); and BP's NELBO equals `log₂ P_max / d` within four standard errors — the
# exact property of the masked-diffusion loss stated above, checked on the library's loss.
# The network is then loaded back from its checkpoint (`load_run`), which must hold the
# last step and the run's configuration.

# %%
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

# %% [markdown]
# ## 3. The network's predictions against BP's, noise level by noise level
#
# `compare.agreement` noises held-out data at each time `t` and compares, token by token,
# the network's estimate of the quantity its loss targets with BP's exact value of it, on
# the same noisy inputs. For masking that is `p(x0_i | visible tokens)` on the masked
# tokens (the loss ignores the others). It reports `KL(BP ‖ network)` per masked token (in
# nats; the cell divides by `ln 2` to give bits) and the top-1 agreement: the fraction of
# masked tokens where the network's most probable symbol is one of BP's most probable ones
# (BP's posterior often has exact ties).
# Errors are standard errors over data.
#
# `compare.network_predictor(denoiser)` wraps the network for these measures (and
# `compare.bp_predictor(objective, grammar)` would put BP itself in its place: KL 0 and
# top-1 agreement 1, the test suite's check of the measurement). Two networks go through
# the same code with the same key, hence the same data and noise: the trained one and the
# same network before training (`build_model` with the run's seed) — what "no agreement"
# looks like.
#
# Also in this cell: `compare.compare_losses`, the held-out loss of the network next to the
# loss with BP in its place, paired on the same data, times and noise — a sharper
# measure of the gap than the two curves above (converted to bits per token).

# %%
BITS = 1 / np.log(2)  # nats -> bits
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
    ax_kl.errorbar(result.times, result.kl * BITS, result.kl_se * BITS, marker="o", ms=3,
                   color=color,
                   label=name)
    ax_top.errorbar(result.times, result.top1, result.top1_se, marker="o", ms=3,
                    color=color, label=name)
ax_kl.set_yscale("log")
ax_kl.set_ylabel("KL(BP ‖ network), bits per masked token")
ax_top.set_ylabel("top-1 agreement with BP")
ax_top.set_ylim(-0.02, 1.02)
for ax in (ax_kl, ax_top):
    ax.set_xlabel("t (fraction of tokens masked)")
    ax.legend()
fig.tight_layout()


# %% [markdown]
# How to read it: the trained network's KL is fifty to several hundred times smaller than
# the untrained network's at every noise level, and its top-1 choice is BP's almost
# everywhere (the untrained network's on 20–40% of the masked tokens). The KL is smallest
# at the ends: at small `t` a masked token's neighbours are mostly visible and pin it
# down, and at `t = 1` nothing is visible and the answer is each token's prior marginal.
# It is largest at intermediate `t`, where a masked token is constrained only through the
# upper levels of the tree — the long-range inference that BP does by passing messages up
# and down the tree, and that the network has to learn.
#
# The assertions: training improved the mean top-1 agreement by more than four standard
# errors; the trained network's mean top-1 agreement is at least `EXPECT["top1_min"]` and
# its mean KL at most `EXPECT["kl_max"]` (each within four standard errors); and its loss
# lies above BP's (the floor: the paired gap is not negative beyond four standard errors)
# by at most `EXPECT["loss_gap_max"]` bits per token.

# %%
def mean_over_times(values, errors):
    """Mean over the noise levels and its standard error (levels use independent noise)."""
    return values.mean(), float(np.sqrt(np.sum(errors**2))) / len(values)


trained, before = agree["trained network"], agree["untrained network"]
top1, top1_se = mean_over_times(trained.top1, trained.top1_se)
top1_before, top1_before_se = mean_over_times(before.top1, before.top1_se)
kl, kl_se = mean_over_times(trained.kl * BITS, trained.kl_se * BITS)
loss_gap, loss_gap_se = losses.gap * BITS, losses.gap_se * BITS
half = int(np.argmin(np.abs(trained.times - 0.5)))
print(f"mean over t: top-1 {top1:.4f} ± {top1_se:.4f} (untrained {top1_before:.4f}), "
      f"KL {kl:.4f} ± {kl_se:.4f} bits per masked token")
print(f"at t = {trained.times[half]}: top-1 {trained.top1[half]:.4f} ± "
      f"{trained.top1_se[half]:.4f}, KL {trained.kl[half] * BITS:.4f} ± "
      f"{trained.kl_se[half] * BITS:.4f} bits")
print(f"loss: network {losses.network * BITS:.4f} ± {losses.network_se * BITS:.4f}, BP "
      f"{losses.bp * BITS:.4f} ± {losses.bp_se * BITS:.4f}, paired gap {loss_gap:.4f} ± "
      f"{loss_gap_se:.4f} bits per token")
assert top1 - top1_before > 4 * np.hypot(top1_se, top1_before_se), "training helps"
assert top1 + 4 * top1_se >= EXPECT["top1_min"], "top-1 agreement with BP"
assert kl - 4 * kl_se <= EXPECT["kl_max"], "KL(BP || network)"
assert loss_gap >= -4 * loss_gap_se, "no network beats BP's loss"
assert loss_gap - 4 * loss_gap_se <= EXPECT["loss_gap_max"], "loss near the floor"
report("top1_mean", top1, top1_se)
report("kl_mean_bits", kl, kl_se)
report(f"top1_t{trained.times[half]:.1f}", trained.top1[half], trained.top1_se[half])
report("loss_gap_bits_per_token", loss_gap, loss_gap_se)

# %% [markdown]
# ## 4. Reconstructions level by level, network next to BP
#
# `02_phase_transition.ipynb` showed that exact denoising keeps the class (the root of the
# tree) almost surely up to a threshold noise and loses it beyond, a drop that becomes a
# sharp phase transition only as the depth grows, while the tokens fade smoothly. The tree
# here has `L = 3` levels, too shallow for a sharp drop; what can be checked is whether the
# network's reconstructions keep each level of the tree as often as exact denoising does.
#
# `compare.forward_backward_pair(key, denoiser, grammar, times, n_data, num_steps)` runs
# the forward–backward experiment twice through one code path
# (`rhm_jax.experiments.forward_backward`) with the same data and noise: once with exact BP
# posterior samples, once with the network's reverse diffusion from `x_t` (one masked
# token revealed per network call, drawn from the network's prediction for it). The
# reconstruction `x̂0` is parsed back up the tree, and `P_l(t)` is the fraction of level-`l`
# nodes of `x0` it keeps; a node whose subtree the grammar cannot produce counts as changed.
#
# Left: `P_l(t)` per level, the network solid and BP dashed (error bars: one standard
# error over data). Right: the difference network − BP per level.

# %%
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
ax.plot([], [], "-", color="0.3", lw=1.2, label="network")
ax.plot([], [], "--", color="0.3", lw=1, label="exact BP")
for a in (ax, ax_diff):
    a.set_xlabel("t (fraction of tokens masked)")
    a.legend(fontsize=9)
fig.tight_layout()

# %% [markdown]
# How to read it: at this depth every level decays smoothly from 1 towards chance as more
# tokens are masked — the class fastest, the other levels close together — with no sharp
# transition. The trained network's curves lie on BP's at every level: the class falls at
# the same noise, the tokens fade at the same rate, so the network's reverse diffusion keeps
# as much of each level of the tree as exact denoising does. The differences scatter around
# zero within about two standard errors; the largest, for the class at high noise, are where
# the network keeps slightly less than BP (the differences of different levels are
# correlated: they come from the same reconstructions). Only the network differs between the
# curves: with exact marginals the one-token sampler is itself an exact posterior draw. BP's
# curve is its marginal estimator (the posterior probability of the true symbol, averaged
# over data): the same expectation as counting kept symbols in posterior samples, with less
# variance.
#
# The assertions: at `t = 1` nothing is visible and BP keeps the class only by chance,
# `P_0 = 1/v` within four standard errors; and at every noise level and every level of the
# tree the network's `P_l` is within `EXPECT["p_gap_max"]` plus four standard errors of
# BP's. The noise at which each class curve crosses halfway between 1 and chance is
# reported.

# %%
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

# %% [markdown]
# ## 5. Generating from pure noise
#
# `compare.network_samples(key, denoiser, n, num_steps)` runs the network's reverse chain
# from `t = 1` (every token masked) to 0. `compare.sample_stats` parses each generated
# sequence back up the tree and reports, per level, the fraction of nodes whose subtree the
# grammar can produce (level 0: the whole sequence is a valid datum), the histogram of the
# parsed classes, and more. Two references: the same sampler with exact BP in the network's
# place (`compare.bp_chain_samples`) — with exact marginals the one-token sampler draws
# exact RHM samples, so every sequence it makes is valid and whatever the network loses
# is the network's own error (a sampler on a time grid, `NUM_STEPS = K`, draws the tokens
# of one step independently and loses validity even with exact marginals) — and exact RHM
# samples (`rhm_jax.sample_data`), valid by construction.
#
# The figure: fraction of valid nodes per level for the three sources (error bars: one
# standard error over sequences).

# %%
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
print("first network samples:\n", np.asarray(generated["network"][:3]))

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

# %% [markdown]
# How to read it: the tokens (right) are always valid symbols; going up, a node is valid
# only if its whole subtree is, so validity can only fall towards the root. The network's
# sequences are valid most of the time at every level, while the same sampler with exact
# BP marginals is always valid; the gap, largest at the root, is the network's error on
# the long-range constraints.
#
# The assertions: exact RHM samples are valid at every level (a check of the parser); the
# network's nodes just above the tokens — the rules of the lowest level — are valid at
# least a fraction `EXPECT["rules_valid_min"]` of the time, and whole sequences at least
# `EXPECT["fully_valid_min"]` (each within four standard errors; random tokens would give
# `m·v/v²` and about `P_max/v^d`); and with exact marginals the one-token sampler's
# sequences are all valid.

# %%
network, chain = stats["network"], stats["BP in the same sampler"]
assert np.all(stats["exact RHM samples"].valid == 1.0), "exact samples are valid"
assert network.valid[L - 1] + 4 * network.valid_se[L - 1] >= EXPECT["rules_valid_min"]
assert network.fully_valid + 4 * network.fully_valid_se >= EXPECT["fully_valid_min"]
if NUM_STEPS is None:  # one token at a time: exact with exact marginals
    assert np.all(chain.valid == 1.0), "BP in the one-token sampler is always valid"
report("fully_valid_network", network.fully_valid, network.fully_valid_se)
report("fully_valid_bp_chain", chain.fully_valid, chain.fully_valid_se)
print(f"notebook ran in {time.time() - start:.0f} s")

# %% [markdown]
# ## Summary and where next
#
# * Trained online on `(8, 2, 2, 3)`, the tree U-Net's predictions match exact BP's: a
#   small KL per masked token, the same top-1 choice almost everywhere, a loss a little
#   above the exact floor `log₂ P_max / d`.
# * Its reverse diffusion keeps each level of the tree as exact denoising does: `P_l(t)`
#   (at this depth a smooth decay at every level, not yet a sharp transition) follows
#   BP's at every level of the tree.
# * Its generated sequences are grammatical most of the time; with exact marginals the
#   same sampler always is.
# * With a finite training set instead (`train_size=P`), the network can memorise:
#   `compare.agreement(..., train_tokens=...)` then also measures it against the exact
#   posterior of the training set, and `compare.sample_stats(..., train_tokens)` counts
#   generated copies. `rhm-jax compare RUN_DIR ...` runs every measure on training runs and
#   tabulates them against `P`; the documentation's comparison results show such a sweep.
