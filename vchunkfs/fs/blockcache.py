"""File bytes kept in the daemon: an LRU bounded in bytes, with one fetch per block."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

import trio

# Files up to this size are fetched whole (an OISST chunk is about 380 kB); bigger ones
# (shards, large chunks) in aligned blocks, so a 128 KiB read never fetches 1 GB.
BLOCK_SIZE = 8 * 1024 * 1024


@dataclass
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None
    prefetch: bool = False  # a failed prefetch is retried by its waiters, never raised


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    fetched_bytes: int = 0
    prefetched: int = 0


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
        self.stats = CacheStats()

    @property
    def current_bytes(self) -> int:
        return self._bytes

    def __contains__(self, key: Hashable) -> bool:
        """Cached or being fetched (no LRU touch, no counting)."""
        return key in self._lru or key in self._flights

    def peek(self, key: Hashable) -> bytes | None:
        """The cached block for ``key`` (counted as a hit), or None without waiting."""
        data = self._lru.get(key)
        if data is not None:
            self._lru.move_to_end(key)
            self.stats.hits += 1
        return data

    def _store(self, key: Hashable, data: bytes) -> None:
        size = len(data)
        if size > self.max_bytes:
            return
        old = self._lru.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        self._lru[key] = data
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._lru.popitem(last=False)
            self._bytes -= len(evicted)

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[bytes]]) -> bytes:
        """The block for ``key``: cached, being fetched by another reader, or fetched now.

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
                break
            self.stats.coalesced += 1
            await flight.done.wait()
            if flight.error is not None and (flight.prefetch
                                             or isinstance(flight.error, trio.Cancelled)):
                continue  # abandoned, or not this reader's error: try again
            if flight.error is not None:
                raise flight.error
            assert flight.data is not None
            return flight.data
        self.stats.misses += 1
        return await self._fetch(key, fetch)

    async def prefetch(self, key: Hashable, fetch: Callable[[], Awaitable[bytes]]) -> None:
        """Fetch ``key`` into the cache unless it is cached or already being fetched.

        Errors are raised to the caller only: readers waiting on a failed
        prefetch fetch for themselves.
        """
        if key in self._lru or key in self._flights:
            return
        self.stats.prefetched += 1
        await self._fetch(key, fetch, prefetch=True)

    async def _fetch(self, key: Hashable, fetch: Callable[[], Awaitable[bytes]],
                     prefetch: bool = False) -> bytes:
        flight = _Flight(prefetch=prefetch)
        self._flights[key] = flight
        try:
            flight.data = await fetch()
        except BaseException as e:
            flight.error = e
            raise
        finally:
            del self._flights[key]
            flight.done.set()
        self.stats.fetched_bytes += len(flight.data)
        self._store(key, flight.data)
        return flight.data

    def clear(self) -> None:
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
        block = await cache.get(key, lambda: fetch_range(0, size))
        return slice_block(block, offset, end)
    first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
    if first == last:
        start = first * BLOCK_SIZE
        stop = min(size, start + BLOCK_SIZE)
        block = await cache.get((key, first), _bind(fetch_range, start, stop - start))
        return slice_block(block, offset - start, end - start)
    parts: list[bytes | memoryview] = []
    for b in range(first, last + 1):
        start = b * BLOCK_SIZE
        stop = min(size, start + BLOCK_SIZE)
        block = await cache.get((key, b), _bind(fetch_range, start, stop - start))
        parts.append(memoryview(block)[max(offset - start, 0):end - start])
    return b"".join(parts)


def _bind(fetch_range: Callable[[int, int], Awaitable[bytes]], offset: int, length: int
          ) -> Callable[[], Awaitable[bytes]]:
    return lambda: fetch_range(offset, length)
