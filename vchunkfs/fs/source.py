"""The seam between the filesystem core and a repository: a *version source*.

:class:`~vchunkfs.fs.namespace.Namespace` asks a :class:`VersionSource` for
heads, snapshot views and history, and turns views into files with a
:data:`PresentationFactory`; chunk bytes come from the presentations'
``read``. :class:`RepoSource` is the real one (an opened
:class:`~vchunkfs.repository.Repo`); :mod:`vchunkfs.fs.faults` wraps any source
with injected errors, latency, hangs and short reads. Coroutines run on the
bridge's asyncio loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from vchunkfs.presentation.base import Presentation, make_presentation
from vchunkfs.repository import Repo, Version
from vchunkfs.repository.repo import Commit
from vchunkfs.repository.snapshot import SnapshotView

PresentationFactory = Callable[[str, SnapshotView], Presentation]


class VersionSource(Protocol):
    """What the filesystem core needs of a repository."""

    async def resolve(self, version: str) -> Version:
        """A branch, tag or snapshot id (or unique prefix) as a version."""
        ...

    async def branches(self) -> dict[str, str]:
        """Branch -> head snapshot id."""
        ...

    async def tags(self) -> dict[str, str]:
        """Tag -> snapshot id."""
        ...

    async def snapshot_ids(self) -> set[str]:
        """Every snapshot a branch or tag reaches."""
        ...

    async def view(self, snapshot_id: str) -> SnapshotView:
        """The snapshot's view (its node tree read)."""
        ...

    async def written_at_ns(self, snapshot_id: str) -> int:
        """The snapshot's commit time, in nanoseconds since the epoch."""
        ...

    async def history(self, snapshot_id: str, limit: int) -> list[Commit]:
        """Commits from ``snapshot_id`` back, newest first, at most ``limit``."""
        ...

    async def reload_config(self) -> bool:
        """Re-read the repository's configuration; whether its containers changed."""
        ...

    def container_prefixes(self) -> list[str]:
        """The repository's virtual chunk containers, as url prefixes."""
        ...


class RepoSource:
    """A :class:`VersionSource` over an opened repository."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    async def resolve(self, version: str) -> Version:
        return await self.repo.resolve(version)

    async def branches(self) -> dict[str, str]:
        return await self.repo.branches()

    async def tags(self) -> dict[str, str]:
        return await self.repo.tags()

    async def snapshot_ids(self) -> set[str]:
        return await self.repo._reachable_snapshots()

    async def view(self, snapshot_id: str) -> SnapshotView:
        return await self.repo.view_of(snapshot_id)

    async def written_at_ns(self, snapshot_id: str) -> int:
        info = await self.repo.ic.lookup_snapshot_async(snapshot_id)
        return int(info.written_at.timestamp() * 1e9)

    async def history(self, snapshot_id: str, limit: int) -> list[Commit]:
        return [c async for c in self.repo.history(snapshot_id, limit)]

    async def reload_config(self) -> bool:
        return await self.repo.reload_config()

    def container_prefixes(self) -> list[str]:
        return [c.url_prefix for c in self.repo.containers()]


__all__ = ["PresentationFactory", "RepoSource", "VersionSource", "make_presentation"]
