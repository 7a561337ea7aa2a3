"""Notebooks run top to bottom in smoke mode (code cells executed in order)."""

import json
import pathlib

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, monkeypatch):
    monkeypatch.setenv("RHM_JAX_SMOKE", "1")
    cells = json.loads(path.read_text())["cells"]
    namespace = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            exec(compile(source, f"{path.name}", "exec"), namespace)
    assert namespace["SMOKE"] is True
    import matplotlib.pyplot as plt
    plt.close("all")


def test_there_is_a_notebook():
    assert NOTEBOOKS
