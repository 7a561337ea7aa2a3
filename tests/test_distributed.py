"""Multi-process JAX end to end: ``rhm-jax phase`` on 2 processes x 2 CPU devices.

Two processes on localhost join through ``jax.distributed`` (``RHM_JAX_*`` variables, read
by ``rhm_jax.sharding.initialize_distributed``), shard the batch over the 4 global devices
and must (a) both exit cleanly, (b) leave the files to process 0 only and (c) reproduce a
single-process run on 4 devices. Each datum has its own key, so only the float32 order of
the cross-device sums can differ.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PHASE = ["-m", "rhm_jax", "phase", "--v", "8", "--m", "2", "--s", "2", "--L", "2",
         "--process", "epsilon", "--times", "3", "--n-data", "8", "--no-progress"]
TIMEOUT = 300  # seconds per run; it takes ~20-60 s on 2 busy cores


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RHM_JAX_")}
    # conftest's device-count flag would fight --devices; the CLI sets its own.
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _start(out: Path, devices: int, cwd: Path, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *PHASE, "--devices", str(devices), "--out", str(out)],
                            cwd=cwd, env=_env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(procs: dict) -> dict:
    """Wait for every run (killing all on timeout); return name -> (returncode, output)."""
    results = {}
    for name, proc in procs.items():
        try:
            output, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in procs.values():
                other.kill()
            output, _ = proc.communicate()
            output += f"\n[test] killed after {TIMEOUT} s"
        results[name] = (proc.returncode, output)
    return results


def _report(results: dict) -> str:
    return "\n".join(f"===== {name}: exit {rc} =====\n{out[-6000:]}"
                     for name, (rc, out) in results.items())


def _rows(folder: Path) -> list[dict]:
    with open(folder / "results.jsonl") as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.slow
def test_phase_two_processes_matches_single_process(tmp_path):
    outs = {pid: tmp_path / f"out{pid}" for pid in (0, 1)}
    reference = tmp_path / "single"
    port = _free_port()
    procs = {f"process {pid}": _start(
        outs[pid], 2, tmp_path, RHM_JAX_COORDINATOR=f"localhost:{port}",
        RHM_JAX_NUM_PROCESSES="2", RHM_JAX_PROCESS_ID=str(pid)) for pid in (0, 1)}
    procs["single process"] = _start(reference, 4, tmp_path)
    results = _finish(procs)
    report = _report(results)
    assert all(rc == 0 for rc, _ in results.values()), report

    # Only process 0 writes, and it writes everything.
    assert not outs[1].exists(), report
    expected = {"results.jsonl", "finite_size.json", "meta.json", "phase_class.png",
                "phase_levels.png", "phase_processes.png"}
    assert {p.name for p in outs[0].iterdir()} == expected
    meta = json.loads((outs[0] / "meta.json").read_text())["environment"]
    assert (meta["process_count"], meta["num_devices"]) == (2, 4), meta

    # Same numbers as one process on 4 devices (up to float32 summation order).
    multi, single = _rows(outs[0]), _rows(reference)
    assert len(multi) == len(single) == 3 * 3  # noise levels x levels 0..L
    for a, b in zip(multi, single):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float) and key.endswith("_se"):
                # se = sqrt(E[x^2] - E[x]^2): the difference of float32 sums amplifies noise.
                np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-4, err_msg=key)
            elif isinstance(a[key], float):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
            else:
                assert a[key] == b[key], key
    fs_multi = json.loads((outs[0] / "finite_size.json").read_text())
    fs_single = json.loads((reference / "finite_size.json").read_text())
    assert fs_multi["eps_half"].keys() == fs_single["eps_half"].keys()
    for L, eps in fs_multi["eps_half"].items():
        assert (eps is None) == (fs_single["eps_half"][L] is None), L
        if eps is not None:
            np.testing.assert_allclose(eps, fs_single["eps_half"][L], rtol=1e-4)


def test_initialize_distributed_checks_its_settings(monkeypatch):
    from rhm_jax.sharding import initialize_distributed

    for name in ("RHM_JAX_COORDINATOR", "RHM_JAX_NUM_PROCESSES", "RHM_JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert initialize_distributed() is False  # nothing asked: single process
    monkeypatch.setenv("RHM_JAX_COORDINATOR", "localhost:1234")
    with pytest.raises(ValueError, match="missing: RHM_JAX_NUM_PROCESSES, RHM_JAX_PROCESS_ID"):
        initialize_distributed()
    monkeypatch.setenv("RHM_JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="RHM_JAX_NUM_PROCESSES = 'two' must be an integer"):
        initialize_distributed()
    monkeypatch.setenv("RHM_JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("RHM_JAX_PROCESS_ID", "2")
    with pytest.raises(ValueError, match="0 <= RHM_JAX_PROCESS_ID < RHM_JAX_NUM_PROCESSES"):
        initialize_distributed()
