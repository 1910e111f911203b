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
    (["ls", "http://[::1"], 2, "bad repository URL 'http://[::1': Invalid IPv6 URL"),
    (["ls", "http://host:99999/r"], 2, "Port out of range"),
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


# -- the smaller items of issue 11 -------------------------------------------------------

MOUNT = [sys.executable, "-m", "vchunkfs.cli.mount"]


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def test_mount_helper_bad_url_is_exit_2(tmp_path):
    (tmp_path / "m").mkdir()
    for extra in ([], ["-o", "foreground"]):
        r = subprocess.run([*MOUNT, "http://[::1", str(tmp_path / "m"), *extra],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (extra, r.stderr)
        assert "bad repository URL" in r.stderr and "Traceback" not in r.stderr
    assert not _mounted(tmp_path / "m")


def test_foreground_start_failure_after_fuse_init_is_not_exit_0(tmp_path):
    """The readiness check (a stat of the new mount, from a worker thread) fails: the
    foreground daemon unmounts and exits non-zero (systemd's Restart=on-failure)."""
    assert cli("init", str(tmp_path / "repo")).returncode == 0
    mp = tmp_path / "m"
    mp.mkdir()
    script = (
        "import os, sys, threading\n"
        "real = os.stat\n"
        "def stat(p, *a, **k):\n"
        "    if threading.current_thread() is not threading.main_thread() "
        "and str(p) == sys.argv[2]:\n"
        "        raise OSError(5, 'injected')\n"
        "    return real(p, *a, **k)\n"
        "os.stat = stat\n"
        "from vchunkfs.cli.mount import helper_main\n"
        "sys.exit(helper_main([sys.argv[1], sys.argv[2], '-o', 'foreground,control_socket='"
        " + sys.argv[3]]))\n")
    try:
        r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "repo"), str(mp),
                            str(tmp_path / "ctl.sock")], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 32, r.stderr
        assert "does not answer: injected" in r.stderr
        assert not _mounted(mp)
    finally:
        if _mounted(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)


def test_umount_cleans_up_after_a_killed_daemon(tmp_path):
    from mounting import mounted

    assert cli("init", str(tmp_path / "repo")).returncode == 0
    mp = tmp_path / "m"
    with mounted(tmp_path / "repo", mp, f"control_socket={tmp_path / 'ctl.sock'}") as m:
        m.proc.kill()  # the daemon this test started, by pid
        m.proc.wait(timeout=30)
        assert _mounted(mp)
        with pytest.raises(OSError):  # ENOTCONN: what a dead FUSE mount answers
            os.listdir(mp)
        r = subprocess.run([*MOUNT, str(tmp_path / "repo"), str(mp)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 32 and f"vchunkfs umount {mp}" in r.stderr, r.stderr
        r = cli("umount", str(mp))
        assert r.returncode == 0, r.stderr
        assert not _mounted(mp) and os.path.isdir(mp)
        assert cli("umount", str(mp)).returncode == 2  # now it is not mounted


def test_nonempty_mountpoint_is_refused_unless_nonempty(tmp_path):
    from mounting import mounted

    assert cli("init", str(tmp_path / "repo")).returncode == 0
    mp = tmp_path / "m"
    mp.mkdir()
    (mp / "precious.txt").write_text("x")
    r = subprocess.run([*MOUNT, str(tmp_path / "repo"), str(mp)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 32 and "is not empty" in r.stderr and "nonempty" in r.stderr, \
        r.stderr
    assert not _mounted(mp)
    with mounted(tmp_path / "repo", mp, "nonempty",
                 f"control_socket={tmp_path / 'ctl.sock'}") as m:
        assert os.listdir(m.path) == []  # the mount hides the file
    assert (mp / "precious.txt").read_text() == "x"


def test_ctl_when_the_daemon_dies_mid_request_is_one_line(tmp_path):
    """A control socket whose server reads the request and closes, as a dying daemon
    does: one error line and exit status 1, never a traceback."""
    import socket
    import threading

    path = str(tmp_path / "ctl.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            conn.recv(65536)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = cli("ctl", "--socket", path, str(tmp_path), "commit", "-m", "x")
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "closed the control connection before answering commit" in lines[0]
        assert "whether commit was applied is unknown" in lines[0] and " log" in lines[0]
        r = cli("ctl", "--socket", path, str(tmp_path), "status")
        assert r.returncode == 1 and "before answering status" in r.stderr
        assert "unknown" not in r.stderr  # status changes nothing
        r = cli("ctl", "--socket", path, str(tmp_path), "commit", "-m", "x", "--meta", "{")
        assert r.returncode == 2 and "--meta is not JSON" in r.stderr, r.stderr
    finally:
        server.close()
