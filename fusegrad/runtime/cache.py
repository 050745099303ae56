"""The disk cache: compiled kernel objects and compiled programs, safe to trust.

    FUSEGRAD_CACHE_DIR   default ~/.cache/fusegrad (per user)

    <root>/v2/objects/<kernel name>-<key>.o     one kernel's machine code, per machine
    <root>/v2/programs/<key>.json               a CompiledProgram (data only)

What it guarantees:
- The folders are the user's own and private (created 0700; files 0600). A cache folder another
  user owns, or one others may write to, is refused with a CacheError saying how to fix it:
  fusegrad runs machine code from this folder.
- Every file carries the SHA-256 of its contents and the key it was stored under; a file that
  does not match (truncated, corrupted, from another version) is a miss: it is removed and
  recompiled, never loaded. Programs are JSON: reading one executes nothing.
- Files are written to a temporary file created exclusively (random name, O_EXCL, never through
  a symlink) in the same folder, then renamed over the target: a reader sees the old file or the
  whole new one. Two threads or processes writing the same entry both succeed.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from .. import config
from . import files

VERSION = "v2"
_MAGIC = b"FUSEGRAD-OBJECT-1\n"


class CacheError(RuntimeError):
    """The cache folder cannot be used safely."""


def _check_private(path: Path) -> None:
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise CacheError(f"the fusegrad cache folder {path} belongs to another user (uid "
                         f"{st.st_uid}); fusegrad runs machine code from it, so it must be "
                         f"yours. Set FUSEGRAD_CACHE_DIR to a folder of your own.")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(f"the fusegrad cache folder {path} may be written by other users "
                         f"(mode {stat.S_IMODE(st.st_mode):o}); fusegrad runs machine code "
                         f"from it. Fix: chmod 700 {path} (or set FUSEGRAD_CACHE_DIR to a "
                         f"private folder).")


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(path)
    return path


def root() -> Path:
    base = Path(config.get("FUSEGRAD_CACHE_DIR"))
    _private_dir(base)
    return _private_dir(base / VERSION)


def folder(kind: str) -> Path:
    return _private_dir(root() / kind)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through an exclusive temporary file and a rename (files.py)."""
    files.write_atomic(path, lambda f: f.write(data))


def _read(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _discard(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---- kernel objects ---------------------------------------------------------------------------

def object_path(name: str, key: str) -> Path:
    return folder("objects") / f"{name[:40]}-{key[:24]}.o"


def store_object(name: str, key: str, obj: bytes, meta: dict) -> None:
    header = dict(meta, key=key, name=name, sha256=hashlib.sha256(obj).hexdigest())
    write_atomic(object_path(name, key), _MAGIC + json.dumps(header).encode() + b"\n" + obj)


def load_object(name: str, key: str):
    """(object bytes, metadata) for this key, or (None, why not)."""
    path = object_path(name, key)
    data = _read(path)
    if data is None:
        return None, "not on disk"
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("not a fusegrad object file")
        line_end = data.index(b"\n", len(_MAGIC))
        meta = json.loads(data[len(_MAGIC):line_end])
        obj = data[line_end + 1:]
        if meta.get("key") != key or hashlib.sha256(obj).hexdigest() != meta.get("sha256"):
            raise ValueError("contents do not match their checksum")
    except (ValueError, json.JSONDecodeError) as exc:
        _discard(path)
        return None, f"{path.name} was unusable ({exc}) and was removed"
    return obj, meta


# ---- compiled programs ------------------------------------------------------------------------

def program_path(key: str) -> Path:
    return folder("programs") / f"{key[:40]}.json"


def store_program(key: str, text: str) -> None:
    body = text.encode()
    header = json.dumps({"key": key, "sha256": hashlib.sha256(body).hexdigest()}).encode()
    write_atomic(program_path(key), header + b"\n" + body)


def load_program(key: str):
    """(program JSON text, "") or (None, why not)."""
    path = program_path(key)
    data = _read(path)
    if data is None:
        return None, "not on disk"
    try:
        line_end = data.index(b"\n")
        header = json.loads(data[:line_end])
        body = data[line_end + 1:]
        if header.get("key") != key or hashlib.sha256(body).hexdigest() != header.get("sha256"):
            raise ValueError("contents do not match their checksum")
        return body.decode(), ""
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        _discard(path)
        return None, f"{path.name} was unusable ({exc}) and was removed"


# ---- generated Python modules (the CUDA backend's kernels and driver) -------------------------

def load_python_module(prefix: str, text: str):
    """Write `text` to <root>/v2/modules/<prefix>_<hash>.py (if needed) and execute it as a
    module. The file is read back and checked against `text` before anything runs, and the
    module is executed from that verified text, never from a bytecode file. Returns
    (module, was the file already there)."""
    import sys
    import types

    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    name = f"fusegrad_generated.{prefix}_{digest}"
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__fusegrad_source__", None) == text:
        return module, True
    path = folder("modules") / f"{prefix}_{digest}.py"
    existing = _read(path)
    hit = existing == text.encode()
    if not hit:
        write_atomic(path, text.encode())
        if _read(path) != text.encode():
            raise CacheError(f"{path} does not hold what fusegrad wrote to it")
    module = types.ModuleType(name)
    module.__file__ = str(path)  # Numba's cache locates a function's index by its file
    module.__fusegrad_source__ = text
    sys.modules[name] = module
    exec(compile(text, str(path), "exec"), module.__dict__)  # noqa: S102 - our own, verified
    return module, hit
