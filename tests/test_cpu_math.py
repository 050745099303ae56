"""Accuracy, special values and vectorisation of the float32 math approximations in cpu_math.

The accuracy tests (sweeps, special values) run every function the way users' programs do:
`fg.jit(fg.exp)` and so on, whose generated kernel calls exp_f32 and is compiled, with the
fast-math flags of its @kernel line, by the kernel compiler the product uses, and compare against
float64 NumPy/SciPy references. So a change of the shipped flags that breaks accuracy fails here.
The bounds asserted are the ones documented in the module docstring (measured maximum, rounded
up a little). The vectorisation and inlining tests compile cpu_math directly with Numba.
"""
import math
import re

import numba
import numpy as np
import pytest
from scipy import special

import fusegrad as fg
from fusegrad.kernels import cpu_math as cm

FI = np.finfo(np.float32)
TINY = float(FI.smallest_subnormal)          # 2**-149
F32 = np.float32


def _make_loop(fn, fastmath=cm.FLAGS):
    @numba.njit(fastmath=set(fastmath) if fastmath else False, error_model="numpy")
    def loop(x, out):
        for j in range(x.shape[0]):
            out[j] = fn(x[j])

    return loop


LOOPS = {name: _make_loop(fn) for name, fn in cm.APPROX.items()}
EXACT_LOOPS = {name: _make_loop(fn) for name, fn in cm.EXACT.items()}

REF = {
    "exp": np.exp,
    "log": np.log,
    "tanh": np.tanh,
    "sigmoid": special.expit,
    "erf": special.erf,
}


# the shipped path: one fusegrad program per function, its kernel generated and compiled as any
# user's is (the kernel text's own fastmath flags, the default kernel compiler)
SHIPPED = {name: fg.jit(getattr(fg, name)) for name in cm.APPROX}


@pytest.fixture(autouse=True)
def _shipped_settings(monkeypatch):
    monkeypatch.delenv("FUSEGRAD_EXACT_MATH", raising=False)  # the approximations, not libm
    monkeypatch.delenv("FUSEGRAD_KERNEL_COMPILER", raising=False)  # the default compiler
    monkeypatch.delenv("FUSEGRAD_TARGET", raising=False)  # the default target
    monkeypatch.setenv("FUSEGRAD_CROSSCHECK", "0")  # checked against float64 references here


def run(name, x, loops=None):
    """f(x) for float32 x: through the shipped path, or `loops[name]` (an @njit loop)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if loops is None:
        return np.asarray(SHIPPED[name](x))
    out = np.empty_like(x)
    loops[name](x, out)
    return out


@pytest.mark.parametrize("name", list(cm.APPROX))
def test_the_shipped_kernel_calls_the_approximation(name):
    x = np.ones(8, np.float32)
    kernel = SHIPPED[name].source(x).split("# ---- kernel")[1]
    assert re.search(r"@kernel\(.*fastmath=", kernel), kernel  # flags from the generated text
    assert f"{name}_f32(" in kernel, kernel


def reference(name, x):
    with np.errstate(all="ignore"):
        return REF[name](np.asarray(x, dtype=np.float32).astype(np.float64))


def ulp_of(r):
    """float32 ulp at the (float64) value r: 2**(floor(log2|r|) - 23), at least 2**-149."""
    _, e = np.frexp(np.abs(r))
    return np.maximum(np.ldexp(1.0, e - 24), TINY)


def ulp_err(y, r):
    return np.abs(y.astype(np.float64) - r) / ulp_of(r)


def sweep(lo, hi, n=1_000_000, mags=500_000):
    """n points evenly over [lo, hi] plus log-spaced magnitudes 1e-38..1e38 of both signs."""
    m = np.logspace(-38, 38, mags).astype(np.float32)
    x = np.concatenate([np.linspace(lo, hi, n, dtype=np.float32), m, -m])
    return x[np.isfinite(x)]


def normal_result(r):
    return np.isfinite(r) & (np.abs(r) >= FI.smallest_normal) & (np.abs(r) <= FI.max)


# ------------------------------------------------------------------ dense sweeps

def test_exp_sweep():
    x = sweep(-110.0, 95.0)
    y, r = run("exp", x), reference("exp", x)
    normal = normal_result(r)
    assert normal.sum() > 1_000_000
    assert ulp_err(y[normal], r[normal]).max() <= 1.5
    # subnormal results: the two-factor scaling rounds once -> within one subnormal step
    sub = (r < FI.smallest_normal) & (r > 0)
    assert sub.sum() > 10_000
    assert np.abs(y[sub] - r[sub]).max() <= TINY
    # overflow / underflow exactly where float32 rounding of the true value does
    with np.errstate(over="ignore"):
        r32 = r.astype(np.float32)
    assert np.array_equal(np.isinf(y), np.isinf(r32))
    assert np.all(y[x < -103.9721] == 0)
    assert np.all(y[x > 88.72284] == np.inf)


def test_log_sweep():
    pos = np.concatenate([
        sweep(0.0, 1000.0),
        np.linspace(0.5, 2.0, 500_000, dtype=np.float32),            # around 1
        np.arange(1, 200_001, dtype=np.float32) * F32(TINY),           # subnormals
        np.geomspace(TINY, float(FI.max), 200_000).astype(np.float32),
    ])
    x = pos[pos > 0]
    y, r = run("log", x), reference("log", x)
    assert np.all(np.isfinite(y))
    assert ulp_err(y, r).max() <= 2.0
    rel = np.abs(y - r) / np.abs(np.where(r == 0, 1, r))
    assert rel[r != 0].max() <= 1.3e-7
    neg = -x[::7]
    assert np.all(np.isnan(run("log", neg)))


def test_tanh_sweep():
    x = sweep(-12.0, 12.0)
    y, r = run("tanh", x), reference("tanh", x)
    normal = normal_result(r)
    assert ulp_err(y[normal], r[normal]).max() <= 5.0
    rel = np.abs(y[normal] - r[normal]) / np.abs(r[normal])
    assert rel.max() <= 3.2e-7
    assert np.all(np.abs(y) <= 1)
    small = np.abs(x) < 1e-4                       # tanh(x) == x in float32 there
    assert np.array_equal(y[small], x[small])
    big = np.abs(x) >= 9.02
    assert np.array_equal(y[big], np.sign(x[big]))
    # odd symmetry
    xp = x[x > 0]
    assert np.array_equal(run("tanh", -xp), -run("tanh", xp))


def test_sigmoid_sweep():
    x = sweep(-110.0, 110.0)
    y, r = run("sigmoid", x), reference("sigmoid", x)
    assert not np.any(np.isnan(y))
    assert np.all((y >= 0) & (y <= 1))
    normal = normal_result(r)
    assert ulp_err(y[normal], r[normal]).max() <= 3.0
    sub = r < FI.smallest_normal                   # x < -87.3: exp(x)/(1+exp(x)) underflows
    assert np.abs(y[sub] - r[sub]).max() <= TINY
    assert np.all(y[x < -103.98] == 0)
    one = r.astype(np.float32) == 1                # x > ~16.6: exactly 1, never above
    assert np.all(y[one] == 1)


def test_erf_sweep():
    x = sweep(-6.0, 6.0)
    y, r = run("erf", x), reference("erf", x)
    assert np.abs(y - r).max() <= 1.5e-7
    assert np.all(np.abs(y) <= 1)
    inner = (np.abs(x) < 1) & (np.abs(r) >= FI.smallest_normal)
    assert ulp_err(y[inner], r[inner]).max() <= 3.0      # relative accuracy near 0
    outer = np.abs(x) >= 3.92
    assert np.array_equal(y[outer], np.sign(x[outer]))
    xp = x[x > 0]
    assert np.array_equal(run("erf", -xp), -run("erf", xp))


# ------------------------------------------------------------------ special values

INF, NAN = np.inf, np.nan
LARGEST_SUB = float(FI.smallest_normal - FI.smallest_subnormal)
FMIN, FMAX = float(FI.smallest_normal), float(FI.max)

# documented max error in float32 ulps (normal results)
ULP_BOUND = {"exp": 1.5, "log": 2.0, "tanh": 5.0, "sigmoid": 3.0, "erf": 3.0}

# (function, x, expected); expected None: compare with the float64 reference within ULP_BOUND
SPECIAL = [
    ("exp", 0.0, 1.0), ("exp", -0.0, 1.0), ("exp", INF, INF), ("exp", -INF, 0.0),
    ("exp", NAN, NAN), ("exp", TINY, 1.0), ("exp", -TINY, 1.0), ("exp", FMIN, 1.0),
    ("exp", FMAX, INF), ("exp", -FMAX, 0.0), ("exp", 88.72283, None), ("exp", 88.72284, INF),
    ("exp", -87.33654, None), ("exp", -103.972, TINY), ("exp", -103.9721, 0.0),
    ("exp", -104.0, 0.0), ("exp", 1.0, None), ("exp", -1.0, None),
    ("log", 0.0, -INF), ("log", -0.0, -INF), ("log", INF, INF), ("log", -INF, NAN),
    ("log", NAN, NAN), ("log", -1.0, NAN), ("log", -TINY, NAN), ("log", -FMAX, NAN),
    ("log", 1.0, 0.0), ("log", TINY, None), ("log", LARGEST_SUB, None), ("log", FMIN, None),
    ("log", FMAX, None), ("log", 2.0, None), ("log", math.e, None), ("log", 0.5, None),
    ("tanh", 0.0, 0.0), ("tanh", INF, 1.0), ("tanh", -INF, -1.0), ("tanh", NAN, NAN),
    ("tanh", TINY, TINY), ("tanh", -TINY, -TINY), ("tanh", LARGEST_SUB, LARGEST_SUB),
    ("tanh", FMIN, FMIN), ("tanh", 1e-20, F32(1e-20)), ("tanh", -1e-20, -F32(1e-20)),
    ("tanh", FMAX, 1.0), ("tanh", -FMAX, -1.0), ("tanh", 9.1, 1.0), ("tanh", -20.0, -1.0),
    ("sigmoid", 0.0, 0.5), ("sigmoid", -0.0, 0.5), ("sigmoid", INF, 1.0), ("sigmoid", -INF, 0.0),
    ("sigmoid", NAN, NAN), ("sigmoid", TINY, 0.5), ("sigmoid", FMAX, 1.0),
    ("sigmoid", -FMAX, 0.0), ("sigmoid", 20.0, 1.0), ("sigmoid", 88.8, 1.0),
    ("sigmoid", -88.8, None), ("sigmoid", -104.0, 0.0), ("sigmoid", -1.0, None),
    ("erf", 0.0, 0.0), ("erf", INF, 1.0), ("erf", -INF, -1.0), ("erf", NAN, NAN),
    ("erf", TINY, TINY), ("erf", -TINY, -TINY), ("erf", FMIN, None), ("erf", 1e-20, None),
    ("erf", FMAX, 1.0), ("erf", -FMAX, -1.0), ("erf", 4.0, 1.0), ("erf", -4.0, -1.0),
    ("erf", 1.0, None), ("erf", -0.5, None),
]


@pytest.mark.parametrize("name,x,expected", SPECIAL, ids=[f"{n}({x!r})" for n, x, _ in SPECIAL])
def test_special_values(name, x, expected):
    y = run(name, np.full(16, x, dtype=np.float32))     # 16 lanes: goes through the vector loop
    assert np.all(y == y[0]) or np.all(np.isnan(y))
    got = y[0]
    if expected is None:
        r = reference(name, np.float32(x))
        assert np.isfinite(got) and ulp_err(np.float32(got), r) <= ULP_BOUND[name], (got, r)
    elif np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == np.float32(expected), (got, expected)


def test_scalar_calls_and_types():
    # callable from Python too (compiled standalone), float64 arguments are rounded to float32
    assert cm.exp_f32(np.float32(0.0)) == 1.0
    assert cm.log_f32(1.0) == 0.0
    assert cm.sigmoid_f32(0.0) == 0.5

    @numba.njit(fastmath=set(cm.FLAGS), error_model="numpy")
    def types_of(x):
        return cm.exp_f32(x), cm.tanh_f32(x * np.float32(2)), cm.erf_f32(np.float64(x))

    res = types_of(np.float32(0.25))
    assert all(isinstance(v, float) for v in res)
    sig = types_of.nopython_signatures[0]
    assert all(t == numba.float32 for t in sig.return_type)


def test_bitcast_intrinsics():
    @numba.njit
    def roundtrip(x):
        i = cm.bitcast_f32_i32(x)
        return i, cm.bitcast_i32_f32(i)

    for v in [1.0, -2.0, TINY, FMAX, INF]:
        i, back = roundtrip(np.float32(v))
        assert i == np.array([v], np.float32).view(np.int32)[0]
        assert back == np.float32(v)
    assert roundtrip(np.float32(1.0))[0] == 0x3F800000


def test_exact_variants_match_numpy():
    x = np.linspace(-20, 20, 20_001, dtype=np.float32)
    for name in cm.EXACT:
        xi = np.abs(x) + F32(1e-3) if name == "log" else x
        y, r = run(name, xi, EXACT_LOOPS), reference(name, xi)
        assert ulp_err(y, r).max() <= 2.5, name        # glibc tanhf: up to 2 ulp


def test_same_results_without_fastmath():
    # the approximations must not depend on the caller's flags (beyond FMA contraction detail)
    x = sweep(-20.0, 20.0, n=20_000, mags=2_000)
    for name, fn in cm.APPROX.items():
        xi = np.abs(x) if name == "log" else x
        plain = np.empty_like(xi)
        _make_loop(fn, fastmath=None)(xi, plain)
        fast = run(name, xi)
        bad = ~((plain == fast) | (np.isnan(plain) & np.isnan(fast)))
        if bad.any():
            r = reference(name, xi[bad])
            assert ulp_err(plain[bad], r).max() <= 5.0, name


# ------------------------------------------------------------------ vectorisation

def _loop_ir(loop):
    ir = loop.inspect_llvm(loop.signatures[0])
    # the loop function itself (not the Python wrapper)
    start = ir.index("define ")
    return ir[start:ir.index("\n}\n", start)]


@pytest.mark.parametrize("name", list(cm.APPROX))
def test_loop_vectorises(name):
    loop = LOOPS[name]
    run(name, np.ones(8, np.float32), LOOPS)
    body = _loop_ir(loop)
    assert re.search(r"<(4|8|16) x float>", body), "loop was not vectorised"
    calls = re.findall(r"call [^@]*@([\w.$]+)", body)
    assert all(c.startswith("llvm.") for c in calls), calls     # no libm / helper calls


def test_inlines_into_prange_kernel():
    @numba.njit(parallel=True, fastmath=set(cm.FLAGS), error_model="numpy")
    def kernel(x, out):
        for i in numba.prange(x.shape[0]):
            for j in range(x.shape[1]):
                v = x[i, j]
                out[i, j] = (cm.exp_f32(v) + cm.log_f32(abs(v)) + cm.tanh_f32(v)
                             + cm.sigmoid_f32(v) + cm.erf_f32(v))

    x = np.random.default_rng(0).standard_normal((16, 40)).astype(np.float32)
    out = np.empty_like(x)
    kernel(x, out)
    x64 = x.astype(np.float64)
    ref = np.exp(x64) + np.log(np.abs(x64)) + np.tanh(x64) + special.expit(x64) + special.erf(x64)
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6)
