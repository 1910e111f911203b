"""The filesystem core's vocabulary: what an inode stands for, attributes, trees, open
files and directory handles, the configuration, and the errors (FUSE-agnostic)."""

from __future__ import annotations

import contextvars
import errno
import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from vchunkfs.fs.budget import MemoryBudget
from vchunkfs.presentation.base import Presentation
from vchunkfs.repository import Version
from vchunkfs.repository.snapshot import SnapshotView

ROOT = 1
LONG_TIMEOUT = 24 * 3600.0  # generations never change
SHORT_TIMEOUT = 1.0  # floating nodes follow the repository
TREE, VERSIONS, REFS, TEXT = "tree", "versions", "refs", "text"

# The deadline (trio clock) of the FUSE request the current task serves, set by the
# adapter: every backend call made for the request ends by then (docs/concurrency.md).
REQUEST_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar(
    "vchunkfs_request_deadline", default=math.inf)


@dataclass(frozen=True)
class NodeKey:
    """What an inode stands for."""

    kind: str  # TREE, VERSIONS, REFS or TEXT
    tree: str = ""  # TREE: the tree id ("root", "branch:NAME", "tag:NAME", "snapshot:ID")
    gen: str = ""  # TREE: the snapshot the node belongs to; "" for the floating mount root
    path: str = ""  # TREE: path in the presentation; REFS/TEXT: the directory or file name
    pres: str = ""  # TREE: the presentation; "" for a version's top directory listing several


@dataclass(slots=True)
class Inode:
    ino: int
    key: NodeKey
    parent: int
    name: str
    lookups: int = 0
    # a generation node's attributes (they never change), once known
    attr: Attr | None = None
    reply: Any = None  # the adapter's reply for ``attr``, built once by the adapter


@dataclass(frozen=True)
class Attr:
    """Attributes of one node, FUSE-agnostic. ``ino == 0`` is a cacheable negative entry."""

    ino: int
    is_dir: bool = False
    size: int = 0
    mtime_ns: int = 0
    timeout: float = SHORT_TIMEOUT


@dataclass
class Tree:
    """A version shown as a hierarchy; a branch's tree moves with the branch."""

    id: str
    version: Version
    mtime_ns: int

    @property
    def snapshot_id(self) -> str:
        return self.version.snapshot_id


@dataclass(slots=True)
class OpenFile:
    key: NodeKey
    size: int
    keep_cache: bool
    presentation: Presentation | None = None
    text: bytes | None = None
    cache_key: Hashable = None  # the block cache's key of the file's bytes


@dataclass(slots=True)
class DirHandle:
    """An open directory: its listing, taken once per pass, served by offset."""

    ino: int
    entries: list[tuple[str, NodeKey, Attr]] | None = None
    gen: str = ""  # for a floating tree directory, the generation listed


class Invalidator(Protocol):
    """How the core asks the kernel to forget cached entries (implemented by the adapter)."""

    def invalidate_entry(self, parent: int, name: str) -> None: ...

    def invalidate_inode(self, ino: int) -> None: ...


class StagedSource(Protocol):
    """Uncommitted changes the mount shows under ``.vchunkfs/staged/`` (from the daemon)."""

    def staged_ids(self) -> dict[str, str]:
        """Branch -> id of its current staged state, for branches with changes."""
        ...

    async def staged_view(self, staged_id: str) -> SnapshotView:
        """The view of a staged state (a coroutine for the bridge's loop)."""
        ...


class FsError(Exception):
    """An operation failed with ``errno``; ``message`` is the one line that was logged."""

    def __init__(self, err: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err


@dataclass
class MountConfig:
    """What the core needs of the mount options; the defaults are those of
    :class:`vchunkfs.daemon.options.MountOptions` (a test keeps them equal)."""

    version: str = "main"
    presentation: str = "v3"  # a name, several joined with "+", or "all"
    cache_bytes: int = 1024 * 1024 * 1024  # the memory budget (vchunkfs.fs.budget)
    show_versions: bool = False
    poll_interval: float = 2.0
    control_socket: str | None = None
    prefetch: int = 4  # chunk files fetched ahead of a cold read (run_prefetcher serves them)
    timeout: float | None = 30.0  # seconds any backend call, and any request, may take
    # the repository or an authorized container is not on a local disk: a prefetch
    # window reads the next array's index ahead to go on into it (docs/SEMANTICS.md)
    remote: bool = True
    memory: MemoryBudget | None = None  # the split of cache_bytes, if not the default one
