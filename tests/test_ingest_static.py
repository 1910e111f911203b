"""Variables without the concat dimension (an orography next to daily fields): kept once,
checked across files, and --append / --replace-region work on such datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
from commands import cli, make_days
from datasets import read_h5
from mounting import mounted

pytestmark = pytest.mark.timeout(300)


def history(repo: Path) -> list[str]:
    return [c["id"] for c in json.loads(cli("log", str(repo), "--json").stdout)]


def orography(shape: tuple[int, int], bump: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    return (np.sin(y / 7.0) * np.cos(x / 11.0) * 3000 + bump).astype("float32")


def add_orog(files: list[Path], bump: float = 0.0) -> None:
    """A static (lat, lon) field in every file, written with netCDF4 (chunked, zlib)."""
    for f in files:
        with netCDF4.Dataset(f, "a") as nc:
            shape = (len(nc.dimensions["lat"]), len(nc.dimensions["lon"]))
            v = nc.createVariable("orog", "f4", ("lat", "lon"), zlib=True,
                                  complevel=4, chunksizes=(shape[0] // 2, shape[1] // 2))
            v.units = "m"
            v[:] = orography(shape, bump)


def h5(path: Path, var: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f[var][...])


def test_static_variables_are_kept_once_and_append_and_region_work(tmp_path):
    files = make_days(tmp_path / "data", 3)
    add_orog(files)
    prefix = tmp_path.as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    cli("ingest", str(repo), *map(str, files), "--concat-dim", "time")
    show = json.loads(cli("show", str(repo), "orog", "--json").stdout)
    assert show["metadata"]["shape"] == [len(h5(files[0], "lat")), len(h5(files[0], "lon"))]
    assert show["chunks"]["virtual"] == 4  # once, not once per file
    # one more day appended; then day 2 replaced by a reprocessed file
    more = make_days(tmp_path / "more", 1, start="2024-08-04")
    add_orog(more)
    cli("ingest", str(repo), str(more[0]), "--concat-dim", "time", "--append")
    fixed = make_days(tmp_path / "fixed", 1, start="2024-08-02")
    add_orog(fixed)
    cli("ingest", str(repo), str(fixed[0]), "--concat-dim", "time", "--replace-region",
        "time=1:2")
    want = [files[0], fixed[0], files[2], more[0]]
    with mounted(repo, tmp_path / "m", f"authorize={prefix}",
                 "presentation=v3+v2-decoded") as m:
        for pres, fmt in (("v3", 3), ("v2-decoded", 2)):
            ds = xr.open_zarr(str(m.path / pres), consolidated=False, zarr_format=fmt,
                              chunks=None, mask_and_scale=False)
            assert ds.orog.dims == ("lat", "lon")
            np.testing.assert_array_equal(ds.orog.values, h5(files[0], "orog"))
            np.testing.assert_array_equal(ds.sst.values,
                                          np.concatenate([read_h5(f, "sst") for f in want]))
    # the refs of orog still point into the first file only
    assert json.loads(cli("show", str(repo), "orog", "--json").stdout)["chunks"]["virtual"] == 4


def test_files_whose_static_variables_differ_are_refused(tmp_path):
    files = make_days(tmp_path / "data", 3)
    add_orog(files[:2])
    add_orog(files[2:], bump=1.0)  # same layout, other values
    prefix = tmp_path.as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    r = cli("ingest", str(repo), *map(str, files), "--concat-dim", "time", check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (f"{files[2].as_uri()}: variable 'orog' (without time, kept once) differs from "
            f"{files[0].as_uri()}: ") in r.stderr and "different bytes" in r.stderr, r.stderr
    cli("ingest", str(repo), *map(str, files[:2]), "--concat-dim", "time")
    before = history(repo)
    # appended: compared with the stored refs' bytes
    r = cli("ingest", str(repo), str(files[2]), "--concat-dim", "time", "--append",
            check=False)
    assert r.returncode == 2 and "variable 'orog' (without time, kept once) differs from " \
        "the stored one" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # a file without the static variable
    bare = make_days(tmp_path / "bare", 1, start="2024-08-03")
    r = cli("ingest", str(repo), str(bare[0]), "--concat-dim", "time", "--append",
            check=False)
    assert r.returncode == 2 and "missing variables ['orog']" in r.stderr, r.stderr
    assert history(repo) == before


def test_a_rewritten_first_file_gets_its_static_refs_rewritten(tmp_path):
    """Day 1 (the file orog's refs point into) is rewritten in place with another layout
    and re-ingested with --replace-region: orog's refs follow it, never the old offsets."""
    files = make_days(tmp_path / "data", 3)
    add_orog(files)
    prefix = tmp_path.as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    cli("ingest", str(repo), *map(str, files), "--concat-dim", "time")
    redo = make_days(tmp_path / "redo", 1, start="2024-08-01")
    with netCDF4.Dataset(redo[0], "a") as nc:  # more bytes before orog's: other offsets
        nc.setncattr("history", "reprocessed " * 20000)
    add_orog(redo)
    shutil.copyfile(redo[0], files[0])
    cli("ingest", str(repo), str(files[0]), "--concat-dim", "time", "--replace-region",
        "time=0:1")
    with mounted(repo, tmp_path / "m", f"authorize={prefix}") as m:
        ds = xr.open_zarr(str(m.path), consolidated=False, chunks=None, mask_and_scale=False)
        np.testing.assert_array_equal(ds.orog.values, h5(files[0], "orog"))
        np.testing.assert_array_equal(ds.sst.values,
                                      np.concatenate([read_h5(f, "sst") for f in files]))


def test_refs_into_a_rewritten_file_that_this_ingest_does_not_replace_are_refused(tmp_path):
    """Day 1's file is rewritten in place (other offsets) and written into day 2's slot:
    day 1's slot still has refs to the old offsets, which the file's new source record
    would pass. Refused (6), nothing committed."""
    files = make_days(tmp_path / "data", 3)
    prefix = tmp_path.as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    cli("ingest", str(repo), *map(str, files), "--concat-dim", "time")
    before = history(repo)
    with netCDF4.Dataset(files[0], "a") as nc:
        nc.setncattr("history", "reprocessed " * 20000)
        nc["sst"][0, 0, 0, 0] = nc["sst"][0, 0, 0, 0] + 1  # the chunk is rewritten, elsewhere
    r = cli("ingest", str(repo), str(files[0]), "--concat-dim", "time", "--replace-region",
            "time=1:2", check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 6 and len(lines) == 1, r.stderr
    assert f"{files[0].as_uri()} changed since it was ingested, and " in lines[0], r.stderr
    assert "keeps refs into it that this ingest does not replace" in lines[0], r.stderr
    assert history(repo) == before


def test_static_attributes_are_compared(tmp_path):
    files = make_days(tmp_path / "data", 2)
    add_orog(files)
    with netCDF4.Dataset(files[1], "a") as nc:
        nc["orog"].units = "ft"
    prefix = tmp_path.as_uri() + "/"
    cli("init", str(tmp_path / "repo"), "--container", prefix)
    r = cli("ingest", str(tmp_path / "repo"), *map(str, files), "--concat-dim", "time",
            check=False)
    assert r.returncode == 2 and "variable 'orog' (without time, kept once) differs from " \
        f"{files[0].as_uri()}: different attributes (units)" in r.stderr, r.stderr
