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
# # The phase transition of exact denoising
#
# Noise a datum of the Random Hierarchy Model, then reconstruct it with the exact denoiser —
# a sample `x̂0 ~ p(x0 | x_t)` drawn by belief propagation — and ask which parts of the original
# survive. The low-level features (the tokens) fade smoothly as the noise grows. The class
# does not: it is kept almost surely up to a threshold and lost beyond it, and the drop becomes
# a sharp phase transition as the depth `L` of the tree grows. A mean-field theory predicts the
# curves and the infinite-depth threshold `ε*`.
#
# This notebook
#
# 1. computes the mean-field map and its threshold `ε*`;
# 2. runs the forward–backward experiment with exact BP at several depths and draws the main
#    figure: class and token reconstruction against the noise, next to the theory;
# 3. locates the threshold at each finite depth, extrapolates it to infinite depth and checks
#    it against `ε*`, and shows where the class curves of different depths cross;
# 4. repeats the experiment with the four noise processes side by side.
#
# At full size it takes one to two minutes on a 2-core CPU, most of it compiling one BP
# program per depth. `01_quickstart.ipynb` introduces the pieces used here. The theory pages
# behind it: [the forward–backward observables](../docs/theory/phase_transition.md) and
# [mean-field theory](../docs/theory/mean_field.md).

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
# `(V, M, S)` fix the model; `DEPTHS` are the depths compared; `N_DATA` data per noise level
# and grammar; `NUM_GRAMMARS` independent grammars averaged over (the quenched average; one is
# enough for the figures). Smoke mode (on under CI, or with `FORCE_SMOKE`) uses two shallow
# depths, few data and a coarse noise grid, only to check that everything runs.
#
# The noise grid for the ε-process is every 0.05 plus every 0.0125 between 0.6 and 0.8, where
# the class transitions of these depths lie. The other processes use as many times `t`, spaced
# quadratically (denser at small `t`, where their schedules destroy most of the information);
# the same number of noise levels lets every process share one compiled BP program.
# `report(...)` prints the key numbers as `RESULT` lines for `notebooks/check_outputs.py`.

# %%
# @title Parameters
import os


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


FORCE_SMOKE = False  # @param {type:"boolean"}
# CI sets CI=true; the test suite sets RHM_JAX_SMOKE=1. Smoke mode = tiny sizes, seconds.
SMOKE = FORCE_SMOKE or _env_flag("CI") or _env_flag("RHM_JAX_SMOKE")

import numpy as np

V = 32  # @param {type:"integer"}
M = 8  # @param {type:"integer"}
S = 2  # @param {type:"integer"}
DEPTHS = "3, 5, 7"  # @param {type:"string"}
N_DATA = 1024  # @param {type:"integer"}
NUM_GRAMMARS = 1  # @param {type:"integer"}
SEED = 0  # @param {type:"integer"}
if SMOKE:
    DEPTHS, N_DATA = "2, 3", 64
    eps_grid = np.linspace(0.0, 1.0, 11)
else:
    eps_grid = np.unique(np.round(np.concatenate(
        [np.linspace(0.0, 1.0, 21), np.linspace(0.6, 0.8, 17)]), 6))
t_grid = np.linspace(0.0, 1.0, len(eps_grid)) ** 2
depths = sorted(int(x) for x in DEPTHS.split(","))


def report(name, value, se=0.0):
    """Prints a key number as `RESULT name = value ± se` (se = 0: exact up to rounding).

    notebooks/check_outputs.py re-runs the notebook and compares these lines with the
    committed ones within their standard errors.
    """
    print(f"RESULT {name} = {float(value):.6g} ± {float(se):.2g}")


print(f"SMOKE = {SMOKE}: depths {depths}, {N_DATA} data x {NUM_GRAMMARS} grammar(s), "
      f"{len(eps_grid)} noise levels")

# %% [markdown]
# ## 1. Mean-field theory
#
# For the ε-process every token's evidence is `(1-ε)·[a = x0_i] + ε/v`, so the belief on the
# true token is `p_L = 1 - ε + ε/v`. Going one level up, the average belief on the true symbol
# becomes `p_{l-1} = F(p_l)` with
#
# `F(p) = [p^s + c(1 - p^s)] / [p^s + f̃(1 - p^s)]`,  `c = (m-1)/(v^s-1)`,  `f̃ = (mv-1)/(v^s-1)`.
#
# `F` has stable fixed points at `1` (class known) and `1/v` (chance) and, when
# `F'(1) = s·m(v-1)/(v^s-1) < 1`, an unstable one `p*` between them. Starting above `p*` the
# iteration climbs to 1, below it falls to chance: as `L → ∞` the class is recovered exactly
# when `p_L > p*`, i.e. when `ε < ε* = (1 - p*)·v/(v-1)`. Near `p*` deviations grow by
# `F'(p*)` per level, so at depth `L` the transition has a width `∝ F'(p*)^(-L)`.
# `rhm_jax.theory.MeanField` implements all of this; [mean-field
# theory](../docs/theory/mean_field.md) derives it.
#
# The figure shows `F` (solid) against the diagonal, and the iteration from the leaves to the
# root (the staircase) for two noise levels: just below `ε*` it climbs to 1, just above it
# falls to `1/v`.

# %%
import time

import jax
import matplotlib.pyplot as plt

from rhm_jax import EpsilonProcess, Gaussian, Masking, RHMConfig, UniformSubstitution, theory
from rhm_jax.experiments import forward_backward, sample_grammars

plt.rcParams.update({"figure.dpi": 80, "font.size": 10})
start = time.time()

mf = theory.MeanField(V, M, S)
assert mf.has_transition, "this (v, m, s) has no class transition: F'(1) >= 1"
assert abs(float(mf.F(mf.p_star)) - mf.p_star) < 1e-12 and mf.slope_at_p_star > 1
if S == 2:
    assert abs(mf.p_star - theory.p_star_s2(V, M)) < 1e-12  # closed form (m-1)/(v-m)
print(f"F'(1) = {mf.slope_at_one:.4f};  p* = {mf.p_star:.6f};  eps* = {mf.eps_star:.6f};  "
      f"F'(p*) = {mf.slope_at_p_star:.4f};  nu = {mf.nu:.4f}")
report("eps_star", mf.eps_star)
report("p_star", mf.p_star)

fig, ax = plt.subplots(figsize=(4.6, 4.2))
p = np.linspace(1 / V, 1, 400)
ax.plot(p, mf.F(p), "k", lw=1.3, label="F(p)")
ax.plot(p, p, color="0.6", lw=0.8)
for eps, color in ((mf.eps_star - 0.04, "tab:blue"), (mf.eps_star + 0.04, "tab:red")):
    x = float(mf.leaf_belief(eps))
    path = [(x, x)]
    for _ in range(12):
        y = float(mf.F(x))
        path += [(x, y), (y, y)]
        x = y
    ax.plot(*zip(*path), color=color, lw=0.9, label=f"ε = {eps:.3f}")
ax.plot([mf.p_star], [mf.p_star], "ko", mfc="white")
ax.annotate("p*", (mf.p_star, mf.p_star), xytext=(8, -12), textcoords="offset points")
ax.set_xlabel("$p_l$ (belief on the true symbol, level l)")
ax.set_ylabel("$p_{l-1} = F(p_l)$")
ax.legend(loc="upper left");

# %% [markdown]
# ## 2. The forward–backward experiment at several depths
#
# `forward_backward(key, grammar, process, times, n_data)` does, for every datum and every
# noise level: sample `x0` from the grammar, noise it to time `t`, run exact BP, and record for
# every level `l` the posterior probability of the true symbol, averaged over the level's
# nodes — `P_l(t)`, the probability that `x̂0` keeps level `l` of `x0` (the *marginal*
# estimator), and the fraction of nodes kept by one posterior sample of the whole tree (the
# *sampled* estimator: same expectation, more variance). It returns both with their standard
# errors, for every grammar of a stack, noise level and level. Noise levels are vectorised,
# data are processed in chunks and sharded over all devices.
#
# The next cell runs the ε-process at each depth (one grammar per depth, the same data key)
# and prints how long each took.

# %%
grammar_key, data_key = jax.random.split(jax.random.key(SEED))
configs = {L: RHMConfig(v=V, m=M, s=S, L=L) for L in depths}
grammars = {L: sample_grammars(jax.random.fold_in(grammar_key, L), configs[L], NUM_GRAMMARS)
            for L in depths}
sweeps = {}
for L in depths:
    tic = time.time()
    sweeps[L] = forward_backward(data_key, grammars[L], EpsilonProcess(configs[L]), eps_grid,
                                 N_DATA)
    print(f"L = {L}: {len(eps_grid)} noise levels x {N_DATA} data in {time.time() - tic:.1f} s")


def level_curves(result):
    """Mean over grammars of both estimators and their standard errors over data, (T, L+1)."""
    marginal, marginal_se, _ = result.over_grammars("marginal")
    sampled, sampled_se, _ = result.over_grammars("sampled")
    return marginal, marginal_se, sampled, sampled_se


# %% [markdown]
# ### The main figure
#
# Left: the class reconstruction `P_0` against `ε`, one colour per depth (open markers with
# error bars: exact BP; solid line of the same colour, drawn over them: the mean-field
# prediction `q_0(ε)` at the same depth; dotted: `ε*`; grey: chance `1/v`). Right: the same
# for the tokens, `P_L`.
#
# How to read it: the class is kept almost surely up to a noise that grows with `L`, then
# falls to chance over a range that narrows with `L` — the deeper the tree, the more the curve
# looks like a step at `ε*`. The tokens decay gradually — with a kink at `ε*`, where the help
# they get from the upper levels of the tree switches off — and are still kept far above chance
# past the threshold. So in the window just above the threshold a reconstruction has a
# different class than the original, yet keeps many of its tokens. The lines pass through
# the markers almost everywhere: the theory follows BP closely except right at the steepest
# part of the deepest curves.

# %%
grid = np.linspace(0.0, 1.0, 401)
colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(depths)))
fig, (ax_class, ax_tokens) = plt.subplots(1, 2, figsize=(10.5, 4.2), sharey=True)
for color, L in zip(colors, depths):
    marginal, marginal_se, _, _ = level_curves(sweeps[L])
    q = mf.level_curves(grid, L).q
    for ax, level in ((ax_class, 0), (ax_tokens, L)):
        ax.errorbar(eps_grid, marginal[:, level], marginal_se[:, level], color=color, fmt="o",
                    ms=4.5, mfc="white", mew=1.2, elinewidth=1, zorder=2,
                    label=f"exact BP, L = {L}")
        ax.plot(grid, q[level], "-", color=color, lw=1.5, zorder=3, label=f"mean field, L = {L}")
for ax, title in ((ax_class, "class, $P_0$"), (ax_tokens, "tokens, $P_L$")):
    ax.axvline(mf.eps_star, color="k", ls=":", lw=1)
    ax.axhline(1 / V, color="0.6", lw=0.8)
    ax.set_xlabel("noise ε")
    ax.set_title(f"{title} (dotted: ε* = {mf.eps_star:.3f})")
ax_class.set_ylabel("probability that $\\hat x_0$ keeps it")
handles, labels = ax_class.get_legend_handles_labels()
order = [labels.index(f"{kind}, L = {L}") for L in depths for kind in ("exact BP", "mean field")]
ax_class.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower left",
                fontsize=9)
fig.tight_layout()

# %% [markdown]
# The assertions check the figure's claims and the experiment's consistency:
#
# * `P_0 = 1` at `ε = 0` and `P_0 = 1/v` at `ε = 1` (no evidence), up to float rounding;
# * exact BP agrees with the mean-field `q_l` at every level to a few hundredths (0.03, plus
#   four standard errors) wherever `|ε - ε*| >= 0.1` — the theory is an approximation, not
#   exact, and it is least accurate right at the steepest part of the deep curves;
# * the sampled estimator agrees with the marginal one within five standard errors of their
#   difference (bounded above by `se_marginal + sqrt(P(1-P)/n)`, since a sampled per-datum
#   value lies in `[0, 1]`).

# %%
far = np.abs(eps_grid - mf.eps_star) >= 0.1
n_total = N_DATA * NUM_GRAMMARS
for L in depths:
    marginal, marginal_se, sampled, sampled_se = level_curves(sweeps[L])
    assert np.allclose(marginal[0, 0], 1.0, atol=1e-5), f"L = {L}: class certain at eps = 0"
    assert abs(marginal[-1, 0] - 1 / V) < 1e-5, f"L = {L}: chance at eps = 1"
    q = mf.level_curves(eps_grid, L).q.T  # (T, L+1)
    gap = np.abs(marginal - q)[far]
    assert np.all(gap <= 0.03 + 4 * marginal_se[far]), f"L = {L}: BP vs mean field"
    bound = marginal_se + np.sqrt(np.clip(marginal * (1 - marginal), 0, None) / n_total)
    assert np.all(np.abs(sampled - marginal) <= 5 * bound + 1e-6), f"L = {L}: estimators agree"
    at = int(np.argmin(np.abs(eps_grid - 0.7)))
    print(f"L = {L}: max |P_l - q_l| away from eps* = {gap.max():.4f}; "
          f"P_0(eps = {eps_grid[at]:.2f}) = {marginal[at, 0]:.4f} ± {marginal_se[at, 0]:.4f}")
    report(f"P0_L{L}_eps{eps_grid[at]:.2f}", marginal[at, 0], marginal_se[at, 0])
    report(f"PL_L{L}_eps{eps_grid[at]:.2f}", marginal[at, L], marginal_se[at, L])

# %% [markdown]
# ### Every level at the largest depth
#
# The same experiment, all levels at once for the deepest tree: `P_l(ε)` from the class
# (`l = 0`, darkest) to the tokens (`l = L`, lightest); open markers: exact BP, solid lines
# drawn over them: the mean-field `q_l`. The
# levels near the root switch off together at the threshold; the lower a level, the more
# gradual its decay. The checks: the class transition — the window of `ε` over which `P_0`
# falls from 90% to 10% of its range above chance (`theory.curve_width`) — narrows with every
# added depth; and at the first noise level where the class is within 10% of chance, the tokens
# still keep more than a quarter of their range: the class has changed while the low-level
# features survive.

# %%
L_max = depths[-1]
marginal, marginal_se, _, _ = level_curves(sweeps[L_max])
q = mf.level_curves(grid, L_max).q
level_colors = plt.cm.plasma(np.linspace(0.0, 0.85, L_max + 1))
fig, ax = plt.subplots(figsize=(6, 4.2))
for level in range(L_max + 1):
    label = "class (l = 0)" if level == 0 else ("tokens" if level == L_max else f"l = {level}")
    ax.errorbar(eps_grid, marginal[:, level], marginal_se[:, level], color=level_colors[level],
                fmt="o", ms=3.5, mfc="white", mew=1, elinewidth=0.8, zorder=2, label=label)
    ax.plot(grid, q[level], "-", color=level_colors[level], lw=1.2, zorder=3)
ax.plot([], [], "-", color="0.3", lw=1.2, label="mean field $q_l$")
ax.axvline(mf.eps_star, color="k", ls=":", lw=1)
ax.set_xlabel("noise ε")
ax.set_ylabel("$P_l$")
ax.set_title(f"every level, L = {L_max} (markers: exact BP)")
ax.legend(ncol=2, fontsize=9, loc="lower left")


def normalised(curve):
    return (curve - 1 / V) / (1 - 1 / V)


def class_lost_tokens_kept(times, curves, L):
    """Normalised P_0 and P_L at the first time where the class is within 10% of chance."""
    lost = int(np.flatnonzero(normalised(curves[:, 0]) <= 0.1)[0])
    return times[lost], normalised(curves[lost, 0]), normalised(curves[lost, L])


widths = [theory.curve_width(eps_grid, level_curves(sweeps[L])[0][:, 0], 1 / V, 1.0)
          for L in depths]
for L, width in zip(depths, widths):
    print(f"L = {L}: class transition width (90% -> 10%) {width:.3f}  "
          f"(mean field {mf.transition_width(L):.3f})")
assert np.all(np.diff(widths) < 0), "the class transition narrows as L grows"
eps_lost, class_left, tokens_left = class_lost_tokens_kept(eps_grid, marginal, L_max)
print(f"L = {L_max}: at eps = {eps_lost:.3f} the class keeps {class_left:.3f} and the tokens "
      f"{tokens_left:.3f} of their range above chance")
assert tokens_left > 0.25, "tokens survive where the class is lost"

# %% [markdown]
# ## 3. The threshold: finite depths, their extrapolation, and the crossing
#
# At each depth the threshold `ε_1/2(L)` is where `P_0` crosses halfway between 1 and chance
# (`theory.midpoint_crossing`, linear interpolation between grid points). Its standard error
# comes from those of the two bracketing points, through the interpolation formula (taken as
# fully correlated — the same data are used at every noise level — which makes it an upper
# bound). Mean-field theory says `ε_1/2(L) = ε_∞ + A·F'(p*)^(-L)` up to small corrections,
# so `theory.extrapolate_threshold` fits `ε_∞` and `A` by least squares with the known
# `F'(p*)`; `ε_∞` is a linear combination of the `ε_1/2(L)`, which gives its standard error.
#
# The tolerance of the check `|ε_∞ - ε*|` is stated in three parts: four standard errors; the
# error of the fit form itself (the same extrapolation applied to the mean-field thresholds at
# the same depths); and 0.02 for the difference between exact BP on one grammar and the mean
# field.
#
# Left: `ε_1/2(L)` measured (markers), the mean-field thresholds at every depth (line), the
# fit (dashed) and `ε*` (dotted). Right: the class curves of all depths around the threshold.
# Theory says that curves of different depths cross exactly at `(ε*, p*)` (open circle); the
# cross marks where the shallowest and deepest measured curves cross.

# %%
half = 0.5 * (1 + 1 / V)
growth = mf.slope_at_p_star


def crossing_with_se(x, curve, se, level):
    """First x where the sampled curve falls through `level`, and its standard error."""
    value = theory.level_crossing(x, curve, level)
    if not np.isfinite(value):
        return value, np.nan
    above = curve >= level
    i = int(np.flatnonzero(above[:-1] & ~above[1:])[0])
    drop, step = curve[i] - curve[i + 1], x[i + 1] - x[i]
    return value, step / drop**2 * ((level - curve[i + 1]) * se[i] + (curve[i] - level) * se[i + 1])


eps_half, eps_half_se = [], []
for L in depths:
    marginal, marginal_se, _, _ = level_curves(sweeps[L])
    value, se = crossing_with_se(eps_grid, marginal[:, 0], marginal_se[:, 0], half)
    assert np.isfinite(value), f"L = {L}: P_0 never crosses its midpoint"
    eps_half.append(value)
    eps_half_se.append(se)
    mean_field_half = float(mf.eps_at_class_belief(half, L))
    print(f"L = {L}: eps_1/2 = {value:.4f} ± {se:.4f}   (mean field {mean_field_half:.4f})")
    report(f"eps_half_L{L}", value, se)
eps_half, eps_half_se = np.array(eps_half), np.array(eps_half_se)

if len(depths) >= 2:
    Ls = np.array(depths, float)
    eps_inf = theory.extrapolate_threshold(Ls, eps_half, growth)
    fit_matrix = np.linalg.pinv(np.stack([np.ones_like(Ls), growth ** -Ls], axis=1))
    eps_inf_se = float(np.sqrt(np.sum((fit_matrix[0] * eps_half_se) ** 2)))
    amplitude = float(fit_matrix[1] @ eps_half)
    mean_field_halves = np.array([float(mf.eps_at_class_belief(half, L)) for L in depths])
    fit_error = abs(theory.extrapolate_threshold(Ls, mean_field_halves, growth) - mf.eps_star)
    tolerance = 4 * eps_inf_se + fit_error + 0.02
    print(f"extrapolated eps_inf = {eps_inf:.4f} ± {eps_inf_se:.4f};  eps* = {mf.eps_star:.4f};  "
          f"|difference| = {abs(eps_inf - mf.eps_star):.4f} <= tolerance {tolerance:.4f}?")
    assert abs(eps_inf - mf.eps_star) <= tolerance, "extrapolated threshold vs eps*"
    report("eps_inf_extrapolated", eps_inf, eps_inf_se)

# %% [markdown]
# Now the crossing: the difference `P_0(L_max) - P_0(L_min)` is positive below the threshold
# (the deeper tree holds on to the class longer) and negative above it (it loses the class
# faster). Where it changes sign — searched only where the shallow curve is between 5% and 95%
# of its range, so that the two curves being equal at 1 or at chance does not count — is the
# finite-depth crossing. The check: it lies within four standard errors plus 0.03 of `ε*` (the
# allowance again covers the gap between BP and the mean field, largest right at the
# threshold).

# %%
fig, (ax_fit, ax_cross) = plt.subplots(1, 2, figsize=(10.5, 4))
L_axis = np.arange(1, max(depths) + 5)
ax_fit.plot(L_axis, [float(mf.eps_at_class_belief(half, L)) for L in L_axis], "-",
            color="0.5", lw=1, label="mean field $ε_{1/2}(L)$")
ax_fit.errorbar(depths, eps_half, eps_half_se, fmt="o", color="tab:blue", label="exact BP")
if len(depths) >= 2:
    ax_fit.plot(L_axis, eps_inf + amplitude * growth ** -L_axis.astype(float), "--",
                color="tab:blue", lw=1, label=f"fit, $ε_∞$ = {eps_inf:.4f} ± {eps_inf_se:.4f}")
ax_fit.axhline(mf.eps_star, color="k", ls=":", lw=1, label=f"ε* = {mf.eps_star:.3f}")
ax_fit.set_xlabel("depth L")
ax_fit.set_ylabel("class threshold $ε_{1/2}(L)$")
ax_fit.legend()

for color, L in zip(colors, depths):
    marginal, marginal_se, _, _ = level_curves(sweeps[L])
    ax_cross.errorbar(eps_grid, marginal[:, 0], marginal_se[:, 0], color=color, marker="o",
                      ms=3, lw=1.1, label=f"L = {L}")
ax_cross.plot([mf.eps_star], [mf.p_star], "ko", mfc="white", ms=9, label="(ε*, p*)")
if len(depths) >= 2:
    shallow, shallow_se, _, _ = level_curves(sweeps[depths[0]])
    deep, deep_se, _, _ = level_curves(sweeps[depths[-1]])
    window = (normalised(shallow[:, 0]) <= 0.95) & (normalised(shallow[:, 0]) >= 0.05)
    difference = (deep[:, 0] - shallow[:, 0])[window]
    difference_se = np.hypot(deep_se[:, 0], shallow_se[:, 0])[window]
    eps_cross, eps_cross_se = crossing_with_se(eps_grid[window], difference, difference_se, 0.0)
    assert np.isfinite(eps_cross), "the shallowest and deepest class curves must cross"
    p_cross = float(np.interp(eps_cross, eps_grid, deep[:, 0]))
    ax_cross.plot([eps_cross], [p_cross], "kx", ms=9, mew=2, label="measured crossing")
    print(f"class curves of L = {depths[0]} and {depths[-1]} cross at eps = {eps_cross:.4f} ± "
          f"{eps_cross_se:.4f}, P_0 = {p_cross:.3f}  (theory: eps* = {mf.eps_star:.4f}, "
          f"p* = {mf.p_star:.3f})")
    assert abs(eps_cross - mf.eps_star) <= 4 * eps_cross_se + 0.03, "crossing near eps*"
    report(f"eps_cross_L{depths[0]}_L{depths[-1]}", eps_cross, eps_cross_se)
ax_cross.set_xlim(0.45, 0.95)
ax_cross.set_xlabel("noise ε")
ax_cross.set_ylabel("$P_0$")
ax_cross.legend();

# %% [markdown]
# ## 4. Four noise processes side by side
#
# The phase transition is not a property of the ε-process alone. Here the same experiment runs
# at the largest depth with the noises that diffusion models use — masking (absorbing), uniform
# substitution (D3PM) and Gaussian noise on one-hot tokens (DDPM), each with its default schedule
# (see `01_quickstart.ipynb` and [noise processes](../docs/theory/noise.md)) — next to the
# ε-process. The same data and grammar are used
# throughout.

# %%
cfg = configs[L_max]
by_process = {"ε-process": (eps_grid, sweeps[L_max])}
for name, process in (("masking", Masking(cfg)), ("uniform substitution", UniformSubstitution(cfg)),
                      ("Gaussian", Gaussian(cfg))):
    tic = time.time()
    by_process[name] = (t_grid, forward_backward(data_key, grammars[L_max], process, t_grid,
                                                 N_DATA))
    print(f"{name}: {time.time() - tic:.1f} s")

# %% [markdown]
# The four panels on the left show `P_l(t)` for every level (colours as above: dark = class,
# light = tokens) against each process's own time `t`. Times are not comparable between
# processes — a schedule decides how fast information is destroyed (the DDPM schedule for the
# Gaussian destroys most of it by `t ≈ 0.3`). The panel on the right removes the schedule: it
# plots the class reconstruction `P_0` against the token reconstruction `P_L` as the noise
# grows, for every process (and the mean field for the ε-process, dashed). The class stays
# nearly certain while `P_L` is above about 0.9, then collapses to chance while about half or
# more of the tokens are still kept. The four processes trace nearly the same curve: how much
# of the tokens survives, not the way they were noised, decides the fate of the class.
#
# The checks, for every process: `P_0 = 1` at `t = 0` and chance at `t = 1` (within 0.002 — the
# DDPM schedule leaves `ᾱ_1 = 4·10⁻⁵`); the estimators agree as before; and where the class is
# within 10% of chance, the tokens keep more than a quarter of their range. Each process's
# threshold `t_1/2` is reported with its standard error.

# %%
fig, panels = plt.subplot_mosaic([["0", "1", "vs"], ["2", "3", "vs"]], figsize=(11, 6.6),
                                 width_ratios=[1, 1, 1.25])
axes, ax_vs = [panels[k] for k in "0123"], panels["vs"]
for ax, (name, (times, result)) in zip(axes, by_process.items()):
    marginal, marginal_se, sampled, sampled_se = level_curves(result)
    for level in range(L_max + 1):
        ax.plot(times, marginal[:, level], marker="o", ms=2, lw=1, color=level_colors[level],
                label="class" if level == 0 else ("tokens" if level == L_max else None))
    ax.set_title(name)
    ax.set_xlabel("ε" if name == "ε-process" else "t")
    ax.set_ylim(-0.02, 1.02)
    ax_vs.plot(marginal[:, L_max], marginal[:, 0], marker="o", ms=3, lw=1, label=name)

    assert abs(marginal[0, 0] - 1) < 1e-5, f"{name}: class kept at t = 0"
    assert abs(marginal[-1, 0] - 1 / V) < 2e-3, f"{name}: chance at t = 1"
    bound = marginal_se + np.sqrt(np.clip(marginal * (1 - marginal), 0, None) / n_total)
    assert np.all(np.abs(sampled - marginal) <= 5 * bound + 1e-6), f"{name}: estimators agree"
    t_lost, class_left, tokens_left = class_lost_tokens_kept(times, marginal, L_max)
    assert tokens_left > 0.25, f"{name}: tokens survive where the class is lost"
    t_half, t_half_se = crossing_with_se(times, marginal[:, 0], marginal_se[:, 0], half)
    print(f"{name:>22}: t_1/2 = {t_half:.4f} ± {t_half_se:.4f}; at t = {t_lost:.3f} the class "
          f"keeps {class_left:.3f} and the tokens {tokens_left:.3f} of their range")
    report(f"t_half_{name.split()[0].replace('ε-process', 'epsilon')}_L{L_max}", t_half, t_half_se)
for ax in (axes[0], axes[2]):
    ax.set_ylabel("$P_l$")
axes[0].legend(loc="lower left")
q = mf.level_curves(grid, L_max).q
ax_vs.plot(q[L_max], q[0], "k--", lw=1.2, zorder=3, label="mean field (ε)")
ax_vs.set_xlabel("tokens kept, $P_L$")
ax_vs.set_ylabel("class kept, $P_0$")
ax_vs.set_title("class vs tokens")
ax_vs.legend(loc="upper left")
fig.tight_layout()
print(f"notebook ran in {time.time() - start:.0f} s")

# %% [markdown]
# ## Summary and where next
#
# * The class reconstruction of exact denoising has a threshold that sharpens with depth and
#   converges to the mean-field `ε*`; the tokens decay smoothly. Beyond the threshold the
#   reconstruction changes the class while keeping many tokens.
# * The same holds for masking, uniform substitution and Gaussian noise.
# * `rhm-jax phase` runs this experiment from the shell and writes tidy results
#   (`results.jsonl`), the finite-size analysis and figures; `--n-grammars K` averages over
#   grammars, `--devices N` splits the work over N CPU devices.
