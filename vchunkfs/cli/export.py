"""``vchunkfs export``: one version as a plain Zarr store, with the chunk bytes copied."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vchunkfs.cli.common import (
    add_json_option,
    add_repo_options,
    emit_json,
    open_repo,
    run,
    split_repo_version,
)
from vchunkfs.errors import UsageError, VchunkfsError
from vchunkfs.export import MARKER, export
from vchunkfs.presentation.names import NAMES

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Sub) -> None:
    p = sub.add_parser(
        "export", help="write a version as a plain Zarr store (chunk bytes copied)",
        description="Copy what a mount shows for REPO@VERSION (in one presentation) into "
                    "DEST, a new local directory, for systems that read neither Icechunk "
                    "nor a mount. Virtual chunks are read from their sources (authorize "
                    "their containers) and written into the store.",
        epilog="examples:\n"
               "  vchunkfs export ./oisst@v1 /data/oisst-v1.zarr --authorize "
               "file:///data/oisst/\n"
               "  vchunkfs export ./oisst /data/oisst-v2.zarr --presentation v2-decoded "
               "--array sst\n\n"
               f"A v3 export is byte-identical to the mount's v3 tree. Progress shows on a "
               f"terminal.\nAn export cut short leaves DEST/{MARKER} saying so, and no root "
               "metadata (it does\nnot open as Zarr); run the same command again to finish "
               "it. A complete export\nis a plain Zarr store with nothing else in it.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", metavar="REPO[@VERSION]")
    p.add_argument("dest", metavar="DEST", help="a new or empty local directory")
    p.add_argument("--presentation", default="v3", metavar="NAME",
                   help=f"one of {', '.join(NAMES)} (default v3)")
    p.add_argument("--array", metavar="PATH",
                   help="only this array or group (with the metadata of the groups above it)")
    add_repo_options(p)
    add_json_option(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    if "://" in args.dest and not args.dest.startswith("file://"):
        raise UsageError(f"{args.dest}: export writes to a local directory only, for now")
    dest = Path(args.dest[len("file://"):] if args.dest.startswith("file://") else args.dest)
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
        if (dest / MARKER).exists():
            e.message = (f"export to {dest} stopped after {state['done']} of "
                         f"{state['total'] or '?'} files and is incomplete ({e.message}); "
                         "run the same command again to finish it")
        raise
    if tty:
        print(file=sys.stderr)
    if args.json:
        emit_json(result.to_json())
    else:
        print(f"exported {result.snapshot} ({result.presentation}) to {dest}: "
              f"{result.files} files, {result.bytes:,} bytes written"
              + (f", {result.skipped} already there" if result.skipped else ""))
    return 0
