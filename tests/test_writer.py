"""Writes through the repository layer, read back by icechunk and zarr directly."""

from __future__ import annotations

import datetime
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

from vchunkfs.errors import ConflictError, InvalidInputError, UsageError
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
