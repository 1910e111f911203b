"""A read-only view of one snapshot: its node tree, zarr keys, sizes and bytes.

This is what the filesystem presents. Every method is a coroutine for the
bridge's asyncio loop (see :mod:`vchunkfs.bridge`); the view's caches are
touched only from that loop's thread, so they need no locks.

Memory stays bounded whatever the repository's size:

* The node tree and the ``zarr.json`` documents are kept whole (one entry
  per group or array, never per chunk).
* A chunk's size comes from icechunk's ``getsize`` (one manifest lookup, no
  bytes fetched) and is remembered in an LRU of bounded entries.
* Listing the last level of chunk directories needs to know which chunks
  exist. For an array of at most ``index_max_chunks`` chunks the view builds
  a compact index of the whole array once (28 bytes a chunk, from
  ``array_chunk_iterator``) and keeps it in an LRU bounded in bytes; for a
  bigger array it asks ``getsize`` for each candidate of that one row, so an
  ``ls`` never scans the array (icechunk's own ``list_dir`` does).
* Chunk reads go through icechunk's ``get``, so container authorization and
  the changed-source check (ETag / last-modified recorded with the ref) are
  never bypassed.

Directory semantics: every chunk directory inside the grid exists (possibly
empty); a chunk *file* exists only where the snapshot stores a chunk, so
readers apply the fill value for the rest.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import icechunk as ic
import numpy as np
from cachetools import LRUCache
from zarr.abc.store import OffsetByteRequest, RangeByteRequest
from zarr.core.buffer import default_buffer_prototype

from vchunkfs.errors import (
    BackendError,
    BackendTimeoutError,
    NodeNotFoundError,
    NotFoundError,
    SourceChangedError,
    SourceMissingError,
    VchunkfsError,
)
from vchunkfs.repository.authorization import raise_if_unauthorized
from vchunkfs.repository.chunkgrid import ChunkGrid, Coords, listing_key
from vchunkfs.repository.names import visible_nodes
from vchunkfs.repository.sources import LocalSources, SourceRecord

METADATA_KEY = "zarr.json"


class Unknown:
    """What :meth:`SnapshotView.stat_known` answers when it would need I/O."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = Unknown()
_PROBE_BATCH = 512
# chunk kinds as array_chunk_iterator reports them
_NATIVE, _VIRTUAL, _INLINE = 1, 2, 3
_MISSING = -1
PINNED_INDEX_CHUNKS = 4096
# arrays whose index one Presentation.prepare_following reads at most, to get past
# small ones (coordinates) between two large ones in listing order
PREPARED_ARRAYS = 16


@dataclass(frozen=True)
class Node:
    """A group or array of the snapshot. ``path`` is "" for the root."""

    path: str
    kind: str  # "group" or "array"
    children: tuple[str, ...] = ()
    stored: bool = True  # False for the root of an empty repository (no zarr.json yet)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class ArrayWalk:
    """The arrays of a tree in the order a depth-first walk of its listings visits
    them, each group's children in listing order: the order in which ``find``,
    ``cp -r`` and ``tar`` read them. Built once per tree (trees never change)."""

    def __init__(self, nodes: Mapping[str, Node]) -> None:
        order: list[str] = []
        pending = [""]
        while pending:
            node = nodes.get(pending.pop())
            if node is None:
                continue
            if node.kind == "array":
                order.append(node.path)
                continue
            prefix = f"{node.path}/" if node.path else ""
            # reversed onto the stack, so the first child in listing order comes out first
            pending += [prefix + c for c in sorted(node.children, key=listing_key,
                                                   reverse=True)]
        self.order = tuple(order)
        self._position = {a: i for i, a in enumerate(order)}

    def after(self, array: str) -> Iterator[str]:
        """The arrays after ``array``, nearest first, then, wrapping around, those
        before it from the first (none if ``array`` is not one). The walk is a circle
        because readers do not all start at the first array: a reader of a dataset's
        variables in the order the source file declares them (``sst, anom, err, ice``
        where listings give ``anom, err, ice, sst``) goes on from the last array to
        the first, and a window then reaches the next variable before the reader
        does, as it does between any other two arrays."""
        i = self._position.get(array)
        if i is not None:
            yield from itertools.islice(self.order, i + 1, None)
            yield from itertools.islice(self.order, 0, i)


@dataclass(frozen=True)
class Entry:
    """One name in the view: a directory, or a file of exact ``size``."""

    name: str
    is_dir: bool
    size: int = 0


@dataclass(frozen=True)
class ResolvedKey:
    """What a zarr key of the view names."""

    node: Node
    kind: str  # "node" (a group or array directory), "metadata", "chunk_dir", "chunk"
    coords: Coords = ()


@dataclass
class ChunkStats:
    """Counts of one array's stored chunks, by kind, and the containers they use."""

    grid_chunks: int
    stored: int = 0
    virtual: int = 0
    native: int = 0
    inline: int = 0
    bytes_total: int = 0
    bytes_virtual: int = 0
    containers: dict[str, int] = field(default_factory=dict)  # url prefix -> chunk count
    outside_containers: int = 0


class ChunkIndex:
    """Which chunks of one array exist, and their sizes, sorted by linear index.

    With ``offsets`` and ``locations`` it also says where each virtual chunk lives
    (local reads, and errors that name the source): ``location_ids`` index
    ``locations``, -1 for a native or inline chunk. 28 bytes a chunk with them.
    """

    def __init__(self, linear: np.ndarray[Any, np.dtype[np.int64]],
                 lengths: np.ndarray[Any, np.dtype[np.uint64]],
                 offsets: np.ndarray[Any, np.dtype[np.uint64]] | None = None,
                 location_ids: np.ndarray[Any, np.dtype[np.int32]] | None = None,
                 locations: list[str] | None = None) -> None:
        order = np.argsort(linear, kind="stable")
        self.linear = linear[order]
        self.lengths = lengths[order]
        self.offsets = offsets[order] if offsets is not None else None
        self.location_ids = location_ids[order] if location_ids is not None else None
        self.locations = locations

    def ref(self, linear: int) -> tuple[str, int, int] | None:
        """(location, offset, length) of a stored chunk; location "" unless virtual.
        None when the chunk is not stored. Needs an index built with refs."""
        assert self.offsets is not None and self.location_ids is not None
        assert self.locations is not None
        i = int(np.searchsorted(self.linear, linear))
        if i >= len(self.linear) or int(self.linear[i]) != linear:
            return None
        loc = int(self.location_ids[i])
        return (self.locations[loc] if loc >= 0 else "", int(self.offsets[i]),
                int(self.lengths[i]))

    @property
    def nbytes(self) -> int:
        extra = (self.offsets.nbytes + self.location_ids.nbytes
                 if self.offsets is not None and self.location_ids is not None else 0)
        return int(self.linear.nbytes + self.lengths.nbytes + extra)

    def size(self, linear: int) -> int | None:
        i = int(np.searchsorted(self.linear, linear))
        if i < len(self.linear) and int(self.linear[i]) == linear:
            return int(self.lengths[i])
        return None

    def after(self, linear: int, n: int) -> list[tuple[int, int]]:
        """(linear index, size) of the first ``n`` stored chunks after ``linear``."""
        lo = int(self.linear.searchsorted(linear, side="right"))
        # tolist: plain ints at once (a numpy scalar per element costs ~10x more)
        return list(zip(self.linear[lo:lo + n].tolist(), self.lengths[lo:lo + n].tolist(),
                        strict=True))

    def before(self, linear: int, n: int) -> list[tuple[int, int]]:
        """(linear index, size) of the last ``n`` stored chunks before ``linear``, the
        nearest first."""
        hi = int(self.linear.searchsorted(linear, side="left"))
        lo = max(0, hi - n)
        return list(zip(self.linear[lo:hi][::-1].tolist(), self.lengths[lo:hi][::-1].tolist(),
                        strict=True))

    def range(self, start: int, stop: int) -> list[tuple[int, int]]:
        """(linear index, size) of every stored chunk with ``start <= linear < stop``."""
        lo = int(np.searchsorted(self.linear, start))
        hi = int(np.searchsorted(self.linear, stop))
        return [(int(a), int(b)) for a, b in zip(self.linear[lo:hi], self.lengths[lo:hi],
                                                  strict=True)]


@dataclass
class ViewCaches:
    """Caches shared by the views of one repository, bounded whatever its size."""

    size_entries: int = 100_000  # about 250 bytes each (measured), so about 25 MB
    index_bytes: int = 256 * 1024 * 1024
    index_max_chunks: int = 100_000
    metadata_entries: int = 10_000
    # deadline (seconds) of a whole-array index build, which runs on even when the reader
    # that started it gave up (the mount's timeout; None: none)
    call_timeout: float | None = None

    def __post_init__(self) -> None:
        # chunk size by (snapshot, array, linear index); MISSING for a chunk not stored
        self.sizes: LRUCache[tuple[str, str, int], int] = LRUCache(self.size_entries)
        self.metadata: LRUCache[tuple[str, str], bytes] = LRUCache(self.metadata_entries)
        self.indexes: LRUCache[tuple[str, str], ChunkIndex] = LRUCache(
            self.index_bytes, getsizeof=lambda ix: max(ix.nbytes, 1)
        )


class SnapshotView:
    """Zarr keys of one snapshot. Create with :meth:`open` on the bridge's loop."""

    def __init__(self, repo: ic.Repository, snapshot_id: str, session: ic.Session,
                 nodes: dict[str, Node], caches: ViewCaches, local: LocalSources | None = None,
                 records_snapshot: str | None = None) -> None:
        self.repo = repo
        self.snapshot_id = snapshot_id
        # local virtual chunks are read through ``local`` (containment and the recorded
        # source check, see vchunkfs.repository.sources); None when the reader authorized
        # no file:// prefix. Source records are those of ``records_snapshot``'s ancestry.
        self.local = local
        self.records_snapshot = records_snapshot or snapshot_id
        # the source records, once a local read fetched them (for local_read_plan, which
        # runs in other threads: one assignment, never changed after)
        self._records: Mapping[str, SourceRecord] | None = None
        self.session = session
        self.store = session.store
        self.nodes = nodes
        self.caches = caches
        # plain dicts that only ever gain keys: read from other threads by stat_known
        self._grids: dict[str, ChunkGrid] = {}
        self._metadata_sizes: dict[str, int] = {}
        # whole-array indexes of arrays with at most PINNED_INDEX_CHUNKS chunks (28 bytes
        # a chunk): built on the first stat, they answer every later one without I/O
        self._pinned_indexes: dict[str, ChunkIndex] = {}
        # every index built and still held (by the pinned ones or the bounded index
        # cache), readable from any thread: the prefetcher follows an array with it
        # whoever built it (a listing as well as a stat)
        self._held_indexes: weakref.WeakValueDictionary[str, ChunkIndex] = \
            weakref.WeakValueDictionary()
        self._index_builds: dict[str, asyncio.Future[ChunkIndex]] = {}

    @classmethod
    async def open(cls, repo: ic.Repository, snapshot_id: str,
                   caches: ViewCaches | None = None,
                   local: LocalSources | None = None) -> SnapshotView:
        session = await repo.readonly_session_async(snapshot_id=snapshot_id)
        info = await repo.inspect_snapshot_async(snapshot_id)
        return cls(repo, snapshot_id, session, node_tree(info["nodes"], snapshot_id),
                   caches or ViewCaches(), local)

    # -- nodes and metadata -------------------------------------------------

    def node(self, path: str) -> Node:
        node = self.nodes.get(path.strip("/"))
        if node is None:
            raise NodeNotFoundError(f"no group or array {path.strip('/') or '/'!r} in snapshot "
                                    f"{self.snapshot_id}")
        return node

    async def metadata(self, path: str) -> bytes:
        """The node's ``zarr.json`` document, exactly as stored."""
        node = self.node(path)
        doc = self.caches.metadata.get((self.snapshot_id, node.path))
        if doc is None:
            key = f"{node.path}/{METADATA_KEY}" if node.path else METADATA_KEY
            buf = await self._call(key, lambda: self.store.get(key, default_buffer_prototype()))
            if buf is None:  # the node tree has this node: its document cannot be absent
                raise BackendError(f"{key}: icechunk has no document for a node of snapshot "
                                   f"{self.snapshot_id}; the repository is inconsistent")
            doc = buf.to_bytes()
            self.caches.metadata[(self.snapshot_id, node.path)] = doc
            self._metadata_sizes[node.path] = len(doc)
        return doc

    async def metadata_json(self, path: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await self.metadata(path))
        return doc

    async def grid(self, array_path: str) -> ChunkGrid:
        grid = self._grids.get(array_path)
        if grid is None:
            try:
                grid = ChunkGrid.from_metadata(await self.metadata_json(array_path))
            except (KeyError, ValueError) as e:
                raise BackendError(f"array {array_path!r}: unsupported metadata: {e}") from e
            self._grids[array_path] = grid
        return grid

    # -- keys ---------------------------------------------------------------

    async def resolve(self, key: str) -> ResolvedKey | None:
        """What ``key`` (a path relative to the root, no leading '/') names, if anything."""
        found = self.locate(key)
        if found is None:
            return None
        node, rest = found
        if not rest:
            return ResolvedKey(node, "node")
        if rest == METADATA_KEY:
            return ResolvedKey(node, "metadata") if node.stored else None
        if node.kind != "array":
            return None
        parsed = (await self.grid(node.path)).parse(rest)
        if parsed is None:
            return None
        return ResolvedKey(node, "chunk" if parsed.is_chunk else "chunk_dir", parsed.coords)

    def locate(self, key: str, nodes: dict[str, Node] | None = None) -> tuple[Node, str] | None:
        """The deepest group or array on the way to ``key``, and the rest of the key below
        it ("" for the node itself); None if not even the root exists. ``nodes``: a
        presentation's subset of the tree instead of the whole."""
        nodes = self.nodes if nodes is None else nodes
        parts = key.strip("/").split("/") if key.strip("/") else []
        for i in range(len(parts), -1, -1):
            node = nodes.get("/".join(parts[:i]))
            if node is not None:
                return node, "/".join(parts[i:])
        return None

    def stat_known(self, key: str) -> Entry | Unknown | None:
        """What :meth:`stat` would answer, when it needs no I/O; else ``UNKNOWN``.

        Safe to call from any thread: it reads only the node tree (never changed
        after open) and dicts that only gain keys, never the LRU caches.
        """
        found = self.locate(key)
        if found is None:
            return None
        node, rest = found
        name = key.strip("/").rsplit("/", 1)[-1]
        if not rest:
            return Entry(name, True)
        if rest == METADATA_KEY:
            size = self._metadata_sizes.get(node.path)
            if not node.stored:
                return None
            return UNKNOWN if size is None else Entry(name, False, size)
        if node.kind != "array":
            return None
        grid = self._grids.get(node.path)
        if grid is None:
            return UNKNOWN
        parsed = grid.parse(rest)
        if parsed is None:
            return None
        if not parsed.is_chunk:
            return Entry(name, True)
        index = self._pinned_indexes.get(node.path)
        if index is None:
            return UNKNOWN
        size = index.size(grid.linear(parsed.coords))
        return None if size is None else Entry(name, False, size)

    def grid_known(self, array: str) -> ChunkGrid | None:
        """The stored grid of ``array`` if it was read already, else None (no I/O;
        thread-safe)."""
        return self._grids.get(array)

    def following(self, array: str, coords: Coords, n: int, backward: bool, walk: ArrayWalk,
                  grid_of: Callable[[str], ChunkGrid | None]
                  ) -> tuple[list[tuple[str, ChunkGrid, Coords, int]], str | None]:
        """The next ``n`` stored chunks after ``coords`` in ``array`` (``backward``:
        before it, nearest first) as (array, grid, coords, size): forward, where
        ``array`` ends first, the arrays after it in ``walk`` that are chunked like it
        (the same grid shape: the variables of one dataset, not its coordinates) follow,
        in the order listings give (as ``find`` and ``cp -r`` go; after the last array
        the first, round the circle), from their first chunk. ``grid`` is
        ``grid_of(array)``: the grid of the presentation asking, whose chunk keys it
        makes. The list stops short at the first array whose chunks
        need I/O to know (no grid read yet; or chunked alike with no index held, or
        ``grid_of`` None: the presentation has not built its form of it); that array is
        the second item, else None.

        Thread-safe, like :meth:`stat_known`: it reads only dicts that only gain keys.
        """
        out: list[tuple[str, ChunkGrid, Coords, int]] = []
        own = self._grids.get(array)
        following = (array,) if backward else itertools.chain((array,), walk.after(array))
        for name in following:
            if len(out) >= n:
                break
            stored = self._grids.get(name)
            if stored is not None and own is not None and stored.grid_shape != own.grid_shape:
                continue  # chunked otherwise: a coordinate or a static field, passed over
            shown = grid_of(name)
            index = self._pinned_indexes.get(name) or self._held_indexes.get(name)
            if stored is None or shown is None or index is None:
                return out, name
            if name == array:
                lin = stored.linear(coords)
                near = index.before(lin, n) if backward else index.after(lin, n)
            else:
                near = index.after(-1, n - len(out))
            out += [(name, shown, _unravel(lin, stored.grid_shape), size) for lin, size in near]
        return out, None

    async def hold_index(self, array: str, like: Coords | None = None) -> bool:
        """Read the grid of ``array`` and, if its grid shape is ``like`` (or ``like`` is
        None), build and hold its chunk index when it is small enough to hold whole (as
        its first stat does), so that :meth:`following` can look into it without I/O.
        True if it is chunked like that (a larger array's chunks are found by stats)."""
        grid = await self.grid(array)
        if like is not None and grid.grid_shape != like:
            return False
        if array not in self._pinned_indexes:
            await self._pin_small_index(array, grid)
        return True

    async def _pin_small_index(self, array: str, grid: ChunkGrid) -> ChunkIndex | None:
        """The index of a small array, built once and pinned; None for a larger one."""
        if grid.num_chunks > min(PINNED_INDEX_CHUNKS, self.caches.index_max_chunks):
            return None
        # one pass over a small array answers every stat of it from now on
        index = await self._index_if_small(array, grid, force=True)
        if index is not None:
            self._pinned_indexes[array] = index
        return index

    async def stat(self, key: str) -> Entry | None:
        """The entry ``key`` names, with its exact size, or None if there is none."""
        r = await self.resolve(key)
        name = key.strip("/").rsplit("/", 1)[-1]
        if r is None:
            return None
        if r.kind in ("node", "chunk_dir"):
            return Entry(name, True)
        if r.kind == "metadata":
            return Entry(name, False, len(await self.metadata(r.node.path)))
        size = await self.chunk_size(r.node.path, r.coords)
        return None if size is None else Entry(name, False, size)

    async def list_dir(self, key: str) -> list[Entry]:
        """The entries of directory ``key``: other names by name, then chunk names in
        array order (:func:`listing_key`)."""
        r = await self.resolve(key)
        if r is None or r.kind not in ("node", "chunk_dir"):
            raise NotFoundError(f"no directory {key.strip('/') or '/'!r} in snapshot "
                                f"{self.snapshot_id}")
        node = r.node
        entries = [Entry(METADATA_KEY, False, len(await self.metadata(node.path)))] \
            if r.kind == "node" and node.stored else []
        if node.kind == "group":
            entries += [Entry(c, True) for c in node.children]
        else:
            grid = await self.grid(node.path)
            if r.kind == "node" and grid.top_dir():
                entries.append(Entry(grid.top_dir() or "", True))
            elif r.kind == "node" and grid.flat:
                entries += [Entry(grid.key(c), False, s)
                            for c, s in await self.stored_chunks(node.path, ())]
            else:
                entries += await self._list_chunk_dir(node.path, grid, r.coords)
        return sorted(entries, key=lambda e: listing_key(e.name))

    async def _list_chunk_dir(self, array: str, grid: ChunkGrid, lead: Coords) -> list[Entry]:
        level = len(lead)
        if level < grid.ndim - 1:
            return [Entry(str(i), True) for i in range(grid.grid_shape[level])]
        return [Entry(str(c[-1]), False, s) for c, s in await self.stored_chunks(array, lead)]

    async def stored_chunks(self, array: str, lead: Coords) -> list[tuple[Coords, int]]:
        """(coords, size) of the stored chunks whose leading coordinates are ``lead``.

        ``lead`` is either all but the last coordinate (one row) or ``()`` for
        the whole array of a flat layout.
        """
        grid = await self.grid(array)
        tail = grid.grid_shape[len(lead):]
        count = int(np.prod(tail)) if tail else 1
        start = grid.linear(lead + (0,) * len(tail))
        index = await self._index_if_small(array, grid, force=not lead and count > 1)
        if index is not None:
            rows = index.range(start, start + count)
            return [(_unravel(lin, grid.grid_shape), size) for lin, size in rows]
        candidates = ([(*lead, i) for i in range(grid.grid_shape[-1])] if lead or grid.ndim
                      else [()])
        sizes: list[int | None] = []
        for b in range(0, len(candidates), _PROBE_BATCH):
            batch = candidates[b:b + _PROBE_BATCH]
            sizes += await asyncio.gather(*(self.chunk_size(array, c) for c in batch))
        return [(c, s) for c, s in zip(candidates, sizes, strict=True) if s is not None]

    # -- chunks -------------------------------------------------------------

    async def chunk_size(self, array: str, coords: Coords) -> int | None:
        """Exact stored size of a chunk, or None when the snapshot stores none there."""
        grid = await self.grid(array)
        lin = grid.linear(coords)
        cache_key = (self.snapshot_id, array, lin)
        size = self.caches.sizes.get(cache_key)
        if size is not None:
            return None if size == _MISSING else size
        index = self._pinned_indexes.get(array) or self.caches.indexes.get(
            (self.snapshot_id, array))
        if index is None:
            index = await self._pin_small_index(array, grid)
        if index is not None:
            return index.size(lin)
        key = self.chunk_key(array, grid, coords)
        size = await self._call(key, lambda: self.store.getsize(key))
        if size == 0 and not await self._call(key, lambda: self.store.exists(key)):
            size = _MISSING  # icechunk's getsize answers 0 for a chunk that is not stored
        self.caches.sizes[cache_key] = size
        return None if size == _MISSING else size

    @staticmethod
    def chunk_key(array: str, grid: ChunkGrid, coords: Coords) -> str:
        rel = grid.key(coords)
        return f"{array}/{rel}" if array else rel

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of the file ``key`` (a metadata document or a chunk), whole or a range."""
        r = await self.resolve(key)
        if r is None or r.kind in ("node", "chunk_dir"):
            raise NotFoundError(f"no file {key.strip('/')!r} in snapshot {self.snapshot_id}")
        if r.kind == "metadata":
            doc = await self.metadata(r.node.path)
            return doc[offset:] if length is None else doc[offset:offset + length]
        return await self.read_chunk(r.node.path, r.coords, offset, length)

    async def read_chunk(self, array: str, coords: Coords, offset: int = 0,
                         length: int | None = None) -> bytes:
        """Stored bytes of one chunk (or ``length`` of them from ``offset``), fetched
        through icechunk so that authorization and the changed-source check hold; a
        local virtual chunk is read through :attr:`local` (contained, checked)."""
        grid = await self.grid(array)
        key = self.chunk_key(array, grid, coords)
        if length is not None:  # a range at or past the end is short, as for any file
            size = await self.chunk_size(array, coords)  # (icechunk refuses such ranges)
            if size is not None:
                offset = min(offset, size)
                length = max(0, min(length, size - offset))
                if length == 0:
                    return b""
        if self.local is not None:
            index = await self._index_if_small(array, grid, force=True)
        else:  # an index already built names the source in errors; never build one here
            index = self._pinned_indexes.get(array) or self.caches.indexes.get(
                (self.snapshot_id, array))
        ref = index.ref(grid.linear(coords)) if index is not None else None
        if self.local is not None:
            if ref is None:
                raise NotFoundError(f"chunk {key} is not stored in snapshot {self.snapshot_id}")
            root = self.local.root(ref[0]) if ref[0].startswith("file://") else None
            if root is not None:
                return await self._read_local(key, ref, root, offset, length)
        try:
            return await self._icechunk_get(key, offset, length)
        except (SourceMissingError, BackendError) as e:
            if ref is None or not ref[0] or ref[0] in str(e):
                raise
            raise type(e)(f"{e} (source {ref[0]})") from e

    async def _icechunk_get(self, key: str, offset: int, length: int | None) -> bytes:
        byte_range = None
        if offset or length is not None:
            end = offset + length if length is not None else None
            byte_range = (RangeByteRequest(offset, end) if end is not None
                          else OffsetByteRequest(offset))
        buf = await self._call(key, lambda: self.store.get(
            key, default_buffer_prototype(), byte_range=byte_range))
        if buf is None:  # only stored chunks are files: icechunk contradicts its own index
            raise BackendError(f"chunk {key}: icechunk finds no chunk where snapshot "
                               f"{self.snapshot_id} listed one; the repository is inconsistent")
        return buf.to_bytes()

    def local_read_plan(self, key: str, offset: int, length: int) -> Callable[[], bytes] | None:
        """The read of chunk ``key`` that :meth:`read` would make, as a blocking call
        for a worker thread, when it needs nothing else: a virtual chunk below an
        authorized ``file://`` prefix whose source has a record, with the array's index
        held and the records read. The call does the same containment and
        changed-source checks (:meth:`LocalSources.read`). None otherwise (then
        :meth:`read`). Thread-safe, like :meth:`stat_known`: no I/O, no icechunk."""
        local, records = self.local, self._records
        found = self.locate(key) if local is not None and records is not None else None
        if found is None or found[0].kind != "array":
            return None
        node, rest = found
        grid = self._grids.get(node.path)
        parsed = grid.parse(rest) if grid is not None else None
        index = self._pinned_indexes.get(node.path) or self._held_indexes.get(node.path)
        if grid is None or parsed is None or not parsed.is_chunk or index is None:
            return None
        ref = index.ref(grid.linear(parsed.coords))
        if local is None or records is None or ref is None or not ref[0].startswith("file://"):
            return None
        url, start, size = ref
        root = local.root(url)
        record = records.get(url)
        if root is None or record is None:
            return None  # not ours to read, or no record: icechunk's get checks the bytes
        offset = min(offset, size)
        n = max(0, min(length, size - offset))
        return functools.partial(local.read, url, root, start + offset, n, record, key)

    async def _read_local(self, key: str, ref: tuple[str, int, int], root: str, offset: int,
                          length: int | None) -> bytes:
        """A local virtual chunk, read contained below ``root`` and checked against the
        source's record; without a record (refs not written by vchunkfs ingest) the bytes
        must also equal what Icechunk's get returns (its own recorded check)."""
        local = self.local
        assert local is not None
        url, start, size = ref
        offset = min(offset, size)
        n = size - offset if length is None else max(0, min(length, size - offset))
        records = await self._call(key, lambda: local.records.of(self.records_snapshot))
        self._records = records
        record = records.get(url)
        data = await asyncio.to_thread(local.read, url, root, start + offset, n, record, key)
        if record is None and await self._icechunk_get(key, offset, n) != data:
            raise SourceChangedError(
                f"chunk {key}: its source {url} changed while it was read; refusing to "
                "return bytes that may be wrong")
        return data

    async def chunk_stats(self, array: str, container_prefixes: list[str]) -> ChunkStats:
        """One pass over the array's chunk refs (cost grows with the array)."""
        grid = await self.grid(array)
        stats = ChunkStats(grid_chunks=grid.num_chunks)
        prefixes = sorted(container_prefixes, key=len, reverse=True)
        it = self.store.array_chunk_iterator(array or "/", 100_000)
        try:
            async for _coords, kinds, paths, _offsets, lengths, _inl in it:
                stats.stored += len(kinds)
                stats.bytes_total += int(lengths.sum())
                stats.native += int((kinds == _NATIVE).sum())
                stats.inline += int((kinds == _INLINE).sum())
                virtual = kinds == _VIRTUAL
                stats.virtual += int(virtual.sum())
                stats.bytes_virtual += int(lengths[virtual].sum())
                # few distinct source files, many chunks: match prefixes per file
                for url, n in Counter(itertools.compress(paths, virtual.tolist())).items():
                    prefix = next((p for p in prefixes if url.startswith(p)), None)
                    if prefix is None:
                        stats.outside_containers += n
                    else:
                        stats.containers[prefix] = stats.containers.get(prefix, 0) + n
        except Exception as e:
            raise _translate(e, array) from e
        if not stats.stored:
            await self._confirm_no_chunks(array, grid)
        return stats

    async def _index_if_small(self, array: str, grid: ChunkGrid, force: bool) -> ChunkIndex | None:
        cache_key = (self.snapshot_id, array)
        index = self.caches.indexes.get(cache_key)
        if index is not None or (grid.num_chunks > self.caches.index_max_chunks and not force):
            return index
        pending = self._index_builds.get(array)
        if pending is None:
            pending = asyncio.ensure_future(self._build_index_within(array, grid))
            self._index_builds[array] = pending
            pending.add_done_callback(lambda _: self._index_builds.pop(array, None))
        index = await asyncio.shield(pending)
        self.caches.indexes[cache_key] = index
        self._held_indexes[array] = index
        return index

    async def _build_index_within(self, array: str, grid: ChunkGrid) -> ChunkIndex:
        """:meth:`_build_index` within ``caches.call_timeout``: a build on a hung backend
        ends, and the next reader starts a new one."""
        timeout = self.caches.call_timeout
        if timeout is None:
            return await self._build_index(array, grid)
        try:
            return await asyncio.wait_for(self._build_index(array, grid), timeout)
        except TimeoutError:
            raise BackendTimeoutError(f"index of the chunks of {array or '/'} in snapshot "
                                      f"{self.snapshot_id}", timeout) from None

    async def _build_index(self, array: str, grid: ChunkGrid) -> ChunkIndex:
        strides = np.array([int(np.prod(grid.grid_shape[i + 1:])) for i in range(grid.ndim)],
                           dtype=np.int64)
        linear: list[np.ndarray[Any, np.dtype[np.int64]]] = []
        lengths: list[np.ndarray[Any, np.dtype[np.uint64]]] = []
        offsets: list[np.ndarray[Any, np.dtype[np.uint64]]] = []
        location_ids: list[np.ndarray[Any, np.dtype[np.int32]]] = []
        ids: dict[str, int] = {}
        try:
            async for coords, kinds, paths, offs, lens, _i in self.store.array_chunk_iterator(
                    array or "/", 100_000):
                linear.append(coords.astype(np.int64) @ strides if grid.ndim
                              else np.zeros(len(lens), dtype=np.int64))
                lengths.append(lens.astype(np.uint64))
                offsets.append(offs.astype(np.uint64))
                virtual = (kinds == _VIRTUAL).tolist()
                location_ids.append(np.array(
                    [ids.setdefault(p, len(ids)) if v else -1
                     for p, v in zip(paths, virtual, strict=True)], dtype=np.int32))
        except Exception as e:
            raise _translate(e, array) from e
        if not linear:
            await self._confirm_no_chunks(array, grid)
            linear, lengths = [np.zeros(0, np.int64)], [np.zeros(0, np.uint64)]
            offsets, location_ids = [np.zeros(0, np.uint64)], [np.zeros(0, np.int32)]
        return ChunkIndex(np.concatenate(linear), np.concatenate(lengths),
                          np.concatenate(offsets), np.concatenate(location_ids), list(ids))

    async def _confirm_no_chunks(self, array: str, grid: ChunkGrid) -> None:
        """Raise unless the array really stores no chunk.

        icechunk's ``array_chunk_iterator`` yields nothing, without an error, when it
        cannot read the array's node (a snapshot missing or damaged), so an empty
        answer is checked with ``exists``, which reads the node and its manifests and
        raises their errors.
        """
        if not grid.num_chunks:
            return
        key = self.chunk_key(array, grid, (0,) * grid.ndim)
        if await self._call(key, lambda: self.store.exists(key)):
            raise BackendError(f"array {array or '/'}: icechunk listed no chunk but stores "
                               f"{key}; the snapshot {self.snapshot_id} could not be read")

    async def _call[T](self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except VchunkfsError:
            raise
        except Exception as e:
            raise _translate(e, key, self.snapshot_id) from e


def _unravel(linear: int, shape: Coords) -> Coords:
    out = []
    for n in reversed(shape):
        linear, c = divmod(linear, n)
        out.append(c)
    return tuple(reversed(out))


def node_tree(raw_nodes: list[dict[str, Any]], snapshot_id: str = "") -> dict[str, Node]:
    """The groups and arrays the mount shows, by path; the others are hidden and
    reported (see :mod:`vchunkfs.repository.names`)."""
    kinds = visible_nodes({n["path"]: n["node_type"] for n in raw_nodes}, snapshot_id)
    children: dict[str, list[str]] = {p: [] for p in kinds}
    for p in kinds:
        if p:
            parent = p.rsplit("/", 1)[0] if "/" in p else ""
            children.setdefault(parent, []).append(p.rsplit("/", 1)[-1])
    nodes = {p: Node(p, kinds[p], tuple(sorted(children.get(p, [])))) for p in kinds}
    if "" not in nodes:  # an empty repository has no root group yet: an empty directory
        nodes[""] = Node("", "group", tuple(sorted(children.get("", []))), stored=False)
    return nodes


_CHANGED = re.compile(r"checksum of the object owning the virtual chunk has changed \(([^)]*)\)")


def _translate(exc: Exception, key: str, snapshot_id: str = "") -> VchunkfsError:
    """Map an icechunk exception to the vchunkfs error a user can act on."""
    if isinstance(exc, VchunkfsError):
        return exc
    try:
        raise_if_unauthorized(exc, key)
    except VchunkfsError as e:
        return e
    text = str(exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    m = _CHANGED.search(text)
    if m:
        return SourceChangedError(
            f"chunk {key}: its source {m.group(1)} changed after the virtual ref was written; "
            "refusing to return bytes that may be wrong (re-ingest the file to update the ref)"
        )
    if "error fetching virtual reference" in text and any(
            w in text.lower() for w in ("not found", "nosuchkey", "does not exist", " 404")):
        return SourceMissingError(f"chunk {key}: {first.split(': ', 1)[-1]}")
    # Never NotFoundError: absence is decided only where icechunk *answered* (the node
    # tree, the grid, get/getsize/exists returning "not stored"). An error means that
    # whether, or where, something is stored is unknown: EIO, and nothing is cached.
    damaged = _damaged_object(text)
    if damaged:
        return BackendError(f"{key}: cannot read {damaged}: {first}; the repository is "
                            "missing objects, damaged or unreachable (not reported as absent)")
    return BackendError(f"{key}: {first}" + (f" (snapshot {snapshot_id})" if snapshot_id else ""))


_CONTEXT_ID = re.compile(r"\b(manifest|snapshot)_id=(\w+)")
_CONTEXT_PATH = re.compile(r'\bpath="((?:manifests|snapshots)/[^"]*)"')


def _damaged_object(text: str) -> str | None:
    """The manifest or snapshot object named in an icechunk error's context, if any."""
    m = _CONTEXT_ID.search(text)
    if m is None:
        return None
    path = _CONTEXT_PATH.search(text)
    return f"{m.group(1)} {m.group(2)}" + (f" ({path.group(1)})" if path else "")
