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
