#!/usr/bin/env python3
"""The cost of one call through vchunkfs's AsyncioBridge, against plain asyncio.

The operation is icechunk's ``store.getsize`` of one virtual chunk (manifest
already cached, so it is a lookup in memory) and, to isolate the bridge's own
cost, a coroutine that does nothing. Each figure is the median, over several
runs, of the mean time per call of a batch of calls:

* plain asyncio: ``await store.getsize(key)`` in a loop, and ``asyncio.gather``
  of the whole batch;
* ``AsyncioBridge.call`` from trio: serially, and the whole batch concurrently
  from one nursery;
* ``trio.to_thread.run_sync(bridge.run, ...)``, the alternative ``call`` avoids;
* ``AsyncioBridge.run`` from a plain thread, serially.

Usage::

    python scripts/bench/bench_bridge.py [DIR] [--quick] [--runs 7] [--calls 1000]

DIR defaults to the directory of ``make_million.py`` (built first if missing).
This module also holds the table helpers that ``bench_repository.py`` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("ICECHUNK_LOG", "error")

import icechunk as ic
import make_million
import trio

from vchunkfs.bridge import AsyncioBridge

ic.set_logs_filter(os.environ["ICECHUNK_LOG"])

QUICK_DIR = Path("/tmp/vchunkfs-bench-quick")
Thunk = Callable[[], Awaitable[int]]  # what the bridge is handed: a zero-argument coroutine fn
QUICK_GRID = 100


# -- figures and tables ------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A median with the samples it came from, in seconds (or another unit)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the samples were."""
        return (max(self.samples) - min(self.samples)) / self.median if self.median else 0.0


@dataclass(frozen=True)
class Row:
    """One line of a comparison table; either side may be missing."""

    label: str
    vchunkfs: Figure | None
    icechunk: Figure | None
    unit: str = "ms"  # "s", "ms", "us" (figures in seconds) or "MB" (figures in MB)


_SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6, "MB": 1.0}


def fmt(fig: Figure | None, unit: str) -> str:
    if fig is None:
        return "–"
    v = fig.median * _SCALE[unit]
    digits = 1 if unit == "MB" else 0 if v >= 100 else 1 if v >= 10 else 2 if v >= 1 else 3
    return f"{v:,.{digits}f} {unit}"


def table(title: str, rows: Sequence[Row], runs_note: str) -> str:
    """A Markdown table: measurement, vchunkfs, icechunk direct, ratio."""
    lines = [f"### {title}", "", runs_note, "",
             "| measurement | vchunkfs | icechunk direct | ratio | spread |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "–"
        if r.vchunkfs is not None and r.icechunk is not None and r.icechunk.median > 0:
            ratio = f"{r.vchunkfs.median / r.icechunk.median:.2f}x"
        spread = " / ".join("–" if f is None else f"{f.spread:.0%}"
                            for f in (r.vchunkfs, r.icechunk))
        lines.append(f"| {r.label} | {fmt(r.vchunkfs, r.unit)} | {fmt(r.icechunk, r.unit)} "
                     f"| {ratio} | {spread} |")
    return "\n".join(lines)


SPREAD_NOTE = ("Spread: (max − min) / median of the runs, vchunkfs / icechunk.")


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"icechunk {ic.__version__}")


def timed_runs(fn: Callable[[], float], runs: int, warmup: int = 1) -> Figure:
    """Call ``fn`` (which returns one sample) ``warmup + runs`` times; keep the last runs."""
    for _ in range(warmup):
        fn()
    return Figure(tuple(fn() for _ in range(runs)))


def dataset(directory: Path | None, quick: bool) -> make_million.BenchRepo:
    """The benchmark repository, built first if it is missing."""
    if quick:
        return make_million.build(directory or QUICK_DIR, grid=QUICK_GRID, verbose=False)
    return make_million.build(directory or make_million.DEFAULT_DIR, verbose=False)


def row_keys(built: make_million.BenchRepo, row: int, n: int) -> list[str]:
    """``n`` chunk keys of one row (cycling through the row if it is shorter)."""
    return [built.chunk_key(row, j % built.grid) for j in range(n)]


# -- the bridge ----------------------------------------------------------------


async def open_store(built: make_million.BenchRepo) -> ic.IcechunkStore:
    """A read-only store on ``main`` with the manifest loaded (one getsize done)."""
    repo = await ic.Repository.open_async(
        ic.local_filesystem_storage(str(built.repo_path)),
        authorize_virtual_chunk_access=built.credentials())
    session = await repo.readonly_session_async(branch="main")
    await session.store.getsize(built.chunk_key(0, 0))
    return session.store


async def _noop() -> int:
    return 0


def _per_call(t0: float, n: int) -> float:
    return (time.perf_counter() - t0) / n


def plain_asyncio(built: make_million.BenchRepo, keys: list[str], runs: int
                  ) -> dict[str, Figure]:
    """The same calls without any bridge: one asyncio loop in this thread."""

    async def main() -> dict[str, Figure]:
        store = await open_store(built)

        async def serial_getsize() -> float:
            t0 = time.perf_counter()
            for k in keys:
                await store.getsize(k)
            return _per_call(t0, len(keys))

        async def gathered_getsize() -> float:
            t0 = time.perf_counter()
            await asyncio.gather(*(store.getsize(k) for k in keys))
            return _per_call(t0, len(keys))

        async def serial_noop() -> float:
            t0 = time.perf_counter()
            for _ in keys:
                await _noop()
            return _per_call(t0, len(keys))

        out = {}
        for name, fn in [("getsize", serial_getsize), ("getsize_gather", gathered_getsize),
                         ("noop", serial_noop)]:
            await fn()  # warm-up
            out[name] = Figure(tuple([await fn() for _ in range(runs)]))
        return out

    return asyncio.run(main())


def bridged(built: make_million.BenchRepo, keys: list[str], runs: int) -> dict[str, Figure]:
    """The calls made through an AsyncioBridge, from trio and from a thread."""
    bridge = AsyncioBridge(name="bench-bridge")
    try:
        store = bridge.run(lambda: open_store(built))

        def getsize_of(k: str) -> Thunk:
            return lambda: store.getsize(k)

        fns = [getsize_of(k) for k in keys]
        noops: list[Thunk] = [_noop] * len(keys)

        async def trio_serial(batch: list[Thunk]) -> float:
            t0 = time.perf_counter()
            for fn in batch:
                await bridge.call(fn)
            return _per_call(t0, len(batch))

        async def trio_concurrent(batch: list[Thunk]) -> float:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for fn in batch:
                    nursery.start_soon(bridge.call, fn)
            return _per_call(t0, len(batch))

        async def trio_to_thread(batch: list[Thunk]) -> float:
            t0 = time.perf_counter()
            for fn in batch:
                await trio.to_thread.run_sync(bridge.run, fn)
            return _per_call(t0, len(batch))

        async def trio_main() -> dict[str, Figure]:
            out = {}
            cases: list[tuple[str, Callable[[list[Thunk]], Awaitable[float]], list[Thunk]]] = [
                ("call_getsize", trio_serial, fns),
                ("call_getsize_concurrent", trio_concurrent, fns),
                ("to_thread_getsize", trio_to_thread, fns),
                ("call_noop", trio_serial, noops),
                ("call_noop_concurrent", trio_concurrent, noops),
            ]
            for name, case, batch in cases:
                await case(batch)  # warm-up
                out[name] = Figure(tuple([await case(batch) for _ in range(runs)]))
            return out

        out = trio.run(trio_main)

        def thread_serial(batch: Iterable[Thunk]) -> Callable[[], float]:
            def run() -> float:
                t0 = time.perf_counter()
                n = 0
                for fn in batch:
                    bridge.run(fn)
                    n += 1
                return _per_call(t0, n)
            return run

        out["run_getsize"] = timed_runs(thread_serial(fns), runs)
        out["run_noop"] = timed_runs(thread_serial(noops), runs)
        return out
    finally:
        bridge.close()


def bridge_rows(built: make_million.BenchRepo, runs: int, calls: int) -> list[Row]:
    """Item 4 of the repository benchmark: one bridged call against plain asyncio."""
    keys = row_keys(built, 517 % built.grid, calls)
    plain = plain_asyncio(built, keys, runs)
    via = bridged(built, keys, runs)
    ping = thread_round_trip(runs, calls)
    n = f"{calls:,}"
    return [
        Row("getsize, serial: `bridge.call` from trio vs `await` in asyncio",
            via["call_getsize"], plain["getsize"], "us"),
        Row(f"getsize, {n} concurrent: `bridge.call` from one trio nursery vs "
            "`asyncio.gather` (per call)",
            via["call_getsize_concurrent"], plain["getsize_gather"], "us"),
        Row("getsize, serial: `bridge.run` from a thread vs `await` in asyncio",
            via["run_getsize"], plain["getsize"], "us"),
        Row("getsize, serial: `trio.to_thread.run_sync(bridge.run)` (not used) vs asyncio",
            via["to_thread_getsize"], plain["getsize"], "us"),
        Row("no-op coroutine, serial: `bridge.call` from trio vs a bare thread round trip "
            "(socketpair ping-pong: two wake-ups, the floor)", via["call_noop"], ping, "us"),
        Row(f"no-op coroutine, {n} concurrent: `bridge.call` (per call)",
            via["call_noop_concurrent"], None, "us"),
        Row("no-op coroutine, serial: `bridge.run` from a thread vs a bare thread round trip",
            via["run_noop"], ping, "us"),
    ]


def thread_round_trip(runs: int, n: int) -> Figure:
    """Two threads bouncing one byte through a socketpair: the cost of two wake-ups."""
    a, b = socket.socketpair()

    def echo() -> None:
        while data := b.recv(1):
            b.send(data)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()

    def batch() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            a.send(b"x")
            a.recv(1)
        return _per_call(t0, n)

    try:
        return timed_runs(batch, runs)
    finally:
        a.close()
        thread.join(timeout=5)
        b.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    parser.add_argument("--quick", action="store_true",
                        help=f"use the small {QUICK_GRID}x{QUICK_GRID} grid dataset")
    parser.add_argument("--runs", type=int, default=7, help="runs per figure (>= 5)")
    parser.add_argument("--calls", type=int, default=1000, help="calls per run")
    args = parser.parse_args(argv)
    runs = max(5, args.runs)
    built = dataset(args.directory, args.quick)
    rows = bridge_rows(built, runs, args.calls)
    print(table(f"The bridge: one call ({built.num_chunks:,} chunk refs)", rows,
                f"Median over {runs} runs of the mean time per call in a batch of "
                f"{args.calls:,} calls; {machine()}. {SPREAD_NOTE}"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
