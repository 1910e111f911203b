"""Bulk virtual refs through a mount's control socket vs icechunk in-process.

Sets N virtual refs (a square chunk grid of one int16 array, refs into a few
local files) and commits, in one run, both ways:

* in-process: icechunk's ``store.set_virtual_refs_arr`` + ``session.commit``;
* socket: ``vchunkfs.control.Client.set_virtual_refs_grid`` (streamed blocks of
  200,000 refs) to a mounted daemon + ``commit`` through the socket.

Each run uses a fresh repository. Prints medians and the ratio (target: the
socket within 1.5x of in-process).

Usage: python scripts/bench/bench_control.py [--grid 1000] [--runs 3] [--workdir DIR] [-o OPT]

Each run's figures go to stderr as they come. The daemon limits glibc to two
malloc arenas (vchunkfs.daemon.run.limit_malloc_arenas) unless MALLOC_ARENA_MAX
is set: MALLOC_ARENA_MAX=16 (glibc's default on two cores) measures without it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import icechunk as ic
import numpy as np

from vchunkfs.control import Client

FILES = 4
CHUNK = (4, 4)


def refs(grid: int, src: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    n = grid * grid
    per_file = n // FILES
    locations = [(src / f"part{i // per_file}.bin").as_uri() for i in range(n)]
    offsets = (np.arange(n, dtype="u8") % per_file) * 32
    lengths = np.full(n, 32, dtype="u8")
    return locations, offsets, lengths


def array_meta(grid: int) -> dict[str, object]:
    return {"zarr_format": 3, "node_type": "array",
            "shape": [grid * CHUNK[0], grid * CHUNK[1]], "data_type": "int16",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(CHUNK)}},
            "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "attributes": {}}


def make_repo(path: Path, src: Path) -> str:
    prefix = src.as_uri() + "/"
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(ic.VirtualChunkContainer(
        prefix, ic.local_filesystem_store(str(src))))
    repo = ic.Repository.create(ic.local_filesystem_storage(str(path)), config)
    repo.save_config()
    return prefix


def in_process(path: Path, src: Path, grid: int) -> tuple[float, float]:
    make_repo(path, src)
    locations, offsets, lengths = refs(grid, src)
    repo = ic.Repository.open(ic.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    sync(session.store.set("arr/zarr.json", default_buffer_prototype().buffer
                           .from_bytes(json.dumps(array_meta(grid)).encode())))
    t0 = time.perf_counter()
    session.store.set_virtual_refs_arr("arr", (grid, grid), locations, offsets, lengths)
    t1 = time.perf_counter()
    session.commit("refs")
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def through_socket(path: Path, src: Path, grid: int, work: Path,
                   mount_options: list[str]) -> tuple[float, float]:
    prefix = make_repo(path, src)
    mp = work / "mnt"
    mp.mkdir(exist_ok=True)
    sock = str(work / "ctl.sock")
    env = {**os.environ, "ICECHUNK_LOG": "error"}
    subprocess.run([sys.executable, "-m", "vchunkfs.cli.mount", str(path), str(mp), "-o",
                    ",".join([f"authorize={prefix},control_socket={sock}", *mount_options])],
                   check=True, env=env)
    try:
        locations, offsets, lengths = refs(grid, src)
        with Client(sock) as c:
            c.set_metadata("arr", array_meta(grid))
            t0 = time.perf_counter()
            n = c.set_virtual_refs_grid("arr", (grid, grid), locations, offsets, lengths)
            t1 = time.perf_counter()
            c.commit("refs")
            t2 = time.perf_counter()
        assert n == grid * grid
        assert (mp / "arr" / "c" / str(grid - 1) / str(grid - 1)).stat().st_size == 32
        return t1 - t0, t2 - t1
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=1000, help="grid side (grid^2 refs)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", type=Path)
    p.add_argument("-o", action="append", default=[], metavar="OPT",
                   help="extra mount option for the daemon, e.g. -o log_file=/tmp/d.log "
                        "(its 'committed ... in X s' lines time the commit inside the daemon)")
    args = p.parse_args()
    ic.set_logs_filter("error")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vchunkfs-bench-control-"))
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    per_file = args.grid * args.grid // FILES
    for i in range(FILES):
        f = src / f"part{i}.bin"
        if not f.exists() or f.stat().st_size != per_file * 32:
            f.write_bytes(b"\0" * (per_file * 32))
    results: dict[str, list[tuple[float, float]]] = {"in-process": [], "socket": []}
    for run in range(args.runs):
        for name in results:
            repo = work / f"repo-{name}-{run}"
            shutil.rmtree(repo, ignore_errors=True)
            if name == "in-process":
                results[name].append(in_process(repo, src, args.grid))
            else:
                results[name].append(through_socket(repo, src, args.grid, work, args.o))
            shutil.rmtree(repo, ignore_errors=True)
            print(f"run {run} {name}: set refs {results[name][-1][0]:.2f} s, "
                  f"commit {results[name][-1][1]:.2f} s", file=sys.stderr, flush=True)
    n = args.grid * args.grid
    print(f"{n:,} virtual refs, {args.runs} runs each (median seconds)\n")
    print("| path | set refs | commit | total | refs/s |")
    print("|---|---:|---:|---:|---:|")
    totals = {}
    for name, rows in results.items():
        s = statistics.median(r[0] for r in rows)
        c = statistics.median(r[1] for r in rows)
        t = statistics.median(r[0] + r[1] for r in rows)
        totals[name] = t
        print(f"| {name} | {s:.2f} | {c:.2f} | {t:.2f} | {n / s:,.0f} |")
    print(f"\nsocket / in-process (total): {totals['socket'] / totals['in-process']:.2f}x "
          "(target <= 1.5x)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
