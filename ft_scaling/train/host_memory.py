"""Keeps freed host memory in the process, so a CPU train step does not page-fault every step.

XLA:CPU allocates a step's activations and temporaries with the C allocator and frees them at
the end of the step. glibc serves blocks above 32 MiB with fresh `mmap`s and unmaps them on
free, and trims the heap top back to the OS, so every step touches its activation memory for
the first time again: on the 25M benchmark model (benchmarks/README.md) a non-donated AdamW step
took 5.4 s instead of 2.5 s. Turning off mmap-served blocks and heap trimming keeps the pages;
the process's resident size then stays at its peak, which is what a training process holds
anyway. Accelerator memory is unaffected. No-op outside glibc.
"""

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the largest threshold it accepts


@functools.cache
def keep_freed_memory() -> bool:
    """Applies the glibc settings once per process; True if they took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
