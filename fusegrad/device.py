"""Device placement: parameters (and anything else) kept in GPU memory across steps.

    params = fg.device_put(params, "cuda")     # the same pytree, of device arrays (one copy)
    step = fg.train_step(loss_fn, fg.optim.Adam(lr=1e-3), target="cuda")
    loss = step(params, x, y)                  # params updated in place on the device;
                                               # only the batch goes in and the loss comes out
    host = fg.to_numpy(params)                 # a pytree of NumPy arrays (copies)

Device arrays are Numba's (numba.cuda device arrays); any array with `__cuda_array_interface__`
(CuPy, PyTorch CUDA tensors) is accepted as an input too, without a copy. This module imports
numba.cuda only when a device array is asked for.
"""
from __future__ import annotations

import numpy as np

from .ir.types import is_device_array
from .pytree import flatten, unflatten

__all__ = ["device_put", "to_numpy", "is_device_array"]


def _is_array_leaf(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic)) or is_device_array(x)


def device_put(tree, target: str = "cuda"):
    """A copy of `tree` whose array leaves live on `target` ("cuda": device arrays, "cpu":
    NumPy arrays). Leaves already there are kept as they are (not copied); Python scalars and
    None stay as they are."""
    if target == "cpu":
        return to_numpy(tree)
    if target != "cuda":
        raise ValueError(f"device_put: target must be 'cuda' or 'cpu', got {target!r}")
    from .runtime.cuda_device import require_cuda

    cuda = require_cuda()
    leaves, treedef = flatten(tree)
    out = [x if is_device_array(x) or not _is_array_leaf(x) else cuda.to_device(_c_order(x))
           for x in leaves]
    return unflatten(treedef, out)


def _c_order(x) -> np.ndarray:
    """x as a C-contiguous array of its own shape (np.ascontiguousarray makes 0-d arrays 1-d)."""
    a = np.asarray(x)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _host(x) -> np.ndarray:
    if not is_device_array(x):
        return np.asarray(x)
    if hasattr(x, "copy_to_host"):  # Numba's (and the simulator's)
        return x.copy_to_host()
    if hasattr(x, "get"):  # CuPy
        return x.get()
    from .runtime.cuda_device import require_cuda

    return require_cuda().as_cuda_array(x).copy_to_host()


def to_numpy(tree):
    """A copy of `tree` with every device array copied to a NumPy array (NumPy arrays and
    other leaves are returned as they are)."""
    leaves, treedef = flatten(tree)
    return unflatten(treedef, [_host(x) if _is_array_leaf(x) else x for x in leaves])


def zeros(shape, dtype, target: str):
    """A zero-filled array on `target` (optimizer state lives where the step runs)."""
    if target != "cuda":
        return np.zeros(shape, dtype)
    from .runtime.cuda_device import require_cuda

    return require_cuda().to_device(np.zeros(shape, dtype))


def copy_into(dst, src):
    """dst[...] = src, where dst is a NumPy or device array and src a NumPy array."""
    if is_device_array(dst):
        dst.copy_to_device(np.ascontiguousarray(src, dtype=dst.dtype).reshape(dst.shape))
    else:
        np.copyto(dst, src)
