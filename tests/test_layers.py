"""The package's layers, as ARCHITECTURE.md draws them: each imports only the layers below it.

    front      api, train, ops, nn, optim, fit, inspection, backend, device, ...   anything
    backends   one module per target                         compiler, runtime, kernels, ir
    runtime    caches, loaders, executables                  ir, and the two compiler modules
                                                             it runs and loads for (below)
    compiler   trace, autodiff, passes, codegen, native      kernels, ir
    kernels    code running inside kernels                   ir
    ir         types, primitives, graphs, interpreter        -
    base       config, pytree                                (nothing of fusegrad)

Every layer may use `base`. Checked on the source (every `import`, also those inside functions),
so an upward import fails here before it makes a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import fusegrad as fg

PACKAGE = Path(fg.__file__).parent
LAYERS = ("base", "ir", "kernels", "compiler", "runtime", "backends", "front")
BASE = ("config", "pytree")
MAY_IMPORT = {
    "base": set(),
    "ir": {"base"},
    "kernels": {"base", "ir"},
    "compiler": {"base", "ir", "kernels"},
    "runtime": {"base", "ir"},
    "backends": {"base", "ir", "kernels", "compiler", "runtime"},
    "front": set(LAYERS),
}
# the runtime runs a CompiledProgram and loads objects for the compiler's target machine
RUNTIME_MAY_IMPORT = ("compiler.artifact", "compiler.native.machine")


def _layer(module: str) -> str:
    top = module.split(".")[0]
    if top in BASE:
        return "base"
    return top if top in LAYERS else "front"


def _imports(source: str, rel: Path):
    """(line, module inside fusegrad) of every import in `source`, the file at `rel` (relative
    to the package)."""
    package = list(rel.with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                if node.module:
                    yield node.lineno, ".".join(base + [node.module])
                else:
                    for a in node.names:
                        yield node.lineno, ".".join(base + [a.name])
            elif node.module and node.module.startswith("fusegrad."):
                yield node.lineno, node.module[len("fusegrad."):]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fusegrad."):
                    yield node.lineno, a.name[len("fusegrad."):]


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _layer(_module(path))
        for line, target in _imports(path.read_text(), path.relative_to(PACKAGE)):
            there = _layer(target)
            if there == here or there in MAY_IMPORT[here]:
                continue
            if here == "runtime" and target.startswith(RUNTIME_MAY_IMPORT):
                continue
            wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({here}) imports {target} "
                         f"({there})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_check_sees_relative_and_absolute_imports():
    """The scan itself: every spelling of an upward import is found, and placed in its layer."""
    source = ("from ..compiler import lax\nimport fusegrad.runtime.cache\n"
              "def f():\n    from ..backends.cpu import CpuBackend\n")
    found = [t for _, t in _imports(source, Path("ir") / "probe.py")]
    assert found == ["compiler", "runtime.cache", "backends.cpu"]
    assert [_layer(t) for t in found] == ["compiler", "runtime", "backends"]
    assert [t for _, t in _imports("from . import lax\n", Path("compiler/__init__.py"))] \
        == ["compiler.lax"]
