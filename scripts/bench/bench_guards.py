"""What each candidate changed-source guard costs per chunk, cold and warm (issue 10).

On OISST-like files (scripts/make_oisst.py), for every stored chunk of ``sst``:

* ``icechunk get``: Icechunk's own read of a local virtual chunk (what main did; its
  check is a modification-time comparison);
* ``guarded read``: vchunkfs's contained read with the source record check
  (open, readlink of /proc/self/fd, fstat, pread, close), what a mount now does;
* ``guarded + icechunk get``: the path for refs without a record;
* per-chunk content hashes of the chunk's bytes (a guard that would need the hashes
  recorded at ingest, i.e. every source read whole at ingest): crc32c, sha256, blake2b.

"cold" drops the page cache before each pass (root only); "warm" reads cached pages.
Passes alternate between the candidates; the figure is the median of ``--runs``
passes, in microseconds per chunk. Also reports whether Icechunk accepts an ETag
checksum on a local file (object_store's inode-mtime-size form).

Usage: .venv/bin/python scripts/bench/bench_guards.py [--days 31] [--runs 5] [--scale 1]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import google_crc32c
import h5py
import icechunk as ic
import zarr
from zarr.core.buffer import default_buffer_prototype

from vchunkfs.repository.sources import LocalSources, SourceRecord, SourceRecords

ROOT = Path(__file__).resolve().parents[2]


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def refs_of(files: list[Path]) -> list[tuple[str, str, int, int]]:
    """(key, url, offset, length) of every sst chunk, read with h5py."""
    out = []
    for day, f in enumerate(files):
        with h5py.File(f, "r") as h:
            d = h["sst"]
            for i in range(d.id.get_num_chunks()):
                info = d.id.get_chunk_info(i)
                coords = [o // c for o, c in zip(info.chunk_offset, d.chunks, strict=True)]
                coords[0] = day
                out.append(("sst/c/" + "/".join(map(str, coords)), f.as_uri(),
                            info.byte_offset, info.size))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=31)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scale", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vchunkfs-guards-"))
    data = work / "data"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_oisst.py"), str(data),
                    "--days", str(args.days), "--scale", str(args.scale)], check=True,
                   capture_output=True)
    files = sorted(data.glob("*.nc"))
    refs = refs_of(files)
    prefix = data.as_uri() + "/"
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        ic.VirtualChunkContainer(prefix, ic.local_filesystem_store(str(data))))
    auth = ic.containers_credentials({prefix: ic.credentials.LocalFileSystemAccess})
    repo = ic.Repository.create(ic.local_filesystem_storage(str(work / "repo")), config,
                                authorize_virtual_chunk_access=auth)
    s = repo.writable_session("main")
    zarr.group(s.store).create_array("sst", shape=(len(files), 1, *h5py.File(
        files[0], "r")["sst"].shape[2:]), chunks=h5py.File(files[0], "r")["sst"].chunks,
        dtype="i2", fill_value=-999)
    for key, url, off, n in refs:
        s.store.set_virtual_ref(key, url, offset=off, length=n)
    s.commit("refs")
    store = repo.readonly_session("main").store
    records = {f.as_uri(): SourceRecord.from_stat(f.stat()) for f in files}

    async def no_ancestry(_sid: str):  # type: ignore[no-untyped-def]
        return
        yield

    local = LocalSources([prefix], lambda: [prefix], SourceRecords(no_ancestry))
    root = local.root(refs[0][1])
    assert root is not None

    async def icechunk_get() -> None:
        for key, *_ in refs:
            buf = await store.get(key, default_buffer_prototype())
            assert buf is not None

    async def guarded() -> None:
        for key, url, off, n in refs:
            local.read(url, root, off, n, records[url], key)

    async def guarded_and_get() -> None:
        for key, url, off, n in refs:
            data = local.read(url, root, off, n, None, key)
            buf = await store.get(key, default_buffer_prototype())
            assert buf is not None and buf.to_bytes() == data

    chunks = [local.read(url, root, off, n, None, key) for key, url, off, n in refs]

    def hasher(fn: Callable[[bytes], object]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            for c in chunks:
                fn(c)
        return run

    candidates: dict[str, Callable[[], Awaitable[None]]] = {
        "icechunk get (main)": icechunk_get,
        "guarded read with record (now)": guarded,
        "guarded read + icechunk get (no record)": guarded_and_get,
        "crc32c of the bytes": hasher(google_crc32c.value),
        "sha256 of the bytes": hasher(lambda b: hashlib.sha256(b).digest()),
        "blake2b of the bytes": hasher(lambda b: hashlib.blake2b(b).digest()),
    }
    can_drop = drop_caches()
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):
        for mode in ("cold", "warm") if can_drop else ("warm",):
            for name, fn in candidates.items():
                if mode == "cold" and "of the bytes" in name:
                    continue  # hashing reads no file
                if mode == "cold":
                    drop_caches()
                else:
                    asyncio.run(fn())  # make sure it is warm
                t0 = time.perf_counter()
                asyncio.run(fn())
                results.setdefault((name, mode), []).append(
                    (time.perf_counter() - t0) / len(refs) * 1e6)

    # an Icechunk ETag checksum on a local file, in object_store's own form
    st = files[0].stat()
    etag = f"{st.st_ino:x}-{st.st_mtime_ns // 1000:x}-{st.st_size:x}"
    s = repo.writable_session("main")
    s.store.set_virtual_ref(refs[0][0], refs[0][1], offset=refs[0][2], length=refs[0][3],
                            checksum=etag)
    s.commit("etag")
    try:
        repo.readonly_session("main").store._sync(
            repo.readonly_session("main").store.get(refs[0][0], default_buffer_prototype()))
        etag_verdict = "accepted"
    except Exception as e:
        etag_verdict = f"refused: {str(e).splitlines()[0]}"

    size = statistics.median(r[3] for r in refs)
    print(f"{len(refs)} chunks of {size / 1024:.0f} KiB (median), {args.runs} runs, medians "
          f"in µs per chunk{'' if can_drop else ' (no root: warm only)'}")
    print("| candidate | cold | warm |")
    print("| --- | ---: | ---: |")
    for name in candidates:
        cold = results.get((name, "cold"))
        warm = results[(name, "warm")]
        print(f"| {name} | {f'{statistics.median(cold):.0f}' if cold else '—'} "
              f"| {statistics.median(warm):.0f} |")
    print(f"\nIcechunk ETag checksum on a local file: {etag_verdict}")


if __name__ == "__main__":
    main()
