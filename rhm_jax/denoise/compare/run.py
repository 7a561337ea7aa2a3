"""One training run compared with BP (:func:`compare_run`), and a sweep over runs.

:func:`compare_run` loads a run folder and runs every measure of the package on it;
:class:`RunComparison` holds the results and writes them as tidy rows
(:meth:`RunComparison.rows`) or one summary row (:meth:`RunComparison.summary`);
:func:`sweep_table` tabulates several runs against the training-set size ``P`` in units
of ``v·m**(L+1)`` (:func:`P_unit`).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from rhm_jax.denoise.compare.agreement import (CLEAR_MARGIN, Agreement, LossComparison,
                                               agreement, compare_losses, network_predictor)
from rhm_jax.denoise.compare.common import default_num_steps, sampler_name, snap_times
from rhm_jax.denoise.compare.generation import (bp_chain_samples, forward_backward_pair,
                                                network_samples, sample_stats)
from rhm_jax.denoise.compare.representation import Representation, representation_similarity
from rhm_jax.denoise.objectives import PROCESS_OF_OBJECTIVE
from rhm_jax.denoise.sampling import Denoiser, check_num_steps
from rhm_jax.grammar import with_inverse_tables
from rhm_jax.stats import json_float, nan_mean
from rhm_jax.validation import check_int, check_key

__all__ = ["P_unit", "RunComparison", "check_config_json", "compare_run", "sweep_table"]


def P_unit(config) -> int:
    """The unit of training-set sizes in the sweep, ``v·m**(L+1)``."""
    return config.v * config.m ** (config.L + 1)


class RunComparison(NamedTuple):
    """Everything :func:`compare_run` measured on one run (see :meth:`rows`)."""

    run_dir: str
    config: Any  # TrainConfig
    step: int
    num_steps: int | None  # None: masking's one-token-at-a-time chain
    ema: bool  # the EMA parameters were used
    agreement: Agreement
    losses: LossComparison
    samples: dict  # source -> SampleStats ("network", "bp_chain", "bp_exact")
    network_fb: Any  # ForwardBackwardResult
    bp_fb: Any
    representation: Representation
    n_data: int  # held-out data used (agreement, losses, representations)
    fb_data: int  # data per time of the forward–backward experiment

    def summary(self) -> dict:
        """One row: each measure reduced to a number (the sweep table's row)."""
        from rhm_jax.theory import midpoint_crossing

        cfg = self.config.rhm_config
        agree = self.agreement
        half = int(np.argmin(np.abs(agree.times - 0.5)))
        P = self.config.train_size
        net_p0, net_se = self.network_fb.sampled[0, :, 0], self.network_fb.sampled_se[0, :, 0]
        # BP's curve from its marginal estimator: the same expectation as its sampled one,
        # with less variance. Network and BP see the same data and noise, so the gap's
        # standard error taken as if independent overstates it.
        bp_p0, bp_se = self.bp_fb.marginal[0, :, 0], self.bp_fb.marginal_se[0, :, 0]
        gap = net_p0 - bp_p0
        gap_se = np.sqrt(net_se**2 + bp_se**2)
        worst = int(np.argmax(np.abs(gap)))
        times = self.network_fb.times
        chance = 1.0 / cfg.n_classes
        grid = float(np.min(np.diff(times))) if len(times) > 1 else math.nan
        row = {**_run_columns(self), "num_steps": self.num_steps,
               "sampler": sampler_name(self.num_steps),
               "kl_mean": nan_mean(agree.kl), "top1_mean": nan_mean(agree.top1),
               "t_half": float(agree.times[half]), "kl_at_t_half": json_float(agree.kl[half]),
               "top1_at_t_half": json_float(agree.top1[half]),
               "top1_at_t_half_se": json_float(agree.top1_se[half]),
               "regret_at_t_half": json_float(agree.regret[half]),
               "regret_at_t_half_se": json_float(agree.regret_se[half]),
               "top1_clear_at_t_half": json_float(agree.top1_clear[half]),
               "top1_clear_at_t_half_se": json_float(agree.top1_clear_se[half]),
               "clear_at_t_half": json_float(agree.clear[half]),
               "kl_emp_mean": None if agree.kl_emp is None else nan_mean(agree.kl_emp),
               "top1_emp_mean": None if agree.top1_emp is None else nan_mean(agree.top1_emp),
               "kl_emp_bp_mean": None if agree.kl_emp_bp is None else nan_mean(agree.kl_emp_bp),
               "loss_network": self.losses.network, "loss_bp": self.losses.bp,
               "loss_gap": self.losses.gap, "loss_gap_se": self.losses.gap_se,
               "entropy": self.losses.entropy,
               "P0_gap_max": float(abs(gap[worst])), "P0_gap_max_se": json_float(gap_se[worst]),
               "P0_gap_max_t": float(times[worst]), "fb_data": self.network_fb.n_data,
               "P0_drop_t_network": json_float(midpoint_crossing(times, net_p0, chance, 1.0)),
               "P0_drop_t_bp": json_float(midpoint_crossing(times, bp_p0, chance, 1.0)),
               "time_grid_step": json_float(grid)}
        for source, stats in self.samples.items():
            row[f"{source}_fully_valid"] = stats.fully_valid
            row[f"{source}_valid"] = stats.valid.tolist()
            row[f"{source}_copy"] = stats.copy
            row[f"{source}_class_tv"] = json_float(stats.class_tv)
        row["copy_perfect"] = None if P is None else P / cfg.P_max
        return row

    def rows(self) -> list[dict]:
        """Tidy rows, one per measure × time × level (the ``measure`` column says which)."""
        from rhm_jax.experiments import to_rows

        base = _run_columns(self)
        out = []
        a = self.agreement
        for j, t in enumerate(a.times):
            row = {**base, "measure": "agreement", "t": float(t), "n_data": a.n_data,
                   "repeats": a.repeats, "tokens_per_datum": json_float(a.tokens[j])}
            for name in ("kl", "top1", "regret", "top1_clear", "sq_error", "kl_emp", "top1_emp",
                         "kl_emp_bp"):
                values = getattr(a, name)
                row[name] = None if values is None else json_float(values[j])
                row[f"{name}_se"] = None if values is None else json_float(getattr(a, f"{name}_se")[j])
            row["clear"] = json_float(a.clear[j])
            row["clear_margin"] = CLEAR_MARGIN
            row["explained"] = None if a.explained is None else json_float(a.explained[j])
            out.append(row)
        out.append({**base, "measure": "loss", "units": "nats per token",
                    **{k: json_float(v) for k, v in self.losses._asdict().items()}})
        for source, stats in self.samples.items():
            for level in range(len(stats.valid)):
                out.append({**base, "measure": "generation", "source": source, "level": level,
                            "valid": float(stats.valid[level]),
                            "valid_se": json_float(stats.valid_se[level]),
                            "fully_valid": stats.fully_valid,
                            "fully_valid_se": json_float(stats.fully_valid_se), "copy": stats.copy,
                            "copy_se": json_float(stats.copy_se), "copy_perfect": stats.copy_perfect,
                            "class_histogram": stats.class_histogram.tolist(),
                            "class_tv": json_float(stats.class_tv), "distinct": stats.distinct,
                            "n": stats.n, "num_steps": (None if source == "bp_exact"
                                                        else self.num_steps),
                            "sampler": (None if source == "bp_exact"
                                        else sampler_name(self.num_steps))})
        cfg = self.config.rhm_config
        for source, result in (("network", self.network_fb), ("bp", self.bp_fb)):
            for row in to_rows(result, cfg, PROCESS_OF_OBJECTIVE[self.config.loss], **base,
                               measure="forward_backward", source=source,
                               num_steps=self.num_steps if source == "network" else None,
                               sampler=(sampler_name(self.num_steps) if source == "network"
                                        else "bp_posterior")):
                out.append(row)
        r = self.representation
        for j, t in enumerate(r.times):
            for k in range(r.similarity.shape[1]):
                level = k if r.kind == "level" else None
                out.append({**base, "measure": "representation", "kind": r.kind, "t": float(t),
                            "index": k, "similarity": float(r.similarity[j, k]),
                            "similarity_se": json_float(r.similarity_se[j, k]),
                            "similarity_chance": float(r.chance[k]),
                            "P_sampled": None if level is None else float(r.P_sampled[j, level]),
                            "P_sampled_se": None if level is None else json_float(r.P_sampled_se[j, level]),
                            "n_data": r.n_data})
        return out


def _run_columns(result: RunComparison) -> dict:
    config = result.config
    cfg = config.rhm_config
    P = config.train_size
    return {"run": result.run_dir, "v": cfg.v, "m": cfg.m, "s": cfg.s, "L": cfg.L,
            "n_classes": cfg.n_classes, "loss_name": config.loss, "process": PROCESS_OF_OBJECTIVE[config.loss],
            "architecture": config.model.architecture, "width": config.model.width,
            "train_size": P, "online": P is None,
            "P_units": None if P is None else P / P_unit(cfg),
            "P_over_P_max": None if P is None else P / cfg.P_max, "step": result.step,
            "ema": result.ema}


def _flat(config: dict, prefix: str = "") -> dict:
    """``{"model": {"width": 8}}`` -> ``{"model.width": 8}``."""
    out = {}
    for name, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def check_config_json(run_dir, config) -> None:
    """Refuses a run whose ``config.json`` disagrees with its checkpoint's configuration.

    A comparison uses the configuration stored in the checkpoint (what was trained);
    ``config.json`` beside it is what people and the command line read. When the two
    disagree (an edited file, a folder put together by hand) no result can say which run
    it describes, so it is refused. Both are read through
    :meth:`~rhm_jax.denoise.train.TrainConfig.from_dict`, so defaults filled in for an
    older file are no disagreement. A folder without ``config.json`` passes.

    Args:
      run_dir: the run folder.
      config: the checkpoint's :class:`~rhm_jax.denoise.train.TrainConfig`
        (``load_run(run_dir).config``).

    Raises:
      ValueError: one line naming each differing field with both values, or saying that
        ``config.json`` is no valid training configuration.
    """
    from rhm_jax.denoise.train import TrainConfig

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return
    try:
        written = TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"run_dir = {str(run_dir)!r}: its config.json is not a valid training "
                         f"configuration ({err}); the checkpoint's configuration is the one "
                         "trained") from None
    ours, stored = (_flat(json.loads(json.dumps(c.to_dict()))) for c in (written, config))
    differ = sorted(name for name in ours.keys() | stored.keys()
                    if ours.get(name) != stored.get(name))
    if differ:
        fields = ", ".join(f"{name} ({ours.get(name)!r} in config.json, "
                           f"{stored.get(name)!r} in the checkpoint)" for name in differ)
        raise ValueError(f"run_dir = {str(run_dir)!r}: config.json disagrees with the "
                         f"configuration stored in the checkpoint on {fields}: restore "
                         "config.json to the checkpoint's configuration before comparing")


def _stage(bar, text):
    if bar is not None:
        bar.set_postfix_str(text)


def compare_run(run_dir, *, key=None, times=None, n_data: int | None = None,
                n_samples: int = 256,
                num_steps: int | None = None, repeats: int = 1, ema: bool = False,
                fb_data: int | None = None, chunk_size: int = 256, bp_chain: bool = True,
                mesh=None, progress: bool = False) -> RunComparison:
    """Runs every comparison on one training run folder (``rhm-jax train``'s output).

    Args:
      run_dir: the run folder (its latest checkpoint is loaded).
      key: PRNG key (default ``jax.random.key(0)``); every measure gets its own fold.
      times: ``(T,)`` times in ``(0, 1]`` (default ``0.1, 0.2, ..., 1.0``), snapped to the
        objective's grid.
      n_data: held-out data, from the run's test set (default 256, or the whole test set
        when smaller): more than its ``test_size`` is reduced to ``test_size`` with a
        warning (:attr:`RunComparison.n_data` records the number used).
      n_samples: sequences generated from pure noise (network, BP chain, exact BP).
      num_steps: reverse steps (default :func:`default_num_steps`: for masking, one token
        at a time).
      repeats: noise draws per held-out datum (agreement and losses).
      ema: use the EMA parameters (a run trained without them is refused).
      fb_data: data per time of the forward–backward experiment, fresh from the grammar
        (default: ``n_data`` as given, 256 by default).
      chunk_size: data per compiled call.
      bp_chain: also generate with BP in the network's sampler (the sampler's own floor).
      mesh: device mesh for the forward–backward experiment.
      progress: show progress.

    Returns:
      :class:`RunComparison`, with the values used (``n_data``, ``fb_data``, ``ema``,
      ``num_steps``, the snapped times in its measures).

    Raises:
      ValueError: before any measure, when the run's ``config.json`` disagrees with the
        configuration stored in its checkpoint (:func:`check_config_json`; the comparison
        uses the checkpoint's), ``ema`` is asked of a run without EMA parameters, or two
        times coincide on the training grid (:func:`snap_times`).
    """
    from rhm_jax.denoise.train import datasets, load_run
    from rhm_jax.sampling import sample_data

    key = jax.random.key(0) if key is None else check_key("key", key)
    asked = 256 if n_data is None else check_int("n_data", n_data, 1)
    n_samples = check_int("n_samples", n_samples, 1)
    fb_data = asked if fb_data is None else check_int("fb_data", fb_data, 1)
    run = load_run(run_dir)
    config = run.config  # the checkpoint's own: config.json only has to agree with it
    check_config_json(run_dir, config)
    if ema and run.ema_model is None:
        raise ValueError(f"ema = {ema!r}, but run_dir = {str(run_dir)!r} has no EMA parameters "
                         f"(trained with ema_decay = {config.ema_decay}): compare its "
                         "parameters with ema = False")
    ema = bool(ema)
    if n_data is not None and asked > config.test_size:
        warnings.warn(f"n_data = {asked} exceeds the test set of run_dir = "
                      f"{str(run_dir)!r} ({config.test_size} held-out data): using "
                      f"{config.test_size}", UserWarning, stacklevel=2)
    n_data = min(asked, config.test_size)
    cfg = config.rhm_config
    objective = run.objective
    denoiser = Denoiser.from_run(run, ema=ema)
    times = snap_times(objective, np.round(np.linspace(0.1, 1.0, 10), 12)
                       if times is None else times)
    num_steps = default_num_steps(objective, cfg.d) if num_steps is None else \
        check_num_steps(objective.process, num_steps)
    train_tokens, test_tokens = datasets(config, run.grammar)
    train_np = None if train_tokens is None else np.asarray(train_tokens)
    x0 = np.asarray(test_tokens)[:n_data]
    grammar = with_inverse_tables(run.grammar)
    keys = [jax.random.fold_in(key, i) for i in range(8)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=5 + bp_chain, desc=Path(run_dir).name, unit="measure", leave=False)

    def done():
        if bar is not None:
            bar.update(1)

    predict, params = network_predictor(denoiser)
    _stage(bar, "agreement with BP")
    agree = agreement(keys[0], predict, params, objective, grammar, x0, times,
                      train_tokens=train_np, repeats=repeats, chunk_size=chunk_size)
    done()
    _stage(bar, "losses")
    losses = compare_losses(keys[1], predict, params, objective, grammar, x0,
                            repeats=max(repeats, 4), chunk_size=chunk_size)
    done()
    _stage(bar, "generation")
    samples = {"network": sample_stats(grammar, network_samples(
        keys[2], denoiser, n_samples, num_steps, chunk_size=chunk_size), train_np)}
    done()
    if bp_chain:
        _stage(bar, "generation, BP chain")
        samples["bp_chain"] = sample_stats(grammar, bp_chain_samples(
            keys[3], objective, grammar, n_samples, num_steps, chunk_size=chunk_size), train_np)
        done()
    samples["bp_exact"] = sample_stats(
        grammar, sample_data(keys[4], grammar, n_samples).tokens, train_np)
    _stage(bar, "forward-backward")
    network_fb, bp_fb = forward_backward_pair(keys[5], denoiser, grammar, times, fb_data,
                                              num_steps, mesh=mesh)
    done()
    _stage(bar, "representations")
    representation = representation_similarity(keys[6], denoiser, grammar, x0, times,
                                               num_steps, chunk_size=chunk_size)
    done()
    if bar is not None:
        bar.close()
    return RunComparison(str(run_dir), config, run.step, num_steps, ema, agree, losses,
                         samples, network_fb, bp_fb, representation, len(x0), fb_data)


def sweep_table(results) -> list[dict]:
    """One summary row per run, sorted by the number of training data ``P`` (online last):
    how each measure approaches BP as ``P`` grows (``P_units`` = ``P / (v·m**(L+1))``)."""
    rows = [r.summary() for r in results]
    return sorted(rows, key=lambda r: (r["train_size"] is None, r["train_size"] or 0))
