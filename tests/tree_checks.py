"""Comparing pytrees of results (NumPy or device arrays) in the backend tests: tolerances, close,
bitwise equal, and host copies to compare against later. Shared by test_cpu_backend.py and
cuda_cases.py.

Device arrays are copied to the host first (fg.to_numpy leaves NumPy arrays and other leaves as
they are), so one helper serves both backends.
"""
from __future__ import annotations

import numpy as np

import fusegrad as fg
from fusegrad.pytree import flatten, unflatten

# tolerances for a compiled backend against the interpreter (float64 reference math)
F32 = dict(rtol=1e-5, atol=1e-6)
F64 = dict(rtol=1e-11, atol=1e-12)
TOL = {np.float32: F32, np.float64: F64}
STEP_TOL = dict(rtol=1e-4, atol=1e-5)  # several float32 training steps


def _what(what: str, k: int) -> str:
    return f"{what}: leaf {k}" if what else f"leaf {k}"


def assert_tree_close(got, want, what="", **tol):
    """Same structure, dtypes and shapes; values close (NaN where NaN); ints and bools equal."""
    g_leaves, g_tree = flatten(fg.to_numpy(got))
    w_leaves, w_tree = flatten(fg.to_numpy(want))
    assert g_tree == w_tree, f"{what or 'trees'}: structure {g_tree} != {w_tree}"
    for k, (g, w) in enumerate(zip(g_leaves, w_leaves)):
        g, w = np.asarray(g), np.asarray(w)
        assert (g.dtype, g.shape) == (w.dtype, w.shape), \
            f"{_what(what, k)}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, w, equal_nan=True, err_msg=_what(what, k), **tol)
        else:
            np.testing.assert_array_equal(g, w, err_msg=_what(what, k))


def assert_tree_bitwise(a, b, what=""):
    """Same structure, and every leaf the same bits (ints equal)."""
    a_leaves, a_tree = flatten(fg.to_numpy(a))
    b_leaves, b_tree = flatten(fg.to_numpy(b))
    assert a_tree == b_tree, f"{what or 'trees'}: structure {a_tree} != {b_tree}"
    for k, (x, y) in enumerate(zip(a_leaves, b_leaves)):
        if isinstance(x, (int, np.integer)):
            assert x == y, _what(what, k)
            continue
        x, y = np.asarray(x), np.asarray(y)
        assert (x.dtype, x.shape) == (y.dtype, y.shape), _what(what, k)
        assert x.tobytes() == y.tobytes(), f"{_what(what, k)} changed"


def tree_copy(tree):
    """Host copies of every array leaf (NumPy or device); other leaves as they are."""
    leaves, treedef = flatten(fg.to_numpy(tree))
    return unflatten(treedef, [np.array(x, copy=True) if isinstance(x, np.ndarray) else x
                               for x in leaves])
