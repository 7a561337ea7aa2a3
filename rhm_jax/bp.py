"""Exact belief propagation on the RHM tree (``docs/theory/belief_propagation.md``).

The RHM is a tree-structured factor graph, so sum-product BP gives exact posteriors.
Messages are kept *scaled*: every message is normalised to sum to one and the logs of the
normalisers are summed into ``log_evidence`` (the dynamax HMM convention: cheaper than full
log-space, and exact). Inputs are leaf log-likelihoods ``(n, d, v)``; any per-token
constant in them is harmless (it cancels in the posteriors and shifts ``log_evidence`` by
the same constant that the likelihood definition leaves free).

Impossible evidence. A node whose subtree admits no tree of the grammar gets an all-zero
upward message. We record ``log 0 = -inf`` in ``log_evidence`` and replace that message by
the uniform one, so every later quantity stays finite. Documented fallback: where
``log_evidence == -inf`` the marginals are finite, normalised, but carry no meaning (nodes
with no explanation get the uniform marginal). No NaN is ever produced from valid input.

Invalid evidence. A NaN or ``+inf`` leaf log-likelihood has no meaning (``-inf``, an
impossible value, is legal). Concrete input holding one is refused by the public functions
with a ``ValueError`` naming the first bad entry, before any BP work; so is finite input
whose per-token maxima sum past the float range (``log_evidence`` would be ``+inf``:
subtract a per-token constant, which BP allows). Under ``jax.jit`` (a traced input),
where nothing can be raised, the fault propagates visibly instead of being absorbed by the
uniform fallback: every float output of that datum (marginals, messages, class posterior,
``log_evidence``) is NaN, and every integer output of :func:`sample_posterior` is ``-1``;
the other data of the batch are unaffected.

Layout. Results are one array per level, ``(n, s**l, n_l)``. Internally a chunk of ``c``
data is processed at a time and messages are ``(c, n_l, s**l)``: symbols before nodes, so
the gathers ``u[:, rules[a, psi, k]]`` copy whole contiguous rows of nodes and fuse with
the products and sums around them. Nodes are stored in *digit-reversed* order (node
``j*s + k`` of level ``l+1`` sits at ``k * s**l + j``), so the ``k``-th children of all
parents form one contiguous block and no strided slice is ever taken. The batch is
processed in chunks (``jax.lax.map``) small enough for a level's messages to stay in cache
on CPU; on accelerators the chunks are large. The measurements that chose all this are in
``benchmarks/README.md``.

Multi-core CPUs. A batch sharded over several devices (a ``NamedSharding`` of its first
axis) runs per shard under ``jax.shard_map``. On a CPU, ask for one device per core
before JAX starts (``jax.config.update("jax_num_cpu_devices", os.cpu_count())`` or
``XLA_FLAGS=--xla_force_host_platform_device_count=N``; the CLI's ``--devices N``) and
shard the batch over ``jax.make_mesh((N,), ("data",))``: on 2 cores at (32, 8, 2, 9) this
ran the marginals 1.4-1.5x and the posterior samples 1.4-1.6x faster than one device
using both cores. Results do not depend on the number of devices.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.validation import check_bool, check_int, check_key, describe
from rhm_jax.grammar import (Grammar, InverseTable, check_grammar, inverse_table,
                             max_slots_per_child, with_inverse_tables)
from rhm_jax.sampling import Data

_HIGHEST = jax.lax.Precision.HIGHEST


class Upward(NamedTuple):
    """Result of the upward pass.

    Attributes:
      messages: ``None`` unless asked for (``messages=True``); then a tuple over levels
        ``l = 0..L`` of normalised upward messages ``u_l`` with shape ``(n, s**l, n_l)``:
        ``u_{l,j}(a) ∝ p(evidence below j | a)``.
      class_posterior: ``(n, n_classes)`` posterior of the class (uniform prior).
      log_evidence: ``(n,)`` ``log p(observation)``; ``-inf`` where nothing explains it.
    """

    messages: tuple
    class_posterior: jax.Array
    log_evidence: jax.Array


class BPResult(NamedTuple):
    """Result of full BP.

    Attributes:
      marginals: tuple over levels ``l = 0..L`` of ``(n, s**l, n_l)`` posterior marginals
        ``μ_l``; ``marginals[0][:, 0]`` is the class posterior, ``marginals[-1]`` is
        ``E[onehot(x0) | observation]``.
      upward: ``None`` unless asked for (``messages=True``); then the normalised upward
        messages (as in :class:`Upward`).
      downward: ``None`` unless asked for; then the normalised downward messages ``w_l``
        (``w_0`` is the uniform prior).
      log_evidence: ``(n,)`` ``log p(observation)``.
    """

    marginals: tuple
    upward: tuple
    downward: tuple
    log_evidence: jax.Array


def _normalise(x: jax.Array, axis: int = 1):
    """Normalise ``axis``; all-zero slices become uniform. Returns (x, log of the sum).

    The barrier materialises the sums first: fused into the division, XLA CPU recomputes
    each slice's sum for every entry of it (measured 10% of the whole marginals at
    (32, 8, 2, 9) on one core).
    """
    total = jax.lax.optimization_barrier(jnp.sum(x, axis=axis, keepdims=True))
    ok = total > 0
    normed = jnp.where(ok, x / jnp.where(ok, total, 1), 1 / x.shape[axis])
    return normed, jnp.log(jnp.squeeze(total, axis))


def reverse_digits(x: jax.Array, s: int, axis: int = -1) -> jax.Array:
    """Permute a node axis of size ``s**l`` between natural and digit-reversed order.

    Natural node ``j = d_1 s^{l-1} + ... + d_l`` (``d_1`` the first branch) sits at
    position ``d_l s^{l-1} + ... + d_1`` in the internal order. The map is an involution
    and a pure transpose (no gather).

    Examples:
      >>> import jax.numpy as jnp
      >>> reverse_digits(jnp.arange(8), 2).tolist()
      [0, 4, 2, 6, 1, 5, 3, 7]
    """
    axis = axis % x.ndim
    size, depth = x.shape[axis], 0
    while s**depth < size:
        depth += 1
    if s**depth != size:
        raise ValueError(f"axis {axis} has size {size}, which is not a power of s = {s}")
    if depth <= 1:
        return x
    split = x.reshape(x.shape[:axis] + (s,) * depth + x.shape[axis + 1:])
    order = (list(range(axis)) + list(range(axis + depth - 1, axis - 1, -1))
             + list(range(axis + depth, split.ndim)))
    return split.transpose(order).reshape(x.shape)


def _leaf_messages(leaf_log_likelihood: jax.Array, s: int, internal: bool = True):
    """Leaf messages ``u_L`` ``(c, v, d)`` (internal order; with ``internal=False`` the
    evidence's ``(c, d, v)`` in natural order) and their log-scales ``(c, d)``.

    Scaled so that each token's largest entry is one, not normalised: the level above
    normalises anyway and every later use is invariant to a per-node scale, so the sum
    and division are skipped (a quarter of the upward pass on CPU). An impossible token
    (all ``-inf``) gives an all-zero message; its parent then records ``log 0``.
    """
    peak = jnp.max(leaf_log_likelihood, axis=-1, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0)
    scaled = jnp.exp(leaf_log_likelihood - peak)
    if not internal:  # the evidence's (c, d, v) layout, natural order
        return scaled, peak[..., 0]
    scaled = reverse_digits(jnp.swapaxes(scaled, 1, 2), s, axis=2)
    return jax.lax.optimization_barrier(scaled), peak[..., 0]


def _rows(x: jax.Array, index) -> jax.Array:
    """``x[:, index]``: whole rows of the symbol axis (contiguous over nodes).

    mode="clip": indices are in range by construction, and the default "fill" mode makes
    XLA's compile time grow steeply with the tree size.
    """
    return jnp.take(x, index, axis=1, mode="clip")


UNROLL = 4


def _accumulate(body, count: int, init):
    """``Σ_i body(i)`` as a ``fori_loop`` unrolled ``UNROLL`` times (at least two trips).

    Unrolling lets XLA fuse a few gathers with their products and sum into one pass over
    memory. The loop itself matters too: its carry is a materialised buffer, where a fully
    unrolled sum (no loop) makes XLA CPU materialise every gather separately for the
    normalisation that follows (measured 4x slower on the leaf level of (32, 8, 2, 9)).
    """
    return jax.lax.fori_loop(0, count, body, init, unroll=max(1, min(UNROLL, count // 2)))


def _children(message: jax.Array, s: int) -> jax.Array:
    """``(c, v, s*nodes)`` → ``(c, v, s, nodes)``: ``[:, :, k]`` are the ``k``-th children."""
    c, v, width = message.shape
    return message.reshape(c, v, s, width // s)


def _upward_step(rules: jax.Array, child: jax.Array):
    """``u_{l,j}(a) ∝ Σ_psi Π_k u_{l+1, j*s+k}(R_l[a, psi, k])`` (``docs/theory/belief_propagation.md``).

    The sum over ``psi`` is unrolled so that XLA fuses the row gathers, products and sum
    into one pass that never materialises the ``(c, n_l, m, nodes)`` tensor.

    Returns the normalised message and ``log(normaliser) - log m`` per node (the ``1/m``
    is the uniform rule prior).
    """
    n_l, m, s = rules.shape
    groups = _children(child, s)
    c, _, _, nodes = groups.shape

    def add_rule(psi, total):
        product = _rows(groups[:, :, 0], rules[:, psi, 0])
        for k in range(1, s):
            product = product * _rows(groups[:, :, k], rules[:, psi, k])
        return total + product

    total = _accumulate(add_rule, m, jnp.zeros((c, n_l, nodes), child.dtype))
    # Barriers materialise the sum before its normalisation and the message before the
    # next level: otherwise XLA fuses the gathers into every consumer and recomputes them
    # (measured 15x slower at (32, 8, 2, 9), and compile time exponential in L).
    message, log_total = _normalise(jax.lax.optimization_barrier(total))
    message = jax.lax.optimization_barrier(message)
    return message, log_total - jnp.log(m)


def _upward(grammar: Grammar, leaf_log_likelihood: jax.Array):
    """Upward pass on one chunk, internal layout: (messages over levels, class posterior, log p)."""
    cfg = grammar.config
    message, log_norm = _leaf_messages(leaf_log_likelihood, cfg.s)
    log_evidence = jnp.sum(log_norm, axis=-1)
    messages = [message]
    for level in range(cfg.L - 1, -1, -1):
        message, log_norm = _upward_step(grammar.rules[level], message)
        log_evidence = log_evidence + jnp.sum(log_norm, axis=-1)
        messages.insert(0, message)
    # Root: p(obs) = Σ_a u_0(a) / n_c, with u_0 normalised to sum to one.
    log_evidence = log_evidence - jnp.log(cfg.n_classes)
    return tuple(messages), messages[0][:, :, 0], log_evidence


def _inverse_tables(grammar: Grammar) -> tuple:
    if grammar.inverse is not None:
        return grammar.inverse
    cfg = grammar.config  # traced rules: tables padded to the safe bound
    return tuple(inverse_table(r, v=cfg.v, num_slots=max_slots_per_child(cfg, level))
                 for level, r in enumerate(grammar.rules))


@jax.custom_batching.custom_vmap
def _loop_bound(lengths: jax.Array) -> jax.Array:
    """``max(lengths)``: the trip count of a loop over padded slots, kept unbatched.

    Any bound at least every table's own longest list is correct (extra trips only add
    padded, all-zero slots). So under ``vmap`` over grammars the bound is the max over the
    batch and stays a plain scalar: the loop remains a plain ``while`` loop instead of one
    with a batched predicate, which would select every carry on every trip and trace
    several times slower.
    """
    return jnp.max(lengths)


@_loop_bound.def_vmap
def _loop_bound_vmap(axis_size, in_batched, lengths):
    del axis_size, in_batched
    return jnp.max(lengths), False


def downward_step(table: InverseTable, parent: jax.Array, child_upward: jax.Array):
    """``w_{l+1, j*s+k}(b) ∝ Σ_{(a,psi): R[a,psi,k]=b} w_{l,j}(a) Π_{k'≠k} u_{k'}(R[a,psi,k'])``.

    The sum over slots with ``R[a, psi, k] = b`` runs over the inverse table's columns,
    each a fused row gather (a padded slot points at an all-zero parent row), so there is
    no scatter-add: on CPU this is 4-6x faster than a scatter or a one-hot matmul. A
    table's valid slots come first, so the loop stops after the grammar's longest list
    (a traced count: typically 12-17 of the 21 columns at (32, 8, 2, 9)) without a
    recompile per grammar; ``group`` slots per trip keep their gathers in one fused pass.
    """
    s, v, num_slots = table.parent.shape
    c, n_l, nodes = parent.shape
    group = max(1, min(UNROLL, num_slots))
    width = -(-num_slots // group) * group
    parents = jnp.pad(table.parent, ((0, 0), (0, 0), (0, width - num_slots)),
                      constant_values=n_l)
    tuples = jnp.pad(table.tuples, ((0, 0), (0, 0), (0, width - num_slots), (0, 0)))
    padded = jnp.concatenate([parent, jnp.zeros((c, 1, nodes), parent.dtype)], axis=1)
    groups = _children(child_upward, s)
    children = []
    for k in range(s):
        def add_group(step, total, k=k):
            for i in range(group):
                slot = step * group + i
                term = _rows(padded, parents[k, :, slot])
                for other in range(s):
                    if other != k:
                        term = term * _rows(groups[:, :, other], tuples[k, :, slot, other])
                total = total + term
            return total

        longest = _loop_bound(jnp.sum(parents[k] < n_l, axis=-1))
        trips = (longest + group - 1) // group
        total = jax.lax.fori_loop(0, trips, add_group, jnp.zeros((c, v, nodes), parent.dtype))
        children.append(jax.lax.optimization_barrier(total))
    stacked = jnp.stack(children, axis=2).reshape(c, v, s * nodes)  # internal order
    return jax.lax.optimization_barrier(_normalise(stacked)[0])  # see _upward_step


def marginals_and_messages(grammar: Grammar, leaf_log_likelihood: jax.Array):
    """Full BP on one chunk, internal layout: (marginals, upward, downward, log p)."""
    cfg = grammar.config
    messages, _, log_evidence = _upward(grammar, leaf_log_likelihood)
    c = leaf_log_likelihood.shape[0]
    dtype = messages[0].dtype
    downward = [jnp.full((c, cfg.n_classes, 1), 1 / cfg.n_classes, dtype)]
    for level, table in enumerate(_inverse_tables(grammar)):
        downward.append(downward_step(table, downward[-1], messages[level + 1]))
    marginals = tuple(_normalise(u * w)[0] for u, w in zip(messages, downward))
    return marginals, messages, tuple(downward), log_evidence


def _to_public(x: jax.Array, s: int) -> jax.Array:
    """Internal ``(c, symbols, nodes)`` (digit-reversed nodes) → public ``(c, nodes, symbols)``."""
    return jnp.swapaxes(reverse_digits(x, s, axis=2), 1, 2)


# ---- chunking -----------------------------------------------------------------------------
CPU_CHUNK_BYTES = 2**19   # leaf messages of one chunk on CPU: one core's L2 (512 KiB here)
CPU_SHARD_CHUNK_BYTES = 2**17   # the same per device when the batch is split over CPU devices
ACCELERATOR_CHUNK_BYTES = 2**30


def default_chunk_size(config, n: int | None = None, platform: str | None = None,
                       sharded: bool = False) -> int:
    """Data per step of the chunked BP: the leaf messages of a chunk fill about
    ``CPU_CHUNK_BYTES`` on CPU (so a level stays in cache: 8 data at (32, 8, 2, 9), where
    8 ran 1.2x faster than 32 on one device) and ``ACCELERATOR_CHUNK_BYTES`` elsewhere
    (large batches keep an accelerator busy; the bound keeps memory finite).

    ``sharded``: the chunk of one shard of a batch split over several CPU devices (one
    per core). Each device then works alone on its core, and a quarter of the budget
    (``CPU_SHARD_CHUNK_BYTES``: 2 data at (32, 8, 2, 9), whose upward and downward
    messages then fit that core's L2) ran the marginals 1.1-1.2x faster than 8 data and
    the same for samples (``benchmarks/README.md``).

    Rounded down to a power of two and at least the device count; never above ``n``.
    """
    platform = platform or jax.default_backend()
    if platform != "cpu":
        budget = ACCELERATOR_CHUNK_BYTES
    else:
        budget = CPU_SHARD_CHUNK_BYTES if sharded else CPU_CHUNK_BYTES
    per_datum = 4 * config.v * config.d
    chunk = 1 << max(0, (budget // per_datum).bit_length() - 1)
    chunk = max(chunk, jax.device_count())
    return chunk if n is None else max(1, min(chunk, n))


def map_chunks(fn, xs, chunk: int, interleave: bool | None = None):
    """``fn`` over the leading (batch) axis of the pytree ``xs`` in chunks of ``chunk``.

    With one device, step ``b`` takes the contiguous data ``b*chunk ... (b+1)*chunk - 1``,
    so splitting the inputs and joining the outputs are free reshapes. With several
    devices, datum ``i = a * steps + b`` goes to step ``b``, row ``a``: the chunk axis is
    then the major one, so a batch sharded over devices stays sharded (each device holds
    a block of rows) while ``lax.map`` walks the unsharded step axis; joining the outputs
    costs one device-local transpose. A ragged batch is padded by repeating its last
    datum; the padding is dropped from the results. ``interleave`` forces one order
    (default: interleaved when there are several devices).
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    if n <= chunk:
        return fn(xs)
    steps = -(-n // chunk)
    if steps * chunk != n:
        index = jnp.minimum(jnp.arange(steps * chunk), n - 1)
        xs = jax.tree.map(lambda x: x[index], xs)
    if interleave is None:
        interleave = jax.device_count() > 1
    if not interleave:
        ys = jax.lax.map(fn, jax.tree.map(lambda x: x.reshape(steps, chunk, *x.shape[1:]), xs))
        return jax.tree.map(lambda y: y.reshape(steps * chunk, *y.shape[2:])[:n], ys)
    xs = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(chunk, steps, *x.shape[1:]), 0, 1), xs)
    ys = jax.lax.map(fn, xs)
    return jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1).reshape(steps * chunk, *y.shape[2:])[:n], ys)


def _resolve_chunk(grammar: Grammar, leaf_log_likelihood, chunk_size) -> int:
    n = leaf_log_likelihood.shape[0]
    if chunk_size is None:
        return default_chunk_size(grammar.config, n)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    return min(chunk_size, max(n, 1))


def _public_levels(xs, s: int, keep: bool = True):
    return tuple(_to_public(x, s) for x in xs) if keep else None


def _public_upward(messages, s: int, keep: bool):
    """Upward messages for the user: the leaf level normalised like every other level."""
    if not keep:
        return None
    return _public_levels(messages[:-1] + (_normalise(messages[-1])[0],), s)


def _marginals(grammar: Grammar, leaf_log_likelihood: jax.Array, chunk: int,
               messages: bool = False, interleave: bool | None = None) -> BPResult:
    s = grammar.config.s

    def one_chunk(loglik):
        marginals, upward, downward, log_evidence = marginals_and_messages(grammar, loglik)
        # The leaf level (half of all nodes) is formed in the public layout, which is the
        # evidence's own: the leaf messages are recomputed from it there, so only the
        # downward message is transposed, where the internal product's transpose made XLA
        # transpose the leaf messages a second time (11% of the marginals at (32, 8, 2, 9)).
        leaf, _ = _leaf_messages(loglik, s, internal=False)
        leaf = _normalise(leaf * _to_public(downward[-1], s), axis=2)[0]
        # Messages not asked for are never written out (a third of the output bytes each).
        return BPResult(_public_levels(marginals[:-1], s) + (leaf,),
                        _public_upward(upward, s, messages),
                        _public_levels(downward, s, messages), log_evidence)

    return map_chunks(one_chunk, leaf_log_likelihood, chunk, interleave)


def _upward_public(grammar: Grammar, leaf_log_likelihood: jax.Array, chunk: int,
                   messages: bool = False, interleave: bool | None = None) -> Upward:
    s = grammar.config.s

    def one_chunk(loglik):
        upward, class_posterior, log_evidence = _upward(grammar, loglik)
        return Upward(_public_upward(upward, s, messages), class_posterior, log_evidence)

    return map_chunks(one_chunk, leaf_log_likelihood, chunk, interleave)


def _check_leaf_log_likelihood(grammar: Grammar, leaf_log_likelihood) -> jax.Array:
    """The grammar (:func:`~rhm_jax.grammar.check_grammar`), the shape and dtype of the
    leaf log-likelihoods, and, when they are concrete, their values (no NaN, no ``+inf``,
    no overflowing sum): see "Invalid evidence" in the module docstring."""
    cfg = check_grammar(grammar).config
    if not hasattr(leaf_log_likelihood, "shape"):  # a nested list is fine, None is not
        given, leaf_log_likelihood = leaf_log_likelihood, np.asarray(leaf_log_likelihood)
        if leaf_log_likelihood.dtype == object or leaf_log_likelihood.dtype.kind in "USV":
            raise TypeError("leaf_log_likelihood must be a float array of shape (n, d, v), "
                            f"got {describe(given)}")
    leaf_log_likelihood = jnp.asarray(leaf_log_likelihood)
    if leaf_log_likelihood.ndim != 3 or leaf_log_likelihood.shape[1:] != (cfg.d, cfg.v):
        raise ValueError(
            f"leaf_log_likelihood has shape {leaf_log_likelihood.shape}, expected "
            f"(n, d, v) = (n, {cfg.d}, {cfg.v})")
    if not jnp.issubdtype(leaf_log_likelihood.dtype, jnp.floating):
        raise ValueError(f"leaf_log_likelihood has dtype {leaf_log_likelihood.dtype}; "
                         "it must be floating point")
    if not isinstance(leaf_log_likelihood, jax.core.Tracer) and leaf_log_likelihood.size:
        _check_evidence_values(leaf_log_likelihood)
    return leaf_log_likelihood


@jax.jit
def _evidence_faults(loglik: jax.Array):
    """Per fault (NaN, +inf, finite peaks summing to +inf): the number of data with it, the
    first such datum (``n`` if none) and (for the first two) the flat position in it.

    Only elementwise ops and reductions, no indexing into the batch, so it works on any
    sharding (explicit mesh axes included); the scalars it returns are replicated, so the
    answer is readable even for a batch sharded across processes.
    """
    n = loglik.shape[0]
    is_nan, is_inf = jnp.isnan(loglik), loglik == jnp.inf
    peaks = jnp.max(jnp.where(is_nan, -jnp.inf, loglik), axis=-1)
    total = jnp.sum(jnp.where(jnp.isfinite(peaks), peaks, 0), axis=-1)
    index = jnp.arange(n)
    counts, firsts, positions = [], [], []
    for flags, where in ((is_nan, True), (is_inf, True), (total == jnp.inf, False)):
        per_datum = jnp.any(flags, axis=(1, 2)) if where else flags
        first = jnp.min(jnp.where(per_datum, index, n))
        counts.append(jnp.sum(per_datum))
        firsts.append(first)
        if where:
            position = jnp.argmax(flags.reshape(n, -1), axis=1)
            positions.append(jnp.sum(jnp.where(index == first, position, 0)))
    return jnp.stack(counts), jnp.stack(firsts), jnp.stack(positions)


@jax.jit
def _any_evidence_fault(loglik: jax.Array) -> jax.Array:
    """False when no datum can have a fault of :func:`_evidence_faults` (a fast pass).

    A datum's plain sum is NaN if it holds a NaN, or ``+inf`` and ``-inf`` together, and
    ``+inf`` if it holds ``+inf`` (or finite values that overflow): neither can cancel.
    ``-inf`` alone (an impossible symbol, legal: one-hot and masking evidence are full of
    them) leaves a sum of ``-inf``, so such evidence stays on the fast path. Each datum's
    largest entry below ``float max / (2 d)`` rules out an overflow of the sum of its
    ``d`` per-token maxima (with room for rounding). Both are vectorised reductions
    (10-15 ms for 1024 data at (32, 8, 2, 9)), where the full search (several passes,
    arg-maxes) ran 90 ms on every call: about a third of the marginals and half of a
    posterior sample. (Arithmetic, not compare-and-select: XLA:CPU's vectorised max drops
    NaNs, and a select inside the sum made it as slow as the full search.) A flag only
    sends the batch to the full search, which decides.
    """
    n, d = loglik.shape[:2]
    total = jnp.sum(loglik.reshape(n, -1), axis=1)
    peaks = jnp.max(loglik.reshape(n, -1), axis=1)
    bound = jnp.finfo(loglik.dtype).max / (2 * d)
    return jnp.any(jnp.isnan(total) | (total == jnp.inf)) | jnp.any(peaks >= bound)


def _check_evidence_values(loglik: jax.Array) -> None:
    if not bool(_any_evidence_fault(loglik)):
        return
    counts, first, where = (np.asarray(x) for x in _evidence_faults(loglik))
    n, d, v = loglik.shape
    for fault, text in ((0, "nan"), (1, "+inf")):
        if counts[fault]:
            token, symbol = divmod(int(where[fault]), v)
            raise ValueError(
                f"leaf_log_likelihood[{first[fault]}, {token}, {symbol}] = {text} ({counts[fault]} "
                f"of {n} data hold a NaN or +inf): a log-likelihood must be finite or -inf "
                "(-inf marks an impossible value)")
    if counts[2]:
        raise ValueError(
            f"leaf_log_likelihood[{first[2]}]: the per-token maxima sum to +inf in "
            f"{counts[2]} of {n} data, so log_evidence would overflow; subtract a per-token "
            "constant (e.g. the max over the last axis), which leaves the posteriors unchanged")


def _poison(result, loglik: jax.Array):
    """Traced input: each datum whose log-likelihoods hold a NaN or ``+inf`` gets NaN in
    every float output and ``-1`` in every integer output (see the module docstring)."""
    bad = jnp.any(jnp.isnan(loglik) | (loglik == jnp.inf), axis=(1, 2))

    def mark(x):
        flag = bad.reshape(bad.shape + (1,) * (x.ndim - 1))
        fill = jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else -1
        return jnp.where(flag, jnp.asarray(fill, x.dtype), x)

    return jax.tree.map(mark, result)


def _traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _with_tables(grammar: Grammar) -> Grammar:
    """Attach inverse tables sized to concrete rules (about 2/3 the width of the safe bound
    that traced rules need, so the downward pass is that much cheaper; the width is the
    config's typical one, so a new grammar of the same config does not recompile)."""
    return grammar if grammar.inverse is not None else with_inverse_tables(grammar)


# ---- sharded batches ----------------------------------------------------------------------
def _batch_placement(x) -> tuple | None:
    """``(mesh, axes)`` when the leading (batch) axis of ``x`` is split over named mesh axes.

    Read from a concrete array's sharding, or from the type of a traced one (explicit
    sharding mode). ``None`` for unsharded or replicated batches.
    """
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        try:
            sharding = jax.typeof(x).sharding
        except (AttributeError, TypeError):
            return None
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return None
    spec = tuple(sharding.spec)
    if not spec or spec[0] is None:
        return None
    return sharding.mesh, spec[0]


def _local_size(n: int, placement) -> int:
    """Batch size on one shard of ``placement``."""
    mesh, axes = placement
    shards = int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
    return n // shards


def _per_shard(fn, placement, num_batched: int, *args):
    """``fn(grammar, *batched)`` on every shard's own data (``jax.shard_map``).

    BP is independent per datum, so each device runs the chunked computation on its block
    of the batch with no communication; the results keep the input's batch sharding. This
    works for meshes with explicit axes (``jax.make_mesh``'s default) as well as auto ones.
    """
    mesh, axes = placement
    spec = jax.sharding.PartitionSpec(axes)
    in_specs = (jax.sharding.PartitionSpec(),) * (len(args) - num_batched) + (spec,) * num_batched
    # check_vma off: the body has no collectives, and loop carries that start replicated
    # (zeros) and become per-shard would otherwise be rejected.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=spec,
                         check_vma=False)(*args)


def _to_placement(x, placement):
    """Reshard a replicated array onto the batch placement: explicit-axis meshes need it
    said (auto ones reshard at the ``shard_map`` boundary by themselves)."""
    mesh, axes = placement
    names = (axes,) if isinstance(axes, str) else axes
    types = dict(zip(mesh.axis_names, getattr(mesh, "axis_types", ())))
    if any(types.get(a) == jax.sharding.AxisType.Explicit for a in names):
        return jax.sharding.reshard(
            x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes)))
    return x


def _dispatcher(fn):
    """``jit`` of ``fn(grammar, loglik, chunk, messages)``, run per shard when the batch's
    ``placement`` (static) says it is sharded; ``interleave`` (static) as in
    :func:`map_chunks` for an unsharded batch."""
    def run(grammar, loglik, chunk, messages, placement=None, interleave=None):
        if placement is None:
            return fn(grammar, loglik, chunk, messages, interleave=interleave)
        body = partial(fn, chunk=chunk, messages=messages, interleave=False)
        return _per_shard(body, placement, 1, grammar, loglik)

    return jax.jit(run, static_argnames=("chunk", "messages", "placement", "interleave"))


_upward_jit = _dispatcher(_upward_public)
_marginals_jit = _dispatcher(_marginals)


def _order(loglik) -> bool | None:
    """Chunk order for an unsharded batch: contiguous for a concrete one (it runs on one
    device, where the interleaved order only adds a transpose: 1.26x slower), the default
    of :func:`map_chunks` for a traced one (a partitioner may still split it)."""
    return None if _traced(loglik) else False


def _placement_and_chunk(grammar, loglik, chunk_size):
    placement = _batch_placement(loglik)
    n = loglik.shape[0] if placement is None else _local_size(loglik.shape[0], placement)
    if chunk_size is None:
        return placement, default_chunk_size(grammar.config, n, sharded=placement is not None)
    return placement, _resolve_chunk(grammar, loglik, chunk_size)


def _check_flag(name: str, value) -> bool:
    return check_bool(name, value)


def upward(grammar: Grammar, leaf_log_likelihood, *, chunk_size: int | None = None,
           messages: bool = False) -> Upward:
    """Upward pass only: class posterior and ``log p(observation)`` (the fast path).

    Args:
      grammar: the rules.
      leaf_log_likelihood: ``(n, d, v)`` log-likelihoods ``log p(obs_i | x0_i = a)``,
        finite or ``-inf``. A batch sharded over mesh axes (``NamedSharding``) runs per
        shard and the results keep its sharding.
      chunk_size: data per step of the chunked computation (default
        :func:`default_chunk_size`); results do not depend on it.
      messages: also return every level's upward messages (``Upward.messages``; by default
        ``None``: writing them out costs more than computing the class posterior).

    Returns:
      :class:`Upward`. Under ``jit``, a datum whose log-likelihoods hold a NaN or ``+inf``
      gets NaN in every field (see "Invalid evidence" in the module docstring).

    Raises:
      ValueError: concrete log-likelihoods with a NaN or ``+inf`` (naming the first), or
        a bad shape, dtype, ``chunk_size`` or grammar.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rhm_jax import RHMConfig, sample_grammar, sample_data
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> x = sample_data(jax.random.key(1), g, 2)
      >>> loglik = jnp.log(jax.nn.one_hot(x.tokens, 8) * 0.9 + 0.1 / 8)
      >>> bool(jnp.all(jnp.argmax(upward(g, loglik).class_posterior, -1) == x.classes))
      True
    """
    loglik = _check_leaf_log_likelihood(grammar, leaf_log_likelihood)
    messages = _check_flag("messages", messages)
    placement, chunk = _placement_and_chunk(grammar, loglik, chunk_size)
    result = _upward_jit(grammar, loglik, chunk, messages, placement, _order(loglik))
    return _poison(result, loglik) if _traced(loglik) else result


def marginals(grammar: Grammar, leaf_log_likelihood, *, chunk_size: int | None = None,
              messages: bool = False) -> BPResult:
    """Exact posterior marginals of every level and the log-evidence (``docs/theory/belief_propagation.md``).

    Args:
      grammar: the rules.
      leaf_log_likelihood: ``(n, d, v)`` log-likelihoods ``log p(obs_i | x0_i = a)``,
        finite or ``-inf``. A batch sharded over mesh axes (``NamedSharding``) runs per
        shard and the results keep its sharding.
      chunk_size: data per step of the chunked computation (default
        :func:`default_chunk_size`); results do not depend on it.
      messages: also return the upward and downward messages of every level
        (``BPResult.upward``/``.downward``; by default ``None``, which saves two thirds of
        the output memory and time).

    Returns:
      :class:`BPResult`. Under ``jit``, a datum whose log-likelihoods hold a NaN or
      ``+inf`` gets NaN marginals, messages and ``log_evidence`` (see "Invalid evidence"
      in the module docstring).

    Raises:
      ValueError: concrete log-likelihoods with a NaN or ``+inf`` (naming the first), or
        a bad shape, dtype, ``chunk_size`` or grammar.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rhm_jax import RHMConfig, sample_grammar, sample_data
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> x = sample_data(jax.random.key(1), g, 4)
      >>> bp = marginals(g, jnp.log(jax.nn.one_hot(x.tokens, 8) + 1e-30))
      >>> [tuple(mu.shape) for mu in bp.marginals]
      [(4, 1, 8), (4, 2, 8), (4, 4, 8), (4, 8, 8)]
      >>> bool(jnp.allclose(bp.marginals[-1], jax.nn.one_hot(x.tokens, 8)))
      True
    """
    loglik = _check_leaf_log_likelihood(grammar, leaf_log_likelihood)
    messages = _check_flag("messages", messages)
    grammar = _with_tables(grammar)
    placement, chunk = _placement_and_chunk(grammar, loglik, chunk_size)
    result = _marginals_jit(grammar, loglik, chunk, messages, placement, _order(loglik))
    return _poison(result, loglik) if _traced(loglik) else result


def _categorical(weights: jax.Array, uniform: jax.Array, axis: int) -> jax.Array:
    """Index drawn with probability ``∝ weights`` along ``axis`` by inverting the CDF with
    one uniform in ``[0, 1)`` (broadcast against ``weights`` without ``axis``).

    A zero weight is never drawn (its CDF step is empty); an all-zero slice (only after
    impossible evidence) gives the last index.
    One uniform per draw instead of one Gumbel per category: the sampler's random numbers
    cost ``m`` times less.
    """
    cdf = jnp.cumsum(weights, axis=axis)
    total = jnp.take(cdf, jnp.array([-1]), axis=axis)
    below = cdf <= jnp.expand_dims(uniform, axis) * total
    index = jnp.sum(below, axis=axis, dtype=jnp.int32)
    return jnp.minimum(index, weights.shape[axis] - 1)


def sample_tree(keys: jax.Array, grammar: Grammar, messages: tuple, class_posterior) -> Data:
    """One exact draw of the whole tree per datum from ``p(tree | observation)``.

    Root from its posterior; then, top-down, for each sampled symbol ``a`` the rule
    ``psi`` with probability ``∝ Π_k u_{child k}(R[a, psi, k])`` (``docs/theory/belief_propagation.md``).
    ``keys`` are per datum ``(c,)``; ``messages`` are the upward messages in the internal
    layout. The returned :class:`Data` is in natural node order.
    """
    cfg = grammar.config
    c = class_posterior.shape[0]
    # One uniform per internal node and one for the root, drawn at once (one RNG call
    # compiles far faster than L+1); the barrier keeps it from being re-fused into every
    # level. Node (level l, internal position j) uses uniform 1 + (s**l - 1)/(s - 1) + j.
    offsets = np.cumsum([0, 1] + [cfg.s**level for level in range(cfg.L)])
    uniform = jax.lax.optimization_barrier(jax.vmap(
        lambda k: jax.random.uniform(k, (int(offsets[-1]),), class_posterior.dtype))(keys))
    symbols = _categorical(class_posterior, uniform[:, 0], axis=1)[:, None]
    latents, psis = [symbols], []
    for level in range(cfg.L):
        nodes = symbols.shape[1]
        # (c, m, nodes, s): the m candidate tuples of each node's sampled symbol
        chosen = jnp.moveaxis(jnp.take(grammar.rules[level], symbols, axis=0, mode="clip"), 2, 1)
        groups = _children(messages[level + 1], cfg.s)
        weight = 1
        for k in range(cfg.s):
            weight = weight * jnp.take_along_axis(groups[:, :, k], chosen[..., k], axis=1,
                                                  mode="clip")
        psi = _categorical(weight, uniform[:, offsets[level + 1]:offsets[level + 2]], axis=1)
        children = jnp.take_along_axis(chosen, psi[:, None, :, None], axis=1, mode="clip")[:, 0]
        symbols = jnp.swapaxes(children, 1, 2).reshape(c, cfg.s * nodes)  # internal order
        latents.append(symbols)
        psis.append(psi)
    latents = [reverse_digits(x, cfg.s, axis=1) for x in latents]
    psis = [reverse_digits(x, cfg.s, axis=1) for x in psis]
    digits = jnp.concatenate([latents[0]] + psis, axis=1)
    return Data(latents[-1], latents[0][:, 0], tuple(latents), digits)


def _sample_chunks(grammar, leaf_log_likelihood, keys, chunk, interleave=None):
    def one_chunk(batch):
        loglik, keys = batch
        messages, class_posterior, _ = _upward(grammar, loglik)
        draws = jax.vmap(lambda k: sample_tree(k, grammar, messages, class_posterior),
                         in_axes=1, out_axes=1)(keys)
        return draws  # (c, num_samples, ...)

    return map_chunks(one_chunk, (leaf_log_likelihood, keys), chunk, interleave)


@partial(jax.jit, static_argnames=("num_samples", "chunk", "placement", "interleave"))
def _sample_posterior(key, grammar, leaf_log_likelihood, num_samples, chunk, placement=None,
                      interleave=None):
    n = leaf_log_likelihood.shape[0]
    keys = jax.random.split(key, (n, num_samples))  # per datum: independent of chunking
    if placement is None:
        return _sample_chunks(grammar, leaf_log_likelihood, keys, chunk, interleave)
    body = partial(_sample_chunks, chunk=chunk, interleave=False)
    return _per_shard(body, placement, 2, grammar, leaf_log_likelihood,
                      _to_placement(keys, placement))


def sample_posterior(key: jax.Array, grammar: Grammar, leaf_log_likelihood,
                     num_samples: int = 1, *, chunk_size: int | None = None) -> Data:
    """Exact draws of whole trees from ``p(tree | observation)`` (``docs/theory/belief_propagation.md``).

    This is exact backward diffusion from the observation's time in one shot.

    Args:
      key: a PRNG key (``jax.random.key`` or a legacy ``jax.random.PRNGKey``); datum ``i``
        uses its own key split from it, so the draws do not
        depend on ``chunk_size`` or on how the batch is sharded.
      grammar: the rules.
      leaf_log_likelihood: ``(n, d, v)``, finite or ``-inf``; sharded batches as in
        :func:`marginals`.
      num_samples: independent draws per datum (static), a positive integer.
      chunk_size: data per step of the chunked computation (default
        :func:`default_chunk_size`).

    Returns:
      :class:`Data` with a sample axis after the batch axis: ``tokens`` ``(n, S, d)``,
      ``classes`` ``(n, S)``, ``latents[l]`` ``(n, S, s**l)``, ``digits`` ``(n, S, 1+N)``.
      Under ``jit``, a datum whose log-likelihoods hold a NaN or ``+inf`` gets ``-1`` in
      all of them (integers cannot hold a NaN).

    Raises:
      TypeError: ``key`` is not a PRNG key (typed or legacy).
      ValueError: concrete log-likelihoods with a NaN or ``+inf``, as in :func:`marginals`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rhm_jax import RHMConfig, sample_grammar, sample_data
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> x = sample_data(jax.random.key(1), g, 3)
      >>> draw = sample_posterior(jax.random.key(2), g, jnp.zeros((3, 8, 8)), num_samples=5)
      >>> draw.tokens.shape
      (3, 5, 8)
    """
    check_key("key", key)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    loglik = _check_leaf_log_likelihood(grammar, leaf_log_likelihood)
    placement, chunk = _placement_and_chunk(grammar, loglik, chunk_size)
    result = _sample_posterior(key, grammar, loglik, num_samples, chunk, placement,
                               _order(loglik))
    return _poison(result, loglik) if _traced(loglik) else result
