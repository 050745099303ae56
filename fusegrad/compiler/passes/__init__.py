"""Graph-to-graph optimization passes and the pass manager that runs them.

    from fusegrad.compiler.passes import run_passes
    optimized = run_passes(step_graph)     # simplify, fold, cse, dce to a fixed point; layout; ...

One pass per module: simplify (a table of algebraic rules), fold (constant folding), cse,
dce, layout (transposes into matmul flags); rewrite.py holds the rebuild loop they share.
"""
from .cse import cse
from .dce import dce
from .fold import fold_constants
from .layout import layout
from .manager import CANONICALIZE, OPTIMIZE_PIPELINE, FixedPoint, check_contract, run_passes
from .rewrite import Rewriter, RewriteError, rewrite
from .simplify import SIMPLIFY_RULES, simplify

__all__ = [
    "cse", "dce", "fold_constants", "layout", "simplify", "SIMPLIFY_RULES", "run_passes",
    "OPTIMIZE_PIPELINE", "CANONICALIZE", "FixedPoint", "check_contract", "Rewriter",
    "RewriteError", "rewrite",
]
