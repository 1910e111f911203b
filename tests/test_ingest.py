"""vchunkfs ingest: the guide's journey from the shell, checked against the netCDF files."""

from __future__ import annotations

import json
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import xarray as xr
import zarr
from commands import cli, make_days
from datasets import assert_reads_like_files, read_h5, write_like_the_guide
from mounting import mounted

pytestmark = pytest.mark.timeout(300)


def history(repo: Path) -> list[str]:
    return [c["id"] for c in json.loads(cli("log", str(repo), "--json").stdout)]


def store_dataset(repo: Path, prefix: str, version: str = "main", decode: bool = True
                  ) -> xr.Dataset:
    r = ic.Repository.open(ic.local_filesystem_storage(str(repo)),
                           authorize_virtual_chunk_access=ic.containers_credentials(
                               {prefix: ic.credentials.LocalFileSystemAccess}))
    session = r.readonly_session(version) if version == "main" else r.readonly_session(
        snapshot_id=version)
    return xr.open_zarr(session.store, consolidated=False, zarr_format=3, chunks=None,
                        mask_and_scale=decode).load()


def metadata_documents(repo: Path) -> dict[str, dict[str, object]]:
    """Every ``zarr.json`` of the branch ``main``, parsed."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype

    store = ic.Repository.open(ic.local_filesystem_storage(str(repo))).readonly_session(
        "main").store

    async def read() -> dict[str, dict[str, object]]:
        out = {}
        async for key in store.list():
            if key.endswith("zarr.json"):
                raw = await store.get(key, prototype=default_buffer_prototype())
                assert raw is not None, key
                out[key] = json.loads(raw.to_bytes())
        return out

    return asyncio.run(read())


def test_ingest_mount_and_append(tmp_path):
    files = make_days(tmp_path / "data", 4)
    prefix = (tmp_path / "data").as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo))
    out = json.loads(cli("ingest", str(repo), str(tmp_path / "data" / "*.nc"),
                         "--concat-dim", "time", "--container", prefix, "--json").stdout)
    assert out["files"] == 4 and out["refs"] == 16 and out["container_added"] == prefix
    first = history(repo)[0]
    more_prefix = (tmp_path / "more").as_uri() + "/"
    with mounted(repo, tmp_path / "m", f"authorize={prefix}",
                 f"authorize={more_prefix}") as m:
        assert_reads_like_files(m.path, files)
        # one more day, appended in a new commit; the old snapshot keeps four days
        more = make_days(tmp_path / "more", 1, start="2024-08-05")
        cli("ingest", str(repo), str(more[0]), "--concat-dim", "time", "--append",
            "--container", more_prefix, "-m", "day 5")  # the mount picks up the container
        new = history(repo)[0]
        assert new != first
        deadline = __import__("time").monotonic() + 10
        while (m.path / ".vchunkfs" / "HEAD").read_text().split()[-1] != new:
            assert __import__("time").monotonic() < deadline
            __import__("time").sleep(0.2)
        assert_reads_like_files(m.path, [*files, *more])
        old = m.path / ".vchunkfs" / "snapshots" / first
        assert_reads_like_files(old, files)
        assert xr.open_zarr(str(m.path), chunks=None).sizes["time"] == 5


def test_kerchunk_references_give_the_same_dataset(tmp_path):
    from kerchunk.combine import MultiZarrToZarr
    from kerchunk.df import refs_to_dataframe
    from kerchunk.hdf import SingleHdf5ToZarr

    files = make_days(tmp_path / "data", 3)
    prefix = (tmp_path / "data").as_uri() + "/"
    singles = [SingleHdf5ToZarr(f.as_uri(), inline_threshold=0).translate() for f in files]
    refs = MultiZarrToZarr(singles, concat_dims=["time"],
                           identical_dims=["lat", "lon", "zlev"]).translate()
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    refs_to_dataframe(refs, str(tmp_path / "refs.parq"))
    for name, args in (("parsed", [str(tmp_path / "data" / "*.nc"), "--concat-dim", "time"]),
                       ("json", [str(tmp_path / "refs.json")]),
                       ("parquet", [str(tmp_path / "refs.parq"), "--parser",
                                    "kerchunk-parquet"])):
        cli("init", str(tmp_path / name), "--container", prefix)
        cli("ingest", str(tmp_path / name), *args)
    # kerchunk's references carry no _FillValue attribute for these variables (kerchunk
    # keeps it in .zarray only), so compare what is stored: the raw integers, and time
    parsed = store_dataset(tmp_path / "parsed", prefix, decode=False)
    for name in ("json", "parquet"):
        other = store_dataset(tmp_path / name, prefix, decode=False)
        for v in ("sst", "anom", "err", "ice"):
            np.testing.assert_array_equal(other[v].values, parsed[v].values)
        assert (other.time.values == parsed.time.values).all()


def test_same_repository_as_the_guides_python(tmp_path):
    """A repository made by the guide's Python and one made by vchunkfs ingest agree."""
    files = make_days(tmp_path / "data", 3)
    prefix = (tmp_path / "data").as_uri() + "/"
    write_like_the_guide(files, tmp_path / "guide", "the guide's way")
    cli("init", str(tmp_path / "ours"), "--container", prefix)
    cli("ingest", str(tmp_path / "ours"), *map(str, files), "--concat-dim", "time",
        "--workers", "2")
    xr.testing.assert_identical(store_dataset(tmp_path / "ours", prefix),
                                store_dataset(tmp_path / "guide", prefix))
    ours = json.loads(cli("show", str(tmp_path / "ours"), "sst", "--json").stdout)
    theirs = json.loads(cli("show", str(tmp_path / "guide"), "sst", "--json").stdout)
    assert ours["metadata"] == theirs["metadata"] and ours["chunks"] == theirs["chunks"]
    # every metadata document is the guide's (attributes in the same order too), but for
    # the time coordinate's chunks: the guide keeps the files' one value a chunk
    our_docs = metadata_documents(tmp_path / "ours")
    guide_docs = metadata_documents(tmp_path / "guide")
    for docs, length in ((our_docs, 3), (guide_docs, 1)):
        grid = docs["time/zarr.json"].pop("chunk_grid")
        assert grid == {"name": "regular", "configuration": {"chunk_shape": [length]}}
    assert our_docs == guide_docs


def test_bad_inputs_change_nothing(tmp_path):
    files = make_days(tmp_path / "data", 2)
    prefix = (tmp_path / "data").as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    cli("ingest", str(repo), *map(str, files), "--concat-dim", "time")
    before = history(repo)
    text = tmp_path / "data" / "notes.nc"
    text.write_text("this is not netCDF\n")
    coarse = make_days(tmp_path / "coarse", 1, start="2024-08-03", scale=8)[0]
    outside = make_days(tmp_path / "elsewhere", 1, start="2024-08-03")[0]
    cases = [
        ([str(files[0]), str(text)], 2, f"{text}: not netCDF/HDF5, netCDF3, TIFF"),
        # inputs are sorted, so .../coarse/... is the reference and day 1 the odd one out
        ([str(files[0]), str(coarse), "--container", tmp_path.as_uri() + "/"], 2,
         f"{files[0].as_uri()} does not match {coarse.as_uri()}: variable 'lat' has shape "
         "(180,) instead of (90,)"),
        ([str(tmp_path / "missing.nc")], 3, "missing.nc: no such file"),
        ([str(tmp_path / "none-*.nc")], 3, "no file matches"),
        ([str(outside), "--append"], 2,
         f"no virtual chunk container covers {outside.as_uri()}; pass --container "
         f"{(tmp_path / 'elsewhere').as_uri()}/"),
    ]
    for args, status, message in cases:
        r = cli("ingest", str(repo), *args, "--concat-dim", "time", check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == status and len(lines) == 1 and message in lines[0], (args, r)
    # a misspelt dimension is an error, not a new dimension
    r = cli("ingest", str(repo), *map(str, files), "--concat-dim", "tme", check=False)
    assert r.returncode == 2 and "--concat-dim 'tme' is not a dimension of the files (they " \
        "have time, zlev, lat, lon); pass --new-dim" in r.stderr, r.stderr
    assert history(repo) == before


def test_region_write_replaces_days_in_a_new_commit(tmp_path):
    """--replace-region points existing days at other files; the old snapshot keeps its refs."""
    files = make_days(tmp_path / "data", 4)
    fixed = make_days(tmp_path / "fixed", 2, start="2024-08-02")  # new versions of days 2, 3
    prefix = tmp_path.as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    cli("ingest", str(repo), *map(str, files), "--concat-dim", "time")
    before = history(repo)[0]
    cli("ingest", str(repo), *map(str, fixed), "--concat-dim", "time",
        "--replace-region", "time=1:3", "-m", "reprocessed days 2 and 3")
    new = store_dataset(repo, prefix, decode=False)
    assert new.sizes["time"] == 4
    want = [files[0], *fixed, files[3]]
    for day, path in enumerate(want):
        np.testing.assert_array_equal(new.sst.values[day], read_h5(path, "sst")[0])
    old = store_dataset(repo, prefix, version=before, decode=False)
    for day, path in enumerate(files):
        np.testing.assert_array_equal(old.sst.values[day], read_h5(path, "sst")[0])
    refs = json.loads(cli("show", str(repo), "sst", "--json").stdout)
    assert refs["chunks"]["virtual"] == 4


def test_region_outside_the_array_changes_nothing(tmp_path):
    files = make_days(tmp_path / "data", 2)
    prefix = (tmp_path / "data").as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    cli("ingest", str(repo), str(files[0]), "--concat-dim", "time")
    before = history(repo)
    r = cli("ingest", str(repo), str(files[1]), "--concat-dim", "time",
            "--replace-region", "time=5:6", check=False)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert history(repo) == before


def test_dask_scan_gives_the_same_repository(tmp_path):
    """--dask: VirtualiZarr's open_virtual_mfdataset(parallel="dask") instead of threads."""
    make_days(tmp_path / "data", 3)
    prefix = (tmp_path / "data").as_uri() + "/"
    for name, extra in (("threads", ["--workers", "2"]), ("dask", ["--dask"])):
        cli("init", str(tmp_path / name), "--container", prefix)
        cli("ingest", str(tmp_path / name), str(tmp_path / "data" / "*.nc"),
            "--concat-dim", "time", *extra)
    xr.testing.assert_identical(store_dataset(tmp_path / "dask", prefix),
                                store_dataset(tmp_path / "threads", prefix))


def test_tiff_images_stack_along_a_new_dimension(tmp_path):
    """GeoTIFFs (VirtualiZarr's TIFF parser, virtual-tiff) stacked along --concat-dim, appended,
    mounted, and read back equal to rasterio (GDAL) reading the files."""
    import rasterio

    data = tmp_path / "tiffs"
    data.mkdir()
    rng = np.random.default_rng(7)
    images = []
    for day in range(3):
        img = (rng.normal(1500, 300, (200, 300)) + day).astype("int16")
        with rasterio.open(data / f"img{day}.tif", "w", driver="GTiff", width=300, height=200,
                           count=1, dtype="int16", compress="deflate", tiled=True,
                           blockxsize=128, blockysize=128) as f:
            f.write(img, 1)
        with rasterio.open(data / f"img{day}.tif") as f:  # the independent reader
            images.append(f.read(1))
    prefix = data.as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    cli("ingest", str(repo), str(data / "img0.tif"), str(data / "img1.tif"),
        "--concat-dim", "time")
    cli("ingest", str(repo), str(data / "img2.tif"), "--concat-dim", "time", "--append")
    with mounted(repo, tmp_path / "m", f"authorize={prefix}", "presentation=v3+v2-decoded") as m:
        for pres, fmt in (("v3", 3), ("v2-decoded", 2)):
            arr = zarr.open_array(m.path / pres, path="0", mode="r", zarr_format=fmt)
            assert arr.shape == (3, 200, 300)
            np.testing.assert_array_equal(arr[...], np.stack(images))


def test_helper_processes_read_the_same(tmp_path, monkeypatch):
    """--workers 2 with its helper process: the same datasets, in order; errors name the file."""
    import time

    from vchunkfs import ingest
    from vchunkfs.errors import InvalidInputError

    files = make_days(tmp_path / "data", 8)
    urls = ingest.expand_inputs([str(f) for f in files])
    alone = ingest.scan(urls, ingest.IngestPlan(inputs=urls))
    # this process reads slowly (the spawned helper reads at full speed), so the helper,
    # once started, reads some of the files: the next ones with this process, so that
    # the datasets arrive about in order (ingest combines them as they arrive)
    here: list[str] = []
    open_one = ingest._open_one

    def slow(url, registry, parser):
        here.append(url)
        time.sleep(1.0)
        return open_one(url, registry, parser)

    monkeypatch.setattr(ingest, "_open_one", slow)
    seen: list[tuple[int, int]] = []
    helped = ingest.scan(urls, ingest.IngestPlan(inputs=urls, workers=2),
                         lambda done, total: seen.append((done, total)))
    assert len(helped) == len(alone)
    for a, b in zip(alone, helped, strict=True):
        xr.testing.assert_identical(a, b)
    assert sorted(seen) == [(i, 8) for i in range(1, 9)]
    assert here[:2] == urls[:2] and len(here) < len(urls) and here == sorted(here)
    # a broken file (the helper read it above): the error names it, whoever reads it
    helper_read = [u for u in urls if u not in here]
    broken = files[urls.index(helper_read[0])]
    broken.write_bytes(broken.read_bytes()[:2000])
    here.clear()
    with pytest.raises(InvalidInputError, match=broken.name):
        ingest.scan(urls, ingest.IngestPlan(inputs=urls, workers=2))
