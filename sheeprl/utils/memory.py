"""The C heap of a training process: keep freed memory mapped for the tensors of the next step.

A training step allocates and frees the same tensors every time (activations, gradients, optimizer temporaries of
a few hundred KiB to a few MiB). glibc serves those above its mmap threshold (128 KiB at start, raised up to the
largest size freed) with fresh anonymous mappings, and returns free heap memory above its trim threshold to the
kernel, so the next step touches new pages: a SAC update on Pendulum (batch 256, 2x256) took ~45 page faults in
isolation and ~160 inside a whole run, 0.5-1.5 ms of a ~11 ms one-thread step. :func:`keep_freed_memory` raises both thresholds once,
so freed blocks stay in the heap and are reused; replay buffers and other blocks over 32 MiB still get mappings of
their own, returned to the kernel when freed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic threshold on 64-bit systems
TRIM_THRESHOLD = 256 << 20
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
applied = False  # whether this process's thresholds were raised (glibc has no getter to read them back)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds in this process; True when both were set.

    Does nothing (False) off Linux, without glibc's ``mallopt``, or when the user tuned the heap with glibc's
    ``MALLOC_*_`` environment variables (theirs win).
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap first: setting either one turns glibc's dynamic thresholds off, and it returns 1 on success.
    global applied
    applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return applied
