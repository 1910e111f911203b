"""Writes through the repository layer, read back by icechunk and zarr directly."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import zarr
from datasets import (
    SST_V3_METADATA,
    chunk_refs,
    last_modified,
    local_container,
    read_h5,
    write_sources,
)

from vchunkfs.errors import (
    BackendError,
    CommitOutcomeUnknownError,
    ConflictError,
    InvalidInputError,
    UsageError,
)
from vchunkfs.repository import Authorization, Repo, parse_repo_url
from vchunkfs.repository.writer import (
    Writer,
    create_branch,
    create_tag,
    delete_branch,
    delete_tag,
    reset_branch,
)

SST_META = SST_V3_METADATA


@pytest.fixture
def fresh(tmp_path: Path, run):
    """A new repository made by vchunkfs, with a file:// container over the sources."""
    sources = write_sources(tmp_path / "src")
    container = local_container(tmp_path / "src")
    auth = Authorization.load([container.url_prefix], environ={})
    repo = run(lambda: Repo.create(parse_repo_url(str(tmp_path / "repo")),
                                   containers=[container], authorization=auth))
    return repo, sources, container.url_prefix


def icechunk_read(path: Path, prefix: str, branch: str = "main") -> zarr.Group:
    repo = ic.Repository.open(ic.local_filesystem_storage(str(path)),
                              authorize_virtual_chunk_access=ic.containers_credentials(
                                  {prefix: ic.credentials.LocalFileSystemAccess}))
    return zarr.open_group(repo.readonly_session(branch).store, mode="r")


def test_metadata_refs_commit_read_back_by_icechunk(fresh, run, tmp_path):
    repo, sources, prefix = fresh
    w = run(lambda: Writer.open(repo, "main"))
    run(lambda: w.set_group("", {"title": "made by vchunkfs"}))
    run(lambda: w.set_metadata("sst", SST_META))
    for r in chunk_refs(sources[0], "sst", "sst"):
        run(lambda r=r: w.set_virtual_ref(r.key, r.location, r.offset, r.length,
                                          checksum=last_modified(sources[0])))
    sid = run(lambda: w.commit("sst from day00", {"source": "test"}))
    g = icechunk_read(tmp_path / "repo", prefix)
    np.testing.assert_array_equal(g["sst"][:], read_h5(sources[0], "sst"))
    assert g.attrs["title"] == "made by vchunkfs"
    info = next(iter(repo.ic.ancestry(branch="main")))
    assert (info.id, info.message) == (sid, "sst from day00")
    assert info.metadata["source"] == "test"


def test_vectorized_refs(fresh, run, tmp_path):
    repo, sources, prefix = fresh
    refs = chunk_refs(sources[1], "sst", "sst")
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_metadata("sst", SST_META))
    run(lambda: w.set_virtual_refs_arr(
        "sst", (4, 1, 1, 1), [r.location for r in refs],
        np.array([r.offset for r in refs], dtype="u8"),
        np.array([r.length for r in refs], dtype="u8")))
    run(lambda: w.commit("vectorized"))
    np.testing.assert_array_equal(icechunk_read(tmp_path / "repo", prefix)["sst"][:],
                                  read_h5(sources[1], "sst"))


def test_native_chunks_and_delete(fresh, run, tmp_path):
    repo, _sources, prefix = fresh
    w = run(lambda: Writer.open(repo))
    meta = dict(SST_META, shape=[4], data_type="uint8", fill_value=0, dimension_names=None,
                chunk_grid={"name": "regular", "configuration": {"chunk_shape": [2]}},
                codecs=[{"name": "bytes"}], attributes={})
    run(lambda: w.set_metadata("bytes", meta))
    run(lambda: w.set_chunk("bytes/c/0", bytes([5, 6])))
    run(lambda: w.set_chunk("bytes/c/1", bytes([7, 8])))
    run(lambda: w.commit("native"))
    assert list(icechunk_read(tmp_path / "repo", prefix)["bytes"][:]) == [5, 6, 7, 8]
    run(lambda: w.delete("bytes/c/1"))
    run(lambda: w.commit("delete a chunk"))
    assert list(icechunk_read(tmp_path / "repo", prefix)["bytes"][:]) == [5, 6, 0, 0]
    run(lambda: w.delete("bytes"))
    run(lambda: w.commit("delete the array"))
    assert "bytes" not in icechunk_read(tmp_path / "repo", prefix)


def test_bad_requests_change_nothing(fresh, run):
    repo, sources, _prefix = fresh
    w = run(lambda: Writer.open(repo))
    with pytest.raises(InvalidInputError, match="outside every virtual chunk container"):
        run(lambda: w.set_virtual_ref("sst/c/0/0/0/0", "file:///etc/passwd", 0, 10))
    with pytest.raises(InvalidInputError, match="Zarr v3"):
        run(lambda: w.set_metadata("x", {"zarr_format": 2}))
    with pytest.raises(InvalidInputError, match="length > 0"):
        run(lambda: w.set_virtual_ref("sst/c/0/0/0/0", sources[0].as_uri(), 0, 0))
    assert not w.has_changes
    with pytest.raises(UsageError, match="nothing to commit"):
        run(lambda: w.commit("empty"))


def test_containers_need_trailing_slash_and_persist(fresh, run, tmp_path):
    repo, _sources, prefix = fresh
    with pytest.raises(UsageError, match="must end with '/'"):
        run(lambda: repo.set_container(ic.VirtualChunkContainer(
            "s3://bucket/data", ic.s3_store(region="us-east-1"))))
    run(lambda: repo.set_container(ic.VirtualChunkContainer(
        "s3://bucket/data/", ic.s3_store(region="us-east-1"), name="data")))
    stored = ic.Repository.fetch_config(ic.local_filesystem_storage(str(tmp_path / "repo")))
    assert stored is not None
    assert set(stored.virtual_chunk_containers or {}) == {prefix, "s3://bucket/data/"}
    run(lambda: repo.remove_container("s3://bucket/data/"))
    stored = ic.Repository.fetch_config(ic.local_filesystem_storage(str(tmp_path / "repo")))
    assert stored is not None
    assert set(stored.virtual_chunk_containers or {}) == {prefix}


def test_named_container_vcc_refs(fresh, run, tmp_path):
    repo, sources, prefix = fresh
    run(lambda: repo.set_container(ic.VirtualChunkContainer(
        prefix, ic.local_filesystem_store(str(tmp_path / "src")), name="src")))
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_metadata("sst", SST_META))
    for r in chunk_refs(sources[0], "sst", "sst"):
        rel = "vcc://src/" + r.location[len(prefix):]
        run(lambda r=r, rel=rel: w.set_virtual_ref(r.key, rel, r.offset, r.length))
    with pytest.raises(InvalidInputError, match="no virtual chunk container named"):
        run(lambda: w.set_virtual_ref("sst/c/0/0/0/0", "vcc://other/x.nc", 0, 4))
    run(lambda: w.commit("relative refs"))
    view = run(lambda: repo.view("main"))
    meta_ok = run(lambda: view.stat("sst/c/3/0/0/0"))
    assert meta_ok is not None
    np.testing.assert_array_equal(icechunk_read(tmp_path / "repo", prefix)["sst"][:],
                                  read_h5(sources[0], "sst"))


def test_conflict_and_rebase(fresh, run):
    repo, _sources, _prefix = fresh
    meta = dict(SST_META, shape=[4], data_type="uint8", fill_value=0, dimension_names=None,
                chunk_grid={"name": "regular", "configuration": {"chunk_shape": [1]}},
                codecs=[{"name": "bytes"}], attributes={})
    setup = run(lambda: Writer.open(repo))
    run(lambda: setup.set_metadata("a", meta))
    run(lambda: setup.commit("array a"))
    w1 = run(lambda: Writer.open(repo))
    w2 = run(lambda: Writer.open(repo))
    w3 = run(lambda: Writer.open(repo))
    run(lambda: w1.set_chunk("a/c/0", b"\x01"))
    run(lambda: w2.set_chunk("a/c/1", b"\x02"))  # different chunk: rebased
    run(lambda: w3.set_chunk("a/c/0", b"\x03"))  # same chunk: conflict
    s1 = run(lambda: w1.commit("one"))
    s2 = run(lambda: w2.commit("two"))
    with pytest.raises(ConflictError, match="overlap"):
        run(lambda: w3.commit("three"))
    history = [c.id for c in repo.ic.ancestry(branch="main")]
    assert history[:2] == [s2, s1]
    view = run(lambda: repo.view("main"))
    assert run(lambda: view.read("a/c/0")) == b"\x01"
    assert run(lambda: view.read("a/c/1")) == b"\x02"
    # the loser redoes its change on the new head and lands
    run(lambda: w3.discard())
    run(lambda: w3.set_chunk("a/c/0", b"\x03"))
    s3 = run(lambda: w3.commit("three, redone"))
    assert next(iter(repo.ic.ancestry(branch="main"))).id == s3


def test_branches_and_tags(fresh, run):
    repo, _s, _p = fresh
    first = run(lambda: repo.resolve("main")).snapshot_id
    run(lambda: create_branch(repo, "exp"))
    run(lambda: create_tag(repo, "t0", "exp"))
    w = run(lambda: Writer.open(repo, "exp"))
    run(lambda: w.set_group("g"))
    moved = run(lambda: w.commit("on exp"))
    assert run(repo.branches)["exp"] == moved
    assert run(repo.tags) == {"t0": first}
    with pytest.raises(UsageError, match="already exists"):
        run(lambda: create_tag(repo, "t0", "main"))
    with pytest.raises(UsageError, match="invalid"):
        run(lambda: create_branch(repo, "a/b"))
    run(lambda: reset_branch(repo, "exp", "t0"))
    assert run(repo.branches)["exp"] == first
    run(lambda: delete_tag(repo, "t0"))
    run(lambda: delete_branch(repo, "exp"))
    assert set(run(repo.branches)) == {"main"} and run(repo.tags) == {}
    with pytest.raises(UsageError):
        run(lambda: delete_branch(repo, "main"))


def test_checksum_types(fresh, run):
    """Both forms of the changed-source check are accepted: an ETag string and a time."""
    repo, sources, _prefix = fresh
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_metadata("sst", SST_META))
    r = chunk_refs(sources[0], "sst", "sst")[0]
    run(lambda: w.set_virtual_ref(r.key, r.location, r.offset, r.length, checksum="etag-1"))
    run(lambda: w.set_virtual_ref(r.key, r.location, r.offset, r.length,
                                  checksum=datetime.datetime.now(datetime.UTC)))
    assert w.has_changes


class _FailingEngine:
    """The icechunk repository as a flaky backend makes it: every call a StorageError."""

    async def list_branches_async(self) -> set[str]:
        raise ic.StorageError("injected: connection closed before message completed")

    async def writable_session_async(self, branch: str) -> ic.Session:
        raise ic.StorageError("injected: connection closed before message completed")


def test_a_backend_error_opening_a_writer_is_a_backend_error(fresh, run):
    """Found by the fault run on moto: the control socket logged the engine's own
    StorageError as an unexpected error with a traceback."""
    from vchunkfs.errors import BackendError
    repo = fresh[0]
    real = repo.ic
    repo.ic = _FailingEngine()  # type: ignore[assignment]
    try:
        with pytest.raises(BackendError, match="opening a session on branch main"):
            run(lambda: Writer.open(repo))
    finally:
        repo.ic = real


# -- commits whose reply is lost: S3 on moto behind the fault proxy -------------------
# icechunk moves a branch with one conditional PUT (tests/servers.py moves_a_branch).
# If that PUT's reply is lost and every retry fails, icechunk raises although the
# branch moved; if the PUT never reached the store, the commit did not land.

_ARRAY = {
    "zarr_format": 3, "node_type": "array", "shape": [8], "data_type": "uint8",
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
    "chunk_key_encoding": {"name": "default"}, "fill_value": 0, "codecs": [{"name": "bytes"}],
    "attributes": {},
}


@pytest.fixture
def s3_proxied(run, monkeypatch):
    """A repository on moto reached through a FaultProxy (passing until told); the
    repository-layer Repo over the proxy with a 2 s call deadline, and a function
    giving the branch's history read straight from moto as (id, metadata) pairs."""
    from servers import fault_proxy, moto_s3_server

    from vchunkfs.repository import StorageOptions

    with moto_s3_server() as s3, fault_proxy((s3.host, s3.port)) as proxy:
        for k, v in (("AWS_ACCESS_KEY_ID", s3.access_key_id),
                     ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key),
                     ("AWS_REGION", s3.region)):
            monkeypatch.setenv(k, v)
        s3.create_bucket("repos")
        direct = ic.s3_storage(bucket="repos", prefix="r", region=s3.region,
                               endpoint_url=s3.endpoint_url, allow_http=True,
                               force_path_style=True, from_env=True)
        ic.Repository.create(direct)
        # icechunk's own retries shortened (10 tries take 30 s or more to give up)
        config = ic.RepositoryConfig.default()
        config.storage = ic.StorageSettings(retries=ic.StorageRetriesSettings(
            max_tries=3, initial_backoff_ms=50, max_backoff_ms=200))
        repo = run(lambda: Repo.open(parse_repo_url("s3://repos/r"), config=config,
                                     storage_options=StorageOptions.from_env(
                                         endpoint_url=proxy.url)))
        repo.caches.call_timeout = 2.0
        w = run(lambda: Writer.open(repo))
        run(lambda: w.set_metadata("a", _ARRAY))
        run(lambda: w.commit("array a"))

        class History:
            """The branch's history read straight from moto: (id, metadata) pairs."""

            storage = direct

            def __call__(self, branch: str = "main") -> list[tuple[str, dict]]:
                r = ic.Repository.open(direct)
                return [(i.id, i.metadata) for i in r.ancestry(branch=branch)]

        yield repo, proxy, History()


def _lose_branch_updates(proxy, first: str = "reset", then: str = "drop",
                         others: str | None = None) -> list[str]:
    """Fault every branch update: the first one ``first`` (``reset``: forwarded, its reply
    cut), the rest (icechunk's retries) ``then``; every other request ``others`` once
    a branch update was seen (None: passed). Returns the request lines seen."""
    from servers import Fault, moves_a_branch

    seen: list[str] = []

    def schedule(line: str):
        seen.append(line)
        updates = sum(1 for s in seen if moves_a_branch(s))
        if moves_a_branch(line):
            return Fault(first if updates == 1 else then, cut=0)
        if others is not None and updates:
            return Fault(others)
        return None

    proxy.request_schedule = schedule
    return seen


def test_a_commit_whose_reply_is_lost_is_reported_landed(s3_proxied, run, caplog):
    from servers import moves_a_branch

    from vchunkfs.repository.writer import COMMIT_TOKEN_KEY
    repo, proxy, history = s3_proxied
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_chunk("a/c/0", b"\x07"))
    seen = _lose_branch_updates(proxy)
    with caplog.at_level(logging.WARNING, "vchunkfs.writer"):
        sid = run(lambda: w.commit("lost reply", {"who": "test"}))
    assert "landed although the commit call failed" in caplog.text
    proxy.request_schedule = None
    assert sum(1 for s in seen if moves_a_branch(s)) > 1  # icechunk retried, then gave up
    (head, meta), *_ = history()
    assert sid == head  # the snapshot reported is the one that landed
    assert meta["who"] == "test" and len(meta[COMMIT_TOKEN_KEY]) == 32
    # the writer moved on as after any commit: nothing staged, based on the new head
    assert not w.has_changes and w.base_snapshot == sid and not w.spent
    run(lambda: w.set_chunk("a/c/1", b"\x09"))
    sid2 = run(lambda: w.commit("after the lost reply"))
    ids = [i for i, _ in history()]
    assert ids[:2] == [sid2, sid]
    g = zarr.open_group(ic.Repository.open(history.storage).readonly_session("main").store,
                        mode="r")
    assert list(g["a"][:3]) == [7, 9, 0]


def test_a_commit_found_under_a_racing_commit(s3_proxied, run, caplog):
    """Another writer commits on top of the commit whose reply was lost before the
    writer looks: the commit is found below the racer's, and reported."""
    from servers import Fault, moves_a_branch
    repo, proxy, history = s3_proxied
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_chunk("a/c/0", b"\x07"))
    updates = 0

    def schedule(line: str) -> Fault | None:
        nonlocal updates
        if not moves_a_branch(line):
            return None
        updates += 1
        if updates == 1:  # ours lands, its reply is cut
            return Fault("reset", cut=0)
        if updates == 2:  # before icechunk's first retry: a racer commits on top of ours,
            # straight to moto (so before the writer gives up and looks)
            s = ic.Repository.open(history.storage).writable_session("main")
            zarr.open_group(s.store, mode="r+").attrs["racer"] = True
            s.commit("racer")
        return Fault("drop")  # the retries never arrive

    proxy.request_schedule = schedule
    with caplog.at_level(logging.WARNING, "vchunkfs.writer"):
        sid = run(lambda: w.commit("lost reply under a racer"))
    proxy.request_schedule = None
    (racer_id, racer_meta), (ours, our_meta), *_ = history()
    assert "vchunkfs:commit_token" not in racer_meta and "vchunkfs:commit_token" in our_meta
    assert sid == ours != racer_id
    assert f"commit {sid} on main landed although the commit call failed" in caplog.text
    assert not w.has_changes and w.base_snapshot == racer_id  # the next session: the head


def test_a_commit_that_never_reached_the_store_fails(s3_proxied, run):
    """The branch update never reaches moto: an error, the head unchanged, the staged
    changes kept (committing again, without faults, lands them)."""
    repo, proxy, history = s3_proxied
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_chunk("a/c/0", b"\x07"))
    before = history()
    _lose_branch_updates(proxy, first="drop")
    with pytest.raises(BackendError, match="commit to main failed") as e:
        run(lambda: w.commit("never lands"))
    proxy.request_schedule = None
    assert not isinstance(e.value, CommitOutcomeUnknownError)
    assert history() == before
    assert w.has_changes
    sid = run(lambda: w.commit("lands"))
    assert history()[0][0] == sid and history()[1:] == before


def test_a_commit_whose_outcome_cannot_be_read_is_unknown(s3_proxied, run):
    """The reply is lost and then nothing reaches moto: neither success nor failure."""
    repo, proxy, history = s3_proxied
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_chunk("a/c/0", b"\x07"))
    _lose_branch_updates(proxy, others="drop")
    with pytest.raises(CommitOutcomeUnknownError,
                       match=r"may or may not have landed.*vchunkfs:commit_token=[0-9a-f]{32}"):
        run(lambda: w.commit("unknown"))
    proxy.request_schedule = None
    token = history()[0][1]["vchunkfs:commit_token"]  # it had landed
    assert len(token) == 32
