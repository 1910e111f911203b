"""What every ``vchunkfs`` command shares: repository options, output, exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from vchunkfs.bridge import shared_bridge
from vchunkfs.errors import UsageError, VchunkfsError
from vchunkfs.repository import Authorization, Repo, StorageOptions, parse_repo_url

EXIT_CODES = """\
exit status:
  0  success                      5  conflict: the branch moved and changes overlap
  1  unexpected error             6  a virtual chunk's source changed or is missing
  2  bad usage, URL or input      7  the repository or ref is read-only
  3  repository, version or path  8  storage backend failure
     not found
  4  virtual chunk container not authorized
"""


def add_repo_options(p: argparse.ArgumentParser) -> None:
    """Options for reaching a repository and trusting its containers."""
    g = p.add_argument_group("repository access")
    g.add_argument("--authorize", metavar="PREFIX[=KIND]", action="append", default=[],
                   help="trust this virtual chunk container url prefix (repeatable); KIND is "
                        "default, anonymous or env. Also VCHUNKFS_AUTHORIZE and --auth-file")
    g.add_argument("--auth-file", metavar="PATH",
                   help="TOML file of [[authorize]] entries, with credentials (chmod 600); "
                        "default $VCHUNKFS_AUTH_FILE")
    g.add_argument("--endpoint-url", metavar="URL",
                   help="S3-compatible endpoint of the repository's storage "
                        "(default $AWS_ENDPOINT_URL)")
    g.add_argument("--region", help="storage region (default $AWS_REGION)")
    g.add_argument("--anonymous", action="store_true",
                   help="read the repository's storage without credentials")
    g.add_argument("--storage-config", metavar="KEY=VALUE", action="append", default=[],
                   help="backend config key for gcs, azure or http storage (repeatable), e.g. "
                        "azure_storage_use_emulator=true")


def add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document for scripts")


def split_repo_version(text: str) -> tuple[str, str | None]:
    """Split ``REPO@VERSION``; the version is what follows the last '@' when it has no '/'."""
    base, sep, version = text.rpartition("@")
    if sep and base and version and "/" not in version:
        return base, version
    return text, None


def storage_options(args: argparse.Namespace) -> StorageOptions:
    config = {}
    for item in args.storage_config:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-config expects KEY=VALUE, got {item!r}")
        config[key] = value
    return StorageOptions.from_env(endpoint_url=args.endpoint_url, region=args.region,
                                   anonymous=args.anonymous or None, config=config or None)


def open_repo(args: argparse.Namespace, url: str) -> Repo:
    location = parse_repo_url(url)
    auth = Authorization.load(args.authorize, args.auth_file)
    return run(lambda: Repo.open(location, authorization=auth,
                                 storage_options=storage_options(args)))


def run[R](fn: Callable[[], Awaitable[R]]) -> R:
    """Run a repository-layer coroutine on the bridge and wait for it."""
    return shared_bridge().run(fn)


def emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def report_error(e: VchunkfsError, as_json: bool) -> int:
    if as_json:
        json.dump({"error": {"code": e.code, "message": e.message}}, sys.stdout)
        sys.stdout.write("\n")
    print(f"vchunkfs: {e.message}", file=sys.stderr)
    return e.exit_status
