"""Kernel-language source -> one LLVM module: kernel entries, the helpers they call, externals.

    mc = ModuleCompiler("m")
    names = mc.add_source(text)      # every @kernel(...) function in the text
    llvm_ir = str(mc.module)

Each `@kernel("sig", fastmath=..., noalias=...)` function becomes two LLVM functions: its body
`name.body` (typed parameters; pointer parameters `noalias` when declared; inlined) and the entry
`name(int64 *args)` that unpacks the argument block and calls it. A call to any other Python
function (a helper such as cpu_math.exp_f32, or a library function) compiles that function from
its source for the argument types at hand, with the caller's fast-math flags (as Numba's
inline="always" gives them), as an always-inlined internal function.

Names resolve like Python's: locals, then the module's globals, then builtins. Kernel text may
import only NumPy, math and fusegrad's own modules.
"""
from __future__ import annotations

import ast
import builtins as _py_builtins
import importlib
import inspect
import textwrap

from llvmlite import ir

from . import types as T
from .builtins import lookup, power  # noqa: F401  (power: the ** emitter, via env.builtins)
from .lower import FunctionLowering, KernelLangError, V, version_straight_line

ALLOWED_IMPORTS = ("numpy", "math", "fusegrad")
_AST_CACHE: dict = {}


def _function_ast(pyfunc) -> ast.FunctionDef:
    """The parsed (and straight-line versioned) source of a helper function, cached."""
    key = id(pyfunc)
    hit = _AST_CACHE.get(key)
    if hit is not None and hit[0] is pyfunc:
        return hit[1]
    try:
        source = textwrap.dedent(inspect.getsource(pyfunc))
    except (OSError, TypeError) as exc:
        raise KernelLangError(f"cannot read the source of {pyfunc!r} to compile it") from exc
    tree = ast.parse(source)
    fn = tree.body[0]
    if not isinstance(fn, ast.FunctionDef):
        raise KernelLangError(f"{pyfunc!r} is not a plain function")
    fn.decorator_list = []
    version_straight_line(fn)
    _AST_CACHE[key] = (pyfunc, fn)
    return fn


def _python_function(obj):
    """The plain Python function behind a helper (Numba dispatchers keep it as py_func)."""
    fn = getattr(obj, "py_func", obj)
    return fn if inspect.isfunction(fn) else None


class _Builtins:
    power = staticmethod(power)


class ModuleCompiler:
    def __init__(self, name: str, symbol_suffix: str = ""):
        self.module = ir.Module(name=name)
        # appended to entry symbols: objects of two texts of one kernel name can share a process
        self.symbol_suffix = symbol_suffix
        self.scratch = ir.Module(name=name + ".scratch")  # for the typing passes
        self.builtins = _Builtins
        self._scratch_count = 0
        self._helpers: dict = {}  # (function, arg types, flags) -> (ir.Function, return type)
        self._types: dict = {}  # (function, arg types, flags) -> (local types, return type)
        self._locals: dict = {}  # id(ast) -> set of local names
        self._entries: set = set()  # id(ast) of kernel bodies
        self._declared: dict = {}  # symbol -> ir.Function
        self.symbols: set = set()  # external symbols the module needs (see runtime/native)

    # ---- sources ----
    def add_source(self, text: str, filename: str = "<kernel>") -> list[str]:
        """Compile every @kernel function of `text`; returns their entry symbols."""
        tree = ast.parse(text, filename)
        namespace: dict = {"__builtins__": _py_builtins}
        entries = []
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self._import(node, namespace)
            elif isinstance(node, ast.FunctionDef):
                spec = self._kernel_spec(node, namespace)
                if spec is None:  # a helper defined in the text: callable by later kernels
                    namespace[node.name] = _TextFunction(node, namespace)
                    continue
                version_straight_line(node)
                entries.append(self.compile_entry(node, namespace, *spec))
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the module docstring
            else:
                raise KernelLangError(f"{filename}, line {node.lineno}: only imports and "
                                      f"functions may appear at the top of a kernel module")
        return entries

    def _import(self, node, namespace):
        for alias in node.names:
            module = node.module if isinstance(node, ast.ImportFrom) else alias.name
            if module.split(".")[0] not in ALLOWED_IMPORTS:
                raise KernelLangError(f"kernel modules may import only {ALLOWED_IMPORTS}, "
                                      f"not {module}")
            mod = importlib.import_module(module)
            if isinstance(node, ast.ImportFrom):
                namespace[alias.asname or alias.name] = getattr(mod, alias.name)
            else:
                namespace[alias.asname or alias.name.split(".")[0]] = (
                    mod if alias.asname else importlib.import_module(alias.name.split(".")[0]))

    def _kernel_spec(self, fn, namespace):
        """(param types, flags, noalias) from `@kernel("sig", ...)`, or None for a helper
        (`@helper`, or no decorator)."""
        if not fn.decorator_list or (len(fn.decorator_list) == 1 and isinstance(
                fn.decorator_list[0], ast.Name) and fn.decorator_list[0].id == "helper"):
            fn.decorator_list = []
            return None
        if len(fn.decorator_list) != 1:
            raise KernelLangError(f"{fn.name}: one @kernel(...) decorator expected")
        d = fn.decorator_list[0]
        if not (isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "kernel"
                and len(d.args) == 1 and isinstance(d.args[0], ast.Constant)):
            raise KernelLangError(f"{fn.name}: kernels are declared @kernel(\"signature\", ...)")
        params = [T.parse_type(s) for s in d.args[0].value.split()]
        if len(params) != len(fn.args.args):
            raise KernelLangError(f"{fn.name}: the signature has {len(params)} types for "
                                  f"{len(fn.args.args)} parameters")
        options = {k.arg: ast.literal_eval(k.value) for k in d.keywords}
        unknown = set(options) - {"fastmath", "noalias"}
        if unknown:
            raise KernelLangError(f"{fn.name}: unknown kernel options {sorted(unknown)}")
        return params, tuple(options.get("fastmath", ())), bool(options.get("noalias", False))

    # ---- functions ----
    def compile_entry(self, fn, namespace, params, flags, noalias):
        self._entries.add(id(fn))
        local_types, ret = self.infer(fn, namespace, params, flags)
        if ret not in (T.INT64, T.VOID) and not (isinstance(ret, T.Scalar) and ret.is_int):
            raise KernelLangError(f"{fn.name}: a kernel returns an integer status, not {ret}")
        body = self.emit(fn, namespace, params, flags, f"{fn.name}.body", T.INT64, local_types)
        for k, p in enumerate(params):
            if noalias and isinstance(p, T.Pointer):
                body.args[k].add_attribute("noalias")
        i64 = ir.IntType(64)
        symbol = fn.name + self.symbol_suffix
        entry = ir.Function(self.module, ir.FunctionType(i64, [i64.as_pointer()]), symbol)
        entry.args[0].name = "args"
        b = ir.IRBuilder(entry.append_basic_block("entry"))
        values = []
        for k, p in enumerate(params):
            slot = b.load(b.gep(entry.args[0], [ir.Constant(i64, k)], inbounds=True))
            if isinstance(p, T.Pointer):
                values.append(b.inttoptr(slot, p.llvm()))
            elif p.is_float:
                x = b.bitcast(slot, ir.DoubleType())
                values.append(x if p == T.FLOAT64 else b.fptrunc(x, p.llvm()))
            elif p == T.BOOL:
                values.append(b.icmp_unsigned("!=", slot, ir.Constant(i64, 0)))
            else:
                values.append(slot if p.bits == 64 else b.trunc(slot, p.llvm()))
        b.ret(b.call(body, values))
        return symbol

    def infer(self, fn, namespace, arg_types, flags):
        """(local variable types, return type): lower into scratch functions until the types
        settle."""
        local_types: dict = {}
        for _ in range(10):
            self._scratch_count += 1
            scratch = ir.Function(self.scratch, ir.FunctionType(
                ir.VoidType(), [t.llvm() for t in arg_types]), f"s{self._scratch_count}")
            fl = FunctionLowering(self, fn, namespace, arg_types, flags, local_types, scratch)
            fl.lower()
            if not fl.changed and not fl.incomplete:
                return local_types, self._return_type(fn, fl.return_types)
        raise KernelLangError(f"{fn.name}: the types of its variables do not settle")

    @staticmethod
    def _return_type(fn, found):
        if not found:
            return T.VOID
        t = found[0]
        for u in found[1:]:
            if u == t:
                continue
            if isinstance(t, T.Scalar) and isinstance(u, T.Scalar):
                t = T.arith(t, u)
            else:
                raise KernelLangError(f"{fn.name} returns both {t} and {u}")
        return t

    def emit(self, fn, namespace, arg_types, flags, name, ret_type, local_types):
        f = ir.Function(self.module, ir.FunctionType(
            ret_type.llvm(), [t.llvm() for t in arg_types]), name)
        f.linkage = "internal"
        f.attributes.add("alwaysinline")
        fl = FunctionLowering(self, fn, namespace, arg_types, flags, dict(local_types), f,
                              ret_type=ret_type)
        fl.lower()
        return f

    def is_entry(self, fn) -> bool:
        return id(fn) in self._entries

    def local_names(self, fn) -> set:
        names = self._locals.get(id(fn))
        if names is None:
            names = {a.arg for a in fn.args.args}
            for n in ast.walk(fn):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    names.add(n.id)
            self._locals[id(fn)] = names
        return names

    # ---- names and calls ----
    def resolve(self, namespace, node, fl):
        """The Python object a global name or dotted attribute refers to."""
        if isinstance(node, ast.Name):
            if node.id in namespace:
                return namespace[node.id]
            if hasattr(_py_builtins, node.id):
                return getattr(_py_builtins, node.id)
            raise fl.error(node, f"name {node.id!r} is not defined")
        if isinstance(node, ast.Attribute):
            base = self.resolve(namespace, node.value, fl)
            try:
                return getattr(base, node.attr)
            except AttributeError:
                raise fl.error(node, f"{ast.unparse(node)} does not exist") from None
        raise fl.error(node, f"cannot call {ast.unparse(node)}")

    def call(self, fl, callee, args, node) -> V:
        emit = lookup(callee)
        if emit is not None:
            return emit(fl, args, node)
        if isinstance(callee, _TextFunction):
            fn_ast, namespace = callee.fn, callee.namespace
        else:
            pyfunc = _python_function(callee)
            if pyfunc is None:
                raise fl.error(node, f"{ast.unparse(node.func)} cannot be called in a kernel")
            fn_ast, namespace = _function_ast(pyfunc), pyfunc.__globals__
        if len(args) != len(fn_ast.args.args):
            raise fl.error(node, f"{fn_ast.name} takes {len(fn_ast.args.args)} arguments")
        arg_types = tuple(a.t for a in args)
        key = (id(fn_ast), arg_types, fl.flags)
        if not fl.final:  # a typing pass needs only the return type
            local_types, ret = self._typed(key, fn_ast, namespace, arg_types, fl.flags)
            if ret is T.VOID:
                return V(None, T.VOID)
            return V(ir.Constant(ret.llvm(), ir.Undefined), ret)
        helper = self._helpers.get(key)
        if helper is None:
            local_types, ret = self._typed(key, fn_ast, namespace, arg_types, fl.flags)
            f = self.emit(fn_ast, namespace, arg_types, fl.flags,
                          f"{fn_ast.name}.{len(self._helpers)}", ret, local_types)
            helper = self._helpers[key] = (f, ret)
        f, ret = helper
        result = fl.b.call(f, [a.ir for a in args])
        return V(None if ret is T.VOID else result, ret)

    def _typed(self, key, fn_ast, namespace, arg_types, flags):
        hit = self._types.get(key)
        if hit is None:
            hit = self._types[key] = self.infer(fn_ast, namespace, arg_types, flags)
        return hit

    # ---- declarations ----
    def _declare(self, module, name, ret, params):
        fn = module.globals.get(name)
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(ret, params), name)
        return fn

    def intrinsic(self, name, ret: T.Scalar, params):
        """An LLVM intrinsic overloaded on its float type: llvm.sqrt.f32 ..."""
        suffix = "f32" if ret == T.FLOAT32 else "f64"
        full = f"{name}.{suffix}"
        return self._declare(self._target(), full, ret.llvm(), [p.llvm() for p in params])

    def external(self, symbol, ret: T.Scalar, params):
        """A function of the C library (libm), resolved when the object is loaded."""
        self.symbols.add(symbol)
        return self._declare(self._target(), symbol, ret.llvm(), [p.llvm() for p in params])

    def external_function(self, symbol, fnty: ir.FunctionType):
        """A function of another library (MPI_Allreduce), declared with its C type and
        resolved by name when the object is loaded (runtime/native.py)."""
        self.symbols.add(symbol)
        return self._declare(self._target(), symbol, fnty.return_type, list(fnty.args))

    def _target(self):
        # typing passes call these too: their declarations land in the real module, where
        # unused ones cost nothing (LLVM drops them)
        return self.module

    def integer_power(self, t: T.Scalar):
        """x ** n for integers by squaring (n < 0 gives 0: Numba's error_model='numpy')."""
        name = f"fusegrad.ipow.{t.name}"
        module = self._target()
        fn = module.globals.get(name)
        if fn is not None:
            return fn
        ty = t.llvm()
        fn = ir.Function(module, ir.FunctionType(ty, [ty, ty]), name)
        fn.linkage = "internal"
        x, n = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        loop, done = fn.append_basic_block("loop"), fn.append_basic_block("done")
        start = b.block
        b.branch(loop)
        b.position_at_end(loop)
        acc = b.phi(ty)
        base = b.phi(ty)
        e = b.phi(ty)
        acc.add_incoming(ir.Constant(ty, 1), start)
        base.add_incoming(x, start)
        e.add_incoming(n, start)
        odd = b.icmp_unsigned("!=", b.and_(e, ir.Constant(ty, 1)), ir.Constant(ty, 0))
        acc2 = b.select(odd, b.mul(acc, base), acc)
        e2 = b.lshr(e, ir.Constant(ty, 1)) if not t.signed else b.ashr(e, ir.Constant(ty, 1))
        base2 = b.mul(base, base)
        acc.add_incoming(acc2, loop)
        base.add_incoming(base2, loop)
        e.add_incoming(e2, loop)
        more = b.icmp_signed(">", e2, ir.Constant(ty, 0))
        b.cbranch(more, loop, done)
        b.position_at_end(done)
        negative = b.icmp_signed("<", n, ir.Constant(ty, 0)) if t.signed else ir.Constant(
            ir.IntType(1), 0)
        zero_exp = b.icmp_signed("==", n, ir.Constant(ty, 0))
        result = b.select(zero_exp, ir.Constant(ty, 1), acc2)
        b.ret(b.select(negative, ir.Constant(ty, 0), result))
        return fn

    def gemm_call(self, fl, elem, a, b_, c, m, n, k, ta, tb, lda, ldb, ldc):
        """c = op(a) @ op(b) (row-major, rows lda, ldb, ldc elements apart) through BLAS ?gemm
        (Fortran interface, column-major): row-major C = A B is column-major C' = B' A', so the
        operands swap."""
        i32, i64 = ir.IntType(32), ir.IntType(64)
        b = fl.b
        ty = elem.llvm()
        symbol = "fusegrad_sgemm" if elem == T.FLOAT32 else "fusegrad_dgemm"
        self.symbols.add(symbol)
        ptr8, ptr32, ptrf = ir.IntType(8).as_pointer(), i32.as_pointer(), ty.as_pointer()
        fn = self._declare(self._target(), symbol, ir.VoidType(),
                           [ptr8, ptr8, ptr32, ptr32, ptr32, ptrf, ptrf, ptr32, ptrf, ptr32,
                            ptrf, ptrf, ptr32])

        def as_i64(v):
            return convert(b, v, T.INT64).ir

        m, n, k = as_i64(m), as_i64(n), as_i64(k)
        ta, tb = convert(b, ta, T.BOOL).ir, convert(b, tb, T.BOOL).ir
        entry = fl.alloca_builder

        def scalar(t, value):
            slot = entry.alloca(t)
            b.store(value, slot)
            return slot

        one = ir.Constant(i64, 1)

        def at_least_one(v):
            return b.select(b.icmp_signed("<", v, one), one, v)

        trans = lambda flag: b.select(flag, ir.Constant(ir.IntType(8), ord("T")),  # noqa: E731
                                      ir.Constant(ir.IntType(8), ord("N")))
        # b' is the first operand: its leading dimension is b's row length
        lda, ldb = at_least_one(as_i64(ldb)), at_least_one(as_i64(lda))
        ldc = at_least_one(as_i64(ldc))
        nonempty = b.and_(b.icmp_signed(">", m, ir.Constant(i64, 0)),
                          b.icmp_signed(">", n, ir.Constant(i64, 0)))
        run = fl.llvm_fn.append_basic_block("gemm")
        after = fl.llvm_fn.append_basic_block("gemm.end")
        b.cbranch(nonempty, run, after)
        b.position_at_end(run)
        args = [scalar(ir.IntType(8), trans(tb)), scalar(ir.IntType(8), trans(ta)),
                scalar(i32, b.trunc(n, i32)), scalar(i32, b.trunc(m, i32)),
                scalar(i32, b.trunc(k, i32)), scalar(ty, ir.Constant(ty, 1.0)),
                b_.ir, scalar(i32, b.trunc(lda, i32)), a.ir, scalar(i32, b.trunc(ldb, i32)),
                scalar(ty, ir.Constant(ty, 0.0)), c.ir, scalar(i32, b.trunc(ldc, i32))]
        b.call(fn, args)
        b.branch(after)
        b.position_at_end(after)
        return None


class _TextFunction:
    """A helper function defined in the kernel text itself (not a Python object)."""

    def __init__(self, fn, namespace):
        version_straight_line(fn)
        self.fn, self.namespace = fn, namespace


from .lower import convert  # noqa: E402  (used by gemm_call)
