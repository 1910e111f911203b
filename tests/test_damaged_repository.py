"""Manifests and snapshots missing, truncated or overwritten with random bytes, on local
disk and on the moto S3 server: the chunk files and directories concerned give EIO with
a log line naming the object, never ENOENT or fill values, and reads recover once the
objects are back.

icechunk keeps the manifests and snapshots it has read in memory, per Repository, so
every case starts a fresh daemon and damages the objects before the daemon's first
look at them: the mount's root (main) opens its snapshot at start but reads no manifest
before the first stat of a chunk; tag v1's snapshot is read on the first lookup of
``.vchunkfs/tags/v1``.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import zarr
from datasets import BuiltRepo, Ref, build_repo, read_h5
from mounting import mounted
from servers import S3Endpoint, moto_s3_server

from vchunkfs.errors import BackendError, NotFoundError, SourceMissingError
from vchunkfs.fs.namespace import errno_for
from vchunkfs.repository.snapshot import Node, SnapshotView, ViewCaches, _translate

pytestmark = pytest.mark.timeout(300)
MODES = ("missing", "truncated", "random")
CHUNK = "sst/c/1/0/0/0"


@dataclass
class Backend:
    """Where the repository's objects live, and how to damage and restore them."""

    local: Path  # the repository as written, whole: the objects' names and bytes
    url: str  # the damaged copy's URL
    options: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    write: Callable[[str, bytes], None] = lambda rel, data: None
    delete: Callable[[str], None] = lambda rel: None


def pread(ref: Ref) -> bytes:
    with open(ref.location.removeprefix("file://"), "rb") as f:
        return os.pread(f.fileno(), ref.length, ref.offset)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuiltRepo]:
    base = tmp_path_factory.mktemp("damaged")
    return base / "repo", build_repo(ic.local_filesystem_storage(str(base / "repo")),
                                     base / "src")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3_server() as endpoint:
        yield endpoint


def local_backend(whole: Path, copy: Path, built: BuiltRepo) -> Backend:
    shutil.copytree(whole, copy)

    def write(rel: str, data: bytes) -> None:
        (copy / rel).write_bytes(data)

    def delete(rel: str) -> None:
        (copy / rel).unlink()

    return Backend(whole, str(copy), (f"authorize={built.container_prefix}",),
                   write=write, delete=delete)


def s3_backend(s3: S3Endpoint, repo: Path, built: BuiltRepo, name: str) -> Backend:
    s3.create_bucket(name)
    s3.upload_tree(name, "r", repo)
    env = {"AWS_ACCESS_KEY_ID": s3.access_key_id,
           "AWS_SECRET_ACCESS_KEY": s3.secret_access_key, "AWS_REGION": s3.region}
    return Backend(repo, f"s3://{name}/r", (f"endpoint_url={s3.endpoint_url}",
                                           f"authorize={built.container_prefix}"), env,
                   write=lambda rel, data: s3.put_object(name, f"r/{rel}", data),
                   delete=lambda rel: s3.delete_object(name, f"r/{rel}"))


def damage(backend: Backend, rels: list[str], mode: str) -> None:
    rng = np.random.default_rng(7)
    for rel in rels:
        data = (backend.local / rel).read_bytes()
        if mode == "missing":
            backend.delete(rel)
        elif mode == "truncated":
            backend.write(rel, data[:len(data) // 2])
        else:
            backend.write(rel, rng.bytes(len(data)))


def restore(backend: Backend, rels: list[str]) -> None:
    for rel in rels:
        backend.write(rel, (backend.local / rel).read_bytes())


def assert_eio(fn: Callable[[], object]) -> None:
    with pytest.raises(OSError) as e:
        fn()
    assert e.value.errno == errno.EIO, e.value


def check_damaged_then_restored(backend: Backend, built: BuiltRepo, tmp: Path, what: str,
                                mode: str) -> None:
    """Mount, damage ``what`` (all manifests, or tag v1's snapshot), read, restore, read."""
    if what == "manifests":
        rels = [f"manifests/{n}" for n in sorted(os.listdir(backend.local / "manifests"))]
        needles = [n.split("/")[1] for n in rels]
        label, source, sub = "day1", built.sources[1], Path()
    else:
        sid = built.snapshots["v1"]
        rels, needles = [f"snapshots/{sid}"], [sid]
        label, source, sub = "v1", built.sources[0], Path(".vchunkfs", "tags", "v1")
    ref = next(r for r in built.refs[label] if r.key == CHUNK)
    with mounted(backend.url, tmp / "m", *backend.options, env=backend.env) as m:
        base = m.path / sub
        damage(backend, rels, mode)
        try:
            for _ in range(2):  # the second time too: a failure is never cached as absence
                assert_eio(lambda: os.stat(base / CHUNK))
                assert_eio(lambda: (base / CHUNK).read_bytes())
                assert_eio(lambda: os.listdir(base / CHUNK.rsplit("/", 1)[0]))
            with pytest.raises(OSError) as e:  # never an array of fill values
                zarr.open_group(str(base), mode="r")["sst"][1]
            assert e.value.errno == errno.EIO, e.value
            log = m.log_text()
            assert any(n in log for n in needles), log
            assert "object not found" in log or "Src size" in log or "magic" in log or \
                "range" in log.lower(), log
        finally:
            restore(backend, rels)
        # the objects are back: the same reads give the stored bytes
        assert (base / CHUNK).read_bytes() == pread(ref)
        assert os.stat(base / CHUNK).st_size == ref.length
        assert os.listdir(base / CHUNK.rsplit("/", 1)[0]) == ["0"]
        np.testing.assert_array_equal(zarr.open_group(str(base), mode="r")["sst"][:],
                                      read_h5(source, "sst"))
        assert m.proc.poll() is None
    assert "Traceback" not in m.log_text(), m.log_text()


@pytest.mark.parametrize("what", ["manifests", "snapshots"])
@pytest.mark.parametrize("mode", MODES)
def test_local_repository_damaged(built, tmp_path, what, mode):
    path, b = built
    check_damaged_then_restored(local_backend(path, tmp_path / "repo", b), b, tmp_path, what,
                                mode)


@pytest.mark.parametrize(("what", "mode"), [("manifests", "missing"),
                                            ("manifests", "truncated"),
                                            ("manifests", "random"),
                                            ("snapshots", "missing")])
def test_s3_repository_damaged(built, s3, tmp_path, what, mode):
    path, b = built
    backend = s3_backend(s3, path, b, f"r-{what[0]}-{mode}")
    check_damaged_then_restored(backend, b, tmp_path, what, mode)


def test_unreadable_snapshot_is_never_an_empty_array(built, tmp_path, run):
    """icechunk's array_chunk_iterator yields nothing, without an error, when it cannot
    read the array's node (its snapshot gone after it left icechunk's cache): the view
    must not take that for an array without chunks."""
    path, b = built
    repo = tmp_path / "repo"
    shutil.copytree(path, repo)
    sid = b.snapshots["day1"]

    caches = ViewCaches()

    async def nodes() -> dict[str, Node]:  # and the arrays' documents, as if read before
        view = await SnapshotView.open(
            await ic.Repository.open_async(ic.local_filesystem_storage(str(repo))), sid,
            caches)
        for node in view.nodes.values():
            if node.kind == "array":
                await view.grid(node.path)
        return view.nodes

    tree = run(nodes)
    (repo / "snapshots" / sid).rename(repo / "gone")

    async def fresh_view() -> SnapshotView:  # a Repository that never read the snapshot
        r = await ic.Repository.open_async(ic.local_filesystem_storage(str(repo)))
        session = await r.readonly_session_async(snapshot_id=sid)
        return SnapshotView(r, sid, session, tree, caches)

    view = run(fresh_view)
    for key in (CHUNK, "native/c/0", "grp/small/c/0"):
        with pytest.raises(BackendError) as e:
            run(lambda k=key: view.stat(k))
        assert sid in str(e.value)
    with pytest.raises(BackendError):
        run(lambda: view.list_dir("sst/c/1/0/0"))
    (repo / "gone").rename(repo / "snapshots" / sid)
    assert run(lambda: view.stat(CHUNK)) is not None
    assert [e.name for e in run(lambda: view.list_dir("sst/c/1/0/0"))] == ["0"]


def test_no_engine_failure_is_absence():
    """Whatever icechunk's words, a failure is never NotFoundError nor ENOENT; a virtual
    source that is gone is SourceMissingError (EIO)."""
    manifest = ('object not found\n\ncontext:\n   0: icechunk_arrow_object_store::'
                'get_object_range\n           with path="manifests/SJ9BGRAMPJ0Z1NCQE6HG" '
                'range=Some(0..271)\n   1: icechunk::asset_manager::fetch_manifest\n'
                '           with manifest_id=SJ9BGRAMPJ0Z1NCQE6HG manifest_size=271')
    e = _translate(ic.StorageError(manifest), "sst/c/0/0/0/0", "SNAP")
    assert isinstance(e, BackendError) and errno_for(e) == errno.EIO
    assert "manifest SJ9BGRAMPJ0Z1NCQE6HG (manifests/SJ9BGRAMPJ0Z1NCQE6HG)" in str(e)
    for text in ("node not found at `/sst`", "session error: object not found",
                 "ref not found", "Not Found"):
        e = _translate(ic.IcechunkError(text), "k", "SNAP")
        assert not isinstance(e, NotFoundError) and errno_for(e) == errno.EIO, text
    gone = _translate(ic.StorageError("error fetching virtual reference: object at "
                                      "file:///d/x.nc not found"), "k")
    assert isinstance(gone, SourceMissingError) and errno_for(gone) == errno.EIO
    # an absence learned from a failure (chained to an engine error) is EIO too
    try:
        raise NotFoundError("chunk k is not stored") from ic.StorageError("object not found")
    except NotFoundError as chained:
        assert errno_for(chained) == errno.EIO
    assert errno_for(NotFoundError("no file 'x'")) == errno.ENOENT


def test_branch_moved_to_an_unreadable_snapshot(built, tmp_path):
    """The branch a mount follows moves to a snapshot the daemon cannot read: the
    daemon keeps serving the old one, says why, and moves on once it is readable."""
    path, b = built
    repo_path = tmp_path / "repo"
    shutil.copytree(path, repo_path)
    with mounted(repo_path, tmp_path / "m", f"authorize={b.container_prefix}",
                 "poll_interval=0.2") as m:
        head = m.path / ".vchunkfs" / "HEAD"
        assert b.snapshots["day1"] in head.read_text()
        # the writer's Repository keeps the snapshot it wrote in memory, so it moves
        # main to it after the object was damaged
        repo = ic.Repository.open(ic.local_filesystem_storage(str(repo_path)))
        repo.create_branch("side", b.snapshots["day1"])
        s = repo.writable_session("side")
        zarr.open_group(s.store).attrs["moved"] = True
        sid = s.commit("side")
        obj = repo_path / "snapshots" / sid
        whole = obj.read_bytes()
        obj.write_bytes(whole[:len(whole) // 2])
        repo.reset_branch("main", sid)
        time.sleep(1.5)  # several polls
        assert m.proc.poll() is None
        assert b.snapshots["day1"] in head.read_text()  # still the old head
        assert (m.path / CHUNK).read_bytes() == pread(
            next(r for r in b.refs["day1"] if r.key == CHUNK))
        assert sid in m.log_text()
        obj.write_bytes(whole)
        deadline = time.monotonic() + 30
        while sid not in head.read_text():
            assert time.monotonic() < deadline, m.log_text()
            time.sleep(0.1)
        assert zarr.open_group(str(m.path), mode="r").attrs["moved"] is True
    assert "Traceback" not in m.log_text(), m.log_text()
