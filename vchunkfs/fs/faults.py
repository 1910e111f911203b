"""Fault injection for the filesystem core: a :class:`VersionSource` wrapper whose calls
fail, stall, hang, come back short or are cancelled on a schedule a test sets.

    plan = FaultPlan(seed=1)
    plan.add("error", ops={"read"}, probability=0.2)
    plan.add("hang", ops={"branches"}, times=1)
    source, factory = faulty(RepoSource(repo), plan)
    ns = Namespace(source, bridge, config, presentation_factory=factory)

Operations (``op``): the source's ``resolve``, ``branches``, ``tags``,
``snapshot_ids``, ``view``, ``written_at_ns``, ``history``, ``reload_config``
and the presentations' ``stat``, ``list_dir``, ``read`` (the chunk fetches).
Faults:

* ``error``: the call raises (a :class:`~vchunkfs.errors.BackendError` unless
  the rule names another exception);
* ``latency``: the call waits ``seconds`` first;
* ``hang``: the call never returns (only a deadline or a cancel ends it);
* ``short``: a ``read`` returns one byte less than asked (other calls: error);
* ``cancel``: the call is cancelled on the loop (the caller sees a cancelled future).

The plan is consulted on the bridge's loop and changed from the test: it locks.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from vchunkfs.errors import BackendError
from vchunkfs.fs.source import PresentationFactory, VersionSource
from vchunkfs.presentation.base import Presentation, make_presentation
from vchunkfs.repository import Version
from vchunkfs.repository.repo import Commit
from vchunkfs.repository.snapshot import Entry, SnapshotView, Unknown

T = TypeVar("T")
KINDS = ("error", "latency", "hang", "short", "cancel")


@dataclass
class _Rule:
    kind: str
    ops: frozenset[str] | None  # None: every operation
    match: str
    times: int | None
    probability: float
    seconds: float
    error: Exception | None


class FaultPlan:
    """Rules tried in order for each call; the first that fires decides its fault."""

    def __init__(self, seed: int = 0) -> None:
        self._rules: list[_Rule] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()  # op -> calls
        self.injected: Counter[str] = Counter()  # fault kind -> times injected

    def add(self, kind: str, ops: Iterable[str] | None = None, *, match: str = "",
            times: int | None = None, probability: float = 1.0, seconds: float = 0.0,
            error: Exception | None = None) -> None:
        """Inject ``kind`` into calls of ``ops`` (all if None) whose subject contains
        ``match``, at most ``times`` times, each with ``probability``."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            self._rules.append(_Rule(kind, frozenset(ops) if ops is not None else None, match,
                                     times, probability, seconds, error))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def applies_to(self, op: str) -> bool:
        """Whether any rule may inject into calls of ``op``."""
        with self._lock:
            return any(r.ops is None or op in r.ops for r in self._rules)

    def pick(self, op: str, what: str) -> _Rule | None:
        with self._lock:
            self.calls[op] += 1
            for rule in self._rules:
                if rule.ops is not None and op not in rule.ops:
                    continue
                if rule.match not in what or rule.times == 0:
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                if rule.times is not None:
                    rule.times -= 1
                self.injected[rule.kind] += 1
                return rule
            return None

    async def around(self, op: str, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()`` (on the bridge's loop) with this call's fault, if any."""
        rule = self.pick(op, what)
        if rule is None:
            return await call()
        if rule.kind == "latency":
            await asyncio.sleep(rule.seconds)
            return await call()
        if rule.kind == "hang":
            await asyncio.Event().wait()
        if rule.kind == "cancel":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)
        raise rule.error or BackendError(f"injected {rule.kind} fault: {op} {what}")

    async def around_read(self, what: str, call: Callable[[], Awaitable[bytes]]) -> bytes:
        rule = self.pick("read", what)
        if rule is None:
            return await call()
        if rule.kind == "short":
            data = await call()
            return data[:-1] if data else data
        if rule.kind == "latency":
            await asyncio.sleep(rule.seconds)
            return await call()
        # the other kinds behave as in around(): re-dispatch through a one-shot rule
        once = FaultPlan()
        once._rules.append(_Rule(rule.kind, None, "", 1, 1.0, rule.seconds, rule.error))
        return await once.around("read", what, call)


class FaultySource:
    """A :class:`VersionSource` whose calls go through a :class:`FaultPlan`."""

    def __init__(self, inner: VersionSource, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan

    async def resolve(self, version: str) -> Version:
        return await self.plan.around("resolve", version, lambda: self.inner.resolve(version))

    async def branches(self) -> dict[str, str]:
        return await self.plan.around("branches", "", self.inner.branches)

    async def tags(self) -> dict[str, str]:
        return await self.plan.around("tags", "", self.inner.tags)

    async def snapshot_ids(self) -> set[str]:
        return await self.plan.around("snapshot_ids", "", self.inner.snapshot_ids)

    async def view(self, snapshot_id: str) -> SnapshotView:
        return await self.plan.around("view", snapshot_id, lambda: self.inner.view(snapshot_id))

    async def written_at_ns(self, snapshot_id: str) -> int:
        return await self.plan.around("written_at_ns", snapshot_id,
                                      lambda: self.inner.written_at_ns(snapshot_id))

    async def history(self, snapshot_id: str, limit: int) -> list[Commit]:
        return await self.plan.around("history", snapshot_id,
                                      lambda: self.inner.history(snapshot_id, limit))

    async def reload_config(self) -> bool:
        return await self.plan.around("reload_config", "", self.inner.reload_config)

    def container_prefixes(self) -> list[str]:
        return self.inner.container_prefixes()


class FaultyPresentation:
    """A presentation whose ``stat``, ``list_dir`` and ``read`` go through a plan."""

    def __init__(self, inner: Presentation, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.name = inner.name
        self.view = inner.view

    async def stat(self, path: str) -> Entry | None:
        return await self.plan.around("stat", path, lambda: self.inner.stat(path))

    def stat_known(self, path: str) -> Entry | Unknown | None:
        return self.inner.stat_known(path)

    def following(self, path: str, n: int, backward: bool = False) -> list[tuple[str, int]]:
        return self.inner.following(path, n, backward)

    async def prepare_following(self, path: str, n: int) -> None:
        await self.plan.around("prepare_following", path,
                               lambda: self.inner.prepare_following(path, n))

    async def list_dir(self, path: str) -> list[Entry]:
        return await self.plan.around("list_dir", path, lambda: self.inner.list_dir(path))

    def local_read(self, path: str, offset: int, length: int) -> Callable[[], bytes] | None:
        # faults are injected on the bridge's way: reads take it while a rule may apply
        if self.plan.applies_to("read"):
            return None
        return self.inner.local_read(path, offset, length)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        return await self.plan.around_read(f"{path} [{offset}:{offset + length}]",
                                           lambda: self.inner.read(path, offset, length))


def faulty(source: VersionSource, plan: FaultPlan,
           factory: PresentationFactory = make_presentation
           ) -> tuple[FaultySource, PresentationFactory]:
    """``source`` and ``factory`` with ``plan``'s faults injected."""

    def make(name: str, view: SnapshotView) -> Presentation:
        return FaultyPresentation(factory(name, view), plan)

    return FaultySource(source, plan), make
