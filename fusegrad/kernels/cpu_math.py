"""Vectorisable float32 approximations of exp, log, tanh, sigmoid and erf for generated kernels.

PyPI's llvmlite has no SVML, so ``np.exp``/``np.tanh``/``math.erf`` inside a kernel loop are scalar
libm calls that stop LLVM from vectorising the loop (5-30x slower than these). The functions here
are written only with float32 arithmetic, ``llvm.fmuladd``/``llvm.rint`` and integer bit tricks,
with every data-dependent choice made by a select (clamp, final fix-up of special inputs), so a
``for j in range(C): out[j] = exp_f32(x[j])`` loop becomes packed AVX2/AVX-512 code.

How kernels use them:

* Loop kernels call them (compiler/codegen/cpu_expr.py). The native compiler (compiler/native)
  compiles their Python source as always-inlined helpers of the calling kernel, under the
  *caller's* fast-math flags: the shipped kernels' ``fastmath=("contract",)`` (their @kernel
  line). The intrinsics below are lowered by native/builtins.py; Numba, the reference compiler,
  uses the @intrinsic definitions here.
* Never compile a caller with 'nnan'/'ninf' (Numba's ``fastmath=True``): LLVM may then delete the
  NaN/inf selects (measured: exp(nan) -> 0, log(inf) -> 88.7).
* Arguments are converted with ``np.float32(x)``; results are float32.
* What must not be reassociated (Cody-Waite steps, polynomial FMAs, the two-factor 2**n
  scaling) is emitted by intrinsics: ``llvm.fmuladd`` (one FMA where the CPU has it) and two
  plain multiplies that carry an explicit 'nsz' flag only, so no caller's flags can turn
  p * 2**a * 2**b into p * (2**a * 2**b), which overflowed.
* A change to this file changes every kernel's cache key (compiler/native/build.py).
* ``bitcast_f32_i32``/``bitcast_i32_f32`` are intrinsics: usable from compiled code only.

Methods and special values:

* ``exp_f32``: clamp to [-104, 89], n = rint(x*log2(e)), Cody-Waite r = x - n*ln2_hi - n*ln2_lo
  (ln2_hi has 9 significant bits, so n*ln2_hi is exact), Cephes degree-7 polynomial on
  [-ln2/2, ln2/2], then scaling by 2**n as two bit-built factors 2**(n>>1) * 2**(n-(n>>1)):
  results in the subnormal range are rounded once (not flushed), 2**128 overflows to inf.
  x > 88.7228394 -> inf, x < -103.972 -> 0, nan -> nan, -inf -> 0, +inf -> inf.
* ``log_f32``: subnormals scaled by 2**23 first, exponent/mantissa split by bit operations,
  mantissa in [sqrt(1/2), sqrt(2)), Cephes logf polynomial, e*ln2 added in two parts.
  0 -> -inf, x < 0 -> nan, inf -> inf, nan -> nan.
* ``tanh_f32``: Eigen's 13/6 odd/even rational x*P(x^2)/Q(x^2), input clamped to +-7.9988
  (where it reaches 1), result clamped to [-1, 1], tanh(x) = x for |x| < 4e-4.
  +-inf -> +-1, nan -> nan.
* ``sigmoid_f32``: e = exp_f32(-|x|) (never overflows), r = 1/(1+e), result r for x >= 0 and e*r
  for x < 0, so both tails keep relative accuracy (down to the subnormal range); never nan for
  non-nan input. -inf -> 0, +inf -> 1, nan -> nan.
* ``erf_f32``: two polynomials, both evaluated and selected (no division, no exp):
  x*PA(x^2) (degree 6 in x^2) for |x| < 1 and 1 - PB(|x| - 2.46) (degree 12, approximates erfc)
  for 1 <= |x| < 3.92; +-1 beyond (float32 erf is 1 from 3.9192064 on). The coefficients are
  fusegrad's own near-minimax fit rounded to float32 (Eigen's single rational measured 3.5e-7
  absolute in float32). +-inf -> +-1, nan -> nan.

Measured accuracy against float64 NumPy/SciPy, on the AVX2+FMA development machine, every
finite float32 input (2**32 bit patterns), in a Numba loop compiled with FLAGS (a superset of
the shipped kernels' flags); tests/test_cpu_math.py checks these bounds on sweeps through the
shipped path (fg.jit(fg.exp) ... compiled by the native compiler). ulp = float32 ulp of the
exact value; "normal results" = results in [FLT_MIN, FLT_MAX].

=========  ================  ==============  ==========================================
function   max error (ulp)   max rel. error  other
=========  ================  ==============  ==========================================
exp        1.01              8.5e-8          subnormal results within 0.75 * 2**-149;
                                             overflow/underflow exactly as float32(exp)
log        1.63              1.25e-7         all positive inputs incl. subnormals
tanh       4.90              2.9e-7          max abs 2.9e-7 (near |x| = 5)
sigmoid    2.83              2.0e-7          x < -87.3 (subnormal results): within
                                             0.75 * 2**-149; exactly 0 / 1 in the tails
erf        2.31              1.7e-7          max abs 1.18e-7; relative accuracy kept
                                             down to subnormal x
=========  ================  ==============  ==========================================

Special values (0, -0, +-inf, nan, subnormals, FLT_MIN, FLT_MAX, the overflow thresholds) are
exact as listed above (tests/test_cpu_math.py). Without FMA hardware llvm.fmuladd becomes mul+add
and the errors grow slightly.

Measured speed, 1M float32, serial @njit loop ``out[j] = f(x[j])`` (FLAGS, error_model="numpy"),
median of 7 x 15 runs, development VM (LLVM host CPU znver3: AVX2 + FMA, no AVX-512; loops
vectorise 8-wide on ymm), shared with other jobs so +-20 %. A plain copy loop takes 0.17 ms.

=========  ===========  ===============================  ==================================
function   this module  same loop with libm (EXACT)      NumPy / SciPy on the array (out=)
=========  ===========  ===============================  ==================================
exp        0.63 ms      5.5 ms  (np.exp)                 2.96 ms  np.exp
log        0.94 ms      6.2 ms  (np.log)                 3.16 ms  np.log
tanh       0.55 ms      28.8 ms (np.tanh)                4.94 ms  np.tanh
sigmoid    0.90 ms      5.6 ms  (np.exp based)           7.47 ms  scipy.special.expit
erf        1.02 ms      26.5 ms (math.erf)               34.1 ms  scipy.special.erf
=========  ===========  ===============================  ==================================
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "FLAGS", "APPROX", "EXACT",
    "exp_f32", "log_f32", "tanh_f32", "sigmoid_f32", "erf_f32",
    "exp_exact", "log_exact", "tanh_exact", "sigmoid_exact", "erf_exact",
    "bitcast_f32_i32", "bitcast_i32_f32",
]

#: The widest fast-math flags these functions are correct under (the accuracy and vectorisation
#: measurements use them); the shipped kernels use 'contract' only. No 'nnan'/'ninf':
#: ``fastmath=True`` would let LLVM delete the special-value selects.
FLAGS = frozenset({"reassoc", "contract", "nsz", "arcp", "afn"})

_F32 = ir.FloatType()
_I32 = ir.IntType(32)


# --------------------------------------------------------------------------------------------
# LLVM intrinsics. What must not be reassociated (Cody-Waite steps, polynomial FMAs, the
# two-factor 2**n scaling) is emitted here as llvm.fmuladd calls (Numba adds the caller's flags to
# calls, but LLVM neither splits nor reorders fmuladd without 'nnan'/'ninf') and as multiplies
# with an explicit flag set (Numba only adds flags to instructions that have none).
# --------------------------------------------------------------------------------------------

def _is_f32(t) -> bool:
    return isinstance(t, types.Float) and t.bitwidth == 32


def _llvm_call(builder, name, args, ret=_F32):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    return builder.call(fn, args)


@intrinsic
def bitcast_f32_i32(typingctx, x):
    """Reinterpret the bits of a float32 as an int32 (no conversion)."""
    if not _is_f32(x):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _I32)

    return types.int32(types.float32), codegen


@intrinsic
def bitcast_i32_f32(typingctx, i):
    """Reinterpret the low 32 bits of an integer as a float32 (no conversion)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, _I32)
        elif v.type.width < 32:
            v = builder.sext(v, _I32) if sig.args[0].signed else builder.zext(v, _I32)
        return builder.bitcast(v, _F32)

    return types.float32(i), codegen


@intrinsic
def _fmuladd(typingctx, a, b, c):
    """a*b + c through llvm.fmuladd: one fused FMA on targets that have one, else mul+add."""
    if not (_is_f32(a) and _is_f32(b) and _is_f32(c)):
        return None

    def codegen(context, builder, sig, args):
        return _llvm_call(builder, "llvm.fmuladd.f32", list(args))

    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def _rint(typingctx, x):
    """Round to nearest integer, ties to even (llvm.rint: vroundps / vrndscaleps)."""
    if not _is_f32(x):
        return None

    def codegen(context, builder, sig, args):
        return _llvm_call(builder, "llvm.rint.f32", [args[0]])

    return types.float32(types.float32), codegen


@intrinsic
def _ldexp2(typingctx, p, n):
    """p * 2**n for integral float32 n in [-252, 254], as p * 2**(n>>1) * 2**(n-(n>>1)).

    Both factors are normal floats, so results in the subnormal range are rounded once (in the
    second multiply) instead of being flushed, and 2**128 overflows correctly to inf. The two
    multiplies carry only 'nsz', so they cannot be reassociated into p * (s1 * s2).
    """
    if not (_is_f32(p) and _is_f32(n)):
        return None

    def codegen(context, builder, sig, args):
        pv, nv = args
        ni = builder.fptosi(nv, _I32)
        n1 = builder.ashr(ni, ir.Constant(_I32, 1))
        n2 = builder.sub(ni, n1)
        bias = ir.Constant(_I32, 127)
        sh = ir.Constant(_I32, 23)
        s1 = builder.bitcast(builder.shl(builder.add(n1, bias), sh), _F32)
        s2 = builder.bitcast(builder.shl(builder.add(n2, bias), sh), _F32)
        # An explicit flag set stops Numba's fast-math pass from adding 'reassoc' (it only
        # flags instructions that have none); 'nsz' alone permits no reordering.
        return builder.fmul(builder.fmul(pv, s1, flags=("nsz",)), s2, flags=("nsz",))

    return types.float32(types.float32, types.float32), codegen


@intrinsic
def _exponent(typingctx, x):
    """Unbiased binary exponent of a (normal, positive) float32, as float32: floor(log2(x))."""
    if not _is_f32(x):
        return None

    def codegen(context, builder, sig, args):
        bits = builder.bitcast(args[0], _I32)
        e = builder.and_(builder.lshr(bits, ir.Constant(_I32, 23)), ir.Constant(_I32, 0xFF))
        e = builder.sub(e, ir.Constant(_I32, 127))
        return builder.sitofp(e, _F32)

    return types.float32(types.float32), codegen


@intrinsic
def _mantissa(typingctx, x):
    """The significand of a float32 with its exponent replaced by 0: a value in [1, 2)."""
    if not _is_f32(x):
        return None

    def codegen(context, builder, sig, args):
        bits = builder.bitcast(args[0], _I32)
        m = builder.or_(builder.and_(bits, ir.Constant(_I32, 0x007FFFFF)),
                        ir.Constant(_I32, 0x3F800000))
        return builder.bitcast(m, _F32)

    return types.float32(types.float32), codegen


@intrinsic
def _max(typingctx, a, b):
    """a if a > b else b, as one select (maps to maxps). NaN in a gives b."""
    if not (_is_f32(a) and _is_f32(b)):
        return None

    def codegen(context, builder, sig, args):
        a, b = args
        return builder.select(builder.fcmp_ordered(">", a, b), a, b)

    return types.float32(types.float32, types.float32), codegen


@intrinsic
def _min(typingctx, a, b):
    """a if a < b else b, as one select (maps to minps). NaN in a gives b."""
    if not (_is_f32(a) and _is_f32(b)):
        return None

    def codegen(context, builder, sig, args):
        a, b = args
        return builder.select(builder.fcmp_ordered("<", a, b), a, b)

    return types.float32(types.float32, types.float32), codegen


def _jit(fn):
    return numba.njit(inline="always", fastmath=set(FLAGS), error_model="numpy", cache=True)(fn)


_f = np.float32
_ZERO, _HALF, _ONE = _f(0.0), _f(0.5), _f(1.0)
_INF = _f(np.inf)
_NAN = _f(np.nan)

# ---- exp ----
_EXP_LO = _f(-104.0)            # exp(-104) < 2**-150: rounds to 0
_EXP_HI = _f(89.0)              # exp(89) > FLT_MAX: overflows to inf in _ldexp2
_LOG2E = _f(1.44269504088896341)
_LN2_HI = _f(0.693359375)       # 9 significant bits: n * _LN2_HI is exact for |n| < 2**15
_LN2_LO = _f(-2.12194440e-4)    # ln2 - _LN2_HI
# Cephes expf: exp(r) = 1 + r + r^2 * P(r) on [-ln2/2, ln2/2]
_EP0 = _f(1.9875691500e-4)
_EP1 = _f(1.3981999507e-3)
_EP2 = _f(8.3334519073e-3)
_EP3 = _f(4.1665795894e-2)
_EP4 = _f(1.6666665459e-1)
_EP5 = _f(5.0000001201e-1)


@_jit
def exp_f32(x):
    """exp(x) for float32 x (see the module docstring for accuracy and special values)."""
    x = np.float32(x)
    xc = _min(_max(x, _EXP_LO), _EXP_HI)        # nan -> _EXP_HI (fixed below)
    n = _rint(xc * _LOG2E)
    r = _fmuladd(n, -_LN2_HI, xc)               # exact (Sterbenz + exact product)
    r = _fmuladd(n, -_LN2_LO, r)
    r2 = r * r
    p = _fmuladd(_EP0, r, _EP1)
    p = _fmuladd(p, r, _EP2)
    p = _fmuladd(p, r, _EP3)
    p = _fmuladd(p, r, _EP4)
    p = _fmuladd(p, r, _EP5)
    p = _fmuladd(p, r2, r) + _ONE
    y = _ldexp2(p, n)
    return y if x == x else x


# ---- log ----
_FLT_MIN = _f(1.17549435e-38)
_TWO23 = _f(8388608.0)
_SQRT2 = _f(1.41421356237309505)
# Cephes logf: log(1+f) = f - f^2/2 + f^3 * P(f) for f in [sqrt(1/2)-1, sqrt(2)-1]
_LP0 = _f(7.0376836292e-2)
_LP1 = _f(-1.1514610310e-1)
_LP2 = _f(1.1676998740e-1)
_LP3 = _f(-1.2420140846e-1)
_LP4 = _f(1.4249322787e-1)
_LP5 = _f(-1.6668057665e-1)
_LP6 = _f(2.0000714765e-1)
_LP7 = _f(-2.4999993993e-1)
_LP8 = _f(3.3333331174e-1)


@_jit
def log_f32(x):
    """Natural log for float32 x (see the module docstring for accuracy and special values)."""
    x = np.float32(x)
    sub = x < _FLT_MIN                          # subnormals (and <= 0, fixed below)
    xs = x * _TWO23 if sub else x
    e = _exponent(xs)
    e = e - _f(23.0) if sub else e
    m = _mantissa(xs)                           # [1, 2)
    big = m > _SQRT2
    m = m * _HALF if big else m                 # [sqrt(1/2), sqrt(2))
    e = e + _ONE if big else e
    f = m - _ONE                                # exact
    z = f * f
    p = _fmuladd(_LP0, f, _LP1)
    p = _fmuladd(p, f, _LP2)
    p = _fmuladd(p, f, _LP3)
    p = _fmuladd(p, f, _LP4)
    p = _fmuladd(p, f, _LP5)
    p = _fmuladd(p, f, _LP6)
    p = _fmuladd(p, f, _LP7)
    p = _fmuladd(p, f, _LP8)
    y = (f * z) * p
    y = _fmuladd(e, _LN2_LO, y)
    y = _fmuladd(z, -_HALF, y)
    y = _fmuladd(e, _LN2_HI, f + y)
    y = -_INF if x == _ZERO else y
    y = _NAN if x < _ZERO else y
    return y if x < _INF else x                 # +inf -> inf, nan -> nan


# ---- tanh ----
# Eigen's generic_fast_tanh_float: 13/6-degree odd/even rational, clamp where it reaches 1.
_TANH_CLAMP = _f(7.99881172180175781)
_TANH_TINY = _f(0.0004)
_TA1 = _f(4.89352455891786e-03)
_TA3 = _f(6.37261928875436e-04)
_TA5 = _f(1.48572235717979e-05)
_TA7 = _f(5.12229709037114e-08)
_TA9 = _f(-8.60467152213735e-11)
_TA11 = _f(2.00018790482477e-13)
_TA13 = _f(-2.76076847742355e-16)
_TB0 = _f(4.89352518554385e-03)
_TB2 = _f(2.26843463243900e-03)
_TB4 = _f(1.18534705686654e-04)
_TB6 = _f(1.19825839466702e-06)


@_jit
def tanh_f32(x):
    """tanh for float32 x (see the module docstring for accuracy and special values)."""
    x = np.float32(x)
    xc = _max(_min(x, _TANH_CLAMP), -_TANH_CLAMP)
    x2 = xc * xc
    p = _fmuladd(x2, _TA13, _TA11)
    p = _fmuladd(x2, p, _TA9)
    p = _fmuladd(x2, p, _TA7)
    p = _fmuladd(x2, p, _TA5)
    p = _fmuladd(x2, p, _TA3)
    p = _fmuladd(x2, p, _TA1)
    q = _fmuladd(x2, _TB6, _TB4)
    q = _fmuladd(x2, q, _TB2)
    q = _fmuladd(x2, q, _TB0)
    y = xc * (p / q)
    y = _max(_min(y, _ONE), -_ONE)
    return x if abs(x) < _TANH_TINY or x != x else y


# ---- sigmoid ----
@_jit
def sigmoid_f32(x):
    """1 / (1 + exp(-x)) for float32 x, accurate in relative terms for both signs."""
    x = np.float32(x)
    e = exp_f32(-abs(x))                        # in (0, 1]: never overflows
    r = _ONE / (_ONE + e)
    return r if x >= _ZERO else (e * r if x < _ZERO else x)   # x < 0: exp(x) / (1 + exp(x))


# ---- erf ----
# Two polynomial pieces, both evaluated and selected (no division, no exp):
#   |x| < 1:        erf(x) = x * PA(x^2)                  (relative error, down to subnormals)
#   1 <= |x| < c:   erf(x) = sign(x) * (1 - PB(|x| - m))  (PB ~ erfc; absolute error)
#   |x| >= c:       erf(x) = sign(x)   (float32(erf(x)) == 1 from x = 3.9192064 on)
# Coefficients: weighted least squares on Chebyshev nodes with Lawson iterations (near-minimax),
# rounded to float32 one coefficient at a time with the rest refitted (fusegrad's own fit).
_ERF_SPLIT = _ONE
_ERF_CLAMP = _f(3.92)
_ERF_MID = _f(2.4600000381469727)
_EA0 = _f(1.1283791065216064)
_EA1 = _f(-0.37612223625183105)
_EA2 = _f(0.11279039829969406)
_EA3 = _f(-0.026664158329367638)
_EA4 = _f(0.004828662611544132)
_EA5 = _f(-0.0004855055012740195)
_EA6 = _f(-2.5518369511701167e-05)
_EB0 = _f(0.0005033267079852521)
_EB1 = _f(-0.002656192984431982)
_EB2 = _f(0.006535761523991823)
_EB3 = _f(-0.009832993149757385)
_EB4 = _f(0.009904828853905201)
_EB5 = _f(-0.006797656882554293)
_EB6 = _f(0.002963503822684288)
_EB7 = _f(-0.0004621628613676876)
_EB8 = _f(-0.0003911262610927224)
_EB9 = _f(0.0003016730770468712)
_EB10 = _f(-5.1668990636244416e-05)
_EB11 = _f(-2.5420013116672635e-05)
_EB12 = _f(9.125133146881126e-06)

@_jit
def erf_f32(x):
    """erf for float32 x (see the module docstring for accuracy and special values)."""
    x = np.float32(x)
    ax = abs(x)
    # |x| < 1: x * PA(x^2)
    xa = x if ax < _ERF_SPLIT else _ZERO
    u = xa * xa
    pa = _fmuladd(u, _EA6, _EA5)
    pa = _fmuladd(u, pa, _EA4)
    pa = _fmuladd(u, pa, _EA3)
    pa = _fmuladd(u, pa, _EA2)
    pa = _fmuladd(u, pa, _EA1)
    pa = _fmuladd(u, pa, _EA0)
    ya = xa * pa
    # 1 <= |x|: 1 - PB(|x| - m), clamped where erf rounds to 1
    t = _min(ax, _ERF_CLAMP) - _ERF_MID
    pb = _fmuladd(t, _EB12, _EB11)
    pb = _fmuladd(t, pb, _EB10)
    pb = _fmuladd(t, pb, _EB9)
    pb = _fmuladd(t, pb, _EB8)
    pb = _fmuladd(t, pb, _EB7)
    pb = _fmuladd(t, pb, _EB6)
    pb = _fmuladd(t, pb, _EB5)
    pb = _fmuladd(t, pb, _EB4)
    pb = _fmuladd(t, pb, _EB3)
    pb = _fmuladd(t, pb, _EB2)
    pb = _fmuladd(t, pb, _EB1)
    pb = _fmuladd(t, pb, _EB0)
    yb = _ONE - pb
    yb = yb if ax < _ERF_CLAMP else _ONE
    yb = yb if x > _ZERO else -yb
    y = ya if ax < _ERF_SPLIT else yb
    return y if x == x else x


# ---- libm-based references (the "exact" math) ----
# float32 libm calls (expf, logf, tanhf, erff): within 2 ulp (glibc tanhf 1.9), but scalar calls
# that block loop vectorisation (no SVML here) and run 5-30x slower than the approximations.
def _jit_exact(fn):
    return numba.njit(inline="always", error_model="numpy", cache=True)(fn)


@_jit_exact
def exp_exact(x):
    return np.exp(np.float32(x))


@_jit_exact
def log_exact(x):
    return np.log(np.float32(x))


@_jit_exact
def tanh_exact(x):
    return np.tanh(np.float32(x))


@_jit_exact
def sigmoid_exact(x):
    x = np.float32(x)
    e = np.exp(-abs(x))
    r = _ONE / (_ONE + e)
    return r if x >= _ZERO else (e * r if x < _ZERO else x)


@_jit_exact
def erf_exact(x):
    return np.float32(math.erf(np.float32(x)))


#: Name -> fast vectorisable approximation, for the code generator.
APPROX = {"exp": exp_f32, "log": log_f32, "tanh": tanh_f32, "sigmoid": sigmoid_f32, "erf": erf_f32}

#: Name -> libm-based version (same call signature), for an exact-math mode and for comparisons.
EXACT = {"exp": exp_exact, "log": log_exact, "tanh": tanh_exact, "sigmoid": sigmoid_exact,
         "erf": erf_exact}
