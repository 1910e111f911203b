"""Which virtual chunk containers a reader trusts, and with which credentials.

Icechunk reads no virtual byte from a container that the opener did not
authorize (the guide's ``authorize_virtual_chunk_access``). vchunkfs carries
that decision in three forms, merged in this order (later entries for the same
prefix win):

1. a TOML file (``--auth-file`` or ``VCHUNKFS_AUTH_FILE``)::

       [[authorize]]
       prefix = "s3://noaa-oisst/data/"
       credentials = "anonymous"        # default | anonymous | env | static
       # static only: access_key_id / secret_access_key / session_token (s3),
       # service_account_file or service_account_key (gcs), access_key / sas_token (azure)

2. the environment: ``VCHUNKFS_AUTHORIZE="PREFIX[=KIND] PREFIX[=KIND] ..."``
3. options: ``--authorize PREFIX[=KIND]`` (or the mount option ``authorize=``)

Secrets appear only in the file, which must not be readable by group or
others, or in the backend's usual environment variables (``KIND=env``).
They are never written into the repository.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import icechunk as ic

from vchunkfs.errors import UnauthorizedContainerError, UncoveredLocationError, UsageError

KINDS = ("default", "anonymous", "env", "static")

_STATIC_KEYS = {
    "s3": ("access_key_id", "secret_access_key", "session_token"),
    "gcs": ("service_account_file", "service_account_key"),
    "azure": ("access_key", "sas_token"),
}


@dataclass(frozen=True)
class Grant:
    """Trust in one container url prefix, with how to authenticate to it."""

    prefix: str
    kind: str = "default"
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        if self.kind not in KINDS:
            raise UsageError(
                f"unknown credentials kind {self.kind!r} for {self.prefix}: use one of "
                + ", ".join(KINDS)
            )

    @property
    def backend(self) -> str:
        return prefix_backend(self.prefix)

    def to_icechunk(self) -> ContainerCredential:
        """The icechunk credential object for this grant."""
        backend, kind = self.backend, self.kind
        if backend == "file":
            return ic.credentials.LocalFileSystemAccess
        if backend == "http":
            return ic.credentials.HttpAccess
        if kind == "static":
            return _static_credential(backend, self.prefix, self.secrets)
        anonymous = kind == "anonymous"
        if backend == "s3":
            return ic.s3_credentials(anonymous=True) if anonymous else ic.s3_credentials(
                from_env=True)
        if backend == "gcs":
            return ic.gcs_credentials(anonymous=True) if anonymous else ic.gcs_credentials(
                from_env=True)
        return ic.azure_credentials(anonymous=True) if anonymous else ic.azure_credentials(
            from_env=True)


ContainerCredential = (
    ic.AnyS3Credential
    | ic.AnyGcsCredential
    | ic.AnyAzureCredential
    | ic.credentials.Credentials.LocalFileSystemAccess
    | ic.credentials.Credentials.HttpAccess
)


def _static_credential(backend: str, prefix: str, secrets: Mapping[str, str]
                       ) -> ContainerCredential:
    def need(*names: str) -> None:
        missing = [n for n in names if not secrets.get(n)]
        if missing:
            raise UsageError(f"static credentials for {prefix} lack {', '.join(missing)}")

    if backend == "s3":
        need("access_key_id", "secret_access_key")
        return ic.s3_credentials(
            access_key_id=secrets["access_key_id"],
            secret_access_key=secrets["secret_access_key"],
            session_token=secrets.get("session_token"),
        )
    if backend == "gcs":
        if secrets.get("service_account_key"):
            return ic.gcs_credentials(service_account_key=secrets["service_account_key"])
        need("service_account_file")
        return ic.gcs_credentials(service_account_file=secrets["service_account_file"])
    if secrets.get("sas_token"):
        return ic.azure_credentials(sas_token=secrets["sas_token"])
    need("access_key")
    return ic.azure_credentials(access_key=secrets["access_key"])


def prefix_backend(prefix: str) -> str:
    """The backend family of a container prefix: file, http, s3, gcs or azure."""
    scheme = prefix.split("://", 1)[0].lower()
    return {
        "file": "file",
        "http": "http",
        "https": "http",
        "s3": "s3",
        "gs": "gcs",
        "gcs": "gcs",
        "az": "azure",
        "azure": "azure",
        "abfs": "azure",
    }.get(scheme, "")


def validate_prefix(prefix: str) -> str:
    """Check a virtual chunk container url prefix as the Icechunk guide requires it."""
    if "://" not in prefix or not prefix_backend(prefix):
        raise UsageError(
            f"container prefix {prefix!r} must be a URL such as s3://bucket/path/, "
            "gs://..., az://..., http(s)://host/path/ or file:///abs/path/"
        )
    if not prefix.endswith("/"):
        raise UsageError(
            f"container prefix {prefix!r} must end with '/' (use {prefix + '/'!r}); "
            "a prefix without it would also match unrelated paths that share its start"
        )
    return prefix


@dataclass(frozen=True)
class Authorization:
    """The set of trusted container prefixes. Empty means: read no virtual chunk."""

    grants: tuple[Grant, ...] = ()

    @property
    def prefixes(self) -> list[str]:
        return [g.prefix for g in self.grants]

    def to_icechunk(self) -> dict[str, ic.AnyCredential | None] | None:
        if not self.grants:
            return None
        return ic.containers_credentials({g.prefix: g.to_icechunk() for g in self.grants})

    def merged(self, others: Iterable[Grant]) -> Authorization:
        by_prefix = {g.prefix: g for g in self.grants}
        for g in others:
            by_prefix[g.prefix] = g
        return Authorization(tuple(by_prefix.values()))

    @classmethod
    def load(
        cls,
        options: Iterable[str] = (),
        auth_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Authorization:
        """Merge the config file, the environment and option strings, in that order."""
        env = os.environ if environ is None else environ
        auth = cls()
        file = auth_file or env.get("VCHUNKFS_AUTH_FILE")
        if file:
            auth = auth.merged(read_auth_file(Path(file)))
        auth = auth.merged(parse_grant(s) for s in env.get("VCHUNKFS_AUTHORIZE", "").split())
        return auth.merged(parse_grant(s) for s in options)


def parse_grant(text: str) -> Grant:
    """Parse ``PREFIX`` or ``PREFIX=KIND`` (KIND other than ``static``)."""
    prefix, sep, kind = text.rpartition("=")
    if not sep or "://" not in prefix:
        prefix, kind = text, "default"
    if kind == "static":
        raise UsageError(
            f"static credentials for {prefix} belong in the auth file, never on a command line"
        )
    return Grant(prefix=prefix, kind=kind or "default")


def read_auth_file(path: Path) -> list[Grant]:
    """Read ``[[authorize]]`` entries; refuse a file with secrets that others can read."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as e:
        raise UsageError(f"cannot read auth file {path}: {e.strerror}") from e
    try:
        doc: dict[str, Any] = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"auth file {path} is not valid TOML: {e}") from e
    entries = doc.get("authorize", [])
    if not isinstance(entries, list):
        raise UsageError(f"auth file {path}: 'authorize' must be an array of tables")
    grants = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("prefix"), str):
            raise UsageError(f"auth file {path}: entry {i + 1} needs a 'prefix' string")
        kind = str(entry.get("credentials", "default"))
        backend = prefix_backend(entry["prefix"])
        secrets = {k: str(entry[k]) for k in _STATIC_KEYS.get(backend, ()) if k in entry}
        if secrets and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"auth file {path} holds secrets but is readable by others; run chmod 600 {path}"
            )
        grants.append(Grant(prefix=entry["prefix"], kind=kind, secrets=secrets))
    return grants


_UNAUTHORIZED = re.compile(r"resolves to the url prefix (\S+?),")


def unauthorized_prefix(message: str) -> str | None:
    """The prefix named in icechunk's "not authorized" error, if the message is one."""
    m = _UNAUTHORIZED.search(message)
    return m.group(1) if m else None


_NO_CONTAINER = re.compile(r"no virtual chunk container can handle the chunk location "
                           r"\((.+?)\)(?:,|\s|$)")
_UNADDRESSABLE = re.compile(r'object store backend cannot address key "([^"]*)": it contains')


def raise_if_unauthorized(exc: BaseException, key: str | None = None) -> None:
    """Translate icechunk's refusals to read a virtual chunk's location.

    An unauthorized container is :class:`UnauthorizedContainerError`; a location no
    container covers (icechunk resolves ``..`` in ``file://`` locations first, so a ref
    climbing out of a container lands here) or one that cannot be addressed inside its
    container is :class:`UncoveredLocationError`, its subclass: the same refusal.
    """
    text = str(exc)
    prefix = unauthorized_prefix(text)
    if prefix is not None:
        raise UnauthorizedContainerError(prefix, key) from exc
    m = _NO_CONTAINER.search(text)
    if m:
        raise UncoveredLocationError(
            m.group(1), key, "to allow it, declare a container covering it in the repository "
            "config and authorize that container") from exc
    m = _UNADDRESSABLE.search(text)
    if m:
        raise UncoveredLocationError(m.group(1), key,
                                     "its path has empty, '.' or '..' segments") from exc
