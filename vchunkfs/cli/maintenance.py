"""``vchunkfs expire`` and ``vchunkfs gc``: keep a repository that grows every day in bounds."""

from __future__ import annotations

import argparse
import datetime
import re
import textwrap
from typing import TYPE_CHECKING

from vchunkfs.cli.common import (
    add_json_option,
    add_repo_options,
    emit_json,
    exit_statuses,
    open_repo,
    run,
)
from vchunkfs.errors import BackendError, UsageError
from vchunkfs.repository.maintenance import collect_garbage, expire

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
WHEN_HELP = ("a duration before now (30d, 12h, 90m, 2w, 0s) or a date or time "
             "(2024-09-01, 2024-09-01T12:00:00+02:00; UTC unless it says otherwise)")


def parse_cutoff(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """``30d`` (before now) or an ISO 8601 date or time, as an aware UTC datetime."""
    now = now or datetime.datetime.now(datetime.UTC)
    m = _DURATION.match(text)
    if m:
        return now - datetime.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--older-than {text!r}: use {WHEN_HELP}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC)


def register(sub: Sub) -> None:
    p = sub.add_parser(
        "expire", help="expire snapshots older than a date (branch and tag heads stay)",
        description=textwrap.fill(
                    "Drop the snapshots written before --older-than from the history of "
                    "every branch and tag (Icechunk's expire_snapshots). The head of each "
                    "branch and tag and the first snapshot stay, so every branch and tag "
                    "stays readable; what is expired can no longer be checked out, and "
                    "'vchunkfs gc' then deletes what only it used. Prints the snapshots "
                    "expired (or, with --dry-run, that would be): id, date, message.", 79),
        epilog="examples:\n"
               "  vchunkfs expire ./oisst --older-than 30d --dry-run\n"
               "  vchunkfs expire s3://bucket/oisst --older-than 2024-09-01 --json\n"
               "  vchunkfs expire ./oisst --older-than 30d && vchunkfs gc ./oisst\n\n"
               "A mount that shows an expired snapshot (under .vchunkfs/snapshots/, or in a "
               "file\nopened before) answers reads of what gc deleted with EIO, never with "
               "other\nbytes (docs/SEMANTICS.md).\n\n"
               + exit_statuses("2  a bad --older-than", "3  no repository there",
                               "7  a read-only (http) repository", "8  storage failure"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--older-than", required=True, metavar="DURATION|DATE", help=WHEN_HELP)
    p.add_argument("--dry-run", action="store_true",
                   help="only print what would be expired")
    add_repo_options(p)
    add_json_option(p)
    p.set_defaults(func=cmd_expire)

    p = sub.add_parser(
        "gc", help="delete the repository's objects that no snapshot uses any more",
        description=textwrap.fill(
                    "Delete the snapshots, manifests, native chunks and transaction logs "
                    "inside the repository that no branch or tag reaches any more and that "
                    "were written before --older-than (Icechunk's garbage_collect), and "
                    "print the bytes and objects freed (or, with --dry-run, that would be). "
                    "Virtual chunks' source files (the netCDF, HDF5, TIFF ... files that "
                    "virtual refs point into) are never touched: they are not part of the "
                    "repository.", 79),
        epilog="examples:\n"
               "  vchunkfs gc ./oisst --dry-run\n"
               "  vchunkfs gc s3://bucket/oisst --older-than 2d --json\n\n"
               "The default --older-than 1d spares objects that a writer has written but "
               "not yet\ncommitted; use a shorter one only when no writer is running.\n\n"
               + exit_statuses("2  a bad --older-than", "3  no repository there",
                               "7  a read-only (http) repository",
                               "8  storage failure, or objects left undeleted: run gc again"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--older-than", default="1d", metavar="DURATION|DATE",
                   help=WHEN_HELP + "; default 1d")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    add_repo_options(p)
    add_json_option(p)
    p.set_defaults(func=cmd_gc)


def cmd_expire(args: argparse.Namespace) -> int:
    cutoff = parse_cutoff(args.older_than)
    repo = open_repo(args, args.repo)
    result = run(lambda: expire(repo, cutoff, args.dry_run))
    if args.json:
        emit_json(result.to_json())
        return 0
    verb = "would expire" if args.dry_run else "expired"
    print(f"{verb} {len(result.expired)} snapshots written before "
          f"{cutoff.isoformat(timespec='seconds')}")
    for c in result.expired:
        print(f"  {c.id}  {c.written_at.isoformat(timespec='seconds')}  "
              f"{c.message.splitlines()[0] if c.message else ''}")
    if result.expired and not args.dry_run:
        print(f"their objects go with: vchunkfs gc {args.repo}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    cutoff = parse_cutoff(args.older_than)
    repo = open_repo(args, args.repo)
    r = run(lambda: collect_garbage(repo, cutoff, args.dry_run))
    if args.json:
        emit_json(r.to_json())
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {r.bytes:,} bytes in {r.objects} objects written before "
              f"{cutoff.isoformat(timespec='seconds')}: {r.snapshots} snapshots, "
              f"{r.manifests} manifests, {r.chunks} chunks, {r.transaction_logs} transaction "
              f"logs, {r.attributes} attribute files")
    if r.failed:
        raise BackendError(f"{r.failed} objects could not be deleted"
                           + (f"; skipped: {', '.join(r.skipped_phases)}"
                              if r.skipped_phases else "") + "; run gc again")
    return 0
