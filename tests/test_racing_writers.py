"""Writers in separate processes commit to one branch at once: no commit is lost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vchunkfs.repository import Repo, StorageOptions, parse_repo_url
from vchunkfs.repository.writer import Writer

WRITERS = 4
ARRAY = {
    "zarr_format": 3, "node_type": "array", "shape": [WRITERS], "data_type": "uint8",
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
    "chunk_key_encoding": {"name": "default"}, "fill_value": 0, "codecs": [{"name": "bytes"}],
    "attributes": {},
}


def make_repo(run, url: str, opts: StorageOptions | None) -> Repo:
    repo = run(lambda: Repo.create(parse_repo_url(url), storage_options=opts))
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_metadata("a", ARRAY))
    run(lambda: w.commit("array a"))
    return repo


def race(url: str, keys: list[str], tmp: Path, endpoint: str | None) -> list[dict]:
    go = tmp / "go"
    script = Path(__file__).with_name("race_writer.py")
    procs = [subprocess.Popen([sys.executable, str(script), url, key, str(i + 1), str(go)]
                              + ([endpoint] if endpoint else []),
                              stdout=subprocess.PIPE, text=True)
             for i, key in enumerate(keys)]
    deadline = time.monotonic() + 120
    while len(list(tmp.glob("go.ready-*"))) < len(keys):  # every session is open
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    bases = {f.read_text() for f in tmp.glob("go.ready-*")}
    assert len(bases) == 1  # all writers started from the same head
    go.touch()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def check_disjoint(run, repo: Repo, results: list[dict]) -> None:
    """Writers of different chunks all land: rebased, none lost."""
    assert all(r["ok"] for r in results), results
    history = [c.id for c in repo.ic.ancestry(branch="main")]
    assert {r["snapshot"] for r in results} <= set(history)
    view = run(lambda: repo.view("main"))
    assert [run(lambda i=i: view.read(f"a/c/{i}")) for i in range(WRITERS)] == [
        bytes([i + 1]) for i in range(WRITERS)]


def check_same_chunk(run, repo: Repo, results: list[dict]) -> None:
    """Writers of one chunk: exactly one lands, the rest get a conflict error."""
    winners = [r for r in results if r["ok"]]
    losers = [r for r in results if not r["ok"]]
    assert len(winners) == 1, results
    assert all(r["code"] == "conflict" and "overlap" in r["message"] for r in losers), losers
    head = next(iter(repo.ic.ancestry(branch="main")))
    assert head.id == winners[0]["snapshot"]
    value = run(lambda: run_view_read(repo))
    assert value == bytes([results.index(winners[0]) + 1])


async def run_view_read(repo: Repo) -> bytes:
    view = await repo.view("main")
    return await view.read("a/c/0")


@pytest.mark.parametrize("same_chunk", [False, True], ids=["disjoint", "same-chunk"])
def test_local_racing_writers(run, tmp_path, same_chunk):
    url = str(tmp_path / "repo")
    repo = make_repo(run, url, None)
    keys = ["a/c/0"] * WRITERS if same_chunk else [f"a/c/{i}" for i in range(WRITERS)]
    results = race(url, keys, tmp_path, None)
    (check_same_chunk if same_chunk else check_disjoint)(run, repo, results)


# -- many control connections on one mount ---------------------------------------------

CONNECTIONS = 16
PER_CONNECTION = 12


def test_control_connections_race_for_first_writer_and_commits(run, tmp_path):
    """Many connections open a branch's first writer at the same moment and keep staging
    while another connection commits: every acknowledged change is in a commit."""
    import threading

    from mounting import mounted

    from vchunkfs.control import Client, ControlError

    n = CONNECTIONS * PER_CONNECTION
    url = str(tmp_path / "repo")
    repo = run(lambda: Repo.create(parse_repo_url(url)))
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_metadata("a", {**ARRAY, "shape": [n]}))
    run(lambda: w.commit("array a"))
    sock = str(tmp_path / "ctl.sock")
    with mounted(url, tmp_path / "m", f"control_socket={sock}") as m:
        for branch in ("dev", "other"):
            with Client(sock) as c:
                c.call("create_branch", name=branch)
        start = threading.Barrier(CONNECTIONS + 1)
        acked: dict[str, dict[int, int]] = {"main": {}, "dev": {}}
        errors: list[BaseException] = []
        stop = threading.Event()

        def setter(t: int) -> None:
            try:
                with Client(sock) as c:
                    start.wait()
                    for j in range(PER_CONNECTION):
                        i = t * PER_CONNECTION + j
                        branch = "main" if (t + j) % 2 else "dev"
                        c.set_chunk(f"a/c/{i}", bytes([i % 251 + 1]), branch=branch)
                        acked[branch][i] = i % 251 + 1
            except BaseException as e:
                errors.append(e)

        commits: list[str] = []

        def committer() -> None:
            try:
                with Client(sock) as c:
                    start.wait()
                    while not stop.is_set():
                        for branch in ("main", "dev"):
                            try:
                                commits.append(c.commit(f"race {len(commits)}", branch=branch))
                            except ControlError as e:
                                assert e.code in ("usage", "invalid_input"), e  # nothing yet
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=setter, args=(t,)) for t in range(CONNECTIONS)]
        # the committer takes the barrier's last place
        committing = threading.Thread(target=committer)
        for th in [*threads, committing]:
            th.start()
        for th in threads:
            th.join(timeout=120)
        stop.set()
        committing.join(timeout=120)
        assert not errors, errors
        with Client(sock) as c:
            for branch in ("main", "dev"):
                if c.call("changes", branch=branch)["changed"]:
                    commits.append(c.commit("the rest", branch=branch))
            status = c.status()
        assert status["staged"] == {}

        # only the first writer's creation, raced: every connection's first change on a
        # branch nobody has written through this mount yet lands in one session
        first = threading.Barrier(CONNECTIONS)
        acked["other"] = {}

        def first_change(t: int) -> None:
            try:
                with Client(sock) as c:
                    first.wait()
                    c.set_chunk(f"a/c/{t}", bytes([t + 1]), branch="other")
                    acked["other"][t] = t + 1
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=first_change, args=(t,)) for t in range(CONNECTIONS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert not errors, errors
        with Client(sock) as c:
            c.commit("first changes", branch="other")
            assert c.status()["staged"] == {}
        assert "Traceback" not in m.log_text()
    assert len(acked["main"]) + len(acked["dev"]) == n and len(acked["other"]) == CONNECTIONS
    for branch, values in acked.items():
        view = run(lambda b=branch: repo.view(b))
        got = {i: run(lambda i=i, v=view: v.read(f"a/c/{i}")) for i in values}
        lost = {i for i, v in values.items() if got[i] != bytes([v])}
        assert not lost, f"{branch}: {len(lost)} acknowledged changes lost: {sorted(lost)[:10]}"
