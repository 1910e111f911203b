"""The contract between the filesystem and a presentation of one snapshot."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from vchunkfs.errors import UsageError
from vchunkfs.presentation.converted import ConvertedPresentation
from vchunkfs.presentation.names import NAMES, canonical_presentations
from vchunkfs.repository.snapshot import Entry, SnapshotView, Unknown


class Presentation(Protocol):
    """Files of one snapshot. Coroutines run on the bridge's asyncio loop.

    Contract:

    * ``stat(path)`` is None exactly when ``path`` names nothing; sizes are exact:
      ``read(path)`` of a file returns ``size`` bytes.
    * ``list_dir(path)`` raises ``NotFoundError`` unless ``path`` is a directory.
    * a file's bytes never change for a given snapshot and path, so callers may
      cache them under ``(view.snapshot_id, name, path)``.
    * errors are :class:`vchunkfs.errors.VchunkfsError` subclasses.
    """

    name: str
    view: SnapshotView

    async def stat(self, path: str) -> Entry | None: ...

    def stat_known(self, path: str) -> Entry | Unknown | None:
        """``stat`` without I/O, from any thread, or ``UNKNOWN`` (then call ``stat``)."""
        ...

    def following(self, path: str, n: int, backward: bool = False) -> list[tuple[str, int]]:
        """(path, size) of up to ``n`` files a reader of ``path`` is likely to read
        next (the array's next stored chunks; ``backward``: the previous ones, the
        nearest first), without I/O; ``[]`` if unknown."""
        ...

    async def list_dir(self, path: str) -> list[Entry]: ...

    async def read(self, path: str, offset: int, length: int) -> bytes: ...


class ZarrV3Presentation:
    """The snapshot as stored: Zarr v3 metadata documents and raw chunk bytes."""

    name = "v3"

    def __init__(self, view: SnapshotView) -> None:
        self.view = view

    async def stat(self, path: str) -> Entry | None:
        return await self.view.stat(path)

    def stat_known(self, path: str) -> Entry | Unknown | None:
        return self.view.stat_known(path)

    def following(self, path: str, n: int, backward: bool = False) -> list[tuple[str, int]]:
        return self.view.following_chunks(path, n, backward)

    async def list_dir(self, path: str) -> list[Entry]:
        return await self.view.list_dir(path)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        return await self.view.read(path, offset, length)


def _converted(name: str, zarr_format: int, decoded: bool) -> Callable[[SnapshotView],
                                                                       Presentation]:
    def make(view: SnapshotView) -> Presentation:
        return ConvertedPresentation(view, name, zarr_format, decoded)
    return make


_PRESENTATIONS: dict[str, Callable[[SnapshotView], Presentation]] = {
    "v3": ZarrV3Presentation,
    "v2": _converted("v2", 2, False),
    "v2-decoded": _converted("v2-decoded", 2, True),
    "v3-decoded": _converted("v3-decoded", 3, True),
}
assert tuple(_PRESENTATIONS) == NAMES


def make_presentation(name: str, view: SnapshotView) -> Presentation:
    """A presentation of ``view`` by canonical name or alias; raises UsageError."""
    names = canonical_presentations(name)
    if len(names) != 1:
        raise UsageError(f"{name!r} names {len(names)} presentations; one is needed here")
    return _PRESENTATIONS[names[0]](view)
