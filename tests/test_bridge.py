"""The trio <-> asyncio bridge: results, errors, concurrency, cancellation."""

from __future__ import annotations

import asyncio
import threading

import icechunk as ic
import pytest
import trio

from vchunkfs.bridge import AsyncioBridge


async def test_icechunk_async_call_from_trio(bridge: AsyncioBridge):
    # icechunk's async API fails under trio unless created on the asyncio loop
    storage = ic.in_memory_storage()
    repo = await bridge.call(lambda: ic.Repository.create_async(storage))
    assert await bridge.call(repo.list_branches_async) == {"main"}


async def test_errors_propagate(bridge: AsyncioBridge):
    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await bridge.call(boom)


async def test_calls_run_concurrently(bridge: AsyncioBridge):
    async def sleepy() -> float:
        await asyncio.sleep(0.2)
        return 1.0

    start = trio.current_time()
    results: list[float] = []
    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(lambda: _append(results, bridge.call(sleepy)))
    assert len(results) == 50 and trio.current_time() - start < 1.5


async def _append(out: list[float], awaitable) -> None:
    out.append(await awaitable)


async def test_cancel_from_trio_cancels_asyncio_task(bridge: AsyncioBridge):
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with trio.move_on_after(0.1):
        await bridge.call(forever)
    await trio.to_thread.run_sync(cancelled.wait, 5)
    assert cancelled.is_set()


def test_run_from_thread_and_guard(bridge: AsyncioBridge):
    async def where() -> str:
        return threading.current_thread().name

    assert bridge.run(where) == "test-bridge"

    async def reenter() -> str:
        return bridge.run(where)

    with pytest.raises(RuntimeError, match="its own loop thread"):
        bridge.run(reenter)


def test_close_is_idempotent():
    b = AsyncioBridge()
    b.close()
    b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(asyncio.sleep)  # type: ignore[arg-type]


async def test_a_call_past_its_deadline_is_cancelled_and_named(bridge: AsyncioBridge):
    from vchunkfs.errors import BackendTimeoutError

    cancelled = threading.Event()

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = trio.current_time()
    with pytest.raises(BackendTimeoutError) as e:
        await bridge.call(hang, timeout=0.2, what="read x/c/0")
    assert 0.2 <= trio.current_time() - start < 1.0
    assert str(e.value) == "timed out after 0.2 s: read x/c/0"
    assert await trio.to_thread.run_sync(cancelled.wait, 5)

    async def quick() -> int:
        return 7

    assert await bridge.call(quick, timeout=0.2) == 7


def test_run_with_a_deadline(bridge: AsyncioBridge):
    from vchunkfs.errors import BackendTimeoutError

    async def hang() -> None:
        await asyncio.Event().wait()

    with pytest.raises(BackendTimeoutError, match="open the repository"):
        bridge.run(hang, timeout=0.1, what="open the repository")
