#!/usr/bin/env python3
"""Listing one big directory: ``ls -f`` of a ``v2`` array directory of 1k, 10k and 100k
chunk files through vchunkfs, against the do-nothing pyfuse3 filesystem (nullfs.py)
listing a directory of as many files.

For each size it builds (once) a repository with make_million.py (grids 32, 100 and 316:
1,024, 10,000 and 99,856 chunks), mounts it with ``presentation=v2`` and times
``ls -f MNT/arr`` three times: the first listing (cold: the daemon builds the array's
chunk index) and two more (warm). nullfs serves a flat directory of as many empty files.
Prints one line per size and daemon, with the time per entry.

Usage::

    python scripts/bench/bench_listing.py [--sizes 32,100,316] [--dir /tmp/vchunkfs-bench-listing]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_million  # noqa: E402


def wait_mounted(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc.poll() is not None:
            raise SystemExit(f"daemon for {path} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} not mounted after {timeout} s")
        time.sleep(0.05)


def stop(path: Path, proc: subprocess.Popen[bytes]) -> None:
    subprocess.run(["fusermount3", "-u", str(path)], capture_output=True)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)  # only the daemon this script started
        proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def time_ls(directory: Path) -> tuple[float, int]:
    t = time.perf_counter()
    r = subprocess.run(["ls", "-f", str(directory)], capture_output=True, check=True)
    took = time.perf_counter() - t
    return took, len(r.stdout.splitlines())


def measure(argv: list[str], mnt: Path, listed: str, log: Path) -> tuple[int, float, float]:
    """Entries, cold seconds, warm seconds (the better of two) of one fresh mount."""
    mnt.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=f)
    try:
        wait_mounted(mnt, proc)
        runs = [time_ls(mnt / listed) for _ in range(3)]
    finally:
        stop(mnt, proc)
    return runs[0][1], runs[0][0], min(runs[1][0], runs[2][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="32,100,316", help="chunk grids (N x N chunks)")
    ap.add_argument("--runs", type=int, default=3, help="fresh mounts per size and daemon")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vchunkfs-bench-listing"))
    args = ap.parse_args()
    env_py = sys.executable
    contestants: dict[tuple[str, int], tuple[list[str], Path, str, Path]] = {}
    grids = [int(g) for g in args.sizes.split(",")]
    for grid in grids:
        built = make_million.build(args.dir / f"g{grid}", grid=grid, files=4, verbose=False)
        n = built.num_chunks
        flat = args.dir / f"flat{n}"
        if not flat.is_dir():
            flat.mkdir(parents=True)
            for i in range(n):
                (flat / f"{i // grid}.{i % grid}").touch()
        contestants["vchunkfs", grid] = (
            [env_py, "-m", "vchunkfs.cli.mount", str(built.repo_path), str(args.dir / "mnt"),
             "-o", f"foreground,presentation=v2,authorize={built.container_prefix}"],
            args.dir / "mnt", "arr", args.dir / "vchunkfs.log")
        contestants["nullfs", grid] = (
            [env_py, str(HERE / "nullfs.py"), str(flat), str(args.dir / "nullmnt")],
            args.dir / "nullmnt", "", args.dir / "nullfs.log")
    samples: dict[tuple[str, int], list[tuple[int, float, float]]] = {k: [] for k in contestants}
    order = list(contestants)
    for r in range(args.runs):
        for key in order[r % len(order):] + order[:r % len(order)]:  # in turns, rotating
            samples[key].append(measure(*contestants[key]))
    print(f"{'daemon':8} {'entries':>8} {'cold s':>8} {'us/entry':>9} {'marginal':>9} "
          f"{'warm s':>8} {'us/entry':>9} {'marginal':>9}")
    for name in ("vchunkfs", "nullfs"):
        prev: tuple[int, float, float] | None = None
        for grid in grids:
            got = samples[name, grid]
            n = got[0][0]
            cold = statistics.median(c for _, c, _ in got)
            warm = statistics.median(w for _, _, w in got)
            marg = ("", "") if prev is None else (
                f"{(cold - prev[1]) / (n - prev[0]) * 1e6:9.2f}",
                f"{(warm - prev[2]) / (n - prev[0]) * 1e6:9.2f}")
            print(f"{name:8} {n:>8,} {cold:8.3f} {cold / n * 1e6:9.2f} {marg[0]:>9} "
                  f"{warm:8.3f} {warm / n * 1e6:9.2f} {marg[1]:>9}", flush=True)
            prev = (n, cold, warm)


if __name__ == "__main__":
    main()
