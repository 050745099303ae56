"""FUSEGRAD_CROSSCHECK=1: every compiled run also runs on the reference interpreter and must agree.

The test suite turns it on (tests/conftest.py), so every end-to-end test checks the generated
code against the oracle as well as its own expectations. A difference raises AssertionError
naming the output, the first element that differs and both values.
"""
from __future__ import annotations

import numpy as np

from . import config
from .ir import interpret

# float32 results differ from the interpreter by the approximations of exp/tanh/erf (a few ulp)
# and the order of reassociated sums; an error is measured against the output's largest
# magnitude, since gradients that cancel have no meaningful relative error
TOLERANCE = {"float32": (2e-4, 2e-5), "float64": (1e-9, 1e-11)}  # rtol, atol per max|x|


def enabled() -> bool:
    return config.get("FUSEGRAD_CROSSCHECK")


def reference_outputs(graph, inputs) -> list:
    """The interpreter's outputs for `inputs` (host copies: the compiled run may update the
    inputs in place, and some may be device arrays)."""
    from .device import to_numpy

    return interpret(graph, [np.array(to_numpy(x), copy=True) for x in inputs])


def check(graph, guard, ok, exe, reference, target):
    """Raise AssertionError at the first output of the compiled run (`exe.output(k)`) that
    differs from the interpreter's `reference` beyond TOLERANCE."""
    where = f"{graph.name}: compiled ({target}) and interpreter results differ"
    if guard is not None:
        ref_ok = bool(np.all(np.isfinite(reference[guard])))
        if ok != ref_ok:
            raise AssertionError(f"{where}: the loss is finite on "
                                 f"{target if ok else 'the interpreter'} only "
                                 f"({exe.output(guard)} vs {reference[guard]})")
        if not ok:
            return
    for k, want in enumerate(reference):
        got = np.asarray(exe.output(k, copy=False))
        want = np.asarray(want).reshape(got.shape)
        name = graph.output_names[k] if k < len(graph.output_names) else f"output {k}"
        if want.dtype.kind != "f":
            if not np.array_equal(got, want):
                at = tuple(int(i) for i in np.argwhere(got != want)[0])
                raise AssertionError(f"{where}: {name} at {at}: {got[at].item()} vs "
                                     f"{want[at].item()} (interpreter)")
            continue
        rtol, atol = TOLERANCE.get(str(want.dtype), TOLERANCE["float32"])
        finite = np.isfinite(want)
        scale = float(np.max(np.abs(want[finite]), initial=1.0))
        same_special = np.array_equal(np.isfinite(got), finite) and np.array_equal(
            got[~finite], want[~finite], equal_nan=True)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where not finite
            err = np.where(finite, np.abs(got.astype(np.float64) - want), 0.0)
        bad = err > atol * scale + rtol * np.abs(want)
        if not same_special or bad.any():
            at = tuple(int(i) for i in np.argwhere(bad | (np.isfinite(got) != finite))[0])
            raise AssertionError(f"{where}: {name} ({want.dtype}{list(want.shape)}) at {at}: "
                                 f"{got[at].item()} vs {want[at].item()} (interpreter), "
                                 f"max |diff| {err.max():.3g} (scale {scale:.3g})")
