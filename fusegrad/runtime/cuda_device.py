"""The CUDA device, imported only when target="cuda" is asked for.

`require_cuda()` returns numba.cuda when kernels can run: on a GPU with a working driver, or on
Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 in the environment before Python starts). Else
it raises CudaUnavailableError, saying why and what to do.
"""
from __future__ import annotations

import warnings
from functools import lru_cache


class CudaUnavailableError(RuntimeError):
    """target='cuda' was asked for where no CUDA device can run kernels."""


HOW_TO_FIX = (
    "To use target='cuda', run on a machine with an NVIDIA GPU and driver, with the CUDA extra "
    "installed: pip install 'fusegrad[cuda]' (numba-cuda and cupy-cuda12x). To try the CUDA "
    "backend without a GPU, set NUMBA_ENABLE_CUDASIM=1 in the environment before starting "
    "Python (Numba's CUDA simulator: correct but very slow, for tests on tiny shapes). "
    "Otherwise use target='cpu'.")


@lru_cache(maxsize=None)
def _probe():
    """(numba.cuda module or None, reason it cannot be used)."""
    try:
        with warnings.catch_warnings():  # numba's built-in CUDA target warns it is deprecated
            warnings.simplefilter("ignore")
            from numba import cuda
    except Exception as exc:  # noqa: BLE001 - any import failure means: no CUDA here
        return None, f"numba.cuda cannot be imported ({type(exc).__name__}: {exc})"
    from numba.core import config

    if config.ENABLE_CUDASIM:
        return cuda, ""
    try:
        if cuda.is_available():
            _quiet_small_grids()
            return cuda, ""
        return None, "no CUDA GPU or driver was found (numba.cuda.is_available() is False)"
    except Exception as exc:  # noqa: BLE001
        return None, f"the CUDA driver failed to initialise ({type(exc).__name__}: {exc})"


def _quiet_small_grids():
    """Programs launch one-block kernels for scalars and small bias vectors by design; Numba
    warns about under-utilisation at every such launch site."""
    try:
        from numba.core.errors import NumbaPerformanceWarning
    except ImportError:
        return
    warnings.filterwarnings("ignore", message="Grid size", category=NumbaPerformanceWarning)


def require_cuda():
    """numba.cuda, ready to launch kernels; CudaUnavailableError if it cannot."""
    cuda, reason = _probe()
    if cuda is None:
        raise CudaUnavailableError(f"target='cuda' is not usable here: {reason}. {HOW_TO_FIX}")
    return cuda


def cuda_available() -> bool:
    """Can target='cuda' run here (a GPU, or the simulator)?"""
    return _probe()[0] is not None


def on_simulator() -> bool:
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)
