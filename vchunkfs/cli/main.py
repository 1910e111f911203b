"""The ``vchunkfs`` command: entry point and dispatch."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from vchunkfs import __version__
from vchunkfs.bridge import close_shared_bridge
from vchunkfs.cli import ctl, export, ingest, inspect, maintenance, mount, refs
from vchunkfs.cli.common import (
    EXIT_CODES,
    add_json_option,
    add_subcommands,
    report_error,
    set_global_defaults,
)
from vchunkfs.errors import VchunkfsError
from vchunkfs.repository.logs import quiet_engine_logs

DESCRIPTION = """\
vchunkfs serves Icechunk repositories of virtual Zarr datasets as plain
Zarr directories, and inspects and changes them from the shell.

A repository is named by a URL: a path, file://, s3://bucket/prefix,
gs://bucket/prefix, az://account/container/prefix, http(s):// (read-only).
REPO@VERSION picks a branch, tag, snapshot id or unique id prefix
(default: main).

Options go before or after operands, at any level: `vchunkfs ctl /mnt/oisst
status --json` and `vchunkfs --json ctl /mnt/oisst status` are the same."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vchunkfs", description=DESCRIPTION, epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vchunkfs {__version__}")
    add_json_option(parser)
    set_global_defaults(parser)
    sub = add_subcommands(parser, "command")
    inspect.register(sub)
    refs.register(sub)
    maintenance.register(sub)
    export.register(sub)
    mount.register(sub)
    ctl.register(sub)
    ingest.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_engine_logs()
    try:
        status: int = args.func(args)
    except VchunkfsError as e:
        return report_error(e, getattr(args, "json", False))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        # Stop the asyncio thread before the interpreter tears down the
        # icechunk objects it may still reference (a race that can crash).
        close_shared_bridge()
    return status


def run() -> NoReturn:
    """The console entry point: :func:`main`, then exit without tearing the interpreter down.

    Everything a command does is finished when ``main`` returns (commits are durable,
    the bridge is closed); what remains is the interpreter's teardown of icechunk's
    and zarr's objects, which takes 0.2-0.3 s and, with icechunk 2.3, sometimes
    crashes (see docs/benchmarks.md). So flush what is buffered and leave.
    """
    status = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: the reader is gone
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
