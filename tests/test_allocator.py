"""kdepth.allocator: freed tensor-sized blocks go back to the system, which glibc alone keeps."""

import subprocess
import sys

import pytest

from kdepth.allocator import return_freed_memory

# Frees 299 of 300 blocks of 1 MiB (the last one pins the heap's top) after a freed 1 MiB block
# has raised glibc's dynamic mmap threshold above their size; prints the MiB still resident.
PROBE = """
import sys
import numpy as np
from kdepth.allocator import return_freed_memory

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

if sys.argv[1] == "release":
    assert return_freed_memory()
warm = np.ones((1 << 20) // 8)
del warm
before = rss()
blocks = [np.ones((1 << 20) // 8) for _ in range(300)]
last = blocks[-1]
del blocks
print((rss() - before) / 2**20)
"""


def _held_mib(mode):
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_go_back_to_the_system():
    held_default, held_released = _held_mib("default"), _held_mib("release")
    assert held_default > 250  # glibc alone keeps the 299 freed MiB
    assert held_released < 20  # only the pinned block and noise


@pytest.mark.parametrize("threshold", [0, 100, -1, 2.5e5, True])
def test_bad_threshold_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        return_freed_memory(threshold)
