"""Keep freed memory in the process, so that a CPU step does not page-fault its activations in again.

Why: glibc's malloc hands every block above its mmap threshold (at most 32 MiB by default) to the
OS on `free`, and trims the top of its heap back whenever more than 128 KiB of it is free. A training
step on a CPU allocates and frees the same large activations every step (the demo tower's first conv
at batch 64 writes 32 MiB), so each step maps fresh pages, and the kernel zeroes each one on its first
touch. Raising both thresholds keeps that memory for the next step: the demo's CLIP stage ran 1.2x as
fast (60 steps, two threads, AMD EPYC; docs/experiments.md), with the same values. The field's usual
fix is preloading jemalloc or tcmalloc (PyTorch's CPU performance guide); `mallopt` gets the same
effect with neither a library to install nor a launcher to change. The cost: the process's resident
memory stays near its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 256 << 20  # blocks larger than this still go straight to the OS
TRIM_THRESHOLD = 512 << 20  # free memory at the heap's top kept for reuse


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (above). Whether it applied: only on Linux with glibc;
    elsewhere (macOS, musl, Windows) it does nothing, and their allocators are left as they are."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
