"""The vchunkfs command, run as a user runs it: a subprocess, its output and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

VCHUNKFS = [sys.executable, "-m", "vchunkfs.cli.main"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VCHUNKFS_")}
    full_env.update(env or {})
    return subprocess.run([*VCHUNKFS, *args], capture_output=True, text=True, timeout=120,
                          env=full_env)


def test_log_branches_tags(local_repo):
    path, built = local_repo
    r = cli("log", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.index(built.snapshots["day1"]) < r.stdout.index(built.snapshots["v1"])
    assert "    day 1: sst from day01.nc" in r.stdout and r.stderr == ""
    log = json.loads(cli("log", f"{path}@dev", "--json", "-n", "1").stdout)
    assert [c["id"] for c in log] == [built.snapshots["dev"]]
    branches = json.loads(cli("branches", str(path), "--json").stdout)
    assert branches == {"dev": built.snapshots["dev"], "main": built.snapshots["day1"]}
    assert cli("tags", str(path)).stdout.split() == ["v1", built.snapshots["v1"]]


def test_ls_and_show(local_repo):
    path, built = local_repo
    r = cli("ls", f"{path}@v1")
    assert r.stdout.split() == ["field/", "grp/", "native/", "sst/", "zarr.json"]
    long = cli("ls", f"{path}@v1", "sst/c/0/0/0", "-l", "--json")
    (entry,) = json.loads(long.stdout)
    ref = next(r for r in built.refs["v1"] if r.key == "sst/c/0/0/0/0")
    assert entry == {"name": "0", "type": "file", "size": ref.length}
    show = cli("show", str(path), "sst", "--authorize", built.container_prefix)
    assert show.returncode == 0, show.stderr
    assert "chunk refs:  4 stored of 4 in the grid (4 virtual, 0 native, 0 inline)" in show.stdout
    assert f"container:   {built.container_prefix}  (4 chunks)" in show.stdout
    doc = json.loads(cli("show", f"{path}@{built.snapshots['v1'][:10]}", "grp/small",
                         "--json").stdout)
    assert doc["chunks"]["inline"] == 2 and doc["chunks"]["missing"] == 1
    assert json.loads(cli("show", str(path), "/", "--json").stdout)["members"] == [
        "field", "grp", "native", "sst"]


def test_diff(local_repo):
    path, _built = local_repo
    r = cli("diff", str(path), "v1", "main")
    assert r.stdout.strip() == "chunks         /sst: 4 changed"
    assert json.loads(cli("diff", str(path), "v1", "dev", "--json").stdout)["new_arrays"] == [
        "/dev_only"]


@pytest.mark.parametrize("args,status,message", [
    (["log", "/nonexistent/repo"], 3, "no Icechunk repository at file:///nonexistent/repo"),
    (["log", "ftp://x/y"], 2, "unsupported repository URL"),
    (["ls", "{repo}@nope"], 3, "no branch, tag or snapshot 'nope'"),
    (["ls", "{repo}", "nope"], 3, "no directory 'nope'"),
    (["show", "{repo}", "sst", "--authorize", "s3://b/no-slash"], 2, "must end with '/'"),
    (["diff", "{repo}", "dev", "main"], 2, "must be an ancestor"),
])
def test_errors_are_one_clear_line(local_repo, args, status, message):
    path, _built = local_repo
    r = cli(*[a.format(repo=path) for a in args])
    assert r.returncode == status, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vchunkfs: ") and message in lines[0], lines


def test_json_errors(local_repo):
    path, _built = local_repo
    r = cli("ls", f"{path}@nope", "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["error"]["code"] == "version_not_found"


def test_authorize_from_environment_and_file(local_repo, tmp_path):
    """`show` needs no chunk bytes; the mount will. Here authorization parses from each source."""
    path, built = local_repo
    env = {"VCHUNKFS_AUTHORIZE": built.container_prefix}
    assert cli("show", str(path), "sst", env=env).returncode == 0
    f = tmp_path / "auth.toml"
    f.write_text(f'[[authorize]]\nprefix = "{built.container_prefix}"\n')
    assert cli("show", str(path), "sst", "--auth-file", str(f)).returncode == 0
    bad = cli("show", str(path), "sst", "--auth-file", str(tmp_path / "missing.toml"))
    assert bad.returncode == 2 and "cannot read auth file" in bad.stderr


def test_help_has_examples():
    for command in ("log", "branches", "tags", "ls", "show", "diff"):
        r = cli(command, "--help")
        assert r.returncode == 0 and "example:" in r.stdout and "--json" in r.stdout
    top = cli("--help")
    assert "exit status" in top.stdout and "REPO@VERSION" in top.stdout


def test_console_script_installed():
    exe = Path(sys.executable).with_name("vchunkfs")
    assert exe.exists()
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert r.stdout.startswith("vchunkfs ")


def _leaf_parsers(parser, path=()):
    """(command words, parser) for every command and subcommand of the vchunkfs parser."""
    import argparse
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, (*path, name))


def test_global_options_anywhere():
    """--json (and a command's other global options) go before or after the operands, at
    every level; repeatable ones given at two levels add up."""
    from vchunkfs.cli.main import build_parser

    parse = build_parser().parse_args
    for argv in (["ctl", "/mnt/x", "status", "--json"], ["--json", "ctl", "/mnt/x", "status"],
                 ["ctl", "--json", "/mnt/x", "status"], ["ctl", "/mnt/x", "--json", "status"]):
        args = parse(argv)
        assert args.json is True and args.mountpoint == "/mnt/x", argv
    assert parse(["ctl", "/mnt/x", "status"]).json is False
    a = parse(["ctl", "/mnt/x", "commit", "-m", "x", "--socket", "/s", "--json"])
    assert (a.socket, a.json, a.message) == ("/s", True, "x")
    a = parse(["ctl", "--socket", "/s", "/mnt/x", "log"])
    assert a.socket == "/s" and a.json is False
    a = parse(["log", "./r", "--json", "--endpoint-url", "http://e", "--authorize", "s3://a/"])
    assert (a.json, a.endpoint_url, a.authorize) == (True, "http://e", ["s3://a/"])
    a = parse(["--json", "show", "--region", "r1", "./r", "sst"])
    assert (a.json, a.region, a.authorize, a.storage_config) == (True, "r1", [], [])
    # every command and subcommand has --json
    missing = [" ".join(path) for path, p in _leaf_parsers(build_parser())
               if "--json" not in p._option_string_actions]
    assert not missing, missing


def test_ctl_json_after_operands_reaches_the_command(tmp_path):
    r = cli("ctl", str(tmp_path), "status", "--json")
    assert r.returncode == 1 and "unrecognized" not in r.stderr, r.stderr
    assert "not a vchunkfs mount" in json.loads(r.stdout)["error"]["message"]
