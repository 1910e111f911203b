"""The inode table and the kernel's lookup counts (docs/concurrency.md, "inodes and
lookup counts"). Trio thread only; nothing here awaits."""

from __future__ import annotations

import errno
from collections import OrderedDict

from vchunkfs.fs.nodes import LONG_TIMEOUT, ROOT, TREE, Attr, FsError, Inode, NodeKey


class InodeTable:
    """Inodes by number and by (key, parent), with the kernel's reference counts.

    A generation node whose count drops to 0 is *retired* (kept, up to
    ``retired_limit``) so that the next lookup of its name answers the same inode.
    """

    def __init__(self, root_key: NodeKey, retired_limit: int) -> None:
        self.retired_limit = retired_limit
        self.nodes: dict[int, Inode] = {ROOT: Inode(ROOT, root_key, ROOT, "", lookups=1)}
        self.by_key: dict[tuple[NodeKey, int], int] = {}
        # (parent inode, name) -> child, for parents inside a generation (whose children
        # never change): a lookup that hits needs no await and no new objects
        self.known: dict[tuple[int, str], Inode] = {}
        self.retired: OrderedDict[int, None] = OrderedDict()
        self._next_ino = ROOT + 1

    def get(self, ino: int) -> Inode | None:
        return self.nodes.get(ino)

    def node(self, ino: int) -> Inode:
        node = self.nodes.get(ino)
        if node is None:
            raise FsError(errno.ESTALE, f"inode {ino} is unknown")
        return node

    def intern(self, key: NodeKey, parent: int, name: str) -> int:
        ino = self.by_key.get((key, parent))
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
            self.nodes[ino] = Inode(ino, key, parent, name)
            self.by_key[(key, parent)] = ino
        return ino

    def add_lookup(self, ino: int, n: int = 1) -> None:
        """Count a reference the kernel now holds (a lookup reply or readdirplus entry)."""
        node = self.nodes.get(ino)
        if node is not None:
            if node.lookups <= 0:
                self.retired.pop(ino, None)
            node.lookups += n

    def forget(self, ino: int, n: int) -> None:
        """The kernel dropped ``n`` references; never raises."""
        node = self.nodes.get(ino)
        if node is None or ino == ROOT:
            return
        node.lookups -= n
        self.drop_if_unreferenced(ino)

    def drop_if_unreferenced(self, ino: int) -> None:
        """Forget an inode the kernel no longer holds (or never received: a rejected
        readdir entry). A generation node is retired instead: kept so that the next
        lookup of its name answers the same inode, and its children stay known."""
        node = self.nodes.get(ino)
        if node is None or node.lookups > 0 or ino == ROOT:
            return
        if node.key.kind == TREE and node.key.gen:
            self.retired[ino] = None
            if len(self.retired) > self.retired_limit:
                self._delete(self.retired.popitem(last=False)[0])
            return
        self._delete(ino)

    def _delete(self, ino: int) -> None:
        node = self.nodes.pop(ino, None)
        if node is None:
            return
        self.by_key.pop((node.key, node.parent), None)
        if self.known.get((node.parent, node.name)) is node:
            del self.known[(node.parent, node.name)]

    def remember(self, pnode: Inode, name: str, ino: int, attr: Attr) -> None:
        """Keep a generation node's attributes for :meth:`lookup_known`."""
        if pnode.key.kind == TREE and pnode.key.gen and attr.timeout == LONG_TIMEOUT:
            node = self.nodes[ino]
            node.attr = attr
            self.known[(pnode.ino, name)] = node

    def lookup_known(self, parent: int, name: str) -> Inode | None:
        """The child ``name`` of a generation directory, if its attributes are known,
        counted as a kernel reference."""
        node = self.known.get((parent, name))
        if node is None:
            return None
        if node.lookups <= 0:
            self.retired.pop(node.ino, None)
            node.lookups = 0
        node.lookups += 1
        return node

    def node_known(self, ino: int) -> Inode | None:
        """The inode if its attributes are known (``attr`` is set)."""
        node = self.nodes.get(ino)
        return node if node is not None and node.attr is not None else None

    @property
    def count(self) -> int:
        """Inodes the kernel holds (or was just sent), retired ones not counted."""
        return len(self.nodes) - len(self.retired)
