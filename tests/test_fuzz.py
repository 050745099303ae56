"""Differential fuzzing: random programs (tests/fuzz_programs.py) compiled for the CPU against the
reference interpreter, values and gradients.

CI runs FUZZ_CASES seeded programs; by hand, many more:

    FUSEGRAD_FUZZ_CASES=5000 python3 -m pytest tests/test_fuzz.py -q -x

A failure prints the program's recipe (`describe()`): the seed reproduces it exactly.
"""
from __future__ import annotations


import numpy as np
import pytest

import fusegrad as fg
from fusegrad import config

from fuzz_programs import random_program

FUZZ_CASES = config.get("FUSEGRAD_FUZZ_CASES")
TOLERANCE = {np.float32: (2e-4, 2e-5), np.float64: (1e-9, 1e-11)}  # rtol, atol per max|x|


def _close(got, want, dtype, what, program):
    rtol, atol = TOLERANCE[dtype]
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1.0)
    err = np.abs(got - want)
    bad = ~(err <= atol * scale + rtol * np.abs(want))
    if bad.any():
        pytest.fail(f"{what} differs: max |diff| {err.max():.3g} (scale {scale:.3g})\n"
                    f"{program.describe()}")


@pytest.mark.parametrize("seed", range(FUZZ_CASES))
def test_random_program_matches_the_interpreter(seed):
    program = random_program(seed)
    argnums = tuple(range(len(program.args)))
    want = fg.value_and_grad(program.fn, argnums=argnums, target="interpret")(*program.args)
    got = fg.value_and_grad(program.fn, argnums=argnums, target="cpu")(*program.args)
    dtype = program.args[0].dtype.type
    _close(got[0], want[0], dtype, "the loss", program)
    for k, (g, w) in enumerate(zip(got[1], want[1])):
        _close(g, w, dtype, f"the gradient of v{k}", program)


# ---- what the fuzzer found, kept as small regression cases --------------------------------------


def _check(fn, *args):
    argnums = tuple(range(len(args)))
    want = fg.value_and_grad(fn, argnums=argnums, target="interpret")(*args)
    got = fg.value_and_grad(fn, argnums=argnums, target="cpu")(*args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_in_place_output_is_stored_after_its_input_is_read():
    """A per-row output written over an input (the memory plan's in-place write) was stored
    before a later value of the same row loaded that input (seed 101)."""
    v0 = np.random.default_rng(0).standard_normal((4, 2, 1))

    def f(v0):
        v1 = fg.minimum(v0, v0)
        v2 = fg.take(v1, np.array([0, -1, -1]), axis=2)
        v3 = fg.mean(v1, axis=(0, 1), keepdims=True)
        return fg.sum(v1 * 0.17) + fg.sum(v2 * 0.3) + fg.sum(v3 * 0.31)

    _check(f, v0)


def test_scalars_of_a_one_element_kernel_share_a_loop_level():
    """Every value of a kernel over one element: scalar constants and (1,)-shaped values met at
    different loop levels ('needed outside its loop level', seed 2)."""
    v0 = np.array([0.5], np.float32)

    def f(v0):
        v2 = fg.abs(v0)
        return fg.sum(v0 * 0.1) + fg.sum(v2 * 0.2) + fg.sum((v0 - v2) * 0.3)

    _check(f, v0)
