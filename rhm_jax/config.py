"""Configuration of a Random Hierarchy Model (DESIGN.md §1)."""

from __future__ import annotations

import dataclasses
import math
import numbers


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} = {value} must be >= {minimum}")


@dataclasses.dataclass(frozen=True)
class RHMConfig:
    """Shape of a Random Hierarchy Model.

    Frozen and hashable, so it can be a static argument of ``jax.jit``.

    Args:
      v: vocabulary size of every level below the root.
      m: number of production rules (synonyms) per symbol.
      s: branching factor (length of each production).
      L: depth; data are sequences of ``d = s**L`` tokens.
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
        _check_int("v", self.v, 2)
        _check_int("m", self.m, 1)
        _check_int("s", self.s, 2)
        _check_int("L", self.L, 1)
        if self.n_classes is None:
            object.__setattr__(self, "n_classes", int(self.v))
        _check_int("n_classes", self.n_classes, 1)
        for name in ("v", "m", "s", "L", "n_classes"):  # normalise numpy ints for hashing
            object.__setattr__(self, name, int(getattr(self, name)))
        n_max = max(self.n_classes, self.v)
        if n_max * self.m > self.v**self.s:
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
        """Sample-complexity unit ``n_classes * m**L`` (DESIGN.md §7)."""
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
