"""The control socket's operations in-process, with faults injected where a real mount
cannot be made to fail on cue: an applied write is never reported as failed."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from vchunkfs.daemon.control_ops import ControlOps
from vchunkfs.daemon.control_server import ControlServer
from vchunkfs.errors import BackendError
from vchunkfs.repository import Repo, parse_repo_url
from vchunkfs.repository.repo import Version
from vchunkfs.repository.writer import Writer

ARRAY = {
    "zarr_format": 3, "node_type": "array", "shape": [8], "data_type": "uint8",
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
    "chunk_key_encoding": {"name": "default"}, "fill_value": 0, "codecs": [{"name": "bytes"}],
    "attributes": {},
}


class FailingNamespace:
    """What ControlOps needs of the namespace; refreshing the mount fails while ``fail``."""

    def __init__(self) -> None:
        self.fail = True
        self.polls = 0

    def root_version(self) -> Version:
        return Version("", "branch", "main")

    def stats(self) -> dict[str, int]:
        return {}

    async def poll_branches(self, invalidator: Any) -> list[str]:
        self.polls += 1
        if self.fail:
            raise BackendError("injected: the branch head cannot be read")
        return []


@pytest.fixture
def ops(run, bridge, tmp_path) -> tuple[ControlOps, FailingNamespace, Repo]:
    repo = run(lambda: Repo.create(parse_repo_url(str(tmp_path / "repo"))))
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_metadata("a", ARRAY))
    run(lambda: w.commit("array a"))
    ns = FailingNamespace()
    return ControlOps(repo, bridge, ns, None, str(tmp_path / "m")), ns, repo  # type: ignore[arg-type]


def test_refresh_failure_after_a_write_is_a_warning_not_an_error(ops, run):
    control, ns, repo = ops
    server = ControlServer(control, "/nonexistent")

    async def scenario() -> list[dict[str, Any]]:
        return [await server._dispatch(1, "set_chunk", {"key": "a/c/0", "data": b"\x07"}),
                await server._dispatch(2, "commit", {"message": "one"})]

    staged, committed = trio.run(scenario)
    assert staged["ok"] and "refreshing the mount failed" in staged["warnings"][0]
    assert committed["ok"], committed
    assert "injected" in committed["warnings"][0]
    head = run(lambda: repo.resolve("main"))
    assert committed["result"]["snapshot"] == head.snapshot_id
    assert run(lambda: run_read(repo)) == b"\x07"
    ns.fail = False
    assert "warnings" not in trio.run(server._dispatch, 3, "status", {})


def test_commit_stays_a_success_when_the_next_session_cannot_open(ops, run, monkeypatch):
    control, ns, repo = ops
    ns.fail = False
    server = ControlServer(control, "/nonexistent")
    real = Writer._fresh_session
    calls = 0

    async def failing_once(self: Writer) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BackendError("injected: cannot open a session")
        await real(self)

    monkeypatch.setattr(Writer, "_fresh_session", failing_once)

    async def scenario() -> list[dict[str, Any]]:
        return [await server._dispatch(1, "set_chunk", {"key": "a/c/1", "data": b"\x01"}),
                await server._dispatch(2, "commit", {"message": "one"}),
                await server._dispatch(3, "set_chunk", {"key": "a/c/2", "data": b"\x02"}),
                await server._dispatch(4, "commit", {"message": "two"})]

    replies = trio.run(scenario)
    assert all(r["ok"] for r in replies), replies
    assert run(lambda: repo.resolve("main")).snapshot_id == replies[3]["result"]["snapshot"]
    assert [c.message for c in repo.ic.ancestry(branch="main")][:2] == ["two", "one"]


async def run_read(repo: Repo) -> bytes:
    view = await repo.view("main")
    return await view.read("a/c/0")


def test_too_many_refs_in_one_request_is_refused_before_anything_is_staged(ops):
    from vchunkfs.daemon.control_ops import MAX_KEYS_REFS

    control, ns, _repo = ops
    ns.fail = False
    server = ControlServer(control, "/nonexistent")
    ref = {"key": "a/c/0", "location": "file:///x", "offset": 0, "length": 1}
    reply = trio.run(server._dispatch, 1, "set_virtual_refs_keys",
                     {"refs": [ref] * (MAX_KEYS_REFS + 1)})
    assert reply["error"]["code"] == "invalid_input"
    assert f"the most is {MAX_KEYS_REFS:,}" in reply["error"]["message"]
    assert control.writers == {}


def test_status_counts_staged_chunks_and_the_cli_shows_them(ops, monkeypatch, capsys):
    import argparse

    from vchunkfs.cli import ctl

    control, ns, _repo = ops
    ns.fail = False
    server = ControlServer(control, "/nonexistent")

    async def scenario() -> dict[str, Any]:
        await server._dispatch(1, "set_chunk", {"key": "a/c/0", "data": b"\x01"})
        await server._dispatch(2, "set_chunk", {"key": "a/c/1", "data": b"\x02"})
        await server._dispatch(3, "delete", {"key": "a/c/1"})
        return await server._dispatch(4, "status", {})

    status = trio.run(scenario)["result"]
    assert status["staged"]["main"]["nodes_changed"] == 0  # refs and chunks only
    assert status["staged"]["main"]["chunks_changed"] == 3

    class FakeClient:
        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def status(self) -> dict[str, Any]:
            return status

    monkeypatch.setattr(ctl, "_client", lambda args: FakeClient())
    ctl.ctl_status(argparse.Namespace(json=False))
    assert "main: 0 node changes, 3 chunk writes on" in capsys.readouterr().out


def test_a_ref_outside_every_container_names_a_command_that_exists(ops):
    from vchunkfs.cli.main import build_parser

    control, ns, _repo = ops
    ns.fail = False
    server = ControlServer(control, "/nonexistent")
    reply = trio.run(server._dispatch, 1, "set_virtual_ref",
                     {"key": "a/c/0", "location": "file:///elsewhere/x.nc", "offset": 0,
                      "length": 1})
    message = reply["error"]["message"]
    assert "vchunkfs ctl MOUNTPOINT containers add PREFIX" in message
    assert "vchunkfs config REPO containers add PREFIX" in message
    parser = build_parser()
    for argv in (["ctl", "/m", "containers", "add", "file:///elsewhere/"],
                 ["config", "./r", "containers", "add", "file:///elsewhere/"]):
        args = parser.parse_args(argv)  # both parse: the commands exist
        assert args.action == "add" and args.prefix == "file:///elsewhere/"


def test_a_commit_of_unknown_outcome_has_its_own_code_and_exit_status():
    """``commit_unknown`` is neither success nor a failure: scripts tell it by status 9."""
    from vchunkfs.control.client import ControlError
    from vchunkfs.errors import CommitOutcomeUnknownError
    assert CommitOutcomeUnknownError.code == "commit_unknown"
    e = ControlError("commit_unknown", "commit to dev may or may not have landed")
    assert e.exit_status == 9 and e.exit_status not in {
        ControlError(c, "").exit_status for c in ("backend", "conflict", "error")}
