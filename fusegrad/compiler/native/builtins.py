"""The functions kernel-language code may call, one row each: Python object -> emitter.

An emitter is `fn(fl, args, node) -> V`: `fl` the FunctionLowering (its builder `fl.b`, fast-math
flags `fl.flags`, and `fl.env` to declare LLVM intrinsics and external symbols), `args` the
lowered arguments. Each row follows what Numba does with the same call, so kernel text means the
same under both compilers: NumPy scalar constructors convert, math functions keep float32 as
float32 and turn integers into float64, `radd` is an addition that alone may be reassociated.

The intrinsics of cpu_math (the vectorisable float32 exp/log/tanh/erf) and of the kernel
language (kernel_lang: pointers from addresses, indirect kernel calls, BLAS) are rows here too;
the Numba versions of the same functions live next to their Python definitions.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from . import types as T
from .lower import V, KernelLangError, const, convert

BUILTINS: dict = {}


def builtin(*objects):
    def register(fn):
        for obj in objects:
            BUILTINS[id(obj)] = (obj, fn)
        return fn
    return register


def lookup(obj):
    hit = BUILTINS.get(id(obj))
    return hit[1] if hit is not None and hit[0] is obj else None


def _arity(args, n, node, fl, what):
    if len(args) != n:
        raise fl.error(node, f"{what} takes {n} argument(s), got {len(args)}")


def _float_of(t: T.Scalar) -> T.Scalar:
    """The float type a math function computes in: float32 stays, everything else float64."""
    return t if t.is_float else T.FLOAT64


# ---- conversions: np.float32(x), int(x) ... ----------------------------------------------------

def _cast(to):
    def emit(fl, args, node):
        _arity(args, 1, node, fl, to.name)
        return convert(fl.b, args[0], to)
    return emit


for _obj, _t in ((np.float32, T.FLOAT32), (np.float64, T.FLOAT64), (float, T.FLOAT64),
                 (np.int8, T.INT8), (np.int32, T.INT32), (np.int64, T.INT64), (int, T.INT64),
                 (np.uint64, T.UINT64), (np.bool_, T.BOOL), (bool, T.BOOL)):
    builtin(_obj)(_cast(_t))


# ---- math ---------------------------------------------------------------------------------------

def _llvm_unary(name):
    """A math function as an LLVM intrinsic (llvm.sqrt.f32 ...)."""
    def emit(fl, args, node):
        _arity(args, 1, node, fl, name)
        t = _float_of(args[0].t)
        x = convert(fl.b, args[0], t)
        fn = fl.env.intrinsic(f"llvm.{name}", t, [t])
        return V(fl.b.call(fn, [x.ir], fastmath=fl.flags), t)
    return emit


def _libm_unary(name):
    """A math function from the C library (tanhf / tanh ...)."""
    def emit(fl, args, node):
        _arity(args, 1, node, fl, name)
        t = _float_of(args[0].t)
        x = convert(fl.b, args[0], t)
        fn = fl.env.external(name + ("f" if t == T.FLOAT32 else ""), t, [t])
        return V(fl.b.call(fn, [x.ir]), t)
    return emit


builtin(np.sqrt, math.sqrt)(_llvm_unary("sqrt"))
builtin(np.exp, math.exp)(_llvm_unary("exp"))
builtin(np.log, math.log)(_llvm_unary("log"))
builtin(np.sin, math.sin)(_llvm_unary("sin"))
builtin(np.cos, math.cos)(_llvm_unary("cos"))
builtin(np.floor, math.floor)(_llvm_unary("floor"))
builtin(np.tanh, math.tanh)(_libm_unary("tanh"))
builtin(np.log1p, math.log1p)(_libm_unary("log1p"))
builtin(math.erf)(_libm_unary("erf"))


@builtin(np.abs, abs, np.fabs)
def _abs(fl, args, node):
    _arity(args, 1, node, fl, "abs")
    x = args[0]
    if x.t.is_float:
        fn = fl.env.intrinsic("llvm.fabs", x.t, [x.t])
        return V(fl.b.call(fn, [x.ir]), x.t)
    x = convert(fl.b, x, T.arith(x.t, x.t))
    if not x.t.signed:
        return x
    neg = fl.b.icmp_signed("<", x.ir, ir.Constant(x.t.llvm(), 0))
    return V(fl.b.select(neg, fl.b.neg(x.ir), x.ir), x.t)


@builtin(np.sign)
def _sign(fl, args, node):
    """-1, 0 or 1 (floats: NaN and zeros are returned as they are, as Numba's np.sign)."""
    _arity(args, 1, node, fl, "np.sign")
    x = args[0]
    t = x.t if x.t.is_float else T.arith(x.t, x.t)
    x = convert(fl.b, x, t)
    one, zero, minus = const(t, 1), const(t, 0), const(t, -1)
    b = fl.b
    if t.is_float:
        pos = b.fcmp_ordered(">", x.ir, zero.ir)
        neg = b.fcmp_ordered("<", x.ir, zero.ir)
        rest = x.ir
    else:
        pos = b.icmp_signed(">", x.ir, zero.ir)
        neg = b.icmp_signed("<", x.ir, zero.ir)
        rest = zero.ir
    return V(b.select(pos, one.ir, b.select(neg, minus.ir, rest)), t)


@builtin(np.power, pow)
def _np_power(fl, args, node):
    _arity(args, 2, node, fl, "np.power")
    a, c = args
    return power(fl, a, c, T.arith(a.t, c.t, "**"), node)


def power(fl, a: V, c: V, t: T.Scalar, node) -> V:
    """a ** c: llvm.pow for floats (float32 ** int through float32), a loop by squaring for
    integers (a negative integer exponent gives 0, as Numba's error_model='numpy')."""
    b = fl.b
    if t.is_float:
        x, y = convert(b, a, t), convert(b, c, t)
        fn = fl.env.intrinsic("llvm.pow", t, [t, t])
        return V(b.call(fn, [x.ir, y.ir], fastmath=fl.flags), t)
    x, n = convert(b, a, t), convert(b, c, t)
    fn = fl.env.integer_power(t)
    return V(b.call(fn, [x.ir, n.ir]), t)


def _classify(name):
    def emit(fl, args, node):
        _arity(args, 1, node, fl, name)
        x = args[0]
        if not x.t.is_float:
            return const(T.BOOL, name == "isfinite")
        b = fl.b
        if name == "isnan":
            return V(b.fcmp_unordered("uno", x.ir, x.ir), T.BOOL)
        fn = fl.env.intrinsic("llvm.fabs", x.t, [x.t])
        mag = b.call(fn, [x.ir])
        inf = ir.Constant(x.t.llvm(), float("inf"))
        if name == "isinf":
            return V(b.fcmp_ordered("==", mag, inf), T.BOOL)
        return V(b.fcmp_ordered("<", mag, inf), T.BOOL)  # finite: not inf and not nan
    return emit


builtin(np.isnan, math.isnan)(_classify("isnan"))
builtin(np.isinf, math.isinf)(_classify("isinf"))
builtin(np.isfinite, math.isfinite)(_classify("isfinite"))


def _min_max(pick_second):
    """Python's min/max of two numbers: the first unless the second is strictly better."""
    def emit(fl, args, node):
        _arity(args, 2, node, fl, "min/max")
        a, c = args
        t = a.t if a.t == c.t else T.arith(a.t, c.t)
        a, c = convert(fl.b, a, t), convert(fl.b, c, t)
        better = fl.compare(pick_second, c, a, node)
        return V(fl.b.select(better.ir, c.ir, a.ir), t)
    return emit


import ast as _ast  # noqa: E402  (the comparison node types name min and max's tests)

builtin(min)(_min_max(_ast.Lt))
builtin(max)(_min_max(_ast.Gt))


# ---- fusegrad's intrinsics ----------------------------------------------------------------------

def _register_intrinsics():
    from ...kernels import cpu_intrinsics, cpu_math, kernel_lang

    @builtin(cpu_intrinsics.radd)
    def _radd(fl, args, node):
        """a + b, reassociable: lets LLVM split a sum into SIMD lanes (cpu_intrinsics)."""
        _arity(args, 2, node, fl, "radd")
        a, c = args
        if a.t != c.t or not a.t.is_float:
            raise fl.error(node, f"radd needs two floats of one type, got {a.t} and {c.t}")
        return V(fl.b.fadd(a.ir, c.ir, flags=("reassoc", "contract")), a.t)

    def f32(fl, args, node, n, what):
        _arity(args, n, node, fl, what)
        if any(a.t != T.FLOAT32 for a in args):
            raise fl.error(node, f"{what} takes float32 arguments, got "
                                 f"{', '.join(str(a.t) for a in args)}")
        return [a.ir for a in args]

    i32 = ir.IntType(32)
    f32t = ir.FloatType()

    @builtin(cpu_math.bitcast_f32_i32)
    def _bits(fl, args, node):
        (x,) = f32(fl, args, node, 1, "bitcast_f32_i32")
        return V(fl.b.bitcast(x, i32), T.INT32)

    @builtin(cpu_math.bitcast_i32_f32)
    def _from_bits(fl, args, node):
        _arity(args, 1, node, fl, "bitcast_i32_f32")
        v = args[0]
        x = v.ir
        if v.t.bits > 32:
            x = fl.b.trunc(x, i32)
        elif v.t.bits < 32:
            x = fl.b.sext(x, i32) if v.t.signed else fl.b.zext(x, i32)
        return V(fl.b.bitcast(x, f32t), T.FLOAT32)

    @builtin(cpu_math._fmuladd)
    def _fmuladd(fl, args, node):
        xs = f32(fl, args, node, 3, "_fmuladd")
        fn = fl.env.intrinsic("llvm.fmuladd", T.FLOAT32, [T.FLOAT32] * 3)
        return V(fl.b.call(fn, xs, fastmath=fl.flags), T.FLOAT32)

    @builtin(cpu_math._rint)
    def _rint(fl, args, node):
        xs = f32(fl, args, node, 1, "_rint")
        fn = fl.env.intrinsic("llvm.rint", T.FLOAT32, [T.FLOAT32])
        return V(fl.b.call(fn, xs, fastmath=fl.flags), T.FLOAT32)

    @builtin(cpu_math._ldexp2)
    def _ldexp2(fl, args, node):
        p, n = f32(fl, args, node, 2, "_ldexp2")
        b = fl.b
        ni = b.fptosi(n, i32)
        n1 = b.ashr(ni, ir.Constant(i32, 1))
        n2 = b.sub(ni, n1)
        bias, sh = ir.Constant(i32, 127), ir.Constant(i32, 23)
        s1 = b.bitcast(b.shl(b.add(n1, bias), sh), f32t)
        s2 = b.bitcast(b.shl(b.add(n2, bias), sh), f32t)
        # only 'nsz': the two factors must not be reassociated into one (see cpu_math)
        return V(b.fmul(b.fmul(p, s1, flags=("nsz",)), s2, flags=("nsz",)), T.FLOAT32)

    @builtin(cpu_math._exponent)
    def _exponent(fl, args, node):
        (x,) = f32(fl, args, node, 1, "_exponent")
        b = fl.b
        bits = b.bitcast(x, i32)
        e = b.and_(b.lshr(bits, ir.Constant(i32, 23)), ir.Constant(i32, 0xFF))
        return V(b.sitofp(b.sub(e, ir.Constant(i32, 127)), f32t), T.FLOAT32)

    @builtin(cpu_math._mantissa)
    def _mantissa(fl, args, node):
        (x,) = f32(fl, args, node, 1, "_mantissa")
        b = fl.b
        bits = b.bitcast(x, i32)
        m = b.or_(b.and_(bits, ir.Constant(i32, 0x007FFFFF)), ir.Constant(i32, 0x3F800000))
        return V(b.bitcast(m, f32t), T.FLOAT32)

    def _select_cmp(sym, what):
        def emit(fl, args, node):
            a, c = f32(fl, args, node, 2, what)
            return V(fl.b.select(fl.b.fcmp_ordered(sym, a, c), a, c), T.FLOAT32)
        return emit

    builtin(cpu_math._max)(_select_cmp(">", "_max"))
    builtin(cpu_math._min)(_select_cmp("<", "_min"))

    # the kernel language's own names (kernel_lang): pointers from addresses, indirect
    # kernel calls, BLAS, pointer offsets

    def cast_row(short):
        def emit(fl, args, node):
            (addr,) = args
            t = T.parse_type(short + "*")
            x = fl.b.inttoptr(addr.ir, t.llvm())
            return V(x, t)
        return emit

    for short, fn in kernel_lang.POINTER_CASTS.items():
        builtin(fn)(cast_row(short))

    def address_row(fl, args, node):
        (p,) = args
        return V(fl.b.ptrtoint(p.ir, ir.IntType(64)), T.INT64)

    def call_row(fl, args, node):
        fn, block = args
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64.as_pointer()])
        target = fl.b.inttoptr(fn.ir, fnty.as_pointer())
        return V(fl.b.call(target, [fl.b.inttoptr(block.ir, i64.as_pointer())]), T.INT64)

    def gemm_row(fl, args, node):
        if len(args) != 11:
            raise fl.error(node, "blas_gemm(a, b, c, m, n, k, trans_a, trans_b, lda, ldb, ldc)")
        a, b, c, m, n, k, ta, tb, lda, ldb, ldc = args
        elem = a.t.elem if isinstance(a.t, T.Pointer) else None
        if elem not in (T.FLOAT32, T.FLOAT64) or b.t != a.t or c.t != a.t:
            raise fl.error(node, f"blas_gemm needs float32 or float64 pointers of one type, "
                                 f"got {a.t}, {b.t}, {c.t}")
        fl.env.gemm_call(fl, elem, a, b, c, m, n, k, ta, tb, lda, ldb, ldc)
        return V(None, T.VOID)

    def offset_row(fl, args, node):
        p, k = args
        if not isinstance(p.t, T.Pointer):
            raise fl.error(node, f"offset() needs a pointer, got {p.t}")
        index = fl.integer(k, node)
        return V(fl.b.gep(p.ir, [convert(fl.b, index, T.INT64).ir], inbounds=True), p.t)

    def mpi_row(bits):
        def emit(fl, args, node):
            """kernel_lang.mpi_allreduce_h32/_h64: MPI_Allreduce, its handles narrowed to the
            MPI library's handle type (int or pointer), resolved by name at load time."""
            if len(args) != 6 or not isinstance(args[1].t, T.Pointer):
                raise fl.error(node, f"mpi_allreduce_h{bits}(in_place, buf, count, datatype, "
                                     f"op, comm) with buf a pointer")
            b = fl.b
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            handle = i32 if bits == 32 else i8p
            fn = fl.env.external_function(
                "MPI_Allreduce", ir.FunctionType(i32, [i8p, i8p, i32, handle, handle, handle]))
            place, data, n, dt, op, comm = args
            as64 = [convert(b, v, T.INT64).ir for v in (place, n, dt, op, comm)]
            place, n, dt, op, comm = as64

            def narrow(v):
                return b.trunc(v, i32) if bits == 32 else b.inttoptr(v, i8p)

            status = b.call(fn, [b.inttoptr(place, i8p), b.bitcast(data.ir, i8p),
                                 b.trunc(n, i32), narrow(dt), narrow(op), narrow(comm)])
            return V(b.sext(status, ir.IntType(64)), T.INT64)
        return emit

    for bits, fn in kernel_lang.MPI_ALLREDUCE.items():
        builtin(fn)(mpi_row(bits))

    def parallel_row(fl, args, node):
        """kernel_lang.parallel_call: the same IR as the Numba intrinsic (kernel_lang)."""
        _arity(args, 5, node, fl, "parallel_call")
        pfor, fn, argv, nargs, workers = (convert(fl.b, fl.integer(a, node), T.INT64).ir
                                          for a in args)

        def alloca(t, n):
            return fl.alloca_builder.alloca(t, ir.Constant(ir.IntType(64), n) if n > 1 else None)

        return V(kernel_lang._parallel_call_ir(fl.b, alloca, pfor, fn, argv, nargs,
                                                 workers), T.INT64)

    builtin(kernel_lang.parallel_call)(parallel_row)
    builtin(kernel_lang.address)(address_row)
    builtin(kernel_lang.call_kernel)(call_row)
    builtin(kernel_lang.blas_gemm)(gemm_row)
    builtin(kernel_lang.offset)(offset_row)


_register_intrinsics()

__all__ = ["BUILTINS", "builtin", "lookup", "power", "KernelLangError"]
