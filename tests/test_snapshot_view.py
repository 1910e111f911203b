"""The snapshot view against an icechunk-written repository, checked with h5py."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import zarr
from datasets import FIELD_CHUNKS, SST_SHAPE, build_repo, read_h5
from zarr.core.buffer import default_buffer_prototype
from zarr.core.dtype import parse_dtype

from vchunkfs.errors import (
    NotFoundError,
    SourceChangedError,
    SourceMissingError,
    UnauthorizedContainerError,
)
from vchunkfs.repository import Authorization, Repo, parse_repo_url


def decode_chunk(meta: dict, raw: bytes) -> np.ndarray:
    """Decode one chunk's stored bytes with zarr's codec pipeline, from its metadata alone."""
    from zarr.core.array import ArrayV3Metadata
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.codec_pipeline import BatchedCodecPipeline
    from zarr.core.sync import sync

    md = ArrayV3Metadata.from_dict(meta)
    shape = tuple(md.chunk_grid.chunk_shape)  # type: ignore[attr-defined]
    spec = ArraySpec(shape=shape, dtype=parse_dtype(md.data_type, zarr_format=3),
                     fill_value=md.fill_value, config=ArrayConfig.from_dict({}),
                     prototype=default_buffer_prototype())
    pipeline = BatchedCodecPipeline.from_codecs(md.codecs)
    buf = default_buffer_prototype().buffer.from_bytes(raw)
    (out,) = sync(pipeline.decode([(buf, spec)]))
    return out.as_numpy_array()


def test_node_tree_and_metadata(open_local, run, local_repo):
    repo = open_local()
    view = run(lambda: repo.view("v1"))
    assert set(view.nodes) == {"", "sst", "field", "native", "grp", "grp/small"}
    assert view.node("").children == ("field", "grp", "native", "sst")
    root_meta = json.loads(run(lambda: view.read("zarr.json")))
    assert root_meta["attributes"]["title"] == "vchunkfs test"
    sst_meta = json.loads(run(lambda: view.read("sst/zarr.json")))
    assert sst_meta["shape"] == list(SST_SHAPE)
    # the document is served byte for byte as icechunk stores it
    direct = zarr.open_array(run(lambda: repo.ic.readonly_session_async(tag="v1")).store,
                             path="sst", mode="r")
    assert list(direct.metadata.to_dict()["shape"]) == sst_meta["shape"]
    assert direct.metadata.to_dict()["codecs"][1]["name"] == sst_meta["codecs"][1]["name"]
    entry = run(lambda: view.stat("sst/zarr.json"))
    assert entry is not None and entry.size == len(run(lambda: view.read("sst/zarr.json")))


@pytest.mark.parametrize("label,source_index", [("v1", 0), ("main", 1)])
def test_chunk_values_equal_h5py(open_local, run, local_repo, label, source_index):
    _path, built = local_repo
    repo = open_local()
    view = run(lambda: repo.view(label))
    meta = json.loads(run(lambda: view.read("sst/zarr.json")))
    expected = read_h5(built.sources[source_index], "sst")
    for t in range(SST_SHAPE[0]):
        raw = run(lambda t=t: view.read(f"sst/c/{t}/0/0/0"))
        np.testing.assert_array_equal(decode_chunk(meta, raw), expected[t:t + 1])


def test_sizes_equal_ref_lengths(open_local, run, local_repo):
    _path, built = local_repo
    repo = open_local()
    view = run(lambda: repo.view("v1"))
    for ref in built.refs["v1"]:
        entry = run(lambda ref=ref: view.stat(ref.key))
        assert entry is not None and entry.size == ref.length, ref.key
        assert len(run(lambda ref=ref: view.read(ref.key))) == ref.length


def test_multichunk_float_array_equals_h5py(open_local, run, local_repo):
    _path, built = local_repo
    repo = open_local()
    view = run(lambda: repo.view("v1"))
    meta = json.loads(run(lambda: view.read("field/zarr.json")))
    expected = read_h5(built.sources[0], "field")
    rows = {e.name for e in run(lambda: view.list_dir("field/c"))}
    assert rows == {"0", "1", "2", "3"}
    for i in range(4):
        for j in range(3):
            raw = run(lambda i=i, j=j: view.read(f"field/c/{i}/{j}"))
            block = decode_chunk(meta, raw)
            r0, c0 = i * FIELD_CHUNKS[0], j * FIELD_CHUNKS[1]
            want = expected[r0:r0 + FIELD_CHUNKS[0], c0:c0 + FIELD_CHUNKS[1]]
            np.testing.assert_array_equal(block[: want.shape[0], : want.shape[1]], want)


def test_native_and_inline_chunks(open_local, run):
    repo = open_local()
    view = run(lambda: repo.view("main"))
    native = np.frombuffer(run(lambda: view.read("native/c/1")), dtype="<i4")
    np.testing.assert_array_equal(native, np.arange(250, 500))
    assert [e.name for e in run(lambda: view.list_dir("grp/small/c"))] == ["0", "1"]
    assert run(lambda: view.read("grp/small/c/1")) == bytes([3, 4])
    assert run(lambda: view.stat("grp/small/c/2")) is None  # never written: readers use fill


def test_listing_directories(open_local, run):
    repo = open_local()
    view = run(lambda: repo.view("v1"))
    names = [(e.name, e.is_dir) for e in run(lambda: view.list_dir(""))]
    assert names == [("field", True), ("grp", True), ("native", True), ("sst", True),
                     ("zarr.json", False)]
    assert [e.name for e in run(lambda: view.list_dir("sst"))] == ["c", "zarr.json"]
    assert [e.name for e in run(lambda: view.list_dir("sst/c/2/0/0"))] == ["0"]
    with pytest.raises(NotFoundError):
        run(lambda: view.list_dir("nope"))
    # non-canonical and out-of-grid spellings name nothing
    assert run(lambda: view.stat("sst/c/01/0/0/0")) is None
    assert run(lambda: view.stat("sst/c/4/0/0/0")) is None
    assert run(lambda: view.stat("sst/c/0/0/0/0/0")) is None


def test_probing_and_index_agree(open_local, run):
    """Large arrays are listed by probing getsize, small ones from a full index."""
    repo = open_local()
    repo.caches.index_max_chunks = 0  # force probing
    probed = run(lambda: repo.view("v1"))
    by_probe = run(lambda: probed.list_dir("field/c/2"))
    repo2 = open_local()
    indexed = run(lambda: repo2.view("v1"))
    by_index = run(lambda: indexed.list_dir("field/c/2"))
    assert by_probe == by_index and len(by_index) == 3
    assert not repo.caches.indexes and repo2.caches.indexes


def test_unauthorized_container_gives_error_naming_prefix(open_local, run, local_repo):
    _path, built = local_repo
    repo = open_local(authorize=False)
    view = run(lambda: repo.view("v1"))
    with pytest.raises(UnauthorizedContainerError) as e:
        run(lambda: view.read("sst/c/0/0/0/0"))
    assert built.container_prefix in str(e.value) and "--authorize" in str(e.value)
    # metadata and sizes need no authorization; they come from the repository itself
    assert run(lambda: view.stat("sst/c/0/0/0/0")) is not None


def test_modified_and_missing_sources_never_give_bytes(tmp_path, run):
    built = build_repo(__import__("icechunk").local_filesystem_storage(str(tmp_path / "repo")),
                       tmp_path / "src")
    auth = Authorization.load([built.container_prefix], environ={})
    repo = run(lambda: Repo.open(parse_repo_url(str(tmp_path / "repo")), authorization=auth))
    view = run(lambda: repo.view("main"))
    assert run(lambda: view.read("sst/c/0/0/0/0"))  # readable before the change
    # a rewrite of the source after the refs were recorded
    src = built.sources[1]
    st = src.stat()
    os.utime(src, (st.st_atime, st.st_mtime + 5))
    with pytest.raises(SourceChangedError) as e:
        run(lambda: view.read("sst/c/0/0/0/0"))
    assert "day01.nc" in str(e.value)
    # a source that disappeared
    shutil.move(built.sources[0], tmp_path / "moved.nc")
    with pytest.raises(SourceMissingError) as e2:
        run(lambda: view.read("field/c/0/0"))
    assert "day00.nc" in str(e2.value)


def test_chunk_stats(open_local, run, local_repo):
    _path, built = local_repo
    repo = open_local()
    view = run(lambda: repo.view("main"))
    prefixes = [c.url_prefix for c in repo.containers()]
    assert prefixes == [built.container_prefix]
    sst = run(lambda: view.chunk_stats("sst", prefixes))
    assert (sst.stored, sst.virtual, sst.grid_chunks) == (4, 4, 4)
    assert sst.containers == {built.container_prefix: 4}
    assert sst.bytes_total == sum(r.length for r in built.refs["day1"] if r.key.startswith("sst"))
    native = run(lambda: view.chunk_stats("native", prefixes))
    assert (native.native, native.virtual, native.inline) == (4, 0, 0)
    small = run(lambda: view.chunk_stats("grp/small", prefixes))
    assert (small.inline, small.stored, small.grid_chunks) == (2, 2, 3)


def test_view_of_missing_node(open_local, run):
    repo = open_local()
    view = run(lambda: repo.view("v1"))
    assert run(lambda: view.stat("dev_only")) is None
    assert run(lambda: view.resolve("grp/small/zarr.json")) is not None


def test_empty_repository_is_an_empty_directory(run, tmp_path):
    repo = run(lambda: Repo.create(parse_repo_url(str(tmp_path / "r"))))
    view = run(lambda: repo.view("main"))
    assert run(lambda: view.list_dir("")) == []
    assert run(lambda: view.stat("zarr.json")) is None
    assert run(lambda: view.stat("")) is not None


def test_stat_known_agrees_with_stat(open_local, run):
    """The I/O-free answer, where it gives one, is the same as stat's."""
    from vchunkfs.repository.snapshot import Unknown

    repo = open_local()
    view = run(lambda: repo.view("v1"))
    keys = ["", "sst", "sst/c", "sst/c/1", "sst/c/1/0/0", "sst/c/1/0/0/0", "sst/c/9",
            "sst/zarr.json", "nope", "grp/small/c/2", "grp/zarr.json", "field/c/3/2"]
    assert isinstance(view.stat_known("sst/c/1"), Unknown)  # the grid is not loaded yet
    for k in keys:
        run(lambda k=k: view.stat(k))
    answered = 0
    for k in keys:
        known = view.stat_known(k)
        if not isinstance(known, Unknown):
            answered += 1
            assert known == run(lambda k=k: view.stat(k)), k
    assert answered >= 8


def test_ranges_at_and_past_the_end_of_a_native_chunk_are_short(open_local, run):
    """icechunk refuses a byte range past a native or inline chunk's end; the view
    answers as for any file: the bytes there are, or none."""
    repo = open_local()
    view = run(lambda: repo.view("v1"))
    whole = run(lambda: view.read("native/c/0"))
    n = len(whole)
    assert run(lambda: view.read("native/c/0", 0, n + 100)) == whole
    assert run(lambda: view.read("native/c/0", n - 3, 10)) == whole[-3:]
    assert run(lambda: view.read("native/c/0", n, 10)) == b""
    assert run(lambda: view.read("native/c/0", n + 50, 10)) == b""
