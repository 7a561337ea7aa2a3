"""A Flax NNX image U-Net that predicts the noise ε (the DDPM design, scaled down).

The DDPM/ADM layout: a 3×3 input convolution; per resolution level ``num_res_blocks``
residual blocks (GroupNorm, SiLU, 3×3 convolution, twice; the time embedding added in
between), then a stride-2 convolution down; two residual blocks in the middle; the mirror
path up (nearest-neighbour upsampling and a 3×3 convolution), each block fed the
concatenation of its input and the down path's activation at the same place (skip
connections); a GroupNorm, SiLU and 3×3 output convolution to the image's channels. The
time ``t ∈ [0, 1]`` enters through a sinusoidal embedding and a two-layer MLP, projected
into every block. The last convolution of every block and the output convolution start
at zero (ADM's initialisation: each block starts as the identity). No attention: at 8×8 to
32×32 the receptive field of two levels already spans the image.

The default is small enough to train on a CPU in minutes on 8×8 digits.

References:
  Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
  Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rhm_jax.denoise.models import time_embedding
from rhm_jax.images.diffusion import EpsPredictor, RespacedSchedule
from rhm_jax.validation import check_int

__all__ = ["UNetConfig", "ImageUNet", "build_unet", "jit_build", "UNetEps", "unet_predictor"]


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Shape of an :class:`ImageUNet` (hashable; stored with every checkpoint).

    Args:
      channels: channels at the first level.
      channel_mults: one multiplier of ``channels`` per resolution level; the image is
        halved between consecutive levels, so its height and width must be multiples of
        ``2**(len(channel_mults) - 1)``.
      num_res_blocks: residual blocks per level on the way down (one more on the way up).
      groups: GroupNorm groups; must divide every level's channel count.

    Examples:
      >>> UNetConfig(channels=16, channel_mults=(1, 2, 2)).widths
      (16, 32, 32)
      >>> UNetConfig(channels=12, groups=8)
      Traceback (most recent call last):
      ...
      ValueError: groups = 8 must divide the channels of every level, (12, 24)
    """

    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    groups: int = 8

    def __post_init__(self):
        object.__setattr__(self, "channels", check_int("channels", self.channels, 1))
        object.__setattr__(self, "num_res_blocks",
                           check_int("num_res_blocks", self.num_res_blocks, 1))
        object.__setattr__(self, "groups", check_int("groups", self.groups, 1))
        mults = self.channel_mults
        if not isinstance(mults, (tuple, list)) or not mults:
            raise ValueError(f"channel_mults = {mults!r} must be a non-empty tuple of integers")
        object.__setattr__(self, "channel_mults",
                           tuple(check_int("channel_mults", m, 1) for m in mults))
        widths = self.widths
        if any(w % self.groups for w in widths):
            raise ValueError(f"groups = {self.groups} must divide the channels of every "
                             f"level, {widths}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels per level."""
        return tuple(self.channels * m for m in self.channel_mults)

    def check_image_shape(self, image_shape) -> tuple[int, int, int]:
        """``(H, W, C)`` checked against the levels; returned as a tuple of ints."""
        if len(tuple(image_shape)) != 3:
            raise ValueError(f"image_shape = {image_shape!r} must be (H, W, C)")
        h, w, c = (check_int("image_shape", x, 1) for x in image_shape)
        factor = 2 ** (len(self.channel_mults) - 1)
        if h % factor or w % factor:
            raise ValueError(f"image_shape = {(h, w, c)}: height and width must be multiples "
                             f"of 2**(len(channel_mults) - 1) = {factor} (one halving per "
                             "level)")
        return h, w, c


def _conv(rngs, in_ch, out_ch, stride=1, zero=False):
    init = nnx.initializers.zeros_init() if zero else nnx.initializers.lecun_normal()
    return nnx.Conv(in_ch, out_ch, kernel_size=(3, 3), strides=(stride, stride), padding="SAME",
                    kernel_init=init, rngs=rngs)


class _ResBlock(nnx.Module):
    """``skip(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + W temb)))``."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, groups: int, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(in_ch, num_groups=_groups(in_ch, groups), rngs=rngs)
        self.conv1 = _conv(rngs, in_ch, out_ch)
        self.time = nnx.Linear(time_dim, out_ch, rngs=rngs)
        self.norm2 = nnx.GroupNorm(out_ch, num_groups=groups, rngs=rngs)
        self.conv2 = _conv(rngs, out_ch, out_ch, zero=True)
        self.skip = (nnx.Conv(in_ch, out_ch, kernel_size=(1, 1), rngs=rngs)
                     if in_ch != out_ch else None)

    def __call__(self, x, temb):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.time(nnx.silu(temb))[:, None, None, :]
        h = self.conv2(nnx.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


def _groups(channels: int, groups: int) -> int:
    """``groups``, or the largest divisor of ``channels`` below it (a concatenation's
    channel count need not be a multiple of ``groups``)."""
    return max(g for g in range(1, groups + 1) if channels % g == 0)


class _Upsample(nnx.Module):
    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv = _conv(rngs, channels, channels)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class ImageUNet(nnx.Module):
    """ε-prediction U-Net for ``(n, H, W, C)`` images and times ``t`` ``(n,)`` in ``[0, 1]``.

    Build it with :func:`build_unet`; ``net(x, t)`` has the shape of ``x``.
    """

    def __init__(self, config: UNetConfig, image_shape, rngs: nnx.Rngs):
        _, _, c = config.check_image_shape(image_shape)
        ch, groups, widths = config.channels, config.groups, config.widths
        self.embed_dim = ch
        time_dim = 4 * ch
        self.time_mlp = nnx.Sequential(nnx.Linear(ch, time_dim, rngs=rngs), nnx.silu,
                                       nnx.Linear(time_dim, time_dim, rngs=rngs))
        self.conv_in = _conv(rngs, c, ch)
        skip_channels = [ch]
        down, downsample = [], []
        width = ch
        for level, out_ch in enumerate(widths):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(_ResBlock(width, out_ch, time_dim, groups, rngs))
                width = out_ch
                skip_channels.append(width)
            down.append(nnx.List(blocks))
            last = level == len(widths) - 1
            downsample.append(None if last else _conv(rngs, width, width, stride=2))
            if not last:
                skip_channels.append(width)
        self.down = nnx.List(down)
        self.downsample = nnx.List(downsample)
        self.middle = nnx.List([_ResBlock(width, width, time_dim, groups, rngs) for _ in range(2)])
        up, upsample = [], []
        for level in reversed(range(len(widths))):
            out_ch = widths[level]
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(_ResBlock(width + skip_channels.pop(), out_ch, time_dim, groups,
                                        rngs))
                width = out_ch
            up.append(nnx.List(blocks))
            upsample.append(_Upsample(width, rngs) if level > 0 else None)
        self.up = nnx.List(up)
        self.upsample = nnx.List(upsample)
        self.norm_out = nnx.GroupNorm(width, num_groups=groups, rngs=rngs)
        self.conv_out = _conv(rngs, width, c, zero=True)

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        temb = self.time_mlp(time_embedding(t, self.embed_dim))
        h = self.conv_in(x)
        skips = [h]
        for blocks, downsample in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, temb)
                skips.append(h)
            if downsample is not None:
                h = downsample(h)
                skips.append(h)
        for block in self.middle:
            h = block(h, temb)
        for blocks, upsample in zip(self.up, self.upsample):
            for block in blocks:
                h = block(jnp.concatenate([h, skips.pop()], axis=-1), temb)
            if upsample is not None:
                h = upsample(h)
        return self.conv_out(nnx.silu(self.norm_out(h)))


@functools.lru_cache(maxsize=16)
def _initialised(cls, args: tuple, seed: int):
    """``(graphdef, state)`` of ``cls(*args, rngs=nnx.Rngs(params=seed))``, initialised as
    one compiled program and cached per (hashable) arguments."""
    def constructor():
        return cls(*args, rngs=nnx.Rngs(params=seed))

    graphdef = nnx.graphdef(nnx.eval_shape(constructor))
    return graphdef, jax.jit(lambda: nnx.split(constructor())[1])()


def jit_build(cls, *args, seed: int):
    """``cls(*args, rngs=nnx.Rngs(params=seed))`` with hashable ``args``, initialised as one
    compiled program (built op by op, every initialiser of a new shape compiles on its
    own) and cached: a second model of the same configuration costs a copy. The
    parameters are those of the plain constructor.
    """
    graphdef, state = _initialised(cls, tuple(args), seed)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


def build_unet(config: UNetConfig, image_shape, seed: int) -> ImageUNet:
    """An :class:`ImageUNet` for images of shape ``(H, W, C)``, initialised from ``seed``."""
    if not isinstance(config, UNetConfig):
        raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
    seed = check_int("seed", seed, minimum=0)
    return jit_build(ImageUNet, config, config.check_image_shape(image_shape), seed=seed)


@dataclasses.dataclass(frozen=True)
class UNetEps:
    """``apply(params, x_k, k)`` of an :class:`ImageUNet` (hashable: a static argument of
    ``jax.jit``): the network at the time ``s_k / T`` of ``schedule``'s steps ``k``."""

    graphdef: Any
    schedule: RespacedSchedule

    def __call__(self, params, x_k, k):
        return nnx.merge(self.graphdef, params)(x_k, self.schedule.time(k))


def unet_predictor(model: ImageUNet, schedule: RespacedSchedule) -> EpsPredictor:
    """A trained :class:`ImageUNet` as the ``eps_hat(x_k, k)`` of ``schedule``'s steps."""
    if not isinstance(model, ImageUNet):
        raise TypeError(f"model must be an ImageUNet, got {type(model).__name__}")
    if not isinstance(schedule, RespacedSchedule):
        raise TypeError(f"schedule must be a RespacedSchedule, got {type(schedule).__name__}")
    graphdef, state = nnx.split(model)
    return EpsPredictor(UNetEps(graphdef, schedule), nnx.to_pure_dict(state))
