"""The typed intermediate representation: types, primitives, graphs, printer, verifier, oracle.

This layer imports only NumPy and networkx (never fusegrad.compiler or fusegrad.runtime).
"""
from .attrs import Attrs, ConstArray
from .dtypes import DTYPES, as_dtype
from .graph import PARTS, ROLES, Graph, GraphBuilder, Node, Var
from .interpret import eval_primitive, interpret
from .ops import PRIMITIVES, Primitive, infer_type
from .printer import format_graph
from .types import ShapeError, TensorType, broadcast_shapes
from .verify import VerifyError, verify

__all__ = [
    "Attrs", "ConstArray", "DTYPES", "as_dtype", "PARTS", "ROLES", "Graph", "GraphBuilder", "Node",
    "Var", "eval_primitive", "interpret", "PRIMITIVES", "Primitive", "infer_type", "format_graph",
    "ShapeError", "TensorType", "broadcast_shapes", "VerifyError", "verify",
]
