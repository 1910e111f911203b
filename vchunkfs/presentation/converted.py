"""Presentations computed from the stored snapshot: Zarr v2 metadata, decoded chunks.

``v2``          Zarr v2 documents (``.zgroup``, ``.zarray``, ``.zattrs``, and a
                consolidated ``.zmetadata`` at the root) over the stored chunk
                bytes, with keys ``0.0.3``.
``v2-decoded``  the same documents naming plain bytes (no compressor, no
                filters, little-endian) and chunks served decoded.
``v3-decoded``  the stored ``zarr.json`` documents with the codecs reduced to
                ``bytes`` (little-endian) and chunks served decoded, under the
                stored chunk keys.

Documents are derived from the stored ``zarr.json`` (and, for the v2 fill value
of a few arrays, from whether every chunk is stored: :func:`v2_fill`), so a
file's size is known without reading chunks; a decoded chunk's size is the chunk
shape times the item size. An array the presentation cannot show (a codec or data type
with no form here) keeps its directory, which then holds one text file,
``UNSUPPORTED``, saying why; the array is left out of ``.zmetadata`` and a
warning is logged once.

See docs/SEMANTICS.md ("Presentations") for the attribute and fill value rules
(``_ARRAY_DIMENSIONS``, ``_FillValue``, ``fill_value``) and why they are what they are.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vchunkfs.errors import BackendTimeoutError, NotFoundError, VchunkfsError
from vchunkfs.presentation.codecs import CodecChain, UnsupportedArrayError
from vchunkfs.repository.chunkgrid import ChunkGrid, Coords, listing_key
from vchunkfs.repository.names import ZARR_V2_NAMES, hidden_by_name
from vchunkfs.repository.snapshot import (
    METADATA_KEY,
    PREPARED_ARRAYS,
    UNKNOWN,
    ArrayWalk,
    Entry,
    Node,
    SnapshotView,
    Unknown,
)

log = logging.getLogger("vchunkfs.presentation")

ZGROUP, ZARRAY, ZATTRS, ZMETADATA = ".zgroup", ".zarray", ".zattrs", ".zmetadata"
UNSUPPORTED = "UNSUPPORTED"
DECODED_CACHE_BYTES = 64 * 1024 * 1024  # decoded chunks kept for reads of several parts


@dataclass(frozen=True)
class _ArrayForm:
    """What the presentation shows for one array; ``reason`` set when it cannot."""

    stored_grid: ChunkGrid | None = None  # the stored chunk keys
    grid: ChunkGrid | None = None  # the presented chunk keys
    chain: CodecChain | None = None
    reason: str = ""


class ConvertedPresentation:
    """A snapshot shown with other metadata and/or decoded chunks (see module doc)."""

    def __init__(self, view: SnapshotView, name: str, zarr_format: int, decoded: bool) -> None:
        self.view = view
        self.name = name
        self.zarr_format = zarr_format
        self.decoded = decoded
        # dicts that only gain keys, so stat_known may read them from any thread
        self._docs: dict[str, bytes] = {}
        self._forms: dict[str, _ArrayForm] = {}
        self.nodes = view.nodes if zarr_format == 3 else _without_v2_names(view)
        self._walk = ArrayWalk(self.nodes)
        self._complete_arrays: dict[str, bool] = {}  # array -> every chunk stored

    # -- the contract ---------------------------------------------------------

    async def stat(self, path: str) -> Entry | None:
        where = await self._resolve(path)
        name = path.strip("/").rsplit("/", 1)[-1]
        if where is None:
            return None
        node, kind, detail = where
        if kind == "dir":
            return Entry(name, True)
        if kind == "doc":
            return Entry(name, False, len(await self._doc(node, detail)))
        size = await self._chunk_size(node.path, detail)
        return None if size is None else Entry(name, False, size)

    def stat_known(self, path: str) -> Entry | Unknown | None:
        found = self.view.locate(path, self.nodes)
        if found is None:
            return None
        node, rest = found
        name = path.strip("/").rsplit("/", 1)[-1]
        if not rest:
            return Entry(name, True)
        form = self._forms.get(node.path) if node.kind == "array" else _ArrayForm()
        if form is None:
            return UNKNOWN
        if rest in self._doc_names(node, form):
            doc = self._docs.get(_doc_key(node.path, rest))
            return UNKNOWN if doc is None else Entry(name, False, len(doc))
        if form.grid is None or form.stored_grid is None:
            return None
        parsed = form.grid.parse(rest)
        if parsed is None:
            return None
        if not parsed.is_chunk:
            return Entry(name, True)
        stored = self.view.stat_known(
            SnapshotView.chunk_key(node.path, form.stored_grid, parsed.coords))
        if not isinstance(stored, Entry):
            return stored
        assert form.chain is not None
        return Entry(name, False, form.chain.decoded_nbytes if self.decoded else stored.size)

    def following(self, path: str, n: int, backward: bool = False) -> list[tuple[str, int]]:
        out = []
        for array, grid, coords, size in self._following(path, n, backward)[0]:
            chain = self._forms[array].chain  # built, as the grid was (_chunk_grid)
            out.append((SnapshotView.chunk_key(array, grid, coords),
                        chain.decoded_nbytes if self.decoded and chain is not None else size))
        return out

    async def prepare_following(self, path: str, n: int) -> None:
        missing = self._following(path, n)[1]
        found = self.view.locate(path, self.nodes)
        own = self.view.grid_known(found[0].path) if found is not None else None
        for _ in range(PREPARED_ARRAYS):  # arrays chunked otherwise between are passed
            node = self.nodes.get(missing) if missing is not None else None
            if node is None or node.kind != "array" or own is None:
                return
            if await self.view.hold_index(node.path, own.grid_shape):
                await self._form(node)
            missing = self._following(path, n)[1]
            if missing == node.path:
                return  # too large to index whole, or not presentable

    def _following(self, path: str, n: int, backward: bool = False
                   ) -> tuple[list[tuple[str, ChunkGrid, Coords, int]], str | None]:
        found = self.view.locate(path, self.nodes)
        form = self._forms.get(found[0].path) if found and found[0].kind == "array" else None
        if found is None or form is None or form.grid is None or form.chain is None:
            return [], None
        node, rest = found
        parsed = form.grid.parse(rest)
        if parsed is None or not parsed.is_chunk:
            return [], None
        return self.view.following(node.path, parsed.coords, n, backward, self._walk,
                                   self._chunk_grid)

    def _chunk_grid(self, array: str) -> ChunkGrid | None:
        """The grid of ``array``'s chunk files here, once its form is built (no I/O)."""
        form = self._forms.get(array)
        return form.grid if form is not None and form.chain is not None else None

    async def list_dir(self, path: str) -> list[Entry]:
        where = await self._resolve(path)
        if where is None or where[1] != "dir":
            raise NotFoundError(f"no directory {path.strip('/') or '/'!r} in snapshot "
                                f"{self.view.snapshot_id}")
        node, _, coords = where
        entries: list[Entry] = []
        form = await self._form(node) if node.kind == "array" else _ArrayForm()
        if coords is None:  # the node's own directory
            for doc_name in self._doc_names(node, form):
                entries.append(Entry(doc_name, False, len(await self._doc(node, doc_name))))
            if node.kind == "group":
                entries += [Entry(c, True) for c in node.children]
        if form.grid is not None:
            entries += await self._chunk_entries(node.path, form, coords)
        return sorted(entries, key=lambda e: listing_key(e.name))

    def local_read(self, path: str, offset: int, length: int) -> Callable[[], bytes] | None:
        if self.decoded:
            return None  # decoding runs on the bridge's loop
        found = self.view.locate(path, self.nodes)
        form = self._forms.get(found[0].path) if found and found[0].kind == "array" else None
        if found is None or form is None or form.grid is None:
            return None
        node, rest = found
        stored_grid = self.view.grid_known(node.path)
        parsed = form.grid.parse(rest)
        if (stored_grid is None or parsed is None or not parsed.is_chunk
                or rest in self._doc_names(node, form)):
            return None
        # the stored chunk's bytes, as read() gives them (view.read_chunk)
        stored = SnapshotView.chunk_key(node.path, stored_grid, parsed.coords)
        return self.view.local_read_plan(stored, offset, length)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        where = await self._resolve(path)
        if where is None or where[1] == "dir":
            raise NotFoundError(f"no file {path.strip('/')!r} in snapshot {self.view.snapshot_id}")
        node, kind, detail = where
        if kind == "doc":
            return (await self._doc(node, detail))[offset:offset + length]
        if not self.decoded:
            return await self.view.read_chunk(node.path, detail, offset, length)
        form = self._forms[node.path]
        assert form.chain is not None
        whole = offset == 0 and length >= form.chain.decoded_nbytes  # nothing left to read
        return (await self._decoded_chunk(node.path, detail, keep=not whole))[
            offset:offset + length]

    # -- names ----------------------------------------------------------------

    async def _resolve(self, path: str) -> tuple[Node, str, Any] | None:
        """(node, "dir", coords of a chunk directory or None) or (node, "doc", name) or
        (node, "chunk", coords); None when the path names nothing."""
        found = self.view.locate(path, self.nodes)
        if found is None:
            return None
        node, rest = found
        if not rest:
            return node, "dir", None
        form = await self._form(node) if node.kind == "array" else _ArrayForm()
        if rest in self._doc_names(node, form):
            return node, "doc", rest
        if form.grid is None:
            return None
        parsed = form.grid.parse(rest)
        if parsed is None:
            return None
        return (node, "chunk", parsed.coords) if parsed.is_chunk else (
            node, "dir", parsed.coords)

    def _doc_names(self, node: Node, form: _ArrayForm) -> tuple[str, ...]:
        if not node.stored:
            return ()
        if form.reason:
            return (UNSUPPORTED,)
        if self.zarr_format == 3:
            return (METADATA_KEY,)
        if node.kind == "array":
            return (ZARRAY, ZATTRS)
        return (ZATTRS, ZGROUP, ZMETADATA) if node.path == "" else (ZATTRS, ZGROUP)

    async def _form(self, node: Node) -> _ArrayForm:
        form = self._forms.get(node.path)
        if form is not None:
            return form
        meta = await self.view.metadata_json(node.path)
        stored_grid = await self.view.grid(node.path)
        try:
            chain = CodecChain.from_metadata(meta)
            if self.zarr_format == 2 and not self.decoded:
                chain.v2_filters_compressor()
            grid = (stored_grid if self.zarr_format == 3
                    else ChunkGrid(stored_grid.grid_shape, ".", ""))
            form = _ArrayForm(stored_grid, grid, chain)
        except UnsupportedArrayError as e:
            log.warning("presentation %s cannot show array %s of snapshot %s: %s",
                        self.name, node.path or "/", self.view.snapshot_id, e)
            form = _ArrayForm(reason=str(e))
        self._forms[node.path] = form
        return form

    # -- documents ------------------------------------------------------------

    async def _doc(self, node: Node, name: str) -> bytes:
        key = _doc_key(node.path, name)
        doc = self._docs.get(key)
        if doc is None:
            doc = await self._make_doc(node, name)
            self._docs[key] = doc
        return doc

    async def _make_doc(self, node: Node, name: str) -> bytes:
        if name == UNSUPPORTED:
            form = await self._form(node)
            return (f"vchunkfs: presentation {self.name} cannot show array "
                    f"{node.path or '/'}: {form.reason}.\nMount with presentation=v3 "
                    "to read it as stored.\n").encode()
        if name == ZMETADATA:
            return _dump({"zarr_consolidated_format": 1,
                          "metadata": await self._consolidated()})
        return _dump(await self._doc_json(node, name))

    async def _doc_json(self, node: Node, name: str) -> dict[str, Any]:
        meta = await self.view.metadata_json(node.path)
        if name == METADATA_KEY:  # v3-decoded: the stored document, codecs reduced
            form = await self._form(node) if node.kind == "array" else _ArrayForm()
            if form.chain is not None:
                codec: dict[str, Any] = {"name": "bytes"}
                if form.chain.dtype.itemsize > 1:
                    codec["configuration"] = {"endian": "little"}
                meta = {**meta, "codecs": [codec]}
            return meta
        if name == ZGROUP:
            return {"zarr_format": 2}
        if name == ZATTRS:
            return v2_attributes(meta, await self._complete(node, meta))
        form = await self._form(node)
        assert form.chain is not None
        return v2_array_document(meta, form.chain, self.decoded,
                                 await self._complete(node, meta))

    async def _complete(self, node: Node, meta: dict[str, Any]) -> bool:
        """Whether the snapshot stores every chunk of the array, asked only when the
        v2 fill value depends on it (one pass over the array's chunk refs, once)."""
        if node.kind != "array" or not v2_fill_needs_chunks(meta):
            return False
        complete = self._complete_arrays.get(node.path)
        if complete is None:
            stats = await self.view.chunk_stats(node.path, [])
            complete = stats.stored >= stats.grid_chunks
            self._complete_arrays[node.path] = complete
        return complete

    async def _consolidated(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path in sorted(self.nodes):
            node = self.nodes[path]
            if not node.stored:
                continue
            form = await self._form(node) if node.kind == "array" else _ArrayForm()
            for doc_name in self._doc_names(node, form):
                if doc_name in (UNSUPPORTED, ZMETADATA):
                    continue
                out[_doc_key(path, doc_name)] = await self._doc_json(node, doc_name)
        return out

    # -- chunks ---------------------------------------------------------------

    async def _chunk_size(self, array: str, coords: Coords) -> int | None:
        size = await self.view.chunk_size(array, coords)
        if size is None or not self.decoded:
            return size
        form = self._forms[array]
        assert form.chain is not None
        return form.chain.decoded_nbytes

    async def _chunk_entries(self, array: str, form: _ArrayForm,
                             lead: Coords | None) -> list[Entry]:
        """Chunk files and directories in the array's directory (``lead`` None) or in
        the chunk directory whose leading coordinates are ``lead``."""
        assert form.grid is not None and form.chain is not None
        grid, chain = form.grid, form.chain
        if lead is None and grid.top_dir():
            return [Entry(grid.top_dir() or "", True)]
        if lead is None and not grid.flat:
            return []
        lead = lead or ()
        if not grid.flat and len(lead) < grid.ndim - 1:
            return [Entry(str(i), True) for i in range(grid.grid_shape[len(lead)])]
        stored = await self.view.stored_chunks(array, lead)
        return [Entry(grid.key(c).rsplit("/", 1)[-1], False,
                      chain.decoded_nbytes if self.decoded else size) for c, size in stored]

    async def _decoded_chunk(self, array: str, coords: Coords, keep: bool) -> bytes:
        """The decoded chunk; ``keep`` it for the reads of its other parts that follow.

        Decoded once however many reads of its parts come at once (the kernel's
        read-ahead asks for several 8 MiB blocks of a large file together): they share
        one decode, which a cancelled reader does not cancel for the others."""
        cache_key = (self.view.snapshot_id, self.name, array, coords)
        data = _DECODED.get(cache_key)
        if data is not None:
            return data
        pending = _DECODING.get(cache_key)
        if pending is None:
            # shared, so not cancelled with its first reader: bounded by the mount's
            # deadline instead, after which the next reader starts again
            decode = self._decode(array, coords, cache_key, keep)
            timeout = self.view.caches.call_timeout
            pending = asyncio.ensure_future(
                decode if timeout is None else _within(decode, timeout, f"decode {array} "
                                                       f"chunk {coords}"))
            _DECODING[cache_key] = pending
            pending.add_done_callback(_decode_done(cache_key))
        return await asyncio.shield(pending)

    async def _decode(self, array: str, coords: Coords, cache_key: Hashable,
                      keep: bool) -> bytes:
        form = self._forms[array]
        assert form.chain is not None
        stored = await self.view.read_chunk(array, coords)
        try:
            data = await asyncio.to_thread(form.chain.decode, stored)
        except VchunkfsError as e:
            assert form.stored_grid is not None
            key = SnapshotView.chunk_key(array, form.stored_grid, coords)
            raise type(e)(f"{key}: {e}") from e
        if keep:
            _DECODED.put(cache_key, data)
        return data


class _DecodedCache:
    """Decoded chunks read in parts (larger than the caller's blocks), LRU by bytes.

    One for the process, used only on the bridge's asyncio loop (every presentation
    coroutine runs there), so that the bound holds whatever the number of
    presentations and snapshots open. A chunk larger than the bound is kept alone
    (everything else evicted) until the next chunk comes: its reader's next blocks
    need no new decode, and memory stays within the bound plus one chunk.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: Hashable, data: bytes) -> None:
        if key in self._items:
            return
        self._items[key] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)

    @property
    def current_bytes(self) -> int:
        return self._bytes


_DECODED = _DecodedCache(DECODED_CACHE_BYTES)


def set_decoded_cache_bytes(max_bytes: int) -> None:
    """Bound the process's decoded-chunk cache (the memory budget's share; at start-up,
    before any presentation reads)."""
    global _DECODED
    _DECODED = _DecodedCache(max_bytes)
# decodes in flight, by the same key: one decode per chunk however many readers
_DECODING: dict[Hashable, asyncio.Future[bytes]] = {}


async def _within(work: Awaitable[bytes], timeout: float, what: str) -> bytes:
    try:
        return await asyncio.wait_for(work, timeout)
    except TimeoutError:
        raise BackendTimeoutError(what, timeout) from None


def _decode_done(key: Hashable) -> Callable[[asyncio.Future[bytes]], None]:
    def done(future: asyncio.Future[bytes]) -> None:
        if _DECODING.get(key) is future:
            del _DECODING[key]
        if not future.cancelled():
            future.exception()  # retrieved: every reader may have gone away
    return done


# -- Zarr v2 documents ---------------------------------------------------------


def v2_array_document(meta: dict[str, Any], chain: CodecChain, decoded: bool,
                      complete: bool = False) -> dict[str, Any]:
    """The ``.zarray`` of a v3 array: same shape and chunks; ``fill_value`` by
    :func:`v2_fill` (``complete``: the snapshot stores every chunk of the array)."""
    if decoded:
        dtype, filters, compressor = chain.dtype.newbyteorder("<"), None, None
        order = "C"
    else:
        dtype, order = chain.dtype, chain.order
        filters, compressor = chain.v2_filters_compressor()
    return {
        "zarr_format": 2,
        "shape": list(meta["shape"]),
        "chunks": list(chain.chunk_shape),
        "dtype": dtype.str,
        "fill_value": v2_fill(meta, complete).fill_value,
        "order": order,
        "filters": filters,
        "compressor": compressor,
        "dimension_separator": ".",
    }


@dataclass(frozen=True)
class V2Fill:
    """An array's fill value and missing-value mark in Zarr v2 form (JSON values)."""

    fill_value: Any  # .zarray "fill_value": a number, "NaN", "Infinity", or None (null)
    attribute: Any  # .zattrs "_FillValue": a finite number, or None for no attribute


def v2_fill(meta: dict[str, Any], complete: bool = False) -> V2Fill:
    """The v2 ``fill_value`` and ``_FillValue`` that give v2 readers the values the
    stored v3 array gives zarr-python and xarray (docs/SEMANTICS.md, "Presentations").

    On v3, a missing chunk reads as the stored fill value F and xarray masks only
    the values equal to the ``_FillValue`` attribute M. A v2 reader reads a missing
    chunk as ``fill_value`` (zero for null), and xarray and GDAL also take a non-null
    ``fill_value`` as the missing-value mark (xarray then ignores ``_FillValue``).
    So ``fill_value`` is F when M is F (NaN included); null when F is zero (missing
    chunks read zero, and no zero is masked); M (null without M) when the snapshot
    stores every chunk (``complete``: nothing reads as F, so it only marks); and F
    otherwise, where keeping what a missing chunk reads as makes xarray and GDAL mask
    values equal to F. ``_FillValue`` is M when finite: NaN masks itself, and
    netCDF-C masks through this attribute alone.
    """
    data_type = str(meta.get("data_type", ""))
    fill = _fill_number(meta.get("fill_value"), data_type)
    mark = _mark(meta, data_type)
    if mark is not None and _same(mark, fill, data_type):
        value = fill
    elif _is_zero(fill):
        value = None
    elif complete:
        value = mark
    else:
        value = fill
    finite = mark is not None and not (isinstance(mark, float) and not math.isfinite(mark))
    return V2Fill(_json_number(value), mark if finite else None)


def v2_fill_needs_chunks(meta: dict[str, Any]) -> bool:
    """Whether :func:`v2_fill` depends on ``complete`` for this array (the stored fill
    value is not zero and the ``_FillValue`` attribute does not equal it)."""
    data_type = str(meta.get("data_type", ""))
    fill = _fill_number(meta.get("fill_value"), data_type)
    mark = _mark(meta, data_type)
    return not (mark is not None and _same(mark, fill, data_type)) and not _is_zero(fill)


def v2_attributes(meta: dict[str, Any], complete: bool = False) -> dict[str, Any]:
    """``.zattrs``: the stored attributes, plus ``_ARRAY_DIMENSIONS`` (how xarray and
    netCDF-C name dimensions in v2), with ``_FillValue`` as :func:`v2_fill` says."""
    attrs = dict(meta.get("attributes", {}))
    if meta.get("node_type") != "array":
        return attrs
    dims = meta.get("dimension_names")
    if dims and all(isinstance(d, str) for d in dims):
        attrs["_ARRAY_DIMENSIONS"] = list(dims)
    mark = v2_fill(meta, complete).attribute
    if mark is None:
        attrs.pop("_FillValue", None)
    else:
        attrs["_FillValue"] = mark
    return attrs


_FLOAT_SIZES = {"float16": 2, "float32": 4, "float64": 8}


def _fill_number(value: Any, data_type: str) -> Any:
    """A v3 ``fill_value`` as a Python number (NaN and infinities as floats)."""
    if data_type in _FLOAT_SIZES:
        if isinstance(value, str):
            if value.startswith("0x"):
                size = _FLOAT_SIZES[data_type]
                fmt = {2: ">e", 4: ">f", 8: ">d"}[size]
                return struct.unpack(fmt, int(value, 16).to_bytes(size, "big"))[0]
            return float(value)  # "NaN", "Infinity", "-Infinity"
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return value


def _mark(meta: dict[str, Any], data_type: str) -> Any:
    """The ``_FillValue`` attribute as xarray decodes it on v3 (floats base64-packed
    little-endian doubles, other types plain), or None when absent or undecodable."""
    value = meta.get("attributes", {}).get("_FillValue")
    if value is None:
        return None
    if data_type in _FLOAT_SIZES:
        if isinstance(value, str):
            try:
                return struct.unpack("<d", base64.b64decode(value, validate=True))[0]
            except (ValueError, struct.error):
                return None
        return float(value) if isinstance(value, int | float) else None
    if data_type == "bool":
        return bool(value) if isinstance(value, bool | int) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _same(a: Any, b: Any, data_type: str) -> bool:
    """Whether two fill values are one value of the array's data type (NaN is NaN)."""
    if data_type in _FLOAT_SIZES:
        if not isinstance(a, float) or not isinstance(b, float):
            return False
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        kind = np.dtype("f" + str(_FLOAT_SIZES[data_type]))
        return bool(np.array(a).astype(kind) == np.array(b).astype(kind))
    return type(a) is type(b) and a == b


def _is_zero(value: Any) -> bool:
    """Zero as a null v2 fill value reads: 0, false, or +0.0 (not -0.0)."""
    if isinstance(value, float):
        return value == 0 and math.copysign(1.0, value) > 0
    return isinstance(value, int) and value == 0  # bool is an int


def _json_number(value: Any) -> Any:
    """A number in v2 JSON: NaN and infinities as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _without_v2_names(view: SnapshotView) -> dict[str, Node]:
    """The view's nodes less those named like a Zarr v2 document (and what they hold):
    in a v2 directory the document wins, as ``zarr.json`` does in the tree."""
    hidden = hidden_by_name(view.nodes, ZARR_V2_NAMES, view.snapshot_id,
                            "in the Zarr v2 presentations its name is a metadata document's")
    if not hidden:
        return view.nodes
    return {p: replace(n, children=tuple(c for c in n.children if _doc_key(p, c) not in hidden))
            for p, n in view.nodes.items() if p not in hidden}


def _doc_key(node_path: str, name: str) -> str:
    return f"{node_path}/{name}" if node_path else name


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode()
