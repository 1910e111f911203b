#!/usr/bin/env python3
"""A do-nothing read-only pyfuse3 + trio filesystem: the ceiling of any pyfuse3 daemon here.

It loads every regular file under SRC_DIR (a flat or nested directory, e.g. the
chunk files of a Zarr array) into memory and serves that tree, read-only, with
the settings vchunkfs uses for chunk files: ``keep_cache`` on every open, long
entry and attribute timeouts, readdirplus, the same pyfuse3 main loop. A read is
a memoryview slice of bytes already in memory, so whatever a benchmark measures
here is the cost of FUSE, pyfuse3 and trio alone.

Usage::

    python scripts/bench/nullfs.py SRC_DIR MOUNTPOINT [--workers 64] [--read-ahead-kb 0]

It runs in the foreground, prints ``ready`` once the mount answers, and unmounts
on SIGTERM, SIGINT or ``fusermount3 -u MOUNTPOINT``.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

TIMEOUT = 24 * 3600.0  # nothing here ever changes
BLKSIZE = 128 * 1024


@dataclass
class Node:
    ino: int
    data: bytes | None = None  # None: a directory
    children: dict[bytes, int] = field(default_factory=dict)
    names: list[bytes] = field(default_factory=list)  # sorted, for readdir


def load_tree(src: Path) -> dict[int, Node]:
    """Inodes of the tree under ``src`` with every file's bytes in memory."""
    nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE)}

    def add(directory: Path, node: Node) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            ino = len(nodes) + pyfuse3.ROOT_INODE
            if entry.is_dir(follow_symlinks=False):
                child = Node(ino)
                nodes[ino] = child
                add(Path(entry.path), child)
            elif entry.is_file(follow_symlinks=False):
                nodes[ino] = Node(ino, Path(entry.path).read_bytes())
            else:
                continue
            name = os.fsencode(entry.name)
            node.children[name] = ino
            node.names.append(name)

    add(src, nodes[pyfuse3.ROOT_INODE])
    return nodes


class NullFs(pyfuse3.Operations):
    """Serves a tree held in memory; every write is refused."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, nodes: dict[int, Node]) -> None:
        super().__init__()
        self.nodes = nodes
        self.uid = os.getuid()
        self.gid = os.getgid()

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = pyfuse3.InodeT(node.ino)
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        size = 0 if node.data is None else len(node.data)
        e.st_mode = pyfuse3.ModeT((stat.S_IFDIR | 0o555) if node.data is None
                                  else (stat.S_IFREG | 0o444))
        e.st_nlink = 2 if node.data is None else 1
        e.st_uid = self.uid
        e.st_gid = self.gid
        e.st_size = size
        e.st_blksize = BLKSIZE
        e.st_blocks = (size + 511) // 512
        return e

    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino = self._node(parent_inode).children.get(name)
        if ino is None:  # a negative entry the kernel may keep
            e = pyfuse3.EntryAttributes()
            e.st_ino = pyfuse3.InodeT(0)
            e.entry_timeout = TIMEOUT
            return e
        return self._entry(self.nodes[ino])

    async def getattr(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self._node(inode))

    async def opendir(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        if self._node(inode).data is not None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int,
                      token: pyfuse3.ReaddirToken) -> None:
        node = self._node(fh)
        for i in range(start_id, len(node.names)):
            name = node.names[i]
            if not pyfuse3.readdir_reply(token, name, self._entry(self.nodes[node.children[name]]),
                                         i + 1):
                return

    async def open(self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if self._node(inode).data is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=True)

    async def read(self, fh: pyfuse3.FileHandleT, off: int,  # type: ignore[override]
                   size: int) -> memoryview:
        # pyfuse3 takes any buffer (it calls PyObject_GetBuffer): no copy of the slice
        data = self.nodes[fh].data
        assert data is not None
        return memoryview(data)[off:off + size]

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLKSIZE
        s.f_files = len(self.nodes)
        s.f_namemax = 255
        return s


def set_read_ahead(mountpoint: str, kb: int) -> None:
    """Set the mount's read-ahead once the kernel has its INIT reply.

    A write before then is clamped by the kernel to the read-ahead it offered in
    INIT (128 KiB by default); ``os.stat`` of the mountpoint returns only after
    INIT, so it is both the wait and the way to the device number.
    """
    st = os.stat(mountpoint)
    path = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    if kb > 0:
        try:
            path.write_text(f"{kb}\n")
        except OSError as e:
            print(f"nullfs: read_ahead_kb left at the kernel default: {e}", file=sys.stderr)


async def serve(mountpoint: str, workers: int, read_ahead_kb: int) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    pyfuse3.terminate()
                    return

            async def report_ready() -> None:
                await trio.to_thread.run_sync(set_read_ahead, mountpoint, read_ahead_kb)
                print("ready", flush=True)

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(report_ready)
            await pyfuse3.main(min_tasks=2, max_tasks=workers)
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="directory whose files are served")
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--workers", type=int, default=64, help="most requests served at once")
    p.add_argument("--read-ahead-kb", type=int, default=0,
                   help="kernel read-ahead of the mount (0: the kernel default)")
    args = p.parse_args(argv)
    nodes = load_tree(args.src)
    mountpoint = str(args.mountpoint.resolve())
    options = set(pyfuse3.default_options) | {"ro", "fsname=nullfs", "subtype=nullfs"}
    pyfuse3.init(NullFs(nodes), mountpoint, options)
    try:
        trio.run(serve, mountpoint, args.workers, args.read_ahead_kb)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
