"""Ingest archival files into an Icechunk repository as virtual refs, with VirtualiZarr.

The steps are the Icechunk guide's, made safe for the shell:

1. expand and sort the inputs; pick the parser (by content: HDF5/netCDF4,
   netCDF3, Zarr, kerchunk JSON/Parquet);
2. open every file's metadata with VirtualiZarr (in parallel with
   ``workers``, or on Dask with VirtualiZarr's own parallel open), with
   progress; as the files arrive (steps 3 and 4 fold each into the result, so
   memory holds the combined refs and a batch of files, not every file's dataset):
3. check that the files agree (variables, dtypes, shapes but the concat
   dimension, chunking, codecs; static variables) and name the first that does not;
4. combine like the guide (``xr.concat(..., coords="minimal",
   compat="override", combine_attrs="override")``), in batches (:class:`Combiner`);
5. make sure a virtual chunk container covers every file (adding the one the
   user passed with ``container``, or failing with the exact prefix to add);
6. write with VirtualiZarr's ``to_icechunk`` (``append_dim``, ``region``,
   ``last_updated_at``) and commit under vchunkfs's commit rules.

Nothing is committed unless every step succeeds; a failed ingest leaves the
branch as it was.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import glob
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import xarray as xr

from vchunkfs.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SourceChangedError,
    UsageError,
    VchunkfsError,
)
from vchunkfs.repository import Repo
from vchunkfs.repository.containers import make_container
from vchunkfs.repository.sources import (
    RECORDS_KEY,
    SourceRecord,
    local_path,
    record_local_sources,
)
from vchunkfs.repository.writer import Writer

PARSERS = ("auto", "hdf", "netcdf3", "tiff", "grib", "zarr", "kerchunk-json",
           "kerchunk-parquet")


@dataclass
class IngestPlan:
    """What to ingest and how."""

    inputs: Sequence[str]
    concat_dim: str | None = None
    parser: str = "auto"
    branch: str = "main"
    message: str | None = None
    append: bool = False
    region: str | None = None  # "auto" or "DIM=START:STOP"
    container: str | None = None
    workers: int = 1
    dask: bool = False
    new_dim: bool = False  # concat_dim may be a dimension the files lack (always for TIFF)
    source_region: str | None = None
    source_endpoint: str | None = None
    source_anonymous: bool = False
    source_account: str | None = None  # Azure storage account of az:// sources
    new_only: bool = False  # skip the inputs the branch's refs already point into
    scheduler: str | None = None  # a dask.distributed scheduler (tcp://HOST:PORT) to scan on
    group: str | None = None


@dataclass
class IngestResult:
    snapshot: str
    files: int
    variables: list[str]
    refs: int
    container: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    skipped: int = 0  # --new-only: inputs already referenced
    scan_processes: int = 0  # --scheduler: how many worker processes read files


Progress = Callable[[int, int], None]


def expand_inputs(inputs: Sequence[str], plan: IngestPlan | None = None,
                  listed: dict[str, SourceState] | None = None) -> list[str]:
    """Paths, globs and URLs -> sorted, de-duplicated URLs (local files as file://).

    Globs (``*``, ``?``, ``[...]``, and ``**`` for any number of directories) in
    s3://, gs:// and az:// URLs are expanded by listing the bucket below the part
    before the first wildcard, with the same options as the sources (``plan``).
    HTTP cannot list: an http(s):// glob is an error. A glob matching nothing is an
    error naming it. ``listed`` receives the listing's state of every object a glob
    matched (its size, time and ETag: no HEAD needed for them later).
    """
    urls: set[str] = set()
    for item in inputs:
        if "://" in item and not item.startswith("file://"):
            scheme = urlsplit(item).scheme
            if not _has_magic(item):
                urls.add(item)
            elif scheme in ("http", "https"):
                raise UsageError(f"{item}: an {scheme}:// URL cannot be expanded (HTTP cannot "
                                 "list a directory); give the URLs one by one or with "
                                 "--files-from FILE")
            elif scheme in _LISTABLE:
                found = list_remote_glob(item, plan or IngestPlan(inputs=[]), listed)
                if not found:
                    raise NotFoundError(f"no object matches {item!r}")
                urls.update(found)
            else:
                raise UsageError(f"{item}: cannot expand a glob in a {scheme}:// URL "
                                 f"(only {', '.join(s + '://' for s in _LISTABLE)})")
            continue
        path = item.removeprefix("file://")
        matches = (sorted(glob.glob(os.path.expanduser(path), recursive=True))
                   if glob.has_magic(path) else [path])
        if not matches:
            raise NotFoundError(f"no file matches {item!r}")
        for m in matches:
            p = Path(m).expanduser().resolve()
            if not p.exists():
                raise NotFoundError(f"{item}: no such file")
            if p.is_dir() and glob.has_magic(path) and not p.name.endswith(".zarr"):
                continue  # a ** glob also matches directories
            if not os.access(p, os.R_OK):
                raise UsageError(f"{p}: cannot read it (permission denied)")
            urls.add(p.as_uri())
    if not urls:
        raise UsageError("no input files")
    return sorted(urls)


_LISTABLE = ("s3", "gs", "az", "azure", "abfs")
# parsers whose inputs are the files the refs point into (not references, not a store)
SOURCE_PARSERS = ("hdf", "netcdf3", "grib", "tiff")


def _has_magic(url: str) -> bool:
    return glob.has_magic(urlsplit(url).path)


def read_files_from(source: str) -> list[str]:
    """``--files-from``: one URL or path per line (``-``: standard input); blank lines and
    lines starting with ``#`` are skipped. The entries are taken as they are (no globs)."""
    import sys

    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as e:
        raise NotFoundError(f"--files-from {source}: {e.strerror or e}") from e
    lines = [ln.strip() for ln in text.splitlines()]
    items = [ln for ln in lines if ln and not ln.startswith("#")]
    if not items:
        raise UsageError(f"--files-from {source}: no file names in it")
    return items


def _glob_regex(pattern: str) -> str:
    """A regular expression for an object-key glob: ``*`` and ``?`` stay within one
    ``/``-separated segment, ``[...]`` (``[!...]``) is a character class, and a ``**``
    segment matches any number of segments, none included. (glob.translate is 3.13+.)"""
    import re

    out = []
    segments = pattern.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
            continue
        j = 0
        while j < len(seg):
            c = seg[j]
            close = seg.find("]", j + 2) if c == "[" else -1
            if c == "*":
                out.append("[^/]*")
            elif c == "?":
                out.append("[^/]")
            elif close > 0:
                body = seg[j + 1:close]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append("[" + body.replace("\\", "\\\\") + "]")
                j = close
            else:
                out.append(re.escape(c))
            j += 1
        if not last:
            out.append("/")
    return "".join(out) + r"\Z"


def list_remote_glob(pattern: str, plan: IngestPlan,
                     listed: dict[str, SourceState] | None = None) -> list[str]:
    """The objects of a bucket matching a glob URL, sorted, as URLs; their states go
    into ``listed``."""
    import re

    import obstore

    parts = urlsplit(pattern)
    base = f"{parts.scheme}://{parts.netloc}/"
    key_glob = parts.path.lstrip("/")
    segments = key_glob.split("/")
    literal = []
    for seg in segments:
        if glob.has_magic(seg):
            break
        literal.append(seg)
    prefix = "/".join(literal)
    regex = re.compile(_glob_regex(key_glob))
    store = source_store(base, plan)
    try:
        batches = obstore.list(store, prefix=prefix or None).collect()
    except Exception as e:
        raise InvalidInputError(f"{pattern}: cannot list {base}{prefix}: {_first_line(e)}") from e
    found = []
    for meta in batches:
        if regex.match(meta["path"]):
            found.append(base + meta["path"])
            if listed is not None:
                listed[found[-1]] = object_state(meta)
    return sorted(found)


_MAGIC = ((b"\x89HDF\r\n\x1a\n", "hdf"), (b"CDF\x01", "netcdf3"), (b"CDF\x02", "netcdf3"),
          (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),  # TIFF, little and big endian
          (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"),  # BigTIFF
          (b"GRIB", "grib"))


def detect_parser(url: str) -> str:
    """The parser for a file, from its first bytes (local) or its name (remote)."""
    if url.endswith(".json"):
        return "kerchunk-json"
    if url.endswith(".parq") or url.endswith(".parquet"):
        return "kerchunk-parquet"
    if url.endswith(".zarr") or url.endswith(".zarr/"):
        return "zarr"
    if url.lower().endswith((".tif", ".tiff")):
        return "tiff"
    if url.lower().endswith((".grib", ".grib2", ".grb", ".grb2")):
        return "grib"
    if url.startswith("file://"):
        path = Path(url[7:])
        if path.is_dir():
            return "zarr"
        with open(path, "rb") as f:
            head = f.read(8)
        for magic, name in _MAGIC:
            if head.startswith(magic):
                return name
        raise InvalidInputError(f"{path}: not netCDF/HDF5, netCDF3, TIFF, GRIB, Zarr or kerchunk "
                                "references (pass --parser to force one)")
    return "hdf"  # remote: netCDF4/HDF5 is by far the most common; --parser overrides


def parser_name(urls: Sequence[str], plan: IngestPlan) -> str:
    """The one parser every input needs; raises if they need different ones."""
    names = {plan.parser} if plan.parser != "auto" else {detect_parser(u) for u in urls}
    if len(names) > 1:
        raise InvalidInputError(f"the inputs need different parsers ({', '.join(sorted(names))});"
                                " ingest them separately")
    return names.pop()


def make_parser(name: str, group: str | None) -> Any:
    from virtualizarr import parsers

    match name:
        case "hdf":
            return parsers.HDFParser(group=group)
        case "netcdf3":
            return parsers.NetCDF3Parser(group=group)
        case "zarr":
            return parsers.ZarrParser(group=group)
        case "kerchunk-json":
            return parsers.KerchunkJSONParser(group=group)
        case "kerchunk-parquet":
            return parsers.KerchunkParquetParser(group=group)
        case "grib":
            from vchunkfs.grib import GribParser

            return GribParser()
        case "tiff":
            # VirtualiZarr's TIFF parser lives in its own package; --group is the IFD
            try:
                from virtual_tiff import VirtualTIFF
            except ImportError as e:
                raise UsageError("TIFF needs the virtual-tiff package "
                                 "(pip install 'vchunkfs[tiff]')") from e
            return VirtualTIFF(ifd=int(group) if group else 0)
    raise UsageError(f"unknown parser {name!r}: use one of {', '.join(PARSERS)}")


def source_store(base: str, plan: IngestPlan) -> Any:
    """An obstore store for ``scheme://bucket/`` with the plan's source options.

    Credentials come from the backend's environment variables (obstore reads
    AWS_*, GOOGLE_*, AZURE_*); ``--source-endpoint`` is the S3 endpoint, the GCS
    base URL or the Azure blob endpoint; ``--source-anonymous`` skips signing.
    """
    from obstore.store import from_url

    scheme = urlsplit(base).scheme
    kw: dict[str, Any] = {}
    endpoint = plan.source_endpoint
    if scheme == "s3":
        if plan.source_region:
            kw["region"] = plan.source_region
        if endpoint:
            kw["endpoint"] = endpoint
            kw["virtual_hosted_style_request"] = False
    elif scheme == "gs":
        if endpoint:
            kw["base_url"] = endpoint
    elif scheme in ("az", "azure", "abfs"):
        if plan.source_account:
            kw["account_name"] = plan.source_account
        if endpoint:
            kw["endpoint"] = endpoint
    if plan.source_anonymous:
        kw["skip_signature"] = True
    if endpoint and endpoint.startswith("http://"):
        kw["client_options"] = {"allow_http": True}
    try:
        return from_url(base, **kw)
    except Exception as e:
        raise UsageError(f"{base}: {_first_line(e)}") from e


def make_registry(urls: Sequence[str], plan: IngestPlan) -> Any:
    """An obstore registry with one store per bucket (or one for local files)."""
    from obspec_utils.registry import ObjectStoreRegistry

    stores: dict[str, Any] = {}
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme == "file":
            if "file://" not in stores:
                from obstore.store import LocalStore

                stores["file://"] = LocalStore()
            continue
        base = f"{parts.scheme}://{parts.netloc}/"
        if base not in stores:
            stores[base] = source_store(base, plan)
    return ObjectStoreRegistry(stores)


def _open_one(url: str, registry: Any, parser: Any) -> xr.Dataset:
    from virtualizarr import open_virtual_dataset

    try:
        return open_virtual_dataset(url, registry=registry, parser=parser)
    except VchunkfsError:
        raise
    except Exception as e:
        raise InvalidInputError(f"{url}: cannot read it as {type(parser).__name__}: "
                                f"{_first_line(e)}") from e


def scan(urls: Sequence[str], plan: IngestPlan, progress: Progress | None = None
         ) -> list[xr.Dataset]:
    """Every file's virtual dataset, in order (see :func:`scan_into`)."""
    got: dict[int, xr.Dataset] = {}
    whole = scan_into(urls, plan, got.__setitem__, progress)
    return [whole] if whole is not None else [got[i] for i in sorted(got)]


def scan_into(urls: Sequence[str], plan: IngestPlan, put: Callable[[int, xr.Dataset], None],
              progress: Progress | None = None) -> xr.Dataset | None:
    """Open every file's metadata, handing each file's dataset to ``put(index, ds)`` as
    it arrives (not always in order with helpers or a cluster); with ``plan.workers`` > 1,
    in that many processes. With ``plan.dask`` (no scheduler), returns the one dataset
    ``open_virtual_mfdataset`` combined instead.

    Processes, not threads: VirtualiZarr's HDF parser runs h5py, whose global lock
    (and the GIL) let only one thread parse at a time, so threads only add
    contention. A helper process costs about a second and a half to start (its
    imports), so helpers start only when the files left would take longer than
    ``_HELPERS_PAY_OFF`` seconds here, judged by the second file's time (the
    first pays for imports). Then this process goes on reading files while
    ``plan.workers - 1`` helpers start up and take the next files with it.
    """
    registry = make_registry(urls, plan)
    name = parser_name(urls, plan)
    parser = make_parser(name, plan.group)
    if plan.scheduler:
        _scan_distributed(urls, plan, name, put, progress)
        return None
    if plan.dask:
        return _open_many_dask(urls, registry, parser, plan)
    for i, url in enumerate(urls):
        t = time.monotonic()
        put(i, _open_one(url, registry, parser))
        if progress:
            progress(i + 1, len(urls))
        left = len(urls) - i - 1
        if i == 1 and plan.workers > 1 and (time.monotonic() - t) * left > _HELPERS_PAY_OFF:
            def later(done: int, total: int) -> None:
                if progress:
                    progress(done + 2, total + 2)

            def put_later(j: int, ds: xr.Dataset) -> None:
                put(j + 2, ds)

            _scan_with_helpers(urls[2:], plan, name, registry, parser, put_later, later)
            return None
    return None


_HELPERS_PAY_OFF = 2.0  # seconds of files left (helper start-up is ~1.5 s of imports)
_HELPER_AHEAD = 2  # files handed to a helper before it returns one


def _helper_main(urls: Sequence[str], plan: IngestPlan, parser_name: str, tasks: Any,
                 results: Any, helper: int, parent: int) -> None:
    """A helper process: open the files whose indexes arrive on ``tasks`` until None
    (or until the main process, ``parent``, is gone)."""
    import queue

    # never wait at exit to flush results nobody will read (the main process is gone,
    # or it has read every result already)
    results.cancel_join_thread()
    try:
        registry = make_registry(urls, plan)
        parser = make_parser(parser_name, plan.group)
        import virtualizarr  # noqa: F401 -- imported before saying "ready"
    except Exception as e:
        results.put((helper, None, None, _portable(e, "starting a helper process")))
        return
    except KeyboardInterrupt:
        return
    results.put((helper, None, None, None))  # ready
    try:
        while os.getppid() == parent:
            try:
                i = tasks.get(timeout=1.0)
            except queue.Empty:
                continue
            if i is None:
                return
            try:
                results.put((helper, i, _open_one(urls[i], registry, parser), None))
            except Exception as e:
                results.put((helper, i, None, _portable(e, urls[i])))
    except (KeyboardInterrupt, EOFError, OSError):  # ^C, or the main process is gone
        return


def _portable(e: Exception, what: str) -> VchunkfsError:
    """An error that survives pickling back to the main process."""
    return e if isinstance(e, VchunkfsError) else InvalidInputError(f"{what}: {_first_line(e)}")


def _scan_with_helpers(urls: Sequence[str], plan: IngestPlan, parser_name: str, registry: Any,
                       parser: Any, put: Callable[[int, xr.Dataset], None],
                       progress: Progress | None) -> None:
    import multiprocessing
    import queue

    # spawn, not fork: this process runs threads (the asyncio bridge, icechunk's runtime)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    helpers = []
    for h in range(min(plan.workers - 1, len(urls) - 1)):
        tasks = ctx.Queue()
        proc = ctx.Process(target=_helper_main, args=(list(urls), plan, parser_name, tasks,
                                                      results, h, os.getpid()), daemon=True)
        proc.start()
        helpers.append((proc, tasks))
    owed: list[list[int]] = [[] for _ in helpers]  # indexes handed to each helper, not back
    ready = [False] * len(helpers)
    front, back, done = 0, len(urls), 0

    def store(i: int, ds: xr.Dataset) -> None:
        nonlocal done
        put(i, ds)
        done += 1
        if progress:
            progress(done, len(urls))

    def hand_out(h: int) -> None:
        # from the front, with this process: results arrive about in order, so the
        # combining in ingest (Combiner) holds only a few files' datasets at a time
        nonlocal front
        while back > front and len(owed[h]) < _HELPER_AHEAD:
            owed[h].append(front)
            helpers[h][1].put(front)
            front += 1

    def reclaim() -> None:
        """Open here the files owed by helpers that died."""
        for k, (proc, _) in enumerate(helpers):
            if not proc.is_alive():
                for j in owed[k]:
                    store(j, _open_one(urls[j], registry, parser))
                owed[k] = []

    def receive(timeout: float | None) -> None:
        """Take every message waiting, or with ``timeout``, wait that long for one."""
        while True:
            try:
                h, i, ds, err = (results.get(timeout=timeout) if timeout is not None
                                 else results.get_nowait())
            except queue.Empty:
                if timeout is not None:
                    reclaim()
                return
            timeout = None
            if i is None:  # a helper started, or could not: then go on without it
                ready[h] = err is None
            elif err is not None:
                raise err
            elif i in owed[h]:
                owed[h].remove(i)
                store(i, ds)
            if ready[h]:
                hand_out(h)

    try:
        while done < len(urls):
            receive(None)
            if front < back:
                front += 1
                store(front - 1, _open_one(urls[front - 1], registry, parser))
            elif done < len(urls):
                receive(1.0)
    finally:
        for (proc, tasks), is_ready in zip(helpers, ready, strict=True):
            tasks.cancel_join_thread()
            if is_ready and done == len(urls):
                tasks.put(None)
            else:
                proc.terminate()  # still starting up, or the scan failed
        for proc, _ in helpers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


_WORKER_STATE: dict[str, Any] = {}  # per worker process: (registry, parser) by plan


def _open_batch(first: int, urls: Sequence[str], bases: Sequence[str], plan: IngestPlan,
                parser_name: str) -> tuple[int, int, list[xr.Dataset]]:
    """A dask.distributed task: open a run of files; (index of the first, worker pid,
    datasets). Each worker process keeps one registry and parser per plan."""
    key = repr((plan.source_region, plan.source_endpoint, plan.source_anonymous,
                plan.source_account, parser_name, plan.group, list(bases)))
    state = _WORKER_STATE.get(key)
    if state is None:
        state = _WORKER_STATE[key] = (make_registry([b + "x" for b in bases], plan),
                                      make_parser(parser_name, plan.group))
    return first, os.getpid(), [_open_one(url, *state) for url in urls]


_TASKS_PER_WORKER = 8  # files are sent in runs: this many tasks per worker (progress, balance)


def _scan_distributed(urls: Sequence[str], plan: IngestPlan, parser_name: str,
                      put: Callable[[int, xr.Dataset], None],
                      progress: Progress | None) -> None:
    """Open the files on an existing dask.distributed cluster, in runs of files (about
    ``_TASKS_PER_WORKER`` tasks per worker, at most ``COMBINE_BATCH`` files a run),
    handed to ``put`` in order of completion
    (the runs are submitted in the inputs' order, so they mostly complete in it)."""
    import importlib

    try:
        dist: Any = importlib.import_module("distributed")  # (untyped)
    except ImportError as e:
        raise UsageError("--scheduler needs dask.distributed (pip install "
                         "'vchunkfs[dask]')") from e
    try:
        client = dist.Client(plan.scheduler, timeout=30, set_as_default=False)
    except Exception as e:
        raise UsageError(f"--scheduler {plan.scheduler}: cannot connect: {_first_line(e)}"
                         ) from e
    pids: set[int] = set()
    bases = sorted({"file://" if u.startswith("file://") else
                    f"{urlsplit(u).scheme}://{urlsplit(u).netloc}/" for u in urls})
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        # at most a combining batch a run: a run's datasets arrive here at once (625 of
        # them at 10,000 files on 2 workers held 35 MiB more than the single process)
        size = max(1, min(COMBINE_BATCH,
                          math.ceil(len(urls) / (workers * _TASKS_PER_WORKER))))
        futures = [client.submit(_open_batch, i, list(urls[i:i + size]), bases, plan,
                                 parser_name, pure=False)
                   for i in range(0, len(urls), size)]
        done = 0
        for fut in dist.as_completed(futures, loop=client.loop):
            try:
                first, pid, got = fut.result()
            except VchunkfsError:
                raise
            except Exception as e:
                raise InvalidInputError(f"reading on {plan.scheduler}: {_first_line(e)}") from e
            for k, ds in enumerate(got):
                put(first + k, ds)
            pids.add(pid)
            done += len(got)
            if progress:
                progress(done, len(urls))
    finally:
        client.close()  # (its unfinished tasks are released with it)
    _SCAN_INFO["processes"] = len(pids)


_SCAN_INFO: dict[str, int] = {}


def _open_many_dask(urls: Sequence[str], registry: Any, parser: Any,
                    plan: IngestPlan) -> xr.Dataset:
    from virtualizarr import open_virtual_mfdataset

    try:
        return open_virtual_mfdataset(list(urls), registry=registry, parser=parser,
                                      concat_dim=plan.concat_dim, combine="nested",
                                      data_vars="minimal", coords="minimal",
                                      compat="override", combine_attrs="override",
                                      parallel="dask")
    except ImportError as e:
        raise UsageError("--dask needs dask (pip install 'dask[distributed]')") from e


def _signature(ds: xr.Dataset, concat_dim: str | None) -> dict[str, Any]:
    """What :func:`check_agree` compares, per variable."""
    sig: dict[str, Any] = {}
    for key, var in ds.variables.items():
        name = str(key)
        data = var.data
        meta = getattr(data, "metadata", None)
        shape = tuple(s for d, s in zip(var.dims, var.shape, strict=True) if d != concat_dim)
        sig[name] = {
            "dims": var.dims, "dtype": str(var.dtype), "shape": shape,
            "chunks": tuple(meta.chunk_grid.chunk_shape) if meta is not None else None,
            "codecs": [c.to_dict() for c in meta.codecs] if meta is not None else None,
        }
    return sig


def _check_signature(url: str, first_url: str, want: dict[str, Any], got: dict[str, Any]
                     ) -> None:
    if set(got) != set(want):
        extra, missing = set(got) - set(want), set(want) - set(got)
        raise InvalidInputError(
            f"{url} does not match {first_url}: "
            + (f"extra variables {sorted(extra)}" if extra else "")
            + (" " if extra and missing else "")
            + (f"missing variables {sorted(missing)}" if missing else ""))
    for name in want:
        for what in ("dims", "dtype", "shape", "chunks", "codecs"):
            if got[name][what] != want[name][what]:
                raise InvalidInputError(
                    f"{url} does not match {first_url}: variable {name!r} has {what} "
                    f"{got[name][what]} instead of {want[name][what]}")


def check_agree(urls: Sequence[str], datasets: Sequence[xr.Dataset], concat_dim: str | None
                ) -> None:
    """Raise naming the first file whose variables differ from the first file's."""
    want = _signature(datasets[0], concat_dim)
    for url, ds in zip(urls[1:], datasets[1:], strict=True):
        _check_signature(url, urls[0], want, _signature(ds, concat_dim))


STATIC_BYTES_COMPARED = 4 << 20  # a static variable's stored bytes are compared up to this


def static_names(ds: xr.Dataset, concat_dim: str | None) -> list[str]:
    """The variables (coordinates included) without ``concat_dim``: kept once."""
    if not concat_dim:
        return []
    return sorted(str(k) for k, v in ds.variables.items() if concat_dim not in v.dims)


def _fetch(registry: Any, refs: Sequence[tuple[str, int, int]]) -> list[bytes]:
    import obstore

    out = []
    for url, offset, length in refs:
        store, path = registry.resolve(url)
        out.append(bytes(obstore.get_range(store, path, start=offset, length=length)))
    return out


def _manifest_refs(var: xr.Variable) -> list[tuple[str, int, int]]:
    import numpy as np

    m = var.data.manifest
    return [(str(p), int(o), int(n)) for p, o, n in zip(
        np.ravel(m._paths), np.ravel(m._offsets), np.ravel(m._lengths), strict=True) if p]


def static_difference(a: xr.Variable, b: xr.Variable, a_bytes: Callable[[], list[bytes]],
                      b_bytes: Callable[[], list[bytes]]) -> str | None:
    """What differs between two copies of a static variable, or None.

    Compared: shape, dtype and attributes; for variables loaded in memory (coordinates)
    the values; for virtual ones the chunk grid, codecs and fill value, the length of
    every chunk, and the chunks' stored bytes when they total at most
    ``STATIC_BYTES_COMPARED`` (larger ones are compared by layout only).
    """
    import numpy as np

    if a.shape != b.shape:
        return f"shape {b.shape} instead of {a.shape}"
    if a.dtype != b.dtype:
        return f"dtype {b.dtype} instead of {a.dtype}"
    if _attrs_key(a.attrs) != _attrs_key(b.attrs):
        differ = sorted(set(map(str, a.attrs)) ^ set(map(str, b.attrs))) or sorted(
            str(k) for k in a.attrs if _attrs_key({k: a.attrs[k]}) != _attrs_key(
                {k: b.attrs.get(k)}))
        return f"different attributes ({', '.join(differ[:3])})"
    ma, mb = getattr(a.data, "manifest", None), getattr(b.data, "manifest", None)
    if (ma is None) != (mb is None):
        return "it is virtual in one file and loaded in the other"
    if ma is None:
        va, vb = np.asarray(a.values), np.asarray(b.values)
        same = (np.array_equal(va, vb, equal_nan=True) if va.dtype.kind in "fc"
                else np.array_equal(va, vb))
        return None if same else "different values"
    meta_a, meta_b = a.data.metadata, b.data.metadata
    if tuple(meta_a.chunk_grid.chunk_shape) != tuple(meta_b.chunk_grid.chunk_shape):
        return "a different chunking"
    if [c.to_dict() for c in meta_a.codecs] != [c.to_dict() for c in meta_b.codecs]:
        return "different codecs"
    fa, fb = meta_a.fill_value, meta_b.fill_value
    if not (fa == fb or (fa != fa and fb != fb)):
        return f"fill value {fb} instead of {fa}"
    ra, rb = _manifest_refs(a), _manifest_refs(b)
    if [n for _, _, n in ra] != [n for _, _, n in rb]:
        return "chunks of different sizes (different bytes)"
    if sum(n for _, _, n in ra) <= STATIC_BYTES_COMPARED and a_bytes() != b_bytes():
        return "different bytes"
    return None


def _attrs_key(attrs: Any) -> str:
    """Attributes as comparable text (values may be numpy arrays)."""
    import numpy as np

    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        return v

    return repr(sorted((str(k), repr(plain(v))) for k, v in dict(attrs).items()))


class _StaticCheck:
    """Compares each later file's static variables with the first file's
    (:func:`static_difference`); the first file's bytes are fetched once, when needed."""

    def __init__(self, first_url: str, first: xr.Dataset, concat_dim: str | None,
                 registry: Callable[[], Any]) -> None:
        self.first_url, self.first, self.concat_dim = first_url, first, concat_dim
        self.names = static_names(first, concat_dim)
        self.registry = registry
        self.first_bytes: dict[str, list[bytes]] = {}

    def check(self, url: str, ds: xr.Dataset) -> None:
        for name in self.names:
            a, b = self.first.variables[name], ds.variables[name]

            def a_bytes(name: str = name, a: xr.Variable = a) -> list[bytes]:
                if name not in self.first_bytes:
                    self.first_bytes[name] = _fetch(self.registry(), _manifest_refs(a))
                return self.first_bytes[name]

            def b_bytes(b: xr.Variable = b) -> list[bytes]:
                return _fetch(self.registry(), _manifest_refs(b))

            diff = static_difference(a, b, a_bytes, b_bytes)
            if diff:
                raise InvalidInputError(
                    f"{url}: variable {name!r} (without {self.concat_dim}, kept once) differs "
                    f"from {self.first_url}: {diff}")


def check_static(urls: Sequence[str], datasets: Sequence[xr.Dataset], concat_dim: str | None,
                 registry: Any) -> None:
    """Every file holds the same static variables (see :func:`static_difference`);
    raise naming the variable and the first file that differs from the first file."""
    static = _StaticCheck(urls[0], datasets[0], concat_dim, lambda: registry)
    for url, ds in zip(urls[1:], datasets[1:], strict=True):
        static.check(url, ds)


def combine(datasets: Sequence[xr.Dataset], concat_dim: str | None,
            new_dim: bool = False) -> xr.Dataset:
    """The files combined like the guide's ``xr.concat``. With ``new_dim``, a
    ``concat_dim`` the files lack becomes a new leading dimension (single images);
    without, it is an error, since it is most often a misspelt name."""
    if len(datasets) > 1 and not concat_dim:
        raise UsageError("several files need --concat-dim (e.g. --concat-dim time)")
    if concat_dim and concat_dim not in datasets[0].dims:
        if not new_dim:
            raise UsageError(f"--concat-dim {concat_dim!r} is not a dimension of the files "
                             f"(they have {', '.join(map(str, datasets[0].dims))}); pass "
                             "--new-dim to stack them along a new one")
        datasets = [ds.expand_dims(concat_dim) for ds in datasets]
    if len(datasets) == 1:
        return datasets[0]
    # data_vars="minimal": a variable without concat_dim (an orography, a land-sea mask)
    # is kept once, from the first file (check_static made sure the others agree); the
    # guide's snippet leaves xr.concat's default "all", which stacks one copy per file
    return xr.concat(list(datasets), dim=concat_dim, data_vars="minimal", coords="minimal",
                     compat="override", combine_attrs="override")


COMBINE_BATCH = 256  # files' datasets held before they are folded into the combined one


class Combiner:
    """The files' datasets combined as they arrive, so that memory holds the combined
    refs (per variable, arrays of paths, offsets and lengths) and at most about
    ``COMBINE_BATCH`` files' datasets, not one dataset per file until the end.

    :meth:`put` takes datasets by index in any order and takes them up in the
    inputs' order: each is checked against the first file (:func:`check_agree`'s
    variables, :func:`check_static`'s static variables), then concatenated in
    batches (:func:`combine`) onto the running result. ``xr.concat`` with
    ``data_vars="minimal", coords="minimal", compat="override",
    combine_attrs="override"`` gives the same result in batches as in one call.
    """

    def __init__(self, urls: Sequence[str], plan: IngestPlan, new_dim: bool) -> None:
        self.urls, self.concat_dim, self.new_dim = urls, plan.concat_dim, new_dim
        self.plan = plan
        self.waiting: dict[int, xr.Dataset] = {}
        self.next = 0
        self.want: dict[str, Any] = {}
        self.static: _StaticCheck | None = None
        self.batch: list[xr.Dataset] = []
        self.whole: xr.Dataset | None = None
        self._registry: Any = None

    def registry(self) -> Any:
        if self._registry is None:
            self._registry = make_registry(self.urls, self.plan)
        return self._registry

    def put(self, i: int, ds: xr.Dataset) -> None:
        self.waiting[i] = ds
        while self.next in self.waiting:
            self._take(self.waiting.pop(self.next))
            self.next += 1

    def _take(self, ds: xr.Dataset) -> None:
        url = self.urls[self.next]
        if self.next == 0:
            self.want = _signature(ds, self.concat_dim)
            if self.concat_dim in ds.dims:  # (else combine stacks along a new one)
                self.static = _StaticCheck(url, ds, self.concat_dim, self.registry)
        else:
            _check_signature(url, self.urls[0], self.want, _signature(ds, self.concat_dim))
            if self.static is not None:
                self.static.check(url, ds)
        self.batch.append(ds)
        if len(self.batch) >= COMBINE_BATCH:
            self._fold()

    def _fold(self) -> None:
        if not self.batch:
            return
        if self.whole is not None and not self.concat_dim:
            raise UsageError("several files need --concat-dim (e.g. --concat-dim time)")
        part = combine(self.batch, self.concat_dim, self.new_dim)
        self.batch = []
        self.whole = part if self.whole is None else xr.concat(
            [self.whole, part], dim=str(self.concat_dim), data_vars="minimal",
            coords="minimal", compat="override", combine_attrs="override")

    def result(self) -> xr.Dataset:
        if self.waiting or self.next != len(self.urls):
            raise RuntimeError(f"combined {self.next} of {len(self.urls)} files")
        self._fold()
        assert self.whole is not None
        return self.whole


def ensure_container(repo: Repo, urls: Sequence[str], plan: IngestPlan) -> str | None:
    """A container covering every source url: existing, or the one passed; else a clear error."""
    prefixes = [c.url_prefix for c in repo.containers()]
    uncovered = [u for u in urls if not any(u.startswith(p) for p in prefixes)]
    if not uncovered:
        return None
    if plan.container:
        missing = [u for u in uncovered if not u.startswith(plan.container)]
        if missing:
            raise InvalidInputError(f"--container {plan.container} does not cover {missing[0]}")
        return plan.container
    suggestion = _common_prefix(uncovered)
    raise InvalidInputError(
        f"no virtual chunk container covers {uncovered[0]}; pass --container {suggestion} "
        f"(or: vchunkfs config {repo.location.url} containers add {suggestion})")


def source_urls(vds: xr.Dataset) -> list[str]:
    """Every distinct file the dataset's virtual refs point into."""
    import numpy as np

    paths: set[str] = set()
    for var in vds.variables.values():
        manifest = getattr(var.data, "manifest", None)
        if manifest is not None:
            paths.update(str(p) for p in np.unique(manifest._paths) if p)
    return sorted(paths)


def _common_prefix(urls: Sequence[str]) -> str:
    common = os.path.commonprefix(list(urls))  # noqa: RUF071 -- cut back to a '/' below
    return common[:common.rfind("/") + 1]


HEAD_CONCURRENCY = 16  # HEADs of object-store sources in flight at once


@dataclass(frozen=True, slots=True)
class SourceState:
    """What one source was when this ingest observed it: its size, modification time
    (seconds), ETag (object stores that give one) and, for a local file, its record
    (:class:`~vchunkfs.repository.sources.SourceRecord` as JSON)."""

    size: int
    mtime: float
    etag: str | None = None
    record: list[int] | None = None


def observe_sources(urls: Sequence[str], registry: Any,
                    listed: Mapping[str, SourceState] | None = None) -> dict[str, SourceState]:
    """The state of every source: ``os.stat`` for a local file, the bucket listing's
    entry when a glob listed it (``listed``), else a HEAD, ``HEAD_CONCURRENCY`` at once.

    Call it *before* the files are parsed. The refs are then checked against the
    state they were read from or an older one, never a newer: a file rewritten while
    it was parsed is refused at read time (its ETag or record no longer matches),
    where a state taken after parsing would vouch for the new file's bytes at the old
    file's offsets.
    """
    listed = listed or {}
    remote = [u for u in urls if urlsplit(u).scheme != "file" and u not in listed]
    heads: dict[str, Any] = {}
    if remote:
        import obstore

        def head(url: str) -> Any:
            store, path = registry.resolve(url)
            try:
                return obstore.head(store, path)
            except Exception as e:
                return e

        # one HEAD a source, HEAD_CONCURRENCY at once: one after the other they cost a
        # round trip each (31 x 30 ms over a slow link, docs/benchmarks-remote.md)
        with concurrent.futures.ThreadPoolExecutor(min(HEAD_CONCURRENCY, len(remote))) as pool:
            heads = dict(zip(remote, pool.map(head, remote), strict=True))
    out: dict[str, SourceState] = {}
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme == "file":
            st = os.stat(local_path(url))
            out[url] = SourceState(st.st_size, st.st_mtime, None,
                                   SourceRecord.from_stat(st).to_json())
        elif url in listed:
            out[url] = listed[url]
        else:
            meta = heads[url]
            if isinstance(meta, Exception):  # the first failing source, in order
                from obstore.exceptions import NotFoundError as ObjectNotFound

                # (obstore raises FileNotFoundError for a 404 of a HEAD)
                why = ("no such object" if isinstance(meta, FileNotFoundError | ObjectNotFound)
                       else _first_line(meta))
                raise InvalidInputError(f"{url}: cannot read it: {why}") from meta
            out[url] = object_state(meta)
    return out


def object_state(meta: Mapping[str, Any]) -> SourceState:
    """A :class:`SourceState` from obstore's object metadata (a HEAD or a listing)."""
    etag = meta.get("e_tag")
    return SourceState(int(meta["size"]), meta["last_modified"].timestamp(),
                       str(etag) if etag else None)


def newest_checksum(states: Iterable[SourceState]) -> datetime.datetime:
    """The newest modification time among the sources, rounded up to whole seconds:
    VirtualiZarr's ``last_updated_at``, recorded with every ref. Refs into an
    object-store source then get its ETag instead (:func:`stamp_etags`): Icechunk
    sends it as ``If-Match`` on every read, so a rewritten object is refused even when
    it was rewritten within the same second (Last-Modified has one-second precision)."""
    newest = max((s.mtime for s in states), default=0.0)
    return datetime.datetime.fromtimestamp(math.ceil(newest), datetime.UTC)


def check_extents(vds: xr.Dataset, sizes: dict[str, int]) -> None:
    """Every ref lies inside its source: a file cut short after its metadata (a partial
    download, a copy still running) is refused rather than read as EIO later."""
    import numpy as np

    for name, var in vds.variables.items():
        m = getattr(var.data, "manifest", None)
        if m is None:
            continue
        ends = np.ravel(m._offsets).astype("uint64") + np.ravel(m._lengths).astype("uint64")
        paths = np.ravel(m._paths)
        # on arrays, per distinct source: a Python loop would make a str for every ref
        distinct, which = np.unique(paths, return_inverse=True)
        unbounded = np.iinfo("uint64").max
        limits = np.array([sizes.get(str(u), unbounded) if u else unbounded
                           for u in distinct], dtype="uint64")
        past = np.flatnonzero(ends > limits[np.ravel(which)])
        if past.size:
            i = int(past[0])
            raise InvalidInputError(
                f"{paths[i]}: truncated: {name} has a chunk ending at byte {int(ends[i])} "
                f"of a {sizes[str(paths[i])]}-byte file")


async def stamp_etags(store: Any, vds: xr.Dataset, etags: dict[str, str]) -> int:
    """Give the refs this ingest wrote into object-store sources their source's ETag.

    Only refs whose (url, offset, length) the parsed files produced are touched, so
    refs of earlier ingests keep the checksum they were written with. Returns the
    number of refs stamped.
    """
    import icechunk as ic
    import numpy as np

    stamped = 0
    for name, var in vds.variables.items():
        manifest = getattr(var.data, "manifest", None)
        if manifest is None:
            continue
        ours = {(str(p), int(o), int(n)) for p, o, n in zip(
            np.ravel(manifest._paths), np.ravel(manifest._offsets), np.ravel(manifest._lengths),
            strict=True) if str(p) in etags}
        if not ours:
            continue
        specs = []
        async for coords, kinds, paths, offsets, lengths, _i in store.array_chunk_iterator(
                str(name), 100_000):
            for i, path in enumerate(paths):
                if kinds[i] == 2 and (path, int(offsets[i]), int(lengths[i])) in ours:
                    specs.append(ic.VirtualChunkSpec(
                        [int(c) for c in coords[i]], path, int(offsets[i]), int(lengths[i]),
                        etag_checksum=etags[path]))
        failed = await store.set_virtual_refs_async(str(name), specs)
        if failed:
            raise InvalidInputError(f"recording the ETags of {name} failed at chunks {failed[:3]}")
        stamped += len(specs)
    return stamped


def _stored_arrays(store: Any) -> dict[str, Any]:
    import zarr

    group = zarr.open_group(store, mode="r", zarr_format=3)
    return {str(name): arr for name, arr in group.arrays()}


def check_against_stored(store: Any, vds: xr.Dataset, plan: IngestPlan) -> None:
    """For --append and --replace-region: the new files hold the variables the branch
    holds, with the same dtype, chunking and codecs, and the same static variables
    (the comparison of :func:`static_difference`, against the stored refs' bytes).
    Runs in a thread (zarr's synchronous API)."""
    import asyncio

    import numpy as np

    stored = _stored_arrays(store)
    dim = plan.concat_dim
    decoded: xr.Dataset | None = None
    new = {str(k): v for k, v in vds.variables.items()}
    missing = sorted(set(stored) - set(new))
    extra = sorted(set(new) - set(stored))
    if missing or extra:
        raise InvalidInputError(
            f"{plan.inputs[0]} does not match the repository's dataset: "
            + ", ".join(([f"missing variables {missing}"] if missing else [])
                        + ([f"variables not in the repository {extra}"] if extra else [])))
    for name, var in sorted(new.items()):
        arr = stored[name]
        where = f"{plan.inputs[0]}: variable {name!r}"
        stored_dims = tuple(arr.metadata.dimension_names or ())
        if stored_dims and stored_dims != tuple(var.dims):
            hint = (f" (stored with {dim}: ingested one copy per file, as the guide's snippet "
                    "does; re-ingest the whole dataset)" if dim in stored_dims
                    and dim not in var.dims else "")
            raise InvalidInputError(f"{where} has dimensions {tuple(var.dims)} instead of "
                                    f"{stored_dims}{hint}")
        meta = getattr(var.data, "metadata", None)
        if meta is not None:  # (loaded variables are decoded: compared as values below)
            if np.dtype(var.dtype) != arr.dtype:
                raise InvalidInputError(f"{where} has dtype {var.dtype} instead of {arr.dtype}")
            if tuple(meta.chunk_grid.chunk_shape) != tuple(arr.chunks):
                raise InvalidInputError(f"{where} has chunks {tuple(meta.chunk_grid.chunk_shape)}"
                                        f" instead of {tuple(arr.chunks)}")
            mine = [c.to_dict() for c in meta.codecs]
            theirs = [c.to_dict() for c in arr.metadata.codecs]
            if mine != theirs:
                raise InvalidInputError(f"{where} has codecs {mine} instead of {theirs}")
        if dim in var.dims:
            continue
        # a static variable: the same as the stored one
        if var.shape != arr.shape:
            raise InvalidInputError(f"{where} (without {dim}, kept once) has shape "
                                    f"{var.shape} instead of {arr.shape}")
        if meta is None:
            if decoded is None:
                decoded = xr.open_zarr(store, consolidated=False, zarr_format=3, chunks=None)
            have = np.asarray(decoded[name].values)
            same = (np.array_equal(have, np.asarray(var.values), equal_nan=True)
                    if have.dtype.kind in "fc" else np.array_equal(have, np.asarray(var.values)))
            if not same:
                raise InvalidInputError(f"{where} (without {dim}, kept once) differs from "
                                        "the stored one: different values")
            continue
        refs = asyncio.run(_stored_refs(store, name))
        ours = _manifest_refs(var)
        diff = None
        if sorted(n for _, _, n in refs) != sorted(n for _, _, n in ours):
            diff = "chunks of different sizes (different bytes)"
        elif (sum(n for _, _, n in ours) <= STATIC_BYTES_COMPARED
              and not {u for u, _, _ in refs} & set(plan.inputs)):
            # (stored refs into a file read again here may be stale: rewrite_stale_refs
            # points them at this ingest's copy, which check_static compared across files)
            registry = make_registry(sorted({u for u, _, _ in refs} | {u for u, _, _ in ours}),
                                     plan)
            if _fetch(registry, refs) != _fetch(registry, ours):
                diff = "different bytes"
        if diff:
            raise InvalidInputError(f"{where} (without {dim}, kept once) differs from the "
                                    f"stored one (refs into {refs[0][0] if refs else '?'}): "
                                    f"{diff}")


async def _stored_refs(store: Any, name: str) -> list[tuple[str, int, int]]:
    """The virtual refs of an array, in row-major chunk order."""
    out = []
    async for coords, kinds, paths, offsets, lengths, _i in store.array_chunk_iterator(
            name, 100_000):
        for i, path in enumerate(paths):
            if kinds[i] == 2:
                out.append((tuple(int(c) for c in coords[i]), (path, int(offsets[i]),
                                                                 int(lengths[i]))))
    return [r for _, r in sorted(out)]


async def referenced_in(repo: Repo, base: str) -> set[str]:
    """Every url the virtual refs of snapshot ``base`` point into."""
    session = await repo.ic.readonly_session_async(snapshot_id=base)
    return {str(u) for u in await session.all_virtual_chunk_locations_async()}


async def changed_sources(repo: Repo, base: str, urls: Sequence[str],
                          records: dict[str, list[int]],
                          referenced: set[str] | None = None) -> set[str]:
    """The local sources this ingest reads again (the branch already references them)
    whose source record is not the one their refs were written with: the newest record
    of the url in the base snapshot's ancestry differs from the file now.
    ``referenced``: :func:`referenced_in` of ``base``, if the caller has it."""
    from vchunkfs.repository.sources import SourceRecord, records_in_metadata

    if referenced is None:
        referenced = await referenced_in(repo, base)
    want = {u for u in urls if u in referenced and u in records}
    found: dict[str, SourceRecord] = {}
    if want:
        async for snap in repo.ic.async_ancestry(snapshot_id=base):
            for url, rec in records_in_metadata(snap.metadata).items():
                if url in want and url not in found:
                    found[url] = rec
            if len(found) == len(want):
                break
    return {u for u, rec in found.items() if rec != SourceRecord.from_json(records[u])}


async def rewrite_stale_refs(store: Any, vds: xr.Dataset, concat_dim: str | None,
                             checksum: datetime.datetime, changed: set[str] | None = None,
                             updated: dict[str, set[tuple[int, ...]]] | None = None,
                             referenced: set[str] | None = None) -> list[str]:
    """Refs an earlier ingest wrote into a file this ingest read again, which this ingest
    does not replace: the file changed since (its source record differs, ``changed``,
    or re-parsed it gives other offsets), so those refs would read other bytes than
    they were written for, under the file's new source record. ``updated``: the chunks
    this session wrote, by array (their refs are this ingest's). ``referenced``: the
    urls the base snapshot's refs point into (:func:`referenced_in`), if known: a ref
    this session did not write comes from the base snapshot, so only those urls can
    hold stale refs, and a first ingest of new files (none of them referenced) has
    nothing to look at; without it every url this ingest read is looked for.

    A static variable's refs (kept once, pointing into the first file) are rewritten
    with this ingest's refs for it; any other such ref is refused. Returns the names
    of the arrays rewritten.
    """
    changed = changed or set()
    updated = updated or {}
    import icechunk as ic
    import numpy as np

    # (a set of (offset, length) per url would cost ~100 bytes a ref for every file of a
    # large first ingest, where no url was referenced before: only referenced urls count)
    produced: dict[str, set[tuple[int, int]]] = {}
    for var in vds.variables.values():
        m = getattr(var.data, "manifest", None)
        if m is None:
            continue
        for p, o, n in zip(np.ravel(m._paths), np.ravel(m._offsets), np.ravel(m._lengths),
                           strict=True):
            if p and (referenced is None or str(p) in referenced):
                produced.setdefault(str(p), set()).add((int(o), int(n)))
    if not produced:
        return []
    import asyncio

    arrays = await asyncio.to_thread(lambda: sorted(_stored_arrays(store)))
    statics = set(static_names(vds, concat_dim))
    rewritten = []
    for name in arrays:
        stale = None
        mine = updated.get(name, set())
        async for coords, kinds, paths, offsets, lengths, _i in store.array_chunk_iterator(
                name, 100_000):
            for i, path in enumerate(paths):
                if kinds[i] != 2 or path not in produced:
                    continue
                if (path in changed and tuple(int(c) for c in coords[i]) not in mine) or (
                        int(offsets[i]), int(lengths[i])) not in produced[path]:
                    stale = path
                    break
            if stale:
                break
        if not stale:
            continue
        static = vds.variables.get(name)
        m = getattr(static.data, "manifest", None) if static is not None else None
        if name not in statics or m is None:
            raise SourceChangedError(
                f"{stale} changed since it was ingested, and {name} keeps refs into it that "
                "this ingest does not replace; nothing was committed (re-ingest the whole "
                "dataset, or publish the new file under a new name)")
        specs = [ic.VirtualChunkSpec(list(idx), str(m._paths[idx]), int(m._offsets[idx]),
                                     int(m._lengths[idx]), last_updated_at_checksum=checksum)
                 for idx in np.ndindex(m._paths.shape) if m._paths[idx]]
        failed = await store.set_virtual_refs_async(name, specs)
        if failed:
            raise InvalidInputError(f"rewriting the refs of {name} failed at chunks {failed[:3]}")
        rewritten.append(name)
    return rewritten


def _container_for(prefix: str, plan: IngestPlan) -> Any:
    """The virtual chunk container ``--container`` adds, with the sources' options."""
    scheme = urlsplit(prefix).scheme
    if scheme in ("az", "azure", "abfs"):
        opts = {"endpoint": plan.source_endpoint} if plan.source_endpoint else {}
        if plan.source_endpoint and plan.source_endpoint.startswith("http://"):
            opts["allow_http"] = "true"
        return make_container(prefix, account=plan.source_account, options=opts)
    if scheme == "gs":
        return make_container(prefix, options={"base_url": plan.source_endpoint}
                              if plan.source_endpoint else None)
    return make_container(prefix, region=plan.source_region, endpoint_url=plan.source_endpoint,
                          anonymous=plan.source_anonymous)


COORDINATE_CHUNK = 4096  # values a chunk of a loaded coordinate along --concat-dim, at most


def chunk_loaded_coordinates(vds: xr.Dataset, concat_dim: str) -> xr.Dataset:
    """``vds`` with each loaded (not virtual) one-dimensional variable along
    ``concat_dim`` (the time coordinate) in chunks of all its values, up to
    ``COORDINATE_CHUNK``, instead of as the files chunk it (one value a file).

    The guide's snippet keeps the files' chunking: a coordinate of one chunk per
    file, which a reader opening the dataset reads file by file (10,000 chunk files
    through a mount for 10,000 days) and which zarr writes as 10,000 chunks at once
    (2.3 KB of the ingest's memory a file, docs/benchmarks-ingest.md). A chunk never
    exceeds the values there are: netCDF-C 4.9's NCZarr refuses an array whose chunk
    is longer than its dimension. Appends then add chunks of the same length. Arrays
    already stored keep their chunking: this applies to the first write only."""
    out = vds.copy(deep=False)  # new variables (sharing data), in the same order
    for var in out.variables.values():
        if var.dims != (concat_dim,) or hasattr(var.data, "manifest"):
            continue
        size = max(1, min(int(var.shape[0]), COORDINATE_CHUNK))
        encoding = {k: v for k, v in var.encoding.items() if k != "preferred_chunks"}
        encoding["chunks"] = (size,)
        var.encoding = encoding
    return out


def _region(plan: IngestPlan) -> Any:
    if plan.region is None:
        return None
    if plan.region == "auto":
        return "auto"
    dim, sep, rng = plan.region.partition("=")
    start, colon, stop = rng.partition(":")
    if not sep or not colon or not start.isdigit() or not stop.isdigit():
        raise UsageError(f"--replace-region {plan.region!r}: use auto or DIM=START:STOP")
    return {dim: slice(int(start), int(stop))}


COMMIT_TRIES = 5  # an append or region write redone on a moved branch at most this often


async def write(repo: Repo, vds: xr.Dataset, plan: IngestPlan, checksum: datetime.datetime,
                container: str | None, records: dict[str, list[int]] | None = None,
                etags: dict[str, str] | None = None) -> str:
    """Write the combined dataset with VirtualiZarr's to_icechunk and commit (asyncio side).

    An append or region write is checked against what the branch holds (variables,
    static variables, and for an append that the new coordinates follow the stored
    ones) and committed without rebasing: the commit lands only on the snapshot the
    checks read (icechunk's conflict detection; the commit lock on a local
    repository). If another writer moved the branch meanwhile, the whole write is
    redone on the new head, checks included, up to ``COMMIT_TRIES`` times.
    """
    if container:
        await repo.set_container(_container_for(container, plan))
    if plan.append and not plan.concat_dim:
        raise UsageError("--append needs --concat-dim")
    guarded = plan.append or plan.region is not None
    for attempt in range(COMMIT_TRIES if guarded else 1):
        try:
            return await _write_once(repo, vds, plan, checksum, records, etags,
                                     rebase=not guarded)
        except ConflictError:
            if attempt == COMMIT_TRIES - 1 or not guarded:
                raise
    raise AssertionError("unreachable")


async def _write_once(repo: Repo, vds: xr.Dataset, plan: IngestPlan,
                      checksum: datetime.datetime, records: dict[str, list[int]] | None,
                      etags: dict[str, str] | None, rebase: bool) -> str:
    import asyncio

    writer = await Writer.open(repo, plan.branch)
    region = _region(plan)
    if plan.append:
        existing = await writer.store.exists("zarr.json")
        if not existing:
            raise UsageError(f"--append: branch {plan.branch} holds no dataset yet; ingest "
                             "without --append first")
    store = writer.store
    full = vds
    if plan.append or region is not None:
        await asyncio.to_thread(check_against_stored, store, vds, plan)
    if plan.append and plan.concat_dim:
        await asyncio.to_thread(check_follows, store, vds, plan)
    dims = set(region) if isinstance(region, dict) else {plan.concat_dim} - {None}
    if region is not None and dims:
        # a region replaces slices along its dimensions; variables without them (lat, lon)
        # are not part of any region and stay as stored, as xarray's to_zarr requires
        vds = vds.drop_vars([k for k, v in vds.variables.items() if not dims & set(v.dims)])
    elif plan.append:
        # variables without the concat dimension are stored once: they stay as they are
        # (check_against_stored made sure the new files agree with them)
        vds = vds.drop_vars(static_names(vds, plan.concat_dim))

    if not plan.append and region is None and plan.concat_dim:
        vds = chunk_loaded_coordinates(vds, plan.concat_dim)

    def to_icechunk() -> None:
        try:
            vds.vz.to_icechunk(store, append_dim=plan.concat_dim if plan.append else None,
                               region=region, last_updated_at=checksum)
        except VchunkfsError:
            raise
        except Exception as e:
            raise InvalidInputError(f"writing the refs failed: {_first_line(e)}") from e

    # to_icechunk is synchronous and runs its own event loop: keep it off the bridge's loop
    await asyncio.to_thread(to_icechunk)
    sources = source_urls(full)
    referenced = await referenced_in(repo, writer.base_snapshot)
    changed = await changed_sources(repo, writer.base_snapshot, sources, records or {},
                                    referenced)
    # stale refs can only point into files the base snapshot referenced and this ingest
    # read again; with none (a first ingest, a daily append of new files) there is nothing
    # to look at, and the session's list of updated chunks (a tuple for every chunk
    # written) is not built
    reread = referenced.intersection(sources)
    updated = ({path.strip("/"): {tuple(int(c) for c in idx) for idx in chunks}
                for path, chunks in writer.session.status().updated_chunks.items()}
               if reread else {})
    rewritten = await rewrite_stale_refs(store, full, plan.concat_dim, checksum, changed,
                                         updated, reread)
    if etags:
        await stamp_etags(store, vds, etags)
        for name in rewritten:
            await stamp_etags(store, full[[name]], etags)
    writer.mark_changed()
    n = len(plan.inputs)
    message = plan.message or ("append" if plan.append else "ingest") + f" {n} file" \
        + ("s" if n != 1 else "")
    records = records or {}
    # the records must describe the files the refs were made from: they were taken
    # before the scan, so a file that changed since (while it was parsed or while the
    # refs were written) differs from its record now
    moved = [u for u, r in record_local_sources(records).items() if r != records[u]]
    if moved:
        raise SourceChangedError(f"{moved[0]} changed while it was ingested; nothing was "
                                 "committed (run the ingest again)")
    return await writer.commit(message, {"vchunkfs": {
        "ingest": {"files": n, "append": plan.append, "concat_dim": plan.concat_dim},
        RECORDS_KEY: records}}, rebase=rebase)


def check_follows(store: Any, vds: xr.Dataset, plan: IngestPlan) -> None:
    """An append's coordinates along the concat dimension increase and follow the
    stored ones; else the files arrived out of order (a day missing, then filled in),
    which only --replace-region auto can place. Runs in a thread."""
    import numpy as np

    dim = plan.concat_dim
    if dim is None or dim not in vds.variables:
        return
    stored = xr.open_zarr(store, consolidated=False, zarr_format=3, chunks=None)
    if dim not in stored.variables:
        return
    have = np.asarray(stored[dim].values)
    new = np.asarray(vds[dim].values)
    if have.size == 0 or new.size == 0:
        return
    if new.size > 1 and not bool(np.all(new[1:] > new[:-1])):
        raise InvalidInputError(f"the files' {dim} values do not increase in the order of "
                                "their names; ingest them in separate runs, in order")
    if not bool(new[0] > have[-1]):
        where = int(np.searchsorted(have, new[0]))
        exists = where < have.size and have[where] == new[0]
        raise InvalidInputError(
            f"{plan.inputs[0]}: its {dim} {_show(new[0])} does not follow the stored last "
            f"{dim} {_show(have[-1])} ("
            + (f"it is at index {where}: replace it with --replace-region auto"
               if exists else "out of order: a gap filled in later cannot be appended; "
               "re-ingest the dataset")
            + "); nothing was committed")


def _show(value: Any) -> str:
    import numpy as np

    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="s"))
    return str(value)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def ingest(repo: Repo, plan: IngestPlan, run: Callable[[Any], Any],
           progress: Progress | None = None) -> IngestResult:
    """The whole ingest; ``run`` executes a repository-layer coroutine (the bridge)."""
    t0 = time.monotonic()
    listed: dict[str, SourceState] = {}
    urls = expand_inputs(plan.inputs, plan, listed)
    skipped = 0
    if plan.new_only:
        known = run(lambda: referenced_urls(repo, plan.branch))
        fresh = [u for u in urls if u not in known]
        skipped = len(urls) - len(fresh)
        if not fresh:
            return IngestResult("", 0, [], 0, None, {"scan": time.monotonic() - t0},
                                skipped=skipped)
        urls = fresh
    plan.inputs = urls
    parser = parser_name(urls, plan)
    # TIFF files are single images: they stack along a new dimension by nature
    new_dim = plan.new_dim or parser == "tiff"
    # the inputs are the sources (unless they are references or a Zarr store): their
    # state is taken before they are parsed (see observe_sources)
    states = (observe_sources(urls, make_registry(urls, plan), listed)
              if parser in SOURCE_PARSERS else {})
    combiner = Combiner(urls, plan, new_dim)
    whole = scan_into(urls, plan, combiner.put, progress)
    # (--dask without a scheduler: open_virtual_mfdataset combined them, unchecked)
    vds = combine([whole], plan.concat_dim, new_dim) if whole is not None else combiner.result()
    t1 = time.monotonic()
    # the files the refs point into: the inputs, or what kerchunk references name
    sources = source_urls(vds)
    container = ensure_container(repo, sources, plan)
    # each local source's record goes into the commit's metadata (the mount's check of
    # local sources, vchunkfs.repository.sources, compares every read with it), each
    # object's ETag into its refs (Icechunk's If-Match)
    unseen = [u for u in sources if u not in states]
    if unseen:  # the files references point into: as they are now
        states.update(observe_sources(unseen, make_registry(unseen, plan), listed))
    seen = {u: states[u] for u in sources}
    records = {u: s.record for u, s in seen.items() if s.record is not None}
    etags = {u: s.etag for u, s in seen.items() if s.etag is not None}
    checksum = newest_checksum(seen.values())
    check_extents(vds, {u: s.size for u, s in seen.items()})
    refs = ref_count(vds)
    sid = run(lambda: write(repo, vds, plan, checksum, container, records, etags))
    t2 = time.monotonic()
    return IngestResult(sid, len(urls), sorted(map(str, vds.data_vars)), refs, container,
                        {"scan": t1 - t0, "write_commit": t2 - t1}, skipped=skipped,
                        scan_processes=_SCAN_INFO.pop("processes", 0))


def ref_count(vds: xr.Dataset) -> int:
    """The chunks the dataset's manifests hold (not missing ones), counted on the
    manifests' arrays: ``len(manifest.dict())`` would build a dict for every ref."""
    import numpy as np

    return sum(int(np.count_nonzero(np.asarray(v.data.manifest._paths) != ""))
               for v in vds.variables.values() if hasattr(v.data, "manifest"))


async def referenced_urls(repo: Repo, branch: str) -> set[str]:
    """Every url the branch's virtual refs point into (from the stored refs)."""
    if branch not in await repo.ic.list_branches_async():
        raise NotFoundError(f"no branch {branch!r} in {repo.location.url}")
    session = await repo.ic.readonly_session_async(branch=branch)
    return {str(u) for u in await session.all_virtual_chunk_locations_async()}
