"""Open files, reads through the block cache, and the prefetcher (docs/concurrency.md,
"states of a fetch and of a prefetch"). Trio thread only."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol

import trio

from vchunkfs.fs.blockcache import BLOCK_SIZE, BlockCache, read_blocks, slice_block
from vchunkfs.fs.nodes import FsError, OpenFile
from vchunkfs.presentation.base import Presentation

log = logging.getLogger("vchunkfs.fs")

# on a cold read of a chunk file, fetch the array's next chunk files (``prefetch`` of
# them) into the block cache, through the same icechunk get as any read, with at most
# PREFETCH_WORKERS at once: the fetches overlap the reader's requests
PREFETCH_WORKERS = 4


class Call(Protocol):
    async def __call__(self, fn: Callable[[], Awaitable[Any]], what: str = "") -> Any: ...


class PCall(Protocol):
    async def __call__(self, fn: Callable[[], Awaitable[Any]], path: str,
                       op: str = "") -> Any: ...


class Reads:
    """The open files of a mount and their bytes: ``call``/``pcall`` cross the bridge
    (with the deadline; ``pcall`` also maps errors to errnos and logs them)."""

    def __init__(self, cache: BlockCache, prefetch: int, call: Call, pcall: PCall) -> None:
        self.cache = cache
        self.prefetch = prefetch
        self.call = call
        self.pcall = pcall
        self.files: dict[int, OpenFile] = {}
        self._next_fh = 1
        self.prefetch_send: trio.MemorySendChannel[tuple[Hashable, Presentation, str, int]] \
            | None = None
        # queued or fetched, not yet read -> size
        self.prefetching: dict[Hashable, int] = {}
        self.wait_seconds = 0.0  # time reads spent waiting for bytes not in the cache

    def read_cached(self, fh: int, offset: int, length: int) -> bytes | memoryview | None:
        """:meth:`read` of a file whose block is in the cache, without copying it."""
        f = self.files.get(fh)
        if f is None or f.text is not None or f.size > BLOCK_SIZE:
            return None
        key = f.cache_key
        if self.prefetching and key in self.prefetching:
            return None  # the first read of a prefetched file moves the window on
        block = self.cache.peek(key)
        if block is None:
            return None
        end = min(f.size, offset + length)
        return slice_block(block, offset, end) if offset < end else b""

    def add_file(self, f: OpenFile) -> tuple[int, OpenFile]:
        fh = self._next_fh
        self._next_fh += 1
        self.files[fh] = f
        return fh, f

    async def read(self, fh: int, offset: int, length: int) -> bytes | memoryview:
        """Bytes of an open file: ``bytes``, or a ``memoryview`` of a cached block."""
        f = self.files.get(fh)
        if f is None:
            raise FsError(errno.EBADF)
        if f.text is not None:
            return f.text[offset:offset + length]
        pres = f.presentation
        assert pres is not None
        path = f.key.path

        async def fetch(off: int, n: int) -> bytes:
            return await self._fetch(pres, path, off, n)

        cache_key = f.cache_key
        # read ahead when this read fetches (a cold file) or is the first of a prefetched one
        ahead = (self.prefetch_send is not None and f.size <= BLOCK_SIZE
                 and (cache_key not in self.cache or cache_key in self.prefetching))
        began = trio.current_time()
        data = await read_blocks(self.cache, cache_key, f.size, offset, length, fetch)
        self.wait_seconds += trio.current_time() - began
        if ahead:
            self.prefetching.pop(cache_key, None)
            self._prefetch_after(pres, f.key.gen, path)
        return data

    async def _fetch(self, pres: Presentation, path: str, off: int, n: int,
                     quiet: bool = False) -> bytes:
        """``n`` bytes of ``path`` from ``off``, fetched through the presentation."""
        what = f"read {path} [{off}:{off + n}]"
        data: bytes
        if quiet:
            data = await self.call(lambda: pres.read(path, off, n),
                                   "prefetch" + what.removeprefix("read"))
        else:
            data = await self.pcall(lambda: pres.read(path, off, n), path, what)
        if len(data) != n:
            # sizes are exact by contract; anything else is wrong bytes
            raise FsError(errno.EIO, f"{path}: got {len(data)} bytes, expected {n}")
        return data

    # -- prefetching ----------------------------------------------------------

    def _prefetch_after(self, pres: Presentation, gen: str, path: str) -> None:
        """Queue the files after ``path`` that are neither cached nor on their way."""
        send = self.prefetch_send
        ahead = self.prefetch
        if send is None or ahead <= 0:
            return
        if len(self.prefetching) > 4 * (ahead + PREFETCH_WORKERS):
            # prefetched files evicted or never read: forget them
            self.prefetching = {k: n for k, n in self.prefetching.items() if k in self.cache}
        for next_path, size in pres.following(path, ahead):
            key = (gen, pres.name, next_path)
            if size <= 0 or size > BLOCK_SIZE or key in self.cache:
                continue
            if size > self.cache.max_bytes // (4 * ahead):
                return  # the cache is too small to hold a window of files this big
            if sum(self.prefetching.values()) + size > self.cache.max_bytes // 4:
                return  # prefetched and unread already fill their share: evicting them
                # (or what readers are reading) to fetch more would only fetch twice
            try:
                send.send_nowait((key, pres, next_path, size))
            except trio.WouldBlock:
                return
            self.prefetching[key] = size

    async def run_prefetcher(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        """Serve prefetches with PREFETCH_WORKERS tasks until cancelled (at unmount).

        A prefetch is an ordinary read through the presentation (icechunk's get,
        with its authorization and changed-source checks) whose bytes go to the
        block cache; its errors are dropped (a reader of that file fetches it
        again, and sees its own error).
        """
        send, receive = trio.open_memory_channel[tuple[Hashable, Presentation, str, int]](
            max(self.prefetch, 1) * PREFETCH_WORKERS)

        async def worker() -> None:
            async for key, pres, path, size in receive:
                if key not in self.prefetching:
                    continue  # read meanwhile
                try:
                    fetched = await self.cache.prefetch(key, size, functools.partial(
                        self._fetch, pres, path, 0, size, quiet=True))
                    if not fetched and key not in self.cache:
                        self.prefetching.pop(key, None)  # no room: not made
                except Exception as e:
                    self.prefetching.pop(key, None)
                    log.debug("prefetch of %s: %s", path, _first_line(e))

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(PREFETCH_WORKERS):
                    nursery.start_soon(worker)
                self.prefetch_send = send
                task_status.started()
        finally:
            self.prefetch_send = None
            self.prefetching.clear()

    def release(self, fh: int) -> None:
        self.files.pop(fh, None)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
