"""Operating repositories from the shell: vchunkfs branch / tag (and, below, expire, gc)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import zarr
from commands import cli
from datasets import build_repo
from mounting import mounted
from servers import moto_s3_server

pytestmark = pytest.mark.timeout(300)


def jcli(*args: str) -> dict:
    return json.loads(cli(*args, "--json").stdout)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


# -- branch and tag -----------------------------------------------------------


def check_branch_and_tag(url: str, snapshots: dict[str, str], *opts: str) -> None:
    """Every branch and tag action on ``url`` (the tests/datasets.py history), output and
    exit statuses, in text and JSON, with options before and after the operands."""
    v1, day1, dev = snapshots["v1"], snapshots["day1"], snapshots["dev"]
    assert jcli("branch", url, *opts) == {"dev": dev, "main": day1}
    assert jcli("branch", *opts, url, "create", "exp", "v1") == {
        "branch": "exp", "action": "create", "snapshot": v1}
    out = cli("branch", url, "create", "exp2", *opts).stdout  # from main by default
    assert out.strip() == f"created branch exp2 at {day1}"
    assert jcli("branch", url, "reset", "exp", dev[:8], *opts) == {
        "branch": "exp", "action": "reset", "snapshot": dev, "previous": v1}
    assert jcli("branch", url, *opts)["exp"] == dev
    assert jcli("branch", url, "delete", "exp2", *opts)["snapshot"] == day1
    assert jcli("tag", url, "create", "t-dev", "exp", *opts)["snapshot"] == dev
    assert jcli("tag", url, *opts) == {"t-dev": dev, "v1": v1}
    for args, status, code, message in [
        (["branch", url, "create", "exp"], 2, "usage", "already exists"),
        (["branch", url, "delete", "main"], 2, "usage", "main branch cannot be deleted"),
        (["branch", url, "delete", "nope"], 3, "not_found", "no branch 'nope'"),
        (["branch", url, "reset", "nope", "main"], 3, "not_found", "no branch 'nope'"),
        (["branch", url, "reset", "exp", "nope"], 3, "version_not_found", "'nope'"),
        (["branch", url, "create", "a/b"], 2, "usage", "invalid branch or tag name"),
        (["tag", url, "create", "v1", "main"], 2, "usage", "tags never move"),
        (["tag", url, "delete", "nope"], 3, "not_found", "no tag 'nope'"),
    ]:
        r = cli(*args, *opts, "--json", check=False)
        assert r.returncode == status, (args, r.stderr)
        assert json.loads(r.stdout)["error"]["code"] == code and message in r.stderr, r.stderr
    assert jcli("tag", url, "delete", "t-dev", *opts) == {
        "tag": "t-dev", "action": "delete", "snapshot": dev}
    assert jcli("branch", url, "delete", "exp", *opts)["snapshot"] == dev
    assert jcli("branch", url, *opts) == {"dev": dev, "main": day1}
    assert jcli("tag", url, *opts) == {"v1": v1}


def test_branch_and_tag_local(local_repo, tmp_path):
    path, built = local_repo
    shutil.copytree(path, tmp_path / "repo")
    check_branch_and_tag(str(tmp_path / "repo"), built.snapshots)


def test_help_of_every_ops_command():
    """Each command and subcommand of issue 14 has an example, --json and its exit
    statuses in its --help (formatted in process; one subprocess as a user types it)."""
    from vchunkfs.cli.main import build_parser

    def parser(*words: str):
        p = build_parser()
        for w in words:
            sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
            p = sub.choices[w]
        return p

    for words in [("branch",), ("branch", "create"), ("branch", "delete"),
                  ("branch", "reset"), ("tag",), ("tag", "create"), ("tag", "delete"),
                  ("expire",), ("gc",), ("export",)]:
        text = parser(*words).format_help()
        assert "example" in text and "--json" in text, words
        assert "exit status:\n  0  done\n" in text and "8  storage failure" in text, words
    assert "--dry-run" in parser("expire").format_help()
    assert "s3://bucket/prefix" in parser("export").format_help()
    assert "--dest-endpoint-url" in parser("export").format_help()
    r = cli("branch", "./r", "reset", "--help")
    assert r.stdout.startswith("usage: vchunkfs branch REPO reset")
    assert "exit status:" in r.stdout and "vchunkfs branch ./oisst reset main v1" in r.stdout


@pytest.fixture(scope="module")
def s3() -> Iterator:
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(s3, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    monkeypatch.setenv("AWS_REGION", s3.region)
    return s3


def test_branch_and_tag_s3(s3_env, tmp_path):
    s3 = s3_env
    s3.create_bucket("refs")
    storage = ic.s3_storage(bucket="refs", prefix="oisst", region=s3.region,
                            endpoint_url=s3.endpoint_url, allow_http=True,
                            force_path_style=True, from_env=True)
    built = build_repo(storage, tmp_path / "src")
    check_branch_and_tag("s3://refs/oisst", built.snapshots, "--endpoint-url", s3.endpoint_url)


def test_a_mount_shows_ref_changes_within_its_poll_interval(tmp_path):
    built = build_repo(ic.local_filesystem_storage(str(tmp_path / "repo")), tmp_path / "src")
    repo = str(tmp_path / "repo")
    with mounted(repo, tmp_path / "m", f"authorize={built.container_prefix}",
                 "poll_interval=0.5") as m:
        versions = m.path / ".vchunkfs"
        assert (versions / "HEAD").read_text().split()[-1] == built.snapshots["day1"]
        cli("branch", repo, "create", "exp", "dev")
        wait_for("new branch", lambda: (versions / "branches" / "exp" / "dev_only").is_dir())
        cli("tag", repo, "create", "t-dev", "exp")
        wait_for("new tag", lambda: "t-dev" in os.listdir(versions / "tags"))
        chunk = Path("dev_only", "c", "0")
        assert (versions / "tags" / "t-dev" / chunk).read_bytes() == (
            versions / "branches" / "dev" / chunk).read_bytes()
        started = time.monotonic()
        cli("branch", repo, "reset", "main", "dev")
        wait_for("root follows the reset", lambda: (m.path / "dev_only").is_dir())
        assert time.monotonic() - started < 5
        assert (versions / "HEAD").read_text().split()[-1] == built.snapshots["dev"]
        cli("branch", repo, "delete", "exp")
        cli("tag", repo, "delete", "t-dev")
        wait_for("deleted refs", lambda: "exp" not in os.listdir(versions / "branches")
                 and "t-dev" not in os.listdir(versions / "tags"))
        assert m.proc.poll() is None



def test_ops_commands_hold_the_local_commit_lock(local_repo, tmp_path):
    """branch, tag, expire and gc on a local repository wait for the commit lock (the
    control socket's and every vchunkfs writer's: flock on the repository directory)."""
    import fcntl

    from commands import CLI

    path, _built = local_repo
    shutil.copytree(path, tmp_path / "repo")
    repo = str(tmp_path / "repo")
    inode = f":{os.stat(repo).st_ino} "
    commands = [["branch", repo, "create", "locked"], ["tag", repo, "create", "locked"],
                ["expire", repo, "--older-than", "2000-01-01"], ["gc", repo]]
    fd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        procs = [subprocess.Popen([*CLI, *c, "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c in commands]

        def waiting() -> int:
            return sum(1 for line in Path("/proc/locks").read_text().splitlines()
                       if "->" in line and inode in line)

        wait_for("every command waits for the lock", lambda: waiting() == len(procs), 60)
        assert all(p.poll() is None for p in procs)
        assert "locked" not in ic.Repository.open(
            ic.local_filesystem_storage(repo)).list_branches()
    finally:
        os.close(fd)  # releases the lock
    for c, p in zip(commands, procs, strict=True):
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, (c, err)
    assert "locked" in jcli("branch", repo) and "locked" in jcli("tag", repo)


def test_branch_reset_refuses_a_branch_another_writer_moved(local_repo, tmp_path, run,
                                                            monkeypatch):
    """``vchunkfs branch REPO reset`` (the writer's reset_branch) moves a branch only from
    the head it read: a writer that moves it meanwhile (here icechunk itself, which takes
    no vchunkfs lock) makes it a conflict, exit status 5, and the other writer's head
    stays."""
    from vchunkfs.errors import ConflictError
    from vchunkfs.repository import Repo, parse_repo_url
    from vchunkfs.repository.writer import reset_branch

    path, built = local_repo
    shutil.copytree(path, tmp_path / "repo")
    repo = run(lambda: Repo.open(parse_repo_url(str(tmp_path / "repo"))))
    other = ic.Repository.open(ic.local_filesystem_storage(str(tmp_path / "repo")))
    read_heads = repo.branches

    async def heads_then_another_writer() -> dict[str, str]:
        heads = await read_heads()
        await other.reset_branch_async("main", built.snapshots["dev"])
        return heads

    monkeypatch.setattr(repo, "branches", heads_then_another_writer)
    with pytest.raises(ConflictError, match="branch main moved while it was being reset") as e:
        run(lambda: reset_branch(repo, "main", "v1"))
    assert e.value.exit_status == 5
    monkeypatch.undo()
    assert run(repo.branches)["main"] == built.snapshots["dev"]


def test_ops_commands_on_a_read_only_repository(local_repo):
    """Over HTTP a repository reads but never changes: listing and a dry run work, every
    change is refused with 7 (read_only) before anything is written."""
    from servers import http_range_server

    path, built = local_repo
    with http_range_server(path.parent) as http:
        url = f"{http.url}/{path.name}"
        assert jcli("branch", url) == {"dev": built.snapshots["dev"],
                                       "main": built.snapshots["day1"]}
        assert jcli("tag", url) == {"v1": built.snapshots["v1"]}
        assert jcli("expire", url, "--older-than", "0s", "--dry-run")["count"] == 0
        for args in (["branch", url, "create", "x"], ["branch", url, "reset", "dev", "v1"],
                     ["branch", url, "delete", "dev"], ["tag", url, "create", "x"],
                     ["tag", url, "delete", "v1"], ["expire", url, "--older-than", "0s"],
                     ["gc", url]):
            r = cli(*args, "--json", check=False)
            assert r.returncode == 7, (args, r.stderr)
            assert json.loads(r.stdout)["error"]["code"] == "read_only"
            assert "read-only" in r.stderr



# -- expire and gc ---------------------------------------------------------------

SERIES_ROW = 256  # float32: 1 KiB chunks, stored as objects (not inlined in manifests)


def daily_repo(storage: ic.Storage, days: int) -> list[str]:
    """A repository appended to once a "day": ``series`` gains a row (kept forever) and
    ``latest`` is rewritten (so each day leaves a chunk that only its snapshot uses).
    Tag day05 and branch day10 point into the history. Returns the daily snapshot ids."""
    repo = ic.Repository.create(storage)
    s = repo.writable_session("main")
    root = zarr.group(s.store)
    root.create_array("series", shape=(0, SERIES_ROW), chunks=(1, SERIES_ROW), dtype="f4",
                      fill_value=0, compressors=None)
    root.create_array("latest", shape=(SERIES_ROW,), chunks=(SERIES_ROW,), dtype="f4",
                      fill_value=0, compressors=None)
    s.commit("create the arrays")
    ids = []
    for day in range(1, days + 1):
        s = repo.writable_session("main")
        series = zarr.open_array(s.store, path="series")
        series.resize((day, SERIES_ROW))
        series[day - 1] = np.arange(SERIES_ROW, dtype="f4") + day
        zarr.open_array(s.store, path="latest")[:] = np.full(SERIES_ROW, day, "f4")
        ids.append(s.commit(f"append day {day}", metadata={"day": day}))
    repo.create_tag("day05", ids[4])
    repo.create_branch("day10", ids[9])
    return ids


def files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_parse_cutoff():
    import datetime

    from vchunkfs.cli.maintenance import parse_cutoff
    from vchunkfs.errors import UsageError

    now = datetime.datetime(2024, 9, 30, 12, tzinfo=datetime.UTC)
    assert parse_cutoff("30d", now) == datetime.datetime(2024, 8, 31, 12, tzinfo=datetime.UTC)
    assert parse_cutoff("2w", now) == now - datetime.timedelta(days=14)
    assert parse_cutoff("90m", now) == now - datetime.timedelta(minutes=90)
    assert parse_cutoff("0s", now) == now
    assert parse_cutoff("2024-09-01") == datetime.datetime(2024, 9, 1, tzinfo=datetime.UTC)
    assert parse_cutoff("2024-09-01T14:00:00+02:00") == datetime.datetime(
        2024, 9, 1, 12, tzinfo=datetime.UTC)
    with pytest.raises(UsageError, match="--older-than"):
        parse_cutoff("last tuesday")


def test_expire_and_gc_while_mounted(tmp_path):
    """30 daily appends; expire what is older than day 20 and collect it, with the main
    branch mounted and read all along."""
    path = tmp_path / "repo"
    ids = daily_repo(ic.local_filesystem_storage(str(path)), 30)
    url = str(path)
    log = jcli("log", url)
    written = {c["id"]: c["written_at"] for c in log}
    created = next(c["id"] for c in log if c["message"] == "create the arrays")
    cutoff = written[ids[19]]  # exclusive: day 20 stays
    expected = (set(ids[:19]) - {ids[4], ids[9]}) | {created}  # heads of day05, day10 stay
    with mounted(url, tmp_path / "m", "poll_interval=0.5") as m:
        chunk_files = [m.path / "series" / "c" / str(d) / "0" for d in range(30)]
        chunk_files.append(m.path / "latest" / "c" / "0")
        want = [f.read_bytes() for f in chunk_files]
        assert np.frombuffer(want[-1], "f4")[0] == 30
        old = m.path / ".vchunkfs" / "snapshots" / ids[2]
        held = open(old / "latest" / "c" / "0", "rb")  # noqa: SIM115  (expired, not read yet)
        problems: list[str] = []
        stop = threading.Event()

        def reader() -> None:
            rounds = 0
            while not stop.is_set() or rounds == 0:
                for f, b in zip(chunk_files, want, strict=True):
                    try:
                        if f.read_bytes() != b:
                            problems.append(f"{f}: other bytes")
                    except OSError as e:
                        problems.append(f"{f}: {e}")
                rounds += 1

        t = threading.Thread(target=reader)
        t.start()
        try:
            dry = jcli("expire", url, "--older-than", cutoff, "--dry-run")
            assert {e["id"] for e in dry["expired"]} == expected and dry["dry_run"]
            assert [e["message"] for e in dry["expired"]][:2] == ["append day 19",
                                                                 "append day 18"]
            text = cli("expire", url, "--older-than", cutoff, "--dry-run").stdout
            assert text.startswith(f"would expire {len(expected)} snapshots")
            assert f"{ids[0]}  " in text and "append day 1\n" in text
            real = jcli("expire", url, "--older-than", cutoff)
            assert real["expired"] == dry["expired"]
            before = files(path)
            gc_dry = jcli("gc", url, "--older-than", "0s", "--dry-run")
            assert files(path) == before
            gc = jcli("gc", url, "--older-than", "0s")
            after = files(path)
        finally:
            stop.set()
            t.join()
        assert not problems, problems[:5]
        for key in ("bytes", "objects", "snapshots", "manifests", "chunks"):
            assert gc[key] == gc_dry[key], key
        assert gc["snapshots"] == len(expected)
        assert gc["chunks"] == 17  # the 'latest' chunks only expired snapshots used
        gone = set(before) - set(after)
        assert sum(before[k] for k in gone) == gc["bytes"] == gc_dry["bytes"]
        assert len(gone) == gc["objects"]
        assert sum(after.values()) < sum(before.values())
        # what stays: every branch and tag, read through the mount and the CLI
        assert [f.read_bytes() for f in chunk_files] == want
        versions = m.path / ".vchunkfs"
        assert np.frombuffer((versions / "tags" / "day05" / "latest" / "c" / "0").read_bytes(),
                             "f4")[0] == 5
        day10 = versions / "branches" / "day10" / "series" / "c" / "9" / "0"
        assert day10.read_bytes() == want[9]
        assert [c["message"] for c in jcli("log", f"{url}@day05")] == [
            "append day 5", "Repository initialized"]
        assert len(jcli("log", url)) == 30 - 19 + 1
        # an expired and collected snapshot: gone from .vchunkfs/snapshots/, and a file
        # opened in it before answers with an error, never with other bytes
        listed = os.listdir(versions / "snapshots")
        assert ids[2] not in listed and ids[3] not in listed and ids[19] in listed
        assert not (versions / "snapshots" / ids[3]).exists()  # never looked up before
        with pytest.raises(OSError) as err:
            held.read()
        held.close()
        assert err.value.errno == errno.EIO  # an object it needs is gone (docs/SEMANTICS.md)
        with pytest.raises(OSError) as err:  # looked up before: the kernel may know the path
            (old / "latest" / "c" / "0").read_bytes()
        assert err.value.errno == errno.EIO
        assert [f.read_bytes() for f in chunk_files] == want and m.proc.poll() is None
    print(f"gc freed {gc['bytes']} bytes in {gc['objects']} objects; repository "
          f"{sum(before.values())} -> {sum(after.values())} bytes, "
          f"{len(before)} -> {len(after)} files")


def test_expire_and_gc_s3(s3_env):
    s3 = s3_env
    s3.create_bucket("daily")
    storage = ic.s3_storage(bucket="daily", prefix="r", region=s3.region,
                            endpoint_url=s3.endpoint_url, allow_http=True,
                            force_path_style=True, from_env=True)
    ids = daily_repo(storage, 12)
    url, opts = "s3://daily/r", ("--endpoint-url", s3.endpoint_url)
    cutoff = {c["id"]: c["written_at"] for c in jcli("log", url, *opts)}[ids[10]]
    dry = jcli("expire", url, "--older-than", cutoff, "--dry-run", *opts)
    real = jcli("expire", url, *opts, "--older-than", cutoff)
    assert real["expired"] == dry["expired"] and real["count"] == 10 - 2 + 1
    gc_dry = jcli("gc", url, "--older-than", "0s", "--dry-run", *opts)
    gc = jcli("gc", url, "--older-than", "0s", *opts)
    assert gc["bytes"] == gc_dry["bytes"] > 0 and gc["chunks"] == gc_dry["chunks"] == 8
    assert jcli("gc", url, "--older-than", "0s", *opts)["objects"] == 0
    assert jcli("branch", url, *opts) == {"day10": ids[9], "main": ids[11]}
    assert jcli("tag", url, *opts) == {"day05": ids[4]}


def test_expire_and_gc_help():
    assert "never touched" in cli("gc", "--help").stdout
    for command in ("expire", "gc"):
        r = cli(command, "--help")
        assert "example" in r.stdout and "--json" in r.stdout and "--dry-run" in r.stdout
    r = cli("expire", "./nowhere", "--older-than", "someday", check=False)
    assert r.returncode == 2 and "--older-than 'someday'" in r.stderr


# -- export -----------------------------------------------------------------------


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".vchunkfs-export.json"}


def test_export_oisst_month(tmp_path):
    """An August of OISST-like days: the v3 export is the mount's tree byte for byte and
    reads like the netCDF files; v2-decoded of one array opens as Zarr v2; an export cut
    short says so, does not open, and finishes when run again."""
    import xarray as xr
    from commands import ingest_days
    from datasets import assert_reads_like_files

    repo, prefix, files = ingest_days(tmp_path, 31)
    out = tmp_path / "v3.zarr"
    started = time.monotonic()
    doc = jcli("export", str(repo), str(out), "--authorize", prefix)
    seconds = time.monotonic() - started
    assert doc["presentation"] == "v3" and doc["skipped"] == 0
    exported = tree(out)
    assert doc["files"] == len(exported) and doc["bytes"] == sum(map(len, exported.values()))
    print(f"export: {doc['files']} files, {doc['bytes']} bytes in {seconds:.1f} s")
    assert_reads_like_files(out, files)
    with mounted(repo, tmp_path / "m", f"authorize={prefix}") as m:
        assert tree(m.path) == exported
    assert not (out / ".vchunkfs-export.json").exists()  # complete: a plain Zarr store

    v2 = tmp_path / "v2.zarr"
    doc2 = jcli("export", f"{repo}@main", str(v2), "--presentation", "v2-decoded",
                "--array", "sst", "--authorize", prefix)
    assert sorted(os.listdir(v2)) == [".zattrs", ".zgroup", "sst"]
    ds = xr.open_zarr(v2, consolidated=False, zarr_format=2, chunks=None, mask_and_scale=False)
    ref = xr.open_zarr(out, consolidated=False, zarr_format=3, chunks=None, mask_and_scale=False)
    np.testing.assert_array_equal(ds["sst"].values, ref["sst"].values)
    assert doc2["files"] == len(tree(v2))

    # cut short: a source half-way through the month reads as another file for a while.
    # A bind mount hides it and gives it back untouched (renaming it away and back would
    # change its change time, which the changed-source check rightly refuses for good).
    impostor = tmp_path / "impostor.nc"
    impostor.write_bytes(bytes(files[15].stat().st_size))
    subprocess.run(["mount", "--bind", str(impostor), str(files[15])], check=True)
    try:
        part = tmp_path / "part.zarr"
        r = cli("export", str(repo), str(part), "--authorize", prefix, "--json", check=False)
    finally:
        subprocess.run(["umount", str(files[15])], check=True)
    assert r.returncode == 6, r.stderr
    assert "incomplete" in r.stderr and "run the same command again" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    marker = json.loads((part / ".vchunkfs-export.json").read_text())
    assert marker["snapshot"] == doc["snapshot"] and not marker["complete"]
    assert not (part / "zarr.json").exists()  # does not open as a Zarr group
    other = cli("export", str(repo), str(part), "--presentation", "v2", check=False)
    assert other.returncode == 2 and "holds another export" in other.stderr
    full = cli("export", str(repo), str(out), check=False)
    assert full.returncode == 2 and "not empty" in full.stderr
    missing = cli("export", str(repo), str(tmp_path / "none.zarr"), "--array", "nope",
                  check=False)
    assert missing.returncode == 3 and "no array or group 'nope'" in missing.stderr
    assert not (tmp_path / "none.zarr").exists()
    again = jcli("export", str(repo), str(part), "--authorize", prefix)
    assert 0 < again["skipped"] < again["files"]
    assert tree(part) == exported


def test_export_progress_on_a_terminal(local_repo, tmp_path):
    """On a terminal, export shows files and bytes as it goes (on standard error, so the
    result on standard output stays one line); not with --json, not into a pipe."""
    import pty

    from commands import CLI

    path, built = local_repo
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([*CLI, "export", str(path), str(tmp_path / "out"),
                                 "--authorize", built.container_prefix],
                                stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        shown = b""
        while True:
            try:
                piece = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not piece:
                break
            shown += piece
        out = proc.communicate(timeout=120)[0].decode()
    finally:
        os.close(master)
    assert proc.returncode == 0, shown
    files = int(out.split(": ")[1].split()[0])
    text = shown.decode()
    assert f"\rexporting {files}/{files} files, " in text and "MiB/s)" in text, text
    assert text.endswith("\r\n") and out.count("\n") == 1  # the line is ended, then the result
    quiet = cli("export", str(path), str(tmp_path / "piped"), "--authorize",
                built.container_prefix)
    assert quiet.stderr == ""


def s3_objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``s3://bucket/prefix/``, by path below the prefix, read back one
    by one (the marker left out, as in :func:`tree`)."""
    import obstore

    from vchunkfs.export import s3_store
    from vchunkfs.repository import StorageOptions

    store = s3_store(bucket, prefix, StorageOptions(endpoint_url=s3.endpoint_url,
                                                    region=s3.region))
    paths = sorted(m["path"] for batch in obstore.list(store) for m in batch)
    return {p: bytes(obstore.get(store, p).bytes()) for p in paths
            if p != ".vchunkfs-export.json"}


def test_export_to_s3(s3_env, tmp_path):
    """A repository on the moto server exported to s3://: the objects are the mount's v3
    files byte for byte and zarr reads the store over S3 like the mount; cut short, the
    prefix keeps the marker and no root metadata, and the same command finishes it."""
    import obstore

    from vchunkfs.export import s3_store
    from vchunkfs.repository import StorageOptions

    s3 = s3_env
    s3.create_bucket("exp-repo")
    s3.create_bucket("exp-out")
    storage = ic.s3_storage(bucket="exp-repo", prefix="r", region=s3.region,
                            endpoint_url=s3.endpoint_url, allow_http=True,
                            force_path_style=True, from_env=True)
    built = build_repo(storage, tmp_path / "src")
    url, prefix = "s3://exp-repo/r", built.container_prefix
    opts = ("--endpoint-url", s3.endpoint_url, "--authorize", prefix,
            "--dest-endpoint-url", s3.endpoint_url)
    doc = jcli("export", url, "s3://exp-out/v3.zarr", *opts)
    assert doc["dest"] == "s3://exp-out/v3.zarr" and doc["presentation"] == "v3"
    assert doc["snapshot"] == built.snapshots["day1"] and doc["skipped"] == 0
    exported = s3_objects(s3, "exp-out", "v3.zarr")
    assert doc["files"] == len(exported) and doc["bytes"] == sum(map(len, exported.values()))
    store = zarr.storage.ObjectStore(
        s3_store("exp-out", "v3.zarr", StorageOptions(endpoint_url=s3.endpoint_url,
                                                      region=s3.region)), read_only=True)
    with mounted(url, tmp_path / "m", f"endpoint_url={s3.endpoint_url}",
                 f"authorize={prefix}") as m:
        assert tree(m.path) == exported
        over_s3, local = zarr.open_group(store, mode="r"), zarr.open_group(m.path, mode="r")
        for name in ("sst", "field", "native", "grp/small"):
            np.testing.assert_array_equal(over_s3[name][...], local[name][...], name)
        assert dict(over_s3.attrs) == dict(local.attrs)

    # text output and one array, v2-decoded, from the tag
    out = cli("export", f"{url}@v1", "s3://exp-out/v2/", "--presentation", "v2-decoded",
              "--array", "field", *opts).stdout
    assert out.startswith(f"exported {built.snapshots['v1']} (v2-decoded) to s3://exp-out/v2:")
    v2 = zarr.open_group(zarr.storage.ObjectStore(s3_store(
        "exp-out", "v2", StorageOptions(endpoint_url=s3.endpoint_url, region=s3.region)),
        read_only=True), mode="r", zarr_format=2)
    assert list(v2.array_keys()) == ["field"]
    np.testing.assert_array_equal(v2["field"][...], over_s3["field"][...])

    # cut short: main's sst reads day01.nc, hidden for a while by a bind mount
    impostor = tmp_path / "impostor.nc"
    impostor.write_bytes(bytes(built.sources[1].stat().st_size))
    subprocess.run(["mount", "--bind", str(impostor), str(built.sources[1])], check=True)
    try:
        r = cli("export", url, "s3://exp-out/part", *opts, "--json", check=False)
    finally:
        subprocess.run(["umount", str(built.sources[1])], check=True)
    assert r.returncode == 6, r.stderr
    assert "export to s3://exp-out/part stopped" in r.stderr and "incomplete" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    part_store = s3_store("exp-out", "part", StorageOptions(endpoint_url=s3.endpoint_url,
                                                            region=s3.region))
    marker = json.loads(bytes(obstore.get(part_store, ".vchunkfs-export.json").bytes()))
    assert marker["snapshot"] == doc["snapshot"] and not marker["complete"]
    partial = s3_objects(s3, "exp-out", "part")
    assert "zarr.json" not in partial  # does not open as a Zarr group
    assert all(exported[k] == v for k, v in partial.items())
    other = cli("export", url, "s3://exp-out/part", "--presentation", "v2", *opts,
                check=False)
    assert other.returncode == 2 and "holds another export" in other.stderr
    full = cli("export", url, "s3://exp-out/v3.zarr", *opts, check=False)
    assert full.returncode == 2 and "s3://exp-out/v3.zarr is not empty" in full.stderr
    again = jcli("export", url, "s3://exp-out/part", *opts)
    assert again["skipped"] == len(partial) and again["files"] == len(exported)
    assert s3_objects(s3, "exp-out", "part") == exported
    assert not any(m["path"] == ".vchunkfs-export.json"
                   for batch in obstore.list(part_store) for m in batch)

    # destinations refused before anything is read
    for dest, status, message in [
        ("s3://no-such-bucket/x", 3, "the bucket does not exist"),
        ("gs://bucket/x", 2, "local directory or s3://bucket/prefix"),
        ("s3:///x", 2, "no bucket"),
    ]:
        r = cli("export", url, dest, *opts, "--json", check=False)
        assert r.returncode == status and message in r.stderr, (dest, r.stderr)
