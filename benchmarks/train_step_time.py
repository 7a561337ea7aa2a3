"""Milliseconds per training step of masking-diffusion U-Nets on (16, 4, 2, 4), one model
after another in one process (compare them within a run: absolute speed drifts by day).

    python benchmarks/train_step_time.py '{"batch_size": 256, "model": {"width": 64, "block_depth": 0}}' ...
    python benchmarks/train_step_time.py --devices 2 '{"batch_size": 256, "model": {"width": 64}}'

Each spec is a JSON object of ``TrainConfig`` fields (``model``: ``ModelConfig`` fields).
A step is timed as ``train`` runs it: ``lax.scan`` over ``steps_per_call`` = 25 steps in
one compiled call, the state placed replicated on the batch's mesh; the first call
(compile) is reported apart, then 4 calls (100 steps) are timed.
"""
import argparse
import json
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("specs", nargs="+", help="JSON TrainConfig overrides, one model each")
parser.add_argument("--devices", type=int, default=1, help="CPU devices (one per core)")
args = parser.parse_args()

import jax  # noqa: E402

if args.devices > 1:
    jax.config.update("jax_num_cpu_devices", args.devices)

from rhm_jax.denoise.models import ModelConfig  # noqa: E402
from rhm_jax.denoise.train import TrainConfig, init_state, make_grammar, make_train_steps  # noqa: E402
from rhm_jax.sharding import data_mesh, replicated  # noqa: E402

for spec in args.specs:
    fields = json.loads(spec)
    model = ModelConfig(**fields.pop("model", {}))
    config = TrainConfig(v=16, m=4, s=2, L=4, loss="masked_elbo", model=model, steps=10_000,
                         steps_per_call=25, log_every=25, eval_every=25, checkpoint_every=25,
                         **fields)
    grammar = make_grammar(config)
    graphdef, state = init_state(config)
    mesh = data_mesh(args.devices)
    state = jax.device_put(state, replicated(mesh))
    run = make_train_steps(config, graphdef, grammar, mesh=mesh)
    start = time.perf_counter()
    state, metrics = run(state, None, 25)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(4):
        state, metrics = run(state, None, 25)
    jax.block_until_ready(metrics)
    step = (time.perf_counter() - start) / 100
    print(json.dumps({"spec": json.loads(spec), "devices": args.devices,
                      "first_call_s": round(first, 2), "ms_per_step": round(1e3 * step, 2),
                      "data_per_s": round(config.batch_size / step)}), flush=True)
sys.exit(0)
