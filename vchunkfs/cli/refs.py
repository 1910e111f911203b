"""``vchunkfs branch`` and ``vchunkfs tag``: change refs directly on a repository URL.

The operations are the control socket's (:mod:`vchunkfs.repository.writer`), with
the same checks and the same local commit lock; a mount of the repository shows
the change at its next branch poll.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from vchunkfs.cli.common import (
    add_json_option,
    add_repo_options,
    add_subcommands,
    emit_json,
    exit_statuses,
    open_repo,
    run,
)
from vchunkfs.repository import writer

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _command(sub: Sub, name: str, help: str, epilog: str, statuses: str
             ) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, epilog=f"{epilog}\n\n{statuses}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo_options(p)
    add_json_option(p)
    return p


def register(sub: Sub) -> None:
    branch_statuses = exit_statuses("2  a bad name, or the branch exists; main cannot be deleted",
                             "3  no such repository, branch or version",
                             "5  the branch moved meanwhile (reset): look and try again",
                             "7  a read-only (http) repository", "8  storage failure")
    tag_statuses = exit_statuses("2  a bad name, or the tag exists (tags never move)",
                             "3  no such repository, tag or version",
                             "7  a read-only (http) repository", "8  storage failure")
    p = _command(sub, "branch", "list, create, delete or reset branches of a repository",
                 "examples:\n"
                 "  vchunkfs branch ./oisst                          # list\n"
                 "  vchunkfs branch ./oisst create reprocess v1      # a branch at tag v1\n"
                 "  vchunkfs branch s3://bucket/oisst reset main 7M2Q --json\n"
                 "  vchunkfs branch ./oisst delete reprocess\n\n"
                 "Works on the repository itself (no mount needed); a mount of it shows the "
                 "change\nwithin its poll_interval. 'reset' moves a branch only from the head "
                 "it saw\n(exit 5 if another writer moved it meanwhile); main cannot be deleted.",
                 branch_statuses)
    p.add_argument("repo", metavar="REPO")
    actions = add_subcommands(p, "ref_action", required=False)
    a = _command(actions, "create", "create branch NAME at FROM (default main)",
                 "example:\n  vchunkfs branch ./oisst create reprocess v1", branch_statuses)
    a.add_argument("name", metavar="NAME")
    a.add_argument("source", metavar="FROM", nargs="?",
                   help="a branch, tag, snapshot id or unique id prefix")
    a = _command(actions, "delete", "delete branch NAME (not main)",
                 "example:\n  vchunkfs branch ./oisst delete reprocess", branch_statuses)
    a.add_argument("name", metavar="NAME")
    a = _command(actions, "reset", "point branch NAME at version TO",
                 "example:\n  vchunkfs branch ./oisst reset main v1", branch_statuses)
    a.add_argument("name", metavar="NAME")
    a.add_argument("target", metavar="TO", help="a branch, tag, snapshot id or unique id prefix")
    p.set_defaults(func=cmd_branch)

    p = _command(sub, "tag", "list, create or delete tags of a repository",
                 "examples:\n"
                 "  vchunkfs tag ./oisst                      # list\n"
                 "  vchunkfs tag ./oisst create 2024-09 main  # tag main's head\n"
                 "  vchunkfs tag ./oisst delete 2024-09 --json\n\n"
                 "Tags never move: to re-point one, delete it and create it again.",
                 tag_statuses)
    p.add_argument("repo", metavar="REPO")
    actions = add_subcommands(p, "ref_action", required=False)
    a = _command(actions, "create", "create tag NAME at FROM (default main)",
                 "example:\n  vchunkfs tag ./oisst create 2024-09 main", tag_statuses)
    a.add_argument("name", metavar="NAME")
    a.add_argument("source", metavar="FROM", nargs="?",
                   help="a branch, tag, snapshot id or unique id prefix")
    a = _command(actions, "delete", "delete tag NAME",
                 "example:\n  vchunkfs tag ./oisst delete 2024-09", tag_statuses)
    a.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_tag)


def _list(args: argparse.Namespace, refs: dict[str, str]) -> int:
    if args.json:
        emit_json(refs)
    else:
        width = max((len(n) for n in refs), default=0)
        for name, sid in refs.items():
            print(f"{name:<{width}}  {sid}")
    return 0


def _done(args: argparse.Namespace, doc: dict[str, Any], text: str) -> int:
    if args.json:
        emit_json(doc)
    else:
        print(text)
    return 0


def cmd_branch(args: argparse.Namespace) -> int:
    repo = open_repo(args, args.repo)
    action = args.ref_action
    if action is None:
        return _list(args, run(repo.branches))
    name = args.name
    if action == "create":
        sid = run(lambda: writer.create_branch(repo, name, args.source))
        return _done(args, {"branch": name, "action": "create", "snapshot": sid},
                     f"created branch {name} at {sid}")
    if action == "reset":
        before = run(repo.branches).get(name)
        sid = run(lambda: writer.reset_branch(repo, name, args.target))
        return _done(args, {"branch": name, "action": "reset", "snapshot": sid,
                            "previous": before}, f"branch {name}: {before} -> {sid}")
    before = run(repo.branches).get(name)
    run(lambda: writer.delete_branch(repo, name))
    return _done(args, {"branch": name, "action": "delete", "snapshot": before},
                 f"deleted branch {name} (was at {before})")


def cmd_tag(args: argparse.Namespace) -> int:
    repo = open_repo(args, args.repo)
    action = args.ref_action
    if action is None:
        return _list(args, run(repo.tags))
    name = args.name
    if action == "create":
        sid = run(lambda: writer.create_tag(repo, name, args.source))
        return _done(args, {"tag": name, "action": "create", "snapshot": sid},
                     f"created tag {name} at {sid}")
    before = run(repo.tags).get(name)
    run(lambda: writer.delete_tag(repo, name))
    return _done(args, {"tag": name, "action": "delete", "snapshot": before},
                 f"deleted tag {name} (was at {before})")
