"""The reference compiler: the same kernel text compiled by Numba (FUSEGRAD_KERNEL_COMPILER=numba).

Kernel-language text is valid Numba (kernel_lang.kernel compiles it into a cfunc with the same
entry signature), so a program can run with every kernel compiled by Numba instead of by
compiler/native: the oracle the native compiler is tested against (tests/test_native.py), and a
way to tell a native-compiler bug from a code-generator bug. Slow (Numba's front end: 0.1-1 s a
kernel) and not cached.
"""
from __future__ import annotations

import types
import warnings


def numba_entry(name: str, text: str):
    """(entry address, module): `text` executed as a module, its kernel compiled by Numba.
    Keep the module alive as long as the address is used."""
    from numba.core.errors import NumbaPerformanceWarning

    module = types.ModuleType(f"fusegrad_reference.{name}")
    with warnings.catch_warnings():  # np.dot on transposed views: expected, and only a reference
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        exec(compile(text, f"<kernel {name}>", "exec"), module.__dict__)  # noqa: S102 - ours
        return getattr(module, name).address, module
