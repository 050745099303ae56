"""The kernel language's own names: what generated kernel modules import besides NumPy and math.

    @kernel("i64 i64 f32* f32*", fastmath=("contract",), noalias=True)
    def elementwise_1a2b(R, C, a0, o0):
        ...
        return 0

    @helper                       # a function kernels of the same text may call
    def halves(lo, hi):
        return lo // 2, hi // 2

A kernel's parameters are integers and typed pointers (the signature string, short type names:
i64, f32*, b1* ...); it returns an int64 status (0: done; non-zero: an error the runtime
reports, e.g. an index out of range). Every kernel is entered with one uniform C signature,
`int64 entry(int64 *args)`: args[k] holds parameter k (a pointer as its address), so one
generic dispatcher (runtime/native.py) calls any kernel from a table.

fusegrad compiles this text with its own LLVM front end (compiler/native): fast, and the reason
a model's kernels compile in seconds. The same text is valid Numba: `kernel` below compiles it
with Numba into a cfunc of the same entry signature (`FUSEGRAD_KERNEL_COMPILER=numba`), the
reference the native compiler is tested against.

noalias=True promises that distinct pointer parameters never address overlapping memory that
the kernel writes (the memory plan guarantees it for generated kernels; an output computed in
place is stored through its input's own parameter). LLVM then vectorises without run-time
overlap checks.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# ---- pointer casts: an address (int64) -> a typed pointer ---------------------------------------

_POINTEE = {"f32": types.float32, "f64": types.float64, "i32": types.int32, "i64": types.int64,
            "u64": types.uint64, "b1": types.uint8, "i8": types.int8}


def _make_ptr(short):
    nb = _POINTEE[short]

    @intrinsic
    def ptr(typingctx, addr):
        if not isinstance(addr, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(nb)))

        return types.CPointer(nb)(addr), codegen

    ptr.__name__ = f"ptr_{short}"
    return ptr


ptr_f32, ptr_f64, ptr_i32, ptr_i64, ptr_u64, ptr_b1, ptr_i8 = (
    _make_ptr(s) for s in ("f32", "f64", "i32", "i64", "u64", "b1", "i8"))
POINTER_CASTS = {"f32": ptr_f32, "f64": ptr_f64, "i32": ptr_i32, "i64": ptr_i64,
                 "u64": ptr_u64, "b1": ptr_b1, "i8": ptr_i8}


@intrinsic
def address(typingctx, p):
    """The address of a pointer, as an int64."""
    if not isinstance(p, types.CPointer):
        return None

    def codegen(context, builder, sig, args):
        return builder.ptrtoint(args[0], ir.IntType(64))

    return types.int64(p), codegen


@intrinsic
def call_kernel(typingctx, fn, args):
    """Call the kernel entry at address `fn` with the argument block at address `args`."""
    if not (isinstance(fn, types.Integer) and isinstance(args, types.Integer)):
        return None

    def codegen(context, builder, sig, a):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64.as_pointer()])
        target = builder.inttoptr(a[0], fnty.as_pointer())
        return builder.call(target, [builder.inttoptr(a[1], i64.as_pointer())])

    return types.int64(fn, args), codegen


# ---- parallel calls: one kernel entry run by several workers of Numba's thread pool --------

def _parallel_call_ir(builder, alloca, pfor, fn, argv, nargs, workers):
    """LLVM IR of parallel_call, shared by the Numba intrinsic and the native compiler
    (compiler/native/builtins.py): `workers` private copies of the argument block argv[0:nargs],
    copy w with argv[0] = w and argv[1] = workers, each passed to the kernel entry at `fn` by
    one worker of the threading layer Numba launched, through its parallel_for at address
    `pfor` (an address, not a symbol: the pool is launched only when a step first runs on
    more than one thread, runtime/threads.py). Returns the bitwise OR
    of the workers' statuses (0: all done)."""
    i8p, i64 = ir.IntType(8).as_pointer(), ir.IntType(64)
    module = builder.module
    trampoline = module.globals.get("fusegrad.parallel_worker")
    if trampoline is None:
        trampoline = _parallel_worker(module)
    pfor_ty = ir.FunctionType(ir.VoidType(), [i8p] * 5 + [i64] * 3)
    pfor = builder.inttoptr(pfor, pfor_ty.as_pointer())
    data = alloca(i64, 5)
    for k, v in enumerate((fn, argv, nargs, workers, ir.Constant(i64, 0))):
        builder.store(v, builder.gep(data, [ir.Constant(i64, k)]))
    # one index per worker: the layer hands worker w "array" pointer 0 + w * step (step 1)
    first = alloca(i8p, 1)
    builder.store(ir.Constant(i8p, None), first)
    dims = alloca(i64, 1)
    builder.store(workers, dims)
    steps = alloca(i64, 1)
    builder.store(ir.Constant(i64, 1), steps)
    builder.call(pfor, [builder.bitcast(trampoline, i8p), builder.bitcast(first, i8p),
                        builder.bitcast(dims, i8p), builder.bitcast(steps, i8p),
                        builder.bitcast(data, i8p), ir.Constant(i64, 0), ir.Constant(i64, 1),
                        workers])
    return builder.load(builder.gep(data, [ir.Constant(i64, 4)]))


def _parallel_worker(module):
    """void worker(char **args, size_t *dims, size_t *steps, void *data), the gufunc-style
    function the threading layer calls: for each index it is given (args[0] + k), a private
    copy of the argument block with that index and the worker count in its first two slots,
    then the kernel entry."""
    i8p, i64 = ir.IntType(8).as_pointer(), ir.IntType(64)
    i64p = i64.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p.as_pointer(), i64p, i64p, i8p])
    f = ir.Function(module, fnty, "fusegrad.parallel_worker")
    f.linkage = "internal"
    args, dims, _, raw = f.args
    b = ir.IRBuilder(f.append_basic_block("entry"))
    data = b.bitcast(raw, i64p)

    def field(k):
        return b.load(b.gep(data, [ir.Constant(i64, k)]))

    fn, argv, nargs, workers = (field(k) for k in range(4))
    argv = b.inttoptr(argv, i64p)
    start = b.ptrtoint(b.load(args), i64)
    count = b.load(dims)
    block = b.alloca(i64, nargs)
    entry_ty = ir.FunctionType(i64, [i64p])
    target = b.inttoptr(fn, entry_ty.as_pointer())
    head, copy, call, done = (f.append_basic_block(n) for n in ("head", "copy", "call", "done"))
    pre = b.block
    b.branch(head)
    # for w in [start, start + count): copy the block, set (w, workers), call
    b.position_at_end(head)
    w = b.phi(i64)
    w.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", w, b.add(start, count)), copy, done)
    b.position_at_end(copy)
    j = b.phi(i64)
    j.add_incoming(ir.Constant(i64, 0), head)
    b.store(b.load(b.gep(argv, [j])), b.gep(block, [j]))
    j1 = b.add(j, ir.Constant(i64, 1))
    j.add_incoming(j1, copy)
    b.cbranch(b.icmp_signed("<", j1, nargs), copy, call)
    b.position_at_end(call)
    b.store(w, block)
    b.store(workers, b.gep(block, [ir.Constant(i64, 1)]))
    status = b.call(target, [block])
    b.atomic_rmw("or", b.gep(data, [ir.Constant(i64, 4)]), status, "monotonic")
    w1 = b.add(w, ir.Constant(i64, 1))
    w.add_incoming(w1, call)
    b.branch(head)
    b.position_at_end(done)
    b.ret_void()
    return f


@intrinsic
def parallel_call(typingctx, pfor, fn, argv, nargs, workers):
    """Run the kernel entry at address `fn` on `workers` workers of the thread pool whose
    numba_parallel_for is at address `pfor`, worker w with a copy of the argument block at
    address argv (nargs slots) whose first two slots are (w, workers); returns the OR of their
    statuses. Workers must be at least 1 and at most the pool's threads (the dispatcher clamps
    it)."""
    if not all(isinstance(t, types.Integer) for t in (pfor, fn, argv, nargs, workers)):
        return None

    def codegen(context, builder, sig, a):
        def alloca(t, n):
            return cgutils.alloca_once(builder, t, size=n)

        return _parallel_call_ir(builder, alloca, *a)

    return types.int64(pfor, fn, argv, nargs, workers), codegen


# ---- GEMM: c = op(a) @ op(b) for row-major matrices with rows lda, ldb, ldc apart ------------

def _gemm_reference(a, b, c, m, n, k, ta, tb, lda, ldb, ldc):
    """The Numba version: NumPy's dot on views (BLAS through SciPy, as Numba's np.dot). a is
    stored (k, m) when ta else (m, k), b (n, k) when tb else (k, n), each row `ld` elements
    after the one before (a tile of a bigger matrix)."""
    if m == 0 or n == 0:
        return
    out = carray(c, (m, ldc))[:, :n]
    if k == 0:
        out[:, :] = 0
        return
    x = carray(a, (k, lda))[:, :m].T if ta else carray(a, (m, lda))[:, :k]
    y = carray(b, (n, ldb))[:, :k].T if tb else carray(b, (k, ldb))[:, :n]
    out[:, :] = np.dot(np.ascontiguousarray(x), np.ascontiguousarray(y))


blas_gemm = njit(_gemm_reference)


@intrinsic
def offset(typingctx, p, k):
    """The pointer k elements past p."""
    if not (isinstance(p, types.CPointer) and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.gep(args[0], [args[1]], inbounds=True)

    return p(p, k), codegen


# ---- MPI: a data-parallel step's gradient sum calls MPI_Allreduce by name -----------------------

def _mpi_allreduce(bits):
    """mpi_allreduce_h<bits>(in_place, buf, count, datatype, op, comm) -> int64: MPI_Allreduce(
    MPI_IN_PLACE, buf, count, datatype, op, comm), its handles passed as int64 values and
    narrowed to the MPI library's handle type: a 32-bit int (MPICH's ABI) or a pointer (Open
    MPI, the MPI 5 ABI). The symbol is resolved when the code is loaded, in the MPI library
    mpi4py loaded (fusegrad/distributed.py binds it), so no address is compiled in."""

    @intrinsic
    def mpi_allreduce(typingctx, in_place, buf, count, datatype, op, comm):
        if not isinstance(buf, types.CPointer):
            return None

        def codegen(context, builder, sig, args):
            i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
            handle = i32 if bits == 32 else i8p
            fnty = ir.FunctionType(i32, [i8p, i8p, i32, handle, handle, handle])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "MPI_Allreduce")
            place, data, n, dt, o, c = args

            def narrow(v):
                return builder.trunc(v, i32) if bits == 32 else builder.inttoptr(v, i8p)

            status = builder.call(fn, [builder.inttoptr(place, i8p), builder.bitcast(data, i8p),
                                       builder.trunc(n, i32), narrow(dt), narrow(o), narrow(c)])
            return builder.sext(status, i64)

        return types.int64(in_place, buf, count, datatype, op, comm), codegen

    mpi_allreduce.__name__ = f"mpi_allreduce_h{bits}"
    return mpi_allreduce


mpi_allreduce_h32 = _mpi_allreduce(32)
mpi_allreduce_h64 = _mpi_allreduce(64)
MPI_ALLREDUCE = {32: mpi_allreduce_h32, 64: mpi_allreduce_h64}


# ---- helpers defined in kernel text: @helper (a Numba function inlined where it is called) -----

helper = njit(inline="always", error_model="numpy", nogil=True)


# ---- kernel: the Numba compilation of a kernel (the reference compiler) ------------------------

def _numba_type(short):
    short = short.strip()
    if short.endswith("*"):
        return types.CPointer(_POINTEE[short[:-1]])
    return {"i64": types.int64, "i32": types.int32, "f64": types.float64,
            "f32": types.float32, "u64": types.uint64, "b1": types.boolean}[short]


def kernel(signature: str, fastmath=(), noalias=False):
    """Compile the decorated function with Numba and wrap it in the uniform entry
    `int64 entry(int64 *args)`; the result has `.address` (the entry) like a cfunc.
    (The native compiler reads this decorator from the source text instead.)"""
    params = [_numba_type(s) for s in signature.split()]

    def wrap(fn):
        body = njit(types.int64(*params), fastmath=set(fastmath), error_model="numpy",
                    nogil=True)(fn)
        unpack = []
        for k, p in enumerate(params):
            if isinstance(p, types.CPointer):
                short = next(s for s, t in _POINTEE.items() if t == p.dtype)
                unpack.append(f"ptr_{short}(args[{k}])")
            else:
                unpack.append(f"args[{k}]")
        source = (f"def entry(args):\n"
                  f"    return body({', '.join(unpack)})\n")
        scope = {"body": body, **{f"ptr_{s}": f for s, f in POINTER_CASTS.items()}}
        exec(source, scope)  # noqa: S102 - generated from the signature above, nothing else
        entry = cfunc(types.int64(types.CPointer(types.int64)), nogil=True)(scope["entry"])
        entry.body = body
        return entry

    return wrap
