"""How the process's allocators hand freed memory back to the system, and reuse its pages.

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

Blocks of 256 KiB or more then come from fresh mappings, which the kernel faults in and zeroes:
at 232x310 that took a fifth of the step. `kdepth fit` therefore runs with kdepth's page pool
(`kdepth/native/pagepool.c`) preloaded in front of malloc: it keeps the pages of freed large
blocks and moves them into the next ones whatever their sizes, and never holds more than the
most that was live at once. `exec_with_page_pool` builds it with the C compiler (once, into the
user's cache) and restarts the process with it in `LD_PRELOAD`; `KDEPTH_PAGE_POOL=0` turns it off.
"""

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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


PAGE_POOL_ENV = "KDEPTH_PAGE_POOL"
PAGE_POOL_SOURCE = Path(__file__).resolve().parent / "native" / "pagepool.c"
PAGE_POOL_STATS = ("reused_bytes", "fresh_bytes", "high_bytes", "pooled_bytes", "live_bytes", "regions")
_TRIED_ENV = "_KDEPTH_PAGE_POOL_TRIED"  # set by exec_with_page_pool: a restarted process never restarts again


def page_pool_wanted():
    """Whether this process may use the page pool: Linux, and `KDEPTH_PAGE_POOL` is not 0."""
    return sys.platform.startswith("linux") and os.environ.get(PAGE_POOL_ENV, "1").strip() != "0"


def _cache_dir():
    root = os.environ.get("KDEPTH_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdepth"
    return Path(root) / "native"


def page_pool_library():
    """The page pool's shared library, compiled from `PAGE_POOL_SOURCE` on first use.

    Compiled with `$CC` (default `cc`) into `$KDEPTH_CACHE_DIR/native` (default
    `~/.cache/kdepth/native`) under a name holding the source's hash, so an edited source is
    rebuilt and a concurrent process never sees a half-written file.

    Returns:
        The library's path.

    Raises:
        OSError: not Linux, no C compiler, or the compiler failed (its message included).
    """
    if not sys.platform.startswith("linux"):
        raise OSError(f"the page pool needs Linux (mremap); this is {sys.platform}")
    source = PAGE_POOL_SOURCE.read_bytes()
    path = _cache_dir() / f"pagepool-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if path.exists():
        return path
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler {compiler!r} on PATH to build the page pool; install one (e.g. gcc) or set CC")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        command = [compiler, "-O2", "-shared", "-fPIC", str(PAGE_POOL_SOURCE), "-o", str(built), "-lpthread", "-ldl"]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"{compiler} could not build the page pool from {PAGE_POOL_SOURCE}: {proc.stderr.strip()[-600:]}")
        os.replace(built, path)
    return path


def page_pool_stats():
    """The preloaded page pool's counters, {name: int} for each of `PAGE_POOL_STATS`; None if it is not loaded."""
    try:
        stats = ctypes.CDLL(None).kdepth_page_pool_stats
    except (OSError, AttributeError):
        return None
    out = (ctypes.c_double * len(PAGE_POOL_STATS))()
    stats(out)
    return dict(zip(PAGE_POOL_STATS, (int(v) for v in out), strict=True))


def exec_with_page_pool(argv):
    """Restarts this process with the page pool preloaded, unless it has it or may not use it.

    Call it first thing (it replaces the process through `os.execve`, with the same Python and
    `argv`). It returns without restarting when the pool is loaded already, `page_pool_wanted()`
    is False, this process was restarted for it once already, or the library cannot be built; in
    that last case it says why on stderr and the process runs without the pool (a step up to
    about 1.25x slower at 232x310, docs/performance.md).

    Args:
        argv: the arguments after the interpreter, e.g. `sys.argv` of a console script.
    """
    if page_pool_stats() is not None or not page_pool_wanted() or os.environ.get(_TRIED_ENV):
        return
    try:
        library = page_pool_library()
    except OSError as err:
        print(f"warning: kdepth runs without its page pool: {err}. Set {PAGE_POOL_ENV}=0 to not try.", file=sys.stderr)
        return
    preload = " ".join(p for p in (str(library), os.environ.get("LD_PRELOAD", "")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], {**os.environ, "LD_PRELOAD": preload, _TRIED_ENV: "1"})
