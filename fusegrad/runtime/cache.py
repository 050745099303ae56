"""The disk cache of generated code: kernel and driver modules as real .py files.

Numba's `cache=True` works only for functions defined in importable files, and keys its cache
on the file's content: files are written once (named by content hash or structural name), never
rewritten with different text, and imported from the cache directory, so a second process finds
both the source and Numba's compiled objects and starts warm.

    FUSEGRAD_CACHE_DIR   default ~/.cache/fusegrad
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

PACKAGE = "fusegrad_kernels"


def cache_dir() -> Path:
    root = os.environ.get("FUSEGRAD_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "fusegrad")
    path = Path(root) / PACKAGE
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package() -> types.ModuleType:
    """Register the cache folder as the package `fusegrad_kernels` (no sys.path change)."""
    folder = str(cache_dir())
    pkg = sys.modules.get(PACKAGE)
    if pkg is None or list(getattr(pkg, "__path__", [])) != [folder]:
        pkg = types.ModuleType(PACKAGE)
        pkg.__path__ = [folder]
        sys.modules[PACKAGE] = pkg
    return pkg


def _write_once(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it already holds exactly that; True if written."""
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return True


def content_name(prefix: str, text: str) -> str:
    return f"{prefix}_{hashlib.sha1(text.encode()).hexdigest()[:16]}"


def load_module(name: str, text: str):
    """Write (if needed) and import `fusegrad_kernels.<name>` holding `text`.
    Returns (module, cache_hit): a hit means the file was already there with this content."""
    _package()
    path = cache_dir() / f"{name}.py"
    written = _write_once(path, text)
    full = f"{PACKAGE}.{name}"
    module = sys.modules.get(full)
    if module is not None and not written:
        return module, True
    spec = importlib.util.spec_from_file_location(full, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    return module, not written
