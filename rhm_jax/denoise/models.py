"""Flax NNX denoisers: a tree-shaped U-Net and a small bidirectional transformer (``docs/theory/denoisers.md``).

Both map a noisy sequence to per-token outputs over the vocabulary, ``(n, d, v)``:

* discrete processes (masking, uniform substitution): ``x_t`` is ``(n, d)`` int tokens in
  ``[0, num_states)`` (the mask is the extra state ``v`` for masking), embedded by a table;
* Gaussian: ``x_t`` is ``(n, d, v)`` floats, embedded by a linear map.

``t`` (``(n,)`` floats in ``[0, 1]``) enters through a sinusoidal embedding and an MLP when
``time_conditioning`` is on; masking diffusion does not need it (the optimal denoiser only
depends on which tokens are masked, ``docs/theory/denoisers.md``), so the models accept and ignore ``t``
when it is off.

The tree U-Net mirrors the RHM tree: a convolution with filter = stride = ``s`` is a
linear map of each node's ``s`` children (the ``s`` consecutive positions ``j*s .. j*s+s-1``)
to that node, so after ``L - l`` down-blocks there is exactly one position per node of
level ``l``; up-blocks are the transposed maps, with skip connections from the down path
at the same level.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from rhm_jax.validation import check_bool, check_int
from rhm_jax.config import RHMConfig

__all__ = ["ModelConfig", "TreeUNet", "Transformer", "build_model", "time_embedding"]

ARCHITECTURES = ("unet", "transformer")
NORMS = ("layer", "rms", "none")
POSITIONS = ("learned", "rotary")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of a denoiser network (hashable; stored in every checkpoint).

    Args:
      architecture: ``"unet"`` (tree U-Net) or ``"transformer"``.
      width: channels of every block (U-Net) or model dimension (transformer).
      block_depth: U-Net only: position-wise residual MLP layers after each down/up
        convolution (0 = the convolution alone).
      mlp_levels: U-Net only: put those MLPs only on the levels nearest the root,
        ``l < mlp_levels`` (``None``: on every level, leaves included). Level ``l`` has
        ``s**l`` positions, so the MLPs of the lowest levels are most of the cost of a
        step, while the levels near the root are the hardest to learn.
      norm: ``"layer"``, ``"rms"`` or ``"none"``.
      num_layers: transformer blocks.
      num_heads: attention heads (must divide ``width``).
      mlp_ratio: hidden width of the transformer MLP, in units of ``width``.
      positions: transformer position encoding, ``"learned"`` or ``"rotary"``.
      time_conditioning: feed ``t`` to the network; ``None`` (default) lets the training
        configuration decide (off for masking, whose optimum does not depend on ``t``; on
        for uniform substitution and Gaussian noise).
    """

    architecture: str = "unet"
    width: int = 128
    block_depth: int = 1
    mlp_levels: int | None = None
    norm: str = "layer"
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    positions: str = "rotary"
    time_conditioning: bool | None = None

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture = {self.architecture!r} must be one of {ARCHITECTURES}")
        if self.norm not in NORMS:
            raise ValueError(f"norm = {self.norm!r} must be one of {NORMS}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions = {self.positions!r} must be one of {POSITIONS}")
        for name, minimum in (("width", 1), ("block_depth", 0), ("num_layers", 1),
                              ("num_heads", 1), ("mlp_ratio", 1)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
        if self.mlp_levels is not None:
            object.__setattr__(self, "mlp_levels", check_int("mlp_levels", self.mlp_levels, 0))
        if self.time_conditioning is not None:
            object.__setattr__(self, "time_conditioning",
                               check_bool("time_conditioning", self.time_conditioning))
        if self.architecture == "transformer":
            if self.width % self.num_heads:
                raise ValueError(f"width = {self.width} must be a multiple of num_heads = "
                                 f"{self.num_heads}")
            if self.positions == "rotary" and (self.width // self.num_heads) % 2:
                raise ValueError(f"rotary positions need an even head dimension, got width / "
                                 f"num_heads = {self.width // self.num_heads}")


def time_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding of ``t ∈ [0, 1]`` (scaled to ``[0, 1000]``), ``(n,) -> (n, dim)``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half, 1))
    angles = 1000.0 * t[:, None].astype(jnp.float32) * freqs[None]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


def _norm(kind: str, width: int, rngs: nnx.Rngs):
    if kind == "layer":
        return nnx.LayerNorm(width, rngs=rngs)
    if kind == "rms":
        return nnx.RMSNorm(width, rngs=rngs)
    return lambda x: x


class _Input(nnx.Module):
    """Token table (discrete) or linear map (Gaussian) to ``width`` channels, plus ``t``."""

    def __init__(self, num_states: int | None, v: int, width: int, time_conditioning: bool,
                 rngs: nnx.Rngs):
        self.discrete = num_states is not None
        if self.discrete:
            self.embed = nnx.Embed(num_states, width, rngs=rngs)
        else:
            self.embed = nnx.Linear(v, width, rngs=rngs)
        self.time_conditioning = time_conditioning
        if time_conditioning:
            self.time_mlp = nnx.Sequential(nnx.Linear(width, width, rngs=rngs), nnx.gelu,
                                           nnx.Linear(width, width, rngs=rngs))
        self.width = width

    def __call__(self, x_t: jax.Array, t: jax.Array):
        h = self.embed(x_t) if self.discrete else self.embed(x_t.astype(jnp.float32))
        temb = None
        if self.time_conditioning:
            temb = self.time_mlp(time_embedding(jnp.broadcast_to(t, h.shape[:1]), self.width))
        return h, temb


class ResidualMLP(nnx.Module):
    """Pre-norm position-wise ``x + W2 gelu(W1 norm(x) [+ time])``."""

    def __init__(self, width: int, hidden: int, norm: str, time_conditioning: bool,
                 rngs: nnx.Rngs):
        self.norm = _norm(norm, width, rngs)
        self.up = nnx.Linear(width, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, width, rngs=rngs)
        self.time = nnx.Linear(width, hidden, rngs=rngs) if time_conditioning else None

    def __call__(self, h, temb):
        z = self.up(self.norm(h))
        if self.time is not None:
            z = z + self.time(temb)[:, None, :]
        return h + self.down(nnx.gelu(z))


class _TreeConv(nnx.Module):
    """Children -> parent (``down``) or parent -> children (``up``): filter = stride = ``s``."""

    def __init__(self, s: int, width: int, norm: str, up: bool, rngs: nnx.Rngs):
        self.s, self.up_dir = s, up
        if up:
            self.linear = nnx.Linear(width, s * width, rngs=rngs)
        else:
            self.linear = nnx.Linear(s * width, width, rngs=rngs)
        self.norm = _norm(norm, width, rngs)

    def __call__(self, h):
        n, positions, width = h.shape
        if self.up_dir:
            out = self.linear(h).reshape(n, positions * self.s, width)
        else:
            out = self.linear(h.reshape(n, positions // self.s, self.s * width))
        return nnx.gelu(self.norm(out))


class TreeUNet(nnx.Module):
    """Tree-shaped U-Net over the RHM's ``L`` levels (``docs/theory/denoisers.md``).

    Down path: embedding at level ``L`` (``s**L`` positions), then for ``l = L-1 .. 0`` a
    tree convolution to ``s**l`` positions (one per node of level ``l``) followed by
    ``block_depth`` residual MLPs (only on levels ``l < mlp_levels`` when that is set). Up path: the mirror image, adding the down path's
    activations at each level (skip connections), then a readout to ``v`` logits.

    :meth:`levels` returns the down path's activations per level (used to compare hidden
    representations with the tree's levels).

    Examples:
      >>> from flax import nnx
      >>> cfg = RHMConfig(v=8, m=2, s=2, L=3)
      >>> net = TreeUNet(cfg, ModelConfig(width=16), num_states=9, rngs=nnx.Rngs(0))
      >>> [h.shape for h in net.levels(jnp.zeros((5, 8), int), jnp.zeros(5))]
      [(5, 1, 16), (5, 2, 16), (5, 4, 16), (5, 8, 16)]
      >>> net(jnp.zeros((5, 8), int), jnp.zeros(5)).shape
      (5, 8, 8)
    """

    def __init__(self, config: RHMConfig, model: ModelConfig, num_states: int | None,
                 rngs: nnx.Rngs):
        w, s = model.width, config.s
        tc = model.time_conditioning
        self.L = config.L
        self.input = _Input(num_states, config.v, w, tc, rngs)

        def mlps(level):
            on = model.mlp_levels is None or level < model.mlp_levels
            return nnx.List([ResidualMLP(w, 2 * w, model.norm, tc, rngs)
                             for _ in range(model.block_depth if on else 0)])

        L = config.L
        self.leaf_mlps = mlps(L)
        self.down = nnx.List([_TreeConv(s, w, model.norm, False, rngs) for _ in range(L)])
        self.down_mlps = nnx.List([mlps(L - 1 - i) for i in range(L)])  # levels L-1 .. 0
        self.up = nnx.List([_TreeConv(s, w, model.norm, True, rngs) for _ in range(L)])
        self.up_mlps = nnx.List([mlps(i + 1) for i in range(L)])  # levels 1 .. L
        self.out_norm = _norm(model.norm, w, rngs)
        self.readout = nnx.Linear(w, config.v, rngs=rngs)

    def _down(self, x_t, t):
        h, temb = self.input(x_t, t)
        for mlp in self.leaf_mlps:
            h = mlp(h, temb)
        skips = [h]  # level L first
        for conv, mlps in zip(self.down, self.down_mlps):
            h = conv(h)
            for mlp in mlps:
                h = mlp(h, temb)
            skips.append(h)
        return skips, temb

    def levels(self, x_t: jax.Array, t: jax.Array) -> list[jax.Array]:
        """Down-path activations, level ``0`` (root, 1 position) to ``L`` (``s**L``)."""
        return self._down(x_t, t)[0][::-1]

    def __call__(self, x_t: jax.Array, t: jax.Array) -> jax.Array:
        skips, temb = self._down(x_t, t)
        h = skips[-1]
        for i, (conv, mlps) in enumerate(zip(self.up, self.up_mlps)):
            h = conv(h) + skips[-2 - i]
            for mlp in mlps:
                h = mlp(h, temb)
        return self.readout(self.out_norm(h))


def _rotary(x: jax.Array) -> jax.Array:
    """Rotary position embedding on ``(n, d, heads, head_dim)`` (positions along axis 1)."""
    positions, head_dim = x.shape[1], x.shape[-1]
    half = head_dim // 2
    freqs = 1.0 / (10_000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = jnp.arange(positions, dtype=jnp.float32)[:, None] * freqs[None]  # (d, half)
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    first, second = x[..., :half], x[..., half:]
    return jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)


class _Attention(nnx.Module):
    def __init__(self, width: int, heads: int, rotary: bool, rngs: nnx.Rngs):
        self.heads, self.rotary = heads, rotary
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, h):
        n, d, width = h.shape
        q, k, v = jnp.split(self.qkv(h).reshape(n, d, 3 * self.heads, -1), 3, axis=2)
        if self.rotary:
            q, k = _rotary(q), _rotary(k)
        attended = jax.nn.dot_product_attention(q, k, v)  # bidirectional: no mask
        return self.out(attended.reshape(n, d, width))


class _TransformerBlock(nnx.Module):
    def __init__(self, model: ModelConfig, rngs: nnx.Rngs):
        w = model.width
        self.norm1 = _norm(model.norm, w, rngs)
        self.attention = _Attention(w, model.num_heads, model.positions == "rotary", rngs)
        self.mlp = ResidualMLP(w, model.mlp_ratio * w, model.norm, model.time_conditioning, rngs)
        self.time = nnx.Linear(w, w, rngs=rngs) if model.time_conditioning else None

    def __call__(self, h, temb):
        z = self.norm1(h)
        if self.time is not None:
            z = z + self.time(temb)[:, None, :]
        return self.mlp(h + self.attention(z), temb)


class Transformer(nnx.Module):
    """A small pre-norm bidirectional transformer (the MD4/MDLM backbone, scaled down).

    Examples:
      >>> from flax import nnx
      >>> cfg = RHMConfig(v=8, m=2, s=2, L=3)
      >>> mc = ModelConfig("transformer", width=16, num_layers=2, num_heads=2)
      >>> Transformer(cfg, mc, num_states=9, rngs=nnx.Rngs(0))(jnp.zeros((5, 8), int), jnp.zeros(5)).shape
      (5, 8, 8)
    """

    def __init__(self, config: RHMConfig, model: ModelConfig, num_states: int | None,
                 rngs: nnx.Rngs):
        w = model.width
        self.input = _Input(num_states, config.v, w, model.time_conditioning, rngs)
        self.learned_positions = model.positions == "learned"
        if self.learned_positions:
            self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (config.d, w)))
        self.blocks = nnx.List([_TransformerBlock(model, rngs) for _ in range(model.num_layers)])
        self.out_norm = _norm(model.norm, w, rngs)
        self.readout = nnx.Linear(w, config.v, rngs=rngs)

    def __call__(self, x_t: jax.Array, t: jax.Array) -> jax.Array:
        h, temb = self.input(x_t, t)
        if self.learned_positions:
            h = h + self.position.value[None]
        for block in self.blocks:
            h = block(h, temb)
        return self.readout(self.out_norm(h))


def build_model(config: RHMConfig, model: ModelConfig, num_states: int | None, seed: int):
    """The network of ``model`` for data of ``config``, initialised from ``seed``.

    ``num_states``: the number of input symbols for a discrete process (``v + 1`` with the
    mask), ``None`` for Gaussian (one-hot-shaped float input).
    """
    if not isinstance(config, RHMConfig):
        raise TypeError(f"config must be an RHMConfig, got {type(config).__name__}")
    if not isinstance(model, ModelConfig):
        raise TypeError(f"model must be a ModelConfig, got {type(model).__name__}")
    if model.time_conditioning is None:
        model = dataclasses.replace(model, time_conditioning=False)
    cls = TreeUNet if model.architecture == "unet" else Transformer
    return cls(config, model, num_states, rngs=nnx.Rngs(params=seed))
