#!/usr/bin/env python3
"""Load under faults (issue 11, "Proof"): reader processes against a real mount on moto
behind the fault proxy, while a writer moves the branch.

Starts moto and a :class:`FaultProxy` (tests/servers.py) in front of it, builds the test
repository there (repository and sources reached through the proxy), mounts it with
``cache_size=BUDGET`` and ``timeout=2``, then for ``--seconds`` runs ``--readers``
processes doing random whole-chunk and byte-range reads (``os.pread``) of the mount,
each checked against ``os.pread`` of the source file the chunk's ref names, while a
writer commits to ``main`` with icechunk (straight to moto) every ``--commit-every``
seconds and the proxy drops, delays, stalls and resets the daemon's requests. Every
read's pages are dropped from the page cache afterwards, so reads reach the daemon.
``--data-mib`` adds an array of that many MiB of 256 KiB chunks (uncompressed, virtual
refs into one more source file), so the readers stream more data than the budget holds
and every branch move makes the followed snapshot's chunks cold again.
The daemon's RSS is sampled every 0.1 s; its baseline is the RSS once mounted and every
file of the small test repository read once (the added array is not read: caching it
is what the budget bounds). Prints the figures (and ``--json``); exits 1 unless mismatches are 0,
the daemon stayed up and exited 0, and peak RSS minus baseline is within the budget
plus ``--slack`` (requests in flight: docs/SEMANTICS.md, "Memory").

Usage::

    PYTHONPATH=$PWD python scripts/bench/bench_load.py [--readers 16] [--seconds 60]
        [--budget 16M] [--commit-every 3] [--data-mib 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("ICECHUNK_LOG", "error")
PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "tests"))

MIB = 1024 * 1024
TIMEOUT = 2.0
BIG_CHUNK = 256 * 1024  # bytes of one chunk of the added array
WEIGHTS = {"pass": 0.5, "delay": 0.3, "drop": 0.07, "reset": 0.08, "stall": 0.05}


def reader_main(spec_path: str) -> None:
    """One reader process: ``spec`` names the files, their sources and the deadline."""
    spec = json.loads(Path(spec_path).read_text())
    rng = random.Random(spec["seed"])
    files = spec["files"]  # [mount path, source path, source offset, length]
    stop_at = time.monotonic() + spec["seconds"]
    out = {"reads": 0, "ok": 0, "eio": 0, "other": 0, "mismatches": [], "bytes": 0,
           "longest": 0.0, "short": 0}
    sources: dict[str, int] = {}
    while time.monotonic() < stop_at:
        path, src, start, length = rng.choice(files)
        if rng.random() < 0.4:
            off, n = 0, length
        else:
            off, n = rng.randrange(length), rng.randrange(1, length + 1)
        fd_src = sources.get(src)
        if fd_src is None:
            fd_src = sources[src] = os.open(src, os.O_RDONLY)
        want = os.pread(fd_src, max(0, min(n, length - off)), start + off)
        began = time.monotonic()
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                got = os.pread(fd, n, off)
                # a read that meets a failing part returns the bytes before it (as
                # Linux does for any I/O error after some bytes): read on, as careful
                # readers do; the next read returns the rest or the error
                while 0 < len(got) < len(want):
                    out["short"] += 1
                    more = os.pread(fd, n - len(got), off + len(got))
                    if not more:
                        break  # an early end of file: counted as a mismatch below
                    got += more
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            out["ok"] += 1
            out["bytes"] += len(got)
            if got != want:
                pairs = enumerate(zip(got, want, strict=False))
                first = next((i for i, (a, b) in pairs if a != b), min(len(got), len(want)))
                out["mismatches"].append(f"{path} [{off}:{off + n}]: got {len(got)} bytes, "
                                         f"want {len(want)}, first difference at {first}")
        except OSError as e:
            out["eio" if e.errno == errno.EIO else "other"] += 1
        out["reads"] += 1
        out["longest"] = max(out["longest"], time.monotonic() - began)
    print(json.dumps(out))


def add_big_array(s3: Any, storage: Any, sources_dir: Path, mib: int
                  ) -> list[tuple[str, Path, int, int]]:
    """Commit to ``main`` an array ``big`` of ``mib`` MiB whose chunks are virtual refs
    into one uncompressed HDF5 file published at ``s3://archive/nc/big.nc``; returns
    (zarr key, local source, offset, length) per chunk."""
    import h5py
    import icechunk as ic
    import numpy as np
    import zarr

    per_chunk = BIG_CHUNK // 4
    n = mib * MIB // BIG_CHUNK
    src = sources_dir / "big.nc"
    with h5py.File(src, "w") as f:
        data = np.random.default_rng(7).standard_normal(n * per_chunk).astype("<f4")
        ds = f.create_dataset("big", data=data, chunks=(per_chunk,))
        spans = [(ds.id.get_chunk_info(i).byte_offset, ds.id.get_chunk_info(i).size)
                 for i in range(n)]
    s3.put_object("archive", "nc/big.nc", src.read_bytes())
    etag = s3.head_object("archive", "nc/big.nc")["ETag"].strip('"')
    repo = ic.Repository.open(storage)
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="r+").create_array(
        "big", shape=(n * per_chunk,), chunks=(per_chunk,), dtype="<f4", compressors=None,
        fill_value=0.0)
    failed = session.store.set_virtual_refs("big", [
        ic.VirtualChunkSpec([i], "s3://archive/nc/big.nc", off, size, etag_checksum=etag)
        for i, (off, size) in enumerate(spans)])
    assert not failed, failed
    session.commit(f"big: {mib} MiB in {n} chunks")
    return [(f"big/c/{i}", src, off, size) for i, (off, size) in enumerate(spans)]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def run(readers: int, seconds: float, budget: str, commit_every: float, slack_mib: float,
        workdir: Path, data_mib: int = 0) -> dict[str, Any]:
    import icechunk as ic
    import zarr
    from datasets import build_s3_repo
    from mounting import mounted
    from servers import PASS, fault_proxy, moto_s3_server, random_schedule

    from vchunkfs.daemon.options import parse_size

    budget_bytes = parse_size(budget)
    with moto_s3_server() as s3, fault_proxy((s3.host, s3.port)) as proxy:
        via = dataclasses.replace(s3, endpoint_url=proxy.url, port=proxy.port)
        built, env = build_s3_repo(via, workdir / "src")
        local = {p.name: p for p in built.sources}
        direct = ic.s3_storage(bucket="repos", prefix="r", region=s3.region,
                               endpoint_url=s3.endpoint_url, allow_http=True,
                               force_path_style=True, access_key_id=s3.access_key_id,
                               secret_access_key=s3.secret_access_key)
        big = add_big_array(s3, direct, workdir / "src", data_mib) if data_mib else []
        with mounted("s3://repos/r", workdir / "m", f"endpoint_url={proxy.url}",
                     "authorize=s3://archive/nc/=env", f"timeout={TIMEOUT:g}",
                     "poll_interval=0.5", f"cache_size={budget}", env=env) as m:
            v1 = m.path / ".vchunkfs" / "tags" / "v1"
            files = ([(str(m.path / r.key), str(local[r.location.rsplit("/", 1)[1]]),
                       r.offset, r.length) for r in built.refs["day1"]]
                     + [(str(v1 / r.key), str(local[r.location.rsplit("/", 1)[1]]),
                         r.offset, r.length) for r in built.refs["v1"]])
            for path, src, start, length in files:  # every file read once: the baseline
                with open(src, "rb") as f:
                    assert Path(path).read_bytes() == os.pread(f.fileno(), length, start)
            baseline = rss_kb(m.pid)
            files += [(str(m.path / key), str(src), start, length)
                      for key, src, start, length in big]
            peak = [baseline]
            stop = threading.Event()
            commits: list[str] = []
            alive = [True]

            def sample() -> None:
                while not stop.wait(0.1):
                    if m.proc.poll() is not None:
                        alive[0] = False
                        return
                    peak[0] = max(peak[0], rss_kb(m.pid))

            def writer() -> None:
                repo = ic.Repository.open(direct)
                i = 0
                while not stop.wait(commit_every):
                    s = repo.writable_session("main")
                    zarr.open_group(s.store, mode="r+").attrs["tick"] = i
                    commits.append(s.commit(f"tick {i}"))
                    i += 1

            threads = [threading.Thread(target=sample), threading.Thread(target=writer)]
            proxy.schedule = random_schedule(WEIGHTS, seed=5, delay=0.3, stall=2 * TIMEOUT)
            procs = []
            for i in range(readers):
                spec = workdir / f"reader{i}.json"
                spec.write_text(json.dumps({"seed": i, "files": files, "seconds": seconds}))
                procs.append(subprocess.Popen([sys.executable, __file__, "--reader",
                                               str(spec)], stdout=subprocess.PIPE, text=True))
            started = time.monotonic()
            for t in threads:
                t.start()
            results = [json.loads(p.communicate(timeout=seconds + 120)[0]) for p in procs]
            ran = time.monotonic() - started
            stop.set()
            proxy.schedule = lambda: PASS
            for t in threads:
                t.join(timeout=60)
            counts = dict(proxy.counts)
            faults = proxy.faults
            alive_after = m.proc.poll() is None and alive[0]
            stats = json.loads(os.getxattr(m.path, "user.vchunkfs.stats"))
        code = m.proc.returncode
    mismatches = [x for r in results for x in r["mismatches"]]
    figures = {
        "readers": readers, "seconds": round(ran, 1), "budget_mib": budget_bytes / MIB,
        "data_mib": data_mib,
        "reads": sum(r["reads"] for r in results), "ok": sum(r["ok"] for r in results),
        "eio": sum(r["eio"] for r in results), "other_errors": sum(r["other"] for r in results),
        "short_reads": sum(r["short"] for r in results),
        "bytes_checked": sum(r["bytes"] for r in results), "mismatches": len(mismatches),
        "longest_read_s": round(max(r["longest"] for r in results), 2),
        "faults": faults, "proxy": counts, "branch_moves": len(commits),
        "daemon_alive": alive_after, "daemon_exit": code,
        "baseline_mib": round(baseline / 1024, 1), "peak_rss_mib": round(peak[0] / 1024, 1),
        "peak_minus_baseline_mib": round((peak[0] - baseline) / 1024, 1),
        "slack_mib": slack_mib,
        "cache_hits": stats.get("cache_hits"), "cache_misses": stats.get("cache_misses"),
        "first_mismatches": mismatches[:5],
    }
    figures["ok_overall"] = bool(
        not mismatches and alive_after and code == 0 and figures["other_errors"] == 0
        and (peak[0] - baseline) / 1024 <= budget_bytes / MIB + slack_mib)
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reader", help=argparse.SUPPRESS)
    ap.add_argument("--readers", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--budget", default="16M")
    ap.add_argument("--commit-every", type=float, default=3.0)
    ap.add_argument("--slack", type=float, default=0.0,
                    help="MiB over the budget allowed (default none)")
    ap.add_argument("--data-mib", type=int, default=0,
                    help="add an array of this many MiB (256 KiB chunks) to press the budget")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.reader:
        reader_main(args.reader)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        figures = run(args.readers, args.seconds, args.budget, args.commit_every, args.slack,
                      Path(tmp), args.data_mib)
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k}: {v}")
    return 0 if figures["ok_overall"] else 1


if __name__ == "__main__":
    sys.exit(main())
