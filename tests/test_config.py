"""fusegrad/config.py: every FUSEGRAD_* variable is one row, parsed one way, documented in the
README, and nothing else in fusegrad/ reads the environment."""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from fusegrad import backend, config
from fusegrad.backends import cpu as backends_cpu
from fusegrad.compiler import pipeline
from fusegrad.kernels import cuda_config
from fusegrad.compiler.passes import manager
from fusegrad.ir import GraphBuilder, TensorType
from fusegrad.ir import verify as real_verify

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fusegrad"
NAME = re.compile(r"FUSEGRAD_[A-Z0-9_]*[A-Z0-9]")


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


# ---- parsing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "yes", "on", "On", " 1 "])
def test_flag_true_spellings(monkeypatch, raw):
    monkeypatch.setenv("FUSEGRAD_EXACT_MATH", raw)
    assert config.get("FUSEGRAD_EXACT_MATH") is True


@pytest.mark.parametrize("raw", ["", " ", "0", "false", "False", "no", "NO", "off"])
def test_flag_false_spellings(monkeypatch, raw):
    monkeypatch.setenv("FUSEGRAD_EXACT_MATH", raw)
    assert config.get("FUSEGRAD_EXACT_MATH") is False


def test_unset_means_the_default(monkeypatch):
    for name in ("FUSEGRAD_EXACT_MATH", "FUSEGRAD_TARGET", "FUSEGRAD_COMPILE_WORKERS",
                 "FUSEGRAD_DUMP", "FUSEGRAD_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert config.get("FUSEGRAD_EXACT_MATH") is False
    assert config.get("FUSEGRAD_TARGET") == "cpu"
    assert config.get("FUSEGRAD_COMPILE_WORKERS") is None
    assert config.get("FUSEGRAD_DUMP") is None
    assert config.get("FUSEGRAD_CACHE_DIR") == os.path.expanduser("~/.cache/fusegrad")


def test_other_kinds(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSEGRAD_COMPILE_WORKERS", " 3 ")
    assert config.get("FUSEGRAD_COMPILE_WORKERS") == 3
    monkeypatch.setenv("FUSEGRAD_KERNEL_COMPILER", "Numba")
    assert config.get("FUSEGRAD_KERNEL_COMPILER") == "numba"
    monkeypatch.setenv("FUSEGRAD_DUMP", str(tmp_path))
    assert config.get("FUSEGRAD_DUMP") == str(tmp_path)
    monkeypatch.setenv("FUSEGRAD_CACHE_DIR", "~/elsewhere")
    assert config.get("FUSEGRAD_CACHE_DIR") == os.path.expanduser("~/elsewhere")


@pytest.mark.parametrize("name,raw,accepted", [
    ("FUSEGRAD_VERIFY", "maybe", "1/true/yes/on"),
    ("FUSEGRAD_CROSSCHECK", "2", "0/false/no/off"),
    ("FUSEGRAD_COMPILE_WORKERS", "four", "an integer"),
    ("FUSEGRAD_TARGET", "gpu", "one of cpu, interpret, cuda"),
    ("FUSEGRAD_CUDA_GEMM", "cublas", "one of auto, tiled"),
])
def test_a_bad_value_names_the_variable_and_what_it_accepts(monkeypatch, name, raw, accepted):
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=re.escape(f"{name}={raw!r}")) as info:
        config.get(name)
    assert accepted in str(info.value)


def test_an_unknown_name_is_an_error():
    with pytest.raises(KeyError, match="not a fusegrad setting"):
        config.get("FUSEGRAD" + "_NO_SUCH_THING")


def test_every_row_is_well_formed():
    for name, s in config.SETTINGS.items():
        assert name == s.name and NAME.fullmatch(name), name
        assert s.kind in config.KINDS, name
        assert s.doc and "\n" not in s.doc and "|" not in s.doc, name
        assert (s.kind == "choice") == bool(s.choices), name
        if s.kind == "choice":
            assert s.default in s.choices, name


# ---- the table and the code agree ----------------------------------------------------------------

def test_choices_are_the_code_s():
    assert config.SETTINGS["FUSEGRAD_TARGET"].choices == backend.TARGETS
    assert config.SETTINGS["FUSEGRAD_KERNEL_COMPILER"].choices == backends_cpu.KERNEL_COMPILERS


def test_cuda_defaults_shown_are_cuda_config_s():
    for key, name in cuda_config.ENV.items():
        shown = config.SETTINGS[name].shown
        assert shown == f"{cuda_config.GPU[key]}; simulator {cuda_config.SIMULATOR[key]}", name


def test_every_fusegrad_name_in_the_sources_and_readme_is_a_setting():
    seen = {}
    for path in [*_sources(), ROOT / "README.md", ROOT / "ARCHITECTURE.md",
                 *sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*"))]:
        if path.is_file() and path.suffix in (".py", ".md"):
            for name in NAME.findall(path.read_text()):
                seen.setdefault(name, path.relative_to(ROOT))
    unknown = {n: str(p) for n, p in seen.items() if n not in config.SETTINGS}
    assert not unknown, f"FUSEGRAD_ names that are not rows of fusegrad/config.py: {unknown}"


def test_readme_settings_table_is_the_config_table():
    readme = (ROOT / "README.md").read_text()
    assert "## Settings" in readme
    assert config.markdown_table() in readme, (
        "README's Settings table differs from fusegrad/config.py: paste in the output of "
        "python3 -c 'from fusegrad import config; print(config.markdown_table())'")


def test_nothing_else_in_fusegrad_reads_the_environment():
    pattern = re.compile(r"\benviron\b|\bgetenv\b|\bputenv\b|\benvironb\b")
    offenders = [f"{p.relative_to(ROOT)}:{k}: {line.strip()}"
                 for p in _sources() if p.name != "config.py" or p.parent != PACKAGE
                 for k, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, "read the environment through fusegrad/config.py:\n" + "\n".join(
        offenders)


def test_config_imports_nothing_from_fusegrad():
    tree = ast.parse((PACKAGE / "config.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("fusegrad"), node.module
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("fusegrad") for a in node.names)


# ---- FUSEGRAD_VERIFY governs both verifiers ------------------------------------------------------

def _small_graph():
    b = GraphBuilder("verify_both")
    x = b.add_input(TensorType("float32", (4, 3)), "x")
    h = b.emit("exp", [b.emit("neg", [x])])
    return b.build([b.emit("sum", [h], {"axes": (1,), "keepdims": False})])


def _count_verifier_calls(monkeypatch):
    calls = {"passes": 0, "fused": 0}

    def counting(where):
        def verify(graph):
            calls[where] += 1
            return real_verify(graph)
        return verify

    monkeypatch.setattr(manager, "verify_graph", counting("passes"))
    monkeypatch.setattr(pipeline, "verify_graph", counting("fused"))
    return calls


@pytest.mark.parametrize("raw,on", [("1", True), ("true", True), ("false", False), ("0", False),
                                    ("off", False), ("", False)])
def test_verify_turns_both_verifiers_on_and_off(monkeypatch, raw, on):
    calls = _count_verifier_calls(monkeypatch)
    monkeypatch.setenv("FUSEGRAD_VERIFY", raw)
    monkeypatch.delenv("FUSEGRAD_DUMP", raising=False)
    program = pipeline.compile_graph(_small_graph())
    assert program.kernels >= 1
    if on:
        assert calls["passes"] > 0 and calls["fused"] > 0, calls
    else:
        assert calls == {"passes": 0, "fused": 0}


def test_verify_with_a_bad_value_is_an_error_not_off(monkeypatch):
    monkeypatch.setenv("FUSEGRAD_VERIFY", "ture")
    with pytest.raises(ValueError, match="FUSEGRAD_VERIFY"):
        pipeline.compile_graph(_small_graph())
