"""Repository maintenance: expiring old snapshots and collecting garbage.

Both are Icechunk's own operations (``Repository.expire_snapshots`` and
``garbage_collect``); this module adds what the command line needs around them:

* a dry run of expiry (Icechunk has none), predicted by the rule Icechunk 2.3
  applies: a snapshot reachable from a branch or tag is expired when it was
  written before the cutoff, unless it is the root snapshot or the head of a
  branch or tag (heads stay, so every ref stays readable);
* the id, date and message of every snapshot expired, read before expiry;
* the local commit lock around both, so they are ordered with vchunkfs commits
  and ref changes on a local repository.

Garbage collection deletes only objects inside the repository (snapshots,
manifests, native chunks, transaction logs) that no remaining snapshot
references and that were written before its cutoff. Virtual chunks' source
files are outside the repository and never touched.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import icechunk as ic

from vchunkfs.errors import ReadOnlyError
from vchunkfs.repository.repo import Commit, Repo, engine_errors
from vchunkfs.repository.writer import commit_lock


@dataclass(frozen=True)
class ExpireResult:
    older_than: datetime.datetime
    dry_run: bool
    expired: list[Commit]  # newest first

    def to_json(self) -> dict[str, Any]:
        return {"older_than": self.older_than.isoformat(), "dry_run": self.dry_run,
                "count": len(self.expired),
                "expired": [{"id": c.id, "written_at": c.written_at.isoformat(),
                             "message": c.message} for c in self.expired]}


@dataclass(frozen=True)
class GcResult:
    older_than: datetime.datetime
    dry_run: bool
    bytes: int
    snapshots: int
    manifests: int
    chunks: int
    attributes: int
    transaction_logs: int
    failed: int = 0
    skipped_phases: list[str] = field(default_factory=list)

    @property
    def objects(self) -> int:
        return (self.snapshots + self.manifests + self.chunks + self.attributes
                + self.transaction_logs)

    def to_json(self) -> dict[str, Any]:
        return {"older_than": self.older_than.isoformat(), "dry_run": self.dry_run,
                "bytes": self.bytes, "objects": self.objects, "snapshots": self.snapshots,
                "manifests": self.manifests, "chunks": self.chunks,
                "attributes": self.attributes, "transaction_logs": self.transaction_logs,
                "failed": self.failed, "skipped_phases": self.skipped_phases}


async def reachable_commits(repo: Repo) -> tuple[dict[str, Commit], set[str]]:
    """Every snapshot reachable from a branch or tag, and the set of ref heads."""
    heads = {**await repo.branches(), **{f"tag:{k}": v for k, v in (await repo.tags()).items()}}
    commits: dict[str, Commit] = {}
    with engine_errors("reading history"):
        for head in set(heads.values()):
            async for info in repo.ic.async_ancestry(snapshot_id=head):
                if info.id in commits:
                    break
                commits[info.id] = Commit.from_info(info)
    return commits, set(heads.values())


def _expirable(commits: dict[str, Commit], heads: set[str],
               older_than: datetime.datetime) -> list[Commit]:
    return sorted((c for c in commits.values()
                   if c.written_at < older_than and c.parent_id is not None
                   and c.id not in heads), key=lambda c: c.written_at, reverse=True)


async def expire(repo: Repo, older_than: datetime.datetime, dry_run: bool = False
                 ) -> ExpireResult:
    """Expire the snapshots written before ``older_than`` (exclusive), keeping ref heads."""
    if older_than.tzinfo is None:
        older_than = older_than.replace(tzinfo=datetime.UTC)
    if dry_run:
        commits, heads = await reachable_commits(repo)
        return ExpireResult(older_than, True, _expirable(commits, heads, older_than))
    _check_writable(repo)
    async with commit_lock(repo):
        commits, _ = await reachable_commits(repo)
        with engine_errors("expiring snapshots"):
            ids = await repo.ic.expire_snapshots_async(older_than)
    unknown = datetime.datetime.fromtimestamp(0, datetime.UTC)
    expired = [commits.get(i) or Commit(i, None, unknown, "", {}) for i in ids]
    expired.sort(key=lambda c: c.written_at, reverse=True)
    return ExpireResult(older_than, False, expired)


async def collect_garbage(repo: Repo, older_than: datetime.datetime, dry_run: bool = False
                          ) -> GcResult:
    """Delete (or, dry, count) the repository's objects written before ``older_than``
    that no snapshot reachable from a branch or tag references."""
    if older_than.tzinfo is None:
        older_than = older_than.replace(tzinfo=datetime.UTC)
    with engine_errors("collecting garbage"):
        if dry_run:
            s = await repo.ic.garbage_collect_async(older_than, dry_run=True)
        else:
            _check_writable(repo)
            async with commit_lock(repo):
                s = await repo.ic.garbage_collect_async(older_than)
    return _gc_result(s, older_than, dry_run)


def _gc_result(s: ic.GCSummary, older_than: datetime.datetime, dry_run: bool) -> GcResult:
    return GcResult(older_than, dry_run, s.bytes_deleted, s.snapshots_deleted,
                    s.manifests_deleted, s.chunks_deleted, s.attributes_deleted,
                    s.transaction_logs_deleted, s.objects_failed_to_delete,
                    [str(p) for p in s.skipped_phases])


def _check_writable(repo: Repo) -> None:
    if repo.location.read_only:
        raise ReadOnlyError(f"{repo.location.url} is read-only (HTTP storage)")
