"""The v2, v2-decoded and v3-decoded presentations, through real mounts.

Values are checked against the netCDF files (xarray on netCDF4, h5py), chunk
bytes against the stored bytes, and Zarr v2 documents against the rules in
docs/SEMANTICS.md. Reading by non-Python programs is in test_readers.py.
"""

from __future__ import annotations

import errno
import json
import os

import icechunk as ic
import numpy as np
import pytest
import xarray as xr
import zarr
from commands import ingest_days
from datasets import assert_reads_like_files, read_h5
from mounting import HELPER, mounted
from zarr.codecs.numcodecs import Zlib

pytestmark = pytest.mark.timeout(300)
DECODED = ("v2-decoded", "v3-decoded")


@pytest.fixture(scope="module")
def month(tmp_path_factory):
    """Four OISST-like days ingested with vchunkfs ingest."""
    return ingest_days(tmp_path_factory.mktemp("month"), 4)


def test_every_presentation_reads_like_the_files(month, tmp_path):
    repo, prefix, files = month
    with mounted(repo, tmp_path / "m", f"authorize={prefix}", "presentation=all") as m:
        assert sorted(os.listdir(m.path)) == ["v2", "v2-decoded", "v3", "v3-decoded"]
        for name in ("v3", "v2", *DECODED):
            assert_reads_like_files(m.path / name, files, zarr_format=3 if "v3" in name else 2)
        for name in ("v2", "v2-decoded"):  # consolidated metadata alone opens the dataset
            ds = xr.open_zarr(m.path / name, consolidated=True, zarr_format=2, chunks=None)
            assert ds.sst.shape[0] == 4 and set(ds.data_vars) == {"sst", "anom", "err", "ice"}
        zattrs = json.loads((m.path / "v2" / "sst" / ".zattrs").read_text())
        assert zattrs["_ARRAY_DIMENSIONS"] == ["time", "zlev", "lat", "lon"]
        assert zattrs["_FillValue"] == -999
        zarray = json.loads((m.path / "v2" / "sst" / ".zarray").read_text())
        assert (zarray["filters"], zarray["compressor"]) == (
            [{"id": "shuffle", "elementsize": 2}], {"id": "zlib", "level": 4})
        plain = json.loads((m.path / "v2-decoded" / "sst" / ".zarray").read_text())
        assert (plain["filters"], plain["compressor"], plain["dtype"]) == (None, None, "<i2")
        v3 = json.loads((m.path / "v3-decoded" / "sst" / "zarr.json").read_text())
        assert v3["codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}}]
        # every branch, tag and snapshot offers every presentation
        main = m.path / ".vchunkfs" / "branches" / "main"
        assert sorted(os.listdir(main)) == sorted(os.listdir(m.path))
        assert (main / "v2-decoded" / "sst" / "3.0.0.0").stat().st_size == 2 * 180 * 360
    assert "Traceback" not in m.log_text(), m.log_text()


def test_decoded_chunks_are_the_values_h5py_reads(month, tmp_path):
    repo, prefix, files = month
    with mounted(repo, tmp_path / "m", f"authorize={prefix}", "presentation=v2+all") as m:
        for day, path in enumerate(files):
            for var in ("sst", "ice"):
                want = read_h5(path, var).astype("<i2").tobytes()
                v2 = m.path / "v2-decoded" / var / f"{day}.0.0.0"
                v3 = m.path / "v3-decoded" / var / "c" / str(day) / "0" / "0" / "0"
                assert v2.stat().st_size == v3.stat().st_size == len(want)
                assert v2.read_bytes() == v3.read_bytes() == want, (path, var)
                # raw v2 keys carry the stored bytes, the same as v3's
                raw = (m.path / "v2" / var / f"{day}.0.0.0").read_bytes()
                assert raw == (m.path / "v3" / var / "c" / str(day) / "0/0/0").read_bytes()
                assert len(raw) < len(want)
        # reading day after day, the daemon fetched (and decoded) the next chunks ahead
        assert json.loads(os.getxattr(m.path, "user.vchunkfs.stats"))["prefetched"] > 0


def test_small_chunks_fill_values_and_versions(local_repo, tmp_path):
    """The unit repository: partial edge chunks, native and inline chunks, a missing chunk,
    nested groups, tags and branches; one presentation, so no presentation directories."""
    path, built = local_repo
    with mounted(path, tmp_path / "m", f"authorize={built.container_prefix}",
                 "presentation=decoded") as m:
        root = m.path
        assert sorted(os.listdir(root)) == [".zattrs", ".zgroup", ".zmetadata", "field",
                                            "grp", "native", "sst"]
        g = zarr.open_group(root, mode="r", zarr_format=2)
        field = np.asarray(g["field"][...])
        np.testing.assert_array_equal(field, read_h5(built.sources[0], "field"))
        # an edge chunk is stored whole: exact size is the full chunk's
        assert (root / "field" / "3.2").stat().st_size == 8 * 16 * 4
        np.testing.assert_array_equal(np.asarray(g["sst"][...]), read_h5(built.sources[1], "sst"))
        # zero fill and no _FillValue: null fill_value, so v2 readers mask no zeros
        native = json.loads((root / "native" / ".zarray").read_text())
        assert native["fill_value"] is None
        assert "_FillValue" not in json.loads((root / "native" / ".zattrs").read_text())
        np.testing.assert_array_equal(np.asarray(g["native"][...]), np.arange(1000))
        # inline chunks; the missing last chunk reads as the fill value
        np.testing.assert_array_equal(np.asarray(g["grp/small"][...]), [1, 2, 3, 4, 0, 0])
        assert sorted(os.listdir(root / "grp" / "small")) == [".zarray", ".zattrs", "0", "1"]
        meta = json.loads((root / ".zmetadata").read_text())["metadata"]
        assert {"grp/.zgroup", "grp/small/.zarray", "sst/.zattrs"} <= set(meta)
        # versions keep the mount's presentation
        dev = root / ".vchunkfs" / "branches" / "dev"
        assert json.loads((dev / "dev_only" / ".zarray").read_text())["dtype"] == "|i1"
        assert (dev / "dev_only" / "0").read_bytes() == bytes([7, 8, 9])
        v1 = zarr.open_group(root / ".vchunkfs" / "tags" / "v1", mode="r", zarr_format=2)
        np.testing.assert_array_equal(np.asarray(v1["sst"][...]),
                                      read_h5(built.sources[0], "sst"))
        stats = json.loads(os.getxattr(root, "user.vchunkfs.stats"))
        assert stats["cache_misses"] > 0


def test_array_without_a_v2_form_is_reported(tmp_path):
    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "repo")))
    s = repo.writable_session("main")
    g = zarr.group(s.store)
    g.create_array("sharded", shape=(8,), chunks=(2,), shards=(4,), dtype="i2",
                   fill_value=0)[:] = np.arange(8, dtype="i2")
    g.create_array("plain", shape=(4,), chunks=(4,), dtype="i2", fill_value=0)[:] = 1
    s.commit("one sharded, one plain")
    with mounted(tmp_path / "repo", tmp_path / "m", "presentation=v3+v2+v2-decoded") as m:
        for name in ("v2", "v2-decoded"):
            d = m.path / name
            assert os.listdir(d / "sharded") == ["UNSUPPORTED"]
            text = (d / "sharded" / "UNSUPPORTED").read_text()
            assert "sharding_indexed" in text and "presentation=v3" in text
            meta = json.loads((d / ".zmetadata").read_text())["metadata"]
            assert "plain/.zarray" in meta and not any(k.startswith("sharded") for k in meta)
            np.testing.assert_array_equal(zarr.open_array(d / "plain", mode="r")[...], 1)
        np.testing.assert_array_equal(zarr.open_array(m.path / "v3" / "sharded", mode="r")[...],
                                      np.arange(8))
    assert "cannot show array sharded" in m.log_text()


def test_decoded_chunk_larger_than_a_block(tmp_path):
    """A 9 MB decoded chunk is read in two 8 MiB blocks: both parts are right."""
    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "repo")))
    s = repo.writable_session("main")
    values = np.random.default_rng(3).normal(size=(1100, 1024))
    zarr.create_array(s.store, name="big", shape=values.shape, chunks=values.shape,
                      dtype="<f8", fill_value=0.0, compressors=[Zlib(level=1)])[...] = values
    s.commit("one 9 MB chunk")
    with mounted(tmp_path / "repo", tmp_path / "m", "presentation=v2-decoded") as m:
        path = m.path / "big" / "0.0"
        assert path.stat().st_size == values.nbytes
        assert path.read_bytes() == values.tobytes()  # zarr-python wrote these values
        stats = json.loads(os.getxattr(m.path, "user.vchunkfs.stats"))
        assert stats["cache_misses"] == 2  # two blocks, each a read of part of the chunk


def test_chunk_that_fails_to_decode_gives_eio(tmp_path):
    """A ref to bytes that are not zlib data: EIO and a log line, never garbage."""
    data = tmp_path / "data"
    data.mkdir()
    source = data / "blob.bin"
    good = Zlib(level=1)._codec.encode(np.arange(4, dtype="<i4").tobytes())
    source.write_bytes(good + b"this is not zlib")
    prefix = data.as_uri() + "/"
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(ic.VirtualChunkContainer(
        prefix, ic.local_filesystem_store(str(data))))
    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "repo")), config)
    repo.save_config()
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(8,), chunks=(4,), dtype="<i4", fill_value=0,
                      compressors=[Zlib(level=1)])
    s.store.set_virtual_ref("a/c/0", source.as_uri(), offset=0, length=len(good))
    s.store.set_virtual_ref("a/c/1", source.as_uri(), offset=len(good), length=16)
    s.commit("one good chunk, one bad")
    with mounted(tmp_path / "repo", tmp_path / "m", f"authorize={prefix}",
                 "presentation=v2+v2-decoded") as m:
        assert (m.path / "v2-decoded" / "a" / "0").read_bytes() == np.arange(
            4, dtype="<i4").tobytes()
        bad = m.path / "v2-decoded" / "a" / "1"
        assert bad.stat().st_size == 16
        with pytest.raises(OSError) as e:
            bad.read_bytes()
        assert e.value.errno == errno.EIO
        assert (m.path / "v2" / "a" / "1").read_bytes() == b"this is not zlib"
        assert (m.path / "v2-decoded" / "a" / "0").read_bytes()  # still serving
    assert "a/c/1: chunk did not decode" in m.log_text()


def test_unknown_presentation_is_refused(tmp_path, local_repo):
    import subprocess

    path, _ = local_repo
    (tmp_path / "m").mkdir()
    r = subprocess.run([*HELPER, str(path), str(tmp_path / "m"), "-o", "presentation=v4"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown presentation 'v4'" in r.stderr
    assert "v2-decoded" in r.stderr and not os.path.ismount(tmp_path / "m")

