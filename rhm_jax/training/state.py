"""The train state of an NNX model and the small tree helpers every training task uses.

The whole state of a run is one pytree (MD4's and the Flax examples' pattern): parameters,
optimiser state, the parameters' exponential moving average and the step. It holds no
PRNG key: every random number of step ``k`` is derived from the run's seed and ``k``, so
the step alone is the position of the data and noise streams.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

__all__ = ["TrainState", "to_pure", "from_pure", "global_norm", "count_parameters",
           "all_finite"]


class TrainState(NamedTuple):
    """The whole state of a run (a pytree; what a checkpoint stores).

    Attributes:
      params: the model's parameters (``nnx.split``'s state).
      opt_state: the optimiser's state.
      ema: the exponential moving average of ``params``, or ``None`` without EMA.
      step: optimisation steps taken (an int32 scalar).
    """

    params: nnx.State
    opt_state: optax.OptState
    ema: nnx.State | None
    step: jax.Array


def to_pure(state: TrainState) -> TrainState:
    """``state`` with its NNX states as plain nested dicts (what orbax saves)."""
    return state._replace(params=nnx.to_pure_dict(state.params),
                          ema=None if state.ema is None else nnx.to_pure_dict(state.ema))


def from_pure(template: TrainState, pure: TrainState) -> TrainState:
    """The inverse of :func:`to_pure`: ``pure``'s values in ``template``'s NNX states.

    ``template``'s NNX states are updated in place (they are fresh from initialisation).
    """
    params = template.params
    nnx.replace_by_pure_dict(params, pure.params)
    ema = template.ema
    if ema is not None:
        nnx.replace_by_pure_dict(ema, pure.ema)
    return TrainState(params, pure.opt_state, ema, jnp.asarray(pure.step, jnp.int32))


def global_norm(tree) -> jax.Array:
    """The Euclidean norm of all of ``tree``'s leaves together."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def count_parameters(params) -> int:
    """The number of scalars in ``params``."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def all_finite(tree) -> bool:
    """True when every floating-point leaf of ``tree`` is finite (no NaN, no ±inf)."""
    leaves = [x for x in jax.tree.leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
