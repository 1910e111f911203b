#!/usr/bin/env python3
"""The daemon's memory against its budget (``cache_size=``) under random reads.

Builds (once) a local repository with one uint8 array of ``--chunks`` native chunks of
256 KiB (random bytes, no compression), mounts it with ``cache_size=BUDGET`` (each of
``--budgets``, default 8M and 64M), and runs ``--readers`` threads for ``--seconds``
reading whole chunk files and random byte ranges of them in random order, each read
checked against the array's bytes; after each read the file's pages are dropped
from the page cache (``POSIX_FADV_DONTNEED``), so every read reaches the daemon. The
daemon's RSS is sampled every 0.1 s; the baseline is its RSS once mounted and after
reading the array's metadata. Prints peak RSS, peak minus baseline against the
budget, and bytes fetched by the daemon against bytes returned (``user.vchunkfs.stats``).

Usage::

    python scripts/bench/bench_memory.py [--budgets 8M,64M] [--readers 8] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("ICECHUNK_LOG", "error")

import icechunk as ic
import numpy as np
import zarr

CHUNK = 256 * 1024


def build(directory: Path, chunks: int) -> tuple[Path, np.ndarray]:
    values = np.random.default_rng(1).integers(0, 256, chunks * CHUNK, dtype=np.uint8)
    repo = directory / f"repo{chunks}"
    if not repo.exists():
        r = ic.Repository.create(ic.local_filesystem_storage(str(repo)))
        s = r.writable_session("main")
        zarr.create_array(s.store, name="a", shape=values.shape, chunks=(CHUNK,),
                          dtype="u1", compressors=None, fill_value=0)[:] = values
        s.commit("random bytes")
    return repo, values


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def run(repo: Path, values: np.ndarray, budget: str, mnt: Path, readers: int,
        seconds: float, log: Path) -> None:
    mnt.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "vchunkfs.cli.mount", str(repo),
                                 str(mnt), "-o", f"foreground,cache_size={budget}"],
                                stdout=f, stderr=f)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not mount")
            time.sleep(0.05)
        (mnt / "a" / "zarr.json").read_bytes()
        time.sleep(0.5)
        baseline = rss_kb(proc.pid)
        n = len(values) // CHUNK
        stop = time.monotonic() + seconds
        returned = [0]
        errors: list[str] = []
        peak = [baseline]
        lock = threading.Lock()

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                i = rng.randrange(n)
                path = mnt / "a" / "c" / str(i)
                off, ln = (0, CHUNK) if rng.random() < 0.5 else (
                    rng.randrange(CHUNK), 0)
                ln = ln or rng.randrange(1, CHUNK - off + 1)
                with open(path, "rb") as fh:
                    data = os.pread(fh.fileno(), ln, off)
                    # forget this file's pages: every read reaches the daemon
                    os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                want = values[i * CHUNK + off:i * CHUNK + off + ln].tobytes()
                with lock:
                    returned[0] += len(data)
                    if data != want:
                        errors.append(str(path))

        def sampler() -> None:
            while time.monotonic() < stop + 0.5:
                peak[0] = max(peak[0], rss_kb(proc.pid))
                time.sleep(0.1)

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(readers)]
        threads.append(threading.Thread(target=sampler))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = json.loads(os.getxattr(mnt, "user.vchunkfs.stats"))
        mib = 1024
        print(f"cache_size={budget}: baseline {baseline / mib:.0f} MiB, peak {peak[0] / mib:.0f} "
              f"MiB, peak - baseline {(peak[0] - baseline) / mib:.0f} MiB; returned "
              f"{returned[0] / 2**20:.0f} MiB, fetched {stats['fetched_bytes'] / 2**20:.0f} MiB "
              f"({stats['fetched_bytes'] / max(returned[0], 1):.2f}x), mismatches {len(errors)}, "
              f"daemon {'alive' if proc.poll() is None else 'EXITED'}", flush=True)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)  # only the daemon this script started
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="8M,64M")
    ap.add_argument("--chunks", type=int, default=400)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vchunkfs-bench-memory"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    repo, values = build(args.dir, args.chunks)
    for budget in args.budgets.split(","):
        run(repo, values, budget, args.dir / "mnt", args.readers, args.seconds,
            args.dir / "daemon.log")


if __name__ == "__main__":
    main()
