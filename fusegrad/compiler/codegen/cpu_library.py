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
    """out[a, b] = sum or max over t of x[a, t, b]: t in order for each b (the interpreter's
    order), b innermost so the loops run over contiguous memory and vectorise."""
    for a in range(A):
        ob, xb = a * B, a * N * B
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
def _window_range(O, s, p, j, X):
    """The output positions o in [lo, hi) whose input index o*s - p + j lies in [0, X): the
    others read the zero padding. Loops over [lo, hi) have no branch, so they vectorise."""
    lo = max(0, -((j - p) // s))  # ceil((p - j) / s)
    hi = min(O, (X - 1 + p - j) // s + 1)
    return lo, max(lo, hi)


@njit(**_OPTS)
def unfold(x, out, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW):
    L = OH * OW
    for n in range(N):
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


@njit(**_OPTS)
def fold(cols, out, N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW):
    L = OH * OW
    for k in range(out.size):
        out[k] = 0
    for n in range(N):
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
