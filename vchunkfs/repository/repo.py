"""An opened Icechunk repository: versions, history, diffs, containers, views.

All coroutines here run on the bridge's asyncio loop (:mod:`vchunkfs.bridge`)
and use icechunk's ``*_async`` API, so a slow backend never blocks the loop
for other callers.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import icechunk as ic

from vchunkfs.errors import (
    BackendError,
    NotFoundError,
    ReadOnlyError,
    UsageError,
    VersionNotFoundError,
)
from vchunkfs.repository.authorization import Authorization, validate_prefix
from vchunkfs.repository.location import RepoLocation, StorageOptions, make_storage
from vchunkfs.repository.snapshot import SnapshotView, ViewCaches
from vchunkfs.repository.sources import LocalSources, SourceRecords

SNAPSHOT_ID_LEN = 20


@dataclass(frozen=True)
class Version:
    """A version name resolved to the snapshot it stands for."""

    snapshot_id: str
    kind: str  # "branch", "tag" or "snapshot"
    name: str  # the branch or tag name, or the snapshot id

    @property
    def moves(self) -> bool:
        """Only a branch (and a branch's staged changes) can change later."""
        return self.kind in ("branch", "staged")


@dataclass(frozen=True)
class Commit:
    """One snapshot in a history."""

    id: str
    parent_id: str | None
    written_at: datetime.datetime
    message: str
    metadata: dict[str, Any]

    @classmethod
    def from_info(cls, info: ic.SnapshotInfo) -> Commit:
        return cls(info.id, info.parent_id, info.written_at, info.message, dict(info.metadata))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "parent_id": self.parent_id,
                "written_at": self.written_at.isoformat(), "message": self.message,
                "metadata": self.metadata}


@dataclass(frozen=True)
class VersionDiff:
    """What changed from one version to another."""

    new_groups: list[str] = field(default_factory=list)
    new_arrays: list[str] = field(default_factory=list)
    deleted_groups: list[str] = field(default_factory=list)
    deleted_arrays: list[str] = field(default_factory=list)
    updated_groups: list[str] = field(default_factory=list)
    updated_arrays: list[str] = field(default_factory=list)
    updated_chunks: dict[str, int] = field(default_factory=dict)  # array -> changed chunk count

    @classmethod
    def from_icechunk(cls, d: ic.Diff) -> VersionDiff:
        return cls(sorted(d.new_groups), sorted(d.new_arrays), sorted(d.deleted_groups),
                   sorted(d.deleted_arrays), sorted(d.updated_groups), sorted(d.updated_arrays),
                   {k: len(v) for k, v in sorted(d.updated_chunks.items())})

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass(frozen=True)
class ContainerInfo:
    """A virtual chunk container from the repository's config."""

    url_prefix: str
    name: str | None
    store: str  # icechunk's description of the object store config


# A fetch of up to this many bytes is one request. icechunk splits a fetch of a
# virtual chunk by the *repository storage's* concurrency settings, and its local
# file system storage asks for requests of 4 KiB and more, five at once: a 380 kB
# OISST chunk on S3 became five range GETs (527 requests for 124 chunks, four times
# the server's work; docs/benchmarks-remote.md). The daemon reads at most 8 MiB
# blocks and brings its own concurrency (the prefetcher); icechunk's S3 default.
REQUEST_BYTES = 12 * 1024 * 1024


def one_request_per_block() -> ic.StorageSettings:
    """Storage settings that fetch each chunk (or 8 MiB block) in one request."""
    return ic.StorageSettings(concurrency=ic.StorageConcurrencySettings(
        max_concurrent_requests_for_object=18, ideal_concurrent_request_size=REQUEST_BYTES))


class Repo:
    """An Icechunk repository opened with a reader's authorization."""

    def __init__(self, location: RepoLocation, repo: ic.Repository,
                 authorization: Authorization, storage_options: StorageOptions) -> None:
        self.location = location
        self.ic = repo
        self.authorization = authorization
        self.storage_options = storage_options
        self.caches = ViewCaches()
        # local virtual chunks are read by vchunkfs itself (contained below the authorized
        # file:// prefixes, checked against their ingest records): see sources.py
        file_prefixes = [g.prefix for g in authorization.grants if g.backend == "file"]
        self.local = LocalSources(
            file_prefixes, lambda: list(self._current_containers()),
            SourceRecords(lambda sid: self.ic.async_ancestry(snapshot_id=sid)),
        ) if file_prefixes else None

    @classmethod
    async def open(cls, location: RepoLocation, *, authorization: Authorization | None = None,
                   storage_options: StorageOptions | None = None,
                   config: ic.RepositoryConfig | None = None) -> Repo:
        """Open an existing repository; :class:`NotFoundError` if there is none."""
        auth = authorization or Authorization()
        opts = storage_options or StorageOptions()
        storage = make_storage(location, opts)
        config = config or ic.RepositoryConfig.default()
        if config.storage is None:
            config.storage = one_request_per_block()
        try:
            repo = await ic.Repository.open_async(
                storage, config=config, authorize_virtual_chunk_access=auth.to_icechunk())
        except ic.RepositoryNotFoundError as e:
            raise NotFoundError(f"no Icechunk repository at {location.url}") from e
        except ic.IcechunkError as e:
            raise BackendError(f"cannot open {location.url}: {_first_line(e)}") from e
        return cls(location, repo, auth, opts)

    @classmethod
    async def create(cls, location: RepoLocation, *,
                     containers: Sequence[ic.VirtualChunkContainer] = (),
                     authorization: Authorization | None = None,
                     storage_options: StorageOptions | None = None) -> Repo:
        """Create a new repository with these virtual chunk containers saved in its config."""
        if location.read_only:
            raise ReadOnlyError(f"cannot create a repository over HTTP ({location.url})")
        auth = authorization or Authorization()
        opts = storage_options or StorageOptions()
        config = ic.RepositoryConfig.default()
        for c in containers:
            validate_prefix(c.url_prefix)
            config.set_virtual_chunk_container(c)
        storage = make_storage(location, opts)
        try:
            repo = await ic.Repository.create_async(
                storage, config=config, authorize_virtual_chunk_access=auth.to_icechunk())
        except ic.AlreadyExistsError as e:
            raise UsageError(f"a repository already exists at {location.url}") from e
        except ic.IcechunkError as e:
            raise BackendError(f"cannot create {location.url}: {_first_line(e)}") from e
        if containers:
            await repo.save_config_async()
        return cls(location, repo, auth, opts)

    # -- versions -----------------------------------------------------------

    async def branches(self) -> dict[str, str]:
        with engine_errors("listing branches"):
            names = await self.ic.list_branches_async()
            return {b: await self.ic.lookup_branch_async(b) for b in sorted(names)}

    async def tags(self) -> dict[str, str]:
        with engine_errors("listing tags"):
            names = await self.ic.list_tags_async()
            return {t: await self.ic.lookup_tag_async(t) for t in sorted(names)}

    async def resolve(self, version: str | None) -> Version:
        """Resolve a branch, tag, snapshot id or unique id prefix (default: ``main``).

        Names win over ids: a branch or tag is tried before a snapshot id.
        """
        version = version or "main"
        with engine_errors(f"resolving {version}"):
            return await self._resolve(version)

    async def _resolve(self, version: str) -> Version:
        if version in await self.ic.list_branches_async():
            return Version(await self.ic.lookup_branch_async(version), "branch", version)
        if version in await self.ic.list_tags_async():
            return Version(await self.ic.lookup_tag_async(version), "tag", version)
        candidate = version.upper()
        if len(candidate) == SNAPSHOT_ID_LEN:
            try:
                info = await self.ic.lookup_snapshot_async(candidate)
                return Version(info.id, "snapshot", info.id)
            except ic.IcechunkError:
                pass
        if len(candidate) >= 4 and candidate.isalnum():
            matches = {s for s in await self._reachable_snapshots() if s.startswith(candidate)}
            if len(matches) == 1:
                sid = matches.pop()
                return Version(sid, "snapshot", sid)
            if len(matches) > 1:
                raise UsageError(f"snapshot id prefix {version!r} is ambiguous: "
                                 + ", ".join(sorted(matches)[:5]))
        raise VersionNotFoundError(
            f"no branch, tag or snapshot {version!r} in {self.location.url} "
            "(see: vchunkfs branches / tags / log)")

    async def _reachable_snapshots(self) -> set[str]:
        heads = list((await self.branches()).values()) + list((await self.tags()).values())
        seen: set[str] = set()
        for head in heads:
            if head in seen:
                continue
            async for info in self.ic.async_ancestry(snapshot_id=head):
                if info.id in seen:
                    break
                seen.add(info.id)
        return seen

    async def history(self, version: str | None = None, limit: int | None = None
                      ) -> AsyncIterator[Commit]:
        """Commits from ``version`` back to the first one, newest first."""
        v = await self.resolve(version)
        n = 0
        with engine_errors("reading history"):
            async for info in self.ic.async_ancestry(snapshot_id=v.snapshot_id):
                if limit is not None and n >= limit:
                    return
                n += 1
                yield Commit.from_info(info)

    async def diff(self, from_version: str, to_version: str) -> VersionDiff:
        """Changes from ``from_version`` to ``to_version``, its descendant."""
        a = await self.resolve(from_version)
        b = await self.resolve(to_version)
        if a.snapshot_id == b.snapshot_id:
            return VersionDiff()
        try:
            d = await self.ic.diff_async(from_snapshot_id=a.snapshot_id,
                                         to_snapshot_id=b.snapshot_id)
        except ic.IcechunkError as e:
            # icechunk diffs only along one line of history
            raise UsageError(
                f"cannot diff {from_version} and {to_version}: {from_version} must be an "
                f"ancestor of {to_version} ({_first_line(e)})") from e
        return VersionDiff.from_icechunk(d)

    async def view(self, version: str | None = None) -> SnapshotView:
        v = await self.resolve(version)
        return await self.view_of(v.snapshot_id)

    async def view_of(self, snapshot_id: str) -> SnapshotView:
        with engine_errors(f"opening snapshot {snapshot_id}"):
            return await SnapshotView.open(self.ic, snapshot_id, self.caches, self.local)

    # -- containers ---------------------------------------------------------

    def containers(self) -> list[ContainerInfo]:
        vccs = self.ic.config.virtual_chunk_containers or {}
        return [ContainerInfo(c.url_prefix, c.name, repr(c.store).split("\n")[0])
                for _, c in sorted(vccs.items())]

    async def set_container(self, container: ic.VirtualChunkContainer) -> None:
        """Add or replace a container (matched by url prefix) and save the config."""
        validate_prefix(container.url_prefix)
        current = self._current_containers()
        if container.name and any(c.name == container.name and p != container.url_prefix
                                  for p, c in current.items()):
            raise UsageError(f"container name {container.name!r} is already used by another prefix")
        current[container.url_prefix] = container
        await self._save_containers(list(current.values()))

    async def remove_container(self, url_prefix: str) -> None:
        current = self._current_containers()
        if url_prefix not in current:
            raise NotFoundError(f"no virtual chunk container {url_prefix!r} in the config")
        del current[url_prefix]
        await self._save_containers(list(current.values()))

    async def reload_config(self) -> bool:
        """Pick up containers another writer saved since this repository was opened.

        Returns whether the containers changed. The caching settings given at
        open are kept; authorization is the reader's own and never changes.
        """
        with engine_errors("reading the repository config"):
            stored = await ic.Repository.fetch_config_async(self.ic.storage)
            if stored is None:
                return False
            new = {c.url_prefix for c in (stored.virtual_chunk_containers or {}).values()}
            if new == set(self._current_containers()):
                return False
            config = self.ic.config
            config.clear_virtual_chunk_containers()
            for c in (stored.virtual_chunk_containers or {}).values():
                config.set_virtual_chunk_container(c)
            self.ic = await self.ic.reopen_async(
                config=config, authorize_virtual_chunk_access=self.authorization.to_icechunk())
            return True

    def _current_containers(self) -> dict[str, ic.VirtualChunkContainer]:
        vccs = self.ic.config.virtual_chunk_containers or {}
        return {c.url_prefix: c for c in vccs.values()}

    async def _save_containers(self, containers: list[ic.VirtualChunkContainer]) -> None:
        if self.location.read_only:
            raise ReadOnlyError(f"{self.location.url} is read-only")
        config = self.ic.config
        config.clear_virtual_chunk_containers()
        for c in containers:
            config.set_virtual_chunk_container(c)
        repo = await self.ic.reopen_async(
            config=config, authorize_virtual_chunk_access=self.authorization.to_icechunk())
        await repo.save_config_async()
        self.ic = repo


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Report icechunk's errors as :class:`BackendError` (ours pass through)."""
    try:
        yield
    except ic.IcechunkError as e:
        raise BackendError(f"{what}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
