#!/usr/bin/env python3
"""``vchunkfs ingest`` against the Icechunk guide's Python, on OISST-like netCDF files.

For each number of files N (31 and 365 daily files, 720 x 1440, see
``scripts/make_oisst.py``), each run times three contestants, each in a fresh
process writing a fresh repository:

``guide``
    the guide's Python (``tests/datasets.py: write_like_the_guide``) as
    ``python -c``: ``open_virtual_dataset`` per file with ``HDFParser`` and an
    ``ObjectStoreRegistry`` over ``LocalStore``, ``xr.concat(dim="time",
    coords="minimal", compat="override", combine_attrs="override")``, a
    ``RepositoryConfig`` with a ``file://`` ``VirtualChunkContainer``,
    ``Repository.create``, ``save_config``, ``to_icechunk``, ``commit``;
``vchunkfs``
    ``vchunkfs ingest REPO 'DIR/*.nc' --concat-dim time --container file://DIR/``
    on a repository made beforehand (untimed) by ``vchunkfs init REPO``;
``vchunkfs-w2``
    the same with ``--workers 2``.

Every figure is wall time from just before the process is spawned to its
exit, so both sides pay for the interpreter's start-up, every import, the
work and the interpreter's exit. The guide's process also prints the time at
which its commit returned: the table shows that too ("guide to commit"), to
show what exit costs. CPU time (user + sys) of each child is recorded as
well, which shows how much ``--workers 2`` runs in parallel, and the CPU time
the rest of the machine used meanwhile (``/proc/stat``), which shows when a
figure was taken while something else ran.

The order of the contestants rotates from run to run; the table gives
medians over the runs and the ratio to the guide (below 1 is faster). Before
the timed runs, one untimed run of the guide and one of vchunkfs per N warm
the page cache and the bytecode caches. After the first run, the three repositories of each N are
compared: same nodes and metadata documents, same chunk keys, same bytes for
every chunk (read through each repository's virtual refs), same set of
virtual chunk locations; for N <= 31 also ``xarray.open_zarr`` of each
store, ``identical``.

With ``--baseline-src DIR`` (a copy of another version's ``vchunkfs``
package, e.g. from ``git archive``), two more contestants, ``base`` and
``base-w2``, run that version's ``vchunkfs ingest`` the same ways.

``--change-set`` measures instead what icechunk itself holds for an ingest of N
files (for each of ``--sizes``, in a fresh process): the refs of four arrays of N
chunks written with ``set_virtual_refs_arr`` as VirtualiZarr writes them
("virtual"), and a time coordinate of N one-value chunks written by zarr as
``to_icechunk`` writes it ("native-zarr") or one ``store.set`` after another
("native-set"); resident memory after writing and the peak after the commit, and
the growth per file between the first and the last size.

On a shared machine, run it under the benchmarks' lock::

    flock /tmp/vchunkfs-bench.lock python scripts/bench/bench_ingest.py \
        [ROOT] [--sizes 31,365] [--runs 3] [--out results.md]

ROOT (default /tmp/vchunkfs-bench-ingest) holds the data, built there on first
use (``d31``: 31 days from 2024-08-01; ``d365``: 365 days from 2024-01-01),
and the repositories, which are removed after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
CONTESTANTS = ("guide", "vchunkfs", "vchunkfs-w2")
BASELINE = ("base", "base-w2")  # with --baseline-src: vchunkfs from another source tree

GUIDE = """\
import sys, time
from pathlib import Path
import icechunk as ic
import xarray as xr
from obspec_utils.registry import ObjectStoreRegistry
from obstore.store import LocalStore
from virtualizarr import open_virtual_dataset
from virtualizarr.parsers import HDFParser

data, repo_path = Path(sys.argv[1]).resolve(), sys.argv[2]
files = sorted(data.glob("*.nc"))
registry = ObjectStoreRegistry({"file://": LocalStore()})
vds = xr.concat([open_virtual_dataset(f.as_uri(), registry=registry, parser=HDFParser())
                 for f in files], dim="time", coords="minimal", compat="override",
                combine_attrs="override")
config = ic.RepositoryConfig.default()
config.set_virtual_chunk_container(ic.VirtualChunkContainer(
    data.as_uri() + "/", ic.local_filesystem_store(str(data))))
repo = ic.Repository.create(ic.local_filesystem_storage(repo_path), config)
repo.save_config()
session = repo.writable_session("main")
vds.vz.to_icechunk(session.store)
sid = session.commit("ingest %d files" % len(files))
print(time.time(), sid, flush=True)
"""


GUIDE_S3 = """\
import os, sys, time
import icechunk as ic
import obstore
import xarray as xr
from obspec_utils.registry import ObjectStoreRegistry
from obstore.store import S3Store
from virtualizarr import open_virtual_dataset
from virtualizarr.parsers import HDFParser

bucket, prefix, endpoint, repo_path = sys.argv[1:5]
store = S3Store(bucket, endpoint=endpoint, region="us-east-1",
                virtual_hosted_style_request=False, client_options={"allow_http": True})
keys = sorted(m["path"] for batch in obstore.list(store, prefix=prefix) for m in batch
              if m["path"].endswith(".nc"))  # the guide's fs.glob
registry = ObjectStoreRegistry({f"s3://{bucket}/": store})
vds = xr.concat([open_virtual_dataset(f"s3://{bucket}/{k}", registry=registry,
                                      parser=HDFParser()) for k in keys],
                dim="time", coords="minimal", compat="override", combine_attrs="override")
config = ic.RepositoryConfig.default()
config.set_virtual_chunk_container(ic.VirtualChunkContainer(
    f"s3://{bucket}/{prefix}", ic.s3_store(region="us-east-1", endpoint_url=endpoint,
                                            allow_http=True, s3_compatible=True,
                                            force_path_style=True)))
repo = ic.Repository.create(ic.local_filesystem_storage(repo_path), config)
repo.save_config()
session = repo.writable_session("main")
vds.vz.to_icechunk(session.store)
sid = session.commit("ingest %d files" % len(keys))
print(time.time(), sid, flush=True)
"""
S3: dict[str, str] = {}  # with --source moto: endpoint, bucket


def source_of(data: Path) -> tuple[str, str]:
    """(glob of the files, container prefix) for vchunkfs ingest: local, or on moto."""
    if S3:
        prefix = f"s3://{S3['bucket']}/{data.name}/"
        return prefix + "*.nc", prefix
    return f"{data}/*.nc", data.resolve().as_uri() + "/"


def vchunkfs_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("vchunkfs")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vchunkfs.cli.main"]


def child_env(src: Path = PROJECT) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    env.setdefault("ICECHUNK_LOG", "error")
    return env


def ensure_data(root: Path, n: int, scale: int = 1) -> Path:
    data = root / (f"d{n}" if scale == 1 else f"d{n}-scale{scale}")
    if data.is_dir() and len(list(data.glob("*.nc"))) == n:
        return data
    start = "2024-08-01" if n <= 31 else "2024-01-01"
    print(f"writing {n} files to {data} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(PROJECT / "scripts" / "make_oisst.py"), str(data),
                    "--days", str(n), "--start", start, "--scale", str(scale)], check=True,
                   stdout=subprocess.DEVNULL)
    return data


CRASHES: list[str] = []  # processes killed by a signal (icechunk 2.3 at exit), redone


class Crashed(Exception):
    pass


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat), 0 if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


LAST_OTHER = [0.0]  # CPU seconds used by everything else during the last timed() call


LAST_RSS = [0.0]  # peak resident memory (MiB) of the last timed() process and its children


def timed(cmd: list[str], env: dict[str, str] | None = None
          ) -> tuple[float, float, float, str]:
    """Run cmd; return (spawn time, wall seconds, child cpu seconds, stdout). The child's
    own rusage (os.wait4) gives its CPU time and peak RSS (the largest of it and the
    children it waited for, e.g. --workers helpers), in LAST_RSS."""
    import tempfile

    busy0 = busy_seconds()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t_spawn = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True,
                                env=env or child_env())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        busy1 = busy_seconds()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode < 0:
        CRASHES.append(f"{' '.join(cmd[:2])}: signal {-proc.returncode}")
        raise Crashed
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout}{stderr}")
    cpu = usage.ru_utime + usage.ru_stime
    LAST_OTHER[0] = max(busy1 - busy0 - cpu, 0.0)
    LAST_RSS[0] = usage.ru_maxrss / 1024
    return t_spawn, wall, cpu, stdout


def run_one(who: str, data: Path, repo: Path, baseline: Path | None = None
            ) -> dict[str, float]:
    """One timed ingest; a process that dies of a signal is redone (up to 3 times)."""
    for attempt in range(3):
        try:
            return _run_one(who, data, repo, baseline)
        except Crashed:
            if attempt == 2:
                raise
    raise AssertionError


def _run_one(who: str, data: Path, repo: Path, baseline: Path | None) -> dict[str, float]:
    shutil.rmtree(repo, ignore_errors=True)
    if who == "guide":
        cmd = ([sys.executable, "-c", GUIDE_S3, S3["bucket"], data.name + "/", S3["endpoint"],
                str(repo)] if S3 else [sys.executable, "-c", GUIDE, str(data), str(repo)])
        t_spawn, wall, cpu, out = timed(cmd)
        committed = float(out.split()[0])
        return {"wall": wall, "cpu": cpu, "to_commit": committed - t_spawn,
                "other": LAST_OTHER[0], "rss": LAST_RSS[0]}
    env = child_env(baseline if who in BASELINE and baseline else PROJECT)
    timed([*vchunkfs_cmd(), "init", str(repo)], env)  # not timed: a crash here is redone too
    pattern, prefix = source_of(data)
    cmd = [*vchunkfs_cmd(), "ingest", str(repo), pattern, "--concat-dim", "time",
           "--container", prefix]
    if S3:
        cmd += ["--source-endpoint", S3["endpoint"], "--source-region", "us-east-1"]
    if who.endswith("-w2"):
        cmd += ["--workers", "2"]
    if who == "vchunkfs-sched":
        cmd += ["--scheduler", SCHEDULER[0]]
    _, wall, cpu, _ = timed(cmd, env)
    return {"wall": wall, "cpu": cpu, "other": LAST_OTHER[0], "rss": LAST_RSS[0]}


SCHEDULER = [""]  # address of the LocalCluster of --scheduler-workers


def check_same(data: Path, repos: list[Path], with_xarray: bool) -> str:
    """Compare the repositories in a child process; return its one-line verdict."""
    proc = subprocess.run([sys.executable, __file__, "--check", source_of(data)[1],
                           *map(str, repos),
                           *(["--xarray"] if with_xarray else [])],
                          capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        sys.exit(f"the repositories differ:\n{proc.stdout}{proc.stderr}")
    return proc.stdout.strip()


def check_main(data: str, repos: list[str], with_xarray: bool) -> int:
    import asyncio

    import icechunk as ic
    from zarr.core.buffer import default_buffer_prototype

    prefix = data  # the container prefix
    creds = (ic.s3_static_credentials(access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                                      secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])
             if prefix.startswith("s3://") else None)
    sessions = [ic.Repository.open(ic.local_filesystem_storage(r),
                                   authorize_virtual_chunk_access=ic.containers_credentials(
                                       {prefix: creds}) if creds else {prefix: None}
                                   ).readonly_session("main") for r in repos]

    async def contents(store: ic.IcechunkStore) -> dict[str, object]:
        out: dict[str, object] = {}
        keys = sorted([k async for k in store.list()])
        for key in keys:
            buf = await store.get(key, prototype=default_buffer_prototype())
            assert buf is not None, key
            raw = buf.to_bytes()
            out[key] = json.loads(raw) if key.endswith("zarr.json") else raw
        return out

    def rechunked(a: dict[str, object], b: dict[str, object]) -> set[str]:
        """Arrays whose metadata differ in their chunk grid only (vchunkfs chunks the
        loaded time coordinate by the ingest, the guide one value a file)."""
        out = set()
        for key, meta in a.items():
            if key.endswith("zarr.json") and isinstance(meta, dict) and b.get(key) != meta:
                found = b.get(key)
                mine, theirs = dict(meta), dict(found) if isinstance(found, dict) else {}
                mine.pop("chunk_grid", None)
                theirs.pop("chunk_grid", None)
                if mine == theirs and mine.get("node_type") == "array":
                    out.add(key.removesuffix("zarr.json").rstrip("/"))
        return out

    def of(key: str, arrays: set[str]) -> bool:
        return any(key == f"{p}/zarr.json" or key.startswith(f"{p}/c/") for p in arrays)

    import numpy as np
    import zarr

    first = asyncio.run(contents(sessions[0].store))
    locations = sorted(sessions[0].all_virtual_chunk_locations())
    by_value: set[str] = set()
    for repo, session in zip(repos[1:], sessions[1:], strict=True):
        other = asyncio.run(contents(session.store))
        regrid = rechunked(first, other)
        by_value |= regrid
        mine = {k for k in first if not of(k, regrid)}
        theirs = {k for k in other if not of(k, regrid)}
        if mine != theirs:
            print(f"{repo}: keys differ: {sorted(mine ^ theirs)[:5]}")
            return 1
        for key in mine:
            if other[key] != first[key]:
                print(f"{repo}: {key} differs")
                return 1
        for path in sorted(regrid):  # the same values, chunked otherwise
            want = zarr.open_array(sessions[0].store, path=path, mode="r")[...]
            got = zarr.open_array(session.store, path=path, mode="r")[...]
            if not np.array_equal(want, got):
                print(f"{repo}: the values of {path} differ")
                return 1
        if sorted(session.all_virtual_chunk_locations()) != locations:
            print(f"{repo}: virtual chunk locations differ")
            return 1
    chunks = sum(1 for k in first if not k.endswith("zarr.json"))
    verdict = (f"same: {len(first) - chunks} metadata documents, {chunks} chunks (bytes "
               f"read through the refs), {len(set(locations))} source files"
               + (f"; {', '.join(sorted(by_value))} chunked otherwise, the same values"
                  if by_value else ""))
    if with_xarray:
        import xarray as xr

        dss = [xr.open_zarr(s.store, consolidated=False, zarr_format=3) for s in sessions]
        for repo, ds in zip(repos[1:], dss[1:], strict=True):
            if not ds.identical(dss[0]):
                print(f"{repo}: xarray datasets differ")
                return 1
        verdict += "; xarray.open_zarr identical"
    print(verdict)
    return 0


CHANGE_SET = """\
import asyncio, datetime, json, sys, tempfile
import icechunk as ic, numpy as np, zarr
from zarr.core.buffer import default_buffer_prototype

def mem():
    got = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return [int(got[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")]

n, mode, prefix = int(sys.argv[1]), sys.argv[2], "file:///data/"
cfg = ic.RepositoryConfig.default()
cfg.set_virtual_chunk_container(
    ic.VirtualChunkContainer(prefix, ic.local_filesystem_store("/data")))
repo = ic.Repository.create(ic.local_filesystem_storage(tempfile.mkdtemp(dir=sys.argv[3])),
                            config=cfg)
session = repo.writable_session("main")
store = session.store
group = zarr.group(store=store)
out = {"start": mem()}
if mode == "virtual":  # 4 arrays of n refs, one per file, as VirtualiZarr writes them
    names = [f"{prefix}oisst-avhrr-v02r01.{i:08d}.nc" for i in range(n)]
    for v in ("sst", "anom", "err", "ice"):
        group.create_array(v, shape=(n, 1, 90, 180), chunks=(1, 1, 90, 180), dtype="int16")
        store.set_virtual_refs_arr(
            array_path=v, chunk_grid_shape=(n, 1, 1, 1), locations=list(names),
            offsets=np.full(n, 18663, dtype="uint64"), lengths=np.full(n, 15388, dtype="uint64"),
            validate_containers=False, checksum=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
else:  # a time coordinate of n one-value chunks (the files' own chunking)
    arr = group.create_array("time", shape=(n,), chunks=(1,), dtype="float32")
    values = np.arange(n, dtype="float32")
    if mode == "native-zarr":  # as to_icechunk writes it: zarr, every chunk at once
        arr[:] = values
    else:  # one store.set after the other, from bytes
        proto = default_buffer_prototype()

        async def put():
            for i in range(n):
                await store.set(f"time/c/{i}", proto.buffer.from_bytes(values[i:i + 1].tobytes()))

        asyncio.run(put())
out["written"] = mem()
session.commit("x")
out["committed"] = mem()
print(json.dumps(out))
"""


def change_set_main(sizes: list[int], root: Path) -> int:
    """--change-set: icechunk's own memory for what an ingest of N files writes (a fresh
    process per size and kind): peak RSS after writing and after the commit."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["| kind | files | RSS at start MiB | after writing | peak after commit |",
             "|---|---:|---:|---:|---:|"]
    got: dict[tuple[str, int], dict[str, list[float]]] = {}
    for kind in ("virtual", "native-zarr", "native-set"):
        for n in sizes:
            proc = subprocess.run([sys.executable, "-c", CHANGE_SET, str(n), kind, str(root)],
                                  capture_output=True, text=True, env=child_env(), check=True)
            r = got[kind, n] = json.loads(proc.stdout.strip().splitlines()[-1])
            lines.append(f"| {kind} | {n} | {r['start'][0]:.0f} | {r['written'][0]:.0f} | "
                         f"{r['committed'][1]:.0f} |")
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        lines.append("")
        for kind in ("virtual", "native-zarr", "native-set"):
            ra, rb = got[kind, a], got[kind, b]
            per = {k: (rb[k][i] - ra[k][i]) * 1024 * 1024 / (b - a) / 1000
                   for k, i in (("written", 0), ("committed", 1))}
            lines.append(f"{kind}: {per['written']:.2f} KB a file after writing, "
                         f"{per['committed']:.2f} KB a file at the commit's peak "
                         f"(from {a} to {b} files)")
    lines.append("command: " + " ".join(sys.argv))
    print("\n".join(lines))
    shutil.rmtree(root, ignore_errors=True)
    return 0


def fmt(x: float) -> str:
    return f"{x:.2f}"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        rest = sys.argv[2:]
        xa = "--xarray" in rest
        rest = [r for r in rest if r != "--xarray"]
        return check_main(rest[0], rest[1:], xa)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default="/tmp/vchunkfs-bench-ingest", type=Path)
    ap.add_argument("--sizes", default="31,365", help="numbers of files (default 31,365)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=int, default=1,
                    help="grid coarsened by this factor (4: 180 x 360), to try the script")
    ap.add_argument("--no-check", action="store_true", help="skip the equality check")
    ap.add_argument("--change-set", action="store_true",
                    help="instead: icechunk's own memory for the refs (4 virtual arrays of "
                         "N refs) and the time coordinate (N one-value chunks) of N files, "
                         "for each of --sizes")
    ap.add_argument("--baseline-src", type=Path, metavar="DIR",
                    help="also time vchunkfs from this source tree (contestants base, base-w2)")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    ap.add_argument("--source", choices=("local", "moto"), default="local",
                    help="read the files from local disk, or from a moto S3 server started "
                         "here (the files uploaded first; both sides list the bucket)")
    ap.add_argument("--scheduler-workers", type=int, default=0, metavar="N",
                    help="also time --scheduler with a dask.distributed LocalCluster of N "
                         "worker processes started here (contestant vchunkfs-sched; its "
                         "workers' CPU and memory are not counted)")
    ap.add_argument("--without", default="", metavar="NAMES",
                    help="contestants left out, comma-separated (vchunkfs-w2, base-w2, ...; "
                         "not guide), for long runs")
    ap.add_argument("--no-warmup", action="store_true",
                    help="no warm-up runs (the files already in the page cache)")
    args = ap.parse_args()
    without = {w for w in args.without.split(",") if w}
    if "guide" in without:
        ap.error("--without guide: the figures are ratios to the guide")
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.change_set:
        return change_set_main(sizes, Path(args.root) / "change-set")
    root = args.root.resolve()
    repos_dir = root / "repos"
    repos_dir.mkdir(parents=True, exist_ok=True)
    datas = {n: ensure_data(root, n, args.scale) for n in sizes}
    moto = None
    if args.source == "moto":
        import contextlib
        import uuid

        sys.path.insert(0, str(PROJECT / "tests"))
        import servers

        moto = contextlib.ExitStack()
        s3 = moto.enter_context(servers.moto_s3_server())
        os.environ.update({"AWS_ACCESS_KEY_ID": s3.access_key_id,
                           "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
                           "AWS_REGION": s3.region})
        S3.update(endpoint=s3.endpoint_url, bucket="bench-" + uuid.uuid4().hex[:8])
        s3.create_bucket(S3["bucket"])
        for n, data in datas.items():
            print(f"uploading {n} files ...", file=sys.stderr, flush=True)
            for f in sorted(data.glob("*.nc")):
                s3.put_object(S3["bucket"], f"{data.name}/{f.name}", f.read_bytes())

    who_all = tuple(c for c in CONTESTANTS + (BASELINE if args.baseline_src else ())
                    if c not in without)
    cluster = None
    if args.scheduler_workers:
        from distributed import LocalCluster

        os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]  # the workers import vchunkfs
        cluster = LocalCluster(n_workers=args.scheduler_workers, threads_per_worker=1,
                               processes=True, host="127.0.0.1", dashboard_address=None)
        SCHEDULER[0] = cluster.scheduler_address
        who_all += ("vchunkfs-sched",)
    results: dict[int, dict[str, list[dict[str, float]]]] = {
        n: {c: [] for c in who_all} for n in sizes}
    verdicts: dict[int, str] = {}
    for n in sizes if not args.no_warmup else ():  # warm-up: page cache, .pyc files
        for who in CONTESTANTS[:2]:
            run_one(who, datas[n], repos_dir / "warmup")
        shutil.rmtree(repos_dir / "warmup", ignore_errors=True)
    if args.baseline_src and not args.no_warmup:
        for n in sizes:
            run_one("base", datas[n], repos_dir / "warmup", args.baseline_src)
    k = len(who_all)
    for r in range(args.runs):
        order = who_all[r % k:] + who_all[:r % k]
        for n in sizes:
            for who in order:
                fig = run_one(who, datas[n], repos_dir / f"{who}-{n}", args.baseline_src)
                results[n][who].append(fig)
                print(f"run {r + 1} N={n} {who}: {fmt(fig['wall'])} s wall, "
                      f"{fmt(fig['cpu'])} s cpu, {fmt(fig['other'])} s cpu of other processes",
                      file=sys.stderr, flush=True)
            if r == 0 and not args.no_check:
                verdicts[n] = check_same(datas[n], [repos_dir / f"{c}-{n}" for c in who_all],
                                         with_xarray=n <= 31)
                print(f"N={n}: {verdicts[n]}", file=sys.stderr, flush=True)
            for who in who_all:
                shutil.rmtree(repos_dir / f"{who}-{n}", ignore_errors=True)

    lines = [f"{args.runs} runs, medians; wall = spawn to exit (interpreter start-up, imports, "
             "work, exit); (xR) = ratio to the guide",
             "",
             "| files | guide (to commit) | " + " | ".join(
                 {"vchunkfs": "vchunkfs ingest", "vchunkfs-w2": "--workers 2",
                  "vchunkfs-sched": f"--scheduler ({args.scheduler_workers} workers)",
                  "base": "baseline", "base-w2": "baseline --workers 2"}[c]
                 for c in who_all[1:]) + " | cpu " + " / ".join(who_all)
             + " | peak RSS MiB " + " / ".join(who_all) + " |",
             "|---:|---:|" + "---:|" * len(who_all) + "---:|"]
    for n in sizes:
        med = {c: statistics.median(f["wall"] for f in results[n][c]) for c in who_all}
        cpu = {c: statistics.median(f["cpu"] for f in results[n][c]) for c in who_all}
        to_commit = statistics.median(f["to_commit"] for f in results[n]["guide"])
        rss = {c: statistics.median(f["rss"] for f in results[n][c]) for c in who_all}
        g = med["guide"]
        lines.append(f"| {n} | {fmt(g)} s ({fmt(to_commit)}) | " + " | ".join(
            f"{fmt(med[c])} s (x{med[c] / g:.2f})" for c in who_all[1:])
            + f" | {' / '.join(fmt(cpu[c]) for c in who_all)} s"
            + f" | {' / '.join(f'{rss[c]:.0f}' for c in who_all)} |")
    lines.append("")
    for n in sizes:
        lines.append(f"N={n} runs (wall s [cpu of other processes meanwhile]): " + "; ".join(
            f"{c} " + ", ".join(f"{fmt(f['wall'])} [{f['other']:.1f}]" for f in results[n][c])
            for c in who_all))
    for n, v in verdicts.items():
        lines.append(f"N={n} repositories: {v}")
    lines.append(f"processes killed by a signal and redone: {len(CRASHES)}"
                 + (f" ({'; '.join(CRASHES)})" if CRASHES else ""))
    lines.append("command: " + " ".join(sys.argv))
    text = "\n".join(lines)
    print(text)
    if cluster is not None:
        cluster.close()
    if moto is not None:
        moto.close()
    if args.out:
        args.out.write_text(text + "\n")
        (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
