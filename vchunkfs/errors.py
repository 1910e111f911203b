"""Typed errors shared by every layer.

Each error carries a stable ``code`` (used by ``--json`` output and, later, the
control protocol) and the process exit status the command line uses for it.
Messages are one line a person can act on: what failed and, where there is
one, what to do about it.
"""

from __future__ import annotations


class VchunkfsError(Exception):
    """Base of all errors vchunkfs reports to a user."""

    code = "error"
    exit_status = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(VchunkfsError):
    """A request that is malformed: a bad URL, option or argument."""

    code = "usage"
    exit_status = 2


class NotFoundError(VchunkfsError):
    """A repository, version, node or chunk that does not exist."""

    code = "not_found"
    exit_status = 3


class VersionNotFoundError(NotFoundError):
    code = "version_not_found"


class NodeNotFoundError(NotFoundError):
    code = "node_not_found"


class UnauthorizedContainerError(VchunkfsError):
    """A virtual chunk points into a container this reader did not authorize."""

    code = "unauthorized"
    exit_status = 4

    def __init__(self, prefix: str, key: str | None = None) -> None:
        where = f"chunk {key} " if key else "a virtual chunk "
        super().__init__(
            f"{where}lives in virtual chunk container {prefix!r}, which this reader has not "
            f"authorized; authorize it with --authorize {prefix} (or VCHUNKFS_AUTHORIZE, "
            f"or an [[authorize]] entry in the config file)"
        )
        self.prefix = prefix
        self.key = key


class UncoveredLocationError(UnauthorizedContainerError):
    """A virtual chunk points at a location that no declared and authorized container
    covers (icechunk knows no container for it, or cannot address it inside one).

    Refused like an unauthorized container (same code, exit status and errno): both
    mean "this reader may not read that".
    """

    def __init__(self, location: str, key: str | None = None, detail: str = "") -> None:
        where = f"chunk {key} " if key else "a virtual chunk "
        VchunkfsError.__init__(
            self,
            f"{where}points at {location}, which no declared and authorized virtual chunk "
            f"container covers; refusing to read it{f' ({detail})' if detail else ''}",
        )
        self.prefix = ""
        self.location = location
        self.key = key


class ConflictError(VchunkfsError):
    """A commit lost a race with another writer and could not be rebased."""

    code = "conflict"
    exit_status = 5


class SourceChangedError(VchunkfsError):
    """A virtual chunk's source object changed since the ref was written."""

    code = "source_changed"
    exit_status = 6


class SourceMissingError(VchunkfsError):
    """A virtual chunk's source object (or its byte range) cannot be found."""

    code = "source_missing"
    exit_status = 6


class ReadOnlyError(VchunkfsError):
    """A write was asked of something that is read-only (an HTTP repository, a tag)."""

    code = "read_only"
    exit_status = 7


class BackendError(VchunkfsError):
    """The storage backend failed (after icechunk's own retries)."""

    code = "backend"
    exit_status = 8


class BackendTimeoutError(BackendError):
    """A call into the storage backend (or a local source) did not finish within the
    mount's ``timeout``: the caller gets ``EIO``; the call's message names it."""

    code = "timeout"

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:.3g} s: {what or 'a backend call'}")
        self.what = what
        self.seconds = seconds


class CommitOutcomeUnknownError(BackendError):
    """A commit failed in a way that may have come after the branch moved (its reply
    lost), and the branch head could not be read to tell: the commit may have landed.
    Never reported as failed, since it may not have; look at the branch's history for
    the commit's token (the message says which) before committing again."""

    code = "commit_unknown"
    exit_status = 9


class MountError(VchunkfsError):
    """The mount could not be made (mountpoint, FUSE, or the daemon died)."""

    code = "mount"
    exit_status = 32  # mount(8)'s "mount failure"


class InvalidInputError(UsageError):
    """A write request that is well-formed but not acceptable (bad prefix, bad key)."""

    code = "invalid_input"


class SourceOutsideContainerError(UnauthorizedContainerError):
    """A local source that resolves outside every authorized ``file://`` prefix (a
    symbolic link leading out, or not a regular file): refused like an unauthorized
    container (``EACCES``)."""

    def __init__(self, url: str, key: str | None, why: str) -> None:
        where = f"chunk {key}: " if key else ""
        VchunkfsError.__init__(
            self, f"{where}refusing its source {url}: {why}; only files below an authorized "
            "file:// prefix are read (symbolic links are followed only while they stay below it)")
        self.prefix = url[:url.rfind("/") + 1]
        self.key = key
