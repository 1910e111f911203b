#!/usr/bin/env python3
"""Reading an OISST month through a vchunkfs mount whose chunks sit behind a slow link.

Issue 12's benchmark ("remote repositories at the speed of the network"). One
data set: 31 OISST-like netCDF4 files (``scripts/make_oisst.py``, full grid),
uploaded to a real moto S3 server (``tests/servers.py``), behind a TCP proxy
(a subclass of ``tests/servers.py``'s ``FaultProxy``) that holds every HTTP
request ``DELAY`` ms before forwarding it (and, with ``--bandwidth``, paces each
connection's responses). ``vchunkfs ingest`` writes the virtual refs into a
local repository whose virtual chunk container is ``s3://BUCKET/oisst/`` with
the proxy as its endpoint, so every chunk byte the mount serves crosses the
proxy. The 124 chunk files (``sst``, ``anom``, ``err``, ``ice`` x 31 days) are
then read, for each delay, by each contestant in turn, from cold every time
(a fresh mount of a new daemon, or a new icechunk ``Repository`` object; the
page cache dropped when /proc/sys/vm/drop_caches is writable):

  mount, readdir order    one process, open/read/close every chunk file under
                          MNT/v3 in the order ``find`` lists them (string order)
  mount, array order      the same files, array by array, day by day
  mount, 8 readers        the array-order list shared by 8 threads
  xarray on the mount     ``xr.open_zarr(MNT/v3).load()`` (all four variables)
  xarray on icechunk      ``xr.open_zarr(session.store).load()``, in this process
  gdal_translate          ``gdal_translate -of ENVI ZARR:"MNT/v2-decoded":/sst:T:0``
                          for each day T (31 runs; sst only, decoded by the daemon)
  ncdump                  ``ncdump -v sst 'file://MNT/v2-decoded#mode=zarr,file'``
  icechunk get, sequential  ``store.get`` of every chunk key, one after the other
  icechunk get, gather    the same 124 gets under one ``asyncio.gather`` (the
                          in-process reference every ratio is taken against)
  ... 1 GET a chunk       the same two with the repository's storage concurrency
                          set to one request per object: icechunk fetches a
                          virtual chunk in up to 5 range requests of at least
                          4 KiB when the repository is on a local filesystem
  obstore, sequential /   ``obstore.get_range_async`` of the same byte ranges of
  obstore, concurrent     the netCDF objects through the proxy: the network and
                          server limit without icechunk
  obstore, coalesced      one GET per netCDF object spanning its four chunks (a
                          day's variables lie next to each other), all at once:
                          what coalescing adjacent ranges across keys could gain
  ingest / ingest-guide   ``vchunkfs ingest`` of the 31 files through the proxy into
                          a new repository, and the Icechunk guide's Python
                          (VirtualiZarr, ``xr.concat``, ``to_icechunk``) doing the same

and, once, without the proxy: obstore sequential and concurrent GETs straight to
moto (the server's own ceiling: moto is a Python server, CPU-bound on 2 cores).

For every sample the proxy records when each request arrived and when its
response began, so the table also says how many requests crossed the link and
how many were in flight at once (peak, and the mean over the sample's wall
time), and the CPU seconds the moto server process used; for mount samples the
daemon's ``user.vchunkfs.stats`` counters (block cache misses, prefetched files)
are kept in the JSON.

Each run takes one sample of every contestant, the order rotating from run to
run; each figure is the median of the runs, with the spread ((max - min) /
median) and the ratio to "icechunk get, gather" at the same delay. The machine
this runs on is shared: read ratios, not absolute seconds.

Usage::

    PYTHONPATH=$PWD .venv/bin/python scripts/bench/bench_remote.py \\
        [--delays 10,30,100] [--runs 3] [--bandwidth 0] [--prefetch N] \\
        [--only mount-readdir,icechunk-gather] [--out REPORT.md] [--json OUT.json]

``--runs 1 --delays 30`` takes a few minutes. The netCDF files are built once in
/tmp/vchunkfs-bench-remote/nc and reused. Every mount is unmounted, the proxy
closed and the moto server (started here, stopped by pid) stopped on exit, also
on errors. Needs /dev/fuse, gdal_translate and ncdump for those rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["ICECHUNK_LOG"] = "error"

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
sys.path.insert(0, str(PROJECT / "tests"))

import servers  # noqa: E402  (tests/servers.py: moto, FaultProxy)
from datasets import DayChunk, day_chunks  # noqa: E402  (tests/datasets.py)
from mounting import mounted  # noqa: E402

DATA = Path("/tmp/vchunkfs-bench-remote")
NC_DIR = DATA / "nc"
DAYS = 31
VARIABLES = ("sst", "anom", "err", "ice")
BUCKET = "oisst"
PREFIX = f"s3://{BUCKET}/oisst/"
THREADS = 8
BUF = 4 * 1024 * 1024  # bigger than any chunk: one read() per file, then EOF
CLI = [sys.executable, "-m", "vchunkfs.cli.main"]
REFERENCE = "icechunk-gather"


# -- the proxy ---------------------------------------------------------------------


class DelayProxy(servers.FaultProxy):
    """``FaultProxy`` holding each request ``delay`` seconds, optionally pacing each
    connection's responses to ``bandwidth`` bytes/s, and recording, per request, when
    it arrived and when its response began (so that requests in flight can be counted).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(upstream)
        self.delay = 0.0
        self.bandwidth = 0.0
        self.starts: list[float] = []
        self.firsts: list[float] = []
        self._rec = threading.Lock()
        self.schedule = self._draw

    def _draw(self) -> servers.Fault:
        with self._rec:
            self.starts.append(time.monotonic())
        return servers.Fault("delay", self.delay) if self.delay > 0 else servers.PASS

    def _responses(self, client: Any, upstream: Any, state: dict[str, Any]) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if not state["new_request"]:
                    with self._rec:
                        self.firsts.append(time.monotonic())
                state["new_request"] = True
                if self.bandwidth > 0:
                    time.sleep(len(data) / self.bandwidth)
                client.sendall(data)
        except OSError:
            pass
        self._kill(client, upstream)

    def mark(self) -> int:
        with self._rec:
            return len(self.starts)

    def window(self, since: int, t0: float, t1: float) -> dict[str, float]:
        """Requests that arrived after ``mark() == since``, and how many were in flight
        (arrived, no response yet) at once: the peak, and the mean over [t0, t1]."""
        with self._rec:
            starts = self.starts[since:]
            firsts = [t for t in self.firsts if t >= (starts[0] if starts else t1)]
        events = sorted([(t, 1) for t in starts] + [(t, -1) for t in firsts])
        level = peak = 0
        area, last = 0.0, t0
        for t, d in events:
            if t0 <= t <= t1:
                area += level * (t - last)
                last = t
            level += d
            peak = max(peak, level)
        area += level * max(0.0, t1 - last)
        return {"requests": len(starts), "peak_in_flight": peak,
                "mean_in_flight": area / (t1 - t0) if t1 > t0 else 0.0}


# -- the data ----------------------------------------------------------------------


def build() -> list[Path]:
    if not (DATA / "READY").exists():
        print(f"building the netCDF files in {NC_DIR} ...", flush=True)
        shutil.rmtree(NC_DIR, ignore_errors=True)
        subprocess.run([sys.executable, str(PROJECT / "scripts" / "make_oisst.py"), str(NC_DIR),
                        "--days", str(DAYS)], check=True, stdout=subprocess.DEVNULL)
        (DATA / "READY").touch()
    files = sorted(NC_DIR.glob("*.nc"))
    if len(files) != DAYS:
        raise RuntimeError(f"expected {DAYS} netCDF files in {NC_DIR}, found {len(files)}")
    return files


def cli(*args: str, src: Path | None = None) -> str:
    """``vchunkfs ARGS``, from this tree or from the source tree ``src``."""
    env = ({**os.environ, "PYTHONPATH": str(src), "PYTHONSAFEPATH": "1"} if src else None)
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"vchunkfs {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


# -- cold --------------------------------------------------------------------------

DROP: dict[str, str] = {}


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        DROP["status"] = "dropped"
    except OSError as e:
        DROP.setdefault("status", f"not dropped ({type(e).__name__}: {e.strerror}); "
                        "every mount sample is a new daemon and a new FUSE mount, whose "
                        "page cache starts empty")
    time.sleep(0.2)


# -- contestants -------------------------------------------------------------------


@dataclass
class Env:
    repo: Path
    chunks: list[DayChunk]
    proxy: DelayProxy
    s3: servers.S3Endpoint
    work: Path
    mount_options: tuple[str, ...]
    last_stats: dict[str, Any] = field(default_factory=dict)
    baseline_src: Path | None = None  # another vchunkfs source tree, for "base-" contestants
    clock: tuple[float, float] | None = None  # a contestant's own timing, if it keeps one
    on_baseline: bool = False  # the next mount runs the daemon of baseline_src

    @contextlib.contextmanager
    def mount(self) -> Iterator[Path]:
        mnt = self.work / "mnt"
        # PYTHONSAFEPATH: ``python -m`` would otherwise put the working directory (this
        # tree) before PYTHONPATH, and the "before" daemon would run this tree's code
        env = ({"PYTHONPATH": str(self.baseline_src), "PYTHONSAFEPATH": "1"}
               if self.on_baseline else None)
        with mounted(self.repo, mnt, f"authorize={PREFIX}", "presentation=v3+v2-decoded",
                     *self.mount_options, env=env, log=self.work / "daemon.log") as m:
            os.listdir(m.path / "v3")  # mounted and answering: not timed
            drop_caches()
            try:
                yield m.path
            finally:
                with contextlib.suppress(OSError):
                    self.last_stats = json.loads(os.getxattr(m.path, "user.vchunkfs.stats"))

    def array_paths(self, mnt: Path) -> list[str]:
        return [str(mnt / "v3" / c.key) for c in self.chunks]


def read_files(paths: Sequence[str]) -> int:
    buf = bytearray(BUF)
    total = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            while n := os.readv(fd, [buf]):
                total += n
        finally:
            os.close(fd)
    return total


def readdir_order(mnt: Path) -> list[str]:
    """Chunk files of the four variables under MNT/v3 as ``find`` lists them: readdir
    order, depth first (the variables too in the order readdir gives them)."""
    out = []
    for var in os.listdir(mnt / "v3"):
        if var in VARIABLES:
            for root, _, names in os.walk(mnt / "v3" / var):
                out.extend(os.path.join(root, n) for n in names if n != "zarr.json")
    return out


def mount_readdir(env: Env) -> int:
    with env.mount() as mnt:
        paths = readdir_order(mnt)  # the listing is part of what find does: timed
        if len(paths) != len(env.chunks):
            raise RuntimeError(f"readdir order found {len(paths)} chunk files")
        return read_files(paths)


def mount_array(env: Env) -> int:
    with env.mount() as mnt:
        return read_files(env.array_paths(mnt))


def mount_threads(env: Env) -> int:
    with env.mount() as mnt:
        paths = env.array_paths(mnt)
        with ThreadPoolExecutor(THREADS) as pool:
            return sum(pool.map(lambda p: read_files([p]), paths))


def xarray_mount(env: Env) -> int:
    import xarray as xr

    with env.mount() as mnt:
        ds = xr.open_zarr(str(mnt / "v3"), consolidated=False, zarr_format=3).load()
        return int(sum(ds[v].nbytes for v in VARIABLES))


def gdal_translate(env: Env) -> int:
    with env.mount() as mnt, tempfile.TemporaryDirectory(dir="/dev/shm") as out:
        for t in range(DAYS):
            subprocess.run(["gdal_translate", "-q", "-of", "ENVI",
                            f'ZARR:"{mnt}/v2-decoded":/sst:{t}:0', f"{out}/day.envi"],
                           check=True, stdout=subprocess.DEVNULL)
        return os.path.getsize(f"{out}/day.envi") * DAYS


def ncdump(env: Env) -> int:
    with env.mount() as mnt:
        r = subprocess.run(["ncdump", "-v", "sst", f"file://{mnt}/v2-decoded#mode=zarr,file"],
                           check=True, stdout=subprocess.PIPE)
        return len(r.stdout)


def open_store(env: Env, whole: bool = False) -> Any:
    """A read-only store on a new repository object. ``whole``: one GET per chunk
    (by default icechunk fetches a virtual chunk with the storage's concurrency
    settings, and a local repository's are 5 requests of 4 KiB or more)."""
    import icechunk as ic

    creds = ic.containers_credentials({PREFIX: ic.s3_credentials(
        access_key_id=env.s3.access_key_id, secret_access_key=env.s3.secret_access_key)})
    config = ic.RepositoryConfig.default()
    if whole:
        config.storage = ic.StorageSettings(concurrency=ic.StorageConcurrencySettings(
            max_concurrent_requests_for_object=1, ideal_concurrent_request_size=64 << 20))
    repo = ic.Repository.open(ic.local_filesystem_storage(str(env.repo)), config=config,
                              authorize_virtual_chunk_access=creds)
    return repo.readonly_session("main").store


def icechunk_get(env: Env, concurrent: bool, whole: bool = False) -> int:
    import zarr.core.buffer

    proto = zarr.core.buffer.default_buffer_prototype()
    drop_caches()

    async def main() -> int:
        store = open_store(env, whole)  # a new repository object: nothing cached
        keys = [c.key for c in env.chunks]
        if concurrent:
            bufs = await asyncio.gather(*(store.get(k, proto) for k in keys))
        else:
            bufs = [await store.get(k, proto) for k in keys]
        return sum(len(b) for b in bufs)

    return asyncio.run(main())


def xarray_icechunk(env: Env) -> int:
    import xarray as xr

    drop_caches()
    ds = xr.open_zarr(open_store(env), consolidated=False, zarr_format=3).load()
    return int(sum(ds[v].nbytes for v in VARIABLES))


def warm_up_xarray(env: Env) -> None:
    """Import and first-use costs of xarray, Dask and zarr's codecs, paid once before
    any sample: without it the first xarray sample of a run pays seconds of them (10 s
    of CPU were seen on a busy machine), and which contestant comes first rotates."""
    import xarray as xr

    ds = xr.open_zarr(open_store(env), consolidated=False, zarr_format=3)
    ds.isel(time=0).load()


def obstore_get(env: Env, concurrent: bool, endpoint: str | None = None) -> int:
    import obstore
    from obstore.store import S3Store

    async def main() -> int:
        store = S3Store(BUCKET, endpoint=endpoint or env.proxy.url, region=env.s3.region,
                        access_key_id=env.s3.access_key_id,
                        secret_access_key=env.s3.secret_access_key,
                        client_options={"allow_http": True})

        async def one(c: DayChunk) -> int:
            data = await obstore.get_range_async(store, f"oisst/{c.nc.name}", start=c.offset,
                                                 length=c.length)
            return len(data)

        if concurrent:
            return sum(await asyncio.gather(*(one(c) for c in env.chunks)))
        return sum([await one(c) for c in env.chunks])

    return asyncio.run(main())


def obstore_coalesced(env: Env) -> int:
    """One GET per source file covering the byte ranges of its chunks (a day's four
    variables lie next to each other in an OISST file), all at once: what coalescing
    adjacent ranges across keys could gain (icechunk does not; the mount does not)."""
    import obstore
    from obstore.store import S3Store

    spans: dict[str, tuple[int, int, int]] = {}  # object -> (start, end, bytes of chunks)
    for c in env.chunks:
        start, end, nbytes = spans.get(c.nc.name, (c.offset, c.offset + c.length, 0))
        spans[c.nc.name] = (min(start, c.offset), max(end, c.offset + c.length),
                            nbytes + c.length)

    async def main() -> int:
        store = S3Store(BUCKET, endpoint=env.proxy.url, region=env.s3.region,
                        access_key_id=env.s3.access_key_id,
                        secret_access_key=env.s3.secret_access_key,
                        client_options={"allow_http": True})

        async def one(name: str, start: int, end: int, nbytes: int) -> int:
            data = await obstore.get_range_async(store, f"oisst/{name}", start=start,
                                                 end=end)
            if len(data) != end - start:
                raise RuntimeError(f"{name}: short range")
            return nbytes  # the chunks' bytes, as the other contestants count

        return sum(await asyncio.gather(*(one(n, *span) for n, span in spans.items())))

    return asyncio.run(main())


def ingest_vchunkfs(env: Env) -> int:
    """``vchunkfs ingest`` of the 31 files through the proxy into a new repository
    (``init`` before the clock, as a daily job's repository exists already)."""
    repo = env.work / "ingested"
    shutil.rmtree(repo, ignore_errors=True)
    cli("init", str(repo))
    t0 = time.monotonic()
    cli("ingest", str(repo), f"{PREFIX}*.nc", "--concat-dim", "time", "--container", PREFIX,
        "--source-endpoint", env.proxy.url, "--source-region", env.s3.region,
        src=env.baseline_src if env.on_baseline else None)
    env.clock = (t0, time.monotonic())
    return 0


def ingest_guide(env: Env) -> int:
    """The Icechunk guide's Python (VirtualiZarr, ``xr.concat``, ``to_icechunk``) on the
    same files through the proxy: scripts/bench/bench_ingest.py's ``GUIDE_S3``."""
    from bench_ingest import GUIDE_S3

    repo = env.work / "ingested-guide"
    shutil.rmtree(repo, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", GUIDE_S3, BUCKET, "oisst/", env.proxy.url, str(repo)],
                   check=True, capture_output=True)
    env.clock = (t0, time.monotonic())
    return 0


def on_baseline(fn: Callable[[Env], int]) -> Callable[[Env], int]:
    """``fn`` with its mount served (or its ingest run) by ``--baseline-src``'s code."""
    def run(env: Env) -> int:
        if env.baseline_src is None:
            raise RuntimeError("base- contestants need --baseline-src")
        env.on_baseline = True
        try:
            return fn(env)
        finally:
            env.on_baseline = False
    return run


CONTESTANTS: dict[str, tuple[str, Callable[[Env], int]]] = {
    "mount-readdir": ("mount, readdir order (1 reader)", mount_readdir),
    "mount-array": ("mount, array order (1 reader)", mount_array),
    "mount-8": (f"mount, {THREADS} readers", mount_threads),
    "xarray-mount": ("xarray open_zarr(MNT/v3).load()", xarray_mount),
    "xarray-icechunk": ("xarray open_zarr(icechunk store).load()", xarray_icechunk),
    "gdal": ("gdal_translate sst, 31 days (v2-decoded)", gdal_translate),
    "ncdump": ("ncdump -v sst (v2-decoded)", ncdump),
    "icechunk-seq": ("icechunk store.get, sequential", lambda e: icechunk_get(e, False)),
    "icechunk-gather": ("icechunk store.get, asyncio.gather", lambda e: icechunk_get(e, True)),
    "icechunk-seq-1get": ("icechunk store.get, sequential, 1 GET a chunk",
                          lambda e: icechunk_get(e, False, whole=True)),
    "icechunk-gather-1get": ("icechunk store.get, gather, 1 GET a chunk",
                             lambda e: icechunk_get(e, True, whole=True)),
    "obstore-seq": ("obstore GETs through the proxy, sequential",
                    lambda e: obstore_get(e, False)),
    "obstore-gather": ("obstore GETs through the proxy, concurrent",
                       lambda e: obstore_get(e, True)),
    "obstore-coalesced": ("obstore, one GET per file for its adjacent chunks, concurrent",
                          obstore_coalesced),
    "ingest": ("vchunkfs ingest of the 31 files", ingest_vchunkfs),
    "ingest-guide": ("the guide's Python ingest of the 31 files", ingest_guide),
}
# the contestants of vchunkfs again, run by the code of --baseline-src (before)
BASE_OF = ("mount-readdir", "mount-array", "mount-8", "xarray-mount", "ingest")
CONTESTANTS.update({f"base-{n}": (f"{CONTESTANTS[n][0]}, before", on_baseline(CONTESTANTS[n][1]))
                    for n in BASE_OF})


# -- measuring ---------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    nbytes: int
    link: dict[str, float]
    cpu_busy: float  # fraction of the machine's CPU time used by everything, during it
    stats: dict[str, Any]
    server_cpu: float = 0.0  # CPU seconds the moto server used during it


def cpu_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(env: Env, fn: Callable[[Env], int]) -> Sample:
    env.last_stats = {}
    moto0 = process_cpu(env.s3.pid)
    mark = env.proxy.mark()
    # the mount start-up is outside the timing: time only the reading inside fn
    timing: dict[str, float] = {}
    orig_mount = env.mount

    @contextlib.contextmanager
    def timed_mount() -> Iterator[Path]:
        with orig_mount() as mnt:
            timing["t0"] = time.monotonic()
            timing["mark"] = env.proxy.mark()
            try:
                yield mnt
            finally:
                timing["t1"] = time.monotonic()

    env.mount = timed_mount  # type: ignore[method-assign]
    try:
        b0, a0 = cpu_ticks()
        t0 = time.monotonic()
        n = fn(env)
        t1 = time.monotonic()
        b1, a1 = cpu_ticks()
    finally:
        env.mount = orig_mount  # type: ignore[method-assign]
    if "t0" in timing:
        t0, t1, mark = timing["t0"], timing["t1"], int(timing["mark"])
    elif env.clock is not None:
        t0, t1 = env.clock
        env.clock = None
    return Sample(t1 - t0, n, env.proxy.window(mark, t0, t1),
                  (b1 - b0) / max(1, a1 - a0), dict(env.last_stats),
                  process_cpu(env.s3.pid) - moto0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    files = build()
    chunks = day_chunks(files, VARIABLES)
    total = sum(c.length for c in chunks)
    names = [n for n in CONTESTANTS if (not args.only or n in args.only.split(","))
             and (args.baseline_src or not n.startswith("base-"))]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
                    "python": platform.python_version(), "kernel": platform.release()},
        "commit": (subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True).stdout.strip()
                   or f"(not a git checkout: {PROJECT})"),
        "dirty": bool(subprocess.run(["git", "-C", str(PROJECT), "status", "--porcelain",
                                      "vchunkfs"], capture_output=True,
                                     text=True).stdout.strip()),
        "chunks": len(chunks), "chunk_bytes": total, "runs": args.runs,
        "bandwidth": args.bandwidth, "mount_options": args.mount_options, "delays": {},
        "baseline_src": str(args.baseline_src or ""),
    }
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_REGION")}
    try:
        with servers.moto_s3_server(log_dir=work / "moto") as s3:
            os.environ.update(AWS_ACCESS_KEY_ID=s3.access_key_id,
                              AWS_SECRET_ACCESS_KEY=s3.secret_access_key,
                              AWS_REGION=s3.region)
            s3.create_bucket(BUCKET)
            for f in files:
                s3.put_object(BUCKET, f"oisst/{f.name}", f.read_bytes())
            proxy = DelayProxy((s3.host, s3.port))
            try:
                repo = work / "repo"
                cli("init", str(repo))
                cli("ingest", str(repo), f"{PREFIX}*.nc", "--concat-dim", "time",
                    "--container", PREFIX, "--source-endpoint", proxy.url,
                    "--source-region", s3.region)
                options = tuple(o for o in args.mount_options.split(",") if o)
                if args.prefetch is not None:
                    options += (f"prefetch={args.prefetch}",)
                env = Env(repo, chunks, proxy, s3, work, options,
                          baseline_src=args.baseline_src)
                print(f"{len(chunks)} chunks, {total / 1e6:.1f} MB; commit {results['commit']}"
                      f"{' (vchunkfs/ modified)' if results['dirty'] else ''}", flush=True)
                if any(n.startswith("xarray") for n in names):
                    warm_up_xarray(env)
                if not args.only or "ceiling" in args.only.split(","):
                    results["ceiling"] = ceiling(env, args.runs)
                for delay in args.delays:
                    proxy.delay = delay / 1000
                    proxy.bandwidth = args.bandwidth
                    results["delays"][str(delay)] = one_delay(env, names, args.runs, delay)
                    proxy.bandwidth = 0
            finally:
                proxy.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        with contextlib.suppress(OSError):
            servers_mnt = work / "mnt"
            if os.path.ismount(servers_mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(servers_mnt)])
        shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["cold"] = DROP.get("status", "")
    return results


def summarize(samples: list[Sample]) -> dict[str, Any]:
    secs = [s.seconds for s in samples]
    med = statistics.median(secs)
    return {"median_s": med, "min_s": min(secs), "spread": (max(secs) - min(secs)) / med,
            "seconds": secs, "bytes": samples[0].nbytes,
            "requests": statistics.median(s.link["requests"] for s in samples),
            "peak_in_flight": statistics.median(s.link["peak_in_flight"] for s in samples),
            "mean_in_flight": statistics.median(s.link["mean_in_flight"] for s in samples),
            "cpu_busy": statistics.median(s.cpu_busy for s in samples),
            "server_cpu_s": statistics.median(s.server_cpu for s in samples),
            "daemon_stats": [s.stats for s in samples if s.stats]}


def one_delay(env: Env, names: list[str], runs: int, delay: int) -> dict[str, Any]:
    got: dict[str, list[Sample]] = {n: [] for n in names}
    for r in range(runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            s = sample(env, CONTESTANTS[n][1])
            got[n].append(s)
            print(f"  {delay} ms, run {r + 1}: {n:20} {s.seconds:6.2f} s  "
                  f"{s.link['requests']:4.0f} req  peak {s.link['peak_in_flight']:.0f}  "
                  f"mean {s.link['mean_in_flight']:.2f} in flight  moto {s.server_cpu:.2f} "
                  f"CPU s  machine {s.cpu_busy:.0%}",
                  flush=True)
    return {n: summarize(v) for n, v in got.items()}


def ceiling(env: Env, runs: int) -> dict[str, Any]:
    """obstore GETs straight to moto, without the proxy."""
    got: dict[str, list[Sample]] = {"obstore-seq": [], "obstore-gather": []}
    direct = env.s3.endpoint_url
    for _ in range(runs):
        for n, conc in (("obstore-seq", False), ("obstore-gather", True)):
            b0, a0 = cpu_ticks()
            moto0 = process_cpu(env.s3.pid)
            t0 = time.monotonic()
            nb = obstore_get(env, conc, endpoint=direct)
            t1 = time.monotonic()
            b1, a1 = cpu_ticks()
            got[n].append(Sample(t1 - t0, nb, {"requests": len(env.chunks),
                                               "peak_in_flight": 0, "mean_in_flight": 0},
                                 (b1 - b0) / max(1, a1 - a0), {},
                                 process_cpu(env.s3.pid) - moto0))
            print(f"  no proxy: {n:16} {t1 - t0:6.2f} s", flush=True)
    return {n: summarize(v) for n, v in got.items()}


# -- report ------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Commit {results['commit']}{' (vchunkfs/ modified)' if results['dirty'] else ''}"
             f", {results['chunks']} chunk files ({results['chunk_bytes'] / 1e6:.1f} MB), "
             f"medians of {results['runs']} run(s); bandwidth cap "
             f"{results['bandwidth'] / 1e6:.1f} MB/s per connection"
             if results["bandwidth"] else
             f"Commit {results['commit']}{' (vchunkfs/ modified)' if results['dirty'] else ''}"
             f", {results['chunks']} chunk files ({results['chunk_bytes'] / 1e6:.1f} MB), "
             f"medians of {results['runs']} run(s); no bandwidth cap", ""]
    if results.get("baseline_src"):
        lines += [f"\"before\": the daemon of {results['baseline_src']}", ""]
    if "ceiling" in results:
        lines += ["Server ceiling (no proxy, no delay):", "",
                  "| GETs straight to moto | median s | spread | MB/s | moto CPU s |",
                  "|---|---:|---:|---:|---:|"]
        for n, r in results["ceiling"].items():
            lines.append(f"| {n} | {r['median_s']:.2f} | {r['spread']:.0%} | "
                         f"{r['bytes'] / r['median_s'] / 1e6:.0f} | {r['server_cpu_s']:.2f} |")
        lines.append("")
    for delay, rows in results["delays"].items():
        ref = rows.get(REFERENCE, {}).get("median_s")
        lines += [f"Delay {delay} ms per request:", "",
                  "| contestant | median s | spread | / icechunk gather | requests | "
                  "peak in flight | mean in flight | moto CPU s | machine CPU busy |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, r in rows.items():
            ratio = f"{r['median_s'] / ref:.2f}" if ref else "-"
            lines.append(f"| {CONTESTANTS[n][0]} | {r['median_s']:.2f} | {r['spread']:.0%} | "
                         f"{ratio} | {r['requests']:.0f} | {r['peak_in_flight']:.0f} | "
                         f"{r['mean_in_flight']:.2f} | {r['server_cpu_s']:.2f} | "
                         f"{r['cpu_busy']:.0%} |")
        lines.append("")
    m = results["machine"]
    lines.append(f"Machine: {m['cpus']} CPUs, load average {m['loadavg_start'][0]:.2f} at the "
                 f"start, {m['loadavg_end'][0]:.2f} at the end; cold: {results['cold']}.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delays", default="30",
                   help="per-request delays of the proxy, ms, comma-separated (default 30)")
    p.add_argument("--runs", type=int, default=3, help="samples of each contestant (default 3)")
    p.add_argument("--bandwidth", type=float, default=0.0,
                   help="pace every proxied connection's responses to this many bytes/s "
                        "(default 0: no cap)")
    p.add_argument("--prefetch", type=int, default=None,
                   help="the mounts' prefetch= option (default: the daemon's default)")
    p.add_argument("--mount-options", default="",
                   help="more mount options for every mount, comma-separated")
    p.add_argument("--only", default="",
                   help="contestants to run, comma-separated, from: "
                        + ", ".join([*CONTESTANTS, "ceiling"]))
    p.add_argument("--baseline-src", type=Path,
                   help="a vchunkfs source tree (e.g. `git archive` of the commit before) "
                        "whose daemon serves the base-* contestants: the mount's readers "
                        "again, before the change")
    p.add_argument("--out", type=Path, help="write the markdown report here too")
    p.add_argument("--json", type=Path, help="write every sample as JSON here")
    args = p.parse_args(argv)
    args.delays = [int(d) for d in args.delays.split(",") if d]
    results = run(args)
    report = markdown(results)
    print(report)
    if args.out:
        args.out.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
