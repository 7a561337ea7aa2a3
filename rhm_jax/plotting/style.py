"""The one style and the one save helper of every rhm_jax figure.

Figures are written to files (matplotlib's ``Agg`` backend, safe on headless machines and
in CI), atomically (a reader never sees half a PNG), at one resolution.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rhm_jax.io import atomic_write  # noqa: E402

__all__ = ["DPI", "save_figure"]

#: Resolution of every saved figure (dots per inch).
DPI = 110


def save_figure(fig, path) -> None:
    """Writes ``fig`` as a PNG to ``path`` atomically, trimmed to its content, and closes it."""
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
