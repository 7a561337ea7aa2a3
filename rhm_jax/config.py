"""Configuration of a Random Hierarchy Model (``docs/theory/model.md``)."""

from __future__ import annotations

import dataclasses
import math

from rhm_jax.validation import check_int, format_bytes

#: Most tokens one datum may have: positions are int32 throughout (``2**31 - 1``).
MAX_TOKENS = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class RHMConfig:
    """Shape of a Random Hierarchy Model.

    Frozen and hashable, so it can be a static argument of ``jax.jit``.

    Args:
      v: vocabulary size of every level below the root.
      m: number of production rules (synonyms) per symbol.
      s: branching factor (length of each production).
      L: depth; data are sequences of ``d = s**L`` tokens, at most ``2**31 - 1`` (int32
        positions; ``L <= 30`` for ``s = 2``).
      n_classes: number of root symbols (classes); defaults to ``v``.

    Examples:
      >>> cfg = RHMConfig(v=8, m=2, s=2, L=3)
      >>> cfg.d, cfg.n_classes, cfg.P_max
      (8, 8, 1024)
    """

    v: int
    m: int
    s: int
    L: int
    n_classes: int | None = None

    def __post_init__(self):
        minimum = {"v": 2, "m": 1, "s": 2, "L": 1, "n_classes": 1}
        if self.n_classes is None:
            object.__setattr__(self, "n_classes", self.v)
        for name in ("v", "m", "s", "L", "n_classes"):  # as Python ints: numpy ints hash alike
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum[name]))
        for name in ("v", "n_classes"):  # symbols are int32 everywhere
            if getattr(self, name) > MAX_TOKENS:
                raise ValueError(f"{name} = {getattr(self, name)} must be <= 2**31 - 1 "
                                 "(symbols are int32)")
        # L > 30 is refused before s**L is formed (L = 10**9 would take minutes to power).
        if self.L > 30 or self.s**self.L > MAX_TOKENS:
            max_L = 0
            while self.s ** (max_L + 1) <= MAX_TOKENS:
                max_L += 1
            size = (f" ({format_bytes(4 * self.s**self.L)} as int32 for one datum)"
                    if self.L * math.log2(self.s) < 200 else "")
            raise ValueError(
                f"L = {self.L} gives d = s**L = {self.s}**{self.L} tokens per datum{size}, more "
                f"than 2**31 - 1 (token positions are int32): L must be <= {max_L} for "
                f"s = {self.s}")
        n_max = max(self.n_classes, self.v)
        # v**s is formed only when it could be the smaller side (s can be up to 2**31 - 1).
        surely_enough = self.s * math.log2(self.v) > (n_max * self.m).bit_length() + 1
        if not surely_enough and n_max * self.m > self.v**self.s:
            raise ValueError(
                f"max(n_classes, v) * m = {n_max} * {self.m} = {n_max * self.m} exceeds "
                f"v**s = {self.v}**{self.s} = {self.v ** self.s}: each level needs that many "
                "distinct s-tuples (rules are drawn without replacement)"
            )

    # ---- derived quantities -------------------------------------------------------------
    @property
    def d(self) -> int:
        """Number of visible tokens, ``s**L``."""
        return self.s**self.L

    @property
    def f(self) -> float:
        """Fraction of s-tuples that are valid productions, ``m / v**(s-1)``."""
        return self.m / self.v ** (self.s - 1)

    @property
    def num_internal_nodes(self) -> int:
        """Number of nodes that expand (levels 0..L-1): ``(s**L - 1) / (s - 1)``."""
        return (self.s**self.L - 1) // (self.s - 1)

    @property
    def P_max(self) -> int:
        """Number of distinct data, ``n_classes * m**((s**L-1)/(s-1))``, as an exact int."""
        return self.n_classes * self.m**self.num_internal_nodes

    @property
    def log_P_max(self) -> float:
        """Natural log of ``P_max``, computed without overflow."""
        return math.log(self.n_classes) + self.num_internal_nodes * math.log(self.m)

    @property
    def P_star(self) -> int:
        """Sample-complexity unit ``n_classes * m**L`` (``docs/theory/denoisers.md``)."""
        return self.n_classes * self.m**self.L

    def num_symbols(self, level: int) -> int:
        """Alphabet size at ``level`` (``n_classes`` at the root, ``v`` below)."""
        if not 0 <= level <= self.L:
            raise ValueError(f"level = {level} must be in [0, L={self.L}]")
        return self.n_classes if level == 0 else self.v

    def num_nodes(self, level: int) -> int:
        """Number of nodes at ``level``: ``s**level``."""
        if not 0 <= level <= self.L:
            raise ValueError(f"level = {level} must be in [0, L={self.L}]")
        return self.s**level
