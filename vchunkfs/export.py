"""Export one version of a repository as a plain Zarr store on the local disk.

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
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vchunkfs.errors import UsageError, VchunkfsError
from vchunkfs.presentation.base import Presentation
from vchunkfs.repository.repo import Repo

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


async def export(repo: Repo, version: str | None, dest: Path, presentation: str = "v3",
                 array: str | None = None, progress: Progress | None = None) -> ExportResult:
    """Write the files of ``version`` as ``presentation`` under ``dest``."""
    from vchunkfs.presentation.base import make_presentation

    v = await repo.resolve(version)
    view = await repo.view_of(v.snapshot_id)
    pres = make_presentation(presentation, view)
    files = await _selection(pres, array.strip("/") if array else None)
    marker = {"repository": repo.location.url, "snapshot": v.snapshot_id,
              "presentation": pres.name, "array": array or None, "complete": False}
    # "complete" stays False: the marker is removed once the export is complete
    _prepare(dest, marker)
    # root metadata last: a store cut short does not open as a Zarr group
    files.sort(key=lambda f: (f[0] in ROOT_METADATA, f[0]))
    done = skipped = written = 0
    total = len(files)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def copy(path: str, size: int) -> None:
        nonlocal done, skipped, written
        target = dest / path
        async with sem:
            if target.is_file() and target.stat().st_size == size:
                skipped += 1
            else:
                data = b"".join([await pres.read(path, off, min(PIECE, size - off))
                                 for off in range(0, size, PIECE)]) if size else b""
                if len(data) != size:
                    raise VchunkfsError(f"{path}: read {len(data)} bytes, expected {size}")
                _write(target, data)  # on the loop: nothing is left running after a failure
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
    (dest / MARKER).unlink()  # complete: a plain Zarr store, nothing else
    return ExportResult(str(dest), v.snapshot_id, pres.name, total, written, skipped)


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
        raise UsageError(f"no array or group {array!r} in this version")
    files = await list_files(pres, array)
    # the metadata of the groups above it, so that the store opens from its root
    parts = array.split("/")
    for i in range(len(parts)):
        d = "/".join(parts[:i])
        for e in await pres.list_dir(d):
            if not e.is_dir and e.name != ".zmetadata":
                files.append((f"{d}/{e.name}" if d else e.name, e.size))
    return files


def _prepare(dest: Path, marker: dict[str, Any]) -> None:
    """Refuse a destination that holds something else than this export, half done."""
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a directory")
    dest.mkdir(parents=True, exist_ok=True)
    previous = dest / MARKER
    if previous.exists():
        try:
            old = json.loads(previous.read_text())
        except (OSError, ValueError):
            old = {}
        same = {k: old.get(k) for k in marker if k != "complete"} == {
            k: v for k, v in marker.items() if k != "complete"}
        if not same:
            raise UsageError(f"{dest} holds another export ({old.get('snapshot')}, "
                             f"{old.get('presentation')}); choose an empty directory")
    elif any(dest.iterdir()):
        raise UsageError(f"{dest} is not empty; export into a new or empty directory")
    _write(previous, json.dumps(marker, indent=2).encode())


def _write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
