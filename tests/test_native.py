"""The native kernel compiler (compiler/native) against Numba, the reference compiler of the same
kernel-language text.

Kernel text is valid Numba, so every check here compiles one text twice — with fusegrad's own
front end and with Numba (kernel_lang.kernel) — runs both entries on the same data and compares
bit for bit: the language's typing and promotion rules, Python's integer division, NaN in
comparisons and selects, casts, loops, helpers; then whole programs with every kernel compiled
by Numba (FUSEGRAD_KERNEL_COMPILER=numba) against the native build.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

import fusegrad as fg
from fusegrad.compiler.native.build import compile_kernel, undefined_symbols
from fusegrad.compiler.native.lower import KernelLangError
from fusegrad.compiler.native.module import ModuleCompiler
from fusegrad.compiler.native.reference import numba_entry
from fusegrad.runtime.native import NativeLoadError, load_object, missing_symbols

from backend_models import ln_gelu_loss, ln_gelu_params

_ENTRY = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p)
_count = [0]


def both(name, text):
    """The entry of `text`'s kernel `name` compiled natively and by Numba: (native, numba)."""
    _count[0] += 1
    obj, symbols, entries = compile_kernel(name, text, f"{_count[0]:016x}")
    native = load_object(f"test-{name}-{_count[0]}", obj, symbols, entries)[entries[0]]
    numba_address, module = numba_entry(name, text)
    both.keep.append(module)
    return _ENTRY(native), _ENTRY(numba_address)


both.keep = []


def call(entry, *args):
    block = np.array([a.ctypes.data if isinstance(a, np.ndarray) else int(a) for a in args],
                     np.int64)
    return entry(block.ctypes.data)


HEADER = '''import math

import numpy as np

from fusegrad.kernels.cpu_intrinsics import radd
from fusegrad.kernels.cpu_math import erf_f32, exp_f32, log_f32, sigmoid_f32, tanh_f32
from fusegrad.kernels.kernel_lang import helper, kernel


'''

# (expression over a, b (float64), f, g (float32), i, k (int64), u (uint64), t (bool), result)
EXPRESSIONS = [
    ("i // k", "i64"), ("i % k", "i64"), ("-i // k", "i64"), ("i // 3", "i64"),
    ("(-i) % 3", "i64"), ("i * k + 7", "i64"), ("i << 3", "i64"), ("i >> 1", "i64"),
    ("i & k", "i64"), ("i | k", "i64"), ("i ^ k", "i64"), ("abs(i - 5)", "i64"),
    ("min(i, k)", "i64"), ("max(i, k)", "i64"), ("i ** 3", "i64"), ("np.sign(i - 4)", "i64"),
    ("i / k", "f64"), ("i + f", "f64"), ("t + f", "f32"), ("t + t", "i64"), ("f * 2", "f64"),
    ("f ** 2", "f32"), ("f * g + f", "f32"), ("a / b", "f64"), ("f / g", "f32"),
    ("a - b * a", "f64"), ("np.sqrt(f)", "f32"), ("np.sqrt(i)", "f64"), ("np.exp(g)", "f32"),
    ("np.log(a)", "f64"), ("np.tanh(f)", "f32"), ("np.log1p(a)", "f64"), ("math.erf(a)", "f64"),
    ("np.abs(f)", "f32"), ("np.sign(a)", "f64"), ("np.power(a, b)", "f64"),
    ("np.float32(a)", "f32"), ("np.float64(f)", "f64"), ("np.int64(a)", "i64"),
    ("np.int32(i * 1000003)", "i32"), ("np.float32(i)", "f32"), ("np.float32(t)", "f32"),
    ("a if a > b else b", "f64"), ("f if (f > g or f != f) else g", "f32"),
    ("a if t else b", "f64"), ("(a != a)", "b1"), ("(a == b)", "b1"), ("(f < g)", "b1"),
    ("(a >= b) and (i > 2)", "b1"), ("not t", "b1"), ("np.isfinite(a)", "b1"),
    ("np.isnan(f)", "b1"), ("np.isinf(a)", "b1"), ("u * np.uint64(0x9E3779B97F4A7C15)", "u64"),
    ("(u >> np.uint64(40)) * (2.0 ** -24)", "f64"), ("exp_f32(f)", "f32"), ("log_f32(g)", "f32"),
    ("tanh_f32(f)", "f32"), ("sigmoid_f32(f)", "f32"), ("erf_f32(f)", "f32"),
    ("radd(f, g)", "f32"), ("-a", "f64"), ("-i", "i64"),
]


def _inputs(n=24):
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 1e-40, 3e38, -2.5, 0.5, 88.0]
    a = np.concatenate([special, rng.standard_normal(n - len(special)) * 3])
    b = np.concatenate([special[::-1], rng.standard_normal(n - len(special)) * 3])
    i = np.concatenate([[0, 1, -1, 7, -7, 3, -3, 100], rng.integers(-50, 50, n - 8)])
    k = np.concatenate([[3, -3, 0, 2, -2, 1, 5, -7], rng.integers(-9, 9, n - 8)])
    u = rng.integers(0, 2 ** 63, n).astype(np.uint64)
    t = rng.integers(0, 2, n).astype(bool)
    return (a, b, a.astype(np.float32), b.astype(np.float32), i.astype(np.int64),
            k.astype(np.int64), u, t)


def test_expressions_mean_what_numba_says():
    """Every expression of the table, on NaN, infinities, zeros of both signs and negative
    integers, gives the same bits under both compilers."""
    params = "n, a_, b_, f_, g_, i_, k_, u_, t_"
    lines = ["    for j in range(n):",
             "        a = a_[j]", "        b = b_[j]", "        f = f_[j]", "        g = g_[j]",
             "        i = i_[j]", "        k = k_[j]", "        u = u_[j]", "        t = t_[j]"]
    outs = []
    for m, (expr, dtype) in enumerate(EXPRESSIONS):
        outs.append((f"o{m}", dtype))
        lines.append(f"        o{m}[j] = {expr}")
    sig = "i64 f64* f64* f32* f32* i64* i64* u64* b1* " + " ".join(f"{d}*" for _, d in outs)
    text = (HEADER + f'@kernel("{sig}")\n'
            f"def zoo({params}, {', '.join(o for o, _ in outs)}):\n"
            + "\n".join(lines) + "\n    return 0\n")
    native, reference = both("zoo", text)
    ins = _inputs()
    numpy_of = {"i64": np.int64, "i32": np.int32, "f64": np.float64, "f32": np.float32,
                "b1": np.bool_, "u64": np.uint64}
    results = []
    for entry in (native, reference):
        out = [np.zeros(len(ins[0]), numpy_of[d]) for _, d in outs]
        with np.errstate(all="ignore"):
            assert call(entry, len(ins[0]), *ins, *out) == 0
        results.append(out)
    for (expr, _), got, want in zip(EXPRESSIONS, *results):
        assert got.tobytes() == want.tobytes(), f"{expr}: {got} vs numba {want}"


LOOPS = HEADER + '''@helper
def halves(lo, hi):
    return lo // 2, hi // 2


@kernel("i64 i64* i64*")
def loops(n, x, out):
    total = 0
    for j in range(n - 1, -1, -2):
        if x[j] < 0:
            continue
        if x[j] > 40:
            break
        total += x[j]
    out[0] = total
    acc = 0.0
    step = -1 if n > 3 else 1
    for j in range(n - 1, 0, step):
        acc = acc + x[j] * 0.5
    out[1] = np.int64(acc)
    lo, hi = halves(x[0], x[1])
    out[2] = lo + hi
    w = 0
    while w < n and x[w] != 13:
        w += 1
    out[3] = w
    out[4] = 1 if n > 2 else 0
    return 3 if n == 0 else 0
'''


def test_loops_branches_and_helpers_match_numba():
    native, reference = both("loops", LOOPS)
    x = np.array([5, -4, 9, 13, -2, 7, 50, 8, 3], np.int64)
    for n in (0, 1, 4, len(x)):
        got, want = np.zeros(5, np.int64), np.zeros(5, np.int64)
        assert call(native, n, x, got) == call(reference, n, x, want)
        assert np.array_equal(got, want), (n, got, want)


def test_whole_program_with_numba_kernels_matches_native(monkeypatch):
    """A LayerNorm + GELU step (row, column, row+column kernels, the float32 approximations,
    GEMMs, the in-place Adam update) with every kernel compiled by Numba, against the native
    build: the same results up to the order of vectorised sums."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    t = rng.standard_normal((16, 4)).astype(np.float32)
    results = {}
    for compiler in ("native", "numba"):
        monkeypatch.setenv("FUSEGRAD_KERNEL_COMPILER", compiler)
        step = fg.train_step(ln_gelu_loss, fg.optim.Adam(0.01), target="cpu")
        p = ln_gelu_params()
        results[compiler] = ([float(step(p, x, t)) for _ in range(3)], p)
    np.testing.assert_allclose(results["native"][0], results["numba"][0], rtol=1e-6)
    for key, value in results["native"][1].items():
        np.testing.assert_allclose(value, results["numba"][1][key], rtol=1e-5, atol=1e-6)


# ---- what the compiler refuses --------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    ("    x = [1, 2]\n", "List expressions are not in the kernel language"),
    ("    for j in n:\n        pass\n", r"loops are `for name in range\(...\)`"),
    ("    p[0] = undefined_name\n", "name 'undefined_name' is not defined"),
    ("    p[0:2] = 1.0\n", "index pointers with one integer"),
    ("    import os\n", "Import statements are not in the kernel language"),
    ("    p[0] = n[0]\n", "only pointers can be indexed"),
])
def test_code_outside_the_language_is_a_clear_error(body, message):
    text = HEADER + f'@kernel("i64 f32*")\ndef bad(n, p):\n{body}    return 0\n'
    with pytest.raises(KernelLangError, match=message) as info:
        ModuleCompiler("bad").add_source(text)
    assert "line" in str(info.value)


def test_objects_name_their_external_symbols_and_missing_ones_are_refused():
    text = HEADER + ('@kernel("i64 f64*")\ndef ext(n, p):\n'
                     "    for j in range(n):\n        p[j] = np.tanh(p[j]) + math.erf(p[j])\n"
                     "    return 0\n")
    obj, symbols, entries = compile_kernel("ext", text, "e" * 16)
    assert {"tanh", "erf"} <= set(undefined_symbols(obj)) <= set(symbols)
    assert missing_symbols(["tanh", "erf"]) == []
    assert missing_symbols(["fusegrad_no_such_symbol"]) == ["fusegrad_no_such_symbol"]
    with pytest.raises(NativeLoadError, match="fusegrad_no_such_symbol"):
        load_object("refused", obj, [*symbols, "fusegrad_no_such_symbol"], entries)
    p = np.array([0.5, -1.0])
    address = load_object("ext", obj, symbols, entries)[entries[0]]
    assert call(_ENTRY(address), 2, p) == 0
    np.testing.assert_allclose(p, [math.tanh(0.5) + math.erf(0.5), math.tanh(-1) + math.erf(-1)])
