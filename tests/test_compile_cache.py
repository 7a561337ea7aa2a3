"""The CLI's persistent compilation cache: where it lives, how it is turned off, and that a
second run served from it writes the same files (the main job is compile-bound)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from rhm_jax.cli import build_parser
from rhm_jax.cli import runtime as cli


@pytest.fixture
def clean_env(monkeypatch):
    for name in (cli.CACHE_ENV, "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_default_folder_is_user_level(clean_env, tmp_path):
    clean_env.setenv("HOME", str(tmp_path))
    assert cli.compile_cache_dir() == str(tmp_path / ".cache" / "rhm_jax" / "jax")
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cli.compile_cache_dir() == str(tmp_path / "xdg" / "rhm_jax" / "jax")


@pytest.mark.parametrize("value", ["0", "off", "OFF", "false", "no", ""])
def test_environment_turns_it_off(clean_env, value):
    clean_env.setenv(cli.CACHE_ENV, value)
    assert cli.compile_cache_dir() is None


def test_environment_folder_and_flag(clean_env, tmp_path):
    clean_env.setenv(cli.CACHE_ENV, str(tmp_path / "c"))
    assert cli.compile_cache_dir() == str(tmp_path / "c")
    assert cli.compile_cache_dir(disabled=True) is None  # --no-compile-cache wins


def test_jax_own_variable_is_respected(clean_env, tmp_path):
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path))
    assert cli.compile_cache_dir() is None  # JAX reads its own variable


@pytest.mark.parametrize("command", ["sample", "phase", "train", "compare", "chi"])
def test_every_command_has_the_opt_out_flag(command):
    parser = build_parser()
    extra = ["runs/x"] if command == "compare" else []
    args = parser.parse_args([command, *extra, "--no-compile-cache"])
    assert args.no_compile_cache is True
    assert parser.parse_args([command, *extra]).no_compile_cache is False


def test_second_run_is_served_from_the_cache_with_identical_files(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, cli.CACHE_ENV: str(cache),
           # cache every program, however fast it compiles (this command's are small)
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        subprocess.run([sys.executable, "-m", "rhm_jax", "sample", "--n-data", "64", "--L", "3",
                        "--out", str(out)], check=True, env=env, capture_output=True)
        if run == 0:
            entries = sorted(p.name for p in cache.iterdir())
            assert entries, "the first run wrote nothing to the cache"
        outputs.append(np.load(out / "data.npz"))
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing new was compiled
    for name in outputs[0].files:
        np.testing.assert_array_equal(outputs[0][name], outputs[1][name])
