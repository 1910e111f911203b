"""The prefetcher's streams against a plain model (Hypothesis state machine).

``Reads`` keeps each stream's window as the files it already knows and asks the
presentation only for the files past the far end. The model is the plain definition
it replaces: after a reader's hit at file X on a side, the window on that side is
``following(X, window)``, recomputed whole. Readers here jump, go forward, go
backward and interleave, over arrays of several lengths, including arrays the
presentation cannot see into yet (no index held: ``following`` stops there), which
become visible later. No I/O: a presentation of names, and the real ``Reads`` with
a real ``BlockCache`` and a real trio channel whose jobs nobody takes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vchunkfs.fs.blockcache import BlockCache
from vchunkfs.fs.reads import BACKWARD, EXPECTED_FILES, FORWARD, Prefetch, Prepare, Reads

FILE_SIZE = 100
GEN = "g"


class NamesPresentation:
    """Arrays of numbered chunk files; ``following`` goes on into the next visible
    arrays (as SnapshotView.following does for arrays chunked alike) and stops at the
    first array that is not visible yet."""

    name = "v3"

    def __init__(self, lengths: list[int]) -> None:
        self.arrays = [[f"a{a}/c/{i}" for i in range(n)] for a, n in enumerate(lengths)]
        self.where = {p: (a, i) for a, files in enumerate(self.arrays)
                      for i, p in enumerate(files)}
        self.visible = {0}

    def following(self, path: str, n: int, backward: bool = False) -> list[tuple[str, int]]:
        a, i = self.where[path]
        if a not in self.visible:
            return []
        if backward:
            return [(p, FILE_SIZE) for p in self.arrays[a][max(0, i - n):i][::-1]]
        out = self.arrays[a][i + 1:i + 1 + n]
        for b in range(a + 1, len(self.arrays)):
            if len(out) >= n or b not in self.visible:
                break
            out += self.arrays[b][:n - len(out)]
        return [(p, FILE_SIZE) for p in out]


async def _never(fn: Callable[[], Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    raise AssertionError("no I/O in this test")


class StreamMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.reads: Reads | None = None
        self.pres: NamesPresentation | None = None
        self.readers: list[str] = []
        self.queued: list[Prefetch | Prepare] = []
        self.listed: set[tuple[str, str, str]] = set()  # queued by a listing, not read since

    @initialize(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5),
                prefetch=st.integers(1, 3), cache_files=st.integers(4, 400))
    def setup(self, lengths: list[int], prefetch: int, cache_files: int) -> None:
        self.pres = NamesPresentation(lengths)
        self.reads = Reads(BlockCache(cache_files * FILE_SIZE), prefetch, _never, _never,
                           _never)
        send, self.receive = trio.open_memory_channel[Prefetch | Prepare](
            4 * self.reads.max_window)
        self.reads.prefetch_send = send
        self.files = [p for files in self.pres.arrays for p in files]

    def _read(self, path: str) -> None:
        """What Reads.read does before it waits for a cold or prefetched file."""
        assert self.reads is not None and self.pres is not None
        key = (GEN, self.pres.name, path)
        if key in self.reads.cache and key not in self.reads.prefetching:
            return  # served from the cache: the window does not move
        found = self.reads._expected.get(key)
        self.listed.discard(key)
        self.reads.prefetching.pop(key, None)
        self.reads._prefetch_after(self.pres, GEN, path, key)  # type: ignore[arg-type]
        if found is not None:
            stream, side = found
            # the model: the window on that side is following(path, window), whole
            want = self.pres.following(path, stream.window, side == BACKWARD)
            got = [(p, n) for _, p, n in stream.ahead[side]]
            assert got == want, (path, side, stream.window, got, want)
        self._take_jobs()

    def _take_jobs(self) -> list[Prefetch | Prepare]:
        """The jobs queued since the last call (nobody runs them)."""
        new = []
        while True:
            try:
                new.append(self.receive.receive_nowait())
            except trio.WouldBlock:
                self.queued += new
                return new

    @precondition(lambda self: self.reads is not None)
    @rule(data=st.data(), remote=st.booleans())
    def a_directory_is_listed(self, data: st.DataObject, remote: bool) -> None:
        """A listing of some of an array's files, in order (what a walk sees)."""
        assert self.reads is not None and self.pres is not None
        files = data.draw(st.sampled_from(self.pres.arrays))
        start = data.draw(st.integers(0, len(files) - 1))
        self.reads.remote = remote
        self.reads.listed(self.pres, GEN,  # type: ignore[arg-type]
                          [(p, FILE_SIZE) for p in files[start:]])
        queued = {j.key for j in self._take_jobs() if isinstance(j, Prefetch)}
        if not remote:
            assert not queued  # a local mount never fetches for a listing
        self.listed |= queued  # type: ignore[arg-type]

    @precondition(lambda self: self.reads is not None)
    @rule(data=st.data())
    def read_anywhere(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(self.files))
        self.readers.append(path)
        self._read(path)

    @precondition(lambda self: self.readers)
    @rule(data=st.data(), backward=st.booleans())
    def a_reader_reads_on(self, data: st.DataObject, backward: bool) -> None:
        assert self.pres is not None
        r = data.draw(st.integers(0, len(self.readers) - 1))
        nxt = self.pres.following(self.readers[r], 1, backward)
        if nxt:
            self.readers[r] = nxt[0][0]
            self._read(nxt[0][0])

    @precondition(lambda self: self.pres is not None)
    @rule(data=st.data())
    def an_index_is_read(self, data: st.DataObject) -> None:
        assert self.pres is not None
        self.pres.visible.add(data.draw(st.integers(0, len(self.pres.arrays) - 1)))

    @precondition(lambda self: self.reads is not None)
    @rule(data=st.data())
    def a_prefetch_arrives(self, data: st.DataObject) -> None:
        """A queued prefetch's bytes reach the cache (or are evicted at once)."""
        assert self.reads is not None
        jobs = [j for j in self.queued if isinstance(j, Prefetch)]
        if not jobs:
            return
        job = data.draw(st.sampled_from(jobs))
        self.queued.remove(job)

        async def put() -> None:
            async def fetch() -> bytes:
                return b"x" * job.size
            await self.reads.cache.prefetch(job.key, job.size, fetch)  # type: ignore[union-attr]

        trio.run(put)

    @invariant()
    def windows_and_bounds(self) -> None:
        reads = self.reads
        if reads is None or self.pres is None:
            return
        assert len(reads._expected) <= EXPECTED_FILES
        assert sum(reads.prefetching.values()) <= reads.cache.max_bytes // 4
        for stream, _side in reads._expected.values():
            assert reads.prefetch <= stream.window <= reads.max_window
            for side, near in stream.ahead.items():
                assert side in (FORWARD, BACKWARD)
                assert len(near) <= stream.window
                # contiguous in the presentation's order, whatever was asked when
                for (_, a, _), (_, b, _) in zip(near, list(near)[1:], strict=False):
                    assert self.pres.following(a, 1, side == BACKWARD) == [(b, FILE_SIZE)]
        # what listings can cost when nobody reads: one window's files at a time
        held = {j.key for j in self.queued if isinstance(j, Prefetch)} | {
            k for k in self.listed if k in reads.cache}
        assert len(self.listed & held) <= reads.prefetch
        for job in self.queued:
            if isinstance(job, Prefetch):
                assert isinstance(job.key, tuple) and job.size == FILE_SIZE
                assert job.key[2] in self.pres.where and job.path == job.key[2]


TestStreams = StreamMachine.TestCase
TestStreams.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
