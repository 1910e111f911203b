"""File bytes kept in the daemon: an LRU bounded in bytes, with one fetch per block."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

import trio
from cachetools import LRUCache

# Files up to this size are fetched whole (an OISST chunk is about 380 kB); bigger ones
# (shards, large chunks) in aligned blocks, so a 128 KiB read never fetches 1 GB.
BLOCK_SIZE = 8 * 1024 * 1024


@dataclass
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    fetched_bytes: int = 0


class BlockCache:
    """Blocks of file bytes by key. Use from the trio thread only."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: LRUCache[Hashable, bytes] = LRUCache(max(max_bytes, 1), getsizeof=len)
        self._flights: dict[Hashable, _Flight] = {}
        self.stats = CacheStats()

    @property
    def current_bytes(self) -> int:
        return int(self._lru.currsize)

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[bytes]]) -> bytes:
        """The block for ``key``: cached, being fetched by another reader, or fetched now.

        Readers waiting on another's fetch get its bytes or its exception.
        """
        data = self._lru.get(key)
        if data is not None:
            self.stats.hits += 1
            return data
        flight = self._flights.get(key)
        if flight is not None:
            self.stats.coalesced += 1
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.data is not None
            return flight.data
        self.stats.misses += 1
        flight = _Flight()
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
        if len(flight.data) <= self.max_bytes:
            self._lru[key] = flight.data
        return flight.data

    def clear(self) -> None:
        self._lru.clear()


async def read_blocks(cache: BlockCache, key: Hashable, size: int, offset: int, length: int,
                      fetch_range: Callable[[int, int], Awaitable[bytes]]) -> bytes:
    """Bytes ``[offset, offset+length)`` of a file of ``size`` bytes, block by block."""
    end = min(size, offset + length)
    if offset >= end:
        return b""
    if size <= BLOCK_SIZE:
        block = await cache.get(key, lambda: fetch_range(0, size))
        return block[offset:end]
    parts = []
    first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
    for b in range(first, last + 1):
        start = b * BLOCK_SIZE
        stop = min(size, start + BLOCK_SIZE)
        block = await cache.get((key, b), _bind(fetch_range, start, stop - start))
        parts.append(block[max(offset - start, 0):end - start])
    return b"".join(parts)


def _bind(fetch_range: Callable[[int, int], Awaitable[bytes]], offset: int, length: int
          ) -> Callable[[], Awaitable[bytes]]:
    return lambda: fetch_range(offset, length)
