"""The repository layer: Icechunk repositories opened, resolved, viewed and written.

Nothing here knows about FUSE. Coroutines run on the bridge's asyncio loop
(:mod:`vchunkfs.bridge`).
"""

from vchunkfs.repository.authorization import Authorization, Grant, validate_prefix
from vchunkfs.repository.chunkgrid import ChunkGrid
from vchunkfs.repository.location import RepoLocation, StorageOptions, make_storage, parse_repo_url
from vchunkfs.repository.repo import Commit, ContainerInfo, Repo, Version, VersionDiff
from vchunkfs.repository.snapshot import ChunkStats, Entry, Node, SnapshotView, ViewCaches
from vchunkfs.repository.writer import Writer

__all__ = [
    "Authorization",
    "ChunkGrid",
    "ChunkStats",
    "Commit",
    "ContainerInfo",
    "Entry",
    "Grant",
    "Node",
    "Repo",
    "RepoLocation",
    "SnapshotView",
    "StorageOptions",
    "Version",
    "VersionDiff",
    "ViewCaches",
    "Writer",
    "make_storage",
    "parse_repo_url",
    "validate_prefix",
]
