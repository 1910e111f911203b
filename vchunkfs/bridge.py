"""The one bridge from trio and plain threads to icechunk's asyncio API.

icechunk's (and obstore's) ``async`` methods are Rust futures that must be
*created* inside a running asyncio loop. vchunkfs therefore runs a single
asyncio loop in a daemon thread and hands it zero-argument coroutine
functions, which the loop thread calls (so the Rust future is created there).

Two entry points:

* :meth:`AsyncioBridge.run` blocks the calling thread (command line, tests,
  worker threads).
* :meth:`AsyncioBridge.call` awaits from trio. The asyncio side wakes the trio
  task through ``TrioToken.run_sync_soon``, so no trio worker thread is parked
  per call and thousands of calls can be in flight. It costs about as much as
  ``trio.to_thread`` + ``Future.result()`` serially (0.2-0.6 ms a call here, two
  cross-thread wake-ups; see ``scripts/bench/bench_bridge.py`` and
  docs/benchmarks.md), which is why hot paths keep their own caches.

Cancelling the trio caller cancels the asyncio task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def _invoke[R](fn: Callable[[], Awaitable[R]]) -> R:
    return await fn()


class AsyncioBridge:
    """An asyncio event loop in a dedicated daemon thread."""

    def __init__(self, name: str = "vchunkfs-asyncio") -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def submit(self, fn: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Schedule ``fn()`` on the loop thread; return a thread-safe future."""
        if self._loop.is_closed():
            raise RuntimeError("the asyncio bridge is closed")
        return asyncio.run_coroutine_threadsafe(_invoke(fn), self._loop)

    def run(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None,
            what: str = "") -> T:
        """Run ``fn()`` on the loop and block this thread for its result.

        With ``timeout`` (seconds), a call still running then is cancelled and
        :class:`~vchunkfs.errors.BackendTimeoutError` naming ``what`` is raised.
        Must not be called from the loop thread itself (it would deadlock).
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("AsyncioBridge.run called from its own loop thread")
        future = self.submit(fn)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():
                return future.result()
            future.cancel()
            from vchunkfs.errors import BackendTimeoutError

            raise BackendTimeoutError(what, timeout or 0.0) from None

    async def call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None,
                   what: str = "") -> T:
        """Await ``fn()`` from trio without occupying a trio worker thread.

        With ``timeout`` (seconds), a call still running then is cancelled on the
        loop and :class:`~vchunkfs.errors.BackendTimeoutError` naming ``what`` is
        raised; its result, if it ever comes, is dropped (never cached).
        """
        import trio  # here, not at the top: commands that never run trio skip its 0.1 s import

        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = self.submit(fn)

        def wake(_: concurrent.futures.Future[T]) -> None:
            # if the trio run ended first, nobody is waiting any more
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            if timeout is None:
                await done.wait()
            else:
                with trio.move_on_after(max(timeout, 0.0)):
                    await done.wait()
        except BaseException:
            future.cancel()
            raise
        if not future.done():
            future.cancel()
            from vchunkfs.errors import BackendTimeoutError

            raise BackendTimeoutError(what, max(timeout or 0.0, 0.0))
        return future.result()

    def close(self) -> None:
        """Stop the loop and join its thread. Idempotent."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


_shared: AsyncioBridge | None = None
_shared_lock = threading.Lock()


def shared_bridge() -> AsyncioBridge:
    """The process-wide bridge, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.loop.is_closed():
            _shared = AsyncioBridge()
        return _shared


def close_shared_bridge() -> None:
    """Stop the process-wide bridge, if one was started."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None
