"""Every per-primitive table has a row for every primitive that needs one, and a failure names the
rows that are missing.

Which primitives need a row in which table follows from their registry rows (ir/ops.py), never
from a list kept here:
    shape rule           every primitive (the registry row itself)
    interpreter          every primitive (ir/interpret.py IMPLS; control flow, whose
                         implementation needs its region, CONTROL)
    VJP rules            every primitive; a rule of its own for each differentiable one, the
                         shared no-gradient rule for the others (compiler/vjp_rules.py)
    per-element emitters every primitive with loop role "map" or "view", one scalar expression
                         per element: the CPU's CPU_EXPR and CUDA's CUDA_EXPR. Roles "reduce"
                         and "source" are written by the loop nests themselves (cpu_loops.py,
                         cuda_loops.py), not from a table.
    library calls        every primitive whose lone_kernel is "opaque": cpu_movement.MOVEMENT,
                         shared by both backends, and the library functions its calls name, in
                         cpu_library (SIGNATURES) and cuda_library
    GEMM                 lone_kernel "gemm": the backends' emit_gemm, written for matmul
    control flow         lone_kernel "scan": the backends' scan hook (codegen/schedule.py)
"""
from __future__ import annotations

import ast
import zlib
from pathlib import Path

import numpy as np
import pytest

import fusegrad as fg

from fusegrad.compiler import vjp_rules
from fusegrad.kernels import cpu_library, cuda_library
from fusegrad.compiler.codegen.cpu_expr import CPU_EXPR
from fusegrad.compiler.codegen.cpu_movement import MOVEMENT
from fusegrad.compiler.codegen.cuda_expr import CUDA_EXPR
from fusegrad.ir import GraphBuilder, TensorType
from fusegrad.ir.interpret import CONTROL, IMPLS
from fusegrad.ir.ops import LONE_KERNELS, LOOP_ROLES, PRIMITIVES, PROPERTIES, prims_where

from test_ir_primitives import CASES


def _per_element(p) -> bool:
    return p.loop in ("map", "view")


# (what the table is, the table, which primitives need a row in it)
TABLES = [
    ("interpreter (ir/interpret.py IMPLS)", IMPLS, lambda p: p.kind != "control"),
    ("interpreter of control flow (ir/interpret.py CONTROL)", CONTROL,
     lambda p: p.kind == "control"),
    ("VJP rules (compiler/vjp_rules.py VJP_RULES)", vjp_rules.VJP_RULES, lambda p: True),
    ("CPU per-element emitters (codegen/cpu_expr.py CPU_EXPR)", CPU_EXPR, _per_element),
    ("CUDA per-element emitters (codegen/cuda_expr.py CUDA_EXPR)", CUDA_EXPR, _per_element),
    ("CPU and CUDA library-call emitters (codegen/cpu_movement.py MOVEMENT)", MOVEMENT,
     lambda p: p.lone_kernel == "opaque"),
]


def _missing(table, needs) -> list[str]:
    return [name for name, p in PRIMITIVES.items() if needs(p) and name not in table]


def test_every_primitive_has_a_shape_rule_and_valid_properties():
    bad = [name for name, p in PRIMITIVES.items()
           if p.name != name or not callable(p.rule) or p.loop not in LOOP_ROLES
           or p.lone_kernel not in LONE_KERNELS]
    assert not bad, f"registry rows without a shape rule or with bad properties: {', '.join(bad)}"


@pytest.mark.parametrize("what, table, needs", TABLES, ids=[t[0].split(" (")[0] for t in TABLES])
def test_table_covers_every_primitive(what, table, needs):
    missing = _missing(table, needs)
    assert not missing, f"{what} lack: {', '.join(missing)}"


@pytest.mark.parametrize("what, table, needs", TABLES, ids=[t[0].split(" (")[0] for t in TABLES])
def test_table_names_only_primitives(what, table, needs):
    unknown = [name for name in table if name not in PRIMITIVES]
    assert not unknown, f"{what} have rows for no primitive: {', '.join(unknown)}"


def test_vjp_rules_follow_differentiability():
    no_rule = [op for op in prims_where(differentiable=True)
               if vjp_rules.VJP_RULES.get(op, vjp_rules._no_gradient) is vjp_rules._no_gradient]
    assert not no_rule, f"VJP rules lack (differentiable primitives): {', '.join(no_rule)}"
    with_rule = [op for op in prims_where(differentiable=False)
                 if vjp_rules.VJP_RULES[op] is not vjp_rules._no_gradient]
    assert not with_rule, (f"VJP rules give a gradient to primitives whose rows say "
                           f"differentiable=False: {', '.join(with_rule)}")


def test_gemm_kernels_are_matmuls():
    """emit_gemm (cpu.py, cuda.py) reads matmul's operands and transpose flags."""
    assert prims_where(lone_kernel="gemm") == ("matmul",)


def _library_calls(op):
    """The library calls MOVEMENT makes for a lone node of `op`, on the primitive tests' cases.
    Cases outside an emitter's preconditions (a reduction over no axes, or over axes in several
    runs: the passes before fusion leave neither) raise and are passed over."""
    calls = []
    for case in (c for c in CASES if c.op == op):
        rng = np.random.default_rng(zlib.crc32(case.id.encode()))
        args = [gen(rng) for gen in case.inputs]
        b = GraphBuilder(case.id)
        ins = [b.add_input(TensorType.of(a), f"x{i}") for i, a in enumerate(args)]
        (node,) = b.build([b.emit(op, ins, case.attrs)]).nodes
        try:
            calls += MOVEMENT[op](node, [f"in{i}" for i in range(len(ins))], "out")
        except (IndexError, NotImplementedError):
            continue
    return calls


@pytest.mark.parametrize("op", prims_where(lone_kernel="opaque"))
def test_library_calls_exist_on_both_backends(op):
    if op not in MOVEMENT:
        pytest.skip("no emitter (test_table_covers_every_primitive names it)")
    calls = _library_calls(op)
    assert calls, f"no primitive test case of {op} to emit library calls from"
    cpu_lacks = sorted({c.fn for c in calls if c.fn not in cpu_library.SIGNATURES})
    cuda_lacks = sorted({c.fn for c in calls if not callable(getattr(cuda_library, c.fn, None))})
    assert not cpu_lacks, f"CPU library (kernels/cpu_library.py SIGNATURES) lacks: {cpu_lacks}"
    assert not cuda_lacks, f"CUDA library (kernels/cuda_library.py) lacks: {cuda_lacks}"
    for c in calls:
        kinds = cpu_library.SIGNATURES[c.fn][0].split()
        if c.fn in cpu_library.SPLITTABLE:  # (worker, workers) first: the CPU generator's
            assert kinds[:2] == ["int", "int"], c.fn
            kinds = kinds[2:]
        assert [a.kind for a in c.args] == kinds, c


def test_prims_where_rejects_unknown_properties():
    with pytest.raises(TypeError, match="flot_only"):
        prims_where(flot_only=True)
    assert set(PROPERTIES) >= {"float_only", "commutative", "cost", "loop", "pass_through",
                               "lone_kernel", "recomputable", "foldable", "differentiable"}


def _literal_op_sets(path):
    """(line, names) of every tuple, list or set literal in `path` made only of primitive names
    (two or more): a property kept outside the registry."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
            names = [e.value for e in node.elts
                     if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len(names) == len(node.elts) and all(n in PRIMITIVES for n in names):
                yield node.lineno, names


def test_no_set_of_primitive_names_outside_the_registry():
    """A primitive's properties live in its row (ir/ops.py); a pass or emitter asks the row
    (PRIMITIVES[op].float_only, prims_where(loop="reduce")) instead of keeping a list of op
    names that the next primitive would have to be added to."""
    package = Path(fg.__file__).parent
    found = [f"{path.relative_to(package)}:{line} {names}"
             for path in sorted(package.rglob("*.py")) if path != package / "ir" / "ops.py"
             for line, names in _literal_op_sets(path)]
    assert not found, "sets of primitive names kept outside ir/ops.py:\n" + "\n".join(found)
