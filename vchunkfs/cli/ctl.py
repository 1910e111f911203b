"""``vchunkfs ctl MOUNTPOINT ...`` (changes through a mount's control socket),
``vchunkfs init`` and ``vchunkfs config`` (directly on a repository URL)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from vchunkfs.cli.common import (
    add_json_option,
    add_repo_options,
    add_subcommands,
    emit_json,
    open_repo,
    run,
    storage_options,
)
from vchunkfs.control import Client
from vchunkfs.control.protocol import MAX_KEYS_REFS
from vchunkfs.errors import UsageError
from vchunkfs.presentation.history import render_history
from vchunkfs.repository import Authorization, Commit, Repo, parse_repo_url
from vchunkfs.repository.containers import make_container

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]



def _parser(sub: Sub, name: str, help: str, example: str, *, ctl: bool = False
            ) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if ctl:
        _ctl_options(p)
    return p


def _ctl_options(p: argparse.ArgumentParser) -> None:
    """``ctl``'s own options, taken before or after the subcommand and its operands."""
    p.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                   help="the control socket (default: found through the mount's "
                        "user.vchunkfs.control_socket attribute)")
    add_json_option(p)


def register(sub: Sub) -> None:
    ctl = _parser(sub, "ctl", "change a mounted repository through its control socket",
                  "vchunkfs ctl /mnt/oisst status")
    ctl.add_argument("mountpoint", metavar="MOUNTPOINT")
    _ctl_options(ctl)
    cs = add_subcommands(ctl, "ctl_command")

    p = _parser(cs, "status", "show the mount's version, staged changes and cache counters",
                "vchunkfs ctl /mnt/oisst status --json", ctl=True)
    p.set_defaults(func=ctl_status)

    p = _parser(cs, "set-ref", "point one chunk key at a byte range of a source file",
                "vchunkfs ctl /mnt/oisst set-ref sst/c/31/0/0/0 "
                "file:///data/oisst/day32.nc 47926 380848", ctl=True)
    p.add_argument("key")
    p.add_argument("location")
    p.add_argument("offset", type=int)
    p.add_argument("length", type=int)
    p.add_argument("--etag", help="changed-source check: the source's ETag")
    p.add_argument("--last-modified", type=float, metavar="SECONDS",
                   help="changed-source check: the source's mtime (POSIX seconds); "
                        "default for file:// sources: the file's mtime now")
    p.add_argument("--branch")
    p.set_defaults(func=ctl_set_ref)

    p = _parser(cs, "import-refs", "stage many virtual refs from a file: CSV, Parquet or "
                "msgpack with columns key, location, offset, length (and optional checksum)",
                "vchunkfs ctl /mnt/oisst import-refs refs.csv && vchunkfs ctl /mnt/oisst "
                "commit -m 'refs from a file'", ctl=True)
    p.add_argument("file", help="a .csv, .parquet or .msgpack file ('-' reads CSV from stdin)")
    p.add_argument("--batch", type=int, default=50_000,
                   help=f"refs per request (at most {MAX_KEYS_REFS:,})")
    p.add_argument("--branch")
    p.set_defaults(func=ctl_import_refs)

    p = _parser(cs, "set-meta", "create or replace a group's or array's zarr.json",
                "vchunkfs ctl /mnt/oisst set-meta sst sst-zarr.json", ctl=True)
    p.add_argument("path", help="node path ('' or / for the root group)")
    p.add_argument("file", help="a Zarr v3 zarr.json document ('-' for stdin)")
    p.add_argument("--branch")
    p.set_defaults(func=ctl_set_meta)

    p = _parser(cs, "set-chunk", "store native chunk bytes in the repository",
                "vchunkfs ctl /mnt/oisst set-chunk time/c/0 time.bin", ctl=True)
    p.add_argument("key")
    p.add_argument("file", help="the chunk's bytes ('-' for stdin)")
    p.add_argument("--branch")
    p.set_defaults(func=ctl_set_chunk)

    p = _parser(cs, "delete", "delete a chunk, or a group or array with all below it",
                "vchunkfs ctl /mnt/oisst delete sst/c/31/0/0/0", ctl=True)
    p.add_argument("key")
    p.add_argument("--branch")
    p.set_defaults(func=ctl_delete)

    p = _parser(cs, "changes", "show what is staged (also readable under .vchunkfs/staged/)",
                "vchunkfs ctl /mnt/oisst changes", ctl=True)
    p.add_argument("--branch")
    p.set_defaults(func=ctl_changes)

    p = _parser(cs, "commit", "commit the staged changes; prints the new snapshot id",
                "vchunkfs ctl /mnt/oisst commit -m 'append 2024-09-01'", ctl=True)
    p.add_argument("-m", "--message", required=True)
    p.add_argument("--meta", metavar="JSON", help="commit metadata, a JSON object")
    p.add_argument("--branch")
    p.set_defaults(func=ctl_commit)

    p = _parser(cs, "discard", "drop the staged changes", "vchunkfs ctl /mnt/oisst discard",
                ctl=True)
    p.add_argument("--branch")
    p.set_defaults(func=ctl_discard)

    p = _parser(cs, "branch", "create, reset or delete a branch",
                "vchunkfs ctl /mnt/oisst branch create experiment --from v1", ctl=True)
    p.add_argument("action", choices=["create", "reset", "delete", "list"])
    p.add_argument("name", nargs="?")
    p.add_argument("--from", dest="source", metavar="VERSION", help="create: start point")
    p.add_argument("--to", metavar="VERSION", help="reset: the new head")
    p.set_defaults(func=ctl_branch)

    p = _parser(cs, "tag", "create or delete a tag", "vchunkfs ctl /mnt/oisst tag create v2",
                ctl=True)
    p.add_argument("action", choices=["create", "delete", "list"])
    p.add_argument("name", nargs="?")
    p.add_argument("--version", dest="tag_version", help="create: what to tag (default main)")
    p.set_defaults(func=ctl_tag)

    p = _parser(cs, "log", "history of a version", "vchunkfs ctl /mnt/oisst log -n 3", ctl=True)
    p.add_argument("version", nargs="?")
    p.add_argument("-n", "--max-count", type=int)
    p.set_defaults(func=ctl_log)

    p = _parser(cs, "diff", "what changed between two versions",
                "vchunkfs ctl /mnt/oisst diff v1 main", ctl=True)
    p.add_argument("from_version", metavar="V1")
    p.add_argument("to_version", metavar="V2")
    p.set_defaults(func=ctl_diff)

    p = _parser(cs, "containers", "list, add or remove virtual chunk containers",
                "vchunkfs ctl /mnt/oisst containers add s3://noaa/oisst/ --region us-east-1",
                ctl=True)
    _container_args(p)
    p.set_defaults(func=ctl_containers)

    p = _parser(sub, "init", "create an Icechunk repository, with virtual chunk containers",
                "vchunkfs init ./oisst --container file:///data/oisst/")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--container", action="append", default=[], metavar="PREFIX",
                   help="a virtual chunk container url prefix ending in / (repeatable); "
                        "for s3 prefixes --container-region and --container-endpoint apply")
    p.add_argument("--container-region")
    p.add_argument("--container-endpoint", metavar="URL")
    add_repo_options(p)
    add_json_option(p)
    p.set_defaults(func=cmd_init)

    p = _parser(sub, "config", "list, add or remove a repository's virtual chunk containers",
                "vchunkfs config ./oisst containers add file:///data/more/")
    p.add_argument("repo", metavar="REPO")
    p.add_argument("what", choices=["containers"])
    _container_args(p)
    add_repo_options(p)
    add_json_option(p)
    p.set_defaults(func=cmd_config)


def _container_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "add", "remove"], nargs="?", default="list")
    p.add_argument("prefix", nargs="?", help="url prefix, ending in /")
    p.add_argument("--name", help="for vcc://NAME/... relative refs")
    p.add_argument("--container-region", dest="c_region", metavar="REGION")
    p.add_argument("--container-endpoint", dest="c_endpoint", metavar="URL")
    p.add_argument("--container-anonymous", dest="c_anonymous", action="store_true")
    p.add_argument("--account", help="azure storage account")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="store option for gcs, azure or http containers (repeatable)")


def _container_request(args: argparse.Namespace) -> dict[str, Any]:
    if not args.prefix:
        raise UsageError("a container prefix is required")
    req: dict[str, Any] = {"url_prefix": args.prefix}
    for key, value in (("name", args.name), ("region", args.c_region),
                       ("endpoint_url", args.c_endpoint), ("account", args.account)):
        if value:
            req[key] = value
    if args.c_anonymous:
        req["anonymous"] = True
    opts = dict(o.split("=", 1) for o in args.option if "=" in o)
    if opts:
        req["options"] = opts
    return req


# -- ctl commands -------------------------------------------------------------


def _warn(message: str) -> None:
    print(f"vchunkfs: warning: {message}", file=sys.stderr)


def _client(args: argparse.Namespace) -> Client:
    if args.socket:
        return Client(args.socket, on_warning=_warn)
    return Client.for_mountpoint(args.mountpoint, on_warning=_warn)


def _print(args: argparse.Namespace, result: Any, text: str | None = None) -> int:
    if args.json:
        emit_json(result)
    elif text is not None:
        print(text)
    return 0


def ctl_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        s = c.status()
    root = s["root"]
    lines = [f"repository: {s['repository']}", f"mountpoint: {s['mountpoint']}",
             f"root:       {root['kind']} {root['name']} at {root['snapshot']}",
             f"daemon:     pid {s['pid']}, protocol {s['protocol']}"]
    for branch, st in s["staged"].items():
        chunks = st.get("chunks_changed")
        lines.append(f"staged:     {branch}: {st['nodes_changed']:,} node changes"
                     + (f", {chunks:,} chunk writes" if chunks is not None else "")
                     + f" on {st['base']} (see .vchunkfs/staged/{branch}/)")
    lines += _read_counters(s.get("stats") or {})
    return _print(args, s, "\n".join(lines))


def _read_counters(st: dict[str, Any]) -> list[str]:
    """The status lines that say why reads are slow (docs/SEMANTICS.md)."""
    if "fetches" not in st:
        return []  # a daemon of an older version
    mb = 1e6
    return [f"reads:      {st['cache_hits']:,} from the cache, {st['fetches']:,} fetches "
            f"({st['fetched_bytes'] / mb:,.1f} MB), {st['in_flight']} in flight; reads waited "
            f"{st['read_wait_seconds']:,.1f} s for bytes",
            f"prefetch:   {st['prefetched']:,} made, {st['prefetch_used']:,} read, "
            f"{st['prefetch_wasted']:,} wasted ({st['prefetch_wasted_bytes'] / mb:,.1f} MB)"]


def ctl_set_ref(args: argparse.Namespace) -> int:
    checksum: str | float | None = args.etag or args.last_modified
    if checksum is None and args.location.startswith("file://"):
        try:
            checksum = float(int(Path(args.location[7:]).stat().st_mtime) + 1)
        except OSError as e:
            raise UsageError(f"{args.location}: {e.strerror}") from e
    with _client(args) as c:
        c.set_virtual_ref(args.key, args.location, args.offset, args.length, checksum,
                          args.branch)
    return _print(args, {"staged": args.key}, f"staged {args.key}")


def ctl_import_refs(args: argparse.Namespace) -> int:
    if not 1 <= args.batch <= MAX_KEYS_REFS:
        raise UsageError(f"--batch must be 1 to {MAX_KEYS_REFS:,} (refs per request)")
    rows = _read_refs(args.file)
    start = time.monotonic()
    with _client(args) as c:
        def progress(done: int) -> None:
            if sys.stderr.isatty() and not args.json:
                rate = done / max(time.monotonic() - start, 1e-9)
                print(f"\r{done:,} refs staged ({rate:,.0f}/s)", end="",
                      file=sys.stderr, flush=True)

        total = c.set_virtual_refs(rows, args.branch, batch_refs=args.batch, progress=progress)
    if sys.stderr.isatty() and not args.json:
        print(file=sys.stderr)
    return _print(args, {"staged_refs": total},
                  f"staged {total:,} refs in {time.monotonic() - start:.1f} s; "
                  "commit with: vchunkfs ctl MOUNTPOINT commit -m MESSAGE")


def _read_refs(file: str) -> Iterator[dict[str, Any]]:
    """Rows of key, location, offset, length (and optional checksum) from a file."""
    def row(raw: dict[str, Any], where: str) -> dict[str, Any]:
        try:
            out = {"key": str(raw["key"]), "location": str(raw["location"]),
                   "offset": int(raw["offset"]), "length": int(raw["length"])}
        except (KeyError, ValueError, TypeError) as e:
            raise UsageError(f"{where}: needs key, location, offset, length ({e})") from None
        checksum = raw.get("checksum")
        if checksum not in (None, ""):
            out["checksum"] = checksum if not str(checksum).replace(".", "").isdigit() \
                else float(checksum)
        return out

    if file == "-" or file.endswith(".csv"):
        stream = sys.stdin if file == "-" else open(file, newline="")  # noqa: SIM115
        with stream:
            yield from _csv_refs(stream, file, row)
    elif file.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise UsageError("reading Parquet needs pyarrow (pip install pyarrow)") from e
        for batch in pq.ParquetFile(file).iter_batches(batch_size=65536):
            for i, raw in enumerate(batch.to_pylist()):
                yield row(raw, f"{file} row {i}")
    elif file.endswith((".msgpack", ".mpk")):
        with open(file, "rb") as f:
            for i, raw in enumerate(msgpack.Unpacker(f, raw=False)):
                if not isinstance(raw, dict):
                    raise UsageError(f"{file}: item {i} is not a map")
                yield row(raw, f"{file} item {i}")
    else:
        raise UsageError(f"{file}: unknown format; use .csv, .parquet or .msgpack")


def _csv_refs(stream: Any, file: str,
              row: Callable[[dict[str, Any], str], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """CSV rows as refs: plain rows by column index (about twice as fast as DictReader
    on a million rows); any row the fast path does not take goes through ``row``."""
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        return
    col = {name: i for i, name in enumerate(header)}
    missing = [c for c in ("key", "location", "offset", "length") if c not in col]
    if missing:
        raise UsageError(f"{file}: the header has no {', '.join(missing)} column "
                         "(needs key, location, offset, length; checksum optional)")
    k, loc, off, ln = col["key"], col["location"], col["offset"], col["length"]
    ck = col.get("checksum")
    width = len(header)
    for i, rec in enumerate(reader, start=2):
        if len(rec) == width and (ck is None or not rec[ck]):
            try:
                yield {"key": rec[k], "location": rec[loc], "offset": int(rec[off]),
                       "length": int(rec[ln])}
                continue
            except ValueError:
                pass  # the general path says what is wrong
        yield row(dict(zip(header, rec, strict=False)), f"{file}:{i}")


def _read_input(file: str) -> bytes:
    return sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()


def ctl_set_meta(args: argparse.Namespace) -> int:
    try:
        doc = json.loads(_read_input(args.file))
    except (OSError, ValueError) as e:
        raise UsageError(f"{args.file}: {e}") from e
    with _client(args) as c:
        c.set_metadata(args.path.strip("/"), doc, args.branch)
    return _print(args, {"staged": args.path}, f"staged metadata of /{args.path.strip('/')}")


def ctl_set_chunk(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.set_chunk(args.key, _read_input(args.file), args.branch)
    return _print(args, {"staged": args.key}, f"staged {args.key}")


def ctl_delete(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.delete(args.key, args.branch)
    return _print(args, {"deleted": args.key}, f"staged deletion of {args.key}")


def ctl_changes(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.call("changes", **({"branch": args.branch} if args.branch else {}))
    if not r["changed"]:
        return _print(args, r, f"no staged changes on {r['branch']}")
    text = [f"staged on {r['branch']} (base {r['base']}):"]
    text += [f"  {kind:<8} /{path}" for path, kind in r["nodes"].items()]
    text.append(r["summary"])
    return _print(args, r, "\n".join(text))


def ctl_commit(args: argparse.Namespace) -> int:
    try:
        meta = json.loads(args.meta) if args.meta else None
    except ValueError as e:
        raise UsageError(f"--meta is not JSON: {e}") from None
    if meta is not None and not isinstance(meta, dict):
        raise UsageError("--meta must be a JSON object")
    with _client(args) as c:
        sid = c.commit(args.message, meta, args.branch)
    return _print(args, {"snapshot": sid}, sid)


def ctl_discard(args: argparse.Namespace) -> int:
    with _client(args) as c:
        had = c.discard(args.branch)
    return _print(args, {"discarded": had}, "discarded" if had else "nothing to discard")


def ctl_branch(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.action == "list":
            refs = c.call("branches")
            return _print(args, refs, "\n".join(f"{n}  {s}" for n, s in refs.items()))
        if not args.name:
            raise UsageError(f"branch {args.action} needs a NAME")
        if args.action == "create":
            r = c.call("create_branch", name=args.name,
                       **({"from": args.source} if args.source else {}))
        elif args.action == "reset":
            if not args.to:
                raise UsageError("branch reset needs --to VERSION")
            r = c.call("reset_branch", name=args.name, to=args.to)
        else:
            r = c.call("delete_branch", name=args.name)
    return _print(args, r, f"branch {args.name}: {args.action}"
                  + (f" at {r['snapshot']}" if r else ""))


def ctl_tag(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.action == "list":
            refs = c.call("tags")
            return _print(args, refs, "\n".join(f"{n}  {s}" for n, s in refs.items()))
        if not args.name:
            raise UsageError(f"tag {args.action} needs a NAME")
        if args.action == "create":
            r = c.call("create_tag", name=args.name,
                       **({"version": args.tag_version} if args.tag_version else {}))
        else:
            r = c.call("delete_tag", name=args.name)
    return _print(args, r, f"tag {args.name}: {args.action}"
                  + (f" at {r['snapshot']}" if r else ""))


def ctl_log(args: argparse.Namespace) -> int:
    with _client(args) as c:
        commits = c.call("history", **({"version": args.version} if args.version else {}),
                         **({"limit": args.max_count} if args.max_count else {}))
    import datetime

    objs = [Commit(d["id"], d["parent_id"], datetime.datetime.fromisoformat(d["written_at"]),
                   d["message"], d["metadata"]) for d in commits]
    return _print(args, commits, render_history(objs).rstrip("\n"))


def ctl_diff(args: argparse.Namespace) -> int:
    with _client(args) as c:
        d = c.call("diff", **{"from": args.from_version, "to": args.to_version})
    lines = [f"{k:<15} {v}" for k, vs in d.items() if k != "updated_chunks" for v in vs]
    lines += [f"chunks          {a}: {n} changed" for a, n in d["updated_chunks"].items()]
    return _print(args, d, "\n".join(lines) or "no changes")


def ctl_containers(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.action == "add":
            c.call("set_container", **_container_request(args))
        elif args.action == "remove":
            c.call("remove_container", url_prefix=args.prefix or "")
        listing = c.call("containers")
    return _print(args, listing, _containers_text(listing))


def _containers_text(listing: list[dict[str, Any]]) -> str:
    if not listing:
        return "no virtual chunk containers"
    return "\n".join(f"{c['url_prefix']}" + (f"  (name {c['name']})" if c.get("name") else "")
                     + ("" if c.get("authorized", True) else "  [not authorized by this mount]")
                     for c in listing)


# -- init and config (direct on a repository URL) -----------------------------


def cmd_init(args: argparse.Namespace) -> int:
    containers = [make_container(p, region=args.container_region,
                                 endpoint_url=args.container_endpoint) for p in args.container]
    location = parse_repo_url(args.repo)
    auth = Authorization.load(args.authorize, args.auth_file)
    repo = run(lambda: Repo.create(location, containers=containers, authorization=auth,
                                   storage_options=storage_options(args)))
    head = run(lambda: repo.resolve("main"))
    return _print(args, {"repository": location.url, "snapshot": head.snapshot_id,
                         "containers": [c.url_prefix for c in containers]},
                  f"created {location.url} (main at {head.snapshot_id})"
                  + "".join(f"\ncontainer {c.url_prefix}" for c in containers))


def cmd_config(args: argparse.Namespace) -> int:
    repo = open_repo(args, args.repo)
    if args.action == "add":
        req = _container_request(args)
        container = make_container(
            req.pop("url_prefix"), anonymous=bool(req.pop("anonymous", False)), **req)
        run(lambda: repo.set_container(container))
    elif args.action == "remove":
        prefix = args.prefix or ""
        run(lambda: repo.remove_container(prefix))
    trusted = set(repo.authorization.prefixes)
    listing = [{"url_prefix": c.url_prefix, "name": c.name, "store": c.store,
                "authorized": c.url_prefix in trusted} for c in repo.containers()]
    for item in listing:
        item.pop("authorized")  # a config listing is not about this reader
    return _print(args, listing, _containers_text(listing))
