"""How the process's allocators hand freed memory back to the system.

With oneDNN on (TensorFlow's default on x86), TensorFlow's CPU tensors of 256 KiB and more come
from oneDNN's caching allocator (`MklCPUAllocator`, a BFC pool): it never gives a page back and
fragments, so a process keeps the most it ever held plus the gaps. Stage 1 at 232x310 held 1.2
GB after building the network whose weights are 0.69 GB, and peaked at 6.87 GB in float32 and
6.93 GB in mixed_bfloat16, against 6.38 and 5.69 GB with the system allocator
(docs/performance.md). `prefer_system_allocator` (called when kdepth is imported) sets
TensorFlow's `TF_ONEDNN_USE_SYSTEM_ALLOCATOR`, which sends those tensors to malloc; TensorFlow
reads it when it starts, so it only takes effect if kdepth is imported first.

Without that pool the tensors come from the C library's malloc. glibc's malloc serves a block from
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
import os
import sys

THRESHOLD_BYTES = 256 * 1024  # tensors' buffers are mostly far larger; Python's small objects stay in the heaps
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
SYSTEM_ALLOCATOR_ENV = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"

# Whether the oneDNN pool was turned off before TensorFlow started (set by prefer_system_allocator).
_system_allocator = None


def prefer_system_allocator():
    """Turns oneDNN's caching allocator off for this process unless the user chose a setting.

    Sets `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1` if it is unset. TensorFlow reads it when it starts,
    so this must run before TensorFlow is imported; `import kdepth` does it.

    Returns:
        True if TensorFlow will use (or, already started, was started with) the system allocator.
    """
    global _system_allocator
    if _system_allocator is None:
        started = "tensorflow" in sys.modules
        if not started:
            os.environ.setdefault(SYSTEM_ALLOCATOR_ENV, "1")
        _system_allocator = os.environ.get(SYSTEM_ALLOCATOR_ENV, "").strip().lower() in ("1", "true")
    return _system_allocator


def pool_warning():
    """A warning when TensorFlow started before kdepth could turn oneDNN's pool off, else None.

    None too when the user set `TF_ONEDNN_USE_SYSTEM_ALLOCATOR` themselves, either way.
    """
    if prefer_system_allocator() or SYSTEM_ALLOCATOR_ENV in os.environ:
        return None
    return (
        "warning: TensorFlow was imported before kdepth, so oneDNN's caching allocator keeps every tensor "
        "it frees: a training step then needs up to 1.2 GB more at 232x310 (docs/performance.md). Import kdepth "
        f"before tensorflow, or set {SYSTEM_ALLOCATOR_ENV}=1 before the process starts."
    )


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
