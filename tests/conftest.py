"""Test set-up: 4 emulated CPU devices (for sharding tests) before JAX starts, and a
compilation cache for the session.

The suite's time is mostly XLA compiling. Many tests rebuild a program that another test
already compiled (a fresh ``jax.jit`` closure per call: every ``train`` run, every
sampler); with JAX's persistent cache pointed at a folder that lives as long as the
session, such a rebuild reads the executable back instead of compiling it again. The
folder is new each session and removed at its end, so no test ever sees a stale entry.
"""

import os
import shutil
import tempfile

# Must happen before the JAX backend initialises; harmless for single-device tests.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=4").strip()
# The tests' programs are small: XLA spends far longer optimising their machine code than
# running it. The unoptimised backend compiles them about twice as fast (the notebooks'
# smoke runs do the same); the programs and so what the tests check are unchanged.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

_CACHE_DIR = None


def pytest_configure(config):
    """Points JAX's persistent compilation cache at a folder of this process's own (each
    pytest-xdist worker has its own: no two processes write one file)."""
    global _CACHE_DIR
    import jax

    if jax.config.jax_compilation_cache_dir:  # the caller chose a cache: keep it
        return
    _CACHE_DIR = tempfile.mkdtemp(prefix="rhm-jax-test-xla-cache-")
    # ``rhm-jax`` commands the tests start as subprocesses share it (rather than the user's
    # ~/.cache/rhm_jax); they run one at a time under this worker
    os.environ.setdefault("RHM_JAX_COMPILE_CACHE", _CACHE_DIR)
    jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # cache every program
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # of any size


def pytest_unconfigure(config):
    if _CACHE_DIR is not None:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)
