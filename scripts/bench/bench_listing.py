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


def measure(name: str, argv: list[str], mnt: Path, listed: str, log: Path) -> list[str]:
    mnt.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=f)
    lines = []
    try:
        wait_mounted(mnt, proc)
        runs = [time_ls(mnt / listed) for _ in range(3)]
        for i, (took, n) in enumerate(runs):
            lines.append(f"{name:8} {'cold' if i == 0 else 'warm'} {n:>7,} entries "
                         f"{took:8.3f} s  {took / n * 1e6:7.2f} us/entry")
    finally:
        stop(mnt, proc)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="32,100,316", help="chunk grids (N x N chunks)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vchunkfs-bench-listing"))
    args = ap.parse_args()
    env_py = sys.executable
    for grid in (int(g) for g in args.sizes.split(",")):
        built = make_million.build(args.dir / f"g{grid}", grid=grid, files=4, verbose=False)
        n = built.num_chunks
        flat = args.dir / f"flat{n}"
        if not flat.is_dir():
            flat.mkdir(parents=True)
            for i in range(n):
                (flat / f"{i // grid}.{i % grid}").touch()
        out = measure("vchunkfs", [env_py, "-m", "vchunkfs.cli.mount", str(built.repo_path),
                                   str(args.dir / "mnt"), "-o",
                                   f"foreground,presentation=v2,authorize={built.container_prefix}"],
                      args.dir / "mnt", "arr", args.dir / "vchunkfs.log")
        out += measure("nullfs", [env_py, str(HERE / "nullfs.py"), str(flat),
                                  str(args.dir / "nullmnt")],
                       args.dir / "nullmnt", "", args.dir / "nullfs.log")
        for line in out:
            print(line, flush=True)


if __name__ == "__main__":
    main()
