"""``vchunkfs export``: one version as a plain Zarr store, with the chunk bytes copied."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from typing import TYPE_CHECKING

from vchunkfs.cli.common import (
    add_json_option,
    add_repo_options,
    emit_json,
    exit_statuses,
    open_repo,
    run,
    split_repo_version,
)
from vchunkfs.errors import VchunkfsError
from vchunkfs.export import MARKER, export, open_destination
from vchunkfs.presentation.names import NAMES
from vchunkfs.repository import StorageOptions

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Sub) -> None:
    p = sub.add_parser(
        "export", help="write a version as a plain Zarr store (chunk bytes copied)",
        description="Copy what a mount shows for REPO@VERSION (in one presentation) into "
                    "DEST, a new or empty local directory or s3://bucket/prefix, for "
                    "systems that read neither Icechunk nor a mount. Virtual chunks are "
                    "read from their sources (authorize their containers) and written "
                    "into the store.",
        epilog="examples:\n"
               "  vchunkfs export ./oisst@v1 /data/oisst-v1.zarr --authorize "
               "file:///data/oisst/\n"
               "  vchunkfs export ./oisst /data/oisst-v2.zarr --presentation v2-decoded "
               "--array sst\n"
               "  vchunkfs export s3://archive/oisst@2024-09 s3://handoff/oisst.zarr "
               "--dest-region eu-west-1 --json\n\n"
               + textwrap.fill(
                   "A v3 export is byte-identical to the mount's v3 tree. Progress shows on "
                   f"a terminal. An export cut short leaves DEST/{MARKER} saying so, and no "
                   "root metadata (it does not open as Zarr); run the same command again to "
                   "finish it. A complete export is a plain Zarr store with nothing else in "
                   "it.", 79) + "\n\n"
               + textwrap.fill(
                   "An s3:// DEST takes its own --dest-* options (the repository's "
                   "--endpoint-url and --region are not used for it); credentials come from "
                   "the environment (AWS_ACCESS_KEY_ID ...).", 79) + "\n\n"
               + exit_statuses(
                   "2  DEST is not empty or holds another export; a bad option or URL",
                   "3  no such repository, version, array or bucket",
                   "4  a virtual chunk container not authorized",
                   "6  a source changed or is missing: cut short, resumable",
                   "8  storage failure: cut short, resumable"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", metavar="REPO[@VERSION]")
    p.add_argument("dest", metavar="DEST",
                   help="a new or empty local directory, or s3://bucket/prefix")
    p.add_argument("--presentation", default="v3", metavar="NAME",
                   help=f"one of {', '.join(NAMES)} (default v3)")
    p.add_argument("--array", metavar="PATH",
                   help="only this array or group (with the metadata of the groups above it)")
    g = p.add_argument_group("s3:// destination")
    g.add_argument("--dest-endpoint-url", metavar="URL",
                   help="S3-compatible endpoint of DEST (default $AWS_ENDPOINT_URL)")
    g.add_argument("--dest-region", metavar="REGION",
                   help="region of DEST's bucket (default $AWS_REGION)")
    g.add_argument("--dest-anonymous", action="store_true",
                   help="write to DEST without signing requests (a bucket open to anyone)")
    add_repo_options(p)
    add_json_option(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    dest = open_destination(args.dest, StorageOptions.from_env(
        endpoint_url=args.dest_endpoint_url, region=args.dest_region,
        anonymous=args.dest_anonymous or None))
    url, version = split_repo_version(args.repo)
    repo = open_repo(args, url)
    tty = sys.stderr.isatty() and not args.json
    start = time.monotonic()
    state = {"done": 0, "total": 0}

    def progress(done: int, total: int, written: int) -> None:
        state.update(done=done, total=total)
        if tty:
            rate = written / max(time.monotonic() - start, 1e-9) / 2**20
            print(f"\rexporting {done}/{total} files, {written / 2**20:,.1f} MiB "
                  f"({rate:,.1f} MiB/s)", end="", file=sys.stderr, flush=True)

    try:
        result = run(lambda: export(repo, version, dest, args.presentation, args.array,
                                    progress))
    except VchunkfsError as e:
        if tty:
            print(file=sys.stderr)
        if dest.marked:
            e.message = (f"export to {dest.url} stopped after {state['done']} of "
                         f"{state['total'] or '?'} files and is incomplete ({e.message}); "
                         "run the same command again to finish it")
        raise
    if tty:
        print(file=sys.stderr)
    if args.json:
        emit_json(result.to_json())
    else:
        print(f"exported {result.snapshot} ({result.presentation}) to {dest.url}: "
              f"{result.files} files, {result.bytes:,} bytes written"
              + (f", {result.skipped} already there" if result.skipped else ""))
    return 0
