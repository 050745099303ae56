"""The CPU library: fixed, shape-generic code for what is not a fused loop (GEMMs, data movement,
gathers, middle-axis reductions, windows, random numbers), written in the kernel language.

Every operand is a pointer to flat, C-contiguous data and every size an argument, so one compiled
instance serves every shape and every model. `library_kernel(fn, dtypes)` writes the kernel
module of one instance: a @kernel wrapper, typed for the operands' dtypes, that calls the
function here (the native compiler inlines it). Each function is also a Numba function
(njit, inline), so the same modules compile under Numba, the reference compiler.

What each function computes is what the reference interpreter computes (ir/interpret.py),
element for element: the same summation order in reductions, NaN as the maximum.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from .kernel_lang import blas_gemm, mpi_allreduce_h32, mpi_allreduce_h64, offset

_inline = njit(inline="always", error_model="numpy", nogil=True)


# ---- GEMM: BLAS for floats, batched by a loop; transposes are BLAS flags (no copies) ---------

@_inline
def gemm(w, nw, a, b, out, batch, a_batch, b_batch, m, n, k, trans_a, trans_b, tm, tn):
    """out[i] = op(a[i % a_batch]) @ op(b[i % b_batch]) for i < batch; op transposes if asked.
    a is stored (k, m) when trans_a else (m, k); b is (n, k) when trans_b else (k, n).
    Each product is cut into tm x tn tiles, fixed when the program is compiled: worker w of nw
    computes its share of the batch * tm * tn tiles, each with one single-threaded BLAS call,
    so every element is computed by the same call whatever the number of workers."""
    tiles = tm * tn
    units = batch * tiles
    for u in range(w * units // nw, (w + 1) * units // nw):
        i = u // tiles
        r = (u % tiles) // tn
        c = u % tn
        r0 = r * m // tm
        r1 = (r + 1) * m // tm
        c0 = c * n // tn
        c1 = (c + 1) * n // tn
        ao = (i % a_batch) * m * k + (r0 if trans_a else r0 * k)
        bo = (i % b_batch) * k * n + (c0 * k if trans_b else c0)
        blas_gemm(offset(a, ao), offset(b, bo), offset(out, i * m * n + r0 * n + c0),
                  r1 - r0, c1 - c0, k, trans_a, trans_b, m if trans_a else k,
                  k if trans_b else n, n)


@_inline
def gemm_loops(a, b, out, batch, a_batch, b_batch, m, n, k, trans_a, trans_b):
    """The same product with plain loops, for integer dtypes (BLAS has none)."""
    for i in range(batch):
        ao = (i % a_batch) * m * k
        bo = (i % b_batch) * k * n
        for r in range(m):
            for c in range(n):
                acc = a[0] * 0
                for t in range(k):
                    x = a[ao + (t * m + r if trans_a else r * k + t)]
                    y = b[bo + (c * k + t if trans_b else t * n + c)]
                    acc += x * y
                out[i * m * n + r * n + c] = acc


# ---- copies: transpose, slice, broadcast, pad, concatenate ------------------------------------

@_inline
def _share(w, nw, n, split):
    """[lo, hi) of the n indices of a loop: worker w's share when it is the split loop."""
    if split:
        return w * n // nw, (w + 1) * n // nw
    return 0, n


@_inline
def strided_copy(w, nw, src, src_offset, src_strides, dst, dst_offset, dst_strides, sizes):
    """dst[dst_offset + sum(i_d * dst_strides[d])] = src[src_offset + sum(i_d * src_strides[d])]
    over the 6-D index space `sizes` (leading sizes 1 for lower ranks). Strides are in elements
    and may be 0 (broadcast) or negative (reversed slices). Worker w of nw copies its share of
    the first of the five outer axes longer than 1."""
    n0, n1, n2, n3, n4, n5 = sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]
    d = 0
    while d < 4 and sizes[d] == 1:
        d += 1
    lo0, hi0 = _share(w, nw, n0, d == 0)
    lo1, hi1 = _share(w, nw, n1, d == 1)
    lo2, hi2 = _share(w, nw, n2, d == 2)
    lo3, hi3 = _share(w, nw, n3, d == 3)
    lo4, hi4 = _share(w, nw, n4, d == 4)
    ss, ds = src_strides[5], dst_strides[5]
    for i0 in range(lo0, hi0):
        s0 = src_offset + i0 * src_strides[0]
        d0 = dst_offset + i0 * dst_strides[0]
        for i1 in range(lo1, hi1):
            s1 = s0 + i1 * src_strides[1]
            d1 = d0 + i1 * dst_strides[1]
            for i2 in range(lo2, hi2):
                s2 = s1 + i2 * src_strides[2]
                d2 = d1 + i2 * dst_strides[2]
                for i3 in range(lo3, hi3):
                    s3 = s2 + i3 * src_strides[3]
                    d3 = d2 + i3 * dst_strides[3]
                    for i4 in range(lo4, hi4):
                        s4 = s3 + i4 * src_strides[4]
                        d4 = d3 + i4 * dst_strides[4]
                        if ds == 1 and ss == 1:  # contiguous: a loop that vectorises
                            for i5 in range(n5):
                                dst[d4 + i5] = src[s4 + i5]
                        elif ds == 1 and ss == 0:  # a broadcast row
                            v = src[s4]
                            for i5 in range(n5):
                                dst[d4 + i5] = v
                        else:
                            for i5 in range(n5):
                                dst[d4 + i5 * ds] = src[s4 + i5 * ss]


@_inline
def fill(dst, value, n):
    for i in range(n):
        dst[i] = value


@_inline
def copy(src, dst, n):
    for i in range(n):
        dst[i] = src[i]


# ---- gather / scatter-add along an axis: x viewed as (A, N, B), indices flat (K) -------------

@_inline
def gather(x, idx, out, A, N, B, K):
    """out[a, t, :] = x[a, idx[t], :]; an index in [-N, 0) counts from the end (NumPy's take).
    Returns 2 (STATUS_INDEX) at the first index outside [-N, N), before writing anything."""
    for t in range(K):
        j = idx[t]
        if j < -N or j >= N:
            return 2
    for a in range(A):
        for t in range(K):
            j = idx[t]
            src = (a * N + (j + N if j < 0 else j)) * B
            dst = (a * K + t) * B
            for b in range(B):
                out[dst + b] = x[src + b]
    return 0


@_inline
def scatter_add(idx, upd, out, A, N, B, K):
    """The gradient of gather: out[a, idx[t], :] += upd[a, t, :] (negative indices as gather's);
    returns 2 (STATUS_INDEX) for an index outside [-N, N)."""
    for t in range(K):
        j = idx[t]
        if j < -N or j >= N:
            return 2
    for i in range(A * N * B):
        out[i] = 0
    for a in range(A):
        for t in range(K):
            j = idx[t]
            dst = (a * N + (j + N if j < 0 else j)) * B
            src = (a * K + t) * B
            for b in range(B):
                out[dst + b] += upd[src + b]
    return 0


@_inline
def check_index(idx, out, size, n):
    """out = idx when every index lies in [0, size) (class labels); else 2 (STATUS_INDEX)."""
    bad = 0
    for i in range(n):
        j = idx[i]
        bad |= (j < 0) | (j >= size)
        out[i] = j
    return 2 if bad else 0


# ---- reductions that are not fused loops: over the middle axis of (A, N, B) -----------------

@_inline
def reduce_middle(w, nw, x, out, A, N, B, is_max):
    """out[a, b] = sum or max over t of x[a, t, b]: t in order for each b (the interpreter's
    order), b innermost so the loops run over contiguous memory and vectorise. Worker w of nw
    reduces its share of the a."""
    for a in range(w * A // nw, (w + 1) * A // nw):
        ob = a * B
        xb = a * N * B
        if N == 0:
            for b in range(B):
                out[ob + b] = 0
            continue
        for b in range(B):
            out[ob + b] = x[xb + b]
        if is_max:
            for t in range(1, N):
                for b in range(B):
                    v = x[xb + t * B + b]
                    acc = out[ob + b]
                    out[ob + b] = v if (v > acc or v != v) else acc
        else:
            for t in range(1, N):
                for b in range(B):
                    out[ob + b] += x[xb + t * B + b]


@_inline
def argmax(x, out, A, N, B):
    """Index of the first maximum (NaN counts as the maximum, as NumPy) along N of (A, N, B)."""
    for a in range(A):
        for b in range(B):
            best = 0
            bv = x[a * N * B + b]
            for t in range(1, N):
                v = x[(a * N + t) * B + b]
                if bv != bv:
                    break
                if v > bv or v != v:
                    best = t
                    bv = v
            out[a * B + b] = best


@_inline
def iota(out, A, N, B):
    for a in range(A):
        for t in range(N):
            for b in range(B):
                out[(a * N + t) * B + b] = t


# ---- windows: unfold (im2col) and fold (col2im), NCHW, PyTorch's (C, kh, kw) ordering --------

@_inline
def _window_range(O, s, p, j, X):
    """The output positions o in [lo, hi) whose input index o*s - p + j lies in [0, X): the
    others read the zero padding. Loops over [lo, hi) have no branch, so they vectorise."""
    lo = max(0, -((j - p) // s))  # ceil((p - j) / s)
    hi = min(O, (X - 1 + p - j) // s + 1)
    return lo, max(lo, hi)


@_inline
def unfold(w, nw, x, out, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW):
    """Worker w of nw unfolds its share of the N images."""
    L = OH * OW
    for n in range(w * N // nw, (w + 1) * N // nw):
        for c in range(C):
            for i in range(kh):
                ohl, ohh = _window_range(OH, sh, ph, i, H)
                for j in range(kw):
                    row = ((n * C + c) * kh + i) * kw + j
                    owl, owh = _window_range(OW, sw, pw, j, W)
                    for oh in range(OH):
                        o = row * L + oh * OW
                        if oh < ohl or oh >= ohh:
                            for ow in range(OW):
                                out[o + ow] = 0
                            continue
                        xb = ((n * C + c) * H + oh * sh - ph + i) * W - pw + j
                        for ow in range(owl):
                            out[o + ow] = 0
                        if sw == 1:
                            for ow in range(owl, owh):
                                out[o + ow] = x[xb + ow]
                        else:
                            for ow in range(owl, owh):
                                out[o + ow] = x[xb + ow * sw]
                        for ow in range(owh, OW):
                            out[o + ow] = 0


@_inline
def fold(w, nw, cols, out, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW):
    """Worker w of nw folds (and first zeroes) its share of the N images."""
    L = OH * OW
    n0 = w * N // nw
    n1 = (w + 1) * N // nw
    for k in range(n0 * C * H * W, n1 * C * H * W):
        out[k] = 0
    for n in range(n0, n1):
        for c in range(C):
            for i in range(kh):
                ohl, ohh = _window_range(OH, sh, ph, i, H)
                for j in range(kw):
                    row = ((n * C + c) * kh + i) * kw + j
                    owl, owh = _window_range(OW, sw, pw, j, W)
                    for oh in range(ohl, ohh):
                        o = row * L + oh * OW
                        xb = ((n * C + c) * H + oh * sh - ph + i) * W - pw + j
                        if sw == 1:
                            for ow in range(owl, owh):
                                out[xb + ow] += cols[o + ow]
                        else:
                            for ow in range(owl, owh):
                                out[xb + ow * sw] += cols[o + ow]


# ---- counter-based random numbers: the interpreter's splitmix64, bit for bit -----------------

@_inline
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@_inline
def random_uniform(seed, counter, out, single, n):
    golden = np.uint64(0x9E3779B97F4A7C15)
    key = _mix64(np.uint64(seed[0]) * golden + np.uint64(counter[0]))
    for i in range(n):
        bits = _mix64(key + np.uint64(i + 1) * golden)
        if single:
            out[i] = (bits >> np.uint64(40)) * (2.0 ** -24)
        else:
            out[i] = (bits >> np.uint64(11)) * (2.0 ** -53)


# ---- checks the schedule runs between kernels -----------------------------------------------

@_inline
def check_finite(x, n):
    """1 when any of x[0:n] is inf or NaN, else 0 (the loss guard: nothing is written yet)."""
    bad = 0
    for i in range(n):
        v = x[i]
        if v - v != 0:  # inf - inf and NaN - NaN are NaN: one compare catches both
            bad = 1
    return bad


# ---- collectives: a data-parallel step's gradient sum (compiler/data_parallel.py) -------------

_MPI_CHUNK = 1 << 30  # elements per MPI_Allreduce call: MPI counts are C ints


@_inline
def all_reduce_h32(buf, n, handles, datatype):
    """buf[0:n] summed over the communicator's processes, in place (MPI_IN_PLACE): MPI handles
    32 bits wide (MPICH and its ABI: Intel MPI, MVAPICH ...). handles: communicator,
    MPI_FLOAT, MPI_DOUBLE, MPI_SUM, MPI_IN_PLACE, read at run time; datatype: 1 or 2, the
    entry for buf's type. Returns 3 (STATUS_COLLECTIVE) when MPI reports an error."""
    if handles[0] == 0:  # no communicator: one process, the sum is the values themselves
        return 0
    done = 0
    while done < n:
        k = min(n - done, _MPI_CHUNK)
        if mpi_allreduce_h32(handles[4], offset(buf, done), k, handles[datatype], handles[3],
                             handles[0]) != 0:
            return 3
        done += k
    return 0


@_inline
def all_reduce_h64(buf, n, handles, datatype):
    """all_reduce_h32 for MPI libraries whose handles are pointers (Open MPI, the MPI 5 ABI)."""
    if handles[0] == 0:  # no communicator: one process, the sum is the values themselves
        return 0
    done = 0
    while done < n:
        k = min(n - done, _MPI_CHUNK)
        if mpi_allreduce_h64(handles[4], offset(buf, done), k, handles[datatype], handles[3],
                             handles[0]) != 0:
            return 3
        done += k
    return 0


# ---- instances: the kernel module of one function for the operands' dtypes --------------------

_SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "b1"}

# per library function: its parameters as ("array" | "ints" | "int" | "flag" | "real" | "count")
# in the order of its LibCall arguments (cpu_movement), then how the wrapper calls it. Those
# that can be split over workers (SPLITTABLE) take (worker, workers) first, which the CPU code
# generator adds (codegen/cpu.py: the LibCalls are shared with CUDA, whose library has none)
SIGNATURES = {
    "gemm": ("int int array array array int int int int int int flag flag int int", "gemm"),
    "gemm_loops": ("array array array int int int int int int flag flag", "gemm_loops"),
    "strided_copy": ("int int array int ints array int ints ints", "strided_copy"),
    "fill": ("array real count", "fill"),
    "copy": ("array array count", "copy"),
    "gather": ("array array array int int int int", "gather"),
    "scatter_add": ("array array array int int int int", "scatter_add"),
    "check_index": ("array array int count", "check_index"),
    "reduce_middle": ("int int array array int int int flag", "reduce_middle"),
    "argmax": ("array array int int int", "argmax"),
    "iota": ("array int int int", "iota"),
    "unfold": ("int int array array" + " int" * 12, "unfold"),
    "fold": ("int int array array" + " int" * 12, "fold"),
    "random_uniform": ("array array array flag count", "random_uniform"),
    "check_finite": ("array count", "check_finite"),
    "all_reduce_h32": ("array count array int", "all_reduce_h32"),
    "all_reduce_h64": ("array count array int", "all_reduce_h64"),
}
SPLITTABLE = ("gemm", "strided_copy", "reduce_middle", "unfold", "fold")
RETURNS_STATUS = ("check_finite", "gather", "scatter_add", "check_index", "all_reduce_h32",
                  "all_reduce_h64")  # the rest always succeed
_PARAM_TYPE = {"int": "i64", "ints": "i64*", "flag": "b1", "count": "i64", "real": "f64*"}

LIBRARY_HEADER = '''"""fusegrad library kernel {name}. Generated; do not edit."""
from fusegrad.kernels.cpu_library import {fn}
from fusegrad.kernels.kernel_lang import kernel


'''


@lru_cache(maxsize=None)
def library_kernel(fn: str, dtypes: tuple) -> tuple[str, str]:
    """(name, kernel module text) of library function `fn` for operands of `dtypes` (one per
    array argument, in order)."""
    kinds, target = SIGNATURES[fn]
    kinds = kinds.split()
    arrays = iter(dtypes)
    types, params = [], []
    for k, kind in enumerate(kinds):
        types.append(_SHORT[next(arrays)] + "*" if kind == "array" else _PARAM_TYPE[kind])
        params.append(f"x{k}")
    name = "_".join([fn] + [_SHORT[d] for d in dtypes])
    # a real (fill value) arrives as a pointer into the program's float table
    call = ", ".join(f"{p}[0]" if kind == "real" else p for p, kind in zip(params, kinds))
    returns = fn in RETURNS_STATUS
    body = (f"    return {target}({call})\n" if returns else
            f"    {target}({call})\n    return 0\n")
    text = (LIBRARY_HEADER.format(name=name, fn=target)
            + f'@kernel("{" ".join(types)}", noalias=True)\n'
            + f"def {name}({', '.join(params)}):\n" + body)
    return name, text


# ---- the dispatcher: runs a program's schedule (runtime/executable.py lays out its block) ----

DISPATCHER_NAME = "run_schedule"
DISPATCHER_HEADER = 7  # n, nargs, nbases, start, stop, threads, parallel_for
_DISPATCHER_TEXT = '''"""fusegrad's dispatcher: runs any program's kernels in order from its table. Generated
once per machine; every program shares it."""
from fusegrad.kernels.kernel_lang import address, call_kernel, helper, kernel, parallel_call


@helper
def run_entry(block, k, argv):
    """Entry k: its kernel on one thread, or on min(units[k], threads) workers of the pool."""
    n = block[0]
    f = block[HEADER + k]
    at = argv + 8 * block[HEADER + n + k]
    workers = min(block[HEADER + 2 * n + k], block[5])
    if workers > 1:
        return parallel_call(block[6], f, at, block[HEADER + 3 * n + k], workers)
    return call_kernel(f, at)


@kernel("i64*")
def run_schedule(block):
    """block: n, nargs, nbases, start, stop, threads, parallel_for | fn[n] | first argument[n] |
    units[n] | count[n] | base[nargs] | offset[nargs] | stride[nargs] | bases[nbases] |
    args[nargs]. Computes every argument (bases[base[j]] + offset[j]), then calls fn[k](args +
    first argument[k]) for k in [start, stop): on one thread, or, when units[k] > 1 and
    threads > 1, on min(units[k], threads) workers of the thread pool (parallel_for: the
    threading layer's entry), each with its own copy of the entry's count[k] arguments whose
    first two are (worker, workers). An entry whose fn is 0 is a loop (fg.scan): its arguments
    are the trip count, the number of entries in its body (those after it) and the argument
    slots they span; the body runs `count` times, each of its arguments advancing by its
    stride after every pass. Returns 0, or 256 * k + status when kernel k returns a non-zero
    status (nothing after it runs)."""
    n = block[0]
    nargs = block[1]
    nbases = block[2]
    first = HEADER + n
    base = HEADER + 4 * n
    off = base + nargs
    stride = off + nargs
    bases = stride + nargs
    args = bases + nbases
    for j in range(nargs):
        block[args + j] = block[bases + block[base + j]] + block[off + j]
    argv = address(block) + 8 * args
    k = block[3]
    stop = block[4]
    while k < stop:
        if block[HEADER + k] != 0:
            status = run_entry(block, k, argv)
            if status != 0:
                return 256 * k + (status & 255)
            k += 1
        else:
            a = args + block[first + k]
            count = block[a]
            body = block[a + 1]
            span = block[a + 2]
            lo = block[first + k + 1] if body > 0 else 0
            for it in range(count):
                for kk in range(k + 1, k + 1 + body):
                    status = run_entry(block, kk, argv)
                    if status != 0:
                        return 256 * kk + (status & 255)
                for j in range(lo, lo + span):
                    block[args + j] += block[stride + j]
            k += 1 + body
    return 0
'''
# the header's size is written into the text: kernel text has no module-level constants
DISPATCHER = _DISPATCHER_TEXT.replace("HEADER", str(DISPATCHER_HEADER))
