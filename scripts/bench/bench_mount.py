#!/usr/bin/env python3
"""Reading every chunk of an OISST month through a vchunkfs mount, against the alternatives.

One run, one data set: 31 OISST-like netCDF4 files (``scripts/make_oisst.py``)
turned into an Icechunk repository of virtual refs with VirtualiZarr, as in the
Icechunk guide. Each pass reads the bytes of every stored chunk of ``sst``,
``anom``, ``err`` and ``ice`` (31 x 4 chunk files) in the same order, one file
after the other, into a reused buffer:

(a) ``pread`` of the same byte ranges from the netCDF files, warm and cold;
(b) the vchunkfs mount: cold (a fresh mount, then the page cache dropped),
    daemon-cached (a fresh open of every file after a first pass, with the
    kernel's page cache dropped, so the daemon's block cache answers) and
    kernel-cached (the second read of the same files, from keep_cache);
(c) fsspec's ReferenceFileSystem over the same refs (kerchunk refs from
    VirtualiZarr) mounted with ``fsspec.fuse`` (fusepy), cold and warm;
(d) icechunk's own ``store.get`` of the same chunk keys, in this process;
(e) ``nullfs.py``, a do-nothing pyfuse3 + trio daemon serving the same chunk
    files from memory: served by the daemon, and kernel-cached;

then ``xarray.open_zarr(MOUNTPOINT).load()`` against
``xarray.open_zarr(session.store).load()``, and the knobs (read_ahead_kb,
keep_cache, workers). "Cold" means ``sync; echo 3 > /proc/sys/vm/drop_caches``
before the pass (root only; the report says when that failed).

The machine this was written for has 2 cores and is shared, so the figures that
are compared are measured in turns: every mount stays mounted for a state
(kernel-cached, daemon-cached, ...) and each run takes one sample of every
contestant, the order rotating from run to run, so that a slow spell falls on
all of them alike. A sample during which another process used the CPU (counted
from /proc/stat against this process and its daemons) or a test suite or an
older benchmark ran is redone after a pause. Each figure is the median of the
runs; the report also gives the best run and the spread ((max - min) / median).

Usage::

    python scripts/bench/bench_mount.py [--runs 7] [--days 31] [--out REPORT.md]
    python scripts/bench/bench_mount.py --quick      # 3 days, 1 run: a smoke test

The data lives in /tmp/vchunkfs-bench-oisst (built once, reused). Needs root
(drop_caches, /sys/class/bdi), /dev/fuse, fsspec and fusepy (plus libfuse2) in
the environment. Every mount is unmounted and every daemon started here is
stopped before the script exits, also on errors. Before each section the script
waits while another benchmark or test suite (``bench_*``, ``pytest``) runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["ICECHUNK_LOG"] = "error"

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parent
DATA = Path("/tmp/vchunkfs-bench-oisst")
NC_DIR = DATA / "nc"
MNT_DIR = DATA / "mnt"
VARIABLES = ("sst", "anom", "err", "ice")
COORDS = ("time", "zlev", "lat", "lon")
BUF_SIZE = 4 * 1024 * 1024  # bigger than any chunk: one read() per file, then EOF
THREADS = 8  # readers of the parallel variants
QUIET_WAIT = 1800.0  # most seconds to wait for other benchmarks or test suites
SETTLE = 0.3  # seconds after drop_caches before a timed pass
NO_WAIT = False  # --no-wait: measure even when the machine is busy (smoke tests only)


# -- the data set ------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One stored chunk: where its bytes are in a netCDF file, and its names elsewhere."""

    var: str
    day: int
    nc: str
    offset: int
    length: int

    @property
    def zarr_path(self) -> str:
        """Its file in the vchunkfs mount (and in the nullfs tree)."""
        return f"{self.var}/c/{self.day}/0/0/0"

    @property
    def ref_key(self) -> str:
        """Its key in the kerchunk (Zarr v2) refs, i.e. its file in the fsspec mount."""
        return f"{self.var}/{self.day}.0.0.0"


@dataclass
class DataSet:
    root: Path
    days: int

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def refs(self) -> Path:
        return self.root / "refs.json"

    @property
    def chunk_dir(self) -> Path:
        return self.root / "chunks"

    @property
    def prefix(self) -> str:
        return f"file://{NC_DIR}/"

    def chunks(self) -> list[Chunk]:
        refs = json.loads(self.refs.read_text())["refs"]
        out = []
        for var in VARIABLES:
            for day in range(self.days):
                url, offset, length = refs[f"{var}/{day}.0.0.0"]
                out.append(Chunk(var, day, url.removeprefix("file://"), offset, length))
        return out


def build(days: int) -> DataSet:
    """The netCDF files, the Icechunk repository, the kerchunk refs and the nullfs tree.

    Reused when present (a READY file marks a complete build).
    """
    ds = DataSet(DATA / f"days{days}", days)
    if (ds.root / "READY").exists():
        return ds
    print(f"building the data set in {ds.root} ...", flush=True)
    subprocess.run([sys.executable, str(SCRIPTS / "make_oisst.py"), str(NC_DIR), "--days",
                    str(days)], check=True, stdout=subprocess.DEVNULL)
    files = sorted(NC_DIR.glob("oisst-avhrr-v02r01.*.nc"))[:days]
    if len(files) != days:
        raise RuntimeError(f"expected {days} netCDF files in {NC_DIR}, found {len(files)}")

    import icechunk as ic
    import xarray as xr
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser

    registry = ObjectStoreRegistry({"file://": LocalStore()})
    parser = HDFParser()
    vdss = [open_virtual_dataset(f"file://{f}", registry=registry, parser=parser,
                                 loadable_variables=list(COORDS)) for f in files]
    vds = xr.concat(vdss, dim="time", coords="minimal", compat="override",
                    combine_attrs="override")

    shutil.rmtree(ds.root, ignore_errors=True)
    ds.root.mkdir(parents=True)
    ds.refs.write_text(json.dumps(vds.vz.to_kerchunk(format="dict"), default=int))

    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        ic.VirtualChunkContainer(ds.prefix, ic.local_filesystem_store(str(NC_DIR))))
    repo = ic.Repository.create(ic.local_filesystem_storage(str(ds.repo)), config,
                                authorize_virtual_chunk_access=credentials(ds))
    session = repo.writable_session("main")
    vds.vz.to_icechunk(session.store)
    session.commit(f"OISST, {days} days, virtual refs by VirtualiZarr")

    for c in ds.chunks():
        path = ds.chunk_dir / c.zarr_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(c.nc, "rb") as f:
            path.write_bytes(os.pread(f.fileno(), c.length, c.offset))
    (ds.root / "READY").touch()
    return ds


def credentials(ds: DataSet) -> dict[str, Any]:
    import icechunk as ic

    return {ds.prefix: ic.credentials.LocalFileSystemAccess}


# -- system helpers ----------------------------------------------------------------


DROP_STATUS: dict[str, str] = {}


def drop_caches(level: int = 3) -> bool:
    """Drop the page cache (1), or it and the dentries and inodes (3): of every FUSE mount too."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write(f"{level}\n")
    except OSError as e:
        DROP_STATUS.setdefault("error", f"{type(e).__name__}: {e}")
        return False
    return True


def drop_and_settle(level: int = 3) -> None:
    """Drop the caches, then give the daemons a moment to handle the FORGET requests that
    dropping dentries and inodes sends them (so that this work, which belongs to the
    drop, does not land in the next timed pass, or in another mount's)."""
    drop_caches(level)
    time.sleep(SETTLE)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(_stat_fields(pid)[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _stat_fields(pid: int | str) -> list[str]:
    """Fields of /proc/PID/stat after the command name (fields[1] is the parent pid)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


# commands that only run another: a benchmark waiting in `flock` for the lock this run
# holds would otherwise be waited for until QUIET_WAIT ran out
WRAPPERS = {"flock", "timeout", "env", "nice", "ionice", "taskset"}


def busy_processes() -> list[str]:
    """Other benchmarks or test suites running now (not this one, its parents or children).

    A benchmark started after this one is not counted (it waits for this one), so
    two benchmarks started together run one after the other instead of waiting for
    each other; a test suite always counts.
    """
    mine = _ancestors()
    my_start = int(_stat_fields(os.getpid())[19])
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            fields = _stat_fields(entry)
            ppid, start = int(fields[1]), int(fields[19])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() or "grep" in cmd:
            continue
        if os.path.basename(cmd.split(" ", 1)[0]) in WRAPPERS:
            continue  # e.g. a flock waiting for the lock this run holds; its child counts
        if "pytest" in cmd or ("bench_" in cmd and start < my_start):
            out.append(f"{entry}: {cmd[:100]}")
    return out


def wait_quiet(section: str, quiet: bool = False) -> None:
    """Wait while another benchmark or test suite runs (the machine has 2 cores)."""
    if NO_WAIT:
        return
    deadline = time.monotonic() + QUIET_WAIT
    said = quiet
    while busy := busy_processes():
        if time.monotonic() > deadline:
            print(f"  WARNING: still busy after {QUIET_WAIT:.0f} s, measuring {section} anyway:"
                  f" {busy}", flush=True)
            return
        if not said:
            print(f"  waiting before {section}: {busy}", flush=True)
            said = True
        time.sleep(10)


def bdi_path(mountpoint: Path) -> Path:
    st = os.stat(mountpoint)
    return Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")


def read_ahead_of(mountpoint: Path) -> int:
    try:
        return int(bdi_path(mountpoint).read_text())
    except (OSError, ValueError):
        return -1


def set_read_ahead(mountpoint: Path, kb: int) -> None:
    bdi_path(mountpoint).write_text(f"{kb}\n")


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


# -- daemons -----------------------------------------------------------------------


def unmount(mountpoint: Path) -> None:
    """Unmount, lazily as a last resort; never raises."""
    for args in (["fusermount3", "-u"], ["fusermount3", "-u"], ["fusermount3", "-u", "-z"]):
        if not os.path.ismount(mountpoint):
            return
        subprocess.run([*args, str(mountpoint)], capture_output=True)
        if os.path.ismount(mountpoint):
            time.sleep(0.3)


@contextlib.contextmanager
def daemon(cmd: Sequence[str], mountpoint: Path, name: str, env: dict[str, str] | None = None
           ) -> Iterator[subprocess.Popen[bytes]]:
    """Run a foreground FUSE daemon serving ``mountpoint`` for the duration of the block.

    Ready once the mountpoint is a mount and answers a stat (which waits for the
    kernel's INIT to be answered). Always unmounted; the daemon (only the one
    started here, by pid) is killed if it does not exit by itself.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(mountpoint):
        raise RuntimeError(f"{mountpoint} is already mounted")
    log = mountpoint.with_name(mountpoint.name + ".log")
    with open(log, "ab") as logf:
        proc = subprocess.Popen(list(cmd), stdout=logf, stderr=logf,
                                env={**os.environ, "ICECHUNK_LOG": "error", **(env or {})})
    OUR_PIDS.add(proc.pid)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} before mounting; "
                                   f"see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not mounted at {mountpoint} after 60 s; see {log}")
            time.sleep(0.02)
        os.stat(mountpoint)
        yield proc
    finally:
        unmount(mountpoint)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
            unmount(mountpoint)
        OUR_PIDS.discard(proc.pid)


def vchunkfs(ds: DataSet, *options: str, name: str = "vchunkfs", pythonpath: str | None = None
             ) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """A vchunkfs daemon; ``pythonpath``: the tree whose ``vchunkfs`` it runs (--baseline)."""
    mnt = MNT_DIR / name
    opts = ",".join(("foreground", f"authorize={ds.prefix}", *options))
    return daemon([venv_bin("mount.vchunkfs"), str(ds.repo), str(mnt), "-o", opts], mnt, name,
                  env={"PYTHONPATH": pythonpath} if pythonpath else None)


def nullfs(ds: DataSet, *args: str, name: str = "nullfs"
           ) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    mnt = MNT_DIR / name
    return daemon([sys.executable, str(HERE / "nullfs.py"), str(ds.chunk_dir), str(mnt), *args],
                  mnt, name)


def fsspec_fuse(ds: DataSet, name: str = "fsspec"
                ) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    mnt = MNT_DIR / name
    return daemon([sys.executable, str(Path(__file__).resolve()), "--serve-fsspec",
                   str(ds.refs), str(mnt)], mnt, name)


def serve_fsspec(refs: Path, mountpoint: Path) -> int:
    """Mount fsspec's ReferenceFileSystem over ``refs`` with ``fsspec.fuse`` (foreground).

    The one change to fsspec's mount: ``FUSEr`` joins every FUSE path to its root,
    ``path.rstrip("/") + "/"``, so with any ``path`` the chunk ``sst/0.0.0.0`` is
    looked up as ``/sst/0.0.0.0``, which a ReferenceFileSystem does not know:
    every stat below the mount root fails with ENOENT. A root of ``""`` fixes it.
    Everything else is fsspec's as shipped (``fsspec.fuse.run``, one thread).
    """
    import fsspec
    from fsspec.fuse import FUSEr, run

    class RootedFUSEr(FUSEr):  # type: ignore[misc]
        def __init__(self, fs: Any, path: str, ready_file: bool = False) -> None:
            super().__init__(fs, path, ready_file)
            self.root = ""

    fs = fsspec.filesystem("reference", fo=str(refs))
    run(fs, "", str(mountpoint), foreground=True, ops_class=RootedFUSEr)
    return 0


# -- passes ------------------------------------------------------------------------


class Reader:
    """Reads whole files into a reused buffer, one after the other or from THREADS threads."""

    def __init__(self) -> None:
        self.bufs = [memoryview(bytearray(BUF_SIZE)) for _ in range(THREADS)]
        self.pool = ThreadPoolExecutor(THREADS)

    @staticmethod
    def _read(paths: Sequence[str], buf: memoryview) -> int:
        total = 0
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                while (n := os.readv(fd, [buf])) > 0:
                    total += n
            finally:
                os.close(fd)
        return total

    def files(self, paths: Sequence[str]) -> int:
        return self._read(paths, self.bufs[0])

    def files_parallel(self, paths: Sequence[str]) -> int:
        parts = [paths[i::THREADS] for i in range(THREADS)]
        return sum(self.pool.map(self._read, parts, self.bufs))

    @staticmethod
    def open_close(paths: Sequence[str]) -> int:
        for p in paths:
            os.close(os.open(p, os.O_RDONLY))
        return 0

    def pread(self, chunks: Sequence[Chunk]) -> int:
        """The chunks' byte ranges read straight from the netCDF files (each opened once)."""
        buf = self.bufs[0]
        fds: dict[str, int] = {}
        total = 0
        try:
            for c in chunks:
                fd = fds.get(c.nc)
                if fd is None:
                    fd = fds[c.nc] = os.open(c.nc, os.O_RDONLY)
                total += os.preadv(fd, [buf[:c.length]], c.offset)
        finally:
            for fd in fds.values():
                os.close(fd)
        return total

    def close(self) -> None:
        self.pool.shutdown()


def verify(paths: Sequence[str], chunks: Sequence[Chunk], expected: dict[Chunk, bytes]) -> None:
    """Every file holds exactly the chunk's bytes (untimed)."""
    for p, c in zip(paths, chunks, strict=True):
        with open(p, "rb") as f:
            if f.read() != expected[c]:
                raise AssertionError(f"{p}: not the bytes of {c}")


# -- figures -----------------------------------------------------------------------


@dataclass
class Result:
    """Seconds per pass over ``nbytes`` bytes."""

    label: str
    state: str
    samples: list[float] = field(default_factory=list)
    nbytes: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def gbps(self) -> float:
        return self.nbytes / 1e9 / self.median if self.samples else float("nan")

    @property
    def best_gbps(self) -> float:
        return self.nbytes / 1e9 / min(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.median


RESULTS: dict[str, Result] = {}


OUR_PIDS: set[int] = set()  # the daemons started here (their CPU time is not interference)


def _busy_jiffies() -> int:
    """CPU time (1/100 s) all CPUs spent busy since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4]  # minus idle and iowait


def _our_jiffies() -> int:
    total = 0
    for pid in (os.getpid(), *OUR_PIDS):
        try:
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])  # utime, stime of every thread
        except (OSError, ValueError, IndexError):
            pass
    return total


class Window:
    """Times a pass, and counts the CPU time other processes used meanwhile."""

    seconds: float = 0.0
    foreign: int = 0  # jiffies

    def __enter__(self) -> Window:
        self._b0, self._o0 = _busy_jiffies(), _our_jiffies()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.foreign = (_busy_jiffies() - self._b0) - (_our_jiffies() - self._o0)

    @property
    def disturbed(self) -> bool:
        """Someone else was busy: more foreign CPU than 3 jiffies plus 10% of the cores.

        The slack absorbs the accounting's rounding (a jiffy or two either way) and
        the kernel threads that complete this process's own disk reads.
        """
        return self.foreign > 3 + 0.1 * self.seconds * 100 * (os.cpu_count() or 1)


Sample = Callable[[], tuple[Window, int]]  # one timed pass: its window and bytes read
RETRIES = 20  # times a disturbed sample is redone (after a pause) before it is kept anyway
REDONE: dict[str, int] = {}  # samples redone, by figure
KEPT_DISTURBED: dict[str, int] = {}  # samples kept although disturbed, by figure


def undisturbed(key: str, w: Window, attempt: int) -> bool:
    """True if ``w`` may be kept; else count it and pause before the next attempt."""
    if NO_WAIT or not (w.disturbed or busy_processes()):
        return True
    if attempt == RETRIES:
        KEPT_DISTURBED[key] = KEPT_DISTURBED.get(key, 0) + 1
        return True
    REDONE[key] = REDONE.get(key, 0) + 1
    time.sleep(min(1.0 + attempt, 10.0))  # let whatever else runs get on with it
    return False


def clean_sample(key: str, sample: Sample) -> tuple[float, int]:
    """One sample taken while nothing else runs: redone after a pause if disturbed."""
    for attempt in range(RETRIES + 1):
        wait_quiet("the next sample", quiet=True)
        w, n = sample()
        if undisturbed(key, w, attempt):
            break
    return w.seconds, n


# -- interleaved rounds ------------------------------------------------------------


@dataclass
class Entry:
    """One figure of an interleaved round: how to take one sample of it."""

    key: str
    label: str
    state: str
    sample: Sample
    nbytes: int | None = None  # None: the bytes the sample reports


def _print(r: Result) -> None:
    rate = f"{r.gbps:7.3f} GB/s" if r.nbytes else " " * 12
    print(f"  {r.label:<36} {r.state:<34} {r.median * 1e3:9.1f} ms  {rate}"
          f"  spread {r.spread:4.0%}", flush=True)


def interleave(entries: Sequence[Entry], runs: int) -> None:
    """``runs`` samples of every entry, taken in turns, the order rotating from run to run,
    so that a slow spell of the machine falls on all of them alike."""
    results = {e.key: Result(e.label, e.state) for e in entries}
    for i in range(runs):
        k = i % len(entries)
        for e in [*entries[k:], *entries[:k]]:
            seconds, n = clean_sample(e.key, e.sample)
            r = results[e.key]
            r.samples.append(seconds)
            r.nbytes = n if e.nbytes is None else e.nbytes
    for e in entries:
        RESULTS[e.key] = results[e.key]
        _print(results[e.key])


def pass_sample(fn: Callable[[], int], before: Callable[[], object] | None = None) -> Sample:
    """A sample: ``before()`` (untimed), then ``fn()`` timed."""

    def sample() -> tuple[Window, int]:
        if before is not None:
            before()
        with Window() as w:
            n = fn()
        return w, n

    return sample


def fresh_sample(mount: Callable[[], contextlib.AbstractContextManager[Any]],
                 fn: Callable[[], int]) -> Sample:
    """A cold sample: a fresh mount, the page cache dropped, then ``fn()`` timed."""

    def sample() -> tuple[Window, int]:
        with mount():
            drop_and_settle()
            with Window() as w:
                n = fn()
        return w, n

    return sample


# -- the contestants ---------------------------------------------------------------


@dataclass
class Mounted:
    """A vchunkfs or nullfs mount configuration."""

    key: str
    label: str
    kind: str  # "vchunkfs" or "nullfs"
    args: list[str] = field(default_factory=list)  # mount options, or nullfs.py arguments
    sysfs_read_ahead: int = 0  # written to /sys/class/bdi once the mount answers
    pythonpath: str | None = None  # vchunkfs: run the package from this tree (--baseline)
    read_ahead_kb: int = -1  # what the mount had, as measured

    def paths(self) -> list[str]:
        return [str(MNT_DIR / self.key / c.zarr_path) for c in CHUNKS]

    @contextlib.contextmanager
    def mount(self, ds: DataSet) -> Iterator[None]:
        mnt = MNT_DIR / self.key
        cm = (vchunkfs(ds, *self.args, name=self.key, pythonpath=self.pythonpath)
              if self.kind == "vchunkfs"
              else nullfs(ds, *self.args, name=self.key))
        with cm:
            if self.kind == "nullfs":  # it sets its read-ahead after INIT, then says "ready"
                log = MNT_DIR / f"{self.key}.log"
                for _ in range(100):
                    if "ready" in log.read_text():
                        break
                    time.sleep(0.05)
            if self.sysfs_read_ahead:
                set_read_ahead(mnt, self.sysfs_read_ahead)
            self.read_ahead_kb = read_ahead_of(mnt)
            yield


CHUNKS: list[Chunk] = []


class IcechunkReader:
    """icechunk's store.get of every chunk key, awaited one after the other, in this thread."""

    def __init__(self, ds: DataSet) -> None:
        from zarr.core.buffer import default_buffer_prototype

        self.ds = ds
        self.loop = asyncio.new_event_loop()
        self.proto = default_buffer_prototype()
        self.store = self.open_store()

    def open_store(self) -> Any:
        import icechunk as ic

        async def open_() -> Any:
            repo = await ic.Repository.open_async(
                ic.local_filesystem_storage(str(self.ds.repo)),
                authorize_virtual_chunk_access=credentials(self.ds))
            session = await repo.readonly_session_async(branch="main")
            return session.store

        return self.loop.run_until_complete(open_())

    def get_all(self, store: Any = None) -> int:
        store = store or self.store

        async def get_all() -> int:
            total = 0
            for c in CHUNKS:
                buf = await store.get(c.zarr_path, self.proto)
                total += len(buf)
            return total

        return self.loop.run_until_complete(get_all())

    def cold_sample(self) -> tuple[Window, int]:
        fresh = self.open_store()
        drop_and_settle()
        with Window() as w:
            n = self.get_all(fresh)
        return w, n

    def close(self) -> None:
        self.loop.close()


def bench_reads(ds: DataSet, reader: Reader, expected: dict[Chunk, bytes],
                mounts: Sequence[Mounted], runs: int) -> None:
    """Every way of reading the chunk files, interleaved state by state."""
    ice = IcechunkReader(ds)
    fs_paths = [str(MNT_DIR / "fsspec" / c.ref_key) for c in CHUNKS]
    pair = [m for m in mounts if m.key in ("vc", "null", "vc-base")]

    def warm_nc() -> int:
        return reader.pread(CHUNKS)

    try:
        wait_quiet("the mounted passes")
        with contextlib.ExitStack() as stack:
            for m in mounts:
                stack.enter_context(m.mount(ds))
                reader.files(m.paths())
                verify(m.paths(), CHUNKS, expected)
            stack.enter_context(fsspec_fuse(ds))
            verify(fs_paths, CHUNKS, expected)
            ice.get_all()

            print("- everything in the page cache (each sample after an untimed pass)")
            entries = [
                Entry("pread_warm", "(a) pread of the netCDF ranges", "warm",
                      pass_sample(warm_nc, warm_nc)),
                Entry("icechunk_warm", "(d) icechunk store.get", "warm",
                      pass_sample(ice.get_all, warm_nc)),
                Entry("fsspec_warm", "(c) fsspec.fuse ReferenceFileSystem", "warm",
                      pass_sample(functools.partial(reader.files, fs_paths), warm_nc))]
            for m in mounts:
                read = functools.partial(reader.files, m.paths())
                entries.append(Entry(f"{m.key}_kernel", m.label, "kernel-cached",
                                     pass_sample(read, read)))
            for m in pair:
                entries.append(Entry(f"{m.key}_openclose", m.label, "open+close only (cached)",
                                     pass_sample(functools.partial(reader.open_close, m.paths()),
                                                 functools.partial(reader.files, m.paths())),
                                     nbytes=0))
            interleave(entries, runs)

            print("- the mounts' page cache, dentries and inodes dropped (echo 3)")
            entries = []
            for m in mounts:
                entries.append(Entry(f"{m.key}_daemon", m.label, "daemon-cached",
                                     pass_sample(functools.partial(reader.files, m.paths()),
                                                 drop_and_settle)))
                entries.append(Entry(f"{m.key}_daemon_par", m.label,
                                     f"daemon-cached, {THREADS} readers",
                                     pass_sample(functools.partial(reader.files_parallel,
                                                                   m.paths()), drop_and_settle)))
            interleave(entries, runs)

            print("- only the page cache dropped (echo 1): no lookups")
            entries = [Entry(f"{m.key}_daemon_data", m.label, "daemon-cached, dentries kept",
                             pass_sample(functools.partial(reader.files, m.paths()),
                                         functools.partial(drop_and_settle, 1)))
                       for m in mounts]
            interleave(entries, runs)

        print("- cold: a fresh mount (or repository), then everything dropped")
        wait_quiet("the cold passes")
        entries = [
            Entry("pread_cold", "(a) pread of the netCDF ranges", "cold",
                  pass_sample(warm_nc, drop_and_settle)),
            Entry("icechunk_cold", "(d) icechunk store.get", "cold (fresh repo, dropped)",
                  ice.cold_sample),
            Entry("fsspec_cold", "(c) fsspec.fuse ReferenceFileSystem",
                  "cold (fresh mount, dropped)",
                  fresh_sample(functools.partial(fsspec_fuse, ds),
                               functools.partial(reader.files, fs_paths)))]
        for m in mounts:
            if m.kind == "vchunkfs":
                entries.append(Entry(f"{m.key}_cold", m.label, "cold (fresh mount, dropped)",
                                     fresh_sample(functools.partial(m.mount, ds),
                                                  functools.partial(reader.files, m.paths()))))
        interleave(entries, runs)
    finally:
        ice.close()


def bench_xarray(ds: DataSet, runs: int, baseline: Path | None = None,
                 baseline_label: str = "") -> None:
    """xarray.open_zarr(...).load() of the whole data set, mount against icechunk's store."""
    import icechunk as ic
    import xarray as xr

    wait_quiet("xarray")
    mnt = MNT_DIR / "xarray"
    paths = [str(mnt / c.zarr_path) for c in CHUNKS]
    reader = Reader()

    def load(store: Any) -> xr.Dataset:
        loaded: xr.Dataset = xr.open_zarr(store, consolidated=False, zarr_format=3).load()
        return loaded

    def open_repo() -> ic.Repository:
        return ic.Repository.open(ic.local_filesystem_storage(str(ds.repo)),
                                  authorize_virtual_chunk_access=credentials(ds))

    repo = open_repo()

    def warm_nc() -> int:
        return reader.pread(CHUNKS)

    def icechunk_load(r: ic.Repository) -> int:
        load(r.readonly_session(branch="main").store)
        return 0

    def icechunk_cold() -> tuple[Window, int]:
        fresh = open_repo()
        drop_and_settle()
        with Window() as w:
            icechunk_load(fresh)
        return w, 0

    def mount_load() -> int:
        load(str(mnt))
        return 0

    try:
        reference = load(repo.readonly_session(branch="main").store)
        with vchunkfs(ds, name="xarray"):
            xr.testing.assert_identical(load(str(mnt)), reference)
            interleave([
                Entry("xr_icechunk_warm", "xarray load, icechunk store", "warm",
                      pass_sample(functools.partial(icechunk_load, repo), warm_nc), 0),
                Entry("xr_icechunk_warm_fresh", "xarray load, icechunk store",
                      "warm, a fresh Repository each load",
                      pass_sample(lambda: icechunk_load(open_repo()), warm_nc), 0),
                Entry("xr_mount_warm", "xarray load, vchunkfs mount", "warm (kernel-cached)",
                      pass_sample(mount_load, functools.partial(reader.files, paths)), 0),
                Entry("xr_mount_daemon", "xarray load, vchunkfs mount", "daemon-cached",
                      pass_sample(mount_load, drop_and_settle), 0)], runs)
        interleave([
            Entry("xr_icechunk_cold", "xarray load, icechunk store", "cold (fresh repo, dropped)",
                  icechunk_cold, 0),
            Entry("xr_mount_cold", "xarray load, vchunkfs mount", "cold (fresh mount, dropped)",
                  fresh_sample(lambda: vchunkfs(ds, name="xarray"), mount_load), 0),
            *([Entry("xr_mount_cold_base", f"xarray load, vchunkfs {baseline_label} (baseline)",
                     "cold (fresh mount, dropped)",
                     fresh_sample(lambda: vchunkfs(ds, name="xarray",
                                                   pythonpath=str(baseline.resolve())),
                                  mount_load), 0)] if baseline else [])], runs)
    finally:
        reader.close()


NS_OPS: dict[str, Result] = {}


def bench_namespace(ds: DataSet, chunks: list[Chunk], runs: int) -> None:
    """Where a daemon-cached open goes: vchunkfs's Namespace called in-process, without FUSE.

    Each figure is the time per call over all chunk files, after a first pass
    (so the block cache and the size caches are warm): what the daemon spends
    per FUSE request before pyfuse3 and the kernel add theirs.
    """
    import trio

    from vchunkfs.bridge import AsyncioBridge
    from vchunkfs.fs.namespace import ROOT, MountConfig, Namespace
    from vchunkfs.fs.source import RepoSource
    from vchunkfs.repository import Authorization, Repo, StorageOptions, parse_repo_url

    wait_quiet("namespace operations")
    bridge = AsyncioBridge(name="bench-namespace")
    try:
        def open_repo() -> Awaitable[Repo]:
            return Repo.open(parse_repo_url(str(ds.repo)),
                             authorization=Authorization.load([ds.prefix]),
                             storage_options=StorageOptions.from_env())

        ns = Namespace(RepoSource(bridge.run(open_repo)), bridge, MountConfig())

        async def noop() -> int:
            return 0

        async def main() -> None:
            await ns.start()
            parents: list[int] = []
            files: list[tuple[int, int]] = []
            for c in chunks:
                ino = ROOT
                *dirs, name = c.zarr_path.split("/")
                for part in dirs:
                    ino = (await ns.lookup(ino, part)).ino
                parents.append(ino)
                attr = await ns.lookup(ino, name)
                fh, _ = await ns.open(attr.ino)
                await ns.read(fh, 0, attr.size)
                ns.release(fh)
                files.append((attr.ino, attr.size))
            names = [c.zarr_path.rsplit("/", 1)[1] for c in chunks]

            async def lookups() -> None:
                for parent, name in zip(parents, names, strict=True):
                    await ns.lookup(parent, name)

            async def getattrs() -> None:
                for ino, _size in files:
                    await ns.getattr(ino)

            async def opens() -> None:
                for ino, _size in files:
                    fh, _ = await ns.open(ino)
                    ns.release(fh)

            async def reads() -> None:  # 128 KiB requests, as the kernel sends them
                for ino, size in files:
                    fh, _ = await ns.open(ino)
                    for off in range(0, size, 128 * 1024):
                        await ns.read(fh, off, 128 * 1024)
                    ns.release(fh)

            async def bridge_calls() -> None:
                for _ in files:
                    await bridge.call(noop)

            read_requests = sum((size + 128 * 1024 - 1) // (128 * 1024) for _, size in files)
            for key, fn, calls in (("lookup of a chunk file", lookups, len(files)),
                                   ("getattr", getattrs, len(files)),
                                   ("open + release", opens, len(files)),
                                   ("read of 128 KiB (cache hit; opens included)", reads,
                                    read_requests),
                                   ("AsyncioBridge.call of a no-op", bridge_calls, len(files))):
                r = Result(key, "per call")
                for _ in range(runs):
                    for attempt in range(RETRIES + 1):
                        wait_quiet("the next sample", quiet=True)
                        with Window() as w:
                            await fn()
                        if undisturbed(f"ns {key}", w, attempt):
                            break
                    r.samples.append(w.seconds / calls)
                NS_OPS[key] = r
                print(f"  namespace: {key:<46} {r.median * 1e6:8.0f} us per call"
                      f"  spread {r.spread:4.0%}", flush=True)

            async def walk_and_read(space: Namespace) -> tuple[float, float]:
                """What the kernel asks on a cold pass: lookups (each directory once),
                open, 128 KiB reads one after the other, release. Returns the seconds
                spent in lookups + opens and in reads + releases."""
                dirs: dict[str, int] = {"": ROOT}
                in_lookups = in_reads = 0.0
                for c in chunks:
                    t0 = time.perf_counter()
                    *parts, name = c.zarr_path.split("/")
                    parent = ROOT
                    for i, part in enumerate(parts):
                        path = "/".join(parts[:i + 1])
                        if path not in dirs:
                            dirs[path] = (await space.lookup(parent, part)).ino
                        parent = dirs[path]
                    attr = await space.lookup(parent, name)
                    fh, _ = await space.open(attr.ino)
                    t1 = time.perf_counter()
                    for off in range(0, attr.size, 128 * 1024):
                        await space.read(fh, off, 128 * 1024)
                    space.release(fh)
                    in_lookups += t1 - t0
                    in_reads += time.perf_counter() - t1
                return in_lookups, in_reads

            cold = "cold pass, per chunk file (fresh Repo, page cache dropped)"
            parts = ("  of which lookups + open", "  of which reads + release")
            results = {k: Result(k, "per file") for k in (cold, *parts)}
            for _ in range(runs):
                for attempt in range(RETRIES + 1):
                    wait_quiet("the next sample", quiet=True)
                    fresh = Namespace(RepoSource(await bridge.call(open_repo)), bridge,
                                      MountConfig())
                    await fresh.start()
                    drop_caches()
                    with Window() as w:
                        split = await walk_and_read(fresh)
                    if undisturbed("ns cold pass", w, attempt):
                        break
                results[cold].samples.append(w.seconds / len(chunks))
                for k, seconds in zip(parts, split, strict=True):
                    results[k].samples.append(seconds / len(chunks))
            for k, r in results.items():
                NS_OPS[k] = r
                print(f"  namespace: {k:<46} {r.median * 1e6:8.0f} us per file"
                      f"  spread {r.spread:4.0%}", flush=True)

        trio.run(main)
    except Exception as e:  # the namespace is internal API that others are changing
        print(f"  namespace operations skipped: {type(e).__name__}: {e}", flush=True)
    finally:
        bridge.close()


# -- report ------------------------------------------------------------------------


def _fmt_gbps(key: str) -> str:
    r = RESULTS.get(key)
    return "–" if r is None or not r.samples else f"{r.gbps:.3f}"


def _ratio(a: str, b: str, by: str = "gbps") -> float:
    ra, rb = RESULTS.get(a), RESULTS.get(b)
    if ra is None or rb is None or not ra.samples or not rb.samples:
        return float("nan")
    return ra.gbps / rb.gbps if by == "gbps" else ra.median / rb.median


def throughput_table(keys: Sequence[str], base: str) -> str:
    lines = ["| reader | state | median ms | GB/s (median) | GB/s (best) | spread "
             "| vs pread warm |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for k in keys:
        r = RESULTS.get(k)
        if r is None:
            continue
        lines.append(f"| {r.label} | {r.state} | {r.median * 1e3:.1f} | {r.gbps:.3f} "
                     f"| {r.best_gbps:.3f} | {r.spread:.0%} | {_ratio(k, base):.3f} |")
    return "\n".join(lines)


def seconds_table(keys: Sequence[str]) -> str:
    lines = ["| load | state | median s | spread |", "|---|---|---:|---:|"]
    for k in keys:
        r = RESULTS.get(k)
        if r is not None:
            lines.append(f"| {r.label} | {r.state} | {r.median:.3f} | {r.spread:.0%} |")
    return "\n".join(lines)


def ns_table() -> str:
    lines = ["| operation | µs per call (per file for the cold pass) | spread |",
             "|---|---:|---:|"]
    lines += [f"| {k} | {r.median * 1e6:.0f} | {r.spread:.0%} |" for k, r in NS_OPS.items()]
    return "\n".join(lines)


def knob_table(mounts: Sequence[Mounted]) -> str:
    lines = ["| configuration | bdi read_ahead_kb | cold | daemon-cached "
             f"| daemon-cached, {THREADS} readers | daemon-cached, dentries kept "
             "| kernel-cached |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in mounts:
        k = m.key
        lines.append(f"| {m.label} | {m.read_ahead_kb} | {_fmt_gbps(f'{k}_cold')} "
                     f"| {_fmt_gbps(f'{k}_daemon')} | {_fmt_gbps(f'{k}_daemon_par')} "
                     f"| {_fmt_gbps(f'{k}_daemon_data')} | {_fmt_gbps(f'{k}_kernel')} |")
    return "\n".join(lines)


def target_table() -> str:
    def check(ok: bool) -> str:
        return "met" if ok else "**missed**"

    rows = []
    r = _ratio("vc_kernel", "null_kernel")
    rows.append(("kernel-cached >= 90% of nullfs kernel-cached", f"{r:.0%}", check(r >= 0.9)))
    r = _ratio("vc_daemon", "null_daemon")
    rows.append(("daemon-cached >= 80% of nullfs served", f"{r:.0%}", check(r >= 0.8)))
    r = _ratio("vc_daemon_par", "null_daemon_par")
    rows.append((f"  (same, {THREADS} readers)", f"{r:.0%}", check(r >= 0.8)))
    r = _ratio("vc_daemon_data", "null_daemon_data")
    rows.append(("  (same, dentries kept: drop_caches 1)", f"{r:.0%}", check(r >= 0.8)))
    r = _ratio("vc_daemon", "icechunk_warm")
    rows.append(("daemon-cached >= icechunk store.get (warm)", f"{r:.2f}x", check(r >= 1.0)))
    r = _ratio("vc_daemon_par", "icechunk_warm")
    rows.append((f"  (same, {THREADS} readers on the mount)", f"{r:.2f}x", check(r >= 1.0)))
    r = _ratio("vc_cold", "fsspec_cold")
    rows.append(("cold >= 3x fsspec.fuse cold", f"{r:.2f}x", check(r >= 3.0)))
    r = _ratio("xr_mount_warm", "xr_icechunk_warm", by="median")
    rows.append(("xarray load (warm) within 1.1x of icechunk's store", f"{r:.2f}x",
                 check(r <= 1.1)))
    r = _ratio("xr_mount_warm", "xr_icechunk_warm_fresh", by="median")
    rows.append(("  (same, against a fresh Repository each load)", f"{r:.2f}x",
                 check(r <= 1.1)))
    r = _ratio("xr_mount_cold", "xr_icechunk_cold", by="median")
    rows.append(("  (same, both cold)", f"{r:.2f}x", check(r <= 1.1)))
    if "vc-base_kernel" in RESULTS:  # --baseline: the same targets for the other tree
        for what, a, b, by, limit in (
                ("kernel-cached / nullfs", "vc-base_kernel", "null_kernel", "gbps", 0.9),
                ("daemon-cached / nullfs", "vc-base_daemon", "null_daemon", "gbps", 0.8),
                ("daemon-cached / icechunk get", "vc-base_daemon", "icechunk_warm", "gbps", 1.0),
                ("cold / fsspec.fuse cold", "vc-base_cold", "fsspec_cold", "gbps", 3.0),
                ("xarray cold / icechunk cold", "xr_mount_cold_base", "xr_icechunk_cold",
                 "median", -1.1)):
            r = _ratio(a, b, by=by)
            ok = r <= -limit if limit < 0 else r >= limit
            rows.append((f"baseline: {what}", f"{r:.2f}x" if by == "median" or limit >= 1
                         else f"{r:.0%}", check(ok)))
    lines = ["| target | measured | verdict |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def machine(rev: str) -> str:
    import icechunk as ic
    import zarr

    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.release()}, "
            f"Python {platform.python_version()}, icechunk {ic.__version__}, "
            f"zarr {zarr.__version__}, vchunkfs {rev}")


def revision() -> str:
    """The git commit of the vchunkfs tree measured, "+dirty:HASH" if vchunkfs/ has changes."""
    top = SCRIPTS.parent
    try:
        head = subprocess.run(["git", "-C", str(top), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(top), "status", "--porcelain", "vchunkfs"],
                               capture_output=True, text=True, check=True).stdout.strip()
        diff = subprocess.run(["git", "-C", str(top), "diff", "HEAD", "--", "vchunkfs"],
                              capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "(no git)"
    if not dirty:
        return head
    return f"{head}+dirty:{hashlib.sha1(diff + dirty.encode()).hexdigest()[:8]}"


# -- main --------------------------------------------------------------------------


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so every finally (unmount) runs


def run(args: argparse.Namespace) -> str:
    runs = args.runs
    rev = revision()
    ds = build(args.days)
    CHUNKS[:] = ds.chunks()
    expected: dict[Chunk, bytes] = {}
    for c in CHUNKS:
        with open(c.nc, "rb") as f:
            expected[c] = os.pread(f.fileno(), c.length, c.offset)
    total = sum(c.length for c in CHUNKS)
    nc_bytes = sum(p.stat().st_size for p in {Path(c.nc) for c in CHUNKS})
    MNT_DIR.mkdir(parents=True, exist_ok=True)
    dropped = drop_caches()
    print(f"{len(CHUNKS)} chunk files, {total / 1e6:.1f} MB of chunk bytes "
          f"({total / nc_bytes:.0%} of the {nc_bytes / 1e6:.1f} MB of netCDF); {runs} runs; "
          f"drop_caches {'works' if dropped else 'FAILED: ' + DROP_STATUS['error']}", flush=True)

    mounts = [Mounted("vc", "(b) vchunkfs (defaults)", "vchunkfs"),
              Mounted("null", "(e) nullfs (kernel read-ahead)", "nullfs")]
    if not args.no_knobs:
        mounts += [
            Mounted("vc-ra0", "vchunkfs read_ahead_kb=0", "vchunkfs", ["read_ahead_kb=0"]),
            Mounted("vc-pf0", "vchunkfs prefetch=0", "vchunkfs", ["prefetch=0"]),
            Mounted("vc-w8", "vchunkfs workers=8", "vchunkfs", ["workers=8"]),
            Mounted("null-ra1024", "nullfs --read-ahead-kb 1024", "nullfs",
                    ["--read-ahead-kb", "1024"])]
    if args.baseline:
        mounts.append(Mounted("vc-base", f"vchunkfs {args.baseline_label} (baseline)",
                              "vchunkfs", pythonpath=str(args.baseline.resolve())))
    reader = Reader()
    try:
        bench_reads(ds, reader, expected, mounts, runs)
    finally:
        reader.close()
    bench_namespace(ds, CHUNKS, runs)
    bench_xarray(ds, runs, args.baseline, args.baseline_label)

    throughput = [
        "pread_warm", "pread_cold", "icechunk_warm", "icechunk_cold",
        "vc_cold", "vc_daemon", "vc_daemon_par", "vc_daemon_data", "vc_kernel",
        "fsspec_cold", "fsspec_warm",
        "null_daemon", "null_daemon_par", "null_daemon_data", "null_kernel"]
    per_file = ["| mount | open+close per file, µs (cached) |", "|---|---:|"]
    for k in ("vc_openclose", "null_openclose", "vc-base_openclose"):
        r = RESULTS.get(k)
        if r is None:
            continue
        per_file.append(f"| {r.label} | {r.median / len(CHUNKS) * 1e6:.0f} |")
    parts = [
        f"Machine: {machine(rev)}"
        + ("." if revision() == rev else f" (**{revision()} at the end of the run**)."),
        f"Data: {args.days} days, {len(CHUNKS)} chunk files, {total / 1e6:.1f} MB per pass; "
        f"medians of {runs} runs, the contestants of each state measured in turns; drop_caches "
        f"{'worked' if not DROP_STATUS else 'FAILED (' + DROP_STATUS['error'] + ')'}.",
        "Samples redone because another process used the CPU meanwhile: "
        + (", ".join(f"{k} {n}" for k, n in REDONE.items()) or "none") + "; kept although "
        f"disturbed (after {RETRIES} attempts): "
        + (", ".join(f"{k} {n}" for k, n in KEPT_DISTURBED.items()) or "none") + ".",
        "", "#### Reading every chunk file once", "", throughput_table(throughput, "pread_warm"),
        "", "#### Per-file cost without data", "", "\n".join(per_file),
        "", "#### vchunkfs's Namespace in-process (no FUSE), daemon-cached", "",
        ns_table(),
        "", "#### xarray.open_zarr(...).load() of the whole data set", "",
        seconds_table(["xr_icechunk_warm", "xr_icechunk_warm_fresh", "xr_mount_warm",
                       "xr_mount_daemon",
                       "xr_icechunk_cold", "xr_mount_cold", "xr_mount_cold_base"]),
        "", "#### Knobs (GB/s, medians)", "", knob_table(mounts),
        "", "#### Targets", "", target_table(), ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7, help="timed runs per figure (median)")
    p.add_argument("--days", type=int, default=31)
    p.add_argument("--quick", action="store_true", help="3 days, 1 run: a smoke test")
    p.add_argument("--no-knobs", action="store_true", help="skip the knob configurations")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for other benchmarks or test suites (smoke tests only)")
    p.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also measure the vchunkfs package of another tree (e.g. an older "
                        "commit's `git archive` in DIR), in turns with the others")
    p.add_argument("--baseline-label", default="baseline", metavar="TEXT",
                   help="what to call it in the report (e.g. its commit)")
    p.add_argument("--serve-fsspec", nargs=2, metavar=("REFS", "MOUNTPOINT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_fsspec:
        return serve_fsspec(Path(args.serve_fsspec[0]), Path(args.serve_fsspec[1]))
    if args.quick:
        args.days, args.runs = 3, 1
    global NO_WAIT
    NO_WAIT = args.no_wait
    if os.geteuid() != 0:
        print("bench_mount.py: run as root (drop_caches, /sys/class/bdi)", file=sys.stderr)
    signal.signal(signal.SIGTERM, _terminate)
    report = run(args)
    print()
    print(report)
    if args.out:
        args.out.write_text(report)
        samples = {k: {"label": r.label, "state": r.state, "nbytes": r.nbytes,
                       "seconds": r.samples} for k, r in (RESULTS | NS_OPS).items()}
        args.out.with_suffix(".json").write_text(json.dumps(samples, indent=1))
    sys.stdout.flush()
    # icechunk 2.3 sometimes crashes in interpreter finalization (see bench_repository.py)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
