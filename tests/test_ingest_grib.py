"""GRIB2 ingest: files written here by ecCodes (its GRIB2 sample, two fields on two
pressure levels a day; simple, CCSDS and JPEG 2000 packing), ingested along time,
mounted, and read back through the decoded presentations equal to ecCodes/cfgrib."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from commands import cli
from mounting import mounted

pytestmark = pytest.mark.timeout(300)

eccodes = pytest.importorskip("eccodes")
pytest.importorskip("gribberish")

FIELDS = {"tmp": (0, 0, 0), "ugrd": (0, 2, 2)}  # gribberish names: discipline, category, number
LEVELS = (850, 500)


def write_day(path: Path, day: int, packing: str) -> None:
    with open(path, "wb") as f:
        for k, (disc, cat, num) in enumerate(FIELDS.values()):
            for level in LEVELS:
                h = eccodes.codes_grib_new_from_samples("GRIB2")
                for key, value in (("dataDate", 20240800 + day), ("dataTime", 0),
                                   ("discipline", disc), ("parameterCategory", cat),
                                   ("parameterNumber", num),
                                   ("typeOfFirstFixedSurface", 100),
                                   ("scaleFactorOfFirstFixedSurface", 0),
                                   ("scaledValueOfFirstFixedSurface", level * 100),
                                   ("bitsPerValue", 16), ("packingType", packing)):
                    eccodes.codes_set(h, key, value)
                ni, nj = eccodes.codes_get(h, "Ni"), eccodes.codes_get(h, "Nj")
                y, x = np.mgrid[0:nj, 0:ni]
                values = 250 + 20 * np.sin(y / 5 + day + k) + np.cos(x / 7) * level / 100
                eccodes.codes_set_values(h, values.ravel())
                eccodes.codes_write(h, f)
                eccodes.codes_release(h)


def eccodes_fields(path: Path) -> dict[tuple[str, int], np.ndarray]:
    """(field, level) -> values, read with ecCodes (the independent reader)."""
    names = {v: k for k, v in FIELDS.items()}
    out = {}
    with open(path, "rb") as f:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            key = (eccodes.codes_get(h, "discipline"), eccodes.codes_get(h, "parameterCategory"),
                   eccodes.codes_get(h, "parameterNumber"))
            shape = (eccodes.codes_get(h, "Nj"), eccodes.codes_get(h, "Ni"))
            out[names[key], eccodes.codes_get(h, "level")] = \
                eccodes.codes_get_values(h).reshape(shape)
            eccodes.codes_release(h)
    return out


@pytest.mark.parametrize("packing", ["grid_simple", "grid_ccsds", "grid_jpeg"])
def test_grib_days_through_the_decoded_presentations(tmp_path, packing):
    data = tmp_path / "data"
    data.mkdir()
    files = []
    for day in (1, 2, 3):
        files.append(data / f"fc.202408{day:02d}.grib2")
        write_day(files[-1], day, packing)
    with open(files[0], "rb") as f:
        h = eccodes.codes_grib_new_from_file(f)
        assert eccodes.codes_get(h, "packingType") == packing
        eccodes.codes_release(h)
    prefix = data.as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    out = json.loads(cli("ingest", str(repo), *map(str, files[:2]), "--concat-dim", "time",
                         "--json").stdout)
    assert out["variables"] == ["tmp", "ugrd"] and out["refs"] == 8  # one per message
    cli("ingest", str(repo), str(files[2]), "--concat-dim", "time", "--append")
    want = [eccodes_fields(f) for f in files]
    with mounted(repo, tmp_path / "m", f"authorize={prefix}",
                 "presentation=v2-decoded+v3-decoded") as m:
        for pres, fmt in (("v2-decoded", 2), ("v3-decoded", 3)):
            ds = xr.open_zarr(str(m.path / pres), consolidated=False, zarr_format=fmt,
                              chunks=None)
            assert ds.tmp.dims == ("time", "isobar", "latitude", "longitude")
            assert ds.sizes["time"] == 3
            assert [int(p) for p in ds.isobar.values] == sorted(lv * 100 for lv in LEVELS)
            assert (ds.time.values == np.array(["2024-08-01", "2024-08-02", "2024-08-03"],
                                                dtype="datetime64[ns]")).all()
            for name in FIELDS:
                for t, fields in enumerate(want):
                    for i, level in enumerate(ds.isobar.values):
                        np.testing.assert_array_equal(
                            ds[name].values[t, i], fields[name, int(level) // 100],
                            err_msg=f"{pres} {name} day {t} level {level}")
            # a plain zarr array with no codec but bytes, for readers without ecCodes
            arr = zarr.open_array(m.path / pres, path="tmp", mode="r", zarr_format=fmt)
            assert arr.dtype == np.dtype("float64")
        # cfgrib (ecCodes under xarray, which gives float32) on the last file agrees too
        cfgrib = pytest.importorskip("cfgrib")
        del cfgrib
        with xr.open_dataset(files[2], engine="cfgrib", indexpath="") as ref:
            got = xr.open_zarr(str(m.path / "v3-decoded"), consolidated=False, chunks=None)
            mine = got.tmp.sel(time="2024-08-03", isobar=85000).values
            theirs = ref.t.sel(isobaricInhPa=850).values
            assert theirs.dtype == np.float32
            np.testing.assert_array_equal(mine.astype("float32"), theirs)


@pytest.fixture(scope="module")
def mounted_grib(tmp_path_factory):
    base = tmp_path_factory.mktemp("grib-readers")
    data = base / "data"
    data.mkdir()
    files = []
    for day in (1, 2):
        files.append(data / f"fc.202408{day:02d}.grib2")
        write_day(files[-1], day, "grid_ccsds")
    prefix = data.as_uri() + "/"
    cli("init", str(base / "repo"), "--container", prefix)
    cli("ingest", str(base / "repo"), *map(str, files), "--concat-dim", "time")
    fields = [eccodes_fields(f) for f in files]
    levels = sorted(LEVELS)  # isobar ascends: 500, 850 hPa
    truth = np.stack([np.stack([f["tmp", lv] for lv in levels]) for f in fields])
    with mounted(base / "repo", base / "m", f"authorize={prefix}",
                 "presentation=v2-decoded+v3-decoded") as m:
        yield m.path, truth


@pytest.mark.parametrize("form", ["v2-decoded", "v3-decoded"])
@pytest.mark.parametrize("reader_name", ["zarr-python", "xarray", "netcdf4-python",
                                         "tensorstore", "gdal-python", "gdalmdiminfo",
                                         "gdal_translate", "ncdump", "zarr.js"])
def test_readers_on_decoded_grib(mounted_grib, reader_name, form):
    """The readers of docs/readers.md on a GRIB array through the decoded presentations:
    each reads it as it reads an uncompressed float array (expected.py's table)."""
    from readers.expected import expected_cell, require_reader
    from readers.harness import READERS, Expected, classify

    assert reader_name in READERS
    mnt, truth = mounted_grib
    reader = require_reader(reader_name)
    result = reader.read(mnt / form, "tmp")
    got = classify(result, Expected(truth))
    verdict, fragment = expected_cell(reader_name, form, "tmp", uncompressed=True)
    assert (got.verdict, fragment in got.detail) == (verdict, True), (
        f"{reader_name} {reader.version()} on {form}/tmp: {got.verdict}: {got.detail}"
        f"\n{result.log[-1000:]}")
