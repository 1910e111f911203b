"""File bytes kept in the daemon: an LRU bounded in bytes, with one fetch per block.

The bound covers the bytes on their way too: a fetch reserves twice its size
(INFLIGHT_COPIES: until it is stored, its bytes exist in the backend's buffer and
in the copy the cache keeps) before it starts, evicting the least recently used
blocks to make room, and holds the reservation until its bytes are stored, so
cached plus reserved bytes never exceed ``max_bytes``. A reader that finds the
cache full of fetches in flight waits for one to end; a fetch larger than the
whole cache runs alone, and its bytes are not kept. A prefetch never waits:
without room it is not made.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

import trio

# Files up to this size are fetched whole (an OISST chunk is about 380 kB); bigger ones
# (shards, large chunks) in aligned blocks, so a 128 KiB read never fetches 1 GB.
BLOCK_SIZE = 8 * 1024 * 1024

# what a fetch in flight holds, in multiples of its size: icechunk's buffer and the
# bytes copied out of it for the cache (measured: with one copy counted, RSS passed an
# 8 MiB budget by 1-4 MiB under 16 readers)
INFLIGHT_COPIES = 2


@dataclass
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None
    prefetch: bool = False  # a failed prefetch is retried by its waiters, never raised


@dataclass
class CacheStats:
    """Counters since the mount (docs/SEMANTICS.md, "Seeing why a mount is slow")."""

    hits: int = 0  # reads served from the cache
    misses: int = 0  # reads that fetched themselves
    coalesced: int = 0  # reads that waited on a fetch already on its way
    fetched_bytes: int = 0
    prefetched: int = 0  # prefetches made
    prefetch_used: int = 0  # prefetched blocks a reader then read (or waited on)
    prefetch_wasted: int = 0  # prefetched blocks evicted unread, or failed
    prefetch_wasted_bytes: int = 0


class BlockCache:
    """Blocks of file bytes by key. Use from the trio thread only.

    The LRU is an ``OrderedDict`` (a hit is two C calls: ``get`` and
    ``move_to_end``) bounded by the sum of the blocks' lengths.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._flights: dict[Hashable, _Flight] = {}
        self._inflight = 0  # bytes reserved by fetches in flight
        self._unread: dict[Hashable, int] = {}  # prefetched, not read yet -> size
        # keys whose prefetch failed: left to readers until one of them fetched the key
        # (else a reader woken by the failure could find a second prefetch of the same
        # key started before it ran, and wait for that one too, past its deadline)
        self._prefetch_failed: set[Hashable] = set()
        self._flight_ended = trio.Event()  # set (and replaced) whenever a fetch ends
        self.stats = CacheStats()

    @property
    def current_bytes(self) -> int:
        """Bytes of the cached blocks."""
        return self._bytes

    @property
    def inflight_bytes(self) -> int:
        """Bytes reserved by fetches in flight."""
        return self._inflight

    @property
    def inflight_count(self) -> int:
        """Fetches in flight (prefetches included)."""
        return len(self._flights)

    def _used(self, key: Hashable) -> None:
        if self._unread and self._unread.pop(key, None) is not None:
            self.stats.prefetch_used += 1

    def _wasted(self, key: Hashable) -> None:
        size = self._unread.pop(key, None)
        if size is not None:
            self.stats.prefetch_wasted += 1
            self.stats.prefetch_wasted_bytes += size

    def __contains__(self, key: Hashable) -> bool:
        """Cached or being fetched (no LRU touch, no counting)."""
        return key in self._lru or key in self._flights

    def peek(self, key: Hashable) -> bytes | None:
        """The cached block for ``key`` (counted as a hit), or None without waiting."""
        data = self._lru.get(key)
        if data is not None:
            self._lru.move_to_end(key)
            self.stats.hits += 1
            self._used(key)
        return data

    def _make_room(self, size: int) -> bool:
        """Evict least recently used blocks until ``size`` more bytes fit beside the
        cached and in-flight ones; whether they fit."""
        while self._lru and self._bytes + self._inflight + size > self.max_bytes:
            old_key, evicted = self._lru.popitem(last=False)
            self._bytes -= len(evicted)
            if self._unread:
                self._wasted(old_key)
        return self._bytes + self._inflight + size <= self.max_bytes

    def _store(self, key: Hashable, data: bytes) -> None:
        # called after the fetch's reservation was released: room was made for it
        size = len(data)
        old = self._lru.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        if not self._make_room(size):
            self._wasted(key)
            return  # larger than the cache, or the others' fetches hold it all
        self._lru[key] = data
        self._bytes += size

    async def get(self, key: Hashable, size: int, fetch: Callable[[], Awaitable[bytes]]
                  ) -> bytes:
        """The block for ``key`` (``size`` bytes): cached, being fetched by another
        reader, or fetched now, once there is room for it.

        Readers waiting on another's fetch get its bytes or its exception, except
        when that fetch was cancelled or was a prefetch that failed: then they
        fetch themselves (so a reader's error is always its own fetch's).
        """
        while True:
            data = self.peek(key)
            if data is not None:
                return data
            flight = self._flights.get(key)
            if flight is None:
                if self._make_room(size * INFLIGHT_COPIES) or not self._inflight:
                    break
                # the cache is full of fetches in flight: wait for one to end, then
                # look again (another reader may have started this key meanwhile)
                await self._flight_ended.wait()
                continue
            self.stats.coalesced += 1
            if flight.prefetch:
                self._used(key)
            await flight.done.wait()
            if flight.error is not None and (flight.prefetch
                                             or isinstance(flight.error, trio.Cancelled)):
                continue  # abandoned, or not this reader's error: try again
            if flight.error is not None:
                raise flight.error
            assert flight.data is not None
            return flight.data
        self.stats.misses += 1
        self._prefetch_failed.discard(key)
        return await self._fetch(key, size, fetch)

    async def prefetch(self, key: Hashable, size: int, fetch: Callable[[], Awaitable[bytes]]
                       ) -> bool:
        """Fetch ``key`` (``size`` bytes) into the cache unless it is cached, already
        being fetched, or there is no room for it without waiting; whether it was
        fetched.

        Errors are raised to the caller only: readers waiting on a failed
        prefetch fetch for themselves.
        """
        if (key in self._lru or key in self._flights or key in self._prefetch_failed
                or not self._make_room(size * INFLIGHT_COPIES)):
            return False
        self.stats.prefetched += 1
        self._unread[key] = size
        try:
            await self._fetch(key, size, fetch, prefetch=True)
        except BaseException:
            self._wasted(key)
            if len(self._prefetch_failed) >= 4096:
                self._prefetch_failed.clear()  # keys never read since: forget them
            self._prefetch_failed.add(key)
            raise
        return True

    async def _fetch(self, key: Hashable, size: int, fetch: Callable[[], Awaitable[bytes]],
                     prefetch: bool = False) -> bytes:
        flight = _Flight(prefetch=prefetch)
        self._flights[key] = flight
        self._inflight += size * INFLIGHT_COPIES
        try:
            flight.data = await fetch()
        except BaseException as e:
            flight.error = e
            raise
        finally:
            del self._flights[key]
            self._inflight -= size * INFLIGHT_COPIES
            self._flight_ended.set()
            self._flight_ended = trio.Event()
            flight.done.set()
        self.stats.fetched_bytes += len(flight.data)
        self._store(key, flight.data)
        return flight.data

    def clear(self) -> None:
        for key in list(self._unread):
            if key in self._lru:
                self._wasted(key)
        self._lru.clear()
        self._bytes = 0


def slice_block(block: bytes, offset: int, end: int) -> bytes | memoryview:
    """``block[offset:end]`` without copying: the block itself, or a memoryview of it."""
    if offset == 0 and end >= len(block):
        return block
    return memoryview(block)[offset:end]


async def read_blocks(cache: BlockCache, key: Hashable, size: int, offset: int, length: int,
                      fetch_range: Callable[[int, int], Awaitable[bytes]]
                      ) -> bytes | memoryview:
    """Bytes ``[offset, offset+length)`` of a file of ``size`` bytes, block by block.

    A range inside one block comes back without a copy (the block, or a
    memoryview of it); a range across blocks is joined into new bytes.
    """
    end = min(size, offset + length)
    if offset >= end:
        return b""
    if size <= BLOCK_SIZE:
        block = await cache.get(key, size, lambda: fetch_range(0, size))
        return slice_block(block, offset, end)
    first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
    if first == last:
        start = first * BLOCK_SIZE
        stop = min(size, start + BLOCK_SIZE)
        block = await cache.get((key, first), stop - start,
                                _bind(fetch_range, start, stop - start))
        return slice_block(block, offset - start, end - start)
    parts: list[bytes | memoryview] = []
    for b in range(first, last + 1):
        start = b * BLOCK_SIZE
        stop = min(size, start + BLOCK_SIZE)
        block = await cache.get((key, b), stop - start,
                                _bind(fetch_range, start, stop - start))
        parts.append(memoryview(block)[max(offset - start, 0):end - start])
    return b"".join(parts)


def _bind(fetch_range: Callable[[int, int], Awaitable[bytes]], offset: int, length: int
          ) -> Callable[[], Awaitable[bytes]]:
    return lambda: fetch_range(offset, length)
