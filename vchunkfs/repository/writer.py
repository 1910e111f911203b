"""Writes: a writable session on one branch, commits, and branch and tag refs.

Commit contract: a commit either lands on the branch or raises
:class:`ConflictError` and leaves the branch as it was. When the branch moved
since the session started, the session is rebased onto the new head if the
two changes touch different chunks and nodes; overlapping changes are never
resolved by picking a side.

icechunk's local-filesystem storage does not make the branch update atomic
between processes. On a local repository vchunkfs writers therefore commit
under an exclusive ``flock`` on the repository directory, so two vchunkfs
writers cannot both move a branch from the same parent. Writers that do not
take the lock (icechunk used directly) remain unsafe there, as icechunk
warns; object stores use conditional writes and need no lock.

A commit whose reply is lost (the connection reset after the branch update
reached the store, or every retry of that update failing after the first
landed) raises out of icechunk although the branch moved. Each commit
therefore carries a fresh token in its metadata (:data:`COMMIT_TOKEN_KEY`);
when the commit call fails, the branch's recent history is read back (under
the mount's deadline, a few tries): a snapshot carrying the token means the
commit landed, and it is reported and handled as a success. If the history
cannot be read, :class:`CommitOutcomeUnknownError` says so; a commit is never
reported as failed unless the branch was read and does not hold it.
"""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, NamedTuple

import icechunk as ic
import numpy as np
from zarr.core.buffer import default_buffer_prototype

from vchunkfs.errors import (
    BackendError,
    CommitOutcomeUnknownError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    ReadOnlyError,
    UsageError,
)
from vchunkfs.repository.chunkgrid import ChunkGrid
from vchunkfs.repository.repo import Repo, _first_line, engine_errors
from vchunkfs.repository.snapshot import SnapshotView, ViewCaches, node_tree

log = logging.getLogger("vchunkfs.writer")

Checksum = str | datetime.datetime | None

# The commit metadata key holding a token unique to each commit attempt: it lets the
# writer find out whether a commit whose reply was lost landed (docs/control-protocol.md)
COMMIT_TOKEN_KEY = "vchunkfs:commit_token"
# How far back from the branch head a landed commit is looked for (writers elsewhere
# may have committed on top of it meanwhile), and how often the look is tried
LANDED_SEARCH_DEPTH = 64
LANDED_SEARCH_TRIES = 3
# the deadline of each try when the mount has none
LANDED_SEARCH_TIMEOUT = 30.0


class VirtualRef(NamedTuple):
    """One chunk key pointing at ``length`` bytes at ``offset`` of ``location``.

    A named tuple, not a dataclass: an import makes a million of them."""

    key: str
    location: str
    offset: int
    length: int
    checksum: Checksum = None


@asynccontextmanager
async def commit_lock(repo: Repo) -> AsyncIterator[None]:
    """Exclusive lock held around a commit on a local repository (no-op elsewhere)."""
    if not repo.location.is_local:
        yield
        return
    fd = os.open(repo.location.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # flock may wait for another writer: wait in a thread, not on the loop
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _chunk_coords(grid: ChunkGrid | None, rest: str) -> list[int] | None:
    """The coordinates of the chunk ``rest`` (a key relative to its array) names, or None.

    :meth:`ChunkGrid.parse`, with a fast path for the usual keys (a million refs are
    parsed per import)."""
    if grid is None:
        return None
    shape = grid.grid_shape
    if grid.separator == "/" and shape:
        parts = rest.split("/")
        if grid.root:
            if parts[0] != grid.root:
                return None
            del parts[0]
        if len(parts) == len(shape):
            try:
                coords = [int(p) for p in parts]
            except ValueError:
                return None
            # canonical decimal (no sign, space, '_' or leading zero) inside the grid
            if all(0 <= c < n and str(c) == p for c, n, p in zip(coords, shape, parts,
                                                                  strict=True)):
                return coords
            return None
    parsed = grid.parse(rest)
    return list(parsed.coords) if parsed is not None and parsed.is_chunk else None


def _conflict_solver() -> ic.BasicConflictSolver:
    return ic.BasicConflictSolver(on_chunk_conflict=ic.VersionSelection.Fail)


class Writer:
    """A writable icechunk session on one branch."""

    def __init__(self, repo: Repo, branch: str, session: ic.Session) -> None:
        self.repo = repo
        self.branch = branch
        self.session = session
        self.store = session.store
        self._base: str = session.snapshot_id
        # node path -> node type set by this session, or None where it deleted a node
        self.node_changes: dict[str, str | None] = {}
        # chunk writes staged (refs set, native chunks set, chunks deleted): shown by
        # ``ctl status`` next to the node changes
        self.chunks_changed = 0
        # bumped by every change, so each staged state has its own view id
        self.generation = 0
        self._dirty = False
        # set when a commit landed (or a discard dropped the changes) but no new session
        # could be opened: this writer must not be used again (the owner opens another)
        self.spent = False

    @classmethod
    async def open(cls, repo: Repo, branch: str = "main") -> Writer:
        if repo.location.read_only:
            raise ReadOnlyError(f"{repo.location.url} is read-only (HTTP storage)")
        with engine_errors(f"opening a session on branch {branch}"):
            if branch not in await repo.ic.list_branches_async():
                raise NotFoundError(f"no branch {branch!r} in {repo.location.url}")
            return cls(repo, branch, await repo.ic.writable_session_async(branch))

    @property
    def base_snapshot(self) -> str:
        """The snapshot the session started from (or was rebased onto).

        Cached: reading ``session.snapshot_id`` waits for the session's lock, which
        a running commit holds, and the daemon's trio thread reads this."""
        return self._base

    @property
    def has_changes(self) -> bool:
        """Whether anything was staged since the session began.

        Kept by the writer itself: icechunk's ``has_uncommitted_changes`` blocks on
        the session's lock while a commit runs, which would stall the caller (the
        mount's trio thread) for the whole commit.
        """
        return self._dirty

    # -- metadata -----------------------------------------------------------

    async def set_metadata(self, path: str, document: bytes | Mapping[str, Any]) -> None:
        """Create or replace the ``zarr.json`` of the group or array at ``path``.

        Missing parent groups are created (empty), as zarr does, so that every
        reader finds the node from the root.
        """
        doc = json.loads(document) if isinstance(document, bytes | str) else dict(document)
        if doc.get("zarr_format") != 3 or doc.get("node_type") not in ("group", "array"):
            raise InvalidInputError(
                f"metadata for {path or '/'!r} must be a Zarr v3 document with zarr_format 3 "
                "and node_type group or array")
        path = path.strip("/")
        parts = path.split("/") if path else []
        for i in range(len(parts)):
            parent = _metadata_key("/".join(parts[:i]))
            if not await self.store.exists(parent):
                group = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
                await self._write(parent, lambda p=parent, g=group: self.store.set(
                    p, _buffer(g.encode())))
                self.node_changes["/".join(parts[:i])] = "group"
        key = _metadata_key(path)
        raw = json.dumps(doc, indent=2).encode()
        await self._write(key, lambda: self.store.set(key, _buffer(raw)))
        self.node_changes[path] = doc["node_type"]

    async def set_group(self, path: str, attributes: Mapping[str, Any] | None = None) -> None:
        await self.set_metadata(path, {"zarr_format": 3, "node_type": "group",
                                       "attributes": dict(attributes or {})})

    # -- chunks -------------------------------------------------------------

    async def set_virtual_ref(self, key: str, location: str, offset: int, length: int,
                              checksum: Checksum = None) -> None:
        """Point one chunk key at ``length`` bytes at ``offset`` of ``location``."""
        if offset < 0 or length <= 0:
            raise InvalidInputError(f"virtual ref for {key}: offset must be >= 0 and length > 0")
        self._check_location(location)
        await self._write(key, lambda: self.store.set_virtual_ref_async(
            key, location, offset=offset, length=length, checksum=checksum,
            validate_container=True))
        self.chunks_changed += 1

    async def set_virtual_refs_arr(self, array_path: str, grid_shape: tuple[int, ...],
                                   locations: list[str],
                                   offsets: np.ndarray[Any, np.dtype[np.uint64]],
                                   lengths: np.ndarray[Any, np.dtype[np.uint64]],
                                   checksum: Checksum = None,
                                   arr_offset: tuple[int, ...] | None = None) -> None:
        """Vectorized refs for a block of the chunk grid (row-major; "" = no chunk)."""
        for loc in set(locations):
            if loc:
                self._check_location(loc)
        failed = await self._write(array_path, lambda: self.store.set_virtual_refs_arr_async(
            array_path, grid_shape, locations, offsets, lengths, validate_containers=True,
            arr_offset=arr_offset, checksum=checksum))
        if failed:
            raise InvalidInputError(f"{len(failed)} refs of {array_path} were refused, "
                                    f"first at chunk {failed[0]}")
        self.chunks_changed += sum(1 for loc in locations if loc)

    async def set_virtual_refs(self, refs: list[VirtualRef]) -> None:
        """Many refs by key. All are checked (keys name chunks of existing arrays, locations
        lie in containers) before any is staged; then each array's refs are staged with
        one bulk call (icechunk's ``set_virtual_refs``), not one call per ref."""
        specs = await self.chunk_specs(refs)
        await self.stage_chunk_specs(specs)

    async def chunk_specs(self, refs: list[VirtualRef]
                          ) -> dict[str, list[ic.VirtualChunkSpec]]:
        """Check ``refs`` and group them by array as icechunk chunk specs."""
        view = await self.staged_view()
        grids: dict[str, ChunkGrid] = {}
        checked: set[str] = set()
        out: dict[str, list[ic.VirtualChunkSpec]] = {}
        Spec = ic.VirtualChunkSpec
        # the array of the previous key: keys come grouped by array, and nothing lies
        # below an array but its chunks, so a key under its path is one of its chunks
        array, prefix, grid, specs = None, "", None, []
        for r in refs:
            if r.length <= 0:
                raise InvalidInputError(f"virtual ref for {r.key}: length must be > 0")
            directory = r.location.rpartition("/")[0]
            if directory not in checked:  # locations of one directory share a container
                self._check_location(r.location)
                checked.add(directory)
            key = r.key
            if array is None or not key.startswith(prefix):
                found = view.locate(key)
                array = None
                if found is not None and found[0].kind == "array" and found[1]:
                    array = found[0].path
                    prefix = array + "/" if array else ""
                    grid = grids.get(array)
                    if grid is None:
                        grid = grids[array] = await view.grid(array)
                    specs = out.setdefault(array, [])
            coords = _chunk_coords(grid, key[len(prefix):]) if array is not None else None
            if coords is None:
                raise InvalidInputError(f"{key} is not a chunk key of an array in this "
                                        f"session (set the array's metadata first)")
            checksum = r.checksum
            if checksum is None:
                specs.append(Spec(coords, r.location, r.offset, r.length))
            elif isinstance(checksum, str):
                specs.append(Spec(coords, r.location, r.offset, r.length,
                                  etag_checksum=checksum))
            else:
                specs.append(Spec(coords, r.location, r.offset, r.length,
                                  last_updated_at_checksum=checksum))
        return out

    async def stage_chunk_specs(self, specs: dict[str, list[ic.VirtualChunkSpec]]) -> None:
        for array_path, chunks in specs.items():
            failed = await self._write(array_path, lambda p=array_path, c=chunks:
                                       self.store.set_virtual_refs_async(
                                           p, c, validate_containers=True))
            if failed:
                raise InvalidInputError(f"{len(failed)} refs of {array_path} were refused, "
                                        f"first at chunk {failed[0]}")
            self.chunks_changed += len(chunks)

    async def set_chunk(self, key: str, data: bytes) -> None:
        """Store native chunk bytes (written into the repository itself)."""
        await self._write(key, lambda: self.store.set(key, _buffer(data)))
        self.chunks_changed += 1

    async def delete(self, key: str) -> None:
        """Delete one chunk, or a whole group or array with everything below it."""
        key = key.strip("/")
        if key.endswith("zarr.json") or not await self.store.exists(_metadata_key(key)):
            await self._write(key, lambda: self.store.delete(key))
            self.chunks_changed += not key.endswith("zarr.json")
        else:
            await self._write(key, lambda: self.store.delete_dir(key))
            self.node_changes[key] = None

    def _check_location(self, location: str) -> None:
        prefixes = [c.url_prefix for c in self.repo.containers()]
        if location.startswith("vcc://"):
            name = location[len("vcc://"):].split("/", 1)[0]
            if name not in {c.name for c in self.repo.containers() if c.name}:
                raise InvalidInputError(f"{location}: no virtual chunk container named {name!r}")
            return
        if not any(location.startswith(p) for p in prefixes):
            raise InvalidInputError(
                f"{location} is outside every virtual chunk container of this repository; "
                "add one whose url_prefix covers it (vchunkfs ctl MOUNTPOINT containers add "
                "PREFIX, or vchunkfs config REPO containers add PREFIX)")

    # -- commit -------------------------------------------------------------

    async def commit(self, message: str, metadata: Mapping[str, Any] | None = None,
                     rebase: bool = True) -> str:
        """Commit the session; return the new snapshot id.

        Raises :class:`ConflictError` or :class:`BackendError` only when the commit
        did not land (the branch's history was read after the failure and does not
        hold it), and :class:`CommitOutcomeUnknownError` when that cannot be told. A
        commit that landed although icechunk raised (its reply lost) is a success:
        its snapshot id is returned and the writer moves on as after any commit.
        The metadata gets :data:`COMMIT_TOKEN_KEY` (any value given for it is replaced).

        With ``rebase=False`` the commit lands only if the branch is still where the
        session started (a writer whose changes depend on what it read there)."""
        if not message.strip():
            raise UsageError("a commit needs a message")
        if not self.has_changes:
            raise UsageError("nothing to commit: the session has no changes")
        token = secrets.token_hex(16)
        meta = {**dict(metadata or {}), COMMIT_TOKEN_KEY: token}
        base = self._base
        async with commit_lock(self.repo):
            try:
                sid: str = await (self.session.commit_async(
                    message, metadata=meta, rebase_with=_conflict_solver(),
                    rebase_tries=5) if rebase else self.session.commit_async(
                    message, metadata=meta))
            except Exception as e:
                # the failure may have come after the branch moved (a lost reply; a
                # retried conditional update refused because the first one landed):
                # only the branch itself can tell
                failure = self._commit_failure(e)
                # a conflict proves the branch moved under the commit, and icechunk
                # recognizes its own update when a retry of it is refused: if the branch
                # cannot be read, the conflict stands (anything else is unknown)
                landed = await self._find_landed(
                    token, base, failure, must_tell=not isinstance(failure, ConflictError))
                if landed is None:
                    raise failure from e
                log.warning("commit %s on %s landed although the commit call failed (%s)",
                            landed, self.branch, _first_line(e))
                sid = landed
            finally:  # a rebase may have moved the session's base, committed or not
                self._base = self.session.snapshot_id
        # the session is spent; the next change starts from the new head. The commit has
        # landed: failing to open that session must not report it as failed
        try:
            await self._fresh_session()
        except Exception as e:
            log.warning("committed %s on %s, but cannot open the next session: %s",
                        sid, self.branch, _first_line(e))
            self._dirty = False
            self.node_changes = {}
            self.chunks_changed = 0
            self.generation += 1
            self.spent = True
        return sid

    def _commit_failure(self, e: Exception) -> Exception:
        """What a failed commit call is reported as, if it did not land."""
        if isinstance(e, ic.RebaseFailedError):
            conflicts = "; ".join(f"{c.conflict_type} at {c.path}" for c in e.conflicts[:3])
            return ConflictError(
                f"branch {self.branch} moved to {e.snapshot} while this session was open "
                f"and the changes overlap ({conflicts}); discard and redo them on the new head")
        if isinstance(e, ic.ConflictError):
            return ConflictError(
                f"branch {self.branch} moved while committing ({_first_line(e)}); "
                "discard and redo the changes on the new head")
        if isinstance(e, ic.IcechunkError):
            return BackendError(f"commit to {self.branch} failed: {_first_line(e)}")
        return e

    async def _find_landed(self, token: str, base: str, failure: Exception,
                           must_tell: bool = True) -> str | None:
        """The snapshot on the branch whose metadata holds ``token``, or None when the
        branch's history back to ``base`` (where the session started; a commit, rebased
        or not, descends from it) does not hold it.

        Each try runs under the mount's deadline; after :data:`LANDED_SEARCH_TRIES`
        failed tries, or a history deeper than :data:`LANDED_SEARCH_DEPTH` without
        ``base``, :class:`CommitOutcomeUnknownError` (naming ``failure`` and the token),
        or None if not ``must_tell``."""
        timeout = self.repo.caches.call_timeout or LANDED_SEARCH_TIMEOUT
        why = ""
        for attempt in range(LANDED_SEARCH_TRIES):
            if attempt:
                await asyncio.sleep(0.5 * attempt)
            try:
                found = await asyncio.wait_for(self._search_token(token, base), timeout)
            except TimeoutError:
                why = f"reading it timed out after {timeout:g} s"
                continue
            except ic.IcechunkError as e:
                why = f"reading it failed: {_first_line(e)}"
                continue
            if found is not False:
                return found
            why = (f"over {LANDED_SEARCH_DEPTH} snapshots were committed to it since the "
                   "session began")
            break
        if not must_tell:
            log.warning("commit to %s: %s; the branch could not be checked for it (%s)",
                        self.branch, _first_line(failure), why)
            return None
        raise CommitOutcomeUnknownError(
            f"commit to {self.branch} may or may not have landed: the commit call failed "
            f"({_first_line(failure)}) and the branch could not be checked ({why}); its "
            f"metadata holds {COMMIT_TOKEN_KEY}={token}: look for it in the branch's history "
            "(vchunkfs ctl MOUNTPOINT log BRANCH) before committing again, and discard the "
            "staged changes if it is there")

    async def _search_token(self, token: str, base: str) -> str | Literal[False] | None:
        """One look down the branch's history: the snapshot holding ``token``, None when
        ``base`` (or the root) is reached without it, False when it is too deep to tell."""
        depth = 0
        async for info in self.repo.ic.async_ancestry(branch=self.branch):
            if info.metadata.get(COMMIT_TOKEN_KEY) == token:
                return str(info.id)
            depth += 1
            if info.id == base:
                return None
            if depth >= LANDED_SEARCH_DEPTH:
                return False
        return None

    async def discard(self) -> None:
        """Drop every uncommitted change; the next change starts from the branch head."""
        try:
            await self._fresh_session()
        except BaseException:
            self.spent = True  # the old session may still hold the changes: never reuse it
            raise

    async def _fresh_session(self) -> None:
        with engine_errors(f"opening a session on branch {self.branch}"):
            self.session = await self.repo.ic.writable_session_async(self.branch)
        self.store = self.session.store
        self._base = self.session.snapshot_id
        self.node_changes = {}
        self.chunks_changed = 0
        self.generation += 1
        self._dirty = False

    def mark_changed(self) -> None:
        """Record a change made to ``self.store`` by other code (VirtualiZarr's to_icechunk)."""
        self.generation += 1
        self._dirty = True

    @property
    def staged_id(self) -> str:
        """A view id for the current staged state (changes with every write)."""
        return f"staged-{self.branch}-{self.generation}"

    async def staged_view(self) -> SnapshotView:
        """The session's uncommitted state as a read-only view (the base plus the changes)."""
        info = await self.repo.ic.inspect_snapshot_async(self.base_snapshot)
        kinds = {n["path"].removeprefix("/"): n["node_type"] for n in info["nodes"]}
        for path, kind in self.node_changes.items():
            if kind is None:
                kinds = {p: k for p, k in kinds.items()
                         if p != path and not p.startswith(path + "/")}
            else:
                kinds[path] = kind
        raw = [{"path": "/" + p, "node_type": k} for p, k in kinds.items()]
        return SnapshotView(self.repo.ic, self.staged_id, self.session,
                            node_tree(raw, self.staged_id), ViewCaches(), self.repo.local,
                            records_snapshot=self.base_snapshot)

    async def _write(self, key: str, fn: Any) -> Any:
        """Run one icechunk write (a zero-argument coroutine function); count it as a change."""
        try:
            result = await fn()
            self.mark_changed()
            return result
        except ic.IcechunkError as e:
            raise InvalidInputError(f"{key}: {_first_line(e)}") from e
        except (ValueError, TypeError) as e:
            raise InvalidInputError(f"{key}: {e}") from e


# -- branch and tag refs --------------------------------------------------------
# Used by the control socket and by ``vchunkfs branch`` / ``vchunkfs tag`` alike.
# Each change holds the local commit lock, so it is ordered with vchunkfs commits
# on a local repository, and a reset only moves a branch from the head it was
# checked at (a branch that moved meanwhile is a ConflictError).


async def create_branch(repo: Repo, name: str, from_version: str | None = None) -> str:
    """Create branch ``name`` at ``from_version`` (default ``main``); return its snapshot."""
    _check_ref_name(name)
    _check_writable(repo)
    async with commit_lock(repo):
        if name in await repo.ic.list_branches_async():
            raise UsageError(f"branch {name!r} already exists")
        v = await repo.resolve(from_version)
        with engine_errors(f"creating branch {name}"):
            await repo.ic.create_branch_async(name, v.snapshot_id)
    return v.snapshot_id


async def reset_branch(repo: Repo, name: str, to_version: str) -> str:
    """Point branch ``name`` at ``to_version``; return the snapshot it points to now."""
    _check_writable(repo)
    async with commit_lock(repo):
        heads = await repo.branches()
        if name not in heads:
            raise NotFoundError(f"no branch {name!r}")
        v = await repo.resolve(to_version)
        try:
            await repo.ic.reset_branch_async(name, v.snapshot_id, from_snapshot_id=heads[name])
        except ic.ConflictError as e:
            raise ConflictError(f"branch {name} moved while it was being reset "
                                f"({_first_line(e)}); look at its new head and try again") from e
        except ic.IcechunkError as e:
            raise BackendError(f"resetting branch {name}: {_first_line(e)}") from e
    return v.snapshot_id


async def delete_branch(repo: Repo, name: str) -> None:
    if name == "main":
        raise UsageError("the main branch cannot be deleted")
    _check_writable(repo)
    async with commit_lock(repo):
        if name not in await repo.ic.list_branches_async():
            raise NotFoundError(f"no branch {name!r}")
        with engine_errors(f"deleting branch {name}"):
            await repo.ic.delete_branch_async(name)


async def create_tag(repo: Repo, name: str, version: str | None = None) -> str:
    _check_ref_name(name)
    _check_writable(repo)
    async with commit_lock(repo):
        if name in await repo.ic.list_tags_async():
            raise UsageError(f"tag {name!r} already exists (tags never move)")
        v = await repo.resolve(version)
        with engine_errors(f"creating tag {name}"):
            await repo.ic.create_tag_async(name, v.snapshot_id)
    return v.snapshot_id


async def delete_tag(repo: Repo, name: str) -> None:
    _check_writable(repo)
    async with commit_lock(repo):
        if name not in await repo.ic.list_tags_async():
            raise NotFoundError(f"no tag {name!r}")
        with engine_errors(f"deleting tag {name}"):
            await repo.ic.delete_tag_async(name)


def _check_writable(repo: Repo) -> None:
    if repo.location.read_only:
        raise ReadOnlyError(f"{repo.location.url} is read-only (HTTP storage)")


def _check_ref_name(name: str) -> None:
    if not name or "/" in name or "@" in name or name.startswith(".") or not name.isprintable():
        raise UsageError(f"invalid branch or tag name {name!r}: no '/', '@', leading '.', "
                         "or control characters")


def _metadata_key(path: str) -> str:
    return f"{path}/zarr.json" if path else "zarr.json"


def _buffer(data: bytes) -> Any:
    return default_buffer_prototype().buffer.from_bytes(data)
