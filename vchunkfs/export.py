"""Export one version of a repository as a plain Zarr store: a local directory or S3.

The files written are those a mount shows for the same version and
presentation (they come from the same presentation objects), so an export of
``v3`` is byte-identical to the mount's ``v3`` tree, and ``v2-decoded`` is a
Zarr v2 store for readers that know neither Icechunk nor codecs like shuffle.

Failure half-way is clear and resumable: ``DEST/.vchunkfs-export.json`` says
which snapshot and presentation is being exported and that the export is
incomplete, and the root metadata (``zarr.json``, ``.zgroup``, ``.zattrs``)
is written last, so a partial store does not open as a Zarr group. Running
the same export again skips the files already written with their full size
(a version's bytes never change) and finishes the rest. A complete export
has no marker left: it is a plain Zarr store.

``s3://bucket/prefix`` destinations behave the same, object for file: the
marker is ``prefix/.vchunkfs-export.json``, objects are written whole (a PUT
either lands or not, so no partial object is ever taken for a finished one),
and what is already there is learnt from one listing of the prefix. The
connection settings are a :class:`StorageOptions`, like a repository's
(endpoint, region, anonymous); credentials come from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vchunkfs.errors import (
    BackendError,
    NodeNotFoundError,
    NotFoundError,
    UsageError,
    VchunkfsError,
)
from vchunkfs.presentation.base import Presentation
from vchunkfs.repository.location import StorageOptions
from vchunkfs.repository.repo import Repo

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config

MARKER = ".vchunkfs-export.json"
ROOT_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")
PIECE = 16 << 20  # bytes read from the presentation at a time
CONCURRENCY = 16

Progress = Callable[[int, int, int], None]  # files done, files in all, bytes written


@dataclass(frozen=True)
class ExportResult:
    dest: str
    snapshot: str
    presentation: str
    files: int
    bytes: int
    skipped: int  # files already there from an earlier, interrupted run

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def list_files(pres: Presentation, top: str = "") -> list[tuple[str, int]]:
    """(path, size) of every file under ``top`` (a directory of the presentation)."""
    out: list[tuple[str, int]] = []
    pending = [top]
    while pending:
        d = pending.pop()
        for e in await pres.list_dir(d):
            path = f"{d}/{e.name}" if d else e.name
            if e.is_dir:
                pending.append(path)
            else:
                out.append((path, e.size))
    out.sort()
    return out


async def export(repo: Repo, version: str | None, dest: Destination | Path,
                 presentation: str = "v3", array: str | None = None,
                 progress: Progress | None = None) -> ExportResult:
    """Write the files of ``version`` as ``presentation`` under ``dest``."""
    if isinstance(dest, Path):
        dest = LocalDestination(dest)
    from vchunkfs.presentation.base import make_presentation

    v = await repo.resolve(version)
    view = await repo.view_of(v.snapshot_id)
    pres = make_presentation(presentation, view)
    files = await _selection(pres, array.strip("/") if array else None)
    marker = {"repository": repo.location.url, "snapshot": v.snapshot_id,
              "presentation": pres.name, "array": array or None, "complete": False}
    # "complete" stays False: the marker is removed once the export is complete
    await dest.prepare(marker)
    # root metadata last: a store cut short does not open as a Zarr group
    files.sort(key=lambda f: (f[0] in ROOT_METADATA, f[0]))
    done = skipped = written = 0
    total = len(files)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def copy(path: str, size: int) -> None:
        nonlocal done, skipped, written
        async with sem:
            if dest.size(path) == size:
                skipped += 1
            else:
                data = b"".join([await pres.read(path, off, min(PIECE, size - off))
                                 for off in range(0, size, PIECE)]) if size else b""
                if len(data) != size:
                    raise VchunkfsError(f"{path}: read {len(data)} bytes, expected {size}")
                await dest.write(path, data)
                written += size
        done += 1
        if progress:
            progress(done, total, written)

    body = [f for f in files if f[0] not in ROOT_METADATA]
    try:
        async with asyncio.TaskGroup() as tg:  # the first failure cancels the other copies
            for p, s in body:
                tg.create_task(copy(p, s))
    except BaseExceptionGroup as group:
        raise _first(group) from None
    for p, s in files[len(body):]:
        await copy(p, s)
    await dest.finish()  # complete: a plain Zarr store, nothing else
    return ExportResult(dest.url, v.snapshot_id, pres.name, total, written, skipped)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a group: a VchunkfsError if there is one."""
    flat: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        e = pending.pop(0)
        if isinstance(e, BaseExceptionGroup):
            pending.extend(e.exceptions)
        else:
            flat.append(e)
    return next((e for e in flat if isinstance(e, VchunkfsError)), flat[0])


async def _selection(pres: Presentation, array: str | None) -> list[tuple[str, int]]:
    if not array:
        return await list_files(pres)
    # (consolidated metadata would list the arrays left out: not copied)
    entry = await pres.stat(array)
    if entry is None or not entry.is_dir:
        raise NodeNotFoundError(f"no array or group {array!r} in this version")
    files = await list_files(pres, array)
    # the metadata of the groups above it, so that the store opens from its root
    parts = array.split("/")
    for i in range(len(parts)):
        d = "/".join(parts[:i])
        for e in await pres.list_dir(d):
            if not e.is_dir and e.name != ".zmetadata":
                files.append((f"{d}/{e.name}" if d else e.name, e.size))
    return files


def _same_export(old: dict[str, Any], marker: dict[str, Any]) -> bool:
    return {k: old.get(k) for k in marker if k != "complete"} == {
        k: v for k, v in marker.items() if k != "complete"}


def _another(where: str, old: dict[str, Any], empty: str) -> UsageError:
    return UsageError(f"{where} holds another export ({old.get('snapshot')}, "
                      f"{old.get('presentation')}); choose {empty}")


class Destination:
    """Where an export writes: files (or objects) by path, and the marker."""

    url: str
    marked = False  # the marker is written: an export is under way (or cut short) here

    async def prepare(self, marker: dict[str, Any]) -> None:
        """Refuse a destination that holds something else than this export, half done;
        then write the marker."""
        raise NotImplementedError

    def size(self, path: str) -> int | None:
        """The size of what is at ``path`` already, or None."""
        raise NotImplementedError

    async def write(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        """Remove the marker: the export is complete."""
        raise NotImplementedError


class LocalDestination(Destination):
    """A new or empty local directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = str(path)

    async def prepare(self, marker: dict[str, Any]) -> None:
        dest = self.path
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"{dest} exists and is not a directory")
        dest.mkdir(parents=True, exist_ok=True)
        previous = dest / MARKER
        if previous.exists():
            try:
                old = json.loads(previous.read_text())
            except (OSError, ValueError):
                old = {}
            if not _same_export(old, marker):
                raise _another(str(dest), old, "an empty directory")
        elif any(dest.iterdir()):
            raise UsageError(f"{dest} is not empty; export into a new or empty directory")
        _write(previous, json.dumps(marker, indent=2).encode())
        self.marked = True

    def size(self, path: str) -> int | None:
        target = self.path / path
        return target.stat().st_size if target.is_file() else None

    async def write(self, path: str, data: bytes) -> None:
        _write(self.path / path, data)  # on the loop: nothing is left running after a failure

    async def finish(self) -> None:
        (self.path / MARKER).unlink()


class ObjectDestination(Destination):
    """A prefix of an object store (``s3://bucket/prefix``) that holds nothing else."""

    def __init__(self, url: str, store: Any) -> None:
        self.url = url
        self.store = store
        self.sizes: dict[str, int] = {}

    async def prepare(self, marker: dict[str, Any]) -> None:
        import obstore

        with _backend(self.url):
            listed: dict[str, int] = {}
            async for batch in obstore.list(self.store):
                listed.update((m["path"], m["size"]) for m in batch)
            if MARKER in listed:
                try:
                    got = await obstore.get_async(self.store, MARKER)
                    old = json.loads(bytes(await got.bytes_async()))
                except ValueError:
                    old = {}
                if not isinstance(old, dict) or not _same_export(old, marker):
                    raise _another(self.url, old if isinstance(old, dict) else {},
                                   "an empty prefix")
            elif listed:
                raise UsageError(f"{self.url} is not empty ({len(listed)} objects); export "
                                 "into a new or empty prefix")
            await obstore.put_async(self.store, MARKER, json.dumps(marker, indent=2).encode())
        self.marked = True
        self.sizes = listed

    def size(self, path: str) -> int | None:
        return self.sizes.get(path)

    async def write(self, path: str, data: bytes) -> None:
        import obstore

        with _backend(f"{self.url}/{path}"):
            await obstore.put_async(self.store, path, data)

    async def finish(self) -> None:
        import obstore

        with _backend(self.url):
            await obstore.delete_async(self.store, MARKER)


@contextlib.contextmanager
def _backend(where: str) -> Iterator[None]:
    """obstore's errors as vchunkfs's: a missing bucket is 3, the rest backend failures (8)."""
    from obstore.exceptions import BaseError
    from obstore.exceptions import NotFoundError as ObjectNotFound

    try:
        yield
    except BaseError as e:
        text = str(e)
        code = re.search(r"<Code>([^<]*)</Code>", text)
        message = re.search(r"<Message>([^<]*)</Message>", text)
        status = re.search(r"status code: (\d{3}[^:<]*)", text)
        if code or status:  # the server's answer, not the whole request and XML document
            why = ": ".join(m.group(1).strip() for m in (status, code, message) if m)
        else:
            why = (text.strip().splitlines() or [type(e).__name__])[0]
        if code and code.group(1) == "NoSuchBucket":
            raise NotFoundError(f"{where}: the bucket does not exist ({why})") from e
        if isinstance(e, ObjectNotFound):
            raise NotFoundError(f"{where}: not found ({why})") from e
        raise BackendError(f"{where}: {why}") from e


def open_destination(text: str, options: StorageOptions | None = None) -> Destination:
    """A destination from the command line: a path, file:///path or s3://bucket/prefix."""
    if "://" not in text:
        return LocalDestination(Path(text))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"file URL {text!r} names a host; use file:///absolute/path")
        return LocalDestination(Path(parts.path))
    if scheme != "s3":
        raise UsageError(f"{text}: export writes to a local directory or s3://bucket/prefix")
    if not parts.netloc:
        raise UsageError(f"{text}: no bucket; use s3://bucket/prefix")
    if parts.query or parts.fragment:
        raise UsageError(f"{text} has a query or fragment; pass settings as options "
                         "(--dest-endpoint-url, --dest-region, ...)")
    prefix = parts.path.strip("/")
    url = f"s3://{parts.netloc}" + (f"/{prefix}" if prefix else "")
    return ObjectDestination(url, s3_store(parts.netloc, prefix, options or StorageOptions()))


def s3_store(bucket: str, prefix: str, opts: StorageOptions) -> Any:
    """An obstore S3 store with a repository's kind of settings; credentials from the
    environment (``AWS_ACCESS_KEY_ID`` ..., or the instance's role)."""
    from obstore.store import S3Store

    config: S3Config = {}
    client: ClientConfig = {}
    if opts.region:
        config["region"] = opts.region
    if opts.endpoint_url:
        config["endpoint"] = opts.endpoint_url
        if opts.endpoint_url.startswith("http://"):
            client["allow_http"] = True
    path_style = opts.force_path_style if opts.force_path_style is not None else bool(
        opts.endpoint_url)
    if path_style:
        config["virtual_hosted_style_request"] = False
    if opts.anonymous:
        config["skip_signature"] = True
    return S3Store(bucket, prefix=prefix or None, config=config or None,
                   client_options=client or None)


def _write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
