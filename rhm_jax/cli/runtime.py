"""What every computing command sets up before JAX starts: devices, compile cache, progress.

* ``--devices N`` emulates ``N`` CPU devices (one per core is faster than one device using
  all cores); it must act before JAX creates its backends, so :func:`set_devices` runs
  right after parsing.
* The persistent XLA compilation cache (:func:`compile_cache_dir`) lets a repeated command
  skip compiling; results do not depend on it.
* ``--no-progress`` turns progress bars off.
"""

from __future__ import annotations

import os
import sys

__all__ = ["CACHE_ENV", "add_runtime_args", "set_devices", "compile_cache_dir",
           "enable_compile_cache"]

#: Environment variable for the CLI's persistent compilation cache: a folder, or ``0`` /
#: ``off`` to turn the cache off (the ``--no-compile-cache`` flag does the same).
CACHE_ENV = "RHM_JAX_COMPILE_CACHE"


def add_runtime_args(parser, *, devices: bool = True, progress: bool = True) -> None:
    """``--devices``, ``--no-progress`` and ``--no-compile-cache``."""
    from rhm_jax.cli.flags import integer_flag

    if devices:
        parser.add_argument("--devices", type=integer_flag("--devices", 1), default=None,
                            help="emulate N CPU devices (default: as JAX finds them)")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-compile-cache", action="store_true",
        help=f"do not keep compiled programs across runs (default: kept in "
             f"~/.cache/rhm_jax/jax, or ${CACHE_ENV}; {CACHE_ENV}=0 also turns it off)")


def set_devices(n: int | None) -> None:
    """Emulate ``n`` CPU devices: ``XLA_FLAGS`` before JAX is imported, else JAX's option
    (which must still come before the first computation)."""
    if n is None:
        return
    if n < 1:
        raise SystemExit(f"--devices = {n} must be >= 1")
    if "jax" in sys.modules:
        import jax
        jax.config.update("jax_num_cpu_devices", n)
    else:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def compile_cache_dir(disabled: bool = False) -> str | None:
    """The folder of the CLI's persistent XLA compilation cache, or ``None`` for no cache.

    Every command compiles the same programs on every run (one BP program per depth for
    ``phase``), so the CLI keeps XLA's compiled programs across runs in a user-level folder:
    ``$RHM_JAX_COMPILE_CACHE`` if set (``0``/``off``/``false``/``no`` turn it off), else
    ``$XDG_CACHE_HOME/rhm_jax/jax`` (``~/.cache/rhm_jax/jax``). A cache folder already
    configured (``JAX_COMPILATION_CACHE_DIR``, or ``jax_compilation_cache_dir`` set by the
    calling program) is kept. Results do not depend on the cache: a cached program is the
    same compiled program.
    """
    if disabled:
        return None
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        if value.strip().lower() in ("", "0", "off", "false", "no"):
            return None
        return os.path.abspath(os.path.expanduser(value))
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rhm_jax", "jax")


def enable_compile_cache(folder: str | None) -> None:
    """Point JAX's persistent compilation cache at ``folder`` (``None``: leave it off)."""
    if folder is None:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:  # a read-only home must not stop the job: run uncached
        print(f"rhm-jax: compilation cache off ({folder}: {err.strerror}); set "
              f"{CACHE_ENV} to a writable folder", file=sys.stderr)
        return
    import jax

    if jax.config.jax_compilation_cache_dir:  # already configured (by the user or a caller)
        return
    jax.config.update("jax_compilation_cache_dir", folder)
