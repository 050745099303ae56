"""Fixed, shape-generic Numba kernels for what is not a fused loop: GEMMs and data movement.

Every array is passed flat (1-D, C-contiguous) with its sizes as runtime arguments, so one
compiled kernel serves every shape and every model (`cache=True`: compiled once per machine).
The generated driver calls these with sizes read from its `dims` table.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_OPTS = dict(cache=True, error_model="numpy", nogil=True)


# ---- GEMM: BLAS through np.dot, batched by a loop; transposes are views (no copies) ----------

@njit(**_OPTS)
def gemm(a, b, out, batch, a_batch, b_batch, m, n, k, trans_a, trans_b):
    """out[i] = op(a[i % a_batch]) @ op(b[i % b_batch]) for i < batch; op transposes if asked.
    a is stored (k, m) when trans_a else (m, k); b is (n, k) when trans_b else (k, n)."""
    for i in range(batch):
        ai = a[(i % a_batch) * m * k:(i % a_batch + 1) * m * k]
        bi = b[(i % b_batch) * k * n:(i % b_batch + 1) * k * n]
        oi = out[i * m * n:(i + 1) * m * n].reshape((m, n))
        if trans_a and trans_b:
            np.dot(ai.reshape((k, m)).T, bi.reshape((n, k)).T, oi)
        elif trans_a:
            np.dot(ai.reshape((k, m)).T, bi.reshape((k, n)), oi)
        elif trans_b:
            np.dot(ai.reshape((m, k)), bi.reshape((n, k)).T, oi)
        else:
            np.dot(ai.reshape((m, k)), bi.reshape((k, n)), oi)


@njit(**_OPTS)
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


# ---- strided copies: transpose, slice, broadcast, pad, concatenate --------------------------

@njit(**_OPTS)
def strided_copy(src, src_offset, src_strides, dst, dst_offset, dst_strides, sizes):
    """dst[dst_offset + sum(i_d * dst_strides[d])] = src[src_offset + sum(i_d * src_strides[d])]
    over the 6-D index space `sizes` (leading sizes 1 for lower ranks). Strides are in elements
    and may be 0 (broadcast) or negative (reversed slices)."""
    n0, n1, n2, n3, n4, n5 = sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]
    for i0 in range(n0):
        s0 = src_offset + i0 * src_strides[0]
        d0 = dst_offset + i0 * dst_strides[0]
        for i1 in range(n1):
            s1 = s0 + i1 * src_strides[1]
            d1 = d0 + i1 * dst_strides[1]
            for i2 in range(n2):
                s2 = s1 + i2 * src_strides[2]
                d2 = d1 + i2 * dst_strides[2]
                for i3 in range(n3):
                    s3 = s2 + i3 * src_strides[3]
                    d3 = d2 + i3 * dst_strides[3]
                    for i4 in range(n4):
                        s4 = s3 + i4 * src_strides[4]
                        d4 = d3 + i4 * dst_strides[4]
                        ss, ds = src_strides[5], dst_strides[5]
                        for i5 in range(n5):
                            dst[d4 + i5 * ds] = src[s4 + i5 * ss]


@njit(**_OPTS)
def fill(dst, value):
    for i in range(dst.size):
        dst[i] = value


# ---- gather / scatter-add along an axis: x viewed as (A, N, B), indices flat (K) -------------

@njit(**_OPTS)
def gather(x, idx, out, A, N, B, K):
    for a in range(A):
        for t in range(K):
            src = (a * N + idx[t]) * B
            dst = (a * K + t) * B
            for b in range(B):
                out[dst + b] = x[src + b]


@njit(**_OPTS)
def scatter_add(idx, upd, out, A, N, B, K):
    for i in range(out.size):
        out[i] = 0
    for a in range(A):
        for t in range(K):
            dst = (a * N + idx[t]) * B
            src = (a * K + t) * B
            for b in range(B):
                out[dst + b] += upd[src + b]


# ---- reductions that are not fused loops: over the middle axis of (A, N, B) -----------------

@njit(**_OPTS)
def reduce_middle(x, out, A, N, B, is_max):
    for a in range(A):
        for b in range(B):
            acc = x[a * N * B + b]
            for t in range(1, N):
                v = x[(a * N + t) * B + b]
                if is_max:
                    if v > acc or v != v:
                        acc = v
                else:
                    acc += v
            out[a * B + b] = acc if N > 0 else 0


@njit(**_OPTS)
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


@njit(**_OPTS)
def iota(out, A, N, B):
    for a in range(A):
        for t in range(N):
            for b in range(B):
                out[(a * N + t) * B + b] = t


# ---- windows: unfold (im2col) and fold (col2im), NCHW, PyTorch's (C, kh, kw) ordering --------

@njit(**_OPTS)
def unfold(x, out, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW):
    L = OH * OW
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    row = ((n * C + c) * kh + i) * kw + j
                    for oh in range(OH):
                        h = oh * sh - ph + i
                        for ow in range(OW):
                            w = ow * sw - pw + j
                            v = x[0] * 0
                            if 0 <= h < H and 0 <= w < W:
                                v = x[((n * C + c) * H + h) * W + w]
                            out[row * L + oh * OW + ow] = v


@njit(**_OPTS)
def fold(cols, out, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW):
    L = OH * OW
    for i in range(out.size):
        out[i] = 0
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    row = ((n * C + c) * kh + i) * kw + j
                    for oh in range(OH):
                        h = oh * sh - ph + i
                        if h < 0 or h >= H:
                            continue
                        for ow in range(OW):
                            w = ow * sw - pw + j
                            if 0 <= w < W:
                                out[((n * C + c) * H + h) * W + w] += cols[row * L + oh * OW + ow]


# ---- counter-based random numbers: the interpreter's splitmix64, bit for bit -----------------

@njit(**_OPTS)
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(**_OPTS)
def random_uniform(seed, counter, out, single):
    golden = np.uint64(0x9E3779B97F4A7C15)
    key = _mix64(np.uint64(seed[0]) * golden + np.uint64(counter[0]))
    for i in range(out.size):
        bits = _mix64(key + np.uint64(i + 1) * golden)
        if single:
            out[i] = (bits >> np.uint64(40)) * (2.0 ** -24)
        else:
            out[i] = (bits >> np.uint64(11)) * (2.0 ** -53)
