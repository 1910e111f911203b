"""Cold lookups and reads through a fresh mount: stat every chunk file, then read each one.

The page cache is dropped before each fresh mount (root only). Uses the OISST month
that scripts/bench/bench_mount.py builds (default paths below).

Usage: python scripts/bench/bench_cold_stat_read.py [--repo DIR] [--data DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIABLES = ("sst", "anom", "err", "ice")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default="/tmp/vchunkfs-bench-oisst/days31/repo")
    p.add_argument("--data", default="/tmp/vchunkfs-bench-oisst/nc")
    p.add_argument("--days", type=int, default=31)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    prefix = Path(args.data).resolve().as_uri() + "/"
    mp = Path(tempfile.mkdtemp(prefix="vchunkfs-cold-"))
    keys = [f"{v}/c/{t}/0/0/0" for v in VARIABLES for t in range(args.days)]
    stats, reads = [], []
    for _ in range(args.runs):
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        subprocess.run([sys.executable, "-m", "vchunkfs.cli.mount", args.repo, str(mp), "-o",
                        f"authorize={prefix}"], check=True,
                       env={**os.environ, "ICECHUNK_LOG": "error"})
        try:
            t0 = time.perf_counter()
            for k in keys:
                os.stat(mp / k)
            t1 = time.perf_counter()
            total = sum(len((mp / k).read_bytes()) for k in keys)
            t2 = time.perf_counter()
        finally:
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)
        stats.append(t1 - t0)
        reads.append(t2 - t1)
    mp.rmdir()
    print(f"{len(keys)} chunk files, {total / 1e6:.1f} MB, {args.runs} fresh mounts (median)")
    print(f"stat every file: {statistics.median(stats) * 1000:.0f} ms")
    print(f"read every file: {statistics.median(reads) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
