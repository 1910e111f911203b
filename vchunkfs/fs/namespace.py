"""The mounted tree, independent of FUSE: inodes, lookups, listings, reads, branch following.

Layout of a mount::

    /                         the chosen version (branch, tag or snapshot), presented
    /.vchunkfs/               the versions directory (hidden from readdir unless asked)
        HEAD                  what the root shows: "branch main" and its snapshot id
        history               the root version's history, like git log
        branches/NAME/        each branch, a complete read-only hierarchy
        tags/NAME/            each tag
        snapshots/ID/         each snapshot reachable from a branch or tag (any id by path)
        staged/NAME/          a branch's uncommitted changes made through the control socket

Inodes name *generations*: a node inside a version's hierarchy is keyed by the
snapshot it was looked up in, so its bytes and attributes never change and
the kernel may cache them for long. When a branch moves, the poller points the
branch's tree at the new snapshot and invalidates the kernel's entries that
lead into the old generation; the next lookup yields new inodes. Files already
open keep reading the snapshot they were opened in. Only the mount root and
the versions directory "float" (their content follows the current state); they
get short timeouts and uncacheable negative lookups.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from cachetools import LRUCache

from vchunkfs.bridge import AsyncioBridge
from vchunkfs.errors import (
    BackendTimeoutError,
    NotFoundError,
    ReadOnlyError,
    UnauthorizedContainerError,
    VchunkfsError,
)
from vchunkfs.fs.blockcache import BlockCache
from vchunkfs.fs.budget import MemoryBudget
from vchunkfs.fs.inodes import InodeTable
from vchunkfs.fs.nodes import (
    LONG_TIMEOUT,
    REFS,
    REQUEST_DEADLINE,
    ROOT,
    SHORT_TIMEOUT,
    TEXT,
    TREE,
    VERSIONS,
    Attr,
    DirHandle,
    FsError,
    Inode,
    Invalidator,
    MountConfig,
    NodeKey,
    OpenFile,
    StagedSource,
    Tree,
)
from vchunkfs.fs.reads import MAX_WINDOW_FACTOR, Reads
from vchunkfs.fs.source import PresentationFactory, VersionSource
from vchunkfs.presentation.base import Presentation, make_presentation
from vchunkfs.presentation.history import render_history
from vchunkfs.presentation.names import canonical_presentations
from vchunkfs.repository import Version
from vchunkfs.repository.names import VERSIONS_DIR
from vchunkfs.repository.repo import Commit
from vchunkfs.repository.snapshot import Entry, SnapshotView, Unknown

log = logging.getLogger("vchunkfs.fs")

__all__ = [  # the core's vocabulary lives in vchunkfs.fs.nodes; importable from here too
    "LONG_TIMEOUT", "MAX_WINDOW_FACTOR", "REFS", "REQUEST_DEADLINE", "ROOT", "SHORT_TIMEOUT",
    "TEXT", "TREE", "VERSIONS", "Attr", "DirHandle", "FsError", "Inode", "Invalidator",
    "MountConfig", "Namespace", "NodeKey", "OpenFile", "StagedSource", "Tree", "errno_for",
]

REF_DIRS = ("branches", "tags", "snapshots", "staged")
TEXT_FILES = ("HEAD", "history")
HISTORY_LIMIT = 10_000
# retired inodes (generation nodes the kernel forgot, kept so that the next lookup of
# the same name needs no new inode), the entry cache and the listings kept are bounded
# by the memory budget's "names" share (vchunkfs.fs.budget)
XATTR_SNAPSHOT = "user.vchunkfs.snapshot"
XATTR_VERSION = "user.vchunkfs.version"
XATTR_STATS = "user.vchunkfs.stats"
XATTR_SOCKET = "user.vchunkfs.control_socket"




@dataclass
class _Generation:
    view: SnapshotView
    mtime_ns: int
    presentations: dict[str, Presentation]
    factory: PresentationFactory = make_presentation

    def presentation(self, name: str) -> Presentation:
        pres = self.presentations.get(name)
        if pres is None:
            pres = self.presentations[name] = self.factory(name, self.view)
        return pres


class Namespace:
    """The mount's tree. All methods run in the trio thread."""

    def __init__(self, source: VersionSource, bridge: AsyncioBridge, config: MountConfig,
                 staged: StagedSource | None = None,
                 presentation_factory: PresentationFactory = make_presentation) -> None:
        self.source = source
        self.presentation_factory = presentation_factory
        self.staged = staged
        self.bridge = bridge
        self.config = config
        self.memory = config.memory or MemoryBudget.split(config.cache_bytes)
        self.cache = BlockCache(self.memory.blocks)
        self.reads = Reads(self.cache, config.prefetch, self._call, self._pcall, self._tcall,
                           remote=config.remote)
        self.presentations = canonical_presentations(config.presentation)
        # with one presentation every tree node has it; with several, a version's top
        # directory lists one subdirectory per presentation (nodes with pres "")
        self._top_pres = self.presentations[0] if len(self.presentations) == 1 else ""
        self._trees: dict[str, Tree] = {}
        self._generations: LRUCache[str, _Generation] = LRUCache(64)
        # (generation, path) -> entry or None: generations never change, and a hit
        # saves a round trip through the bridge (0.1-0.3 ms) on lookup, getattr, open
        self._entries: LRUCache[tuple[str, str, str], Entry | None] = LRUCache(
            self.memory.entry_cache)
        self._dirs: dict[int, DirHandle] = {}
        # listings of generation directories (they never change), bounded in entries
        self._listings: LRUCache[tuple[str, str, str], list[tuple[str, NodeKey, Attr]]] = \
            LRUCache(self.memory.listing_entries,
                     getsizeof=lambda entries: max(len(entries), 1))
        self._next_fh = 1
        # one poll at a time (the poller and control requests both poll)
        self._poll_lock = trio.Lock()
        self.inodes = InodeTable(NodeKey(TREE, "root", "", "", self._top_pres),
                                 self.memory.retired_inodes)

    # -- set-up -------------------------------------------------------------

    async def start(self) -> Tree:
        """Resolve the root version (raises the repository layer's errors)."""
        version = await self._call(lambda: self.source.resolve(self.config.version),
                                   f"resolve version {self.config.version}")
        tree = await self._make_tree("root", version)
        return tree

    async def _call[T](self, fn: Callable[[], Awaitable[T]], what: str = "") -> T:
        """Await ``fn()`` on the bridge's loop, within the mount's deadline and the
        current request's (:class:`~vchunkfs.errors.BackendTimeoutError` naming
        ``what`` after it)."""
        timeout = self.config.timeout
        if timeout is not None:
            timeout = min(timeout, REQUEST_DEADLINE.get() - trio.current_time())
        return await self.bridge.call(fn, timeout, what)

    async def _make_tree(self, tree_id: str, version: Version) -> Tree:
        gen = await self._generation(version.snapshot_id)
        existing = self._trees.get(tree_id)
        if existing is not None:  # made by another task meanwhile: the poller moves that one
            return existing
        tree = Tree(tree_id, version, gen.mtime_ns)
        self._trees[tree_id] = tree
        return tree

    async def _generation(self, snapshot_id: str) -> _Generation:
        gen = self._generations.get(snapshot_id)
        if gen is None and snapshot_id.startswith("staged-") and self.staged is not None:
            staged = self.staged
            view = await self._pcall(lambda: staged.staged_view(snapshot_id), snapshot_id,
                                     "open staged state")
            gen = _Generation(view, time.time_ns(), {}, self.presentation_factory)
            self._generations[snapshot_id] = gen
        if gen is None:
            view = await self._pcall(lambda: self.source.view(snapshot_id), snapshot_id,
                                     "open snapshot")
            written = await self._pcall(lambda: self.source.written_at_ns(snapshot_id),
                                        snapshot_id, "look up snapshot")
            gen = _Generation(view, written, {}, self.presentation_factory)
            self._generations[snapshot_id] = gen
        return gen

    async def _tree(self, tree_id: str) -> Tree | None:
        """The tree for an id, created on first use; None if the ref does not exist."""
        tree = self._trees.get(tree_id)
        if tree is not None:
            return tree
        kind, _, name = tree_id.partition(":")
        if kind == "branch":
            refs = await self._pcall(self.source.branches, "branches", "list")
        elif kind == "tag":
            refs = await self._pcall(self.source.tags, "tags", "list")
        elif kind == "staged":
            refs = self.staged.staged_ids() if self.staged else {}
        else:
            refs = {s: s for s in await self._snapshot_ids() if s == name}
        if name not in refs:
            return None
        version = Version(refs[name], kind, name)
        return await self._make_tree(tree_id, version)

    async def _snapshot_ids(self) -> set[str]:
        return await self._pcall(self.source.snapshot_ids, "snapshots", "list")

    # -- inode table (vchunkfs.fs.inodes) -------------------------------------------

    def add_lookup(self, ino: int, n: int = 1) -> None:
        """Count a reference the kernel now holds (a lookup reply or readdirplus entry)."""
        self.inodes.add_lookup(ino, n)

    def forget(self, ino: int, n: int) -> None:
        """The kernel dropped ``n`` references; never raises."""
        self.inodes.forget(ino, n)

    def drop_if_unreferenced(self, ino: int) -> None:
        self.inodes.drop_if_unreferenced(ino)

    def is_private(self, ino: int) -> bool:
        """Whether only the daemon's user (and root) may read the node: ``staged/`` and
        everything under it, a user's uncommitted changes, whatever the mount options."""
        node = self.inodes.nodes.get(ino)
        if node is None:
            return False
        k = node.key
        return (k.kind == TREE and k.tree.startswith("staged:")) or (
            k.kind == REFS and k.path == "staged")

    @property
    def inode_count(self) -> int:
        """Inodes the kernel holds (or was just sent), retired ones not counted."""
        return self.inodes.count

    # -- fast paths: synchronous, for requests answered from memory -------------------
    # Each returns None when it cannot answer; then the adapter calls the coroutine.

    def lookup_known(self, parent: int, name: str) -> Inode | None:
        """The child ``name`` of a generation directory, if its attributes are known
        (its ``attr``), counted as a kernel reference like :meth:`lookup`."""
        return self.inodes.lookup_known(parent, name)

    def node_known(self, ino: int) -> Inode | None:
        """The inode if its attributes are known (``attr`` is set)."""
        return self.inodes.node_known(ino)

    def open_known(self, ino: int) -> tuple[int, OpenFile] | None:
        """:meth:`open` of a generation file whose attributes are known."""
        node = self.inodes.nodes.get(ino)
        if node is None or node.attr is None or node.attr.is_dir:
            return None
        key = node.key
        gen = self._generations.get(key.gen)
        if gen is None:
            return None
        pres = gen.presentation(key.pres)
        return self.reads.add_file(OpenFile(key, node.attr.size, True, pres,
                                       cache_key=(key.gen, pres.name, key.path)))

    # -- open files and reads (vchunkfs.fs.reads) ------------------------------------

    def read_cached(self, fh: int, offset: int, length: int) -> bytes | memoryview | None:
        """:meth:`read` of a file whose block is in the cache, without copying it."""
        return self.reads.read_cached(fh, offset, length)

    async def read(self, fh: int, offset: int, length: int) -> bytes | memoryview:
        """Bytes of an open file: ``bytes``, or a ``memoryview`` of a cached block."""
        return await self.reads.read(fh, offset, length)

    def release(self, fh: int) -> None:
        self.reads.release(fh)

    async def run_prefetcher(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        """Serve prefetches until cancelled (at unmount): see :class:`Reads`."""
        await self.reads.run_prefetcher(task_status)

    # -- operations -----------------------------------------------------------

    async def lookup(self, parent: int, name: str) -> Attr:
        """Attributes of ``name`` in ``parent``, counted as a kernel reference.

        A missing name is ``Attr(ino=0)`` (a negative entry the kernel may cache)
        inside a generation, and ``FsError(ENOENT)`` under floating directories.
        """
        pnode = self.inodes.node(parent)
        child = await self._child_key(pnode, name)
        if child is None:
            if pnode.key.kind == TREE and pnode.key.gen:
                return Attr(0, timeout=LONG_TIMEOUT)
            raise FsError(errno.ENOENT)
        ino = self.inodes.intern(child, parent, name)
        try:
            attr = await self._attr(ino, child)
        except BaseException:
            self.drop_if_unreferenced(ino)
            raise
        self.inodes.remember(pnode, name, ino, attr)
        self.add_lookup(ino)
        return attr

    async def getattr(self, ino: int) -> Attr:
        node = self.inodes.node(ino)
        return await self._attr(ino, node.key)

    # -- directory listings: one snapshot per handle, served by offset ----------------

    def opendir(self, ino: int) -> int:
        """A directory handle; its listing is taken at the first :meth:`readdir` from
        offset 0 (and again at each rewind) and served by offset from then on."""
        self.inodes.node(ino)
        dh = self._next_fh
        self._next_fh += 1
        self._dirs[dh] = DirHandle(ino)
        return dh

    def releasedir(self, dh: int) -> None:
        self._dirs.pop(dh, None)

    async def readdir(self, dh: int, start: int,
                      emit: Callable[[str, Attr, int], bool]) -> None:
        """Offer the handle's entries from offset ``start`` to ``emit`` (with the offset
        after the entry: its index + 1) until it refuses one. An inode is made only for an
        entry offered, counted as a kernel reference only when ``emit`` accepted it."""
        handle = self._dirs.get(dh)
        if handle is None:
            raise FsError(errno.EBADF)
        if start == 0 or handle.entries is None:
            handle.entries, handle.gen = await self._list(handle.ino)
        entries = handle.entries
        parent = self.inodes.nodes.get(handle.ino)
        if parent is None:
            raise FsError(errno.ESTALE, f"inode {handle.ino} is unknown")
        # a floating directory whose version moved since the listing was taken: its
        # entries (of the listed generation) must not be cached by the kernel for long
        stale = bool(handle.gen) and handle.gen != self._floating_gen(parent)
        for i in range(start, len(entries)):
            name, key, a = entries[i]
            if not key.path:
                key, a = self._current_ref(key, a)
            cino = self.inodes.intern(key, handle.ino, name)
            known = self.inodes.nodes[cino].attr
            if known is not None and not stale:
                attr = known  # a generation node listed or looked up before
            elif stale and a.timeout == LONG_TIMEOUT:
                attr = Attr(cino, a.is_dir, a.size, a.mtime_ns, SHORT_TIMEOUT)
            else:
                attr = Attr(cino, a.is_dir, a.size, a.mtime_ns, a.timeout)
                self.inodes.remember(parent, name, cino, attr)
            if not emit(name, attr, i + 1):
                self.drop_if_unreferenced(cino)
                return
            self.add_lookup(cino)

    def _floating_gen(self, node: Inode) -> str:
        """The generation a floating tree directory shows now ("" for others)."""
        k = node.key
        if k.kind == TREE and not k.gen:
            tree = self._trees.get(k.tree)
            return tree.snapshot_id if tree is not None else ""
        return ""

    def _current_ref(self, key: NodeKey, attr: Attr) -> tuple[NodeKey, Attr]:
        """A version's top directory (under ``branches/`` …) as of now: its tree may have
        moved since the listing was taken."""
        if key.kind == TREE and key.gen and not key.path and key.tree != "root":
            tree = self._trees.get(key.tree)
            if tree is not None and tree.snapshot_id != key.gen:
                return (dataclasses.replace(key, gen=tree.snapshot_id),
                        dataclasses.replace(attr, mtime_ns=tree.mtime_ns))
        return key, attr

    async def listdir(self, ino: int) -> list[tuple[str, NodeKey, Attr]]:
        """Every entry of a directory with its inode (for tests and tools; FUSE lists
        through :meth:`opendir` and :meth:`readdir`). Entries are counted as references."""
        out: list[tuple[str, NodeKey, Attr]] = []
        dh = self.opendir(ino)
        try:
            def take(name: str, attr: Attr, _next: int) -> bool:
                out.append((name, self.inodes.nodes[attr.ino].key, attr))
                return True
            await self.readdir(dh, 0, take)
        finally:
            self.releasedir(dh)
        return out

    async def _list(self, ino: int) -> tuple[list[tuple[str, NodeKey, Attr]], str]:
        """A directory's entries, attributes without inodes (``ino`` 0), and the generation
        a floating tree directory showed ("" for the others)."""
        node = self.inodes.node(ino)
        key = node.key
        out: list[tuple[str, NodeKey, Attr]] = []
        if key.kind == TREE:
            gen_id = key.gen or await self._current_gen(key.tree)
            gen = await self._generation(gen_id)
            if not key.pres:
                for name in self.presentations:
                    child = NodeKey(TREE, key.tree, gen_id, "", name)
                    out.append((name, child, Attr(0, True, 0, gen.mtime_ns, LONG_TIMEOUT)))
            else:
                pres = gen.presentation(key.pres)
                cached = self._listings.get((gen_id, key.pres, key.path))
                if cached is not None:
                    out = cached.copy()
                else:
                    entries = await self._pcall(lambda: pres.list_dir(key.path), key.path,
                                                "list")
                    for e in entries:
                        child = NodeKey(TREE, key.tree, gen_id, _join(key.path, e.name),
                                        key.pres)
                        self._entries[(gen_id, key.pres, child.path)] = e
                        out.append((e.name, child,
                                    Attr(0, e.is_dir, e.size, gen.mtime_ns, LONG_TIMEOUT)))
                    if len(out) <= self.memory.listing_entries:
                        self._listings[(gen_id, key.pres, key.path)] = out.copy()
                # a walk lists before it reads: its first chunk files start on their way
                self.reads.listed(pres, gen_id, ((child.path, a.size)
                                                 for _, child, a in out if not a.is_dir))
            if ino == ROOT and self.config.show_versions:
                vkey = NodeKey(VERSIONS)
                out.append((VERSIONS_DIR, vkey, await self._attr(0, vkey)))
            return out, "" if key.gen else gen_id
        if key.kind == VERSIONS:
            names = [(n, NodeKey(REFS, path=n)) for n in REF_DIRS]
            names += [(n, NodeKey(TEXT, path=n)) for n in TEXT_FILES]
        elif key.kind == REFS:
            refs = await self._ref_names(key.path)
            names = [(n, NodeKey(TREE, f"{_tree_kind(key.path)}:{n}", "", "")) for n in refs]
        else:
            raise FsError(errno.ENOTDIR)
        for name, child in names:
            if child.kind == TREE:
                tree = await self._tree(child.tree)
                if tree is None:
                    continue  # deleted while listing
                child = NodeKey(TREE, child.tree, tree.snapshot_id, "", self._top_pres)
            out.append((name, child, await self._attr(0, child)))
        return out, ""

    async def open(self, ino: int) -> tuple[int, OpenFile]:
        node = self.inodes.node(ino)
        key = node.key
        if key.kind == TEXT:
            f = OpenFile(key, 0, keep_cache=False, text=await self._text(key.path))
            f.size = len(f.text or b"")
        elif key.kind == TREE and key.gen and key.pres:
            pres = (await self._generation(key.gen)).presentation(key.pres)
            entry = await self._stat(key.gen, key.pres, key.path)
            if entry is None:
                raise FsError(errno.ENOENT)
            if entry.is_dir:
                raise FsError(errno.EISDIR)
            f = OpenFile(key, entry.size, keep_cache=True, presentation=pres,
                         cache_key=(key.gen, pres.name, key.path))
        else:
            raise FsError(errno.EISDIR)
        return self.reads.add_file(f)

    def xattr(self, ino: int, name: str) -> bytes | None:
        """Extended attributes: which snapshot and version a node belongs to."""
        node = self.inodes.nodes.get(ino)
        if ino == ROOT and name == XATTR_STATS:
            return json.dumps(self.stats()).encode()
        if ino == ROOT and name == XATTR_SOCKET and self.config.control_socket:
            return self.config.control_socket.encode()
        if node is None or node.key.kind != TREE:
            return None
        tree = self._trees.get(node.key.tree)
        if name == XATTR_SNAPSHOT:
            gen = node.key.gen or (tree.snapshot_id if tree else "")
            return gen.encode() or None
        if name == XATTR_VERSION and tree is not None:
            return f"{tree.version.kind} {tree.version.name}".encode()
        return None

    def xattr_names(self, ino: int) -> list[str]:
        node = self.inodes.nodes.get(ino)
        names = [XATTR_SNAPSHOT, XATTR_VERSION] if node and node.key.kind == TREE else []
        if ino == ROOT:
            names.append(XATTR_STATS)
            if self.config.control_socket:
                names.append(XATTR_SOCKET)
        return names

    def root_version(self) -> Version:
        return self._trees["root"].version

    def stats(self) -> dict[str, int | float]:
        """Counters of the block cache, the prefetcher and the inode table, for tests and
        operators (docs/SEMANTICS.md, "Seeing why a mount is slow")."""
        c = self.cache.stats
        return {"cache_hits": c.hits, "cache_misses": c.misses, "cache_coalesced": c.coalesced,
                "fetches": c.misses + c.prefetched, "fetched_bytes": c.fetched_bytes,
                "prefetched": c.prefetched, "prefetch_used": c.prefetch_used,
                "prefetch_wasted": c.prefetch_wasted,
                "prefetch_wasted_bytes": c.prefetch_wasted_bytes,
                "in_flight": self.cache.inflight_count,
                "read_wait_seconds": round(self.reads.wait_seconds, 3),
                "local_fetches": self.reads.local_fetches,
                "listing_streams": self.reads.listing_streams,
                "cache_bytes": self.cache.current_bytes,
                "inodes": self.inode_count, "open_files": len(self.reads.files)}

    # -- attributes and children ----------------------------------------------

    async def _attr(self, ino: int, key: NodeKey) -> Attr:
        if key.kind == VERSIONS or key.kind == REFS:
            return Attr(ino, True, 0, self._root_mtime(), SHORT_TIMEOUT)
        if key.kind == TEXT:
            return Attr(ino, False, len(await self._text(key.path)), self._root_mtime(),
                        SHORT_TIMEOUT)
        if not key.gen:  # the floating mount root
            tree = self._trees["root"]
            return Attr(ino, True, 0, tree.mtime_ns, SHORT_TIMEOUT)
        gen = await self._generation(key.gen)
        if not key.pres:  # a version's top directory, listing presentations
            return Attr(ino, True, 0, gen.mtime_ns, LONG_TIMEOUT)
        entry = await self._stat(key.gen, key.pres, key.path)
        if entry is None:
            raise FsError(errno.ENOENT)
        return Attr(ino, entry.is_dir, entry.size, gen.mtime_ns, LONG_TIMEOUT)

    async def _stat(self, gen_id: str, pres_name: str, path: str) -> Entry | None:
        """The presentation's entry for ``path`` in a generation, cached."""
        cache_key = (gen_id, pres_name, path)
        if cache_key in self._entries:
            return self._entries[cache_key]
        pres = (await self._generation(gen_id)).presentation(pres_name)
        known = pres.stat_known(path)  # directories and absent names: no bridge crossing
        if not isinstance(known, Unknown):
            self._entries[cache_key] = known
            return known
        entry = await self._pcall(lambda: pres.stat(path), path, "stat")
        self._entries[cache_key] = entry
        return entry

    def _root_mtime(self) -> int:
        return self._trees["root"].mtime_ns

    async def _current_gen(self, tree_id: str) -> str:
        tree = await self._tree(tree_id)
        if tree is None:
            raise FsError(errno.ENOENT)
        return tree.snapshot_id

    async def _child_key(self, pnode: Inode, name: str) -> NodeKey | None:
        key = pnode.key
        if key.kind == TREE:
            if pnode.ino == ROOT and name == VERSIONS_DIR:
                return NodeKey(VERSIONS)
            gen_id = key.gen or await self._current_gen(key.tree)
            if not key.pres:
                return (NodeKey(TREE, key.tree, gen_id, "", name)
                        if name in self.presentations else None)
            path = _join(key.path, name)
            entry = await self._stat(gen_id, key.pres, path)
            return None if entry is None else NodeKey(TREE, key.tree, gen_id, path, key.pres)
        if key.kind == VERSIONS:
            if name in REF_DIRS:
                return NodeKey(REFS, path=name)
            return NodeKey(TEXT, path=name) if name in TEXT_FILES else None
        if key.kind == REFS:
            tree = await self._tree(f"{_tree_kind(key.path)}:{name}")
            return None if tree is None else NodeKey(TREE, tree.id, tree.snapshot_id, "",
                                                     self._top_pres)
        return None

    async def _ref_names(self, which: str) -> list[str]:
        if which == "branches":
            return list(await self._pcall(self.source.branches, "branches", "list"))
        if which == "tags":
            return list(await self._pcall(self.source.tags, "tags", "list"))
        if which == "staged":
            return sorted(self.staged.staged_ids()) if self.staged else []
        return sorted(await self._snapshot_ids())

    async def _text(self, name: str) -> bytes:
        tree = self._trees["root"]
        v = tree.version
        if name == "HEAD":
            return f"{v.kind} {v.name}\nsnapshot {v.snapshot_id}\n".encode()

        async def commits() -> list[Commit]:
            return await self.source.history(v.snapshot_id, HISTORY_LIMIT)

        labels: dict[str, list[str]] = {}
        branches = await self._pcall(self.source.branches, "branches", "list")
        tags = await self._pcall(self.source.tags, "tags", "list")
        for kind, refs in (("branch", branches), ("tag", tags)):
            for n, sid in refs.items():
                labels.setdefault(sid, []).append(f"{kind} {n}")
        return render_history(await self._pcall(commits, "history", "read"), labels).encode()

    async def _tcall[T](self, fn: Callable[[], T], path: str, op: str = "",
                        quiet: bool = False) -> T:
        """Run the blocking ``fn()`` in a trio worker thread, within the deadlines of
        :meth:`_call`, with the errors of :meth:`_pcall` (not logged if ``quiet``). At
        the deadline the thread is abandoned (its result dropped) and
        :class:`~vchunkfs.errors.BackendTimeoutError` is raised."""
        what = op if path in op else f"{op} {path}".strip()
        timeout = self.config.timeout
        if timeout is not None:
            timeout = max(0.0, min(timeout, REQUEST_DEADLINE.get() - trio.current_time()))
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
            raise BackendTimeoutError(what, timeout or 0.0)
        except VchunkfsError as e:
            err = errno_for(e)
            if err != errno.ENOENT and not quiet:
                log.warning("%s: %s", path or "/", e)
            raise FsError(err, str(e)) from e
        except Exception as e:
            if not quiet:
                log.warning("%s: %s", path or "/", _first_line(e))
            raise FsError(errno.EIO, str(e)) from e

    async def _pcall[T](self, fn: Callable[[], Awaitable[T]], path: str, op: str = "") -> T:
        """Call the presentation through the bridge; map errors to errnos, log once."""
        try:
            return await self._call(fn, op if path in op else f"{op} {path}".strip())
        except VchunkfsError as e:
            err = errno_for(e)
            if err != errno.ENOENT:  # absence is an answer, not a failure: not logged
                log.warning("%s: %s", path or "/", e)
            raise FsError(err, str(e)) from e
        except Exception as e:
            log.warning("%s: %s", path or "/", _first_line(e))
            raise FsError(errno.EIO, str(e)) from e

    # -- following branches ---------------------------------------------------

    async def poll_branches(self, invalidator: Invalidator) -> list[str]:
        """Move branch trees whose branch moved; return the ids of the trees that changed.

        Never raises (but ``trio.Cancelled``): a failure is logged, and what could not
        be moved is retried at the next poll. One poll runs at a time: a second caller
        waits for the running one, then polls again (the heads it reads are newer).
        """
        async with self._poll_lock:
            try:
                return await self._poll_branches(invalidator)
            except Exception as e:
                log.warning("polling the branches failed (retried at the next poll): %s",
                            _first_line(e))
                return []

    async def _poll_branches(self, invalidator: Invalidator) -> list[str]:
        moving = [t for t in self._trees.values() if t.version.moves]
        if not moving:
            return []
        heads: dict[str, str] = {}
        if any(t.version.kind == "branch" for t in moving):
            try:
                heads = await self._call(self.source.branches, "list branches")
            except Exception as e:  # the backend may be down for a while: keep serving
                log.warning("cannot poll branches: %s", _first_line(e))
                moving = [t for t in moving if t.version.kind != "branch"]
        staged = self.staged.staged_ids() if self.staged else {}
        if any(heads.get(t.version.name, t.snapshot_id) != t.snapshot_id
               for t in moving if t.version.kind == "branch"):
            # a writer that moved a branch may also have added containers
            try:
                if await self._call(self.source.reload_config, "reload the repository config"):
                    log.info("virtual chunk containers changed: %s",
                             ", ".join(self.source.container_prefixes()))
            except Exception as e:
                log.warning("cannot reload the repository config: %s", _first_line(e))
        changed = []
        for tree in moving:
            kind = tree.version.kind
            new = (staged if kind == "staged" else heads).get(tree.version.name)
            if new == tree.snapshot_id:
                continue
            old = tree.snapshot_id
            if self._trees.get(tree.id) is not tree:
                continue  # dropped meanwhile
            if new is None:
                if tree.id == "root":
                    log.warning("branch %s was deleted; the root keeps showing %s",
                                tree.version.name, old)
                    continue
                del self._trees[tree.id]
            else:
                try:
                    gen = await self._generation(new)
                except FsError:  # logged; its snapshot unreadable: keep the old, retry
                    continue
                if self._trees.get(tree.id) is not tree or tree.snapshot_id != old:
                    continue  # changed meanwhile (re-check after await)
                tree.version = Version(new, kind, tree.version.name)
                tree.mtime_ns = gen.mtime_ns
            if kind == "branch":
                log.info("branch %s moved %s -> %s", tree.version.name, old, new)
            changed.append(tree.id)
            if all(t.snapshot_id != old for t in self._trees.values()):
                self.reads.drop_generation(old)  # nobody follows it now: stop fetching ahead
            try:
                self._invalidate_generation(tree.id, old, invalidator)
            except Exception as e:  # the kernel keeps stale entries until they time out
                log.warning("invalidating the kernel's entries of %s: %s", tree.id,
                            _first_line(e))
        return changed

    def _invalidate_generation(self, tree_id: str, gen: str, invalidator: Invalidator) -> None:
        for node in list(self.inodes.nodes.values()):
            k = node.key
            if k.kind != TREE or k.tree != tree_id or k.gen != gen or node.lookups <= 0:
                continue  # retired nodes have no kernel entry
            parent = self.inodes.nodes.get(node.parent)
            if parent is None or parent.key.tree != tree_id or parent.key.gen != gen:
                invalidator.invalidate_entry(node.parent, node.name)
        if tree_id == "root":
            invalidator.invalidate_inode(ROOT)

    async def run_poller(self, invalidator: Invalidator,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll the branches every ``poll_interval`` until cancelled; never ends the mount."""
        task_status.started()
        while True:
            await trio.sleep(self.config.poll_interval)
            try:
                await self.poll_branches(invalidator)
            except Exception:  # poll_branches logs its own failures: this is a bug
                log.exception("the branch poller failed; it goes on")


def errno_for(e: VchunkfsError) -> int:
    """The errno a failed read or lookup reports."""
    if isinstance(e, UnauthorizedContainerError):
        return errno.EACCES
    if isinstance(e, NotFoundError):
        # ENOENT only where the repository answered "no such thing"; an absence that
        # comes from a failure (an engine error under it) would hide stored data: EIO
        cause = e.__cause__
        return errno.ENOENT if cause is None or isinstance(cause, VchunkfsError) else errno.EIO
    if isinstance(e, ReadOnlyError):
        return errno.EROFS
    # changed or missing source, a manifest or snapshot missing or damaged, any backend
    # failure: never wrong bytes, never fill values for a chunk that is stored
    return errno.EIO


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _tree_kind(refs_dir: str) -> str:
    return {"branches": "branch", "tags": "tag", "snapshots": "snapshot",
            "staged": "staged"}[refs_dir]


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name

