"""An array's chunk grid and its chunk key encoding, as paths.

Zarr v3 names a chunk by its grid coordinates through the array's
``chunk_key_encoding``: ``default`` puts keys under ``c`` (``c/0/3``, or
``c.0.3`` with the ``.`` separator; ``c`` for a 0-d array) and ``v2`` puts
them directly in the array (``0.3`` or ``0/3``; ``0`` for a 0-d array).

With the ``/`` separator chunk keys form directories, one level per
dimension but the last. Parsing is strict: only the canonical decimal
spelling of an in-grid coordinate names a chunk, so ``c/01/3`` never aliases
``c/1/3``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Coords = tuple[int, ...]


@dataclass(frozen=True)
class ChunkPath:
    """What a path below an array directory names.

    ``is_chunk`` false means a chunk directory whose leading coordinates are
    ``coords`` (``()`` for the top chunk directory ``c``).
    """

    coords: Coords
    is_chunk: bool


@dataclass(frozen=True)
class ChunkGrid:
    """The grid of one array (in chunks per dimension) and how its keys are spelled."""

    grid_shape: Coords
    separator: str  # "/" or "."
    root: str  # "c" for the default encoding, "" for v2

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> ChunkGrid:
        """Build from a Zarr v3 array ``zarr.json`` document."""
        shape = tuple(int(n) for n in meta["shape"])
        grid = meta.get("chunk_grid", {})
        if grid.get("name") != "regular":
            raise ValueError(f"unsupported chunk grid {grid.get('name')!r}")
        chunk_shape = tuple(int(n) for n in grid["configuration"]["chunk_shape"])
        enc = meta.get("chunk_key_encoding", {"name": "default"})
        name = enc.get("name", "default")
        conf = enc.get("configuration", {}) or {}
        if name == "default":
            sep, root = conf.get("separator", "/"), "c"
        elif name == "v2":
            sep, root = conf.get("separator", "."), ""
        else:
            raise ValueError(f"unsupported chunk key encoding {name!r}")
        if sep not in ("/", "."):
            raise ValueError(f"unsupported chunk key separator {sep!r}")
        grid_shape = tuple(
            math.ceil(s / c) if c else 0 for s, c in zip(shape, chunk_shape, strict=True)
        )
        return cls(grid_shape=grid_shape, separator=sep, root=root)

    @property
    def ndim(self) -> int:
        return len(self.grid_shape)

    @property
    def num_chunks(self) -> int:
        return math.prod(self.grid_shape)

    def key(self, coords: Coords) -> str:
        """The chunk key relative to the array directory."""
        if not coords:
            return self.root or "0"
        parts = [str(c) for c in coords]
        if self.root:
            parts.insert(0, self.root)
        return self.separator.join(parts)

    def parse(self, rel: str) -> ChunkPath | None:
        """What ``rel`` (relative to the array directory) names, or None if nothing."""
        if self.separator == "/":
            parts = rel.split("/")
        else:
            parts = [rel] if "/" not in rel else []
            if not parts:
                return None
            parts = parts[0].split(".")
        if self.root:
            if not parts or parts[0] != self.root:
                return None
            parts = parts[1:]
        elif self.ndim == 0:
            return ChunkPath((), True) if parts == ["0"] else None
        coords: list[int] = []
        for i, p in enumerate(parts):
            if i >= self.ndim or not _canonical_int(p) or int(p) >= self.grid_shape[i]:
                return None
            coords.append(int(p))
        if len(coords) == self.ndim:
            return ChunkPath(tuple(coords), True)
        if self.separator == "/" and (self.root or coords):
            return ChunkPath(tuple(coords), False)
        return None

    @property
    def flat(self) -> bool:
        """Whether every chunk key sits directly in the array directory."""
        return self.separator == "." or self.ndim == 0 or (self.ndim == 1 and not self.root)

    def top_dir(self) -> str | None:
        """The chunk directory right under the array directory (``c``), if there is one."""
        return self.root if not self.flat and self.root else None

    def linear(self, coords: Coords) -> int:
        """Row-major linear index of a chunk (the order ``ChunkIndex`` is sorted in)."""
        idx = 0
        for c, n in zip(coords, self.grid_shape, strict=True):
            idx = idx * n + c
        return idx


def _canonical_int(s: str) -> bool:
    return s.isascii() and s.isdigit() and (s == "0" or not s.startswith("0"))


def listing_key(name: str) -> tuple[int, tuple[int, ...], str]:
    """Sort key of a directory entry: other names first (by name), then chunk names
    (``7``, ``0.3``, ``c.0.3``) in array order, ``0, 1, 2, ..., 10`` and not string
    order, so that tools walking the tree (``find``, ``cp -r``, ``tar``) read chunks
    in the order an array is laid out."""
    parts = name.split(".")
    if parts[0] == "c" and len(parts) > 1:
        parts = parts[1:]
    if all(p.isdigit() and p.isascii() for p in parts):
        return (1, tuple(int(p) for p in parts), name)
    return (0, (), name)
