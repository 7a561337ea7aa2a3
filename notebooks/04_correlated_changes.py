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
# # Correlated changes: the susceptibility of denoising
#
# `02_phase_transition.ipynb` showed that exact denoising of Random Hierarchy Model data
# has a phase transition: as the noise grows, the class of a reconstruction `x̂0` switches
# from "almost surely the original one" to "random" over a window that narrows with the
# depth `L`. In physics a continuous phase transition comes with correlations over large
# distances.
# Here the analogue: when a reconstruction changes tokens of `x0`, does it change them one by
# one, or in blocks — and how large do the blocks get at the transition?
#
# The measurement (theory page: [correlated changes](../docs/theory/correlations.md)): from
# one start `x0`, run many forward–backward
# *trajectories* (noise `x0` to `x_t`, draw `x̂0 ~ p(x0 | x_t)` with exact BP) and record
# the spins `σ_i = [x̂0_i ≠ x0_i]`. Their connected correlation over trajectories,
#
# `C_ij = ⟨σ_i σ_j⟩ − ⟨σ_i⟩⟨σ_j⟩`,
#
# averaged over starts, says which tokens change together; the *susceptibility*
#
# `χ(t) = Σ_ij C_ij / Σ_i C_ii`
#
# is the typical number of tokens that change together (1 for independent changes). The
# prediction: `χ` peaks at the class transition, and the peak grows with the depth. The
# control: a Gaussian random field, which has correlations but no hierarchy, and no peak.
#
# This notebook
#
# 1. draws many reconstructions of one datum at the transition and shows the blocks;
# 2. measures `χ(t)` at several depths with `rhm_jax.correlations.change_correlations`,
#    next to the class reconstruction `P_0(t)`;
# 3. shows how the correlations are organised: by distance in the tree, not along the
#    sequence;
# 4. repeats the measurement with masking noise;
# 5. runs the Gaussian-random-field control;
# 6. estimates the exponent `ν` from how the transition narrows with depth.
#
# At full size it takes about two minutes on a 2-core CPU, much of it compiling one
# program per depth and noise process. `rhm-jax chi` runs the same measurement from a shell.

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
# `(V, M, S)` fix the RHM (the one of notebook 02, where the transition is at
# `ε* ≈ 0.73`); `DEPTHS` are the depths compared; `N_STARTS` starts `x0` per depth and
# `N_TRAJECTORIES` trajectories per start (the error bars are over starts); `NUM_TIMES`
# noise levels per depth, placed around that depth's transition; `GRF_D` and
# `GRF_EXPONENT` the length and the power spectrum `P_k ∝ k^(−a)` of the control field.
# Smoke mode (on under CI, or with `FORCE_SMOKE`) uses three shallow depths, few
# trajectories and a coarse grid, only to check that everything runs. `report(...)` prints the key numbers as `RESULT`
# lines for `notebooks/check_outputs.py`.

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


def report(name, value, se=0.0):
    """Prints a key number as `RESULT name = value ± se` (se = 0: exact up to rounding).

    notebooks/check_outputs.py re-runs the notebook and compares these lines with the
    committed ones within their standard errors.
    """
    print(f"RESULT {name} = {float(value):.6g} ± {float(se):.2g}")


print(f"SMOKE = {SMOKE}: depths {depths}, {N_STARTS} starts x {N_TRAJECTORIES} "
      f"trajectories, {NUM_TIMES} noise levels; masking at L = {MASKING_DEPTH}")

# %% [markdown]
# ## 1. One start, many reconstructions
#
# First the definitions on one datum, by hand. The ε-process (`t` is `ε`) gives every
# token soft evidence `(1−ε)·[a = x0_i] + ε/v` and samples nothing, so the trajectories of
# a start differ only by the posterior draw: `bp.sample_posterior(key, grammar, loglik,
# num_samples)` draws `N_TRAJECTORIES` whole trees from `p(x0 | x_t)` at once. The noise is
# the mean-field threshold of the smallest depth (`theory.MeanField`, notebook 02), where
# the class is kept about half of the time.
#
# The figure, left: one row per reconstruction, one column per token; dark = changed
# (`σ_i = 1`); rows with a changed class are on top. Vertical lines mark the subtrees two
# levels above the tokens (groups of `s²` tokens). Right: `C_ij` of this start, from the
# rows on the left.

# %%
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

from rhm_jax import EpsilonProcess, Masking, RHMConfig, bp, sample_data, sample_grammar, theory
from rhm_jax.correlations import (change_correlations, grf_change_correlations,
                                  spin_statistics, width_exponent)
from rhm_jax.experiments import forward_backward

plt.rcParams.update({"figure.dpi": 80, "font.size": 10})
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

# %% [markdown]
# How to read it: a reconstruction does not change scattered tokens. It changes whole
# subtrees — when BP resamples a node high in the tree, every token below it is redrawn
# together — so the changed tokens come in blocks aligned with the orange subtree
# boundaries, and the reconstructions that changed the class (top) changed the most. `C_ij`
# is accordingly block-structured: positive within subtrees, larger within smaller ones.
#
# `rhm_jax.correlations.spin_statistics` computes the same sums without forming the
# `d × d` matrix — `Σ_ij C_ij` as the variance of `Σ_i σ_i`, the sums over pairs within
# subtrees as variances of subtree sums — which is how the library measures long
# sequences. The assertion checks those identities against the matrix built by hand.

# %%
fast = spin_statistics(jax.numpy.asarray(spins), S, with_matrix=True)
tree_sums = np.asarray(fast.tree, np.float64)
assert np.allclose(np.asarray(fast.matrix), C, atol=1e-5), "C_ij"
assert np.isclose(tree_sums[-1], C.sum(), atol=1e-4) and np.isclose(tree_sums[0], np.trace(C), atol=1e-5)
same_subtree = np.arange(cfg0.d)[:, None] // S**2 == np.arange(cfg0.d)[None, :] // S**2
assert np.isclose(tree_sums[2], C[same_subtree].sum(), atol=1e-4), "pairs within s^2-subtrees"
print(f"sum C_ij = {tree_sums[-1]:.4f}, sum C_ii = {tree_sums[0]:.4f}: "
      f"chi = {tree_sums[-1] / tree_sums[0]:.3f}")

# %% [markdown]
# ## 2. The susceptibility `χ(t)` across the transition
#
# `change_correlations(key, grammar, process, times, n_starts, n_trajectories)` runs the
# measurement above at every noise level for `n_starts` starts (each with its own data;
# each trajectory with its own noise and posterior draw, shared across noise levels), and
# returns `χ(t)` with its standard error over starts, the changed fraction, `C` by tree
# and by position distance, and `P_0(t)` from the same trajectories. It runs each start's
# trajectories through BP in chunks and shards the starts over devices.
#
# Each depth gets its own noise grid, `NUM_TIMES` levels centred on its mean-field threshold
# `ε_1/2(L)` and spanning ±2.5 mean-field 10–90% widths of its transition — the deeper
# the tree, the narrower the transition and the grid.
#
# The figure, top: `χ(ε)` per depth (error bars: one standard error over starts), with each
# depth's measured `P_0` midpoint dotted. Bottom: `P_0(ε)` from the same trajectories.

# %%
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
    """Index of the largest chi and the P_0 midpoint of a sweep."""
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

# %% [markdown]
# How to read it: away from the transition `χ` is small — at low noise BP changes little,
# and what it changes are single tokens or small subtrees; at high noise the class is
# lost and every reconstruction is close to a fresh datum, whose tokens differ from `x0`'s
# nearly independently. In between, where `P_0` drops, `χ` peaks: there a reconstruction
# either keeps the class or redraws the tree from near the root, so tokens change in
# large blocks. The peak sits at the class transition of each depth and grows with the
# depth, as the blocks can be larger in a larger tree.
#
# The assertions, per depth: the largest `χ` lies inside the grid, not at its edge;
# its noise level is within two grid steps of the measured `P_0` midpoint; and the
# peak of the deepest tree exceeds that of the shallowest by more than four standard errors.

# %%
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

# %% [markdown]
# ## 3. Correlations are organised by the tree
#
# Two distances between tokens `i` and `j`: along the sequence, `r = |i − j|`, and in the
# tree, `h` = the number of levels up to their lowest common ancestor (`h = 1`: siblings,
# `h = L`: tokens in different halves of the sequence). `C(r)` and `C(h)` are the means of
# `C_ij` over the `N(r)`, `N(h)` ordered pairs at that distance (`result.position`,
# `result.tree_distance`, `result.position_pairs`, `result.tree_pairs`). The figure shows
# the deepest tree at three noise levels: below, at and above its `χ` peak. Left: `C(r)`.
# Right: how much the pairs at each tree distance add to `χ`, `N(h)·C(h) / Σ_i C_ii` —
# these contributions sum to `χ` (the diagonal, `h = 0`, contributes 1).

# %%
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

# %% [markdown]
# How to read it: along the sequence (left), `C(r)` falls off within a few tokens at every
# noise level, with a long, small tail. The tree view (right) shows where `χ` comes from.
# Below and above the transition the contributions fall with `h`: what changes together
# is a small subtree. At the `χ` peak every level of the tree contributes about the same —
# `C(h)` halves with each level up while the number of pairs at distance `h` doubles —
# all the way to the two halves of the sequence (`h = L`). Each added level of the tree
# therefore adds about the same to the peak of `χ`: the peaks of section 2 grow by equal
# steps from `L = 5` to 7 to 9. The hierarchy, not the distance along the sequence,
# organises what changes together.
#
# The assertions check the estimator's identities on the results, at every depth and noise
# level: the contributions sum to `χ`, and the pair counts `N(h)` and `N(r)` each add up
# to all `d²` ordered pairs. The cell prints `C(h)` at the peak of the deepest tree.

# %%
for L in depths:
    result = sweeps[L]
    total = (result.tree_distance * result.tree_pairs).sum(-1)
    diagonal = result.tree_distance[:, 0] * result.tree_pairs[0]
    ok = np.isfinite(result.chi)
    assert np.allclose(total[ok] / diagonal[ok], result.chi[ok], rtol=1e-4), f"L = {L}"
    d = configs[L].d
    assert result.tree_pairs.sum() == d * d and result.position_pairs.sum() == d * d
print(f"L = {depths[-1]} at its chi peak: C(h) = {np.round(deep.tree_distance[i_peak], 5).tolist()}")

# %% [markdown]
# ## 4. Masking noise
#
# The same measurement with masking, the noise of masked diffusion models: each token is
# hidden with probability `t`, and every trajectory has its own mask. There is no mean
# field for masking, so a pilot run finds the transition first: `forward_backward` (notebook
# 02) on an even grid gives `P_0(t)`, and the grid of `χ` spans ±2.5 of its 10–90% widths
# around its midpoint.

# %%
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

# %% [markdown]
# How to read it: the same picture — `χ` peaks where the class is lost. The peak is lower
# than the ε-process's at the same depth: under masking only masked tokens can change, and
# which tokens are masked is drawn independently for every token and trajectory, so part
# of what changes is decided by independent noise.
#
# The assertions: the peak is interior and within two grid steps of the `P_0` midpoint,
# and it exceeds `χ` at both ends of the grid by more than four standard errors.

# %%
step_m = float(np.diff(masked.times).mean())
print(f"masking, L = {MASKING_DEPTH}: chi peaks at t = {masked.times[i_m]:.4f} with "
      f"{masked.chi[i_m]:.2f} ± {masked.chi_se[i_m]:.2f}; P_0 midpoint {midpoint_m:.4f}")
assert 0 < i_m < len(masked.times) - 1, "masking: interior peak"
assert abs(masked.times[i_m] - midpoint_m) <= 2 * step_m + 1e-9, "masking: peak at the transition"
for end in (0, -1):
    assert masked.chi[i_m] - masked.chi[end] > 4 * np.hypot(masked.chi_se[i_m], masked.chi_se[end])
report(f"chi_max_masking_L{MASKING_DEPTH}", masked.chi[i_m], masked.chi_se[i_m])

# %% [markdown]
# ## 5. The control: a Gaussian random field
#
# Is a peak of `χ` special? Any data with correlations give correlated changes. The
# control has correlations and no hierarchy: a periodic 1-D Gaussian random field `x0` of
# length `GRF_D` with power spectrum `P_k ∝ k^(−a)`, noised by Gaussian diffusion
# `x_t = √(1−t)·x0 + √t·η`, and denoised exactly — the posterior is Gaussian and diagonal in
# Fourier space, sampled mode by mode. The spins are sign changes,
# `σ_i = [sign(x̂0_i) ≠ sign(x0_i)]`. `grf_change_correlations` runs it with the same
# trajectory convention, on an even grid of `t`.

# %%
grf_times = np.linspace(0.05, 1.0, NUM_TIMES)
control = grf_change_correlations(jax.random.fold_in(root, 4000), GRF_D, GRF_EXPONENT,
                                  grf_times, N_STARTS, N_TRAJECTORIES)
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.errorbar(control.times, control.chi, control.chi_se, marker="o", ms=3)
ax.set_xlabel("t (ᾱ = 1 − t)")
ax.set_ylabel("χ(t)")
ax.set_title(f"control: Gaussian random field, d = {GRF_D}, $P_k ∝ k^{{-{GRF_EXPONENT:g}}}$");

# %% [markdown]
# How to read it: `χ` of the field grows steadily with the noise — the more noise, the
# larger the stretches of the field the posterior redraws — and fastest at the end, where
# the posterior forgets `x0` and redraws the whole field. It has no interior maximum:
# without a hierarchy there is no transition for it to mark.
#
# The assertion: no interior point exceeds the larger of the two end points by more than
# four standard errors.

# %%
ends = max(control.chi[0], control.chi[-1])
excess = control.chi[1:-1] - ends
bound = 4 * np.hypot(control.chi_se[1:-1], control.chi_se[[0, -1]][np.argmax(control.chi[[0, -1]])])
print(f"control: chi from {control.chi[0]:.2f} to {control.chi[-1]:.2f}; largest interior "
      f"excess over the ends {excess.max():.3f}")
assert np.all(excess <= bound), "the control has no interior peak"
report("chi_grf_t1", control.chi[-1], control.chi_se[-1])

# %% [markdown]
# ## 6. The exponent `ν`
#
# Near the transition the correlation length grows as `ξ ~ |ε − ε*|^(−ν)`, and a tree of
# `d = s^L` tokens cuts it off: the transition's width shrinks as `d^(−1/ν)`, i.e. by
# `s^(1/ν)` per level. Mean-field theory predicts `ν = ln s / ln F'(p*)`.
# `width_exponent(depths, widths, s)` fits `ln width` against `L` by least squares and
# returns `ν` with its standard error, here from the 10–90% widths of the measured `P_0`
# curves above (`theory.curve_width`).
#
# The figure: the measured widths against depth (log scale), the fit (dashed) and the
# mean-field widths (dotted). The assertion: the transition narrows with every added depth.
# The fitted `ν` is printed next to the mean-field `ν` and next to the same fit applied to
# the mean-field widths at the same depths (at small depths the widths have not reached
# their asymptotic scaling yet). Its error is that of a least-squares fit through three
# points, not a statistical error of the widths; `rhm-jax chi` (whose summary's `nu_fit`
# also tries a data collapse of `χ`) is the tool for a careful estimate.

# %%
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

# %% [markdown]
# ## Summary and where next
#
# * Reconstructions change tokens in blocks that follow the tree; their typical size, the
#   susceptibility `χ`, peaks at the class transition and the peak grows with depth —
#   for the ε-process and for masking alike.
# * A Gaussian random field, correlated but not hierarchical, has no such peak.
# * `rhm-jax chi --L 5,7,9 --process epsilon,masking` runs the measurement from a shell
#   (noise grids from pilot runs, results as JSONL, figures, `ν` two ways).
# * `change_correlations(..., denoiser=fn, denoiser_params=params)` measures a trained
#   network's reconstructions the same way (`rhm_jax.denoise.experiment_denoiser`, see
#   `03_denoiser_vs_bp.ipynb`).
