#!/usr/bin/env python3
"""Build a local Icechunk repository of one virtual array of a million chunks.

Layout of the output directory (default ``/tmp/vchunkfs-bench``)::

    src/part0.bin ... src/part3.bin   raw little-endian int16 chunks, one after another
    repo/                             the Icechunk repository
    built.json                        what was built (written last: marks a complete build)

The array ``arr`` is int16, uncompressed, chunk shape (4, 4), on a 1000 x 1000
chunk grid: 1,000,000 virtual refs of 32 bytes each. Chunk ``(i, j)`` holds
``i`` in its even elements and ``j`` in its odd ones, so a reader can check
that it got the right bytes (:func:`expected_chunk`). Rows of chunks are split
evenly between the source files; each file's refs are written with one
``set_virtual_refs_arr`` call (carrying that file's modification time as the
changed-source checksum), then everything is committed once. The repository
config holds a ``file://`` virtual chunk container for ``src/``.

The build is idempotent: a directory whose ``built.json`` matches the request
is left alone; anything else in the way is rebuilt from scratch.

Usage::

    python scripts/bench/make_million.py [DIR] [--grid 1000] [--files 4] [--force]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("ICECHUNK_LOG", "error")

import icechunk as ic
import numpy as np
import zarr

ic.set_logs_filter(os.environ["ICECHUNK_LOG"])

DEFAULT_DIR = Path("/tmp/vchunkfs-bench")
ARRAY = "arr"
CHUNK = 4  # chunk shape (CHUNK, CHUNK)
DTYPE = np.dtype("<i2")
CHUNK_BYTES = CHUNK * CHUNK * DTYPE.itemsize


@dataclass(frozen=True)
class BenchRepo:
    """A built benchmark repository, as recorded in ``built.json``."""

    directory: str
    grid: int  # chunks per dimension
    files: int
    container_prefix: str
    snapshot_id: str
    set_refs_s: float
    commit_s: float
    repo_bytes: int

    @property
    def repo_path(self) -> Path:
        return Path(self.directory) / "repo"

    @property
    def num_chunks(self) -> int:
        return self.grid * self.grid

    @property
    def bytes_per_ref(self) -> float:
        return self.repo_bytes / self.num_chunks

    def chunk_key(self, i: int, j: int) -> str:
        return f"{ARRAY}/c/{i}/{j}"

    def credentials(self) -> dict[str, ic.AnyCredential | None]:
        """icechunk's authorization for the one local container."""
        return ic.containers_credentials(
            {self.container_prefix: ic.credentials.LocalFileSystemAccess})


def expected_chunk(i: int, j: int) -> bytes:
    """The stored bytes of chunk ``(i, j)``."""
    values = np.empty(CHUNK * CHUNK, dtype=DTYPE)
    values[0::2] = i
    values[1::2] = j
    return values.tobytes()


def last_modified(path: Path) -> datetime.datetime:
    """The file's mtime rounded up to whole seconds (icechunk compares at 1 s precision)."""
    return datetime.datetime.fromtimestamp(math.ceil(path.stat().st_mtime), datetime.UTC)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write_sources(src: Path, grid: int, files: int) -> list[Path]:
    src.mkdir(parents=True)
    rows_per_file = grid // files
    paths = []
    for f in range(files):
        lin = np.arange(f * rows_per_file * grid, (f + 1) * rows_per_file * grid, dtype=np.int64)
        values = np.empty((len(lin), CHUNK * CHUNK), dtype=DTYPE)
        values[:, 0::2] = (lin // grid)[:, None]
        values[:, 1::2] = (lin % grid)[:, None]
        path = src / f"part{f}.bin"
        values.tofile(path)
        paths.append(path)
    return paths


def load(directory: Path) -> BenchRepo | None:
    """The repository recorded in ``directory``, if a complete build is there."""
    marker = directory / "built.json"
    if not marker.is_file():
        return None
    try:
        return BenchRepo(**json.loads(marker.read_text()))
    except (TypeError, ValueError):
        return None


def build(directory: Path = DEFAULT_DIR, grid: int = 1000, files: int = 4, *,
          force: bool = False, verbose: bool = True) -> BenchRepo:
    """Build the repository unless ``directory`` already holds this exact build."""
    directory = directory.resolve()
    done = load(directory)
    if done is not None and not force and (done.grid, done.files) == (grid, files):
        if verbose:
            print(f"{directory}: already built ({done.num_chunks:,} refs), nothing to do")
        return done
    if grid % files:
        raise SystemExit(f"--grid {grid} must be a multiple of --files {files}")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)

    t = time.perf_counter()
    sources = _write_sources(directory / "src", grid, files)
    write_s = time.perf_counter() - t

    prefix = (directory / "src").as_uri() + "/"
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        ic.VirtualChunkContainer(prefix, ic.local_filesystem_store(str(directory / "src"))))
    repo = ic.Repository.create(ic.local_filesystem_storage(str(directory / "repo")), config)
    repo.save_config()

    session = repo.writable_session("main")
    zarr.create_array(session.store, name=ARRAY, shape=(grid * CHUNK, grid * CHUNK),
                      chunks=(CHUNK, CHUNK), dtype=DTYPE, compressors=None, filters=None,
                      fill_value=0, dimension_names=["y", "x"])
    rows_per_file = grid // files
    n = rows_per_file * grid
    offsets = np.arange(n, dtype=np.uint64) * np.uint64(CHUNK_BYTES)
    lengths = np.full(n, CHUNK_BYTES, dtype=np.uint64)
    t = time.perf_counter()
    for f, path in enumerate(sources):
        failed = session.store.set_virtual_refs_arr(
            ARRAY, (rows_per_file, grid), [path.as_uri()] * n, offsets, lengths,
            arr_offset=(f * rows_per_file, 0), checksum=last_modified(path))
        if failed:
            raise SystemExit(f"{len(failed)} refs into {path} were refused, e.g. {failed[:3]}")
    set_refs_s = time.perf_counter() - t
    t = time.perf_counter()
    snapshot_id = session.commit(f"{grid * grid:,} virtual refs into {files} files")
    commit_s = time.perf_counter() - t

    built = BenchRepo(str(directory), grid, files, prefix, snapshot_id, set_refs_s, commit_s,
                      tree_bytes(directory / "repo"))
    (directory / "built.json").write_text(json.dumps(asdict(built), indent=2) + "\n")
    if verbose:
        print(f"built {directory}: {built.num_chunks:,} virtual refs into {files} files")
        rows = [(f"writing {files} source files", f"{write_s:8.2f} s"),
                (f"set_virtual_refs_arr ({files} calls)", f"{set_refs_s:8.2f} s"),
                ("commit", f"{commit_s:8.2f} s"),
                ("repository size", f"{built.repo_bytes:,} bytes = "
                 f"{built.bytes_per_ref:.1f} bytes per ref")]
        for label, value in rows:
            print(f"  {label:<34} {value}")
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--grid", type=int, default=1000, help="chunks per dimension")
    parser.add_argument("--files", type=int, default=4, help="number of source files")
    parser.add_argument("--force", action="store_true", help="rebuild even if already built")
    args = parser.parse_args()
    build(args.directory, args.grid, args.files, force=args.force)


if __name__ == "__main__":
    main()
