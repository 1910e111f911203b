#!/usr/bin/env python3
"""vchunkfs's repository layer against icechunk used directly, on a million-chunk array.

Side by side, medians of several runs, with the ratio vchunkfs / icechunk:

1. open the repository and read one chunk in a fresh process (wall time from
   spawn to exit, and the time inside the process from just before the open
   to just after the read);
2. the size of one chunk (``SnapshotView.stat`` / ``chunk_size`` against
   ``store.getsize`` in plain asyncio);
3. listing one row of chunks, ``arr/c/517/`` (``SnapshotView.list_dir``, which
   probes each candidate with ``getsize`` because the array is bigger than
   ``ViewCaches.index_max_chunks``, against icechunk's ``store.list_dir``,
   which scans the whole array);
4. one call through the AsyncioBridge (``bench_bridge.py``);
5. peak RSS of fresh processes doing the same work;
6. one full pass over the chunk refs.

Items 2, 3 and 6 run the vchunkfs coroutines in plain asyncio, as icechunk's
are: the bridge's own cost is item 4.

Usage::

    python scripts/bench/bench_repository.py [DIR] [--quick] [--runs 9]

DIR defaults to /tmp/vchunkfs-bench (/tmp/vchunkfs-bench-quick with
``--quick``, a 100 x 100 grid); the repository is built there first if it is
missing (see ``make_million.py``). In ``--quick`` mode the array is smaller
than the default ``index_max_chunks``, so the benchmark lowers that limit to
measure the same probing path as on the big array.

This module imports only the standard library at the top, so that the child
processes it spawns (``--child SIDE:MODE``) pay for no import they do not need.
The children are spawned by a small launcher process (``--launcher``) started
before the parent grows, because ``ru_maxrss`` survives fork and exec. A child
prints its figures and leaves with ``os._exit`` (skipping interpreter
finalization, where icechunk 2.3 sometimes crashes); "spawn to exit" therefore
leaves out finalization on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import resource
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import icechunk as ic
    from bench_bridge import Figure, Row
    from make_million import BenchRepo

    from vchunkfs.repository import Repo, SnapshotView, ViewCaches

os.environ.setdefault("ICECHUNK_LOG", "error")

ARRAY = "arr"
ROW = 517  # the row of chunks listed (modulo the grid)
COL = 123  # the column of the chunk read (modulo the grid)
ROWS_MANY = 20  # rows listed by the bounded-memory check
BATCH = 20  # distinct chunks timed per run of a per-chunk figure


@dataclass(frozen=True)
class Spec:
    """What a child process needs to know (passed as JSON on its command line)."""

    repo_path: str
    container_prefix: str
    grid: int
    index_max_chunks: int | None  # None: vchunkfs's default

    @property
    def row(self) -> int:
        return ROW % self.grid

    @property
    def col(self) -> int:
        return COL % self.grid

    @property
    def key(self) -> str:
        return f"{ARRAY}/c/{self.row}/{self.col}"

    def row_dir(self, row: int) -> str:
        return f"{ARRAY}/c/{row}/"


def expected_chunk(i: int, j: int) -> bytes:
    """The bytes make_million.py stores for chunk (i, j), without importing numpy."""
    return struct.pack("<16h", *([i, j] * 8))


def maxrss_mb() -> float:
    """Peak RSS of this process so far, from ``getrusage`` (in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vmhwm_mb() -> float:
    """Peak RSS of this process's address space, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"benchmark check failed: {what}")


# -- child processes -----------------------------------------------------------


def _quiet_icechunk() -> None:
    import icechunk as ic

    ic.set_logs_filter(os.environ["ICECHUNK_LOG"])


def child_vchunkfs(spec: Spec, mode: str) -> dict[str, float]:
    """Open, then do ``mode``'s work through the bridge, as the filesystem will."""
    _quiet_icechunk()
    from vchunkfs.bridge import AsyncioBridge
    from vchunkfs.repository import Authorization, Repo, ViewCaches, parse_repo_url

    out: dict[str, float] = {"rss_imports": maxrss_mb()}
    if mode == "imports":
        return out
    t0 = time.perf_counter()
    bridge = AsyncioBridge()
    auth = Authorization.load([spec.container_prefix], environ={})
    repo = bridge.run(lambda: Repo.open(parse_repo_url(spec.repo_path), authorization=auth))
    if spec.index_max_chunks is not None:
        repo.caches = ViewCaches(index_max_chunks=spec.index_max_chunks)
    t1 = time.perf_counter()
    view = bridge.run(lambda: repo.view("main"))
    t2 = time.perf_counter()
    if mode == "first":
        data = bridge.run(lambda: view.read(spec.key))
        t3 = time.perf_counter()
        _check(data == expected_chunk(spec.row, spec.col), f"bytes of {spec.key}")
        return out | {"total": t3 - t0, "open": t1 - t0, "view": t2 - t1, "read": t3 - t2}
    if mode == "work":
        entry = bridge.run(lambda: view.stat(spec.key))
        _check(entry is not None and entry.size == 32, f"stat of {spec.key}")
        names = bridge.run(lambda: view.list_dir(spec.row_dir(spec.row)))
        _check(len(names) == spec.grid, f"listing of row {spec.row}")
        data = bridge.run(lambda: view.read(spec.key))
        _check(data == expected_chunk(spec.row, spec.col), f"bytes of {spec.key}")
    elif mode == "rows":
        for r in range(spec.row, spec.row + ROWS_MANY):
            row = r % spec.grid
            names = bridge.run(functools.partial(view.list_dir, spec.row_dir(row)))
            _check(len(names) == spec.grid, f"listing of row {row}")
    else:
        raise SystemExit(f"unknown child mode {mode}")
    return out | {"total": time.perf_counter() - t0}


def child_icechunk(spec: Spec, mode: str) -> dict[str, float]:
    """The same work with icechunk's own API in plain asyncio."""
    _quiet_icechunk()
    import icechunk as ic
    from zarr.core.buffer import default_buffer_prototype

    out: dict[str, float] = {"rss_imports": maxrss_mb()}
    if mode == "imports":
        return out
    t0 = time.perf_counter()

    async def main() -> dict[str, float]:
        repo = await ic.Repository.open_async(
            ic.local_filesystem_storage(spec.repo_path),
            authorize_virtual_chunk_access=ic.containers_credentials(
                {spec.container_prefix: ic.credentials.LocalFileSystemAccess}))
        t1 = time.perf_counter()
        session = await repo.readonly_session_async(branch="main")
        store = session.store
        t2 = time.perf_counter()
        if mode == "first":
            buf = await store.get(spec.key, default_buffer_prototype())
            t3 = time.perf_counter()
            _check(buf is not None and buf.to_bytes() == expected_chunk(spec.row, spec.col),
                   f"bytes of {spec.key}")
            return {"total": t3 - t0, "open": t1 - t0, "view": t2 - t1, "read": t3 - t2}
        if mode == "work":
            _check(await store.getsize(spec.key) == 32, f"getsize of {spec.key}")
            names = [n async for n in store.list_dir(spec.row_dir(spec.row))]
            _check(len(names) == spec.grid, f"list_dir of row {spec.row}")
            buf = await store.get(spec.key, default_buffer_prototype())
            _check(buf is not None and buf.to_bytes() == expected_chunk(spec.row, spec.col),
                   f"bytes of {spec.key}")
            return {"total": time.perf_counter() - t0}
        raise SystemExit(f"unknown child mode {mode}")

    return out | asyncio.run(main())


def run_child(side: str, mode: str, spec: Spec) -> dict[str, float]:
    """Spawn a fresh interpreter for one measurement; add its wall time and peak RSS."""
    cmd = [sys.executable, __file__, "--child", f"{side}:{mode}", json.dumps(asdict(spec))]
    env = os.environ | {"ICECHUNK_LOG": "error"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"child {side}:{mode} failed ({proc.returncode}):\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result | {"wall": wall}


def child_main(which: str, spec_json: str) -> None:
    side, mode = which.split(":")
    spec = Spec(**json.loads(spec_json))
    out = child_vchunkfs(spec, mode) if side == "vchunkfs" else child_icechunk(spec, mode)
    out["maxrss"] = maxrss_mb()
    out["vmhwm"] = vmhwm_mb()
    print(json.dumps(out), flush=True)
    # Skip interpreter finalization: with icechunk 2.3, a tokio thread that drops
    # pyo3-async-runtimes task locals while Python finalizes crashes the process
    # (SIGSEGV) in a few percent of exits of a process that used plain asyncio.
    os._exit(0)


def launcher_main() -> None:
    """Run the children the parent asks for, one JSON line in and out per child."""
    for line in sys.stdin:
        side, mode, spec = json.loads(line)
        try:
            out: dict[str, Any] = run_child(side, mode, Spec(**spec))
        except RuntimeError as e:
            out = {"error": str(e)}
        print(json.dumps(out), flush=True)


class Launcher:
    """A small process, started before the parent grows, that spawns the children.

    ``ru_maxrss`` survives fork and exec on Linux: a child spawned by the parent
    would report at least the parent's own peak (hundreds of MB once it has
    scanned the array). Children of this launcher start from its peak instead,
    a few MB below what any child reaches by importing icechunk.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--launcher"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=os.environ | {"ICECHUNK_LOG": "error"})

    def run(self, side: str, mode: str, spec: Spec) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([side, mode, asdict(spec)]) + "\n")
        self.proc.stdin.flush()
        out: dict[str, Any] = json.loads(self.proc.stdout.readline())
        if "error" in out:
            raise SystemExit(out["error"])
        return out

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


# -- the parent --------------------------------------------------------------------


def children(launcher: Launcher, sides: Sequence[str], mode: str, spec: Spec, runs: int,
             warmup: int = 1) -> dict[str, list[dict[str, float]]]:
    """``warmup + runs`` children per side, the sides interleaved; keep the last runs."""
    results: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    for _ in range(warmup + runs):
        for s in sides:
            results[s].append(launcher.run(s, mode, spec))
    return {s: r[warmup:] for s, r in results.items()}


def fig(results: list[dict[str, float]] | None, field: str) -> Figure | None:
    from bench_bridge import Figure

    return None if results is None else Figure(tuple(r[field] for r in results))


def first_chunk_rows(launcher: Launcher, spec: Spec, runs: int) -> list[Row]:
    from bench_bridge import Row

    res = children(launcher, ("vchunkfs", "icechunk"), "first", spec, runs)
    v, i = res["vchunkfs"], res["icechunk"]
    return [
        Row("fresh process, spawn to exit (wall)", fig(v, "wall"), fig(i, "wall"), "ms"),
        Row("fresh process, open + first chunk (in process)", fig(v, "total"),
            fig(i, "total"), "ms"),
        Row("&nbsp;&nbsp;of which: open the repository (`Repo.open` vs `open_async`)",
            fig(v, "open"), fig(i, "open"), "ms"),
        Row("&nbsp;&nbsp;of which: `Repo.view('main')` vs `readonly_session_async`",
            fig(v, "view"), fig(i, "view"), "ms"),
        Row("&nbsp;&nbsp;of which: read the chunk (`view.read` vs `store.get`)",
            fig(v, "read"), fig(i, "read"), "ms"),
    ]


def memory_rows(launcher: Launcher, spec: Spec, runs: int, built: BenchRepo) -> list[Row]:
    from bench_bridge import Row

    imports = children(launcher, ("vchunkfs", "icechunk"), "imports", spec, runs, warmup=0)
    work = children(launcher, ("vchunkfs", "icechunk"), "work", spec, runs)
    rows = children(launcher, ("vchunkfs",), "rows", spec, runs)
    indexed = children(launcher, ("vchunkfs",), "work",
                       Spec(**(asdict(spec) | {"index_max_chunks": built.num_chunks})), runs)
    return [
        Row("peak RSS: interpreter + imports only", fig(imports["vchunkfs"], "maxrss"),
            fig(imports["icechunk"], "maxrss"), "MB"),
        Row("peak RSS: open + stat + list one row + read one chunk",
            fig(work["vchunkfs"], "maxrss"), fig(work["icechunk"], "maxrss"), "MB"),
        Row("&nbsp;&nbsp;the same, as /proc's VmHWM (cross-check)",
            fig(work["vchunkfs"], "vmhwm"), fig(work["icechunk"], "vmhwm"), "MB"),
        Row(f"peak RSS: open + list {ROWS_MANY} rows (vchunkfs only)",
            fig(rows["vchunkfs"], "maxrss"), None, "MB"),
        Row("peak RSS: as the 2nd line, whole-array index forced "
            "(`index_max_chunks` = array size)", fig(indexed["vchunkfs"], "maxrss"), None, "MB"),
        Row("&nbsp;&nbsp;time of that child's work: open + stat + list + read",
            fig(work["vchunkfs"], "total"), fig(work["icechunk"], "total"), "ms"),
        Row(f"&nbsp;&nbsp;time of that child's work: open + list {ROWS_MANY} rows",
            fig(rows["vchunkfs"], "total"), None, "ms"),
        Row("&nbsp;&nbsp;time of that child's work: index forced",
            fig(indexed["vchunkfs"], "total"), None, "ms"),
    ]


@dataclass
class InProcess:
    """Items 2, 3 and 6, in this process, in one asyncio loop."""

    built: BenchRepo
    spec: Spec
    runs: int

    def caches(self) -> ViewCaches:
        from vchunkfs.repository import ViewCaches

        if self.spec.index_max_chunks is None:
            return ViewCaches()
        return ViewCaches(index_max_chunks=self.spec.index_max_chunks)

    async def open_both(self) -> tuple[Repo, ic.Repository]:
        import icechunk as ic

        from vchunkfs.repository import Authorization, Repo, parse_repo_url

        auth = Authorization.load([self.built.container_prefix], environ={})
        vrepo = await Repo.open(parse_repo_url(str(self.built.repo_path)), authorization=auth)
        irepo = await ic.Repository.open_async(
            ic.local_filesystem_storage(str(self.built.repo_path)),
            authorize_virtual_chunk_access=self.built.credentials())
        # load the manifest into each repository's cache: every later figure is warm
        view = await vrepo.view("main")
        _check(await view.chunk_size(ARRAY, (0, 0)) == 32, "chunk_size of (0, 0)")
        session = await irepo.readonly_session_async(branch="main")
        _check(await session.store.getsize(f"{ARRAY}/c/0/0") == 32, "getsize of (0, 0)")
        return vrepo, irepo

    async def fresh_view(self, vrepo: Repo) -> SnapshotView:
        from vchunkfs.repository import SnapshotView

        version = await vrepo.resolve("main")
        return await SnapshotView.open(vrepo.ic, version.snapshot_id, self.caches())

    async def per_op(self, op: Callable[[int], Awaitable[float]]) -> Figure:
        """Median over runs of the mean time of ``BATCH`` calls ``op(i)``, one warm-up run."""
        from bench_bridge import Figure

        samples = []
        n = 0
        for run in range(self.runs + 1):
            total = 0.0
            for _ in range(BATCH):
                total += await op(n)
                n += 1
            if run:
                samples.append(total / BATCH)
        return Figure(tuple(samples))

    async def stat_rows(self, vrepo: Repo, irepo: ic.Repository) -> list[Row]:
        from bench_bridge import Row

        rng = random.Random(20240517)
        grid = self.built.grid
        need = 6 * (self.runs + 1) * BATCH
        cells = [divmod(x, grid) for x in rng.sample(range(grid * grid), 2 * need)
                 if x // grid != self.spec.row][:need]
        pools = [cells[k::6] for k in range(6)]
        warm_view = await self.fresh_view(vrepo)
        warm_session = await irepo.readonly_session_async(branch="main")
        await warm_view.grid(ARRAY)

        async def v_view(_: int) -> float:
            t0 = time.perf_counter()
            await vrepo.view("main")
            return time.perf_counter() - t0

        async def i_session(_: int) -> float:
            t0 = time.perf_counter()
            await irepo.readonly_session_async(branch="main")
            return time.perf_counter() - t0

        async def v_stat_fresh(n: int) -> float:
            view = await self.fresh_view(vrepo)
            i, j = pools[0][n]
            t0 = time.perf_counter()
            entry = await view.stat(f"{ARRAY}/c/{i}/{j}")
            dt = time.perf_counter() - t0
            _check(entry is not None and entry.size == 32, f"stat of ({i}, {j})")
            return dt

        async def i_getsize_fresh(n: int) -> float:
            session = await irepo.readonly_session_async(branch="main")
            i, j = pools[1][n]
            t0 = time.perf_counter()
            size = await session.store.getsize(f"{ARRAY}/c/{i}/{j}")
            dt = time.perf_counter() - t0
            _check(size == 32, f"getsize of ({i}, {j})")
            return dt

        async def v_stat_warm(n: int) -> float:
            i, j = pools[2][n]
            t0 = time.perf_counter()
            entry = await warm_view.stat(f"{ARRAY}/c/{i}/{j}")
            dt = time.perf_counter() - t0
            _check(entry is not None and entry.size == 32, f"stat of ({i}, {j})")
            return dt

        async def v_size_warm(n: int) -> float:
            i, j = pools[3][n]
            t0 = time.perf_counter()
            size = await warm_view.chunk_size(ARRAY, (i, j))
            dt = time.perf_counter() - t0
            _check(size == 32, f"chunk_size of ({i}, {j})")
            return dt

        async def i_getsize_warm(n: int) -> float:
            i, j = pools[4][n]
            t0 = time.perf_counter()
            size = await warm_session.store.getsize(f"{ARRAY}/c/{i}/{j}")
            dt = time.perf_counter() - t0
            _check(size == 32, f"getsize of ({i}, {j})")
            return dt

        return [
            Row("open a view of main: `Repo.view` vs `readonly_session_async(branch=)`",
                await self.per_op(v_view), await self.per_op(i_session), "ms"),
            Row("stat of one chunk, fresh view: `SnapshotView.stat` vs `getsize`, fresh session",
                await self.per_op(v_stat_fresh), await self.per_op(i_getsize_fresh), "ms"),
            Row("stat of another chunk, same view: `SnapshotView.stat` vs `getsize`, same session",
                await self.per_op(v_stat_warm), await self.per_op(i_getsize_warm), "ms"),
            Row("size of another chunk, same view: `SnapshotView.chunk_size` vs `getsize`",
                await self.per_op(v_size_warm), await self.per_op(i_getsize_warm), "ms"),
        ]

    async def timed_runs(self, op: Callable[[], Awaitable[float]]) -> Figure:
        from bench_bridge import Figure

        await op()
        return Figure(tuple([await op() for _ in range(self.runs)]))

    async def list_rows(self, vrepo: Repo, irepo: ic.Repository) -> list[Row]:
        from bench_bridge import Row

        spec = self.spec
        row_dir = spec.row_dir(spec.row)
        keys = [f"{row_dir}{j}" for j in range(spec.grid)]
        reused: list[SnapshotView] = []

        async def v_list() -> float:
            view = await self.fresh_view(vrepo)
            reused[:] = [view]
            t0 = time.perf_counter()
            entries = await view.list_dir(row_dir)
            dt = time.perf_counter() - t0
            _check(len(entries) == spec.grid and all(e.size == 32 for e in entries), row_dir)
            return dt

        async def v_list_again() -> float:
            t0 = time.perf_counter()
            entries = await reused[0].list_dir(row_dir)
            dt = time.perf_counter() - t0
            _check(len(entries) == spec.grid, row_dir)
            return dt

        async def i_list() -> float:
            session = await irepo.readonly_session_async(branch="main")
            t0 = time.perf_counter()
            names = [n async for n in session.store.list_dir(row_dir)]
            dt = time.perf_counter() - t0
            _check(len(names) == spec.grid, row_dir)
            return dt

        async def i_probe() -> float:
            session = await irepo.readonly_session_async(branch="main")
            t0 = time.perf_counter()
            sizes = await asyncio.gather(*(session.store.getsize(k) for k in keys))
            dt = time.perf_counter() - t0
            _check(sizes == [32] * spec.grid, row_dir)
            return dt

        v_first = await self.timed_runs(v_list)
        v_again = await self.timed_runs(v_list_again)
        i_scan = await self.timed_runs(i_list)
        i_probed = await self.timed_runs(i_probe)
        n = f"{spec.grid:,}"
        return [
            Row(f"list `{row_dir}` ({n} names), fresh view: `list_dir` vs `store.list_dir`",
                v_first, i_scan, "ms"),
            Row(f"same listing vs icechunk probing the row itself: `gather` of {n} `getsize`",
                v_first, i_probed, "ms"),
            Row("same listing again on the same view (sizes cached) vs `store.list_dir`",
                v_again, i_scan, "ms"),
        ]

    async def pass_rows(self, vrepo: Repo, irepo: ic.Repository) -> list[Row]:
        from bench_bridge import Row

        from vchunkfs.repository import ViewCaches

        total = self.built.num_chunks
        row_dir = self.spec.row_dir(self.spec.row)

        async def i_pass() -> float:
            session = await irepo.readonly_session_async(branch="main")
            t0 = time.perf_counter()
            count = 0
            async for batch in session.store.array_chunk_iterator(ARRAY, 100_000):
                count += len(batch[1])
            dt = time.perf_counter() - t0
            _check(count == total, "array_chunk_iterator count")
            return dt

        async def v_stats() -> float:
            view = await self.fresh_view(vrepo)
            t0 = time.perf_counter()
            stats = await view.chunk_stats(ARRAY, [self.built.container_prefix])
            dt = time.perf_counter() - t0
            _check(stats.virtual == total, "chunk_stats count")
            return dt

        async def v_index() -> float:
            from vchunkfs.repository import SnapshotView

            version = await vrepo.resolve("main")
            view = await SnapshotView.open(vrepo.ic, version.snapshot_id,
                                           ViewCaches(index_max_chunks=total))
            t0 = time.perf_counter()
            entries = await view.list_dir(row_dir)
            dt = time.perf_counter() - t0
            _check(len(entries) == self.spec.grid, row_dir)
            return dt

        i_fig = await self.timed_runs(i_pass)
        return [
            Row(f"one pass over the {total:,} refs: `chunk_stats` vs `array_chunk_iterator`",
                await self.timed_runs(v_stats), i_fig, "ms"),
            Row("list one row, whole-array index forced (built on first listing) "
                "vs `array_chunk_iterator`", await self.timed_runs(v_index), i_fig, "ms"),
        ]

    def run(self) -> tuple[list[Row], list[Row], list[Row]]:
        async def main() -> tuple[list[Row], list[Row], list[Row]]:
            vrepo, irepo = await self.open_both()
            stat = await self.stat_rows(vrepo, irepo)
            listing = await self.list_rows(vrepo, irepo)
            passes = await self.pass_rows(vrepo, irepo)
            return stat, listing, passes

        return asyncio.run(main())


def parent_main(args: argparse.Namespace) -> None:
    launcher = Launcher()  # first, while this process is still small
    try:
        parent_work(args, launcher)
    finally:
        launcher.close()


def parent_work(args: argparse.Namespace, launcher: Launcher) -> None:
    import bench_bridge
    from bench_bridge import SPREAD_NOTE, machine, table

    from vchunkfs.repository import ViewCaches

    runs = max(5, args.runs)
    built = bench_bridge.dataset(args.directory, args.quick)
    default_limit = ViewCaches().index_max_chunks
    limit = None if built.num_chunks > default_limit else built.num_chunks - 1
    spec = Spec(str(built.repo_path), built.container_prefix, built.grid, limit)
    note = (f"{built.num_chunks:,} virtual refs ({built.grid}x{built.grid} chunk grid) in "
            f"{built.repo_path}; {machine()}; median of {runs} runs after one warm-up run")
    if limit is not None:
        note += (f"; `index_max_chunks` lowered from {default_limit:,} to {limit:,} so that "
                 "vchunkfs probes rows as it does on big arrays")
    print(f"# vchunkfs repository layer vs icechunk direct\n\n{note}.\n", flush=True)

    def show(title: str, rows: list[Row], how: str) -> None:
        print(table(title, rows, f"{how} {SPREAD_NOTE}") + "\n", flush=True)

    show("1. Open the repository and read one chunk in a fresh process",
         first_chunk_rows(launcher, spec, runs),
         "One child process per run (vchunkfs through its AsyncioBridge, icechunk in "
         "`asyncio.run`), the two sides interleaved.")
    stat, listing, passes = InProcess(built, spec, runs).run()
    show("2. Size of one chunk", stat,
         f"Plain asyncio, manifest already cached; each run is the mean over {BATCH} "
         "distinct chunks.")
    show("3. List one row of chunks", listing,
         "Plain asyncio, manifest already cached; fresh view (empty caches) and fresh "
         "session per run.")
    show("4. One call through the AsyncioBridge", bench_bridge.bridge_rows(built, runs, 1000),
         "Mean time per call in a batch of 1,000 calls (see bench_bridge.py).")
    show("5. Peak RSS of fresh processes", memory_rows(launcher, spec, runs, built),
         "`ru_maxrss` of one child process per run; vchunkfs through its AsyncioBridge.")
    show("6. One full pass over the chunk refs", passes,
         "Plain asyncio, manifest already cached; batches of 100,000 refs.")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="use a 100x100 chunk grid")
    parser.add_argument("--runs", type=int, default=9, help="runs per figure (>= 5)")
    parser.add_argument("--child", nargs=2, metavar=("SIDE:MODE", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--launcher", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(*args.child)
    elif args.launcher:
        launcher_main()
    else:
        parent_main(args)


if __name__ == "__main__":
    main()

