"""Keep freed host memory in the process (glibc malloc), so per-step tensors stop page-faulting.

Why: a CPU training step of the embedded default allocates and frees ~460 MB of short-lived tensors (logits
[B, L, V], the loss's softmax and its gradient, the parameter gradients). glibc hands every block over its mmap
threshold back to the kernel on free and trims the heap top above 128 KiB, so each step faults the same memory
in again: 117k minor faults and ~0.17 s of kernel time per 1.5 s step (bench/README.md, "... host memory ..."). Raising
the mmap threshold and the trim threshold keeps those blocks in the heap for the next step (a step of 1.53 s
became 1.35 s, no fault after the first steps). The price is a resident set that stays at its peak: what a
training worker or a teacher replica holds anyway.

``DSKD_MALLOC_KEEP=0`` turns it off (a reserved environment name, like ``DSKD_CPU_BF16``). A no-op where the C
library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_INT_MAX = 2**31 - 1  # mallopt takes an int: the largest threshold it can express (2 GiB)
_TOP_PAD = 64 * 2**20  # grow the heap in 64 MiB steps: fewer brk calls while the first steps reach the peak

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc malloc to keep freed blocks in the heap (once per process); True when it took effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("DSKD_MALLOC_KEEP", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    settings = ((_M_MMAP_THRESHOLD, _INT_MAX), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_TOP_PAD, _TOP_PAD))
    _applied = all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in settings)
    return _applied
