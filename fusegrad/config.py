"""Every FUSEGRAD_* environment variable, read here and nowhere else.

    from fusegrad import config
    if config.get("FUSEGRAD_VERIFY"): ...

One table (SETTINGS), a row per variable: its name, kind, default and a one-line meaning. The
README's "Settings" table is `markdown_table()` (tests/test_config.py checks they agree, that
every FUSEGRAD_ name in fusegrad/ and the README is a row, and that no other file in fusegrad/
reads the environment).

Values are read when asked for, never cached here (a caller may cache: the CUDA launch sizes
and the GEMM choice are read once per process). An unset or empty variable means its default.
Kinds, parsed one way:

    flag    true: 1 true yes on; false: 0 false no off (any case); anything else is an error
    int     a decimal integer
    choice  one of the row's choices (any case)
    str     the text as given
    path    a folder; ~ is expanded

A value that does not parse raises ValueError naming the variable and what it accepts.
This module imports nothing from fusegrad (the IR layer may use it too).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
KINDS = ("flag", "int", "choice", "str", "path")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str
    default: object
    doc: str
    choices: tuple = ()
    shown: str | None = None  # the default as the README shows it, when not the value itself
    test: bool = False  # read by the test suite only


SETTINGS = {s.name: s for s in (
    Setting("FUSEGRAD_TARGET", "choice", "cpu", "the target when none is given",
            choices=("cpu", "interpret", "cuda")),
    Setting("FUSEGRAD_KERNEL_COMPILER", "choice", "native",
            "compiler of CPU kernel texts: `native` (compiler/native) or `numba` (the "
            "reference; uncached)", choices=("native", "numba")),
    Setting("FUSEGRAD_EXACT_MATH", "flag", False,
            "float32 exp/log/tanh/sigmoid/erf call libm instead of the vectorised "
            "approximations (kernels/cpu_math.py)"),
    Setting("FUSEGRAD_CACHE_DIR", "path", "~/.cache/fusegrad",
            "folder of the disk cache of compiled programs and kernels (private to its user)"),
    Setting("FUSEGRAD_DATA", "path", "~/.cache/fusegrad/data",
            "folder where the examples keep the data sets they fetch with a package client "
            "(examples/datasets.py)"),
    Setting("FUSEGRAD_COMPILE_WORKERS", "int", None,
            "helper processes that compile kernels in parallel (0: this process only)",
            shown="cores - 1, at most 7"),
    Setting("FUSEGRAD_NUM_THREADS", "int", None,
            "threads a compiled CPU step runs on, its GEMMs included (fg.set_num_threads "
            "changes it)", shown="the cores this process may use"),
    Setting("FUSEGRAD_SHARE_CORES", "flag", True,
            "run a step on fewer threads while other processes keep some of the cores busy "
            "(sampled twice a second; results do not depend on it)"),
    Setting("FUSEGRAD_VERIFY", "flag", False,
            "run the IR verifier after every pass and on the fused graph"),
    Setting("FUSEGRAD_CROSSCHECK", "flag", False,
            "every compiled run is also run on the interpreter and must agree (crosscheck.py)"),
    Setting("FUSEGRAD_DUMP", "path", None,
            "folder: every compilation writes its stages there, one file per pass",
            shown="unset (no dump)"),
    Setting("FUSEGRAD_CUDA_THREADS", "int", None,
            "CUDA threads per block, a power of two (read once per process)",
            shown="256; simulator 16"),
    Setting("FUSEGRAD_CUDA_BLOCKS", "int", None,
            "most blocks of a grid-stride CUDA launch (read once per process)",
            shown="4096; simulator 2"),
    Setting("FUSEGRAD_CUDA_CHUNKS", "int", None,
            "most row chunks of a CUDA column reduction (read once per process)",
            shown="64; simulator 2"),
    Setting("FUSEGRAD_CUDA_TILE", "int", None,
            "tile edge of the shared-memory GEMM used without CuPy (read once per process)",
            shown="16; simulator 4"),
    Setting("FUSEGRAD_CUDA_GEMM", "choice", "auto",
            "CUDA GEMMs: `auto` (cuBLAS through CuPy when installed, else the tiled kernel) "
            "or `tiled` (read once per process)", choices=("auto", "tiled")),
    Setting("FUSEGRAD_FUZZ_CASES", "int", 200,
            "random programs tests/test_fuzz.py checks", test=True),
    Setting("FUSEGRAD_UPDATE_GOLDEN", "flag", False,
            "tests/test_fusion.py rewrites its golden files instead of comparing", test=True),
)}


def parse(setting: Setting, raw: str):
    """The value of `raw` (non-empty text) for `setting`; ValueError if it does not parse."""
    text = raw.strip()
    if setting.kind == "flag":
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        accepted = f"{'/'.join(TRUE)} for true, {'/'.join(FALSE)} or empty for false"
    elif setting.kind == "int":
        try:
            return int(text)
        except ValueError:
            accepted = "an integer"
    elif setting.kind == "choice":
        if text.lower() in setting.choices:
            return text.lower()
        accepted = "one of " + ", ".join(setting.choices)
    elif setting.kind == "path":
        return os.path.expanduser(text)
    else:
        return raw
    raise ValueError(f"{setting.name}={raw!r} is not valid: expected {accepted}")


def get(name: str):
    """The current value of the variable `name` (a row of SETTINGS), parsed."""
    try:
        setting = SETTINGS[name]
    except KeyError:
        raise KeyError(f"{name} is not a fusegrad setting (fusegrad/config.py lists them)") \
            from None
    raw = os.environ.get(name, "")
    if not raw.strip():
        default = setting.default
        return os.path.expanduser(default) if setting.kind == "path" and default else default
    return parse(setting, raw)


def markdown_table() -> str:
    """The README's table of settings: variable, default, meaning."""
    def cell(s):
        if s.shown is not None:
            return s.shown
        if s.kind == "flag":
            return "`1`" if s.default else "`0`"
        return f"`{s.default}`"

    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS.values():
        doc = s.doc + (f" (one of {', '.join(f'`{c}`' for c in s.choices)})"
                       if s.kind == "choice" and "`" not in s.doc else "")
        lines.append(f"| `{s.name}` | {cell(s)} | {'tests: ' if s.test else ''}{doc} |")
    return "\n".join(lines)
