"""What the control socket can do: each operation carried out through the repository layer.

One writable icechunk session per branch is kept between requests (created on
the first change); its uncommitted state is what ``.vchunkfs/staged/BRANCH/``
shows. A request that fails raises a :class:`VchunkfsError` before it changes
anything (arguments are checked first; icechunk applies a single change
atomically). Operations run in the trio thread; icechunk calls cross the bridge.

Concurrency rules (docs/concurrency.md, "Control socket"):

* ``writers`` (branch -> Writer) is owned by the trio thread and replaced, never
  mutated (copy on write): the asyncio thread (``staged_view``, called by the
  namespace through the bridge) only does one ``get`` on whichever dict object it
  sees, never iterates it.
* At most one Writer is ever created per branch: the first request opens it
  while holding the branch's in-flight slot (``_opening``); others wait for that
  slot and then look again. Every ``await`` is followed by a fresh look at
  ``writers``: nothing read before it is trusted after it.
* Changes to a branch's session share its :class:`_Gate`; commit, discard, reset
  and delete of the branch hold it exclusively. So a change is either in the
  session a commit commits, or applied to the session that follows it: never to
  a session that is being committed or thrown away (which would lose it silently).
* Showing a change in the mount (``_changed``) happens after it is applied; if
  that fails, the request still succeeds and its reply carries a warning.
  Control requests refresh one at a time; a request whose change a refresh that
  began later already covered returns without another.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
import trio

from vchunkfs.bridge import AsyncioBridge
from vchunkfs.control.protocol import MAX_KEYS_REFS, NO_LOCATION, VERSION
from vchunkfs.errors import InvalidInputError, NotFoundError, UsageError
from vchunkfs.fs.namespace import Invalidator, Namespace
from vchunkfs.repository import Repo
from vchunkfs.repository.containers import make_container
from vchunkfs.repository.snapshot import SnapshotView
from vchunkfs.repository.writer import (
    VirtualRef,
    Writer,
    create_branch,
    create_tag,
    delete_branch,
    delete_tag,
    reset_branch,
)

log = logging.getLogger("vchunkfs.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

# warnings for the reply of the request being served (set per request by the server)
request_warnings: ContextVar[list[str] | None] = ContextVar("request_warnings", default=None)


class _Gate:
    """Per-branch access: changes share it, commit/discard/reset hold it alone.

    Plain counters and an event, no locks: trio runs one task at a time, and the
    ``finally`` blocks never await (so a cancelled request cannot leave it held).
    A waiting exclusive holder keeps new changes out, so commits are not starved.
    """

    def __init__(self) -> None:
        self.active = 0
        self.exclusive = False
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self.exclusive:
            await self._changed.wait()
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._notify()

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        while self.exclusive:
            await self._changed.wait()
        self.exclusive = True
        try:
            while self.active:
                await self._changed.wait()
            yield
        finally:
            self.exclusive = False
            self._notify()


class ControlOps:
    """The operations of the control protocol, for one mount."""

    def __init__(self, repo: Repo, bridge: AsyncioBridge, namespace: Namespace,
                 invalidator: Invalidator, mountpoint: str) -> None:
        self.repo = repo
        self.bridge = bridge
        self.namespace = namespace
        self.invalidator = invalidator
        self.mountpoint = mountpoint
        # copy on write (see the module docstring): never mutate, replace
        self.writers: dict[str, Writer] = {}
        self._opening: dict[str, trio.Event] = {}
        self._gates: dict[str, _Gate] = {}
        # refreshes of the mount after changes: requested / completed (see _changed)
        self._refresh_lock = trio.Lock()
        self._refresh_wanted = 0
        self._refresh_done = 0
        self.handlers: dict[str, Handler] = {
            "status": self.status,
            "set_metadata": self.set_metadata,
            "set_group": self.set_group,
            "set_virtual_ref": self.set_virtual_ref,
            "set_virtual_refs_block": self.set_virtual_refs_block,
            "set_virtual_refs_keys": self.set_virtual_refs_keys,
            "set_chunk": self.set_chunk,
            "delete": self.delete,
            "commit": self.commit,
            "discard": self.discard,
            "changes": self.changes,
            "create_branch": self.create_branch,
            "reset_branch": self.reset_branch,
            "delete_branch": self.delete_branch,
            "create_tag": self.create_tag,
            "delete_tag": self.delete_tag,
            "branches": self.branches,
            "tags": self.tags,
            "history": self.history,
            "diff": self.diff,
            "containers": self.containers,
            "set_container": self.set_container,
            "remove_container": self.remove_container,
        }

    # -- staged state, for the namespace ------------------------------------

    def staged_ids(self) -> dict[str, str]:
        return {b: w.staged_id for b, w in self.writers.items() if w.has_changes}

    async def staged_view(self, staged_id: str) -> SnapshotView:
        # runs in the asyncio thread: one lookup in the dict object it sees, no iteration
        branch = staged_id.removeprefix("staged-").rpartition("-")[0]
        w = self.writers.get(branch)
        if w is not None and w.staged_id == staged_id:
            return await w.staged_view()
        raise NotFoundError(f"staged state {staged_id} is gone (committed or changed since)")

    # -- plumbing -----------------------------------------------------------

    async def call[T](self, fn: Callable[[], Awaitable[T]]) -> T:
        return await self.bridge.call(fn)

    def _default_branch(self) -> str:
        root = self.namespace.root_version()
        return root.name if root.kind == "branch" else "main"

    def _branch(self, args: dict[str, Any]) -> str:
        return _opt_str(args, "branch") or self._default_branch()

    def gate(self, branch: str) -> _Gate:
        g = self._gates.get(branch)
        if g is None:
            g = self._gates[branch] = _Gate()
        return g

    async def writer(self, branch: str) -> Writer:
        """The branch's writer, opened by the first request that needs it (only once)."""
        while True:
            w = self.writers.get(branch)
            if w is not None:
                return w
            opening = self._opening.get(branch)
            if opening is None:
                break
            await opening.wait()  # then look again: that opening may have failed
        done = self._opening[branch] = trio.Event()
        try:
            w = await self.call(lambda: Writer.open(self.repo, branch))
            # only this task may add this branch's writer while it holds _opening
            assert branch not in self.writers
            self.writers = {**self.writers, branch: w}
            return w
        finally:
            del self._opening[branch]
            done.set()

    def _drop_writer(self, branch: str, w: Writer) -> None:
        if self.writers.get(branch) is w:
            self.writers = {b: x for b, x in self.writers.items() if b != branch}

    @asynccontextmanager
    async def changing(self, args: dict[str, Any]) -> AsyncIterator[Writer]:
        """The branch's writer, for one change: shared with other changes, never with a
        commit or discard of the branch (the writer is looked up after the wait)."""
        branch = self._branch(args)
        async with self.gate(branch).shared():
            yield await self.writer(branch)

    async def _changed(self) -> None:
        """Show the new state in the mount at once (staged views, moved branches).

        Called after a change is applied: a failure here must not turn an applied
        change into an error, so it becomes a warning in the reply. Control requests
        refresh one at a time, and a refresh that began after this change was applied
        covers it: many connections changing at once share refreshes.
        """
        self._refresh_wanted += 1
        wanted = self._refresh_wanted
        async with self._refresh_lock:
            if self._refresh_done >= wanted:
                return  # a refresh that started after this change has finished
            target = self._refresh_wanted
            try:
                await self.namespace.poll_branches(self.invalidator)
            except Exception as e:
                log.warning("the change is applied, but the mount could not show it yet: %s",
                            e)
                warnings = request_warnings.get()
                if warnings is not None:
                    warnings.append(f"the change is applied, but refreshing the mount failed "
                                    f"({type(e).__name__}: {e}); it shows the change at its "
                                    f"next poll")
                return
            self._refresh_done = target

    # -- operations -----------------------------------------------------------

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        root = self.namespace.root_version()
        return {
            "protocol": VERSION, "pid": os.getpid(), "repository": self.repo.location.url,
            "mountpoint": self.mountpoint,
            "root": {"kind": root.kind, "name": root.name, "snapshot": root.snapshot_id},
            "staged": {b: {"base": w.base_snapshot, "nodes_changed": len(w.node_changes),
                           "chunks_changed": w.chunks_changed}
                       for b, w in self.writers.items() if w.has_changes},
            "stats": self.namespace.stats(),
        }

    async def set_metadata(self, args: dict[str, Any]) -> None:
        path = _str(args, "path", allow_empty=True)
        doc = args.get("document")
        if isinstance(doc, bytes | str):
            try:
                doc = json.loads(doc)
            except ValueError as e:
                raise InvalidInputError(f"metadata for {path or '/'!r} is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise InvalidInputError("'document' must be a map or a JSON text")
        document: dict[str, Any] = doc
        async with self.changing(args) as w:
            await self.call(lambda: w.set_metadata(path, document))
        await self._changed()

    async def set_group(self, args: dict[str, Any]) -> None:
        path = _str(args, "path", allow_empty=True)
        attributes = args.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise InvalidInputError("'attributes' must be a map")
        async with self.changing(args) as w:
            await self.call(lambda: w.set_group(path, attributes))
        await self._changed()

    async def set_virtual_ref(self, args: dict[str, Any]) -> None:
        key, location = _str(args, "key"), _str(args, "location")
        offset, length = _int(args, "offset"), _int(args, "length")
        checksum = _checksum(args.get("checksum"))
        async with self.changing(args) as w:
            await self.call(lambda: w.set_virtual_ref(key, location, offset, length, checksum))
        await self._changed()

    async def set_virtual_refs_block(self, args: dict[str, Any]) -> dict[str, int]:
        """Refs for a block of an array's chunk grid, columnar (see the protocol doc)."""
        array = _str(args, "array")
        shape = _int_list(args, "shape")
        offset = _int_list(args, "arr_offset") if "arr_offset" in args else [0] * len(shape)
        if len(offset) != len(shape):
            raise InvalidInputError("'arr_offset' and 'shape' must have the same length")
        n = int(np.prod(shape)) if shape else 1
        table = args.get("location_table")
        if not isinstance(table, list) or not all(isinstance(t, str) for t in table):
            raise InvalidInputError("'location_table' must be a list of strings")
        index = _array(args, "location_index", np.dtype("<u4"), n)
        offsets = _array(args, "offsets", np.dtype("<u8"), n)
        lengths = _array(args, "lengths", np.dtype("<u8"), n)
        present = index != NO_LOCATION
        if present.any() and int(index[present].max()) >= len(table):
            raise InvalidInputError("'location_index' refers past the end of 'location_table'")
        if (lengths[present] == 0).any():
            raise InvalidInputError("every present ref needs a length > 0")
        names = np.array([*table, ""], dtype=object)
        locations: list[str] = names[np.where(present, index, len(table))].tolist()
        checksum = _checksum(args.get("checksum"))
        async with self.changing(args) as w:
            await self.call(lambda: w.set_virtual_refs_arr(
                array, tuple(shape), locations, offsets.astype(np.uint64),
                lengths.astype(np.uint64), checksum, tuple(offset)))
        await self._changed()
        return {"count": int(present.sum())}

    async def set_virtual_refs_keys(self, args: dict[str, Any]) -> dict[str, int]:
        """Refs by chunk key: ``refs`` is a list of {key, location, offset, length[, checksum]}.

        The decoded maps are dropped as soon as they are converted, and the refs are
        staged per array in one bulk call each (memory: one request's refs, once).
        """
        raw = args.get("refs")
        if not isinstance(raw, list) or not raw:
            raise InvalidInputError("'refs' must be a non-empty list of maps")
        if len(raw) > MAX_KEYS_REFS:
            raise InvalidInputError(
                f"{len(raw):,} refs in one request; the most is {MAX_KEYS_REFS:,}: send them "
                "in several requests (vchunkfs ctl import-refs and the Python client do), "
                "or columnar with set_virtual_refs_block")
        refs: list[VirtualRef] = []
        append = refs.append
        for i, r in enumerate(raw):
            # the checks of _str/_int inlined (a million refs a minute matter here)
            try:
                key, location, offset, length = r["key"], r["location"], r["offset"], r["length"]
                checksum = r.get("checksum")
            except (KeyError, TypeError):
                key = None
            if type(key) is str and key and type(location) is str and location \
                    and type(offset) is int and offset >= 0 and type(length) is int \
                    and length >= 0 and (checksum is None or type(checksum) is str):
                append(VirtualRef(key, location, offset, length, checksum))
                continue
            if not isinstance(r, dict):
                raise InvalidInputError(f"refs[{i}] is not a map")
            try:  # the general path, and the message for a bad ref
                append(VirtualRef(_str(r, "key"), _str(r, "location"), _int(r, "offset"),
                                  _int(r, "length"), _checksum(r.get("checksum"))))
            except InvalidInputError as e:
                raise InvalidInputError(f"refs[{i}]: {e.message}") from None
        raw.clear()  # the request's maps: no longer needed
        count = len(refs)
        async with self.changing(args) as w:
            specs = await self.call(lambda: w.chunk_specs(refs))
            refs.clear()
            await self.call(lambda: w.stage_chunk_specs(specs))
            specs.clear()
        await self._changed()
        return {"count": count}

    async def set_chunk(self, args: dict[str, Any]) -> None:
        key = _str(args, "key")
        data = args.get("data")
        if not isinstance(data, bytes) or not data:
            raise InvalidInputError("'data' must be non-empty binary")
        async with self.changing(args) as w:
            await self.call(lambda: w.set_chunk(key, data))
        await self._changed()

    async def delete(self, args: dict[str, Any]) -> None:
        key = _str(args, "key")
        async with self.changing(args) as w:
            await self.call(lambda: w.delete(key))
        await self._changed()

    async def commit(self, args: dict[str, Any]) -> dict[str, str]:
        message = _str(args, "message")
        metadata = args.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise InvalidInputError("'metadata' must be a map")
        branch = self._branch(args)
        async with self.gate(branch).alone():
            w = await self.writer(branch)
            started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            sid = await self.call(lambda: w.commit(message, metadata))
            done = resource.getrusage(resource.RUSAGE_SELF)
            log.info("committed %s on %s in %.2f s (process cpu: user %.2f s, system %.2f s)",
                     sid, w.branch, time.perf_counter() - started, done.ru_utime - cpu.ru_utime,
                     done.ru_stime - cpu.ru_stime)
            if w.spent:  # committed, but no new session: the next change opens a writer
                self._drop_writer(branch, w)
        await self._changed()
        return {"snapshot": sid, "branch": w.branch}

    async def discard(self, args: dict[str, Any]) -> dict[str, bool]:
        branch = self._branch(args)
        async with self.gate(branch).alone():
            w = self.writers.get(branch)
            had = bool(w and w.has_changes)
            if w is not None:
                try:
                    await self.call(w.discard)
                finally:
                    if w.spent:
                        self._drop_writer(branch, w)
        if w is not None:
            await self._changed()
        return {"discarded": had}

    async def changes(self, args: dict[str, Any]) -> dict[str, Any]:
        branch = self._branch(args)
        # shared: never during a commit of the branch, whose session lock status() would
        # wait for in the trio thread (stalling the whole mount for the commit)
        async with self.gate(branch).shared():
            w = self.writers.get(branch)
            if w is None or not w.has_changes:
                return {"branch": branch, "changed": False}
            status = w.session.status()
            return {"branch": branch, "changed": True, "base": w.base_snapshot,
                    "nodes": {p: k or "deleted" for p, k in w.node_changes.items()},
                    "chunks_changed": w.chunks_changed, "summary": str(status)}

    async def create_branch(self, args: dict[str, Any]) -> dict[str, str]:
        name, source = _str(args, "name"), _opt_str(args, "from")
        sid = await self.call(lambda: create_branch(self.repo, name, source))
        return {"branch": name, "snapshot": sid}

    async def reset_branch(self, args: dict[str, Any]) -> dict[str, str]:
        name, target = _str(args, "name"), _str(args, "to")
        async with self.gate(name).alone():
            w = self.writers.get(name)
            if w is not None and w.has_changes:
                raise UsageError(f"branch {name} has staged changes; commit or discard them "
                                 "first")
            sid = await self.call(lambda: reset_branch(self.repo, name, target))
            if w is not None:  # its session's base is no longer the branch head
                self._drop_writer(name, w)
        await self._changed()
        return {"branch": name, "snapshot": sid}

    async def delete_branch(self, args: dict[str, Any]) -> None:
        name = _str(args, "name")
        if name == self.namespace.root_version().name and \
                self.namespace.root_version().kind == "branch":
            raise UsageError(f"branch {name} is what this mount's root shows")
        async with self.gate(name).alone():
            await self.call(lambda: delete_branch(self.repo, name))
            w = self.writers.get(name)
            if w is not None:
                self._drop_writer(name, w)
        await self._changed()

    async def create_tag(self, args: dict[str, Any]) -> dict[str, str]:
        name, version = _str(args, "name"), _opt_str(args, "version")
        sid = await self.call(lambda: create_tag(self.repo, name, version))
        return {"tag": name, "snapshot": sid}

    async def delete_tag(self, args: dict[str, Any]) -> None:
        name = _str(args, "name")
        await self.call(lambda: delete_tag(self.repo, name))

    async def branches(self, args: dict[str, Any]) -> dict[str, str]:
        return await self.call(self.repo.branches)

    async def tags(self, args: dict[str, Any]) -> dict[str, str]:
        return await self.call(self.repo.tags)

    async def history(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        version = _opt_str(args, "version")
        limit = args.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InvalidInputError("'limit' must be a non-negative integer")

        async def collect() -> list[dict[str, Any]]:
            return [c.to_json() async for c in self.repo.history(version, limit)]

        return await self.call(collect)

    async def diff(self, args: dict[str, Any]) -> dict[str, Any]:
        a, b = _str(args, "from"), _str(args, "to")
        d = await self.call(lambda: self.repo.diff(a, b))
        return dict(d.__dict__)

    async def containers(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        trusted = set(self.repo.authorization.prefixes)
        return [{"url_prefix": c.url_prefix, "name": c.name, "store": c.store,
                 "authorized": c.url_prefix in trusted} for c in self.repo.containers()]

    async def set_container(self, args: dict[str, Any]) -> None:
        opts = args.get("options") or {}
        if not isinstance(opts, dict) or not all(isinstance(v, str) for v in opts.values()):
            raise InvalidInputError("'options' must be a map of strings")
        container = make_container(
            _str(args, "url_prefix"), name=_opt_str(args, "name"),
            region=_opt_str(args, "region"), endpoint_url=_opt_str(args, "endpoint_url"),
            anonymous=bool(args.get("anonymous")), account=_opt_str(args, "account"),
            options=opts)
        await self.call(lambda: self.repo.set_container(container))

    async def remove_container(self, args: dict[str, Any]) -> None:
        prefix = _str(args, "url_prefix")
        await self.call(lambda: self.repo.remove_container(prefix))


# -- argument checking: a bad request is refused before anything changes ------


def _str(args: dict[str, Any], key: str, allow_empty: bool = False) -> str:
    value = args.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise InvalidInputError(f"'{key}' must be a{'' if allow_empty else ' non-empty'} string")
    return value


def _opt_str(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"'{key}' must be a non-empty string when given")
    return value


def _int(args: dict[str, Any], key: str) -> int:
    value = args.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInputError(f"'{key}' must be a non-negative integer")
    return value


def _int_list(args: dict[str, Any], key: str) -> list[int]:
    value = args.get(key)
    if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise InvalidInputError(f"'{key}' must be a list of non-negative integers")
    return value


def _array(args: dict[str, Any], key: str, dtype: np.dtype[Any], n: int) -> np.ndarray[Any, Any]:
    value = args.get(key)
    if not isinstance(value, bytes) or len(value) != n * dtype.itemsize:
        raise InvalidInputError(f"'{key}' must be {n} values of {dtype.str} as binary "
                                f"({n * dtype.itemsize} bytes)")
    return np.frombuffer(value, dtype=dtype)


def _checksum(value: Any) -> str | datetime.datetime | None:
    """An ETag string, or a last-modified time as POSIX seconds (int or float)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    raise InvalidInputError("'checksum' must be an ETag string or POSIX seconds")
