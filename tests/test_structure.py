"""Structural keys (fusegrad/ir/structure.py): what a kernel's name, and so its generated code and
its kernel-cache entry, depends on. Sizes, constant values, source locations and hints must not
change the key; ops, dtypes, ranks, attributes and the wiring must."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from fusegrad.ir import Attrs, Graph, GraphBuilder, Node, TensorType, Var
from fusegrad.ir.structure import structure_digest, structure_key


def region(shape=(4, 3), dtype="float32", scale=2.0, loc=None, hint="x", axes=(1,),
           op="add", swap=False, keepdims=True):
    """x * scale (op) bias, and its sum over `axes`."""
    b = GraphBuilder("region")
    x = b.add_input(TensorType(dtype, shape), hint)
    bias = b.add_input(TensorType(dtype, shape[-1:]), "bias")
    c = b.emit("constant", [], {"value": np.array(scale, dtype)}, loc=loc)
    h = b.emit("mul", [x, c], loc=loc)
    h = b.emit(op, [bias, h] if swap else [h, bias], loc=loc)
    s = b.emit("sum", [h], {"axes": axes, "keepdims": keepdims}, loc=loc)
    return b.build([h, s])


def unary(shape, op="neg", **attrs):
    b = GraphBuilder("region")
    x = b.add_input(TensorType("float32", shape), "x")
    return b.build([b.emit(op, [x], attrs or None)])


def same(a, b) -> bool:
    equal = structure_key(a) == structure_key(b)
    assert equal == (structure_digest(a) == structure_digest(b))
    return equal


# ---- what does not change the key ------------------------------------------------------------

def test_sizes_do_not_change_the_key():
    assert same(region(shape=(4, 3)), region(shape=(128, 1024)))


def test_constant_values_do_not_change_the_key():
    assert same(region(scale=2.0), region(scale=-0.5))


def test_source_locations_and_hints_do_not_change_the_key():
    assert same(region(loc="/a/model.py:12", hint="x"), region(loc="/b/other.py:99", hint="h"))


def test_size_attributes_keep_only_their_length():
    def reshape(shape, to):
        b = GraphBuilder("region")
        x = b.add_input(TensorType("float32", shape), "x")
        y = b.emit("reshape", [x], {"shape": to})
        return b.build([b.emit("broadcast_to", [y], {"shape": (7,) + to})])

    assert same(reshape((4, 3), (12,)), reshape((2, 5), (10,)))


def test_the_key_is_the_same_in_every_process():
    """Kernel files are cached on disk by name: the digest must not depend on hash seeds."""
    code = ("import sys; sys.path.insert(0, 'tests'); from test_structure import region; "
            "from fusegrad.ir.structure import structure_digest; print(structure_digest(region()))")
    digests = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        digests.add(out.stdout.strip())
    assert digests == {structure_digest(region())}


# ---- what does -------------------------------------------------------------------------------

def test_a_different_op_changes_the_key():
    assert not same(region(op="add"), region(op="sub"))


def test_a_different_dtype_changes_the_key():
    assert not same(region(dtype="float32"), region(dtype="float64"))


def test_a_different_rank_changes_the_key():
    assert not same(region(shape=(4, 3)), region(shape=(2, 4, 3)))
    assert not same(unary(()), unary((5,)))  # a scalar is not a vector


def test_different_attributes_change_the_key():
    assert not same(region(shape=(4, 3), axes=(1,)), region(shape=(4, 3), axes=(0,)))
    assert not same(region(keepdims=True), region(keepdims=False))
    assert not same(unary((3, 3, 3), "transpose", perm=(0, 2, 1)),
                    unary((3, 3, 3), "transpose", perm=(1, 0, 2)))
    assert not same(unary((4,), "cast", dtype="int32"), unary((4,), "cast", dtype="int64"))


def test_different_wiring_changes_the_key():
    assert not same(region(op="sub", swap=False), region(op="sub", swap=True))

    def square_or_product(square):
        b = GraphBuilder("region")
        x = b.add_input(TensorType("float32", (4,)), "x")
        y = b.add_input(TensorType("float32", (4,)), "y")
        return b.build([b.emit("mul", [x, x if square else y])])

    assert not same(square_or_product(True), square_or_product(False))


def test_which_values_are_outputs_changes_the_key():
    g = region()
    assert not same(g, g.replace(outputs=g.outputs[::-1], output_names=("a", "b")))


# ---- nested regions (multi-tensor kernels) ---------------------------------------------------

def kernel_of(inner: Graph) -> Graph:
    """A graph holding `inner` as the region of one kernel node."""
    ins = tuple(Var(v.type) for v in inner.inputs)
    outs = tuple(Var(v.type) for v in inner.outputs)
    node = Node("kernel", ins, outs, Attrs(kind="elementwise"), part="update", region=inner)
    return Graph(ins, (node,), outs, name="region")


def test_nested_regions_follow_the_same_rules():
    assert same(kernel_of(region(shape=(4, 3), scale=1.0)),
                kernel_of(region(shape=(9, 2), scale=3.0)))
    assert not same(kernel_of(region(op="add")), kernel_of(region(op="mul")))


@pytest.mark.parametrize("first_part", ["backward", "update"])
def test_a_change_of_part_keeps_kernels_apart(first_part):
    """Kernel names always differed where a region's part changes (it showed in the printed
    region they were digests of); kept, so that the same kernels are compiled as before."""
    g = region()
    moved = g.replace(nodes=tuple(
        Node(n.op, n.inputs, n.outputs, n.attrs, n.loc, first_part, n.region) for n in g.nodes))
    assert not same(g, moved)
