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
exit status (docs/cli.md):
  0  success                                 5  conflict: the branch moved, changes overlap
  1  unexpected error                        6  a virtual chunk's source changed or is missing
  2  bad usage, URL or input                 7  the repository or ref is read-only
  3  repository, version or path not found   8  storage backend failure
  4  virtual chunk container not authorized  9  a commit's outcome is unknown (see ctl log)
                                             32 the mount could not be made
"""


def exit_statuses(*lines: str) -> str:
    """The exit statuses a command can end with, for its ``--help`` (the full table is
    in ``vchunkfs --help`` and docs/cli.md)."""
    return "exit status:\n" + "".join(f"  {line}\n" for line in ("0  done", *lines))


# Options that every command takes before or after its operands, at every level
# (``vchunkfs --json ctl MNT status`` and ``vchunkfs ctl MNT status --json`` alike).
# Each parser level declares them with ``default=SUPPRESS``, so a level where an
# option is not given never overwrites what another level set; the top-level
# parser supplies the defaults once (:func:`set_global_defaults`).
GLOBAL_DEFAULTS: dict[str, Any] = {
    "json": False, "authorize": [], "auth_file": None, "endpoint_url": None, "region": None,
    "anonymous": False, "storage_config": [], "socket": None,
}
# Repeatable options: values given at several levels add up instead of replacing.
_REPEATABLE = ("authorize", "storage_config")


class SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose repeatable options add to those given before the subcommand.

    argparse parses a subcommand into a fresh namespace and copies it over the
    outer one, so ``--authorize A sub --authorize B`` would keep only B.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        before = {k: getattr(namespace, k) for k in _REPEATABLE if hasattr(namespace, k)}
        super().__call__(parser, namespace, values, option_string)
        for key, outer in before.items():
            inner = getattr(namespace, key)
            if inner is not outer:
                setattr(namespace, key, [*outer, *inner])


def add_subcommands(p: argparse.ArgumentParser, dest: str, required: bool = True
                    ) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    return p.add_subparsers(dest=dest, metavar="COMMAND", required=required,
                            action=SubParsers)


def set_global_defaults(p: argparse.ArgumentParser) -> None:
    """The top-level parser: defaults of the options any level may set."""
    p.set_defaults(**{k: list(v) if isinstance(v, list) else v
                      for k, v in GLOBAL_DEFAULTS.items()})


def add_repo_options(p: argparse.ArgumentParser) -> None:
    """Options for reaching a repository and trusting its containers."""
    S = argparse.SUPPRESS
    g = p.add_argument_group("repository access")
    g.add_argument("--authorize", metavar="PREFIX[=KIND]", action="append", default=S,
                   help="trust this virtual chunk container url prefix (repeatable); KIND is "
                        "default, anonymous or env. Also VCHUNKFS_AUTHORIZE and --auth-file")
    g.add_argument("--auth-file", metavar="PATH", default=S,
                   help="TOML file of [[authorize]] entries, with credentials (chmod 600); "
                        "default $VCHUNKFS_AUTH_FILE")
    g.add_argument("--endpoint-url", metavar="URL", default=S,
                   help="S3-compatible endpoint of the repository's storage "
                        "(default $AWS_ENDPOINT_URL)")
    g.add_argument("--region", default=S, help="storage region (default $AWS_REGION)")
    g.add_argument("--anonymous", action="store_true", default=S,
                   help="read the repository's storage without credentials")
    g.add_argument("--storage-config", metavar="KEY=VALUE", action="append", default=S,
                   help="backend config key for gcs, azure or http storage (repeatable), e.g. "
                        "azure_storage_use_emulator=true")


def add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print one JSON document for scripts")


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
