"""Local virtual chunk sources: containment below the authorized prefix, and the record
of what each file was when it was ingested.

Icechunk's own reader of ``file://`` chunks follows symbolic links wherever they
lead, and its changed-source check for a local file is a comparison of the
modification time, which ``os.utime``, ``cp -p``, ``rsync -a`` and ``tar x`` set
back. vchunkfs promises more (docs/SEMANTICS.md, docs/security.md), so the
repository layer reads local virtual chunks itself, through :class:`LocalSources`:

* **Containment.** The file is opened (symbolic links followed, as the kernel
  resolves them), then the path of the *opened* file is read back from
  ``/proc/self/fd``; unless it lies below the real path of an authorized
  ``file://`` prefix the read is refused (:class:`UnauthorizedContainerError`,
  ``EACCES``). Checking the opened descriptor, not the name, leaves no window
  between check and use: a link swapped in the meantime is caught.
* **The changed-source check.** ``vchunkfs ingest`` records, in the commit's
  metadata (``{"vchunkfs": {"sources": {url: [size, mtime_ns, ctime_ns, inode]}}}``),
  what each local source was when its refs were written. A read compares the
  opened file's ``fstat`` with the newest record of that url in the snapshot's
  ancestry; any difference is :class:`SourceChangedError` (``EIO``). The change
  time cannot be set by a user: an in-place edit whose modification time was
  restored, or a file replaced by another one and back-dated, changes it.
* Refs written by other tools carry no record: then the bytes are also fetched
  through Icechunk's ``get`` (its authorization and recorded checksum) and must
  equal the contained read, so no byte outside the prefix is ever served.

This module knows nothing of snapshots or FUSE; :class:`SnapshotView` calls it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from cachetools import LRUCache

from vchunkfs.errors import (
    BackendError,
    SourceChangedError,
    SourceMissingError,
    SourceOutsideContainerError,
)

# where ingest puts the records in a commit's metadata
COMMIT_METADATA_KEY = "vchunkfs"
RECORDS_KEY = "sources"


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """What a local source file was when refs into it were written."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> SourceRecord:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def to_json(self) -> list[int]:
        return [self.size, self.mtime_ns, self.ctime_ns, self.inode]

    @classmethod
    def from_json(cls, value: Any) -> SourceRecord | None:
        if (isinstance(value, list) and len(value) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            return cls(*value)
        return None

    def differences(self, now: SourceRecord) -> list[str]:
        """Human names of the fields that differ from ``now``."""
        names = ("size", "modification time", "change time", "inode")
        return [n for n, a, b in zip(names, self.to_json(), now.to_json(), strict=True) if a != b]


def local_path(url: str) -> str:
    """The file path a ``file://`` url names, percent-decoded as Icechunk reads it."""
    return unquote(urlsplit(url).path)


def record_local_sources(urls: Iterable[str]) -> dict[str, list[int]]:
    """The records of the ``file://`` urls among ``urls``, for a commit's metadata."""
    out: dict[str, list[int]] = {}
    for url in urls:
        if url.startswith("file://"):
            out[url] = SourceRecord.from_stat(os.stat(local_path(url))).to_json()
    return out


def records_in_metadata(metadata: Mapping[str, Any] | None) -> dict[str, SourceRecord]:
    """The source records a commit's metadata holds (malformed entries are ignored)."""
    ours = (metadata or {}).get(COMMIT_METADATA_KEY)
    raw = ours.get(RECORDS_KEY) if isinstance(ours, dict) else None
    if not isinstance(raw, dict):
        return {}
    out = {}
    for url, value in raw.items():
        rec = SourceRecord.from_json(value)
        if isinstance(url, str) and rec is not None:
            out[url] = rec
    return out


AncestryFn = Callable[[str], AsyncIterator[Any]]


class SourceRecords:
    """The newest record of every url along each snapshot's ancestry, memoized.

    A snapshot's records are its parent's plus those of its own commit, so
    following a branch costs one snapshot read per new commit; the first read of
    a snapshot with no memoized ancestor walks its whole history (one snapshot
    object per commit). Memory: ``entries`` merged maps of every recorded url.
    Coroutines for the bridge's loop (single-threaded there: no locks).
    """

    def __init__(self, ancestry: AncestryFn, entries: int = 16) -> None:
        self._ancestry = ancestry
        self._memo: LRUCache[str, Mapping[str, SourceRecord]] = LRUCache(entries)

    async def of(self, snapshot_id: str) -> Mapping[str, SourceRecord]:
        found = self._memo.get(snapshot_id)
        if found is not None:
            return found
        chain: list[Any] = []
        base: Mapping[str, SourceRecord] = {}
        async for info in self._ancestry(snapshot_id):
            memo = self._memo.get(info.id)
            if memo is not None:
                base = memo
                break
            chain.append(info)
        merged = dict(base)
        for info in reversed(chain):  # oldest first: a newer record of a url wins
            merged.update(records_in_metadata(info.metadata))
        self._memo[snapshot_id] = merged
        return merged


class LocalSources:
    """Reads of local virtual chunks, contained below the reader's ``file://`` prefixes.

    ``prefixes`` are the authorized ``file://`` url prefixes (each ends with
    ``/``); ``declared`` returns the repository's container prefixes now (a
    container must also be declared, as Icechunk requires). Thread-safe: the
    blocking reads run in worker threads.
    """

    def __init__(self, prefixes: Iterable[str], declared: Callable[[], list[str]],
                 records: SourceRecords) -> None:
        self.records = records
        self._declared = declared
        # (url prefix, real directory of it + "/"), longest prefix first
        self._roots = sorted(((p, os.path.realpath(local_path(p))) for p in prefixes),
                             key=lambda r: len(r[0]), reverse=True)

    def root(self, url: str) -> str | None:
        """The real directory (ending in ``/``) that ``url`` must resolve below, or None
        when no authorized and declared ``file://`` prefix covers it (then Icechunk's own
        reader refuses it, with its error)."""
        for prefix, real in self._roots:
            if url.startswith(prefix) and any(url.startswith(d) for d in self._declared()):
                return real.rstrip("/") + "/"
        return None

    def read(self, url: str, root: str, offset: int, length: int,
             record: SourceRecord | None, key: str) -> bytes:
        """``length`` bytes of ``url`` from ``offset``: contained below ``root`` (from
        :meth:`root`), checked against ``record``, exact. Blocking: call it in a worker
        thread."""
        path = local_path(url)
        raw = urlsplit(url).path
        if "%2f" in raw.lower() or any(part in (".", "..", "") for part in path.split("/")[1:]):
            # Icechunk normalizes "." and ".." when a ref is written and cannot address an
            # encoded "/": such a url was written around its checks, so it is read by no one
            raise SourceOutsideContainerError(url, key, "its path is not a plain file path "
                                              "(empty, '.' or '..' segments, or an encoded '/')")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except FileNotFoundError as e:
            raise SourceMissingError(f"chunk {key}: its source {url} was not found") from e
        except OSError as e:
            raise BackendError(f"chunk {key}: cannot open its source {url}: {e.strerror}") from e
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
            if not real.startswith(root):
                raise SourceOutsideContainerError(url, key,
                                                  f"it resolves to {real}, outside {root}")
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceOutsideContainerError(url, key, "it is not a regular file")
            if record is not None:
                changed = record.differences(SourceRecord.from_stat(st))
                if changed:
                    raise SourceChangedError(
                        f"chunk {key}: its source {url} changed after the virtual ref was "
                        f"written ({', '.join(changed)} differ from what was ingested); "
                        "refusing to return bytes that may be wrong (re-ingest the file)")
            if offset + length > st.st_size:
                raise SourceChangedError(
                    f"chunk {key}: its source {url} is {st.st_size} bytes, too short for "
                    f"bytes {offset}..{offset + length}; refusing to return partial bytes")
            return _pread_exact(fd, length, offset, url, key)
        finally:
            os.close(fd)


def _pread_exact(fd: int, length: int, offset: int, url: str, key: str) -> bytes:
    parts = []
    done = 0
    while done < length:
        piece = os.pread(fd, length - done, offset + done)
        if not piece:
            raise SourceChangedError(f"chunk {key}: its source {url} ended early (truncated "
                                     "while read); refusing to return partial bytes")
        parts.append(piece)
        done += len(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)

