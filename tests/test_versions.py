"""Resolving versions, history and diffs, against icechunk's own answers."""

from __future__ import annotations

import pytest

from vchunkfs.errors import NotFoundError, UsageError, VersionNotFoundError
from vchunkfs.repository import Repo, parse_repo_url


def test_resolve_branch_tag_id_and_prefix(open_local, run, local_repo):
    _path, built = local_repo
    repo = open_local()
    main = run(lambda: repo.resolve("main"))
    assert (main.kind, main.snapshot_id) == ("branch", built.snapshots["day1"])
    assert main.moves
    tag = run(lambda: repo.resolve("v1"))
    assert (tag.kind, tag.snapshot_id, tag.moves) == ("tag", built.snapshots["v1"], False)
    sid = built.snapshots["dev"]
    assert run(lambda: repo.resolve(sid)).snapshot_id == sid
    assert run(lambda: repo.resolve(sid[:8].lower())).snapshot_id == sid
    assert run(lambda: repo.resolve(None)).name == "main"


def test_unknown_version_is_a_clear_error(open_local, run):
    repo = open_local()
    with pytest.raises(VersionNotFoundError, match="no branch, tag or snapshot 'nope'"):
        run(lambda: repo.resolve("nope"))
    with pytest.raises(VersionNotFoundError):
        run(lambda: repo.resolve("ZZZZZZZZZZZZZZZZZZZZ"))


def test_ambiguous_prefix(open_local, run, local_repo):
    repo = open_local()
    all_ids = run(repo._reachable_snapshots)
    assert len(all_ids) == 4  # the initial snapshot, v1, day1, dev
    by_prefix: dict[str, list[str]] = {}
    for sid in all_ids:
        by_prefix.setdefault(sid[:4], []).append(sid)
    for prefix, sids in by_prefix.items():
        if len(sids) > 1:
            with pytest.raises(UsageError, match="ambiguous"):
                run(lambda prefix=prefix: repo.resolve(prefix))
        else:
            assert run(lambda prefix=prefix: repo.resolve(prefix)).snapshot_id == sids[0]


def test_branches_tags_and_history(open_local, run, local_repo):
    _path, built = local_repo
    repo = open_local()
    assert run(repo.branches) == {"dev": built.snapshots["dev"], "main": built.snapshots["day1"]}
    assert run(repo.tags) == {"v1": built.snapshots["v1"]}

    async def history(version: str, limit: int | None = None) -> list:
        return [c async for c in repo.history(version, limit)]

    main = run(lambda: history("main"))
    direct = [s.id for s in repo.ic.ancestry(branch="main")]
    assert [c.id for c in main] == direct
    assert [c.id for c in main[:2]] == [built.snapshots["day1"], built.snapshots["v1"]]
    assert main[0].message == "day 1: sst from day01.nc" and main[0].metadata["day"] == 1
    assert len(run(lambda: history("dev", 1))) == 1


def test_diff(open_local, run):
    repo = open_local()
    d = run(lambda: repo.diff("v1", "main"))
    assert d.updated_chunks == {"/sst": 4} and not d.new_arrays
    d2 = run(lambda: repo.diff("v1", "dev"))
    assert d2.new_arrays == ["/dev_only"]
    assert run(lambda: repo.diff("main", "main")).empty


def test_open_missing_repository(run, tmp_path):
    with pytest.raises(NotFoundError, match="no Icechunk repository"):
        run(lambda: Repo.open(parse_repo_url(str(tmp_path / "none"))))
