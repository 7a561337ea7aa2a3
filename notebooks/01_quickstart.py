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
# # Quickstart: the Random Hierarchy Model, its noises and exact denoising
#
# The **Random Hierarchy Model** (RHM) generates data the way a context-free grammar does: a
# class at the root of a tree is rewritten, level after level, by randomly chosen production
# rules until a sequence of visible tokens remains. Because the tree is known, the
# Bayes-optimal denoiser of RHM data is computable exactly, by belief propagation (BP).
#
# This notebook walks through the library once, top to bottom:
#
# 1. a configuration, its grammar and some data — and one datum's tree, drawn level by level;
# 2. the four noise processes of diffusion models applied to that datum;
# 3. exact BP: the posterior of every level of the tree given the noisy tokens;
# 4. a posterior sample of the whole tree next to the original (exact backward diffusion in
#    one shot);
# 5. the class posterior as the noise grows.
#
# At full size it runs in under a minute on a 2-core CPU. The notation is that of the
# project's theory pages, starting with [the model](../docs/theory/model.md) (level 0 is the
# root, level `L` the tokens).

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
# The cell below is a form on Colab. `(V, M, S, L)` are the model's vocabulary size, rules per
# symbol, branching factor and depth; the other fields are sample sizes. `SMOKE` switches to
# tiny sizes: it is on when the `CI` or `RHM_JAX_SMOKE` environment variable is set (that is how
# the test suite runs this notebook in seconds), or when you tick `FORCE_SMOKE`.
#
# `report(...)` prints the notebook's key numbers as `RESULT name = value ± standard error`
# lines; `notebooks/check_outputs.py` re-runs the notebook and checks that the committed
# outputs still match them.

# %%
# @title Parameters
import os


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


FORCE_SMOKE = False  # @param {type:"boolean"}
# CI sets CI=true; the test suite sets RHM_JAX_SMOKE=1. Smoke mode = tiny sizes, seconds.
SMOKE = FORCE_SMOKE or _env_flag("CI") or _env_flag("RHM_JAX_SMOKE")

V = 32  # @param {type:"integer"}
M = 8  # @param {type:"integer"}
S = 2  # @param {type:"integer"}
L = 4  # @param {type:"integer"}
SEED = 0  # @param {type:"integer"}
N_DATA = 2048  # @param {type:"integer"}
NUM_TIMES = 21  # @param {type:"integer"}
NUM_POSTERIOR_SAMPLES = 4096  # @param {type:"integer"}
if SMOKE:
    N_DATA, NUM_TIMES, NUM_POSTERIOR_SAMPLES = 64, 5, 256


def report(name, value, se=0.0):
    """Prints a key number as `RESULT name = value ± se` (se = 0: exact up to rounding).

    notebooks/check_outputs.py re-runs the notebook and compares these lines with the
    committed ones within their standard errors.
    """
    print(f"RESULT {name} = {float(value):.6g} ± {float(se):.2g}")


print(f"SMOKE = {SMOKE}: {N_DATA} data, {NUM_TIMES} noise levels, "
      f"{NUM_POSTERIOR_SAMPLES} posterior samples")

# %% [markdown]
# ## 1. A model: configuration, grammar, data
#
# An `RHMConfig` fixes the shape of the model. It is validated when built (each level needs
# `max(n_classes, v)·m` distinct `s`-tuples, so `m·v <= v**s`) and is hashable, so jitted
# functions take it as a static argument. `sample_grammar` draws the rules: at every level each
# symbol gets `m` of the `v**s` possible `s`-tuples, all distinct within the level. No tuple
# belongs to two symbols, so every valid sequence has exactly one tree — the grammar is
# unambiguous.
#
# The next cell builds the model and prints, for each level, the rules of symbol 0.

# %%
import time

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from rhm_jax import (EpsilonProcess, Gaussian, Masking, RHMConfig, UniformSubstitution, bp,
                     digits_from_tokens, sample_data, sample_grammar)

plt.rcParams.update({"figure.dpi": 80, "font.size": 10})
start = time.time()

cfg = RHMConfig(v=V, m=M, s=S, L=L)
print(cfg)
print(f"d = s**L = {cfg.d} tokens per datum; {cfg.num_internal_nodes} internal nodes; "
      f"P_max = {cfg.P_max:.3e} distinct data")

grammar_key, data_key, noise_key, bp_key, sample_key, sweep_key = jax.random.split(
    jax.random.key(SEED), 6)
grammar = sample_grammar(grammar_key, cfg)
for level, rules in enumerate(grammar.rules):
    print(f"level {level} -> {level + 1}: rules array {tuple(rules.shape)}; symbol 0 -> "
          f"{[tuple(pair) for pair in np.asarray(rules[0]).tolist()]}")

# %% [markdown]
# `sample_data` draws data i.i.d.: a uniform class, then a uniform rule at every node.
# With `return_latents=True` it also returns the symbols of every level (`data.latents[l]` has
# shape `(n, s**l)`), which the experiments compare reconstructions with.
#
# The assertion checks the unambiguity just stated: parsing each token sequence back up the
# tree (`digits_from_tokens`) succeeds and recovers the class it was generated from.

# %%
data = sample_data(data_key, grammar, N_DATA, return_latents=True)
print("tokens of the first three data:\n", np.asarray(data.tokens[:3]))
print("their classes:", np.asarray(data.classes[:3]))

digits, valid = digits_from_tokens(grammar, data.tokens)
assert bool(valid.all()), "every sampled sequence must parse"
assert np.array_equal(np.asarray(digits[:, 0]), np.asarray(data.classes)), "parse gives the class"
print(f"all {N_DATA} data parse back to their own class")


# %% [markdown]
# ### One datum's tree
#
# The helper `draw_tree` draws the latent symbols of one datum with the levels as rows: the
# class on top, the visible tokens at the bottom, each node joined to its `s` children. It
# can shade some nodes (used later to mark where a reconstruction differs from the original)
# and mark hidden tokens. The figure shows the first datum: read it from the top — the class
# is rewritten into `s` symbols, each of those into `s` more, down to the `d` tokens.

# %%
def draw_tree(ax, latents, config, *, title="", shaded=None, hidden=None):
    """Draws one datum's tree: level l is row l from the top, symbols in boxes.

    latents: one int array of s**l symbols per level l = 0..L.
    shaded: optional list of bool arrays (one per level): nodes drawn in orange.
    hidden: optional bool array over the d tokens: tokens drawn grey with a dashed box.
    """
    depth, width = config.L, config.d
    for level, symbols in enumerate(latents):
        symbols = np.asarray(symbols)
        span = width / len(symbols)  # tokens under each node of this level
        for j, symbol in enumerate(symbols):
            x, y = (j + 0.5) * span, depth - level
            if level < depth:
                for k in range(config.s):
                    x_child = (j * config.s + k + 0.5) * span / config.s
                    ax.plot([x, x_child], [y, y - 1], color="0.7", lw=0.8, zorder=1)
            face, edge, style = "white", "0.3", "solid"
            if shaded is not None and np.asarray(shaded[level])[j]:
                face = "tab:orange"
            if hidden is not None and level == depth and np.asarray(hidden)[j]:
                face, edge, style = "0.88", "0.5", "dashed"
            ax.text(x, y, str(int(symbol)), ha="center", va="center", fontsize=8, zorder=2,
                    bbox=dict(boxstyle="round,pad=0.3", fc=face, ec=edge, ls=style))
    ax.set_xlim(0, width)
    ax.set_ylim(-0.6, depth + 0.6)
    ax.set_xticks([])
    ax.set_yticks(range(depth + 1))
    ax.set_yticklabels([f"level {depth - y}" for y in range(depth + 1)])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title)


original = [np.asarray(level[0]) for level in data.latents]  # the first datum, every level
fig, ax = plt.subplots(figsize=(9, 2.8))
draw_tree(ax, original, cfg, title=f"datum 0: class {int(data.classes[0])}, {cfg.d} tokens")

# %% [markdown]
# ## 2. Four ways to add noise
#
# Diffusion models corrupt data with a forward process indexed by a time `t ∈ [0, 1]`. The
# library has four, with one interface: `corrupt(key, tokens, t)` draws the noisy observation
# and `leaf_log_likelihood(observation, t)` turns it into `log p(observation_i | x0_i = a)` for
# every token `i` and symbol `a` — the only thing BP needs to know about the noise.
#
# | process | what happens to a token | default schedule |
# |---|---|---|
# | `EpsilonProcess` | nothing sampled: the evidence itself is soft, `(1-ε)·[a = x0_i] + ε/v` (`t` *is* `ε`) | — |
# | `Masking` | hidden (becomes the mask symbol `v`) with probability `1 - α_t` | `α_t = 1 - t` |
# | `UniformSubstitution` | replaced by a uniform random symbol with probability `1 - ᾱ_t` | cosine |
# | `Gaussian` | one-hot vector plus Gaussian noise: `sqrt(ᾱ_t)·e_{x0} + sqrt(1-ᾱ_t)·η` | DDPM linear-β |
#
# The ε-process is the theorist's device (its mean-field theory is in notebook 02); the other
# three are what masked, discrete and continuous diffusion models use (theory page:
# [noise processes](../docs/theory/noise.md)). The next cell noises the
# data with each process — at `t = 0.5`, except the Gaussian at `t = 0.1`: the DDPM schedule
# destroys information much earlier in `t` (at `t = 0.5` almost nothing is left) — and shows,
# for the datum above and every token position (columns), the
# evidence about the original symbol from that token's own observation alone — the normalised
# leaf likelihood, without the tree. Dark = probable; red circles mark the true tokens.

# %%
processes = {"ε-process": EpsilonProcess(cfg), "masking": Masking(cfg),
             "uniform substitution": UniformSubstitution(cfg), "Gaussian": Gaussian(cfg)}
T_SHOW = {"ε-process": 0.5, "masking": 0.5, "uniform substitution": 0.5, "Gaussian": 0.1}
# every datum noised by each process (the figure shows the first; the checks below use all)
observations = {name: process.corrupt(key, data.tokens, T_SHOW[name])
                for (name, process), key in zip(processes.items(), jax.random.split(noise_key, 4))}
x0 = np.asarray(data.tokens[0])

fig, axes = plt.subplots(len(processes), 1, figsize=(8, 8.5), sharex=True)
for ax, (name, process) in zip(axes, processes.items()):
    observation = observations[name][:1]
    t = T_SHOW[name]
    evidence = jax.nn.softmax(process.leaf_log_likelihood(observation, t)[0], axis=-1)
    ax.imshow(np.asarray(evidence).T, aspect="auto", origin="lower", cmap="Greys",
              vmin=0, vmax=1, interpolation="nearest")
    ax.scatter(np.arange(cfg.d), x0, s=40, facecolors="none", edgecolors="tab:red", lw=1.2)
    obs = np.asarray(observation[0])
    if name == "ε-process":
        detail = f"ε = {t}: the observation is the clean tokens, with weight 1-ε on them"
    elif name == "masking":
        detail = (f"t = {t}, α_t = {float(process.schedule.alpha_bar(t)):.2f}: "
                  f"{int((obs == process.mask_token).sum())} of {cfg.d} tokens masked")
    elif name == "uniform substitution":
        detail = (f"t = {t}, ᾱ_t = {float(process.schedule.alpha_bar(t)):.2f}: "
                  f"{int((obs != x0).sum())} of {cfg.d} tokens changed")
    else:
        detail = (f"t = {t}, ᾱ_t = {float(process.schedule.alpha_bar(t)):.2f}: the largest entry of "
                  f"x_t is the true token at {int((obs.argmax(-1) == x0).sum())} of {cfg.d} "
                  "positions")
    ax.set_title(f"{name} — {detail}", fontsize=9)
    ax.set_ylabel("symbol a")
axes[-1].set_xlabel("token position i")
fig.tight_layout()

# %% [markdown]
# How to read it: the ε-process keeps a faint copy of the truth at every position; masking
# leaves some tokens certain (a black cell on the red circle) and the others blank; uniform
# substitution is certain-looking but sometimes wrong (a dark cell away from the red circle);
# the Gaussian gives graded evidence that is usually, not always, largest at the true symbol. A sequence's tree ties its tokens together, which BP exploits next.
#
# First, a check that each forward process does what its schedule says, over all the tokens
# of all the data: masking keeps a fraction `α_t` of tokens, uniform substitution leaves a token
# unchanged with probability `ᾱ_t + (1-ᾱ_t)/v`, and the Gaussian's coordinate at the true
# symbol has mean `sqrt(ᾱ_t)`. Tolerances are five binomial (or Gaussian) standard errors.

# %%
tokens = np.asarray(data.tokens)
count = tokens.size
checks = []

masking = processes["masking"]
alpha = float(masking.schedule.alpha_bar(T_SHOW["masking"]))
kept = np.asarray(observations["masking"]) != masking.mask_token
checks.append(("masking_kept_fraction", kept.mean(), alpha, np.sqrt(alpha * (1 - alpha) / count)))

uniform = processes["uniform substitution"]
alpha_bar = float(uniform.schedule.alpha_bar(T_SHOW["uniform substitution"]))
same = np.asarray(observations["uniform substitution"]) == tokens
p_same = alpha_bar + (1 - alpha_bar) / cfg.v
checks.append(("uniform_unchanged_fraction", same.mean(), p_same,
               np.sqrt(p_same * (1 - p_same) / count)))

gaussian = processes["Gaussian"]
alpha_bar = float(gaussian.schedule.alpha_bar(T_SHOW["Gaussian"]))
x_t = np.asarray(observations["Gaussian"])
at_truth = np.take_along_axis(x_t, tokens[..., None], axis=-1)
checks.append(("gaussian_mean_at_true_symbol", at_truth.mean(), np.sqrt(alpha_bar),
               np.sqrt((1 - alpha_bar) / count)))

for name, measured, expected, se in checks:
    print(f"{name}: measured {measured:.4f}, expected {expected:.4f} (se {se:.4f})")
    assert abs(measured - expected) <= 5 * se, name
    report(name, measured, se)

# %% [markdown]
# ## 3. Exact BP: the posterior of every level
#
# Given leaf log-likelihoods, `bp.marginals(grammar, loglik)` runs sum-product belief
# propagation up and down the tree and returns, for every level `l`, the exact posterior
# marginals `μ_l` of shape `(n, s**l, n_l)`: for each node, the probability of each symbol
# given the whole noisy sequence. `μ_0[:, 0]` is the class posterior, `μ_L` the denoised
# tokens `E[onehot(x0) | x_t]` (theory page: [belief
# propagation](../docs/theory/belief_propagation.md)).
#
# The next cell masks the datum at `t = 0.35` and shows `μ_l` for every level as a heatmap
# (one column per node, one row per symbol, dark = probable; red circles = the true
# symbols). The printed observation shows masked tokens as `_`.

# %%
T_BP = 0.35
masking = processes["masking"]
x_t = masking.corrupt(bp_key, x0[None], T_BP)
hidden = np.asarray(x_t[0]) == masking.mask_token
leaf_loglik = masking.leaf_log_likelihood(x_t, T_BP)
posterior = bp.marginals(grammar, leaf_loglik)
print("observation:", " ".join("_" if h else str(int(a)) for h, a in zip(hidden, np.asarray(x_t[0]))),
      f"({int(hidden.sum())} of {cfg.d} masked)")

fig, axes = plt.subplots(1, L + 1, figsize=(11, 3.3),
                         gridspec_kw={"width_ratios": [max(S**level, 2) for level in range(L + 1)]})
for level, ax in enumerate(axes):
    mu = np.asarray(posterior.marginals[level][0])  # (nodes, symbols)
    ax.imshow(mu.T, aspect="auto", origin="lower", cmap="Greys", vmin=0, vmax=1,
              interpolation="nearest")
    ax.scatter(np.arange(mu.shape[0]), original[level], s=30, facecolors="none",
               edgecolors="tab:red", lw=1.1)
    ax.set_title("class" if level == 0 else f"level {level}")
    ax.set_xticks([])
    if level:
        ax.set_yticks([])
axes[0].set_ylabel("symbol")
fig.suptitle(f"posterior marginals μ_l given the datum masked at t = {T_BP}", y=1.07);

# %% [markdown]
# How to read it: a visible token is known (a black cell on its circle); a pair of visible
# siblings fixes their parent, because no tuple belongs to two symbols; a masked token's
# posterior spreads over the symbols that the rules allow next to its sibling and under the
# possible parents. Going up, the uncertainty compounds: with `m = 8` synonyms per symbol a
# node's children say only partly which symbol it is, so even with most tokens visible the
# class can remain uncertain — the posterior then spreads over the few classes that can still
# generate what is seen.
#
# The assertions check what exact BP must satisfy here: every marginal is a probability vector;
# masking hides the truth but never contradicts it, so the true symbol keeps a positive probability at every node;
# and the tokens that stayed visible are known exactly.

# %%
for level, mu in enumerate(posterior.marginals):
    mu = np.asarray(mu[0], np.float64)
    assert np.all(mu >= 0) and np.allclose(mu.sum(-1), 1.0, atol=1e-5), f"level {level} normalised"
    truth = mu[np.arange(mu.shape[0]), original[level]]
    assert np.all(truth > 0), f"level {level}: the true symbols keep positive probability"
tokens_mu = np.asarray(posterior.marginals[-1][0])
assert np.allclose(tokens_mu[~hidden, original[-1][~hidden]], 1.0, atol=1e-5), "visible tokens known"
class_posterior = np.asarray(posterior.marginals[0][0, 0])
print(f"posterior of the true class {original[0][0]}: {class_posterior[original[0][0]]:.4f}; "
      f"log p(observation) = {float(posterior.log_evidence[0]):.3f}")

# %% [markdown]
# ## 4. A posterior sample next to the original
#
# `bp.sample_posterior(key, grammar, loglik, num_samples)` draws whole trees from
# `p(tree | x_t)`: the class from its posterior, then, going down, a rule at every node given
# the evidence below it. For the RHM this is exact backward diffusion from time `t` in one
# shot. Left: the original tree, with the tokens the sampler did not see dashed. Right: one
# posterior sample; orange marks the nodes where it differs from the original. It can differ
# only where the evidence leaves room — at masked tokens and at the nodes above them — and
# every change is consistent with the rules: the sample is a datum the grammar can generate.

# %%
many = bp.sample_posterior(sample_key, grammar, leaf_loglik, num_samples=NUM_POSTERIOR_SAMPLES)
sample = [np.asarray(level[0, 0]) for level in many.latents]  # the first of many draws
changed = [s != o for s, o in zip(sample, original)]

fig, (ax_left, ax_right) = plt.subplots(1, 2, figsize=(13, 2.8))
draw_tree(ax_left, original, cfg, hidden=hidden, title="original (dashed: masked)")
draw_tree(ax_right, sample, cfg, shaded=changed,
          title=f"posterior sample (orange: differs; {int(changed[-1].sum())} tokens changed)")

# %% [markdown]
# The sample above is the first of `NUM_POSTERIOR_SAMPLES` independent draws for the same
# observation. What must hold, and is checked below: every draw is a grammatical sequence whose
# parse gives back the sampled class, and it agrees with every token that was visible. And the
# draws follow the posterior: the
# frequency of each class matches `μ_0` and the frequency of keeping each original token
# matches `μ_L` — within five binomial standard errors (with a floor of one expected count,
# where the normal approximation fails), and exactly zero for classes the posterior excludes.

# %%
digits, valid = digits_from_tokens(grammar, many.tokens[0])
assert bool(valid.all()), "every sample is a grammatical sequence"
assert np.array_equal(np.asarray(digits[:, 0]), np.asarray(many.classes[0])), "parse = sampled class"
assert np.all(np.asarray(many.tokens[0])[:, ~hidden] == original[-1][~hidden]), "visible tokens kept"
n_s = NUM_POSTERIOR_SAMPLES
mu_class = np.asarray(posterior.marginals[0][0, 0], np.float64)
class_freq = np.bincount(np.asarray(many.classes[0]), minlength=cfg.n_classes) / n_s
mu_kept = tokens_mu[np.arange(cfg.d), original[-1]].astype(np.float64)
kept_freq = (np.asarray(many.tokens[0]) == original[-1]).mean(0)
for name, freq, mu in (("class", class_freq, mu_class), ("kept token", kept_freq, mu_kept)):
    se = np.sqrt(np.maximum(mu * (1 - mu), 1 / n_s) / n_s)
    z = np.abs(freq - mu) / se
    print(f"{name} frequencies vs BP marginals: largest deviation {z.max():.2f} standard errors")
    assert np.all(z <= 5), name
assert np.all(class_freq[mu_class == 0] == 0), "classes with zero posterior are never drawn"

# %% [markdown]
# ## 5. The class posterior as the noise grows
#
# Now every datum at every noise level at once. Each process accepts one time per sequence,
# so a noise sweep is a single batched call: repeat each datum `NUM_TIMES` times, give row
# `i·T + j` the time `t_j`, corrupt, and run BP on the whole batch (`bp.upward` returns the class
# posterior without the downward pass). We also draw one posterior class per row with
# `bp.sample_posterior`.
#
# Top row: the class posterior of the first datum against `t`, one panel per process (each
# column a noise level, dark = probable, red line = the true class). Bottom: `P_0(t)`, the mean
# over data of the posterior probability of the true class (filled markers, error bars: one
# standard error over data), and the fraction of posterior samples that keep the class (open
# markers); grey: chance, `1/v`.

# %%
times = np.linspace(0.0, 1.0, NUM_TIMES)
rows = np.arange(N_DATA * NUM_TIMES)
repeated = jnp.repeat(data.tokens, NUM_TIMES, axis=0)  # row i*T + j: datum i at time j
row_times = jnp.tile(jnp.asarray(times, jnp.float32), N_DATA)
true_class = np.repeat(np.asarray(data.classes), NUM_TIMES)

sweep = {}
for (name, process), key in zip(processes.items(), jax.random.split(sweep_key, 4)):
    corrupt_key, draw_key = jax.random.split(key)
    loglik = process.leaf_log_likelihood(process.corrupt(corrupt_key, repeated, row_times),
                                         row_times)
    class_post = np.asarray(bp.upward(grammar, loglik).class_posterior, np.float64)
    p_true = class_post[rows, true_class].reshape(N_DATA, NUM_TIMES)
    drawn = np.asarray(bp.sample_posterior(draw_key, grammar, loglik).classes[:, 0])
    hit = (drawn == true_class).reshape(N_DATA, NUM_TIMES)
    sweep[name] = dict(first=class_post[:NUM_TIMES], p_true=p_true, hit=hit)

fig, axes = plt.subplot_mosaic([["a", "b", "c", "d"], ["P", "P", "P", "P"]],
                               figsize=(11, 6.5), height_ratios=[1, 1.2])
for panel, (name, result) in zip("abcd", sweep.items()):
    ax = axes[panel]
    ax.imshow(result["first"].T, aspect="auto", origin="lower", cmap="Greys", vmin=0, vmax=1,
              extent=(times[0], times[-1], -0.5, cfg.n_classes - 0.5), interpolation="nearest")
    ax.axhline(int(data.classes[0]), color="tab:red", lw=0.8, alpha=0.6)
    ax.set_title(name)
    ax.set_xlabel("t (ε for the ε-process)")
axes["a"].set_ylabel("class")
ax = axes["P"]
for (name, result), color in zip(sweep.items(), plt.cm.tab10.colors):
    mean = result["p_true"].mean(0)
    se = result["p_true"].std(0, ddof=1) / np.sqrt(N_DATA)
    ax.errorbar(times, mean, se, color=color, marker="o", ms=4, lw=1.2, label=name)
    ax.plot(times, result["hit"].mean(0), "o", mfc="none", color=color, ms=7)
ax.axhline(1 / cfg.n_classes, color="0.6", lw=0.8)
ax.set_xlabel("t (ε for the ε-process)")
ax.set_ylabel("$P_0$: class kept")
ax.legend()
fig.tight_layout()

# %% [markdown]
# How to read it: at `t = 0` every process leaves the class certain; at `t = 1` the tokens
# carry no information and the posterior is uniform (chance). In between, how long the class
# survives depends on the process and its schedule. Under the ε-process every token keeps a
# little evidence, and BP pools it over the whole tree: the class stays nearly certain up to
# `ε ≈ 0.5`, long after each token on its own has become doubtful. Masking and uniform
# substitution remove tokens outright, and the class fades from `t ≈ 0.1`; the DDPM Gaussian
# schedule destroys information much earlier in `t`, so its class drops between `t = 0.1` and
# `0.2`. Notebook 02 shows that the drop becomes a sharp phase transition as the depth grows.
#
# The assertions: `P_0(0) = 1` and `P_0(1) = 1/v` (up to float error; the Gaussian's
# `ᾱ_1 = 4·10⁻⁵` is not exactly 0, hence a small allowance), and posterior samples are
# calibrated: a drawn class is right with exactly the probability BP gives it, so the mean of
# `[drawn = true] − μ_0(true)` is zero within five standard errors, whose exact variance per datum is
# `μ_0(true)·(1 − μ_0(true))`.

# %%
for name, result in sweep.items():
    p_true, hit = result["p_true"], result["hit"]
    assert np.allclose(p_true[:, 0], 1.0, atol=1e-5), f"{name}: class certain at t = 0"
    assert abs(p_true[:, -1].mean() - 1 / cfg.n_classes) < 2e-3, f"{name}: chance at t = 1"
    se_calibration = np.sqrt((p_true * (1 - p_true)).mean(0) / N_DATA)
    gap = hit.mean(0) - p_true.mean(0)
    assert np.all(np.abs(gap) <= 5 * se_calibration + 1e-6), f"{name}: samples calibrated"
    print(f"{name:>22}: largest calibration gap "
          f"{np.max(np.abs(gap) / (se_calibration + 1e-12)):.2f} standard errors")
    for t in (0.25, 0.5):
        j = int(np.argmin(np.abs(times - t)))
        mean, se = p_true[:, j].mean(), p_true[:, j].std(ddof=1) / np.sqrt(N_DATA)
        report(f"P0_{name.split()[0].replace('ε-process', 'epsilon')}_t{times[j]:.2f}", mean, se)
print(f"notebook ran in {time.time() - start:.0f} s")

# %% [markdown]
# ## Where next
#
# * `rhm_jax.experiments.forward_backward(key, grammar, process, times, n_data)` runs the
#   experiment of section 5 at scale — every level, both estimators, standard errors, chunked
#   over data and sharded over devices — and `02_phase_transition.ipynb` uses it to show the
#   phase transition and its mean-field theory.
# * `rhm_jax.exact` builds the exact denoiser quantities on BP: the posterior mean, the
#   Gaussian score, D3PM targets and step-by-step reverse diffusion.
# * From a shell, `rhm-jax phase` runs the main experiment and writes results and figures.
