"""Open files, reads through the block cache, and the prefetcher (docs/concurrency.md,
"states of a fetch and of a prefetch"). Trio thread only.

The prefetcher hides the backend's latency from readers that read chunk files one
after the other. The first read of a chunk file that is not cached (or that was
prefetched) looks ahead in the array's order (``Presentation.following``, the order
listings give, and on into the next arrays chunked alike, as ``find`` and ``cp -r``
walk the tree) and queues the next files of its *stream*; on a remote mount a
:class:`Prepare` job reads the next array's index ahead when a window reaches the end
of what is known. A read of a file no stream
expected starts a stream, which looks both ways: ``prefetch`` files forward and half
as many backward (Dask, under ``xarray.load()``, reads an array's chunks backward in
the string order of their keys: 9, 8, ..., 4, 30, 3, 29, ...). Each read of a file a
stream had in its window sets the stream's direction to that file's side and grows the
window fourfold, up to ``MAX_WINDOW_FACTOR`` times ``prefetch`` (a reader that keeps
hitting gets enough fetches in flight to cover the backend's round trip); once a
stream reached that widest window, the next stream starts with it (a reader done with
one array goes on with the next). Several readers of one array, each on its own part
or interleaved, are several streams or one. Prefetches are queued when the read
starts, not when it returns, so the window moves while the reader waits. Limits: the
files prefetched and not read yet stay within a quarter of the block cache (they never
evict what readers are about to read), a prefetch is made only when the block cache
has room for it without waiting, and the queue holds what the workers can take. A
branch move drops the queued and running prefetches of the generation it leaves
(:meth:`Reads.drop_generation`).

On a remote mount, a listing of a directory with chunk files in it starts a stream
at its first chunk file (:meth:`Reads.listed`): ``find``, ``cp -r``, ``tar`` and
``rsync`` list a directory before they read it (``find ... | xargs cat`` lists the
whole tree first), so the first files are on their way while the walk goes on. A
listing never grows a window, and the files queued by listings and not read yet are
at most ``prefetch`` (one stream's first window): a walk that reads nothing, such as
``ls -R``, costs that many fetches, not one per directory.

A fetch of a local chunk that the presentation can read without the bridge
(``Presentation.local_read``: a local virtual chunk whose source has a record) runs
in a trio worker thread (``tcall``), with the same checks, deadline and errors.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from vchunkfs.fs.blockcache import BLOCK_SIZE, BlockCache, read_blocks, slice_block
from vchunkfs.fs.nodes import FsError, OpenFile
from vchunkfs.presentation.base import Presentation

log = logging.getLogger("vchunkfs.fs")

# a stream's window grows by this factor on each hit: an array's files are all queued
# after two hits, so a reader pays about two round trips per array, not four
WINDOW_GROWTH = 4
# a stream's window grows to this many times the ``prefetch`` option (4 -> 64 files),
# and as many prefetches run at once: at 100 ms a round trip, 32 files in flight held
# one reader to 1.39x of icechunk's gather of the same chunks, 64 to 1.23x (at 30 ms
# both ~0.97x; docs/benchmarks-remote.md). Prefetched bytes stay within a quarter of
# the block cache whatever the window
MAX_WINDOW_FACTOR = 16
# files the streams expect to be read next, remembered at most (oldest forgotten)
EXPECTED_FILES = 4096
FORWARD, BACKWARD = 1, -1  # the sides of a stream, in array order


@dataclass
class Stream:
    """A reader's way through the files: how many files ahead to keep fetching, and the
    files of its window on each side, nearest first, as (cache key, path, size). Its
    direction is the side of the file it last hit (kept in ``Reads._expected``). The
    window moves by asking the presentation only for the files past its far end, so a
    read costs the files it adds, not the whole window."""

    window: int
    ahead: dict[int, deque[tuple[Hashable, str, int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Prefetch:
    """A job of the prefetcher: fetch ``path`` of ``pres`` into the cache as ``key``."""

    key: Hashable
    pres: Presentation
    path: str
    size: int


@dataclass(frozen=True)
class Prepare:
    """A job of the prefetcher: read what lets ``pres.following(path, n)`` look further
    (the next array's index), for a stream about to run off the end of its array."""

    key: Hashable
    pres: Presentation
    path: str
    n: int


class Call(Protocol):
    async def __call__(self, fn: Callable[[], Awaitable[Any]], what: str = "") -> Any: ...


class PCall(Protocol):
    async def __call__(self, fn: Callable[[], Awaitable[Any]], path: str,
                       op: str = "") -> Any: ...


class TCall(Protocol):
    async def __call__(self, fn: Callable[[], Any], path: str, op: str = "",
                       quiet: bool = False) -> Any: ...


class Reads:
    """The open files of a mount and their bytes: ``call``/``pcall`` cross the bridge
    (with the deadline; ``pcall`` also maps errors to errnos and logs them); ``tcall``
    runs a presentation's blocking local read in a trio worker thread instead (the
    same deadline and errors), one thread hop where the bridge takes four."""

    def __init__(self, cache: BlockCache, prefetch: int, call: Call, pcall: PCall,
                 tcall: TCall, remote: bool = True) -> None:
        self.cache = cache
        self.prefetch = prefetch
        self.max_window = prefetch * MAX_WINDOW_FACTOR
        self.call = call
        self.pcall = pcall
        self.tcall = tcall
        self.files: dict[int, OpenFile] = {}
        self._next_fh = 1
        self.prefetch_send: trio.MemorySendChannel[Prefetch | Prepare] | None = None
        # queued or fetched, not yet read -> size
        self.prefetching: dict[Hashable, int] = {}
        # file -> the stream that expects it, and the side of the stream it lies on
        self._expected: OrderedDict[Hashable, tuple[Stream, int]] = OrderedDict()
        self._running: dict[Hashable, trio.CancelScope] = {}  # prefetches being fetched
        # Prepare jobs queued (by the last file their stream knew of), made once
        self._prepared: set[Hashable] = set()
        # the window a new stream starts with: ``prefetch``, or the widest window once a
        # stream reached it (a reader going through the arrays one after the other, as
        # find, cp -r and tar do, then pays one round trip per array, not two)
        self._next_window = prefetch
        self.streams_started = 0
        self.window_hits = 0  # reads of a file a stream had in its window
        self.wait_seconds = 0.0  # time reads spent waiting for bytes not in the cache
        self.local_fetches = 0  # fetches made by a local read in a worker thread
        self.listing_streams = 0  # streams a listing started (listed)
        # files a listing queued, not read yet: while one of them is, no listing starts
        # another stream (what a walk that reads nothing can cost is one window)
        self._listed: list[Hashable] = []
        # a backend with round trips worth hiding: a window near an array's end reads
        # the next array's index ahead (Prepare), and listings start streams. On a local
        # disk the reader's own first read of the next array costs less than reading
        # ahead does (a cold pass of 124 local chunk files used 18 ms more CPU with it,
        # docs/benchmarks-mount.md), and a first read costs about a millisecond
        self.remote = remote

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
        # read ahead when this read fetches (a cold file) or is the first of a prefetched
        # one, before waiting for it: the window moves on while this read waits
        if (self.prefetch_send is not None and f.size <= BLOCK_SIZE
                and (cache_key not in self.cache or cache_key in self.prefetching)):
            self.prefetching.pop(cache_key, None)
            self._prefetch_after(pres, f.key.gen, path, cache_key)
        began = trio.current_time()
        data = await read_blocks(self.cache, cache_key, f.size, offset, length, fetch)
        self.wait_seconds += trio.current_time() - began
        return data

    async def _fetch(self, pres: Presentation, path: str, off: int, n: int,
                     quiet: bool = False) -> bytes:
        """``n`` bytes of ``path`` from ``off``, fetched through the presentation."""
        what = f"read {path} [{off}:{off + n}]"
        data: bytes
        local = pres.local_read(path, off, n)
        if local is not None:
            self.local_fetches += 1
            data = await self.tcall(local, path, what, quiet)
        elif quiet:
            data = await self.call(lambda: pres.read(path, off, n),
                                   "prefetch" + what.removeprefix("read"))
        else:
            data = await self.pcall(lambda: pres.read(path, off, n), path, what)
        if len(data) != n:
            # sizes are exact by contract; anything else is wrong bytes
            raise FsError(errno.EIO, f"{path}: got {len(data)} bytes, expected {n}")
        return data

    # -- prefetching ----------------------------------------------------------

    def _prefetch_after(self, pres: Presentation, gen: str, path: str, key: Hashable) -> None:
        """Move the stream that expected ``path`` on (or start one), and queue the files
        of its window that are neither cached nor on their way."""
        send = self.prefetch_send
        if send is None or self.prefetch <= 0:
            return
        found = self._expected.pop(key, None)
        if found is None:
            stream = Stream(self._next_window)
            self._next_window = self.prefetch  # passed on once, not to every stream
            self.streams_started += 1
            sides = [FORWARD, BACKWARD]
            self._extend(stream, FORWARD, pres, gen, path, stream.window)
            self._extend(stream, BACKWARD, pres, gen, path, max(1, stream.window // 2))
            ahead = _interleave(stream.ahead[FORWARD], stream.ahead[BACKWARD])
        else:
            stream, side = found
            self.window_hits += 1
            stream.window = min(stream.window * WINDOW_GROWTH, self.max_window)
            if stream.window == self.max_window:
                self._next_window = self.max_window
            sides = [side]
            near = stream.ahead[side]
            while near and near.popleft()[0] != key:
                pass  # files of the window the reader passed by
            self._extend(stream, side, pres, gen, path, stream.window)
            ahead = [(*entry, side) for entry in near]
        self._queue(send, pres, ahead, sides)

    def listed(self, pres: Presentation, gen: str, files: Iterable[tuple[str, int]]) -> None:
        """A directory of ``pres`` (generation ``gen``) was listed, with ``files`` as
        (path, size) in listing order: on a remote mount, start a stream at its first
        chunk file, queued with the ``prefetch - 1`` files that follow it, unless a
        stream expects it, it is cached or on its way, or files an earlier listing
        queued are still unread. The stream's window is ``prefetch`` and grows only
        when a reader reads its files, as any stream's does."""
        send = self.prefetch_send
        if send is None or self.prefetch <= 0 or not self.remote:
            return
        if any(k in self.prefetching for k in self._listed):
            return  # one listing's window unread at a time
        for path, size in files:
            after = pres.following(path, max(1, self.prefetch - 1))
            if not after:
                continue  # a metadata document, not a chunk (or nothing known after it)
            more = after[:self.prefetch - 1]
            key = (gen, pres.name, path)
            if key in self._expected or key in self.cache or key in self.prefetching:
                return  # a reader or an earlier listing got here first
            stream = Stream(self.prefetch)
            near = stream.ahead.setdefault(FORWARD, deque())
            for entry in [(path, size), *more]:
                entry_key = (gen, pres.name, entry[0])
                near.append((entry_key, *entry))
                self._expected[entry_key] = (stream, FORWARD)
                self._expected.move_to_end(entry_key)
            self.listing_streams += 1
            self._queue(send, pres, [(*e, FORWARD) for e in near], [FORWARD])
            self._listed = [e[0] for e in near if e[0] in self.prefetching]
            return

    def _queue(self, send: trio.MemorySendChannel[Prefetch | Prepare], pres: Presentation,
               ahead: list[tuple[Hashable, str, int, int]], sides: list[int]) -> None:
        """Queue the files of ``ahead`` (key, path, size, side), nearest first, that are
        neither cached nor on their way, while their side is in ``sides`` and the
        prefetched and unread files stay within their share of the cache."""
        if len(self.prefetching) > 4 * self.max_window:
            # prefetched files evicted or never read: forget them
            self.prefetching = {k: n for k, n in self.prefetching.items() if k in self.cache}
        share = self.cache.max_bytes // 4
        unread = sum(self.prefetching.values())
        for next_key, next_path, size, side in ahead:
            if side not in sides:
                continue  # that side filled the share or the queue
            if (size <= 0 or size > BLOCK_SIZE or next_key in self.cache
                    or next_key in self.prefetching):
                continue  # not a prefetch's, or cached, on its way or queued
            if unread + size > share:
                # prefetched and unread already fill their share: evicting them (or
                # what readers are reading) to fetch more would only fetch twice
                sides.remove(side)
                continue
            try:
                send.send_nowait(Prefetch(next_key, pres, next_path, size))
            except trio.WouldBlock:
                break
            self.prefetching[next_key] = size
            unread += size
        while len(self._expected) > EXPECTED_FILES:
            self._expected.popitem(last=False)

    def _extend(self, stream: Stream, side: int, pres: Presentation, gen: str, path: str,
                n: int) -> None:
        """Fill ``stream``'s window on ``side`` up to ``n`` files from the reader's file
        ``path``, asking the presentation only for the files past its far end; where it
        knows fewer (the end of what is known), read the next array's index ahead."""
        near = stream.ahead.setdefault(side, deque())
        last = near[-1][1] if near else path
        want = n - len(near)
        if want <= 0:
            return
        more = pres.following(last, want, side == BACKWARD)
        for next_path, size in more:
            next_key = (gen, pres.name, next_path)
            near.append((next_key, next_path, size))
            self._expected[next_key] = (stream, side)
            self._expected.move_to_end(next_key)
        if side == FORWARD and len(more) < want and self.remote:
            # the window runs off the end of what is known: the next array (in listing
            # order) needs its index read before the stream can go on into it
            self._prepare(gen, pres, path, near[-1][1] if near else path, n)

    def _prepare(self, gen: str, pres: Presentation, path: str, last: str, n: int) -> None:
        """Queue a :class:`Prepare` for a stream at ``path`` whose window ends at
        ``last``, unless one was queued for ``last`` already (made once: a stream that
        keeps reading near an array's end asks on every read)."""
        send = self.prefetch_send
        key = (gen, pres.name, last, "prepare")  # not a file's key (see _running)
        if send is None or key in self._prepared:
            return
        if len(self._prepared) > EXPECTED_FILES:
            self._prepared.clear()
        try:
            send.send_nowait(Prepare(key, pres, path, n))
        except trio.WouldBlock:
            return  # the workers are busy with prefetches: the next read asks again
        self._prepared.add(key)

    def drop_generation(self, gen: str) -> None:
        """Forget the streams of generation ``gen`` and cancel its prefetches, queued or
        running (a branch moved on from it; readers still reading it start again)."""
        def of_gen(k: Hashable) -> bool:
            return isinstance(k, tuple) and bool(k) and k[0] == gen

        self.prefetching = {k: n for k, n in self.prefetching.items() if not of_gen(k)}
        for k in [k for k in self._expected if of_gen(k)]:
            del self._expected[k]
        self._prepared = {k for k in self._prepared if not of_gen(k)}
        for k, scope in self._running.items():
            if of_gen(k):
                scope.cancel()

    async def run_prefetcher(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        """Serve prefetches with ``max_window`` tasks until cancelled (at unmount).

        A prefetch is an ordinary read through the presentation (icechunk's get,
        with its authorization and changed-source checks) whose bytes go to the
        block cache; its errors are dropped (a reader of that file fetches it
        again, and sees its own error).
        """
        workers = max(self.max_window, 1)
        send, receive = trio.open_memory_channel[Prefetch | Prepare](4 * workers)

        async def prepare(job: Prepare) -> None:
            with trio.CancelScope() as scope:
                self._running[job.key] = scope
                try:
                    await self.call(lambda: job.pres.prepare_following(job.path, job.n),
                                    f"prepare the files after {job.path}")
                except Exception as e:
                    log.debug("preparing what follows %s: %s", job.path, _first_line(e))
                    self._prepared.discard(job.key)  # a later read may try again
                finally:
                    if self._running.get(job.key) is scope:
                        del self._running[job.key]

        async def worker() -> None:
            async for job in receive:
                if isinstance(job, Prepare):
                    await prepare(job)
                    continue
                key, pres, path, size = job.key, job.pres, job.path, job.size
                if key not in self.prefetching:
                    continue  # read or dropped meanwhile
                with trio.CancelScope() as scope:
                    self._running[key] = scope
                    try:
                        fetched = await self.cache.prefetch(key, size, functools.partial(
                            self._fetch, pres, path, 0, size, quiet=True))
                        if not fetched and key not in self.cache:
                            self.prefetching.pop(key, None)  # no room: not made
                    except Exception as e:
                        self.prefetching.pop(key, None)
                        log.debug("prefetch of %s: %s", path, _first_line(e))
                    finally:
                        if self._running.get(key) is scope:
                            del self._running[key]
                if scope.cancelled_caught:
                    self.prefetching.pop(key, None)

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(worker)
                self.prefetch_send = send
                task_status.started()
        finally:
            self.prefetch_send = None
            self.prefetching.clear()
            self._expected.clear()
            self._prepared.clear()

    def release(self, fh: int) -> None:
        self.files.pop(fh, None)


def _interleave(forward: deque[tuple[Hashable, str, int]],
                backward: deque[tuple[Hashable, str, int]]
                ) -> list[tuple[Hashable, str, int, int]]:
    """Both sides of a new stream, nearest first: f1, b1, f2, b2, ..."""
    out: list[tuple[Hashable, str, int, int]] = []
    for i in range(max(len(forward), len(backward))):
        if i < len(forward):
            out.append((*forward[i], FORWARD))
        if i < len(backward):
            out.append((*backward[i], BACKWARD))
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
