"""What a fresh page costs on this machine: why an allocator that hands memory back is slow here.

    python benchmarks/page_cost.py                 # 4 x 512 MiB per point, 5 rounds

A training step with the system allocator maps, touches and unmaps gigabytes of tensors
(benchmarks/memory.py counts their page faults). This measures the bytes alone, three ways
interleaved round by round so load on a shared machine hits all alike:

- `fresh 4 KiB`: mmap, write one byte per 4 KiB page, munmap (the kernel faults in and zeroes
  every page, as for a freed-and-reallocated tensor);
- `fresh 2 MiB`: the same with `madvise(MADV_HUGEPAGE)` (transparent huge pages: 512x fewer
  faults, the same bytes to zero);
- `reused`: write every byte of one mapping that is already resident (what a caching
  allocator's reused block costs; a full write, so it is the upper bound of a tensor's write).

Reports the medians in GB/s, the page faults and kernel CPU time per GB. Results:
benchmarks/results/page_cost.json and page_cost.md.
"""

import argparse
import mmap
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

PAGE = 4096


def _fresh(nbytes, huge):
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        m.madvise(mmap.MADV_HUGEPAGE)
    view = np.frombuffer(m, dtype=np.uint8)
    view[::PAGE] = 1
    del view
    m.close()


def _measure(fn, count):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(count):
        fn()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return seconds, after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="size of one mapping")
    parser.add_argument("--count", type=int, default=4, help="mappings per point")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    nbytes = args.mib << 20
    resident = np.ones(nbytes, dtype=np.uint8)  # touched once here: later writes reuse its pages
    points = {
        "fresh 4 KiB": lambda: _fresh(nbytes, huge=False),
        "fresh 2 MiB": lambda: _fresh(nbytes, huge=True),
        "reused": lambda: resident.fill(2),
    }
    samples = {name: [] for name in points}
    for _ in range(args.rounds):
        for name, fn in points.items():
            samples[name].append(_measure(fn, args.count))
    gigabytes = nbytes * args.count / 1e9
    results, rows = {}, ["| point | GB/s | page faults per GB | kernel CPU s per GB |", "|---|---|---|---|"]
    for name, runs in samples.items():
        seconds = statistics.median(r[0] for r in runs)
        faults = statistics.median(r[1] for r in runs) / gigabytes
        system = statistics.median(r[2] for r in runs) / gigabytes
        results[name] = {"gb_per_s": gigabytes / seconds, "faults_per_gb": faults, "system_s_per_gb": system}
        rows.append(f"| {name} | {gigabytes / seconds:.2f} | {faults:,.0f} | {system:.3f} |")
    meta = {"mib": args.mib, "count": args.count, "rounds": args.rounds}
    write_results("page_cost", meta, results, "\n".join(rows))


if __name__ == "__main__":
    main()
