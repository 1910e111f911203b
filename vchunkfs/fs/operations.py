"""The pyfuse3 adapter: translates FUSE requests to :class:`Namespace` calls and back."""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
from collections.abc import Awaitable, Sequence

import pyfuse3
import trio

from vchunkfs.fs.namespace import REQUEST_DEADLINE, Attr, FsError, Inode, Invalidator, Namespace

log = logging.getLogger("vchunkfs.fs")

BLKSIZE = 128 * 1024
# a request still running this long after its deadline (a wait that no backend call
# bounds: a bug) is ended with EIO all the same
REQUEST_GRACE = 5.0


class KernelInvalidator(Invalidator):
    """Queues kernel cache invalidations; safe to call from any trio task."""

    def invalidate_entry(self, parent: int, name: str) -> None:
        pyfuse3.invalidate_entry_async(pyfuse3.InodeT(parent), os.fsencode(name),
                                       ignore_enoent=True)

    def invalidate_inode(self, ino: int) -> None:
        try:
            pyfuse3.invalidate_inode(pyfuse3.InodeT(ino), attr_only=False)
        except OSError as e:  # ENOENT: the kernel had nothing cached for it
            if e.errno != errno.ENOENT:
                log.warning("invalidating inode %d: %s", ino, e)


class Operations(pyfuse3.Operations):
    """Read-only FUSE operations over a namespace. Every write gets EROFS."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, namespace: Namespace, uid: int | None = None,
                 gid: int | None = None) -> None:
        super().__init__()
        self.ns = namespace
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        # the only users the control socket accepts (with root), so the only readers of
        # the staged changes made through it, whatever uid= shows for the rest
        self.owner_uid, self.owner_gid = os.getuid(), os.getgid()

    async def _fs[T](self, awaitable: Awaitable[T]) -> T:
        """Run a namespace coroutine for a request, within the request's deadline (the
        mount's ``timeout``): its errors become the request's errno."""
        timeout = self.ns.config.timeout
        token = None
        if timeout is not None:
            token = REQUEST_DEADLINE.set(trio.current_time() + timeout)
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout + REQUEST_GRACE):
                return await awaitable
            log.error("a request ran %g s past its deadline: ended with EIO", REQUEST_GRACE)
            raise pyfuse3.FUSEError(errno.EIO)
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            # a bug or an unexpected engine error: fail this request, keep serving
            log.exception("unexpected error")
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if token is not None:
                REQUEST_DEADLINE.reset(token)

    def _reply(self, node: Inode) -> pyfuse3.EntryAttributes:
        """The entry of a node whose attributes never change, built once per inode
        (pyfuse3 copies it into each reply)."""
        e = node.reply
        if e is None:
            assert node.attr is not None
            e = node.reply = self._entry(node.attr)
        return e  # type: ignore[no-any-return]

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = pyfuse3.InodeT(attr.ino)
        e.entry_timeout = attr.timeout
        e.attr_timeout = attr.timeout
        if attr.ino == 0:
            return e
        if self.ns.is_private(attr.ino):
            # staged changes: owner-only, owned by the user whose control socket made them
            # (the kernel enforces modes: pyfuse3's default options have default_permissions)
            e.st_mode = pyfuse3.ModeT((stat.S_IFDIR | 0o500) if attr.is_dir
                                      else (stat.S_IFREG | 0o400))
            e.st_uid, e.st_gid = self.owner_uid, self.owner_gid
        else:
            e.st_mode = pyfuse3.ModeT((stat.S_IFDIR | 0o555) if attr.is_dir
                                      else (stat.S_IFREG | 0o444))
            e.st_uid, e.st_gid = self.uid, self.gid
        e.st_nlink = 2 if attr.is_dir else 1
        e.st_size = attr.size
        e.st_blksize = BLKSIZE
        e.st_blocks = (attr.size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = attr.mtime_ns
        return e

    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        node = self.ns.lookup_known(parent_inode, text)
        if node is not None:  # a generation's file or directory already looked up
            return self._reply(node)
        if text == ".":
            return await self.getattr(parent_inode, ctx)
        if text == "..":
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        return self._entry(await self._fs(self.ns.lookup(parent_inode, text)))

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for ino, n in inode_list:
            self.ns.forget(ino, n)

    async def getattr(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.ns.node_known(inode)
        if node is not None:
            return self._reply(node)
        return self._entry(await self._fs(self.ns.getattr(inode)))

    async def opendir(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        node = self.ns.node_known(inode)
        attr = node.attr if node is not None else await self._fs(self.ns.getattr(inode))
        assert attr is not None
        if not attr.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        try:
            return pyfuse3.FileHandleT(self.ns.opendir(inode))
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int,
                      token: pyfuse3.ReaddirToken) -> None:
        # entries come from the handle's listing, by offset: each request costs the
        # entries it returns, and a listing never skips or repeats an entry
        def emit(name: str, attr: Attr, next_offset: int) -> bool:
            node = self.ns.node_known(attr.ino)
            entry = self._reply(node) if node is not None else self._entry(attr)
            return bool(pyfuse3.readdir_reply(token, os.fsencode(name), entry, next_offset))

        await self._fs(self.ns.readdir(fh, start_id, emit))

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.ns.releasedir(fh)

    async def open(self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        opened = self.ns.open_known(inode)
        fh, f = opened if opened is not None else await self._fs(self.ns.open(inode))
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=f.keep_cache,
                                direct_io=f.text is not None)

    async def read(self, fh: pyfuse3.FileHandleT, off: int,  # type: ignore[override]
                   size: int) -> bytes | memoryview:
        # pyfuse3 takes any buffer: a cached block goes out without a copy
        data = self.ns.read_cached(fh, off, size)
        if data is not None:
            return data
        return await self._fs(self.ns.read(fh, off, size))

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        self.ns.release(fh)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLKSIZE
        s.f_files = self.ns.inode_count
        s.f_namemax = 255
        return s

    async def getxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT,
                       ctx: pyfuse3.RequestContext) -> bytes:
        value = self.ns.xattr(inode, name.decode(errors="replace"))
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    async def listxattr(self, inode: pyfuse3.InodeT,
                        ctx: pyfuse3.RequestContext) -> Sequence[pyfuse3.XAttrNameT]:
        return [pyfuse3.XAttrNameT(n.encode()) for n in self.ns.xattr_names(inode)]

    # -- every write is refused: the mount changes through its control socket ----

    async def _erofs(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _erofs  # type: ignore[assignment]
    write = create = setxattr = removexattr = _erofs  # type: ignore[assignment]

