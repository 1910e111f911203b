"""Repository URLs and the icechunk ``Storage`` they name.

Accepted forms::

    /abs/or/relative/path     file:///abs/path      (local disk)
    s3://bucket/prefix        (S3 and S3-compatible servers)
    gs://bucket/prefix        gcs://bucket/prefix   (Google Cloud Storage)
    az://account/container/prefix                   (Azure Blob Storage)
    http(s)://host/path       (read-only)
    memory://name             (in-process, for tests; one store per name)

Connection settings that are not secrets (endpoint, region, anonymous access,
path-style addressing, backend config keys) come from :class:`StorageOptions`,
which the command line, mount options and the environment fill. Secrets come
only from the environment or the backend's own credential chain: never from
the URL and never from a command line.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import icechunk as ic

from vchunkfs.errors import UsageError

SCHEMES = ("file", "s3", "gs", "gcs", "az", "azure", "http", "https", "memory")


@dataclass(frozen=True)
class StorageOptions:
    """Non-secret connection settings for the repository's own storage."""

    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False
    force_path_style: bool | None = None  # None: on when an endpoint_url is given
    config: dict[str, str] = field(default_factory=dict)  # backend config keys (gcs, az, http)

    @classmethod
    def from_env(cls, **overrides: object) -> StorageOptions:
        """Defaults from the environment (``AWS_ENDPOINT_URL``, ``AWS_REGION``), then overrides."""
        values: dict[str, object] = {
            "endpoint_url": os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL"),
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RepoLocation:
    """A parsed repository URL."""

    url: str  # normalized, as shown to users
    scheme: str  # one of: file, s3, gcs, azure, http, memory
    bucket: str = ""  # bucket, or azure container; memory: the name
    prefix: str = ""  # key prefix inside the bucket, no leading or trailing '/'
    path: str = ""  # file: absolute path; http: the full base URL
    account: str = ""  # azure storage account

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def read_only(self) -> bool:
        """HTTP storage cannot be written by icechunk."""
        return self.scheme == "http"


def parse_repo_url(url: str) -> RepoLocation:
    """Parse a repository URL; raise :class:`UsageError` with the accepted forms on failure."""
    if not url:
        raise UsageError("empty repository URL")
    if "://" not in url:
        path = str(Path(url).expanduser().resolve())
        return RepoLocation(url=f"file://{path}", scheme="file", path=path)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsed lazily: a bad port raises here, not later
    except ValueError as e:  # "Invalid IPv6 URL", a bad port
        raise UsageError(f"bad repository URL {url!r}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(
            f"unsupported repository URL {url!r}: use a path, file://, s3://, gs://, az://, "
            "http(s):// or memory://"
        )
    if parts.query or parts.fragment:
        raise UsageError(
            f"repository URL {url!r} has a query or fragment; pass settings as options "
            "(--endpoint-url, --region, ...)"
        )
    prefix = parts.path.strip("/")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"file URL {url!r} names a host; use file:///absolute/path")
        path = str(Path(parts.path).resolve())
        return RepoLocation(url=f"file://{path}", scheme="file", path=path)
    if scheme == "memory":
        name = parts.netloc + parts.path
        if not name:
            raise UsageError("memory:// URL needs a name, e.g. memory://test")
        return RepoLocation(url=f"memory://{name}", scheme="memory", bucket=name)
    if scheme in ("http", "https"):
        if not parts.netloc:
            raise UsageError(f"HTTP repository URL {url!r} has no host")
        base = url.rstrip("/")
        return RepoLocation(url=base, scheme="http", path=base)
    if not parts.netloc:
        raise UsageError(f"repository URL {url!r} has no bucket")
    if scheme == "s3":
        return RepoLocation(url=_join(f"s3://{parts.netloc}", prefix), scheme="s3",
                            bucket=parts.netloc, prefix=prefix)
    if scheme in ("gs", "gcs"):
        return RepoLocation(url=_join(f"gs://{parts.netloc}", prefix), scheme="gcs",
                            bucket=parts.netloc, prefix=prefix)
    # az://account/container/prefix
    container, _, rest = prefix.partition("/")
    if not container:
        raise UsageError(f"Azure URL {url!r} must be az://ACCOUNT/CONTAINER[/PREFIX]")
    return RepoLocation(url=_join(f"az://{parts.netloc}/{container}", rest), scheme="azure",
                        account=parts.netloc, bucket=container, prefix=rest)


def _join(base: str, prefix: str) -> str:
    return f"{base}/{prefix}" if prefix else base


_memory_storages: dict[str, ic.Storage] = {}
_memory_lock = threading.Lock()


def make_storage(location: RepoLocation, options: StorageOptions | None = None) -> ic.Storage:
    """The icechunk ``Storage`` for a location. Credentials come from the environment."""
    opts = options or StorageOptions()
    match location.scheme:
        case "file":
            return ic.local_filesystem_storage(location.path)
        case "memory":
            # One in-memory store per name, so that reopening "memory://x" in the
            # same process sees the same repository.
            with _memory_lock:
                if location.bucket not in _memory_storages:
                    _memory_storages[location.bucket] = ic.in_memory_storage()
                return _memory_storages[location.bucket]
        case "http":
            return ic.http_storage(location.path, opts=opts.config or None)
        case "s3":
            endpoint = opts.endpoint_url
            path_style = (opts.force_path_style if opts.force_path_style is not None
                          else bool(endpoint))
            return ic.s3_storage(
                bucket=location.bucket,
                prefix=location.prefix or None,
                region=opts.region,
                endpoint_url=endpoint,
                allow_http=bool(endpoint and endpoint.startswith("http://")),
                anonymous=opts.anonymous or None,
                from_env=None if opts.anonymous else True,
                force_path_style=path_style,
            )
        case "gcs":
            return ic.gcs_storage(
                bucket=location.bucket,
                prefix=location.prefix or None,
                anonymous=opts.anonymous or None,
                from_env=None if opts.anonymous else True,
                config=opts.config or None,
            )
        case "azure":
            return ic.azure_storage(
                account=location.account,
                container=location.bucket,
                prefix=location.prefix,
                anonymous=opts.anonymous or None,
                from_env=None if opts.anonymous else True,
                config=opts.config or None,
            )
    raise UsageError(f"unsupported repository scheme {location.scheme!r}")
