"""The second round of this sweep: variants of the 13.8-min run that the library has no flag
for, patched in here (experiments, not library code), trained with ``train`` itself.

    python benchmarks/analysis/train_variants.py RUN_DIR VARIANT STOP_AFTER [--devices N]

VARIANT: ``base`` (the ``../masking_w64_2dev`` configuration), ``mlp_levels4`` (its flag
``--mlp-levels 4``), ``no_down_leaf`` (no MLP on the leaves' down path only),
``muon`` (no_down_leaf, optimised by ``optax.contrib.muon``: lr 0.02 on the hidden
matrices, Adam at 2e-3 on the embedding, readout, biases and norms, same warm-up + cosine),
``top`` (no_down_leaf, levels 0-1 with two MLPs of hidden width 8 x 64),
``no_clip`` (no_down_leaf, no gradient clipping). The run stops after STOP_AFTER steps of
the 18,000-step schedule; compare the ``test`` rows of ``metrics.jsonl`` at equal data.
"""
import argparse
import importlib
import json
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("variant", choices=["base", "mlp_levels4", "no_down_leaf", "muon", "top",
                                        "no_clip"])
parser.add_argument("stop_after", type=int)
parser.add_argument("--devices", type=int, default=2)
args = parser.parse_args()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", args.devices)
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import rhm_jax.denoise.models as M  # noqa: E402

T = importlib.import_module("rhm_jax.denoise.train")  # the module, not the function
here = Path(__file__).resolve().parent
config = json.loads((here.parent / "results" / "train" / "masking_w64_2dev" / "config.json").read_text())
variant = args.variant
if variant == "mlp_levels4":
    config["model"]["mlp_levels"] = 4
if variant == "no_clip":
    config["grad_clip"] = 0.0

if variant in ("no_down_leaf", "muon", "top", "no_clip"):
    original_init, original_mlp = M.TreeUNet.__init__, M.ResidualMLP

    def patched_init(self, rhm, model, num_states, rngs):
        # the leaves' MLPs are the first ``block_depth`` built: skip them without drawing
        # from ``rngs``, so every other parameter is initialised as in the runs recorded
        skipped = []

        def residual_mlp(*a, **k):
            if len(skipped) < model.block_depth:
                skipped.append(None)
                return None
            return original_mlp(*a, **k)

        M.ResidualMLP = residual_mlp
        try:
            original_init(self, rhm, model, num_states, rngs)
        finally:
            M.ResidualMLP = original_mlp
        self.leaf_mlps = nnx.List([])
        if variant == "top":  # levels 0 and 1, built in the order the recorded run built them
            w, L = model.width, rhm.L

            def wide():
                return nnx.List([original_mlp(w, 8 * w, model.norm, False, rngs)
                                 for _ in range(2)])
            self.up_mlps[0] = wide()  # up block to level 1
            self.down_mlps[L - 2] = wide()  # down block to level 1
            self.down_mlps[L - 1] = wide()  # down block to the root

    M.TreeUNet.__init__ = patched_init

if variant == "muon":
    from optax.contrib import MuonDimensionNumbers, muon

    def hidden_matrices(params):
        def label(path, x):
            names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
            if x.ndim == 2 and "kernel" in names and not {"readout", "embed"} & set(names):
                return MuonDimensionNumbers(reduction_axis=0, output_axis=1)
            return None
        return jax.tree_util.tree_map_with_path(label, params)

    def make_optimizer(cfg):
        def schedule(peak):
            return optax.warmup_cosine_decay_schedule(0.0, peak, cfg.warmup_steps, cfg.steps, 0.0)
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                           muon(schedule(0.02), adam_learning_rate=schedule(2e-3),
                                muon_weight_dimension_numbers=hidden_matrices))

    T.make_optimizer = make_optimizer

T.train(T.TrainConfig.from_dict(config), args.run_dir, overwrite=True,
        stop_after=args.stop_after, progress=False, plot=False)
