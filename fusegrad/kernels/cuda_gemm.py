"""GEMM on the GPU: cuBLAS through CuPy when CuPy is installed, else a tiled Numba kernel.

    gemm(a, b, out, batch, a_batch, b_batch, m, n, k, trans_a, trans_b)

The signature of cpu_library.gemm: flat arrays, out[i] = op(a[i % a_batch]) @ op(b[i % b_batch])
for i < batch, a stored (k, m) when trans_a else (m, k), b (n, k) when trans_b else (k, n).
CuPy wraps the Numba device arrays without copying (`__cuda_array_interface__`); transposes are
views, which cuBLAS takes as its transpose flags. The simulator has no cuBLAS, so it always runs
the tiled kernel, as does FUSEGRAD_CUDA_GEMM=tiled on a GPU.
"""
from __future__ import annotations

import weakref
from functools import lru_cache

import numba
import numpy as np
from numba import cuda

from .. import config
from .cuda_config import launch_config


@lru_cache(maxsize=None)
def _cupy():
    """The CuPy module when cuBLAS can be used here, else None."""
    if launch_config().simulator or config.get("FUSEGRAD_CUDA_GEMM") == "tiled":
        return None
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # noqa: BLE001 - not installed, or no usable CUDA runtime: the fallback
        return None


class _Interface:
    """A device array's __cuda_array_interface__ without the array: CuPy keeps the object it
    wraps alive, and a view of this one keeps neither the array nor the arena it is a slice of."""

    def __init__(self, x):
        self.__cuda_array_interface__ = dict(x.__cuda_array_interface__)


# id(device array) -> (weak reference to it, CuPy view of its memory): made once per buffer (the
# generated driver passes the same views of its arena every step). Nothing here keeps an array
# alive: when one is collected (its program is gone), its entry goes with it.
_views: dict = {}


def _as_cupy(cp, x):
    key = id(x)
    hit = _views.get(key)
    if hit is not None and hit[0]() is x:
        return hit[1]

    def forget(ref):
        if _views.get(key, (None,))[0] is ref:  # not a newer array's entry under a reused id
            _views.pop(key, None)

    if not hasattr(x, "__cuda_array_interface__"):  # a host array (NumPy standing in for CuPy)
        return cp.asarray(x)
    try:
        ref = weakref.ref(x, forget)
    except TypeError:  # an array that cannot be weakly referenced: not cached
        return cp.asarray(x)
    view = cp.asarray(_Interface(x))
    _views[key] = (ref, view)
    return view


def _cupy_gemm(cp, a, b, out, batch, a_batch, b_batch, m, n, k, ta, tb):
    # batch index i = (i0, i1, i2) over (batch / big, big / small, small): the operand with the
    # bigger batch is indexed by (i1, i2), the other by i2 alone, and matmul broadcasts i0/i1
    big, small = max(a_batch, b_batch), min(a_batch, b_batch)
    lead = (batch // big, big // small, small)

    def operand(x, count, rows, cols, trans):
        shape = (1, big // small, small) if count == big else (1, 1, small)
        v = _as_cupy(cp, x).reshape(shape + ((cols, rows) if trans else (rows, cols)))
        return v.swapaxes(-1, -2) if trans else v

    A = operand(a, a_batch, m, k, ta)
    B = operand(b, b_batch, k, n, tb)
    cp.matmul(A, B, out=_as_cupy(cp, out).reshape(lead + (m, n)))


@lru_cache(maxsize=None)
def _tiled(tile: int, dtype: str):
    """The tiled kernel for one tile edge and dtype (shared arrays need both at compile time).
    A block of tile x tile threads computes one (tile x tile) block of the output at a time,
    grid-stride over all of them (batch included), staging tiles of a and b in shared memory."""
    nb_type = numba.from_dtype(np.dtype(dtype))
    zero = np.dtype(dtype).type(0)

    @cuda.jit
    def gemm_tiled(a, b, out, a_batch, b_batch, m, n, k, ta, tb, mt, nt, tiles):
        sa = cuda.shared.array((tile, tile), nb_type)
        sb = cuda.shared.array((tile, tile), nb_type)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        for t in range(cuda.blockIdx.x, tiles, cuda.gridDim.x):  # uniform over the block
            z = t // (mt * nt)
            row = ((t // nt) % mt) * tile + ty
            col = (t % nt) * tile + tx
            ao = (z % a_batch) * m * k
            bo = (z % b_batch) * k * n
            acc = zero
            for t0 in range(0, k, tile):
                kk = t0 + tx  # this thread stages a[row, kk] and b[kk', col]
                if row < m and kk < k:
                    sa[ty, tx] = a[ao + (kk * m + row if ta else row * k + kk)]
                else:
                    sa[ty, tx] = zero
                kk = t0 + ty
                if kk < k and col < n:
                    sb[ty, tx] = b[bo + (col * k + kk if tb else kk * n + col)]
                else:
                    sb[ty, tx] = zero
                cuda.syncthreads()
                for q in range(tile):
                    acc += sa[ty, q] * sb[q, tx]
                cuda.syncthreads()  # the tiles are read before the next ones overwrite them
            if row < m and col < n:
                out[(z * m + row) * n + col] = acc

    return gemm_tiled


def gemm(a, b, out, batch, a_batch, b_batch, m, n, k, trans_a, trans_b):
    """out = op(a) @ op(b), batched (see module docstring)."""
    if batch * m * n == 0:
        return
    cp = _cupy()
    if cp is not None:
        _cupy_gemm(cp, a, b, out, batch, a_batch, b_batch, m, n, k, trans_a, trans_b)
        return
    cfg = launch_config()
    tile = cfg.tile
    mt, nt = -(-m // tile), -(-n // tile)
    tiles = batch * mt * nt
    _tiled(tile, str(out.dtype))[min(tiles, cfg.max_blocks), (tile, tile)](
        a, b, out, a_batch, b_batch, m, n, k, bool(trans_a), bool(trans_b), mt, nt, tiles)
