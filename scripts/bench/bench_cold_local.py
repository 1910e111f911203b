#!/usr/bin/env python3
"""Cold passes over a local OISST month: vchunkfs against fsspec.fuse, per layout and per
kind of repository, with the daemon's CPU.

The data of ``bench_mount.py`` (31 OISST-like netCDF files, the repository the
Icechunk guide's Python writes, kerchunk refs for fsspec), plus a repository of the
same files written by ``vchunkfs ingest`` (whose refs carry source records, so the
daemon reads each chunk once; without records it also reads it through icechunk's
``get`` and compares, docs/SEMANTICS.md "Changed sources").

A contestant is a fresh daemon; a sample mounts it, drops the page cache
(``echo 3``: dentries too), reads the 124 chunk files of ``sst``, ``anom``, ``err``
and ``ice`` one after the other (open, ``readv`` into a reused buffer, close) and
unmounts. It records the wall time and the CPU the daemon used during the pass
(all its threads, from ``/proc/PID/task/*/stat``: 10 ms ticks, so read the means).
Contestants take turns, the order rotating; figures are medians (and means for CPU)
of ``--runs``:

  vchunkfs:REPO:LAYOUT   this tree's daemon; REPO ``ingest`` or ``guide``; LAYOUT
                         ``v3`` (``sst/c/DAY/0/0/0``: 4 directory levels, so 4
                         LOOKUPs a file after ``echo 3``) or ``v2`` (``sst/DAY.0.0.0``:
                         one LOOKUP, the layout fsspec serves)
  base:REPO:LAYOUT       the same with the daemon of ``--baseline-src DIR``
  fsspec                 ``fsspec.fuse`` over the kerchunk refs (fusepy, libfuse2)

Usage::

    python scripts/bench/bench_cold_local.py --runs 9 [--baseline-src DIR] [--out R.md]

Root only (drop_caches). Every mount is unmounted and every daemon started here
stopped, also on errors (bench_mount's ``daemon``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_mount as bm  # noqa: E402  (the data set, the daemons, the reader)

INGESTED = bm.DATA / "days31" / "ingested-repo"


def ingested_repo(ds: bm.DataSet) -> Path:
    """The same files ingested by ``vchunkfs ingest`` (built once)."""
    if (INGESTED / "READY").exists():
        return INGESTED
    subprocess.run([bm.venv_bin("vchunkfs"), "init", str(INGESTED)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([bm.venv_bin("vchunkfs"), "ingest", str(INGESTED), f"{bm.NC_DIR}/*.nc",
                    "--concat-dim", "time", "--container", ds.prefix], check=True,
                   stdout=subprocess.DEVNULL)
    (INGESTED / "READY").touch()
    return INGESTED


def daemon_cpu(pid: int) -> float:
    """CPU seconds (user + system) of every thread of ``pid`` so far."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


Mount = Callable[[], AbstractContextManager[subprocess.Popen[bytes]]]


def contestants(ds: bm.DataSet, baseline: Path | None
                ) -> dict[str, tuple[Mount, Path, list[str]]]:
    """name -> (mount, mountpoint, the files of one pass in it)."""
    chunks = ds.chunks()
    repos = {"ingest": ingested_repo(ds), "guide": ds.repo}
    out: dict[str, tuple[Mount, Path, list[str]]] = {}
    trees: list[tuple[str, str | None]] = [("vchunkfs", None)]
    if baseline is not None:
        trees.append(("base", str(baseline)))
    for tree, pythonpath in trees:
        for repo_name, repo in repos.items():
            for layout in ("v3", "v2"):
                name = f"{tree}:{repo_name}:{layout}"
                mnt = bm.MNT_DIR / name.replace(":", "-")
                cmd = [bm.venv_bin("mount.vchunkfs"), str(repo), str(mnt), "-o",
                       f"foreground,authorize={ds.prefix},presentation={layout}"]
                env = {"PYTHONPATH": pythonpath, "PYTHONSAFEPATH": "1"} if pythonpath else None

                def mount(cmd: list[str] = cmd, mnt: Path = mnt, label: str = name,
                          env: dict[str, str] | None = env
                          ) -> AbstractContextManager[subprocess.Popen[bytes]]:
                    return bm.daemon(cmd, mnt, label, env)

                files = [str(mnt / (c.zarr_path if layout == "v3" else c.ref_key))
                         for c in chunks]
                out[name] = (mount, mnt, files)
    fs_mnt = bm.MNT_DIR / "fsspec"
    out["fsspec"] = (lambda: bm.fsspec_fuse(ds), fs_mnt,
                     [str(fs_mnt / c.ref_key) for c in chunks])
    return out


def run(runs: int, baseline: Path | None) -> dict[str, list[tuple[float, float]]]:
    ds = bm.build(31)
    named = contestants(ds, baseline)
    reader = bm.Reader()
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in named}
    names = list(named)
    try:
        for r in range(runs):
            for name in names[r % len(names):] + names[:r % len(names)]:
                mount, _, files = named[name]
                with mount() as proc:
                    bm.drop_caches(3)
                    time.sleep(0.3)  # the FORGETs the drop sends are handled first
                    c0, t0 = daemon_cpu(proc.pid), time.perf_counter()
                    nbytes = reader.files(files)
                    wall, cpu = time.perf_counter() - t0, daemon_cpu(proc.pid) - c0
                if nbytes != sum(c.length for c in ds.chunks()):
                    raise RuntimeError(f"{name}: read {nbytes} bytes")
                results[name].append((wall, cpu))
                print(f"run {r + 1}: {name:22} {wall * 1000:7.1f} ms, daemon CPU "
                      f"{cpu * 1000:5.0f} ms", flush=True)
    finally:
        reader.close()
    return results


def report(results: dict[str, list[tuple[float, float]]]) -> str:
    ref = statistics.median(w for w, _ in results["fsspec"])
    lines = ["| contestant | wall ms (median) | best | daemon CPU ms (mean) | fsspec.fuse / it |",
             "|---|---:|---:|---:|---:|"]
    for name, samples in results.items():
        walls = [w for w, _ in samples]
        cpus = [c for _, c in samples]
        med = statistics.median(walls)
        lines.append(f"| {name} | {med * 1000:.1f} | {min(walls) * 1000:.1f} | "
                     f"{statistics.mean(cpus) * 1000:.0f} | {ref / med:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--baseline-src", type=Path, metavar="DIR",
                   help="also run the daemon of this source tree (a git archive of "
                        "another commit) as the base:* contestants")
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    table = report(run(args.runs, args.baseline_src))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
