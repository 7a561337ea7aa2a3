"""Argument checks shared by every public entry point: one rule and one message per kind.

Each check names the argument, shows the value it got and states the rule, and runs in the
Python wrapper before any JAX work. Values are checked before any cast (``2**32 + 3`` is
out of range, not ``3``). Checks that need numbers (ranges) run only on concrete input;
under ``jax.jit`` a traced argument gets the checks its type and shape allow.

* :func:`check_int` — a Python or NumPy integer (not a bool, not a float), in a range.
* :func:`check_bool` — ``True`` or ``False`` (``'no'`` is not ``False``).
* :func:`check_key` — a PRNG key: typed (``jax.random.key``) or legacy uint32
  (``jax.random.PRNGKey``).
* :func:`check_int_values` — an integer array whose concrete values lie in a range.
* :func:`check_fits` — refuse an allocation larger than the device's memory, saying how
  large it would be.
"""

from __future__ import annotations

import math
import numbers
import operator
import os

import jax
import numpy as np

__all__ = ["describe", "check_int", "check_bool", "check_key", "check_int_values",
           "check_tokens", "format_bytes", "memory_limit", "check_fits"]


def _is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def describe(value) -> str:
    """A short description of ``value`` for an error message: ``int 3``, ``str 'abc'``,
    ``float32 array of shape (2, 3)``, ``None``."""
    if value is None:
        return "None"
    if _is_traced(value):
        return f"a traced value of type {value.aval.str_short()}"
    if isinstance(value, (np.generic,)):
        return repr(value)
    if isinstance(value, (np.ndarray, jax.Array)):
        dtype = value.dtype
        return f"{dtype} array of shape {tuple(value.shape)}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int: any integer (Python, NumPy, a 0-d integer array), never a
    bool or a float, within ``[minimum, maximum]`` where given.

    Raises:
      TypeError: ``value`` is not an integer (``n must be an integer, got float 2.5``).
      ValueError: out of range (``n = 0 must be >= 1``).

    Examples:
      >>> check_int("n", np.int64(3), minimum=1)
      3
    """
    is_bool = isinstance(value, (bool, np.bool_)) or (
        getattr(value, "dtype", None) is not None and np.dtype(value.dtype) == np.bool_)
    if is_bool or _is_traced(value):
        index = None
    elif isinstance(value, numbers.Integral):
        index = int(value)
    else:
        try:
            index = operator.index(value)  # 0-d integer arrays; not floats or strings
        except TypeError:
            index = None
    if index is None:
        extra = " (it sets a shape, so it must be concrete)" if _is_traced(value) else ""
        raise TypeError(f"{name} must be an integer, got {describe(value)}{extra}")
    if minimum is not None and maximum is not None and not minimum <= index <= maximum:
        raise ValueError(f"{name} = {index} must be in [{minimum}, {maximum}]")
    if minimum is not None and index < minimum:
        raise ValueError(f"{name} = {index} must be >= {minimum}")
    if maximum is not None and index > maximum:
        raise ValueError(f"{name} = {index} must be <= {maximum}")
    return index


def check_bool(name: str, value) -> bool:
    """``value`` as a Python bool; only ``True``/``False`` (or NumPy bools) are accepted."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {describe(value)}")


def _legacy_key_shape() -> tuple:
    """Shape of one raw key of the default PRNG implementation (``(2,)`` for threefry)."""
    impl = jax.config.jax_default_prng_impl
    if impl not in _LEGACY_SHAPES:
        _LEGACY_SHAPES[impl] = tuple(
            jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape)
    return _LEGACY_SHAPES[impl]


_LEGACY_SHAPES: dict = {}


def check_key(name: str, key, batch_shape: tuple = ()):
    """A PRNG key (or an array of them with shape ``batch_shape``), returned unchanged.

    Typed keys (``jax.random.key(seed)``) and legacy raw uint32 keys
    (``jax.random.PRNGKey(seed)``) are both accepted; both give the same draws.

    Raises:
      TypeError: anything else, e.g. ``key must be a PRNG key from jax.random.key(seed),
        got int 3``.
    """
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()))
    rule = f"{name} must be a PRNG key from jax.random.key(seed)"
    if batch_shape:
        rule = f"{name} must be an array of PRNG keys of shape {batch_shape}"
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != tuple(batch_shape):
            what = "one key" if not batch_shape else f"shape {batch_shape}"
            raise ValueError(f"{name} must be {what}, got a key array of shape {shape}")
        return key
    if dtype is not None and np.dtype(dtype) == np.uint32 and isinstance(key, (np.ndarray, jax.Array)):
        want = tuple(batch_shape) + _legacy_key_shape()
        if shape == want:
            return key
        raise TypeError(f"{rule} (or a raw jax.random.PRNGKey of shape {want}), "
                        f"got uint32 array of shape {shape}")
    raise TypeError(f"{rule}, got {describe(key)}")


def check_int_values(name: str, values, low, high, *, dtype=np.int32):
    """An integer array with concrete values in ``[low, high)``, cast to ``dtype`` after
    the check (so ``2**32 + 3`` is refused rather than wrapped to ``3``). ``low`` and
    ``high`` are integers or arrays that broadcast against ``values`` (per-column bounds).

    Traced arrays get the dtype check only. Returns a ``jax.Array``.

    Raises:
      TypeError: a non-integer (or bool) dtype: floats are not truncated.
      ValueError: a value outside the range, naming its position.
    """
    import jax.numpy as jnp

    if _is_traced(values):
        array_dtype = values.dtype
    else:
        values = np.asarray(values)
        array_dtype = values.dtype
    if array_dtype == np.bool_ or not np.issubdtype(array_dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {array_dtype}")
    if not _is_traced(values) and values.size:
        lows, highs = np.broadcast_to(low, values.shape), np.broadcast_to(high, values.shape)
        bad = (values < lows) | (values >= highs)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            position = f"[{', '.join(map(str, where))}]" if where else ""
            raise ValueError(f"{name}{position} = {values[where]} must lie in "
                             f"[{lows[where]}, {highs[where]})")
    return jnp.asarray(values, dtype=dtype)


def format_bytes(num_bytes: float) -> str:
    """``1.5e9 -> '1.5 GB'`` (powers of 1000, as disks and most people count)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if abs(num_bytes) < 1000 or unit == "EB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} EB"  # pragma: no cover


def memory_limit(device=None, *, host: bool = False) -> tuple[int | None, str]:
    """``(bytes, where)``: the memory an allocation on ``device`` may use.

    An accelerator's own limit (``memory_stats()['bytes_limit']``); on CPU, or with
    ``host=True``, the host's physical memory. ``(None, ...)`` when neither is known.
    """
    stats = None
    if not host:
        device = device if device is not None else jax.devices()[0]
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - some backends do not implement it
            stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"the {format_bytes(stats['bytes_limit'])} of {device}"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None, "unknown memory"
    return int(total), f"the {format_bytes(total)} of host memory"


def check_fits(what: str, num_bytes: int, device=None, *, host: bool = False,
               advice: str = "reduce the size") -> int:
    """Refuse an allocation of ``num_bytes`` that cannot fit in ``device``'s memory (the
    host's with ``host=True``).

    ``what`` says what is being allocated (``"sample_data(n=1) at d = 2**40 tokens"``);
    the error states its size and the memory there is. Returns ``num_bytes``.
    """
    limit, where = memory_limit(device, host=host)
    if limit is not None and num_bytes > limit:
        raise ValueError(f"{what} would allocate about {format_bytes(num_bytes)}, more than "
                         f"{where}: {advice}")
    return num_bytes


def check_tokens(name: str, tokens, d: int, num_values: int, *, batched: bool = False):
    """An integer token array of shape ``(d,)`` or ``(n, d)`` (only ``(n, d)`` when
    ``batched``) whose concrete values lie in ``[0, num_values)``, as int32.

    The range is checked on the values as given, before the cast: ``2**32 + 3`` is out of
    range, not ``3``. Under ``jax.jit`` a traced array gets the dtype and shape checks.
    """
    import jax.numpy as jnp

    dtype = jnp.result_type(tokens)
    if dtype == jnp.bool_ or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {dtype}")
    shape = jnp.shape(tokens)
    ndims = (2,) if batched else (1, 2)
    if len(shape) not in ndims or shape[-1] != d:
        allowed = "(n, d)" if batched else "(d,) or (n, d)"
        raise ValueError(f"{name} has shape {shape}, but must be {allowed} with d = s**L = {d}")
    if not _is_traced(tokens):
        array = np.asarray(tokens)
        if array.size and (array.min() < 0 or array.max() >= num_values):
            offending = array.min() if array.min() < 0 else array.max()
            raise ValueError(f"{name} contains {offending}, but values must lie in [0, {num_values})")
    return jnp.asarray(tokens, dtype=jnp.int32)


def as_array(name: str, value):
    """``value`` unchanged when it is an array (NumPy, JAX, or traced), else read as NumPy
    reads it (``np.asarray``): nested lists of ints become an integer array.

    Raises:
      ValueError: a ragged nesting (``tokens must be a rectangular array, got list ...``).

    Examples:
      >>> as_array("tokens", [[1, 2], [3, 4]]).dtype.kind
      'i'
    """
    if isinstance(value, (np.ndarray, jax.Array)) or _is_traced(value):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError):
        raise ValueError(f"{name} must be a rectangular array (lists of equal lengths), got "
                         f"{describe(value)}") from None


__all__.append("as_array")


def integral_value(value):
    """``value`` as an ``int`` when it is a real number with an integral value (``2.0``, a
    NumPy float ``3.0``), else unchanged — so that :func:`check_int` accepts depths read from
    float arrays and still refuses ``2.5``, NaN or a string."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return value


__all__.append("integral_value")
