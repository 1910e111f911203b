"""Read-only commands on a repository URL: log, branches, tags, ls, show, diff."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vchunkfs.cli.common import (
    add_json_option,
    add_repo_options,
    emit_json,
    open_repo,
    run,
    split_repo_version,
)
from vchunkfs.presentation.history import render_history
from vchunkfs.repository import Commit, Repo


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help,
                           epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_repo_options(p)
        add_json_option(p)
        return p

    p = command("log", "show the history of a branch, tag or snapshot, newest first",
                "vchunkfs log s3://bucket/oisst@main -n 5 --endpoint-url http://127.0.0.1:9000")
    p.add_argument("repo", metavar="REPO[@VERSION]")
    p.add_argument("-n", "--max-count", type=int, metavar="N", help="show at most N commits")
    p.set_defaults(func=cmd_log)

    p = command("branches", "list branches and the snapshot each points to",
                "vchunkfs branches ./oisst")
    p.add_argument("repo", metavar="REPO")
    p.set_defaults(func=cmd_refs, refs="branches")

    p = command("tags", "list tags and the snapshot each points to", "vchunkfs tags ./oisst")
    p.add_argument("repo", metavar="REPO")
    p.set_defaults(func=cmd_refs, refs="tags")

    p = command("ls", "list a directory of the Zarr hierarchy that a version presents",
                "vchunkfs ls ./oisst@v1 sst/c/0/0 -l")
    p.add_argument("repo", metavar="REPO[@VERSION]")
    p.add_argument("path", nargs="?", default="", help="path inside the hierarchy (default: root)")
    p.add_argument("-l", "--long", action="store_true", help="show sizes")
    p.set_defaults(func=cmd_ls)

    p = command("show", "show a group's or array's metadata and chunk statistics",
                "vchunkfs show ./oisst@main sst --authorize file:///data/oisst/")
    p.add_argument("repo", metavar="REPO[@VERSION]")
    p.add_argument("path", help="group or array path ('/' for the root group)")
    p.set_defaults(func=cmd_show)

    p = command("diff", "show what changed between two versions", "vchunkfs diff ./oisst v1 main")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("from_version", metavar="V1")
    p.add_argument("to_version", metavar="V2")
    p.set_defaults(func=cmd_diff)


def _open(args: argparse.Namespace) -> tuple[Repo, str | None]:
    url, version = split_repo_version(args.repo)
    return open_repo(args, url), version


def cmd_log(args: argparse.Namespace) -> int:
    repo, version = _open(args)

    async def collect() -> list[Commit]:
        return [c async for c in repo.history(version, limit=args.max_count)]

    commits = run(collect)
    if args.json:
        emit_json([c.to_json() for c in commits])
        return 0
    sys.stdout.write(render_history(commits))
    return 0


def cmd_refs(args: argparse.Namespace) -> int:
    repo = open_repo(args, args.repo)
    refs = run(repo.branches if args.refs == "branches" else repo.tags)
    if args.json:
        emit_json(refs)
    else:
        width = max((len(n) for n in refs), default=0)
        for name, sid in refs.items():
            print(f"{name:<{width}}  {sid}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    repo, version = _open(args)
    view = run(lambda: repo.view(version))
    entries = run(lambda: view.list_dir(args.path))
    if args.json:
        emit_json([{"name": e.name, "type": "dir" if e.is_dir else "file", "size": e.size}
                   for e in entries])
        return 0
    for e in entries:
        name = e.name + ("/" if e.is_dir else "")
        print(f"{'-' if e.is_dir else e.size:>12}  {name}" if args.long else name)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    repo, version = _open(args)
    view = run(lambda: repo.view(version))
    path = args.path.strip("/")
    node = view.node(path)
    meta = run(lambda: view.metadata_json(path))
    doc: dict[str, Any] = {"path": "/" + path, "node_type": node.kind,
                           "snapshot": view.snapshot_id, "metadata": meta}
    if node.kind == "group":
        doc["members"] = list(node.children)
    else:
        stats = run(lambda: view.chunk_stats(path, [c.url_prefix for c in repo.containers()]))
        doc["chunks"] = {
            "grid": stats.grid_chunks, "stored": stats.stored, "missing": stats.grid_chunks
            - stats.stored, "virtual": stats.virtual, "native": stats.native,
            "inline": stats.inline, "bytes": stats.bytes_total,
            "virtual_bytes": stats.bytes_virtual, "containers": stats.containers,
            "outside_containers": stats.outside_containers,
        }
    if args.json:
        emit_json(doc)
        return 0
    print(f"{node.kind} /{path}  (snapshot {view.snapshot_id})")
    if node.kind == "group":
        print("members: " + (", ".join(node.children) or "(none)"))
    else:
        grid = meta.get("chunk_grid", {}).get("configuration", {})
        print(f"shape:       {tuple(meta.get('shape', ()))}")
        print(f"chunks:      {tuple(grid.get('chunk_shape', ()))}")
        print(f"dtype:       {meta.get('data_type')}")
        print(f"fill_value:  {meta.get('fill_value')}")
        if meta.get("dimension_names"):
            print(f"dimensions:  {tuple(meta['dimension_names'])}")
        print("codecs:      " + " -> ".join(c.get("name", "?") for c in meta.get("codecs", [])))
        c = doc["chunks"]
        print(f"chunk refs:  {c['stored']} stored of {c['grid']} in the grid "
              f"({c['virtual']} virtual, {c['native']} native, {c['inline']} inline)")
        print(f"bytes:       {c['bytes']} ({c['virtual_bytes']} in virtual chunks)")
        for prefix, n in sorted(c["containers"].items()):
            print(f"container:   {prefix}  ({n} chunks)")
        if c["outside_containers"]:
            print(f"warning:     {c['outside_containers']} virtual chunks lie outside every "
                  "container of the config and cannot be read")
    attrs = meta.get("attributes") or {}
    if attrs:
        print("attributes:")
        for k, v in attrs.items():
            print(f"  {k}: {json.dumps(v, default=str)}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    repo = open_repo(args, args.repo)
    d = run(lambda: repo.diff(args.from_version, args.to_version))
    if args.json:
        emit_json(d.__dict__)
        return 0
    if d.empty:
        print("no changes")
    for label, items in (("new group", d.new_groups), ("new array", d.new_arrays),
                         ("deleted group", d.deleted_groups), ("deleted array", d.deleted_arrays),
                         ("updated group", d.updated_groups), ("updated array", d.updated_arrays)):
        for item in items:
            print(f"{label:<14} {item}")
    for array, n in d.updated_chunks.items():
        print(f"{'chunks':<14} {array}: {n} changed")
    return 0
