"""Vectorisable float32 approximations of exp, log, tanh, sigmoid and erf for generated @njit loops.

DOCSTRING_PLACEHOLDER
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "FLAGS", "APPROX", "NUMPY",
    "exp_f32", "log_f32", "tanh_f32", "sigmoid_f32", "erf_f32",
    "bitcast_f32_i32", "bitcast_i32_f32",
]

#: Fast-math flags for the math functions *and* for the kernels that inline them. Keeps NaN/inf
#: semantics (no 'nnan'/'ninf'): ``fastmath=True`` would let LLVM delete the special-value selects.
FLAGS = frozenset({"reassoc", "contract", "nsz", "arcp", "afn"})

_F32 = ir.FloatType()
_I32 = ir.IntType(32)


# --------------------------------------------------------------------------------------------
# LLVM intrinsics. Everything that must not be touched by reassociation (Cody-Waite products,
# the two-factor 2**n scaling, polynomial FMAs) is emitted here without fast-math flags.
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
    """Round to nearest integer, ties to even (llvm.rint -> vrndscaleps)."""
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


def _jit(fn):
    return numba.njit(inline="always", fastmath=set(FLAGS), error_model="numpy", cache=True)(fn)


_f = np.float32
_ZERO, _HALF, _ONE, _TWO = _f(0.0), _f(0.5), _f(1.0), _f(2.0)
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
    xc = x if x > _EXP_LO else _EXP_LO          # also maps nan -> _EXP_LO (fixed below)
    xc = xc if xc < _EXP_HI else _EXP_HI
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
    xc = x if x < _TANH_CLAMP else _TANH_CLAMP
    xc = xc if xc > -_TANH_CLAMP else -_TANH_CLAMP
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
    y = y if y < _ONE else _ONE
    y = y if y > -_ONE else -_ONE
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
# Eigen's generic_fast_erf_float: erf(x) = x * P(x^2) / Q(x^2) on [-4, 4], +-1 outside.
_ERF_CLAMP = _f(4.0)
_EA1 = _f(-1.60960333262415e-02)
_EA3 = _f(-2.95459980854025e-03)
_EA5 = _f(-7.34990630326855e-04)
_EA7 = _f(-5.69250639462346e-05)
_EA9 = _f(-2.10102402082508e-06)
_EA11 = _f(2.77068142495902e-08)
_EA13 = _f(-2.72614225801306e-10)
_EB0 = _f(-1.42647390514189e-02)
_EB2 = _f(-7.37332916720468e-03)
_EB4 = _f(-1.68282697438203e-03)
_EB6 = _f(-2.13374055278905e-04)
_EB8 = _f(-1.45660718464996e-05)


@_jit
def erf_f32(x):
    """erf for float32 x (see the module docstring for accuracy and special values)."""
    x = np.float32(x)
    xc = x if x < _ERF_CLAMP else _ERF_CLAMP
    xc = xc if xc > -_ERF_CLAMP else -_ERF_CLAMP
    x2 = xc * xc
    p = _fmuladd(x2, _EA13, _EA11)
    p = _fmuladd(x2, p, _EA9)
    p = _fmuladd(x2, p, _EA7)
    p = _fmuladd(x2, p, _EA5)
    p = _fmuladd(x2, p, _EA3)
    p = _fmuladd(x2, p, _EA1)
    q = _fmuladd(x2, _EB8, _EB6)
    q = _fmuladd(x2, q, _EB4)
    q = _fmuladd(x2, q, _EB2)
    q = _fmuladd(x2, q, _EB0)
    y = xc * (p / q)
    y = y if y < _ONE else _ONE
    y = y if y > -_ONE else -_ONE
    return y if x == x else x


#: Name -> fast approximation, for the code generator.
APPROX = {"exp": exp_f32, "log": log_f32, "tanh": tanh_f32, "sigmoid": sigmoid_f32, "erf": erf_f32}

#: Name -> the NumPy spelling of the exact (libm-based) version, for comparisons and fallbacks.
NUMPY = {"exp": "np.exp", "log": "np.log", "tanh": "np.tanh",
         "sigmoid": "1 / (1 + np.exp(-x))", "erf": "math.erf"}
