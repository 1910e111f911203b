"""The filesystem core in-process (no FUSE): the block cache, the poller, deadlines, and a
Hypothesis state machine over lookups, forgets, listings, reads and branch moves with
injected faults, checked against a plain model."""

from __future__ import annotations

import errno
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import trio
import trio.testing
import zarr
from datasets import BuiltRepo, build_repo
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from zarr.core.buffer import default_buffer_prototype

from vchunkfs.bridge import AsyncioBridge
from vchunkfs.fs.blockcache import BlockCache
from vchunkfs.fs.faults import FaultPlan, faulty
from vchunkfs.fs.namespace import (
    ROOT,
    XATTR_SNAPSHOT,
    Attr,
    FsError,
    MountConfig,
    Namespace,
    StagedSource,
)
from vchunkfs.fs.source import RepoSource
from vchunkfs.repository import Authorization, Repo, parse_repo_url
from vchunkfs.repository.snapshot import SnapshotView

pytestmark = pytest.mark.timeout(300)

# files the model knows the bytes of, in every snapshot of main
LOCAL_ACCESS = ic.credentials.LocalFileSystemAccess
KEYS = ["zarr.json", "sst/zarr.json", "native/zarr.json", "sst/c/0/0/0/0", "sst/c/3/0/0/0",
        "field/c/0/0", "field/c/3/2", "native/c/0", "native/c/3", "grp/small/c/0"]


class Invalidations:
    def __init__(self, fail: bool = False) -> None:
        self.entries: list[tuple[int, str]] = []
        self.inodes: list[int] = []
        self.fail = fail

    def invalidate_entry(self, parent: int, name: str) -> None:
        if self.fail:
            raise OSError(errno.EIO, "injected: the kernel refused")
        self.entries.append((parent, name))

    def invalidate_inode(self, ino: int) -> None:
        if self.fail:
            raise OSError(errno.EIO, "injected: the kernel refused")
        self.inodes.append(ino)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuiltRepo]:
    base = tmp_path_factory.mktemp("core")
    built = build_repo(ic.local_filesystem_storage(str(base / "repo")), base / "src")
    return base / "repo", built


class Harness:
    """A private copy of the template repository, a namespace over it and a fault plan."""

    def __init__(self, template: tuple[Path, BuiltRepo], where: Path, bridge: AsyncioBridge,
                 **config: object) -> None:
        src, self.built = template
        self.path = where / "repo"
        shutil.copytree(src, self.path)
        self.bridge = bridge
        auth = Authorization.load([self.built.container_prefix], environ={})
        self.repo = bridge.run(lambda: Repo.open(parse_repo_url(str(self.path)),
                                                 authorization=auth))
        self.plan = FaultPlan(seed=7)
        source, factory = faulty(RepoSource(self.repo), self.plan)
        cfg = MountConfig(**config)  # type: ignore[arg-type]
        self.ns = Namespace(source, bridge, cfg, presentation_factory=factory)
        self.invalidator = Invalidations()
        self.commits = 0

    def commit_main(self) -> str:
        """A new commit on main that changes the native array's chunks."""
        self.commits += 1
        repo = ic.Repository.open(ic.local_filesystem_storage(str(self.path)))
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="native")[:] = np.arange(1000, dtype="i4") * (
            self.commits + 1)
        return s.commit(f"native x{self.commits + 1}")

    def expected(self, snapshot_id: str, keys: list[str] = KEYS) -> dict[str, bytes]:
        """The bytes of ``keys`` in a snapshot, through icechunk's own store."""
        repo = ic.Repository.open(ic.local_filesystem_storage(str(self.path)),
                                  authorize_virtual_chunk_access={
                                      self.built.container_prefix: LOCAL_ACCESS})
        store = repo.readonly_session(snapshot_id=snapshot_id).store
        out = {}
        for key in keys:
            buf = self.bridge.run(lambda key=key: store.get(key, default_buffer_prototype()))
            assert buf is not None, key
            out[key] = buf.to_bytes()
        return out


async def walk(ns: Namespace, path: str) -> int:
    """The inode of ``path`` from the root, one lookup per component (counted)."""
    ino = ROOT
    for name in path.split("/"):
        node = ns.lookup_known(ino, name)
        if node is not None:
            ino = node.ino
            continue
        attr = await ns.lookup(ino, name)
        if attr.ino == 0:
            raise FsError(errno.ENOENT)
        ino = attr.ino
    return ino


async def read_file(ns: Namespace, path: str) -> bytes:
    fh, f = await ns.open(await walk(ns, path))
    try:
        return bytes(await ns.read(fh, 0, f.size + 10))
    finally:
        ns.release(fh)


# -- the block cache ---------------------------------------------------------


async def test_block_cache_coalesces_concurrent_readers() -> None:
    cache = BlockCache(1 << 20)
    fetches = 0

    async def fetch() -> bytes:
        nonlocal fetches
        fetches += 1
        await trio.sleep(0.05)
        return b"x" * 100

    results: list[bytes] = []

    async def reader() -> None:
        results.append(await cache.get("k", 100, fetch))

    async with trio.open_nursery() as n:
        for _ in range(20):
            n.start_soon(reader)
    assert fetches == 1 and results == [b"x" * 100] * 20
    assert cache.stats.coalesced == 19 and cache.current_bytes == 100


async def test_a_cancelled_first_reader_does_not_fail_the_others() -> None:
    cache = BlockCache(1 << 20)
    calls = 0

    async def fetch() -> bytes:
        nonlocal calls
        calls += 1
        await trio.sleep(0.2 if calls == 1 else 0.01)
        return b"y" * 10

    got: list[bytes] = []
    async with trio.open_nursery() as n:
        first = trio.CancelScope()

        async def first_reader() -> None:
            with first:
                await cache.get("k", 100, fetch)

        async def second_reader() -> None:
            got.append(await cache.get("k", 100, fetch))

        n.start_soon(first_reader)
        await trio.sleep(0.02)
        n.start_soon(second_reader)
        await trio.sleep(0.02)
        first.cancel()
    assert got == [b"y" * 10] and calls == 2
    assert "k" in cache and not cache._flights


async def test_a_failed_prefetch_is_not_the_readers_error() -> None:
    cache = BlockCache(1 << 20)

    async def broken() -> bytes:
        await trio.sleep(0.05)
        raise OSError("prefetch failed")

    async def good() -> bytes:
        return b"z" * 5

    got: list[bytes] = []
    async with trio.open_nursery() as n:

        async def prefetch() -> None:
            with pytest.raises(OSError):
                await cache.prefetch("k", 5, broken)

        n.start_soon(prefetch)
        await trio.sleep(0.01)
        got.append(await cache.get("k", 5, good))  # waits on the prefetch, then fetches itself
    assert got == [b"z" * 5]


async def test_cached_and_inflight_bytes_stay_within_the_cache() -> None:
    """Twenty readers of distinct 300-byte blocks in a 2,000-byte cache (a fetch in
    flight reserves twice its size): at most three fetches run at once, the bound holds
    at every step, every reader gets its bytes, and a prefetch without room is not
    made."""
    cache = BlockCache(2000)
    highest = 0
    running = 0
    most_running = 0
    release = trio.Event()  # holds the first fetches until the prefetch was tried

    def fetcher(i: int) -> Callable[[], Awaitable[bytes]]:
        async def fetch() -> bytes:
            nonlocal highest, running, most_running
            running += 1
            most_running = max(most_running, running)
            highest = max(highest, cache.current_bytes + cache.inflight_bytes)
            await release.wait()
            await trio.sleep(0.01 * (i % 3))
            running -= 1
            return bytes([i]) * 300
        return fetch

    got: dict[int, bytes] = {}

    async def reader(i: int) -> None:
        got[i] = await cache.get(i, 300, fetcher(i))
        assert cache.current_bytes + cache.inflight_bytes <= 2000

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(reader, i)
        await trio.testing.wait_all_tasks_blocked()
        # three fetches in flight hold 1,800 of 2,000 bytes: no room for a prefetch
        assert running == 3
        assert not await cache.prefetch("p", 300, fetcher(99))
        release.set()
    assert got == {i: bytes([i]) * 300 for i in range(20)}
    assert highest <= 2000 and most_running == 3
    assert cache.current_bytes <= 2000 and cache.inflight_bytes == 0
    # a block bigger than the cache is fetched alone and not kept
    async def big() -> bytes:
        return b"b" * 5000

    assert await cache.get("big", 5000, big) == b"b" * 5000
    assert "big" not in cache and cache.current_bytes <= 2000


async def test_a_failed_or_timed_out_fetch_is_not_cached(template, tmp_path, bridge) -> None:
    h = Harness(template, tmp_path, bridge, timeout=0.5)
    await h.ns.start()
    want = h.expected(h.built.snapshots["day1"])
    h.plan.add("hang", ops={"read"}, match="field/c/0/0", times=1)
    h.plan.add("error", ops={"read"}, match="field/c/0/0", times=1)
    h.plan.add("short", ops={"read"}, match="field/c/0/0", times=1)
    for _ in range(3):
        with trio.fail_after(5):
            with pytest.raises(FsError) as e:
                await read_file(h.ns, "field/c/0/0")
        assert e.value.errno == errno.EIO
    assert await read_file(h.ns, "field/c/0/0") == want["field/c/0/0"]
    assert h.plan.injected == {"hang": 1, "error": 1, "short": 1}


async def test_a_prefetch_that_fails_leaves_reads_right(template, tmp_path, bridge) -> None:
    h = Harness(template, tmp_path, bridge, prefetch=3)
    await h.ns.start()
    want = h.expected(h.built.snapshots["day1"])
    h.plan.add("error", ops={"read"}, match="sst/c/1")  # every fetch of sst/c/1/...
    async with trio.open_nursery() as n:
        await n.start(h.ns.run_prefetcher)
        assert await read_file(h.ns, "sst/c/0/0/0/0") == want["sst/c/0/0/0/0"]
        await trio.sleep(0.3)  # the prefetches of sst/c/1.., c/2.., c/3.. ran (one failed)
        assert h.ns.stats()["prefetched"] >= 2
        failed = h.ns.stats()["prefetch_wasted"]
        assert failed >= 1  # the failed prefetch of sst/c/1/...
        assert await read_file(h.ns, "sst/c/3/0/0/0") == want["sst/c/3/0/0/0"]
        assert h.ns.stats()["prefetch_used"] >= 1
        with pytest.raises(FsError) as e:
            await read_file(h.ns, "sst/c/1/0/0/0")  # the reader's own error: its own fetch
        assert e.value.errno == errno.EIO
        h.plan.clear()
        assert await read_file(h.ns, "sst/c/1/0/0/0")
        n.cancel_scope.cancel()


async def read_in_turn(h: Harness, names: list[str], want: dict[str, bytes], pause: float
                       ) -> dict[str, int | float]:
    """One reader reading ``names`` in turn with the prefetcher running, ``pause``
    seconds of its own work between files; each file's bytes checked; the counters."""
    async with trio.open_nursery() as n:
        await n.start(h.ns.run_prefetcher)
        for name in names:
            assert await read_file(h.ns, name) == want[name], name
            await trio.sleep(pause)
        stats = h.ns.stats()
        n.cancel_scope.cancel()
    return stats


@pytest.mark.parametrize("remote", [True, False])
async def test_a_walk_that_lists_first_finds_its_first_files_on_their_way(
        template, tmp_path, bridge, remote: bool) -> None:
    """``find ... | xargs cat`` lists the whole tree before it reads. On a remote mount
    the first listing of a chunk directory starts a stream of ``prefetch`` files, and
    the listings after it start none while those are unread (a walk that reads nothing
    costs one window); the reader then finds even its first file fetched, and its
    hits grow the window as a read-started stream's do. Listings on a local mount
    fetch nothing."""
    h = Harness(template, tmp_path, bridge, prefetch=2, remote=remote)
    if remote:
        h.plan.add("latency", ops={"read"}, seconds=0.01)
    await h.ns.start()
    names = [f"field/c/{i}/{j}" for i in range(4) for j in range(3)]
    want = h.expected(h.built.snapshots["day1"], names)
    async with trio.open_nursery() as n:
        await n.start(h.ns.run_prefetcher)
        for i in range(4):  # the walk: every chunk directory listed, nothing read
            listed = await h.ns.listdir(await walk(h.ns, f"field/c/{i}"))
            assert [name for name, _, _ in listed] == ["0", "1", "2"]
        await trio.sleep(0.3)  # the listing's prefetches ran
        walked = h.ns.stats()
        for name in names:
            assert await read_file(h.ns, name) == want[name], name
            await trio.sleep(0.02)
        stats = h.ns.stats()
        n.cancel_scope.cancel()
    if remote:
        assert walked["listing_streams"] == 1 and walked["fetches"] == 2, walked
        assert walked["cache_misses"] == 0, walked
        assert stats["cache_misses"] == 0, stats  # the first file too came ahead
        assert stats["prefetch_used"] == len(names), stats
    else:
        assert walked["listing_streams"] == 0 and walked["fetches"] == 0, walked
        assert stats["cache_misses"] == 1, stats
    assert stats["fetches"] == len(names) and stats["prefetch_wasted"] == 0, stats


async def test_a_reader_going_backward_is_read_ahead_of(template, tmp_path, bridge) -> None:
    """Dask reads an array's chunks backward (string order, descending): a stream's
    first read looks both ways and its first hit turns it backward."""
    h = Harness(template, tmp_path, bridge, prefetch=2)
    await h.ns.start()
    names = [f"field/c/{i}/{j}" for i in range(4) for j in range(3)][::-1]
    stats = await read_in_turn(h, names, h.expected(h.built.snapshots["day1"], names), 0.05)
    # the first read fetches; every later one finds its file prefetched
    assert stats["prefetch_used"] == len(names) - 1, stats
    assert stats["cache_misses"] == 1, stats
    assert stats["prefetch_wasted"] == 0, stats


@pytest.mark.parametrize("remote", [True, False])
async def test_a_reader_in_listing_order_finds_each_next_array_prefetched(
        template, tmp_path, bridge, remote: bool) -> None:
    """``find``, ``cp -r`` and ``tar`` read array after array in listing order: on a
    remote mount (10 ms injected into every read, standing in for the round trip), the
    stream goes on into the next array chunked alike (its index read ahead by a
    Prepare job) before the reader gets there, so only the very first file is fetched
    by a reader; an array chunked otherwise between them (a coordinate) is passed over.
    On a local mount the index is not read ahead: each array's first read fetches
    (reading ahead would cost more CPU than it hides)."""
    h = Harness(template, tmp_path, bridge, prefetch=2, remote=remote)
    if remote:
        h.plan.add("latency", ops={"read"}, seconds=0.01)
    repo = ic.Repository.open(ic.local_filesystem_storage(str(h.path)))
    s = repo.writable_session("main")
    root = zarr.open_group(s.store)
    for name in ("t1", "t2", "t3"):  # listing order: ..., t1, t1_coord, t2, t3
        root.create_array(name, shape=(6,), chunks=(1,), dtype="i4", fill_value=0,
                          compressors=None)[:] = np.arange(1, 7, dtype="i4") * 100
    root.create_array("t1_coord", shape=(3,), chunks=(3,), dtype="i4", fill_value=0,
                      compressors=None)[:] = [1, 2, 3]
    s.commit("three arrays chunked alike and a coordinate between")
    await h.ns.start()
    names = [f"{a}/c/{i}" for a in ("t1", "t2", "t3") for i in range(6)]
    stats = await read_in_turn(h, names, h.expected(repo.lookup_branch("main"), names), 0.02)
    arrays_fetched_by_readers = 1 if remote else 3
    assert stats["cache_misses"] == arrays_fetched_by_readers, stats
    assert stats["prefetch_used"] == len(names) - arrays_fetched_by_readers, stats
    assert stats["fetches"] == len(names), stats  # not t1_coord's file
    assert stats["prefetch_wasted"] == 0, stats


async def test_after_a_whole_array_the_next_stream_starts_wide(template, tmp_path, bridge
                                                              ) -> None:
    """A reader that went through one array at the widest window has the next array's
    files queued by its first read, not ``prefetch`` of them (here a reader going
    backward, whose stream does not go on into the next array by itself)."""
    h = Harness(template, tmp_path, bridge, prefetch=2)
    await h.ns.start()
    async with trio.open_nursery() as n:
        await n.start(h.ns.run_prefetcher)
        for i in reversed(range(4)):
            for j in reversed(range(3)):
                await read_file(h.ns, f"field/c/{i}/{j}")
                await trio.sleep(0.02)
        before = h.ns.stats()["prefetched"]
        await read_file(h.ns, "sst/c/0/0/0/0")
        await trio.sleep(0.2)
        made = h.ns.stats()["prefetched"] - before
        n.cancel_scope.cancel()
    assert made == 3  # sst/c/1, c/2 and c/3 (a window of 2 would be two of them)


# -- following branches ------------------------------------------------------


async def test_the_poller_survives_every_failure(template, tmp_path, bridge) -> None:
    h = Harness(template, tmp_path, bridge, poll_interval=0.02, timeout=0.5)
    root = await h.ns.start()
    old = root.snapshot_id
    new = h.commit_main()

    class BrokenStaged(StagedSource):
        def staged_ids(self) -> dict[str, str]:
            raise RuntimeError("injected: staged state unavailable")

        async def staged_view(self, staged_id: str) -> SnapshotView:
            raise AssertionError

    async with trio.open_nursery() as n:
        await n.start(h.ns.run_poller, h.invalidator)
        # the new snapshot cannot be read: the root keeps the old one, retried each poll
        h.plan.add("error", ops={"view"}, match=new)
        await trio.sleep(0.2)
        assert h.ns.root_version().snapshot_id == old
        # a transient backend error while the branch moves, a hang, a broken staged source,
        # a kernel that refuses invalidations: the poller goes on
        h.plan.clear()
        h.plan.add("error", ops={"branches"}, times=2)
        h.plan.add("hang", ops={"reload_config"}, times=1)
        h.plan.add("error", ops={"written_at_ns"}, times=1)
        h.ns.staged = BrokenStaged()
        await trio.sleep(0.3)
        h.ns.staged = None
        h.invalidator.fail = True
        with trio.fail_after(10):
            while h.ns.root_version().snapshot_id != new:
                await trio.sleep(0.05)
        n.cancel_scope.cancel()
    assert h.plan.injected["error"] >= 3 and h.plan.injected["hang"] == 1
    assert await read_file(h.ns, "native/c/0") == h.expected(new)["native/c/0"]


async def test_concurrent_polls_move_a_branch_once(template, tmp_path, bridge) -> None:
    h = Harness(template, tmp_path, bridge)
    await h.ns.start()
    await walk(h.ns, "native/c/0")
    new = h.commit_main()
    h.plan.add("latency", ops={"branches"}, seconds=0.1, times=2)  # both polls overlap
    results: list[list[str]] = []

    async def poll() -> None:
        results.append(await h.ns.poll_branches(h.invalidator))

    async with trio.open_nursery() as n:
        n.start_soon(poll)
        n.start_soon(poll)
    assert sorted(results) == [[], ["root"]]
    assert h.ns.root_version().snapshot_id == new
    assert h.invalidator.inodes == [ROOT]  # invalidated once, not twice


async def test_poll_branches_never_raises(template, tmp_path, bridge) -> None:
    h = Harness(template, tmp_path, bridge)
    await h.ns.start()
    h.commit_main()
    for fault in ("error", "cancel", "short"):
        h.plan.clear()
        h.plan.add(fault)  # every call of every kind fails
        assert await h.ns.poll_branches(h.invalidator) == []
    h.plan.clear()
    assert await h.ns.poll_branches(h.invalidator) == ["root"]


# -- the state machine -------------------------------------------------------

FAULT_SETS: dict[str, Callable[[FaultPlan], None]] = {
    "none": lambda p: None,
    "reads fail": lambda p: p.add("error", ops={"read"}, probability=0.3),
    "short reads": lambda p: p.add("short", ops={"read"}, probability=0.3),
    "stats fail": lambda p: p.add("error", ops={"stat", "list_dir"}, probability=0.3),
    "heads fail": lambda p: p.add("error", ops={"branches", "view", "written_at_ns"},
                                  probability=0.5),
    "cancelled": lambda p: p.add("cancel", probability=0.2),
    "slow": lambda p: p.add("latency", ops={"read", "stat"}, seconds=0.01, probability=0.3),
    "hangs": lambda p: p.add("hang", ops={"read"}, probability=0.1, times=2),
}
DIRS = ["", "sst", "sst/c", "native/c", "field/c/3", "grp"]


def run_core_machine(template: tuple[Path, BuiltRepo], where: Path, bridge: AsyncioBridge,
                     max_examples: int) -> dict[str, int]:
    totals: dict[str, int] = {}
    counter = [0]

    class CoreMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            counter[0] += 1
            d = where / f"ex{counter[0]}"
            d.mkdir()
            self.h = Harness(template, d, bridge, timeout=0.3)
            self.ns = self.h.ns
            trio.run(self.ns.start)
            self.model: dict[str, dict[str, bytes]] = {}
            self.counts: dict[int, int] = {}  # inode -> lookups the "kernel" holds
            self.paths: dict[int, str] = {}

        def want(self, snapshot_id: str) -> dict[str, bytes]:
            if snapshot_id not in self.model:
                self.model[snapshot_id] = self.h.expected(snapshot_id)
            return self.model[snapshot_id]

        def _run(self, fn: Callable[[], object]) -> object:
            async def main() -> object:
                with trio.fail_after(10):  # nothing waits past the deadline for long
                    return await fn()  # type: ignore[misc]
            return trio.run(main)

        @initialize(faults=st.sampled_from(sorted(FAULT_SETS)))
        def first_faults(self, faults: str) -> None:
            FAULT_SETS[faults](self.h.plan)

        @rule(faults=st.sampled_from(sorted(FAULT_SETS)))
        def set_faults(self, faults: str) -> None:
            self.h.plan.clear()
            FAULT_SETS[faults](self.h.plan)

        def walk(self, path: str) -> int | None:
            """Look ``path`` up one component at a time, counting each reply like the
            kernel; None after an (EIO) error."""
            ino = ROOT
            if not path:
                return ino
            for name in path.split("/"):
                try:
                    node = self.ns.lookup_known(ino, name)
                    if node is not None:
                        child = node.ino
                    else:
                        attr = self._run(lambda ino=ino, name=name: self.ns.lookup(ino, name))
                        child = attr.ino  # type: ignore[attr-defined]
                except FsError as e:
                    assert e.errno == errno.EIO, (path, e)
                    return None
                assert child != 0, path  # every path exists in every snapshot of main
                self.counts[child] = self.counts.get(child, 0) + 1
                ino = child
            return ino

        @rule(key=st.sampled_from(KEYS))
        def lookup(self, key: str) -> None:
            self.walk(key)

        @rule(data=st.data())
        def forget(self, data: st.DataObject) -> None:
            held = sorted(i for i, n in self.counts.items() if n > 0)
            if not held:
                return
            ino = data.draw(st.sampled_from(held))
            n = data.draw(st.integers(1, self.counts[ino]))
            self.ns.forget(ino, n)
            self.counts[ino] -= n

        @rule(d=st.sampled_from(DIRS), accept=st.integers(1, 7), move=st.booleans())
        def readdir(self, d: str, accept: int, move: bool) -> None:
            """A whole pass over a directory in requests of ``accept`` entries (the
            last one refused, like a full reply buffer), the branch maybe moving
            between requests: never an entry skipped or repeated."""
            ino = self.walk(d)
            if ino is None:
                return
            dh = self.ns.opendir(ino)
            names: list[str] = []
            offset = 0
            try:
                while True:
                    got: list[tuple[str, int, int]] = []

                    def emit(name: str, attr: object, nxt: int,
                             got: list[tuple[str, int, int]] = got) -> bool:
                        if len(got) == accept:
                            return False
                        got.append((name, attr.ino, nxt))  # type: ignore[attr-defined]
                        return True

                    try:
                        self._run(lambda off=offset, emit=emit: self.ns.readdir(dh, off, emit))
                    except FsError as e:
                        assert e.errno == errno.EIO, (d, e)
                        return
                    for name, cino, nxt in got:
                        names.append(name)
                        self.counts[cino] = self.counts.get(cino, 0) + 1
                        assert nxt == offset + 1
                        offset = nxt
                    if len(got) < accept:
                        break
                    if move:
                        move = False
                        self.h.commit_main()
                        self._run(lambda: self.ns.poll_branches(self.h.invalidator))
            finally:
                self.ns.releasedir(dh)
            assert len(names) == len(set(names)), names  # never repeated
            if d == "":
                assert {"sst", "native", "field", "grp", "zarr.json"} <= set(names), names

        @rule(key=st.sampled_from([k for k in KEYS if "/" in k]),
              offset=st.integers(0, 3000), length=st.integers(0, 5000))
        def read(self, key: str, offset: int, length: int) -> None:
            ino = self.walk(key)
            if ino is None:
                return
            try:
                fh, _f = self._run(lambda: self.ns.open(ino))  # type: ignore[misc]
            except FsError as e:
                assert e.errno == errno.EIO, (key, e)
                return
            snapshot = (self.ns.xattr(ino, XATTR_SNAPSHOT) or b"").decode()
            want = self.want(snapshot)[key]
            try:
                data = self._run(lambda: self.ns.read(fh, offset, length))
                assert bytes(data) == want[offset:offset + length], (  # type: ignore[call-overload]
                    key, offset, length)
            except FsError as e:
                assert e.errno == errno.EIO, (key, e)
            finally:
                self.ns.release(fh)

        @rule()
        def move_branch(self) -> None:
            self.h.commit_main()

        @rule()
        def poll(self) -> None:
            self._run(lambda: self.ns.poll_branches(self.h.invalidator))

        @invariant()
        def lookup_counts_match(self) -> None:
            for ino, node in self.ns.inodes.nodes.items():
                assert node.lookups >= 0, (ino, node)
            for ino, n in self.counts.items():
                assert n >= 0
                node = self.ns.inodes.nodes.get(ino)
                if n > 0:
                    assert node is not None and node.lookups == n, (ino, n, node)

        def teardown(self) -> None:
            for k, v in self.h.plan.injected.items():
                totals[k] = totals.get(k, 0) + v

    CoreMachine.TestCase.settings = settings(
        max_examples=max_examples, stateful_step_count=30, deadline=None,
        suppress_health_check=list(HealthCheck), derandomize=True)
    CoreMachine.TestCase().runTest()
    return totals


def test_core_state_machine(template, tmp_path, bridge) -> None:
    totals = run_core_machine(template, tmp_path, bridge, max_examples=40)
    print("injected faults:", totals)
    assert sum(totals.values()) > 0


# -- directory listings ------------------------------------------------------


async def test_a_big_listing_is_taken_once_and_served_by_offset(tmp_path, bridge) -> None:
    """10,000 chunk files of a v2 array directory, listed the way the kernel does (pages
    of entries, the last of each page refused): the presentation lists once per pass,
    inodes are made only for entries the kernel took, and each page costs its entries."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "bench"))
    import make_million

    built = make_million.build(tmp_path / "big", grid=100, files=4, verbose=False)
    auth = Authorization.load([built.container_prefix], environ={})
    repo = await trio.to_thread.run_sync(lambda: bridge.run(lambda: Repo.open(
        parse_repo_url(str(built.repo_path)), authorization=auth)))
    plan = FaultPlan()
    source, factory = faulty(RepoSource(repo), plan)
    ns = Namespace(source, bridge, MountConfig(presentation="v2"),
                   presentation_factory=factory)
    await ns.start()
    arr = (await ns.lookup(ROOT, "arr")).ino
    before = ns.inode_count
    dh = ns.opendir(arr)
    names: list[str] = []
    offset = 0
    page_times = []
    while True:
        page: list[str] = []

        def emit(name: str, attr: object, nxt: int, page: list[str] = page) -> bool:
            if len(page) == 100:
                return False
            page.append(name)
            return True

        t = trio.current_time()
        await ns.readdir(dh, offset, emit)
        page_times.append(trio.current_time() - t)
        names += page
        offset += len(page)
        if len(page) < 100:
            break
        if offset == 5000:  # half-way, the kernel forgets what it took so far
            for name in names:
                node = ns.lookup_known(arr, name)
                assert node is not None
                ns.forget(node.ino, 2)  # the listing's reference and lookup_known's
    ns.releasedir(dh)
    assert len(names) == len(set(names)) == 10_002  # .zarray, .zattrs and every chunk
    assert plan.calls["list_dir"] == 1
    assert ns.inode_count - before == 10_002 - 5000  # only what the kernel holds
    # each page costs its own entries: the last pages are not slower than the first ones
    first, last = sorted(page_times[1:11]), sorted(page_times[-11:-1])
    assert last[5] < 5 * first[5] + 0.002, (first, last)


# -- decoded chunks ----------------------------------------------------------


async def test_a_large_decoded_chunk_is_decoded_once(tmp_path, bridge, monkeypatch) -> None:
    """A 24 MiB decoded chunk read through v3-decoded in 8 MiB blocks, sequentially and
    all at once, with a decoded cache smaller than the chunk: one decode each time."""
    from zarr.codecs import ZstdCodec

    from vchunkfs.presentation import converted
    from vchunkfs.presentation.codecs import CodecChain

    values = (np.arange(6 * 1024 * 1024, dtype="<i4") % 1000).reshape(3 * 1024, 2 * 1024)
    repo_path = tmp_path / "big"
    icrepo = ic.Repository.create(ic.local_filesystem_storage(str(repo_path)))
    s = icrepo.writable_session("main")
    zarr.create_array(s.store, name="big", shape=values.shape, chunks=values.shape,
                      dtype="<i4", compressors=[ZstdCodec(level=1)], fill_value=0)[:] = values
    s.commit("one big chunk")
    repo = await trio.to_thread.run_sync(lambda: bridge.run(lambda: Repo.open(
        parse_repo_url(str(repo_path)))))

    decodes = 0
    original = CodecChain.decode

    def counting(self: CodecChain, stored: bytes) -> bytes:
        nonlocal decodes
        decodes += 1
        return original(self, stored)

    monkeypatch.setattr(CodecChain, "decode", counting)
    monkeypatch.setattr(converted, "_DECODED", converted._DecodedCache(8 * 1024 * 1024))
    ns = Namespace(RepoSource(repo), bridge, MountConfig(presentation="v3-decoded"))
    await ns.start()
    want = values.tobytes()
    assert await read_file(ns, "big/c/0/0") == want
    assert decodes == 1

    ns.cache.clear()
    monkeypatch.setattr(converted, "_DECODED", converted._DecodedCache(8 * 1024 * 1024))
    decodes = 0
    fh, _f = await ns.open(await walk(ns, "big/c/0/0"))
    parts: dict[int, bytes] = {}

    async def block(i: int) -> None:
        parts[i] = bytes(await ns.read(fh, i * 8 * 1024 * 1024, 8 * 1024 * 1024))

    async with trio.open_nursery() as n:
        for i in range(3):
            n.start_soon(block, i)
    ns.release(fh)
    assert b"".join(parts[i] for i in range(3)) == want
    assert decodes == 1


# -- a fault campaign ----------------------------------------------------------


async def run_fault_campaign(template: tuple[Path, BuiltRepo], where: Path,
                             bridge: AsyncioBridge, min_faults: int,
                             max_seconds: float) -> dict[str, int]:
    """Readers, listers, forgets, the poller and the prefetcher against a repository whose
    main moves every 0.15 s, with faults injected into every kind of call; returns the
    counts. Every request runs under a deadline as under FUSE."""
    from vchunkfs.fs.namespace import REQUEST_DEADLINE

    timeout = 0.2
    h = Harness(template, where, bridge, timeout=timeout, prefetch=2, poll_interval=0.05)
    await h.ns.start()
    ns = h.ns
    plan = h.plan
    plan.add("hang", ops={"read", "stat", "list_dir", "branches"}, probability=0.01)
    plan.add("cancel", probability=0.03)
    plan.add("short", ops={"read"}, probability=0.05)
    plan.add("latency", probability=0.1, seconds=0.005)
    plan.add("error", probability=0.15)
    models: dict[str, dict[str, bytes]] = {}
    counts = {"requests": 0, "eio": 0, "wrong_bytes": 0, "past_deadline": 0, "reads_ok": 0,
              "listings": 0, "commits": 0}
    held: dict[int, int] = {}
    rng = np.random.default_rng(3)
    slowest = [0.0]

    async def request(fn: Callable[[], object]) -> object:
        """One request as the adapter runs it: a deadline, errors as errno."""
        counts["requests"] += 1
        token = REQUEST_DEADLINE.set(trio.current_time() + timeout)
        start = trio.current_time()
        try:
            return await fn()  # type: ignore[misc]
        except FsError as e:
            assert e.errno == errno.EIO, e
            counts["eio"] += 1
            return None
        finally:
            REQUEST_DEADLINE.reset(token)
            took = trio.current_time() - start
            slowest[0] = max(slowest[0], took)
            if took > timeout + 0.1:
                counts["past_deadline"] += 1

    async def model(snapshot: str) -> dict[str, bytes]:
        if snapshot not in models:
            models[snapshot] = await trio.to_thread.run_sync(h.expected, snapshot)
        return models[snapshot]

    async def walk_counted(path: str) -> int | None:
        ino = ROOT
        for name in path.split("/"):
            node = ns.lookup_known(ino, name)
            if node is not None:
                child = node.ino
            else:
                attr = await request(lambda ino=ino, name=name: ns.lookup(ino, name))
                if attr is None:
                    return None
                child = attr.ino  # type: ignore[attr-defined]
                assert child != 0, path
            held[child] = held.get(child, 0) + 1
            ino = child
        return ino

    async def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        while True:
            # answers from memory never await; a busy loop here would also starve the
            # committing thread of the GIL (34 commits in 90 s, too few faults)
            await trio.sleep(0.001)
            key = KEYS[int(r.integers(len(KEYS)))]
            ino = await walk_counted(key)
            if ino is None:
                continue
            opened = await request(lambda ino=ino: ns.open(ino))
            if opened is None:
                continue
            fh, f = opened  # type: ignore[misc]
            snapshot = (ns.xattr(ino, XATTR_SNAPSHOT) or b"").decode()
            off = int(r.integers(0, max(f.size, 1)))
            n = int(r.integers(1, f.size + 2))
            data = await request(lambda fh=fh, off=off, n=n: ns.read(fh, off, n))
            ns.release(fh)
            if data is not None:
                want = (await model(snapshot))[key][off:off + n]
                if bytes(data) != want:  # type: ignore[call-overload]
                    counts["wrong_bytes"] += 1
                else:
                    counts["reads_ok"] += 1

    async def lister(seed: int) -> None:
        r = np.random.default_rng(seed)
        while True:
            await trio.sleep(0.001)
            d = DIRS[int(r.integers(len(DIRS)))]
            ino = ROOT if not d else await walk_counted(d)
            if ino is None:
                continue
            dh = ns.opendir(ino)
            names: list[str] = []
            offset = 0
            page = int(r.integers(1, 6))
            try:
                while True:
                    got: list[tuple[str, int]] = []

                    def emit(name: str, attr: Attr, nxt: int,
                             got: list[tuple[str, int]] = got, page: int = page) -> bool:
                        if len(got) == page:
                            return False
                        got.append((name, attr.ino))
                        return True

                    ok = await request(lambda off=offset, emit=emit, dh=dh: _done(
                        ns.readdir(dh, off, emit)))
                    if ok is None:
                        break
                    for name, cino in got:
                        names.append(name)
                        held[cino] = held.get(cino, 0) + 1
                    offset += len(got)
                    if len(got) < page:
                        counts["listings"] += 1
                        break
            finally:
                ns.releasedir(dh)
            assert len(names) == len(set(names)), names

    async def forgetter() -> None:
        while True:
            await trio.sleep(0.01)
            for ino in [i for i, n in held.items() if n > 0][: int(rng.integers(1, 20))]:
                n = held[ino]
                ns.forget(ino, n)
                held[ino] = 0

    async def writer() -> None:
        while True:
            await trio.sleep(0.15)
            await trio.to_thread.run_sync(h.commit_main)
            counts["commits"] += 1

    started = trio.current_time()
    async with trio.open_nursery() as n:
        await n.start(ns.run_prefetcher)
        await n.start(ns.run_poller, h.invalidator)
        for k in range(8):
            n.start_soon(reader, 100 + k)
        for k in range(2):
            n.start_soon(lister, 200 + k)
        n.start_soon(forgetter)
        n.start_soon(writer)
        while (sum(plan.injected.values()) < min_faults
               and trio.current_time() - started < max_seconds):
            await trio.sleep(0.1)
            for ino, node in ns.inodes.nodes.items():
                assert node.lookups >= 0, (ino, node)
        n.cancel_scope.cancel()
    counts["faults"] = sum(plan.injected.values())
    counts.update({f"faults_{k}": v for k, v in plan.injected.items()})
    counts["seconds"] = int(trio.current_time() - started)
    counts["slowest_request_ms"] = int(slowest[0] * 1000)
    return counts


async def _done(awaitable: Awaitable[None]) -> bool:
    await awaitable
    return True


async def test_fault_campaign(template, tmp_path, bridge) -> None:
    counts = await run_fault_campaign(template, tmp_path, bridge, min_faults=1000,
                                      max_seconds=90)
    print("fault campaign:", counts)
    assert counts["faults"] >= 1000, counts
    assert counts["wrong_bytes"] == 0 and counts["past_deadline"] == 0, counts
    assert counts["reads_ok"] > 100 and counts["commits"] >= 1, counts


def test_one_table_of_defaults() -> None:
    """The core's configuration defaults are the mount options' defaults."""
    from vchunkfs.daemon.options import MountOptions

    opts = MountOptions(source="x", mountpoint="y")
    cfg = MountConfig()
    assert (cfg.version, cfg.presentation, cfg.cache_bytes, cfg.show_versions,
            cfg.poll_interval, cfg.prefetch, cfg.timeout) == (
        opts.version, opts.presentation, opts.cache_size, opts.show_versions,
        opts.poll_interval, opts.prefetch, opts.timeout)


async def test_a_local_read_that_hangs_ends_at_the_deadline(template, tmp_path, bridge,
                                                           monkeypatch) -> None:
    """A local read on the trio side (``Presentation.local_read``) stuck in its worker
    thread (a hung disk or NFS server, stood in for by a sleep) fails with EIO at the
    mount's deadline; the thread is abandoned and the mount goes on serving."""
    import time

    from vchunkfs.presentation.base import ZarrV3Presentation

    h = Harness(template, tmp_path, bridge, timeout=0.3)
    await h.ns.start()
    want = h.expected(h.built.snapshots["day1"], ["field/c/0/0", "field/c/0/1"])
    release = trio.Event()
    real = ZarrV3Presentation.local_read

    def stuck(self, path, offset, length):  # type: ignore[no-untyped-def]
        if path == "field/c/0/0" and not release.is_set():
            return lambda: time.sleep(2) or b""
        return real(self, path, offset, length)

    monkeypatch.setattr(ZarrV3Presentation, "local_read", stuck)
    began = trio.current_time()
    with trio.fail_after(5), pytest.raises(FsError) as e:
        await read_file(h.ns, "field/c/0/0")
    assert e.value.errno == errno.EIO
    assert trio.current_time() - began < 1.5
    assert h.ns.stats()["local_fetches"] == 1
    release.set()
    assert await read_file(h.ns, "field/c/0/1") == want["field/c/0/1"]
    assert await read_file(h.ns, "field/c/0/0") == want["field/c/0/0"]  # nothing cached
