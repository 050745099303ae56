"""One kernel-language function (a Python AST) -> one LLVM function.

Types are inferred by lowering itself: the body is lowered with the local variables' types known
so far (into a scratch function), every assignment widens its variable's type (types.unify), and
this repeats until nothing changes; then the body is lowered once more into the real function.
Lowering is cheap and kernels are small, so this costs two or three passes, and the typing rules
exist in one place only: the code that emits each operation.

Locals live in allocas of the entry block (LLVM's SROA/mem2reg turns them into registers).
A name assigned twice in straight-line code at the top level of a function (and nowhere inside a
loop or branch) gets a fresh variable per assignment, as Numba's SSA form gives it: the math
helpers' `x = np.float32(x)` must not widen `x` to the argument's type.
"""
from __future__ import annotations

import ast
from typing import NamedTuple

from llvmlite import ir

from . import types as T


class KernelLangError(Exception):
    """Code outside the kernel language, or a type error in it."""


class V(NamedTuple):
    """A lowered value: the LLVM value and its kernel-language type."""
    ir: object
    t: object


# ---- conversions --------------------------------------------------------------------------------

def convert(b: ir.IRBuilder, v: V, to) -> V:
    """v as a value of scalar type `to` (NumPy's casting: truncation toward zero for float->int,
    truth for ->bool)."""
    frm = v.t
    if frm == to:
        return v
    if not (isinstance(frm, T.Scalar) and isinstance(to, T.Scalar)):
        raise KernelLangError(f"cannot convert {frm} to {to}")
    x = v.ir
    if to == T.BOOL:
        if frm.is_float:
            return V(b.fcmp_unordered("!=", x, ir.Constant(frm.llvm(), 0.0)), to)
        return V(b.icmp_unsigned("!=", x, ir.Constant(frm.llvm(), 0)), to)
    if to.is_float:
        if frm.is_float:
            op = b.fpext if to.bits > frm.bits else b.fptrunc
            return V(op(x, to.llvm()), to)
        op = b.sitofp if frm.signed else b.uitofp
        return V(op(x, to.llvm()), to)
    if frm.is_float:  # float -> integer
        op = b.fptosi if to.signed else b.fptoui
        return V(op(x, to.llvm()), to)
    if to.bits == frm.bits:
        return V(x, to)
    if to.bits < frm.bits:
        return V(b.trunc(x, to.llvm()), to)
    op = b.sext if frm.signed else b.zext
    return V(op(x, to.llvm()), to)


def const(t: T.Scalar, value) -> V:
    if t.is_float:
        return V(ir.Constant(t.llvm(), float(value)), t)
    return V(ir.Constant(t.llvm(), int(value)), t)


def literal(value) -> V:
    """A Python constant as Numba types it: bool, int64, float64."""
    if isinstance(value, bool):
        return const(T.BOOL, value)
    if isinstance(value, int):
        return const(T.INT64, value)
    if isinstance(value, float):
        return const(T.FLOAT64, value)
    raise KernelLangError(f"unsupported constant {value!r}")


def scalar_of(value) -> V | None:
    """A global's value as a typed constant (NumPy scalars keep their dtype), else None."""
    import numpy as np

    if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
        return literal(value)
    if isinstance(value, np.generic) and value.dtype.name in T.SCALARS:
        return const(T.SCALARS[value.dtype.name], value.item())
    return None


# ---- the straight-line renaming -----------------------------------------------------------------

def _assigned_names(nodes) -> set:
    out = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                out.add(n.id)
    return out


def version_straight_line(fn: ast.FunctionDef) -> None:
    """Rename top-level re-assignments of names never assigned inside a compound statement:
    `x = f(x)` then uses of x see `x.1` (a new variable, typed on its own)."""
    nested = _assigned_names([s for s in fn.body if not isinstance(s, (ast.Assign, ast.AugAssign,
                                                                        ast.Expr, ast.Return))])
    nested |= {n.target.id for n in fn.body if isinstance(n, ast.AugAssign)
               and isinstance(n.target, ast.Name)}
    current: dict = {}
    count: dict = {}

    def rename_loads(node):
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in current:
                n.id = current[n.id]

    params = {a.arg for a in fn.args.args}
    for stmt in fn.body:
        if isinstance(stmt, ast.Assign):
            rename_loads(stmt.value)
            for target in stmt.targets:
                for n in ast.walk(target):
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                        base = n.id
                        if base in nested:
                            continue
                        if base in count or base in params:
                            count[base] = count.get(base, 0) + 1
                            current[base] = f"{base}.{count[base]}"
                            n.id = current[base]
                        else:
                            count[base] = 0
                    elif isinstance(n, ast.Name):
                        rename_loads(n)
        else:
            rename_loads(stmt)


# ---- function lowering --------------------------------------------------------------------------

class Loop(NamedTuple):
    cont: object  # block `continue` jumps to
    brk: object  # block `break` jumps to


class FunctionLowering:
    """Lowers `fn` (an ast.FunctionDef) with argument types `arg_types`.

    `env` is the module compiler (native/module.py): it resolves global names and calls.
    `flags`: LLVM fast-math flags on every float operation. `final=False` lowers into a scratch
    module only to learn the types."""

    def __init__(self, env, fn: ast.FunctionDef, namespace: dict, arg_types, flags,
                 local_types: dict, llvm_fn: ir.Function, ret_type=None):
        self.env = env
        self.fn = fn
        self.namespace = namespace
        self.arg_types = list(arg_types)
        self.flags = tuple(sorted(flags))
        self.local_types = local_types  # name -> type, widened by assignments
        self.changed = False
        self.incomplete = False
        self.ret_type = ret_type  # None: a scratch pass, learning types (the function is void)
        self.final = ret_type is not None
        self.llvm_fn = llvm_fn
        self.return_types: list = []
        entry = llvm_fn.append_basic_block("entry")
        self.alloca_builder = ir.IRBuilder(entry)
        body = llvm_fn.append_basic_block("body")
        self.b = ir.IRBuilder(body)
        self.slots: dict = {}  # (name, type) -> alloca
        self.loops: list[Loop] = []

    def error(self, node, message) -> KernelLangError:
        line = getattr(node, "lineno", "?")
        return KernelLangError(f"{self.fn.name}, line {line}: {message}")

    # ---- locals ----
    def slot(self, name, t):
        s = self.slots.get((name, t))
        if s is None:  # (a scratch pass may see a variable retyped: then a fresh slot)
            s = self.alloca_builder.alloca(t.llvm(), name=name)
            self.slots[(name, t)] = s
        return s

    def assign(self, name, v: V, node):
        old = self.local_types.get(name)
        t = T.unify(old, v.t)
        if t != old:
            self.local_types[name] = t
            self.changed = True
        if old is not None and t != old:  # retyped: this pass's allocas are stale anyway
            return
        t = self.local_types[name]
        v = convert(self.b, v, t) if isinstance(t, T.Scalar) else v
        self.b.store(v.ir, self.slot(name, t))

    def read(self, name, node) -> V:
        t = self.local_types.get(name)
        if t is None:
            if self.final:
                raise self.error(node, f"{name!r} is used before it is assigned")
            self.incomplete = True
            return V(ir.Constant(T.INT64.llvm(), 0), T.INT64)
        return V(self.b.load(self.slot(name, t)), t)

    # ---- driving ----
    def lower(self):
        for k, (arg, t) in enumerate(zip(self.fn.args.args, self.arg_types)):
            self.local_types.setdefault(arg.arg, t)
            if self.local_types[arg.arg] != t:
                raise self.error(self.fn, f"argument {arg.arg} is {t} but assigned "
                                          f"{self.local_types[arg.arg]}")
            self.b.store(self.llvm_fn.args[k], self.slot(arg.arg, t))
        self.block(self.fn.body)
        if not self.b.block.is_terminated:
            self.fall_off_end()
        self.alloca_builder.branch(self.llvm_fn.blocks[1])

    def fall_off_end(self):
        rt = self.llvm_fn.function_type.return_type
        if isinstance(rt, ir.VoidType):
            self.b.ret_void()
        elif self.ret_type == T.INT64 and self.env.is_entry(self.fn):
            self.b.ret(ir.Constant(rt, 0))  # a kernel returns its status: 0 when it just ends
        else:
            self.b.unreachable()

    def block(self, stmts):
        for s in stmts:
            if self.b.block.is_terminated:  # code after return/break/continue: unreachable
                self.b.position_at_end(self.llvm_fn.append_basic_block("dead"))
            self.stmt(s)

    # ---- statements ----
    def stmt(self, s):
        handler = getattr(self, "stmt_" + type(s).__name__, None)
        if handler is None:
            raise self.error(s, f"{type(s).__name__} statements are not in the kernel language")
        handler(s)

    def stmt_Pass(self, s):
        pass

    def stmt_Expr(self, s):
        if isinstance(s.value, ast.Constant):  # a docstring
            return
        self.expr(s.value)

    def stmt_Assign(self, s):
        if isinstance(s.value, ast.Tuple):  # a, b = x, y: every value first, then the names
            items = [self.expr(e) for e in s.value.elts]
            for target in s.targets:
                if not (isinstance(target, ast.Tuple) and len(target.elts) == len(items)):
                    raise self.error(s, "unpack a tuple into as many names")
                for elt, v in zip(target.elts, items):
                    self.store_target(elt, v, s)
            return
        v = self.expr(s.value)
        for target in s.targets:
            self.store_target(target, v, s)

    def store_target(self, target, v, s):
        if isinstance(target, ast.Name):
            self.assign(target.id, v, s)
        elif isinstance(target, ast.Subscript):
            self.store_item(target, v)
        elif isinstance(target, ast.Tuple):
            if not isinstance(v.t, T.Tuple) or len(v.t.items) != len(target.elts):
                raise self.error(s, f"cannot unpack {v.t} into {len(target.elts)} names")
            for k, (elt, t) in enumerate(zip(target.elts, v.t.items)):
                self.store_target(elt, V(self.b.extract_value(v.ir, k), t), s)
        else:
            raise self.error(s, "assign to a name, a pointer element or a tuple of names")

    def stmt_AugAssign(self, s):
        op = _BINOPS.get(type(s.op))
        if op is None:
            raise self.error(s, f"operator {type(s.op).__name__} is not supported")
        if isinstance(s.target, ast.Name):
            current = self.read(s.target.id, s)
            self.assign(s.target.id, self.binop(op, current, self.expr(s.value), s), s)
        elif isinstance(s.target, ast.Subscript):
            ptr, index = self.pointer_and_index(s.target)
            current = self.load(ptr, index)
            self.store(ptr, index, self.binop(op, current, self.expr(s.value), s))
        else:
            raise self.error(s, "augmented assignment to a name or a pointer element only")

    def stmt_Return(self, s):
        if s.value is None:
            v = None
        elif isinstance(s.value, ast.Tuple):
            items = [self.expr(e) for e in s.value.elts]
            t = T.Tuple(tuple(x.t for x in items))
            agg = ir.Constant(t.llvm(), ir.Undefined)
            for k, x in enumerate(items):
                agg = self.b.insert_value(agg, x.ir, k)
            v = V(agg, t)
        else:
            v = self.expr(s.value)
        self.return_types.append(T.VOID if v is None else v.t)
        if not self.final or self.ret_type is T.VOID:
            self.b.ret_void()
        elif v is None:
            raise self.error(s, f"a bare return in a function returning {self.ret_type}")
        else:
            want = self.ret_type
            self.b.ret((convert(self.b, v, want) if isinstance(want, T.Scalar) else v).ir)

    def stmt_If(self, s):
        cond = self.truth(self.expr(s.test), s)
        then = self.llvm_fn.append_basic_block("then")
        other = self.llvm_fn.append_basic_block("else") if s.orelse else None
        after = self.llvm_fn.append_basic_block("endif")
        self.b.cbranch(cond.ir, then, other or after)
        self.b.position_at_end(then)
        self.block(s.body)
        if not self.b.block.is_terminated:
            self.b.branch(after)
        if other is not None:
            self.b.position_at_end(other)
            self.block(s.orelse)
            if not self.b.block.is_terminated:
                self.b.branch(after)
        self.b.position_at_end(after)

    def stmt_For(self, s):
        it = s.iter
        if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name)
                and it.func.id == "range" and 1 <= len(it.args) <= 3 and not s.orelse
                and isinstance(s.target, ast.Name)):
            raise self.error(s, "loops are `for name in range(...)` (no else)")
        args = [convert(self.b, self.integer(self.expr(a), a), T.INT64) for a in it.args]
        start, stop, step = (const(T.INT64, 0), args[0], const(T.INT64, 1)) if len(args) == 1 \
            else (args[0], args[1], args[2] if len(args) == 3 else const(T.INT64, 1))
        counter = self.alloca_builder.alloca(T.INT64.llvm(), name=f"{s.target.id}.n")
        self.b.store(start.ir, counter)
        head = self.llvm_fn.append_basic_block("for.head")
        body = self.llvm_fn.append_basic_block("for.body")
        latch = self.llvm_fn.append_basic_block("for.latch")
        after = self.llvm_fn.append_basic_block("for.end")
        self.b.branch(head)
        self.b.position_at_end(head)
        n = self.b.load(counter)
        known = isinstance(step.ir, ir.Constant)
        if known and step.ir.constant > 0:
            more = self.b.icmp_signed("<", n, stop.ir)
        elif known and step.ir.constant < 0:
            more = self.b.icmp_signed(">", n, stop.ir)
        elif known:
            raise self.error(s, "range() step must not be zero")
        else:  # a step whose sign is known only at run time
            up = self.b.icmp_signed(">", step.ir, ir.Constant(step.ir.type, 0))
            more = self.b.select(up, self.b.icmp_signed("<", n, stop.ir),
                                 self.b.icmp_signed(">", n, stop.ir))
        self.b.cbranch(more, body, after)
        self.b.position_at_end(body)
        self.assign(s.target.id, V(n, T.INT64), s)
        self.loop_body(s.body, Loop(latch, after))
        self.b.position_at_end(latch)
        # the counter never passes `stop`, so it cannot overflow: nsw helps LLVM count trips
        self.b.store(self.b.add(self.b.load(counter), step.ir, flags=["nsw"]), counter)
        self.b.branch(head)
        self.b.position_at_end(after)

    def stmt_While(self, s):
        if s.orelse:
            raise self.error(s, "while ... else is not supported")
        head = self.llvm_fn.append_basic_block("while.head")
        body = self.llvm_fn.append_basic_block("while.body")
        after = self.llvm_fn.append_basic_block("while.end")
        self.b.branch(head)
        self.b.position_at_end(head)
        self.b.cbranch(self.truth(self.expr(s.test), s).ir, body, after)
        self.b.position_at_end(body)
        self.loop_body(s.body, Loop(head, after))
        self.b.position_at_end(after)

    def loop_body(self, stmts, loop: Loop):
        """The statements of a loop, `continue` and its end going to loop.cont."""
        self.loops.append(loop)
        self.block(stmts)
        self.loops.pop()
        if not self.b.block.is_terminated:
            self.b.branch(loop.cont)

    def stmt_Break(self, s):
        if not self.loops:
            raise self.error(s, "break outside a loop")
        self.b.branch(self.loops[-1].brk)

    def stmt_Continue(self, s):
        if not self.loops:
            raise self.error(s, "continue outside a loop")
        self.b.branch(self.loops[-1].cont)

    # ---- pointers ----
    def pointer_and_index(self, node):
        ptr = self.expr(node.value)
        if not isinstance(ptr.t, T.Pointer):
            raise self.error(node, f"only pointers can be indexed, not {ptr.t}")
        if isinstance(node.slice, (ast.Slice, ast.Tuple)):
            raise self.error(node, "index pointers with one integer (p[i])")
        index = convert(self.b, self.integer(self.expr(node.slice), node), T.INT64)
        return ptr, index

    def load(self, ptr: V, index: V) -> V:
        elem = ptr.t.elem
        addr = self.b.gep(ptr.ir, [index.ir], inbounds=True)
        x = self.b.load(addr)
        if elem == T.BOOL:
            return V(self.b.icmp_unsigned("!=", x, ir.Constant(x.type, 0)), T.BOOL)
        return V(x, elem)

    def store(self, ptr: V, index: V, v: V):
        elem = ptr.t.elem
        v = convert(self.b, v, elem)
        x = self.b.zext(v.ir, ir.IntType(8)) if elem == T.BOOL else v.ir
        self.b.store(x, self.b.gep(ptr.ir, [index.ir], inbounds=True))

    def store_item(self, target, v):
        ptr, index = self.pointer_and_index(target)
        self.store(ptr, index, v)

    # ---- expressions ----
    def expr(self, e) -> V:
        handler = getattr(self, "expr_" + type(e).__name__, None)
        if handler is None:
            raise self.error(e, f"{type(e).__name__} expressions are not in the kernel language")
        return handler(e)

    def expr_Constant(self, e):
        return literal(e.value)

    def expr_Name(self, e):
        if e.id in self.local_types or self.is_local(e.id):
            return self.read(e.id, e)
        return self.global_value(self.env.resolve(self.namespace, e, self), e)

    def is_local(self, name) -> bool:
        return name in self.env.local_names(self.fn)

    def expr_Attribute(self, e):
        return self.global_value(self.env.resolve(self.namespace, e, self), e)

    def global_value(self, obj, e) -> V:
        v = scalar_of(obj)
        if v is None:
            raise self.error(e, f"{ast.unparse(e)} is not a number (only calls may name "
                                f"functions)")
        return v

    def expr_Subscript(self, e):
        return self.load(*self.pointer_and_index(e))

    def expr_BinOp(self, e):
        op = _BINOPS.get(type(e.op))
        if op is None:
            raise self.error(e, f"operator {type(e.op).__name__} is not supported")
        return self.binop(op, self.expr(e.left), self.expr(e.right), e)

    def expr_UnaryOp(self, e):
        x = self.expr(e.operand)
        if isinstance(e.op, ast.Not):
            t = self.truth(x, e)
            return V(self.b.xor(t.ir, ir.Constant(t.ir.type, 1)), T.BOOL)
        if isinstance(e.op, ast.UAdd):
            return x
        if isinstance(e.op, ast.USub):
            if x.t.is_float:
                return V(self.b.fneg(x.ir, flags=self.flags), x.t)
            x = convert(self.b, x, T.arith(x.t, x.t))
            return V(self.b.neg(x.ir), x.t)
        if isinstance(e.op, ast.Invert) and x.t.is_int and x.t != T.BOOL:
            x = convert(self.b, x, T.arith(x.t, x.t))
            return V(self.b.not_(x.ir), x.t)
        raise self.error(e, f"unary {type(e.op).__name__} is not supported on {x.t}")

    def expr_BoolOp(self, e):
        # operands are side-effect free: evaluating both keeps loops branch-free
        values = [self.truth(self.expr(x), x) for x in e.values]
        acc = values[0].ir
        for v in values[1:]:
            acc = self.b.and_(acc, v.ir) if isinstance(e.op, ast.And) else self.b.or_(acc, v.ir)
        return V(acc, T.BOOL)

    def expr_Compare(self, e):
        left = self.expr(e.left)
        result = None
        for op, right_node in zip(e.ops, e.comparators):
            right = self.expr(right_node)
            c = self.compare(type(op), left, right, e)
            result = c if result is None else V(self.b.and_(result.ir, c.ir), T.BOOL)
            left = right
        return result

    def expr_IfExp(self, e):
        cond = self.truth(self.expr(e.test), e)
        if _pure(e.body) and _pure(e.orelse):  # both sides are cheap and safe: a select
            a, c = self.expr(e.body), self.expr(e.orelse)
            t = self.join_type(a.t, c.t, e)
            a, c = convert(self.b, a, t), convert(self.b, c, t)
            return V(self.b.select(cond.ir, a.ir, c.ir), t)
        then = self.llvm_fn.append_basic_block("ifexp.then")
        other = self.llvm_fn.append_basic_block("ifexp.else")
        after = self.llvm_fn.append_basic_block("ifexp.end")
        self.b.cbranch(cond.ir, then, other)
        self.b.position_at_end(then)
        a = self.expr(e.body)
        then_end = self.b.block
        self.b.position_at_end(other)
        c = self.expr(e.orelse)
        other_end = self.b.block
        t = self.join_type(a.t, c.t, e)
        self.b.position_at_end(then_end)
        a = convert(self.b, a, t)
        self.b.branch(after)
        then_end = self.b.block
        self.b.position_at_end(other_end)
        c = convert(self.b, c, t)
        self.b.branch(after)
        other_end = self.b.block
        self.b.position_at_end(after)
        phi = self.b.phi(t.llvm())
        phi.add_incoming(a.ir, then_end)
        phi.add_incoming(c.ir, other_end)
        return V(phi, t)

    def join_type(self, a, b, e):
        if a == b:
            return a
        if isinstance(a, T.Scalar) and isinstance(b, T.Scalar):
            return T.arith(a, b)
        raise self.error(e, f"the two sides have different types: {a} and {b}")

    def expr_Call(self, e):
        if e.keywords:
            raise self.error(e, "keyword arguments are not supported")
        callee = self.env.resolve(self.namespace, e.func, self)
        args = [self.expr(a) for a in e.args]
        return self.env.call(self, callee, args, e)

    def expr_Tuple(self, e):
        raise self.error(e, "tuples may only be returned or unpacked")

    # ---- operations ----
    def integer(self, v: V, node) -> V:
        if not (isinstance(v.t, T.Scalar) and v.t.is_int):
            raise self.error(node, f"expected an integer, got {v.t}")
        return v

    def truth(self, v: V, node) -> V:
        if not isinstance(v.t, T.Scalar):
            raise self.error(node, f"{v.t} has no truth value")
        return convert(self.b, v, T.BOOL)

    def binop(self, op, a: V, c: V, node) -> V:
        if not (isinstance(a.t, T.Scalar) and isinstance(c.t, T.Scalar)):
            raise self.error(node, f"{op} needs numbers, got {a.t} and {c.t}")
        if op == "/":
            t = T.true_div(a.t, c.t)
        elif op in ("<<", ">>"):
            t = T.arith(a.t, c.t)
        else:
            t = T.arith(a.t, c.t, op)
        if op in ("&", "|", "^", "<<", ">>") and t.is_float:
            raise self.error(node, f"{op} needs integers, got {a.t} and {c.t}")
        if op == "**":
            return self.env.builtins.power(self, a, c, t, node)
        x, y = convert(self.b, a, t).ir, convert(self.b, c, t).ir
        b = self.b
        if t.is_float:
            name = _FLOAT_OPS.get(op)
            if name is None:
                raise self.error(node, f"{op} on floats is not supported")
            return V(getattr(b, name)(x, y, flags=self.flags), t)
        if op in ("//", "%"):
            return V(_int_divmod(b, op, x, y, t.signed), t)
        if op == ">>":
            return V(b.ashr(x, y) if t.signed else b.lshr(x, y), t)
        name = _INT_OPS.get(op)
        if name is None:
            raise self.error(node, f"operator {op} is not supported")
        return V(getattr(b, name)(x, y), t)

    def compare(self, op, a: V, c: V, node) -> V:
        sym = _COMPARE.get(op)
        if sym is None:
            raise self.error(node, f"comparison {op.__name__} is not supported")
        t = a.t if a.t == c.t else T.arith(a.t, c.t)
        x, y = convert(self.b, a, t).ir, convert(self.b, c, t).ir
        if t.is_float:
            if sym == "!=":  # NaN != NaN is True (unordered), every other comparison ordered
                return V(self.b.fcmp_unordered("!=", x, y, flags=self.flags), T.BOOL)
            return V(self.b.fcmp_ordered(sym, x, y, flags=self.flags), T.BOOL)
        if t.signed:
            return V(self.b.icmp_signed(sym, x, y), T.BOOL)
        return V(self.b.icmp_unsigned(sym, x, y), T.BOOL)


def _int_divmod(b, op, x, y, signed):
    """Python's floor division and modulo; a zero divisor gives 0 (Numba's error_model='numpy')."""
    zero = ir.Constant(x.type, 0)
    is_zero = b.icmp_unsigned("==", y, zero)
    safe = b.select(is_zero, ir.Constant(x.type, 1), y)
    if not signed:
        r = b.udiv(x, safe) if op == "//" else b.urem(x, safe)
        return b.select(is_zero, zero, r)
    q = b.sdiv(x, safe)
    r = b.srem(x, safe)
    # round toward -inf: adjust when the remainder is non-zero and the signs differ
    adjust = b.and_(b.icmp_signed("!=", r, zero),
                    b.icmp_signed("<", b.xor(r, safe), zero))
    if op == "//":
        out = b.sub(q, b.zext(adjust, x.type))
    else:
        out = b.select(adjust, b.add(r, safe), r)
    return b.select(is_zero, zero, out)


_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
           ast.Mod: "%", ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
           ast.LShift: "<<", ast.RShift: ">>"}
# the IRBuilder method of each arithmetic operator (// % and >> are made of several)
_FLOAT_OPS = {"+": "fadd", "-": "fsub", "*": "fmul", "/": "fdiv"}
_INT_OPS = {"+": "add", "-": "sub", "*": "mul", "&": "and_", "|": "or_", "^": "xor", "<<": "shl"}
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
            ast.GtE: ">="}


def _pure(e) -> bool:
    """Cheap to compute and safe to compute when not selected: names, constants, arithmetic
    without integer division, comparisons, selects (no loads, no calls, which may fault)."""
    for n in ast.walk(e):
        if isinstance(n, (ast.Subscript, ast.Call)):
            return False
        if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.FloorDiv, ast.Mod, ast.Pow)):
            return False
    return True
