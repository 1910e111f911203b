#!/usr/bin/env python3
"""``cat`` of one large decoded chunk through ``v3-decoded``: time and the daemon's peak RSS.

Builds (once) a local repository with one int32 array stored as a single zstd chunk of
``--mib`` MiB decoded (default 128), mounts it with ``presentation=v3-decoded``, and
times reading ``MNT/big/c/0/0`` (first read: fetch + decode), then once more (a second
open: the daemon's caches), checking the bytes; prints the daemon's VmHWM. For
comparison it first times zarr-python reading the array (one fetch, one decode).

Usage::

    python scripts/bench/bench_decoded.py [--mib 128] [--dir /tmp/vchunkfs-bench-decoded]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("ICECHUNK_LOG", "error")

import icechunk as ic
import numpy as np
import zarr
from zarr.codecs import ZstdCodec


def build(directory: Path, mib: int) -> tuple[Path, np.ndarray]:
    n = mib * 1024 * 1024 // 4
    values = (np.arange(n, dtype="<i4") % 100_003).reshape(n // 4096, 4096)
    repo = directory / f"repo{mib}"
    if not repo.exists():
        r = ic.Repository.create(ic.local_filesystem_storage(str(repo)))
        s = r.writable_session("main")
        zarr.create_array(s.store, name="big", shape=values.shape, chunks=values.shape,
                          dtype="<i4", compressors=[ZstdCodec(level=1)],
                          fill_value=0)[:] = values
        s.commit("one big chunk")
    return repo, values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vchunkfs-bench-decoded"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    repo, values = build(args.dir, args.mib)
    want = hashlib.sha256(values.tobytes()).hexdigest()

    session = ic.Repository.open(ic.local_filesystem_storage(str(repo))).readonly_session("main")
    t = time.perf_counter()
    zarr.open_array(session.store, path="big", mode="r")[:]
    print(f"zarr-python reads (fetch + one decode) the array: {time.perf_counter() - t:.2f} s")

    mnt = args.dir / "mnt"
    mnt.mkdir(exist_ok=True)
    log = open(args.dir / "daemon.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "vchunkfs.cli.mount", str(repo), str(mnt),
                             "-o", "foreground,presentation=v3-decoded"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not mount")
            time.sleep(0.05)
        path = mnt / "big" / "c" / "0" / "0"
        for label in ("first", "again"):
            t = time.perf_counter()
            with open(path, "rb") as f:
                digest = hashlib.sha256()
                while block := f.read(1 << 20):
                    digest.update(block)
            took = time.perf_counter() - t
            ok = digest.hexdigest() == want
            print(f"cat {args.mib} MiB decoded chunk ({label}): {took:.2f} s, bytes "
                  f"{'equal' if ok else 'DIFFER'}", flush=True)
        with open(f"/proc/{proc.pid}/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM"))
        print(f"daemon peak RSS: {hwm.split(':')[1].strip()}")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    main()
