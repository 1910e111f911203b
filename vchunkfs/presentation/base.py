"""The contract between the filesystem and a presentation of one snapshot."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from vchunkfs.errors import UsageError
from vchunkfs.presentation.converted import ConvertedPresentation
from vchunkfs.presentation.names import NAMES, canonical_presentations
from vchunkfs.repository.chunkgrid import ChunkGrid, Coords
from vchunkfs.repository.snapshot import (
    PREPARED_ARRAYS,
    ArrayWalk,
    Entry,
    SnapshotView,
    Unknown,
)


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
        next, without I/O: the array's next stored chunks, then the first ones of the
        arrays chunked like it that follow it in listing order (``backward``: the
        array's previous chunks, the nearest first); fewer where knowing more needs
        I/O, ``[]`` if unknown.
        Safe to call from any thread."""
        ...

    async def prepare_following(self, path: str, n: int) -> None:
        """Read what ``following(path, n)`` needs to look further (the next array's
        metadata and chunk index), so that a later call can; cheap when it has it."""
        ...

    async def list_dir(self, path: str) -> list[Entry]: ...

    async def read(self, path: str, offset: int, length: int) -> bytes: ...

    def local_read(self, path: str, offset: int, length: int) -> Callable[[], bytes] | None:
        """``read(path, offset, length)`` as a blocking call for a worker thread, with
        the same checks and bytes, when that needs neither the bridge nor any I/O but
        the read itself (a local virtual chunk with a source record); else None.
        Safe to call from any thread."""
        ...


class ZarrV3Presentation:
    """The snapshot as stored: Zarr v3 metadata documents and raw chunk bytes."""

    name = "v3"

    def __init__(self, view: SnapshotView) -> None:
        self.view = view
        self._walk = ArrayWalk(view.nodes)

    async def stat(self, path: str) -> Entry | None:
        return await self.view.stat(path)

    def stat_known(self, path: str) -> Entry | Unknown | None:
        return self.view.stat_known(path)

    def following(self, path: str, n: int, backward: bool = False) -> list[tuple[str, int]]:
        return [(SnapshotView.chunk_key(array, grid, coords), size)
                for array, grid, coords, size in self._following(path, n, backward)[0]]

    async def prepare_following(self, path: str, n: int) -> None:
        missing = self._following(path, n)[1]
        for _ in range(PREPARED_ARRAYS):  # arrays chunked otherwise between are passed
            if missing is None:
                return
            await self.view.hold_index(missing, _grid_shape(self.view, path))
            missing, before = self._following(path, n)[1], missing
            if missing == before:
                return  # too large to index whole: its stats will find its chunks

    def _following(self, path: str, n: int, backward: bool = False
                   ) -> tuple[list[tuple[str, ChunkGrid, Coords, int]], str | None]:
        found = self.view.locate(path)
        if found is None or found[0].kind != "array":
            return [], None
        node, rest = found
        grid = self.view.grid_known(node.path)
        parsed = grid.parse(rest) if grid is not None else None
        if parsed is None or not parsed.is_chunk:
            return [], None
        return self.view.following(node.path, parsed.coords, n, backward, self._walk,
                                   self.view.grid_known)

    async def list_dir(self, path: str) -> list[Entry]:
        return await self.view.list_dir(path)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        return await self.view.read(path, offset, length)

    def local_read(self, path: str, offset: int, length: int) -> Callable[[], bytes] | None:
        return self.view.local_read_plan(path, offset, length)


def _grid_shape(view: SnapshotView, path: str) -> Coords | None:
    """The stored grid shape of the array ``path`` lies in, if known (no I/O)."""
    found = view.locate(path)
    grid = view.grid_known(found[0].path) if found is not None else None
    return grid.grid_shape if grid is not None else None


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
