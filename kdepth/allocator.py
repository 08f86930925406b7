"""How the process's C allocator hands freed memory back to the system.

TensorFlow's CPU tensors come from the C library's malloc. glibc's malloc serves a block from
its heaps, and keeps the pages of freed blocks, unless the block is at least its mmap
threshold, which starts at 128 KiB and rises (up to 32 MiB) each time a larger mmapped block is
freed. A training step frees and re-allocates gigabytes of tensors of a few MiB each, so after
the first ones glibc keeps their freed pages in its heaps and the process holds more than it
uses. A fixed threshold returns every freed block of that size or more to the system at once
(stage 1 at 232x310 in float32: peak resident memory 6.31 GB instead of 6.61 GB at the same
step time, docs/performance.md).
"""

import ctypes
import ctypes.util
import sys

THRESHOLD_BYTES = 256 * 1024  # tensors' buffers are mostly far larger; Python's small objects stay in the heaps
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def return_freed_memory(threshold=THRESHOLD_BYTES):
    """Makes malloc give blocks of `threshold` bytes or more back to the system when freed.

    Sets glibc's mmap and trim thresholds to `threshold` (which also stops glibc raising them);
    it applies to every later allocation of the process. Elsewhere (macOS, musl) it does nothing.

    Args:
        threshold: block size in bytes, at least 4096.

    Returns:
        True if the C library took the setting, False if it has no such setting.
    """
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 4096:
        raise ValueError(f"threshold={threshold!r} is not valid; it must be an integer number of bytes >= 4096.")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success, 0 for a parameter it does not know (musl's stub always 0).
    return mallopt(_M_MMAP_THRESHOLD, threshold) == 1 and mallopt(_M_TRIM_THRESHOLD, threshold) == 1
