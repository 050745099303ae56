"""Writing a file so that a reader (or a crash) sees the old file or the whole new one.

    write_atomic(path, lambda f: f.write(data), sync=True)

The data goes to a temporary file created exclusively (random name, O_EXCL, mode 0600, never
through a symlink) in the same folder, is flushed (and with `sync`, fsynced), then renamed over
`path`. On any error, KeyboardInterrupt included, the temporary file is removed and `path` is
untouched.
"""
from __future__ import annotations

import os
import tempfile


def write_atomic(path, write, sync: bool = False) -> None:
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                               suffix=os.path.splitext(path)[1] or ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
