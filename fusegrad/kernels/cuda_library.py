"""Fixed CUDA kernels for what is not a fused loop: data movement, middle-axis reductions,
gather/scatter, im2col/col2im, random numbers, copies.

Each public function has the signature of its namesake in cpu_library (so the CPU's movement
emitters, cpu_movement.MOVEMENT, write the driver lines for both backends): flat device arrays,
sizes as Python ints (or lists of ints), and it launches one grid-stride kernel with one thread
per output element. Imported only by generated CUDA modules: it imports numba.cuda.

Every output element is written by one thread, except scatter_add's, which sums with atomics
(the order of the additions, and so the last bits of a sum of repeated indices, may vary from run
to run, as in PyTorch's index_add on a GPU).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .cuda_config import blocks_for, launch_config, simulator_enabled


class _IEEEMath:
    """The simulator's stand-in for `math` in generated kernels: NumPy's functions, which give
    inf/NaN where the GPU does (Python's math raises on log(-1), exp(1000), sin(inf))."""

    exp, log, log1p, sqrt, tanh, sin, cos = (np.exp, np.log, np.log1p, np.sqrt, np.tanh, np.sin,
                                             np.cos)

    def __getattr__(self, name):  # erf and anything else: Python's, which does not raise
        return getattr(math, name)


# generated kernels call math.* (numba.cuda compiles them to CUDA's libdevice)
kernel_math = _IEEEMath() if simulator_enabled() else math


def _launch(kernel, n, *args):
    cfg = launch_config()
    kernel[blocks_for(n, cfg), cfg.threads](*args)


# ---- copies ----------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _copy(src, dst, n):
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        dst[e] = src[e]


def copy(src, dst):
    """dst[:] = src (same size; the dtype of dst wins)."""
    _launch(_copy, dst.size, src, dst, dst.size)


@cuda.jit(cache=True)
def _fill(dst, value, n):
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        dst[e] = value


def fill(dst, value):
    _launch(_fill, dst.size, dst, value, dst.size)


@cuda.jit(cache=True)
def _strided_copy(src, src_offset, ss, dst, dst_offset, ds, sizes, n):
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        rest = e
        s = src_offset
        d = dst_offset
        for k in range(5, -1, -1):  # the 6-D index of e, last axis fastest
            q = rest % sizes[k]
            rest //= sizes[k]
            s += q * ss[k]
            d += q * ds[k]
        dst[d] = src[s]


def strided_copy(src, src_offset, src_strides, dst, dst_offset, dst_strides, sizes):
    """dst[dst_offset + sum(i_d * dst_strides[d])] = src[src_offset + sum(i_d * src_strides[d])]
    over the 6-D index space `sizes`; strides in elements, 0 (broadcast) or negative allowed."""
    sizes = tuple(int(s) for s in sizes)
    n = int(np.prod(sizes))
    if n:
        _launch(_strided_copy, n, src, int(src_offset), tuple(int(s) for s in src_strides),
                dst, int(dst_offset), tuple(int(s) for s in dst_strides), sizes, n)


# ---- gather / scatter-add along an axis: x viewed as (A, N, B), indices flat (K) -------------

# An index out of range raises IndexOutOfRangeError, as on the CPU, before anything reads it:
# a check kernel sets a device flag, and the host reads it (one small synchronisation).

@cuda.jit(cache=True)
def _check_range(idx, lo, hi, bad, n):
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        if idx[e] < lo or idx[e] >= hi:
            bad[0] = 1  # every thread that finds one writes the same value


_flags: dict = {}


def _require_in_range(idx, lo, hi, what):
    from ..ir.interpret import IndexOutOfRangeError

    n = idx.size
    if not n:
        return
    flag = _flags.get("bad")
    if flag is None:
        flag = _flags["bad"] = cuda.device_array(1, np.int64)
    flag.copy_to_device(np.zeros(1, np.int64))
    _launch(_check_range, n, idx, lo, hi, flag, n)
    if flag.copy_to_host()[0]:
        raise IndexOutOfRangeError(f"an index is out of range in {what} (outside [{lo}, {hi}))"
                                   f"; nothing was updated")


@cuda.jit(cache=True)
def _gather(x, idx, out, N, B, K, n):
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        b = e % B
        t = (e // B) % K
        a = e // (B * K)
        j = idx[t]
        out[e] = x[(a * N + (j + N if j < 0 else j)) * B + b]


def gather(x, idx, out, A, N, B, K):
    _require_in_range(idx, -N, N, "gather")
    n = A * K * B
    if n:
        _launch(_gather, n, x, idx, out, N, B, K, n)


@cuda.jit(cache=True)
def _copy_index(idx, out, n):
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[e] = idx[e]


def check_index(idx, out, size):
    """out = idx, after checking every index lies in [0, size) (class labels)."""
    _require_in_range(idx, 0, size, "check_index")
    if idx.size:
        _launch(_copy_index, idx.size, idx, out, idx.size)


@cuda.jit(cache=True)
def _scatter_add(idx, upd, out, N, B, K, n):
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        b = e % B
        t = (e // B) % K
        a = e // (B * K)
        j = idx[t]
        cuda.atomic.add(out, (a * N + (j + N if j < 0 else j)) * B + b, upd[e])


def scatter_add(idx, upd, out, A, N, B, K):
    _require_in_range(idx, -N, N, "scatter_add")
    fill(out, 0)
    n = A * K * B
    if n:
        _launch(_scatter_add, n, idx, upd, out, N, B, K, n)


# ---- reductions over the middle axis of (A, N, B); argmax ----------------------------------

@cuda.jit(cache=True)
def _reduce_middle(x, out, N, B, is_max, n):
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        a = e // B
        b = e - a * B
        acc = x[a * N * B + b]
        for t in range(1, N):
            v = x[(a * N + t) * B + b]
            if is_max:
                if v > acc or v != v:
                    acc = v
            else:
                acc += v
        out[e] = acc


def reduce_middle(x, out, A, N, B, is_max):
    if N == 0:
        fill(out, 0)
    elif A * B:
        _launch(_reduce_middle, A * B, x, out, N, B, bool(is_max), A * B)


@cuda.jit(cache=True)
def _argmax(x, out, N, B, n):
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        a = e // B
        b = e - a * B
        best = 0
        bv = x[a * N * B + b]
        for t in range(1, N):
            v = x[(a * N + t) * B + b]
            if bv != bv:  # NaN counts as the maximum, as in NumPy: the first one wins
                break
            if v > bv or v != v:
                best = t
                bv = v
        out[e] = best


def argmax(x, out, A, N, B):
    if A * B:
        _launch(_argmax, A * B, x, out, N, B, A * B)


@cuda.jit(cache=True)
def _iota(out, N, B, n):
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[e] = (e // B) % N


def iota(out, A, N, B):
    if A * N * B:
        _launch(_iota, A * N * B, out, N, B, A * N * B)


# ---- windows: unfold (im2col) and fold (col2im), NCHW, PyTorch's (C, kh, kw) ordering --------

@cuda.jit(cache=True)
def _unfold(x, out, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW, n):
    L = OH * OW
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        row = e // L
        pos = e - row * L
        oh = pos // OW
        ow = pos - oh * OW
        j = row % kw
        i = (row // kw) % kh
        nc = row // (kw * kh)  # n * C + c
        h = oh * sh - ph + i
        w = ow * sw - pw + j
        v = x[0] * 0
        if 0 <= h < H and 0 <= w < W:
            v = x[(nc * H + h) * W + w]
        out[e] = v


def unfold(x, out, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW):
    n = N * C * kh * kw * OH * OW
    if n:
        _launch(_unfold, n, x, out, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW, n)


@cuda.jit(cache=True)
def _fold(cols, out, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW, n):
    """One thread per image element gathers its window positions, in the (i, j) order in which
    the CPU's fold adds them: no atomics, the same sums."""
    L = OH * OW
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        w = e % W
        h = (e // W) % H
        nc = e // (W * H)
        acc = out[e] * 0
        for i in range(kh):
            hh = h + ph - i
            if hh < 0 or hh % sh != 0 or hh // sh >= OH:
                continue
            oh = hh // sh
            for j in range(kw):
                ww = w + pw - j
                if ww < 0 or ww % sw != 0 or ww // sw >= OW:
                    continue
                row = (nc * kh + i) * kw + j
                acc += cols[row * L + oh * OW + ww // sw]
        out[e] = acc


def fold(cols, out, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW):
    n = N * C * H * W
    if n:
        _launch(_fold, n, cols, out, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW, n)


# ---- counter-based random numbers: the interpreter's splitmix64, bit for bit -----------------
# (the mixing function is written out twice: kernels that call device functions cannot be
# compiled to PTX ahead of time, see NUMBA_NOTES.md)

@cuda.jit(cache=True)
def _random_uniform(seed, counter, out, single, n):
    golden = np.uint64(0x9E3779B97F4A7C15)
    z = np.uint64(seed[0]) * golden + np.uint64(counter[0])
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    key = z ^ (z >> np.uint64(31))
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        z = key + np.uint64(e + 1) * golden
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        bits = z ^ (z >> np.uint64(31))
        if single:
            out[e] = (bits >> np.uint64(40)) * (2.0 ** -24)
        else:
            out[e] = (bits >> np.uint64(11)) * (2.0 ** -53)


def random_uniform(seed, counter, out, single):
    if out.size:
        _launch(_random_uniform, out.size, seed, counter, out, bool(single), out.size)


# ---- the loss check ----------------------------------------------------------------------------

def finite(x, host) -> bool:
    """Is the first element of device array x finite? Copies it into `host` (one element): the
    one synchronisation of a training step, before any parameter is overwritten."""
    x[:1].copy_to_host(host)
    return bool(np.isfinite(host[0]))


__all__ = ["copy", "fill", "strided_copy", "gather", "scatter_add", "check_index",
           "reduce_middle", "argmax",
           "iota", "unfold", "fold", "random_uniform", "finite", "kernel_math"]
