"""kdepth's page pool (kdepth/native/pagepool.c): freed large blocks' pages move into the next ones.

Each test runs a small Python probe in a fresh process with the library preloaded, as
`kdepth fit` runs (`kdepth.allocator.exec_with_page_pool`).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from kdepth import allocator
from kdepth.cli import _command

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which(os.environ.get("CC", "cc")) is None,
    reason="the page pool is built with a C compiler and needs Linux",
)

MIB = 2**20

# Allocates, touches and frees numpy arrays phase by phase as argv[1] (JSON) says; prints the
# pool's counters before and after each phase, each phase's minor page faults, and whether every
# array read back what was written.
PROBE = """
import json, resource, sys
import numpy as np
from kdepth.allocator import page_pool_stats

phases = json.loads(sys.argv[1])
ok, faults, stats = True, [], [page_pool_stats()]
for phase in phases:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    arrays = [np.full(mib * 2**20 // 8, float(i)) for i, mib in enumerate(phase)]
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    ok = ok and all(a[0] == a[-1] == float(i) for i, a in enumerate(arrays))
    del arrays
    stats.append(page_pool_stats())
print(json.dumps({"stats": stats[-1], "phases": stats, "faults": faults, "ok": bool(ok)}))
"""


def _delta(out, phase, key):
    """How much counter `key` grew during phase number `phase` (from 0)."""
    return out["phases"][phase + 1][key] - out["phases"][phase][key]


@pytest.fixture(scope="module")
def pool_env(tmp_path_factory):
    """The environment of a process with the page pool preloaded (built into a fresh cache)."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "KDEPTH_CACHE_DIR": str(cache)}
    old = os.environ.get("KDEPTH_CACHE_DIR")
    os.environ["KDEPTH_CACHE_DIR"] = str(cache)
    try:
        library = allocator.page_pool_library()
    finally:
        if old is None:
            del os.environ["KDEPTH_CACHE_DIR"]
        else:
            os.environ["KDEPTH_CACHE_DIR"] = old
    return {**env, "LD_PRELOAD": str(library)}


def _probe(env, phases, code=PROBE):
    env = {**env, "NUMPY_MADVISE_HUGEPAGE": "0"}  # 4 KiB pages, so that page faults count pages
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(phases)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_library_is_built_once_into_the_cache(pool_env, monkeypatch):
    monkeypatch.setenv("KDEPTH_CACHE_DIR", pool_env["KDEPTH_CACHE_DIR"])
    path = allocator.page_pool_library()
    assert str(path) == pool_env["LD_PRELOAD"] and path.parent.name == "native"
    built = path.stat().st_mtime_ns
    assert allocator.page_pool_library() == path and path.stat().st_mtime_ns == built


def test_freed_pages_make_blocks_of_other_sizes_without_page_faults(pool_env):
    # 64 MiB freed, then 40 + 24 MiB: the second phase is made of the first's pages
    out = _probe(pool_env, [[64], [40, 24]])
    assert out["ok"]
    assert _delta(out, 0, "fresh_bytes") == 64 * MIB  # the first phase asked the system for its pages
    assert _delta(out, 1, "fresh_bytes") == 0 and _delta(out, 1, "reused_bytes") == 64 * MIB  # the second reused them
    pages = 64 * MIB // 4096
    assert out["faults"][1] < 0.05 * pages < 0.9 * pages < out["faults"][0]
    without = _probe({**pool_env, "KDEPTH_PAGE_POOL": "0"}, [[64], [40, 24]])
    assert without["stats"]["fresh_bytes"] == without["stats"]["reused_bytes"] == 0  # turned off
    assert without["faults"][1] > 0.9 * pages


def test_pool_never_holds_more_than_was_live(pool_env):
    phases = [[8, 3, 20], [1, 1, 30, 2], [17, 5], [1, 33, 9, 9], [25]]
    out = _probe(pool_env, phases)
    assert out["ok"]
    start, stats = out["phases"][0], out["stats"]  # start: what importing numpy left live
    most_live = start["live_bytes"] + max(sum(phase) for phase in phases) * MIB
    assert most_live <= stats["high_bytes"] <= max(start["high_bytes"], most_live) + 8 * 4096  # page rounding
    assert stats["live_bytes"] == start["live_bytes"] and stats["pooled_bytes"] <= stats["high_bytes"] - stats["live_bytes"]


# calloc, realloc and threads through the C API, checked byte by byte.
C_API_PROBE = """
import ctypes, json, sys, threading
from kdepth.allocator import page_pool_stats
start = page_pool_stats()
libc = ctypes.CDLL(None)
for name in ("malloc", "calloc", "realloc"):
    getattr(libc, name).restype = ctypes.c_void_p
libc.calloc.argtypes = (ctypes.c_size_t, ctypes.c_size_t)
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.realloc.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
libc.free.argtypes = (ctypes.c_void_p,)
n = 3 << 20
p = libc.malloc(n); ctypes.memset(p, 0xAB, n); libc.free(p)         # dirty pages into the pool
z = libc.calloc(1, n)
zero = ctypes.string_at(z, n) == bytes(n)
libc.free(z)
s = libc.malloc(100); ctypes.memset(s, 7, 100)
big = libc.realloc(s, 2 << 20)                                         # small -> large keeps the bytes
kept = ctypes.string_at(big, 100) == b"\\x07" * 100
small = libc.realloc(big, 50)                                          # large -> small keeps them too
kept = kept and ctypes.string_at(small, 50) == b"\\x07" * 50
libc.free(small)
errors = []
def work(seed):
    for i in range(200):
        size = (1 + (seed * 7 + i * 13) % 40) << 18
        q = libc.malloc(size); ctypes.memset(q, seed, size)
        if ctypes.string_at(q + size - 1, 1) != bytes([seed]) or ctypes.string_at(q, 1) != bytes([seed]):
            errors.append(seed)
        libc.free(q)
threads = [threading.Thread(target=work, args=(s,)) for s in range(1, 5)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps({"zero": zero, "kept": kept, "errors": errors, "start": start, "stats": page_pool_stats()}))
"""


def test_calloc_realloc_and_threads_keep_their_bytes(pool_env):
    out = _probe(pool_env, [], code=C_API_PROBE)
    assert out["zero"] and out["kept"] and out["errors"] == []
    assert out["stats"]["reused_bytes"] > out["start"]["reused_bytes"]
    assert out["stats"]["live_bytes"] == out["start"]["live_bytes"]  # every block freed went back


RESTART_PROBE = """
import os, sys
from kdepth.allocator import exec_with_page_pool, page_pool_stats
print("start", flush=True)
exec_with_page_pool(sys.argv)
print("pool" if page_pool_stats() is not None else "no pool")
"""


@pytest.mark.parametrize("env, lines, warned", [
    ({}, ["start", "start", "pool"], False),                       # restarted once, with the pool
    ({"KDEPTH_PAGE_POOL": "0"}, ["start", "no pool"], False),       # the user turned it off
    ({"CC": "no-such-compiler"}, ["start", "no pool"], True),      # cannot build: says so, runs on
])
def test_exec_with_page_pool_restarts_once_with_it_preloaded(tmp_path, env, lines, warned):
    script = tmp_path / "probe.py"
    script.write_text(RESTART_PROBE)
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KDEPTH_PAGE_POOL", "_KDEPTH_PAGE_POOL_TRIED")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**base, "KDEPTH_CACHE_DIR": str(tmp_path / "cache"), **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:-1] == lines
    assert ("runs without its page pool: no C compiler 'no-such-compiler'" in proc.stderr) == warned


def test_only_fit_restarts_for_the_pool():
    assert _command(["--tf-log", "fit", "--stage", "1"]) == "fit"
    assert _command(["predict", "--model", "m.tflite", "fit.jpg"]) == "predict"
    assert _command(["--version"]) is None
