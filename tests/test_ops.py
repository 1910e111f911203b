"""Operating repositories from the shell: vchunkfs branch / tag (and, below, expire, gc)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import icechunk as ic
import pytest
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


def test_branch_and_tag_help():
    for command in (["branch"], ["branch", "reset"], ["tag"], ["tag", "create"]):
        r = cli(*command, "--help")
        assert "example" in r.stdout and "--json" in r.stdout, command


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


