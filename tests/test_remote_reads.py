"""Reads of a repository whose chunks sit on S3 behind a slow link (issue 12).

Real parts: the moto S3 server holds OISST-like netCDF files (scripts/make_oisst.py),
``FaultProxy`` (tests/servers.py) delays every request to it by ``DELAY`` seconds,
``vchunkfs ingest`` writes their virtual refs into a local repository whose container
names the proxy, and a real FUSE mount serves it. What is checked goes through the
daemon's counters (``user.vchunkfs.stats``, ``vchunkfs ctl MNT status``), not timings;
bytes are compared with ``os.pread`` of the local copy of each source file.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from datasets import DayChunk, day_chunks
from mounting import mounted, process_gone
from servers import Fault, FaultProxy, S3Endpoint, moto_s3_server

PROJECT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "vchunkfs.cli.main"]
BUCKET = "oisst"
PREFIX = f"s3://{BUCKET}/oisst/"
DAYS = 16
VARIABLES = ("sst", "anom", "err", "ice")
DELAY = 0.03

pytestmark = pytest.mark.timeout(300)


@dataclass
class Remote:
    s3: S3Endpoint
    proxy: FaultProxy
    repo: Path
    files: list[Path]
    chunks: list[DayChunk]
    env: dict[str, str]

    def mount(self, where: Path, *options: str) -> object:
        return mounted(self.repo, where, f"authorize={PREFIX}", *options, env=self.env,
                       log=where.with_name(where.name + ".log"))

    def of(self, var: str) -> list[DayChunk]:
        return [c for c in self.chunks if c.var == var]


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    base = tmp_path_factory.mktemp("remote")
    subprocess.run([sys.executable, str(PROJECT / "scripts" / "make_oisst.py"), str(base / "nc"),
                    "--days", str(DAYS), "--scale", "2"], check=True, capture_output=True)
    files = sorted((base / "nc").glob("*.nc"))
    with moto_s3_server(log_dir=base / "moto") as s3:
        s3.create_bucket(BUCKET)
        for f in files:
            s3.put_object(BUCKET, f"oisst/{f.name}", f.read_bytes())
        proxy = FaultProxy((s3.host, s3.port))
        try:
            env = {"AWS_ACCESS_KEY_ID": s3.access_key_id,
                   "AWS_SECRET_ACCESS_KEY": s3.secret_access_key, "AWS_REGION": s3.region}
            subprocess.run([*CLI, "init", str(base / "repo")], check=True, capture_output=True)
            subprocess.run([*CLI, "ingest", str(base / "repo"), f"{PREFIX}*.nc", "--concat-dim",
                            "time", "--container", PREFIX, "--source-endpoint", proxy.url,
                            "--source-region", s3.region], check=True, capture_output=True,
                           env={**os.environ, **env})
            proxy.schedule = lambda: Fault("delay", DELAY)
            yield Remote(s3, proxy, base / "repo", files, day_chunks(files, VARIABLES), env)
        finally:
            proxy.close()


def stats(mnt: Path) -> dict[str, float]:
    return json.loads(os.getxattr(mnt, "user.vchunkfs.stats"))


def read_cold(path: Path) -> bytes:
    """The file's bytes from the daemon: its pages dropped from the kernel's cache
    afterwards, so that the next read of it reaches the daemon again."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return data
    finally:
        os.close(fd)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_sequential_reader_finds_its_chunks_fetched_ahead(remote: Remote, tmp_path: Path
                                                            ) -> None:
    sock = tmp_path / "ctl.sock"
    with remote.mount(tmp_path / "m", f"control_socket={sock}") as m:
        for var in VARIABLES:  # one reader, array by array, day by day
            for c in remote.of(var):
                assert read_cold(m.path / c.key) == c.source_bytes(), c.key
        st = stats(m.path)
        status = subprocess.run([*CLI, "ctl", str(m.path), "status"], capture_output=True,
                                text=True, check=True).stdout
    n = len(remote.chunks)
    # the first read fetches; every other chunk was fetched ahead and read: the window
    # goes on from one variable to the next, passing over the coordinates, and from
    # sst, the last in listing order, round to anom, the first (the reader's order is
    # the netCDF file's, sst first)
    assert st["cache_misses"] == 1, st
    assert st["prefetch_used"] >= n - len(VARIABLES), st
    assert st["fetches"] == n and st["prefetch_wasted"] == 0, st
    assert st["in_flight"] == 0, st
    # the operator sees the same counters
    assert f"{st['fetches']:,.0f} fetches" in status, status
    assert f"{st['prefetch_used']:,.0f} read, 0 wasted" in status, status


def test_a_walk_that_lists_first_costs_one_window_and_finds_its_files_fetched(
        remote: Remote, tmp_path: Path) -> None:
    """``find MNT -type f | xargs cat``: the walk lists every directory before a file
    is read. The first chunk directory's listing starts one stream of ``prefetch``
    files and the other listings none while those are unread (a walk alone, like
    ``ls -R``, costs one window); the reads that follow find every file fetched
    ahead, the first one too."""
    with remote.mount(tmp_path / "m", "prefetch=4") as m:
        walked = []
        for var in [v for v in os.listdir(m.path) if v in VARIABLES]:  # readdir order
            for root, _, names in os.walk(m.path / var):
                walked += [Path(root) / n for n in names if n != "zarr.json"]
        assert sorted(str(p.relative_to(m.path)) for p in walked) == sorted(
            c.key for c in remote.chunks)
        deadline = time.monotonic() + 10
        while (st := stats(m.path))["fetches"] < 4 or st["in_flight"]:
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
        time.sleep(3 * DELAY)  # (a second stream's prefetches would be on their way now)
        st = stats(m.path)
        assert st["listing_streams"] == 1 and st["fetches"] == 4, st
        assert st["cache_misses"] == 0, st
        by_key = {c.key: c for c in remote.chunks}
        for p in walked:
            key = str(p.relative_to(m.path))
            assert read_cold(p) == by_key[key].source_bytes(), key
        st = stats(m.path)
    assert st["cache_misses"] == 0, st  # not even the first file: the listing fetched it
    assert st["fetches"] == len(remote.chunks) and st["prefetch_wasted"] == 0, st


def test_a_reader_going_backward_is_fetched_ahead_of(remote: Remote, tmp_path: Path) -> None:
    """The order Dask reads an array in under ``xarray.load()``: descending string order
    of the chunk keys (9, 8, ..., 4, 15, 3, 14, ...)."""
    chunks = sorted(remote.of("sst"), key=lambda c: str(c.day), reverse=True)
    with remote.mount(tmp_path / "m") as m:
        for c in chunks:
            assert read_cold(m.path / c.key) == c.source_bytes(), c.key
            time.sleep(DELAY)  # the reader's own work (decoding) between chunks
        st = stats(m.path)
    assert st["cache_misses"] <= 2, st  # the two backward runs' first reads
    assert st["prefetch_used"] >= len(chunks) - 2, st


def test_a_source_changed_after_its_prefetch(remote: Remote, tmp_path: Path) -> None:
    """docs/SEMANTICS.md: a chunk prefetched before its source changed is served from the
    cache (the bytes its ref names, checked when fetched); once evicted, EIO."""
    sst = remote.of("sst")
    victim = sst[1]  # the first file a stream from day 0 prefetches
    key = f"oisst/{victim.nc.name}"
    original = victim.nc.read_bytes()
    try:
        with remote.mount(tmp_path / "m", "cache_size=2M") as m:
            assert read_cold(m.path / sst[0].key) == sst[0].source_bytes()
            deadline = time.monotonic() + 20
            while stats(m.path)["prefetched"] < 1 or stats(m.path)["in_flight"]:
                assert time.monotonic() < deadline, stats(m.path)
                time.sleep(0.05)
            # the source of day 1 changes on the store after its chunk was prefetched
            changed = bytearray(original)
            changed[victim.offset:victim.offset + victim.length] = bytes(victim.length)
            remote.s3.put_object(BUCKET, key, bytes(changed))
            assert read_cold(m.path / victim.key) == victim.source_bytes()
            # stream the other arrays through the cache (1 MiB of blocks): day 1 of sst
            # is evicted
            for var in VARIABLES[1:]:
                for c in remote.of(var):
                    if c.nc != victim.nc:
                        assert read_cold(m.path / c.key) == c.source_bytes(), c.key
            # the changed file's chunks: fetched now, so checked now
            for path in (victim.key, f"anom/c/{victim.day}/0/0/0"):
                with pytest.raises(OSError) as e:
                    read_cold(m.path / path)
                assert e.value.errno == errno.EIO, path
            assert stats(m.path)["cache_bytes"] < 1 << 20
            assert read_cold(m.path / sst[5].key) == sst[5].source_bytes()  # others read on
            assert m.proc.poll() is None
    finally:
        remote.s3.put_object(BUCKET, key, original)


def test_unmount_with_fetches_in_flight_leaves_nothing_behind(remote: Remote, tmp_path: Path
                                                              ) -> None:
    """The daemon told to stop while a read and its prefetches wait on a slow backend:
    it exits 0 and leaves no process, no connection and no mount."""
    remote.proxy.schedule = lambda: Fault("delay", 3.0)
    errors: list[BaseException] = []
    try:
        with remote.mount(tmp_path / "m") as m:
            pid = m.proc.pid

            def reader() -> None:
                try:
                    read_cold(m.path / remote.of("sst")[0].key)
                except OSError as e:
                    errors.append(e)

            t = threading.Thread(target=reader, daemon=True)
            t.start()
            deadline = time.monotonic() + 10
            while stats(m.path)["in_flight"] < 2:  # the read and its prefetches
                assert time.monotonic() < deadline, stats(m.path)
                time.sleep(0.05)
            before = open_connections(remote.proxy.port)
            assert before >= 2, before
            m.proc.send_signal(signal.SIGTERM)  # as systemctl stop does; a reader is in
            assert m.proc.wait(timeout=15) == 0  # the mount, so umount(8) would say busy
            t.join(timeout=15)
            assert not t.is_alive()  # the reader was answered (an error: the mount went)
        assert process_gone(pid)
        assert not os.path.ismount(tmp_path / "m")
        deadline = time.monotonic() + 5
        while open_connections(remote.proxy.port):
            assert time.monotonic() < deadline, "the daemon's connections stayed open"
            time.sleep(0.1)
    finally:
        remote.proxy.schedule = lambda: Fault("delay", DELAY)


def open_connections(port: int) -> int:
    """Established TCP connections from this machine to ``port`` (client sides)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01":  # ESTABLISHED
                n += 1
    return n


def test_memory_stays_within_the_cache_while_streaming(remote: Remote, tmp_path: Path) -> None:
    """A reader streams every chunk (about 5 MB) through a 1 MiB cache: the daemon's RSS
    stays within the cache size above its baseline (RSS once each array's metadata and
    first chunk were read: the repository's manifests, the S3 client and its
    connections, and up to a quarter of the cache of prefetched files, are in it)."""
    budget = 1 << 20
    total = sum(c.length for c in remote.chunks)
    assert total > 4 * budget
    with remote.mount(tmp_path / "m", f"cache_size={budget}") as m:
        pid = m.proc.pid
        for var in VARIABLES:
            read_cold(m.path / remote.of(var)[0].key)
        time.sleep(0.5)
        baseline = rss_kib(pid)
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kib(pid))
                time.sleep(0.02)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            for c in remote.chunks:
                assert read_cold(m.path / c.key) == c.source_bytes(), c.key
        finally:
            done.set()
            t.join()
        st = stats(m.path)
    assert st["cache_bytes"] <= budget, st
    assert st["fetched_bytes"] > 3 * budget, st  # the cache was refilled several times
    assert (peak - baseline) * 1024 <= budget, (baseline, peak)
