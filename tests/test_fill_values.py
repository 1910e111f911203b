"""Values equal to the fill value, through every presentation and every real reader.

VirtualiZarr stores the coordinates it loads with the zarr ``fill_value`` of the
source (0.0 for netCDF3, netCDF-C's default fill for netCDF4) and a NaN
``_FillValue`` attribute (base64-packed, as xarray writes float ones in v3).
Zarr v2 readers take a v2 ``fill_value`` as a missing-value mark, so a v2
presentation that kept it would mask real values: lon = 0.0, lat = 0.0 at the
equator, time = 0 days since the epoch. Here netCDF files whose coordinates and
data hold such values are ingested the way users do (``vchunkfs ingest``),
mounted with every presentation, and read by xarray, zarr-python, netCDF-C
(netCDF4-python and ncdump), GDAL (gdalmdiminfo, gdal_translate, rasterio) and
the other readers of tests/readers; every value is compared with the netCDF
files (netCDF4 with masking off; xarray on the files for decoded values).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pytest
import xarray as xr
import zarr
from commands import cli
from mounting import mounted
from readers.expected import expected_cell, require_reader
from readers.harness import READERS, Expected, classify
from readers.samples import FORMS

pytestmark = pytest.mark.timeout(600)

NC_FILL_F4 = float(np.float32(netCDF4.default_fillvals["f4"]))
NC_FILL_I4 = int(netCDF4.default_fillvals["i4"])
LAT = np.array([-2.0, -1.0, 0.0, 1.0, 2.0], "f4")  # crosses the equator
LON = np.arange(8, dtype="f4") * 45.0  # starts at 0.0
ZLEV = np.zeros(1, "f4")  # all zero: zarr does not even store its chunk (it equals the fill)


def write_files(directory: Path, fmt: str) -> list[Path]:
    """Two files of two time steps each, time starting at 0 days since the epoch.

    ``count`` (int32, no ``_FillValue``) holds 0 and netCDF-C's default int fill,
    which are the zarr fill values VirtualiZarr gives it for netCDF3 and netCDF4.
    The netCDF4 files add ``temp`` (a declared _FillValue, -9999, in the data: masked
    everywhere, as CF says) and ``sparse`` (its second time step never written, so
    one chunk per file is not stored and reads as the default fill).
    """
    directory.mkdir(parents=True)
    files = []
    for part in range(2):
        path = directory / f"part{part}.nc"
        with netCDF4.Dataset(path, "w", format=fmt) as ds:
            ds.createDimension("time", 2)
            ds.createDimension("zlev", 1)
            ds.createDimension("lat", len(LAT))
            ds.createDimension("lon", len(LON))
            time = ds.createVariable("time", "f8", ("time",))
            time.units = "days since 2000-01-01"
            time.calendar = "standard"
            time[:] = np.arange(2.0) + 2 * part
            ds.createVariable("zlev", "f4", ("zlev",))[:] = ZLEV
            ds.createVariable("lat", "f4", ("lat",))[:] = LAT
            ds.createVariable("lon", "f4", ("lon",))[:] = LON
            dims = ("time", "lat", "lon")
            count = ds.createVariable("count", "i4", dims)
            count.set_auto_maskandscale(False)
            values = (np.arange(80).reshape(2, 5, 8) % 7).astype("i4")
            values[:, 0, :2] = [0, NC_FILL_I4]
            count[:] = values
            if fmt == "NETCDF4":
                temp = ds.createVariable("temp", "f4", dims, chunksizes=(1, 5, 8),
                                         fill_value=np.float32(-9999.0))
                temp.set_auto_maskandscale(False)
                t = np.arange(80, dtype="f4").reshape(2, 5, 8) - 5.0
                t[0, 0, 0] = -9999.0
                temp[:] = t
                sparse = ds.createVariable("sparse", "f4", dims, chunksizes=(1, 5, 8))
                sparse.set_auto_maskandscale(False)
                sparse[0] = np.arange(40, dtype="f4").reshape(5, 8) - 20.0
        files.append(path)
    return files


@dataclass
class Dataset:
    name: str
    files: list[Path]
    mount: Path
    arrays: tuple[str, ...]

    def raw(self, var: str) -> np.ndarray:
        """The stored values, as netCDF4 reads them from the files with masking off."""
        parts = []
        for path in self.files:
            with netCDF4.Dataset(path) as ds:
                v = ds[var]
                v.set_auto_maskandscale(False)
                parts.append(np.asarray(v[...]))
                if "time" not in v.dimensions:
                    return parts[0]
        return np.concatenate(parts)

    def mark(self, var: str) -> float | None:
        """The missing-value mark xarray applies on the files (the _FillValue attribute)."""
        with netCDF4.Dataset(self.files[0]) as ds:
            attrs = ds[var].ncattrs()
            return float(ds[var].getncattr("_FillValue")) if "_FillValue" in attrs else None


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Dataset]]:
    """A netCDF3 and a netCDF4 series, each ingested and mounted with every presentation."""
    base = tmp_path_factory.mktemp("fill")
    built = {}
    for name, fmt in (("nc3", "NETCDF3_64BIT_OFFSET"), ("nc4", "NETCDF4")):
        files = write_files(base / name / "data", fmt)
        prefix = (base / name / "data").as_uri() + "/"
        repo = base / name / "repo"
        cli("init", str(repo))
        cli("ingest", str(repo), *map(str, files), "--concat-dim", "time",
            "--container", prefix)
        extra = ("temp", "sparse") if fmt == "NETCDF4" else ()
        built[name] = (repo, prefix, Dataset(name, files, base / name / "m",
                                             ("time", "zlev", "lat", "lon", "count", *extra)))
    (r3, p3, d3), (r4, p4, d4) = built["nc3"], built["nc4"]
    with mounted(r3, d3.mount, f"authorize={p3}", "presentation=all") as m3, \
            mounted(r4, d4.mount, f"authorize={p4}", "presentation=all") as m4:
        yield {"nc3": d3, "nc4": d4}
    for m in (m3, m4):
        assert "Traceback" not in m.log_text(), m.log_text()


def _zarr_format(form: str) -> int:
    return 2 if form.startswith("v2") else 3


def test_the_stored_metadata_is_the_case_at_hand(datasets):
    """What VirtualiZarr stored: the premise of the other tests."""
    for name, fill in (("nc3", 0.0), ("nc4", NC_FILL_F4)):
        meta = json.loads((datasets[name].mount / "v3" / "lon" / "zarr.json").read_text())
        assert meta["fill_value"] == fill
        assert meta["attributes"]["_FillValue"] == "AAAAAAAA+H8="  # NaN, base64 (xarray)
    # zarr stores no chunk equal to the fill value: netCDF3's zlev = [0.0] is missing
    assert not (datasets["nc3"].mount / "v3" / "zlev" / "c" / "0").exists()
    assert not (datasets["nc4"].mount / "v3" / "sparse" / "c" / "1" / "0" / "0").exists()
    assert (datasets["nc4"].mount / "v3" / "sparse" / "c" / "0" / "0" / "0").exists()


def test_v2_documents_follow_the_rule(datasets):
    """docs/SEMANTICS.md: fill_value is the stored one where the _FillValue attribute
    equals it, null for a zero, the attribute's value where every chunk is stored,
    else the stored one; _FillValue is the attribute's value when finite."""
    want = {  # (dataset, array) -> (.zarray fill_value, .zattrs _FillValue or None)
        ("nc3", "lon"): (None, None), ("nc3", "time"): (None, None),
        ("nc3", "zlev"): (None, None), ("nc3", "count"): (None, None),
        ("nc4", "lon"): ("NaN", None), ("nc4", "time"): ("NaN", None),
        ("nc4", "count"): (None, None),  # every chunk stored: no mark, none masked
        ("nc4", "temp"): (-9999.0, -9999.0),  # the declared mark, as on v3
        ("nc4", "sparse"): (NC_FILL_F4, None),  # a missing chunk must read the fill
    }
    for (name, array), (fill, attr) in want.items():
        for form in ("v2", "v2-decoded"):
            d = datasets[name].mount / form / array
            zarray = json.loads((d / ".zarray").read_text())
            zattrs = json.loads((d / ".zattrs").read_text())
            assert zarray["fill_value"] == fill, (name, form, array, zarray["fill_value"])
            assert zattrs.get("_FillValue") == attr, (name, form, array, zattrs)
            consolidated = json.loads((datasets[name].mount / form / ".zmetadata").read_text())
            assert consolidated["metadata"][f"{array}/.zarray"] == zarray
            assert consolidated["metadata"][f"{array}/.zattrs"] == zattrs
        # v3-decoded keeps the stored fill value and attributes
        stored = json.loads((datasets[name].mount / "v3" / array / "zarr.json").read_text())
        dec = json.loads((datasets[name].mount / "v3-decoded" / array / "zarr.json").read_text())
        assert (dec["fill_value"], dec["attributes"]) == (stored["fill_value"],
                                                          stored["attributes"])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["nc3", "nc4"])
def test_zarr_python_and_xarray_read_the_files_values(datasets, name, form):
    d = datasets[name]
    root = d.mount / form
    group = zarr.open_group(root, mode="r", zarr_format=_zarr_format(form))
    for array in d.arrays:
        np.testing.assert_array_equal(np.asarray(group[array][...]), d.raw(array),
                                      err_msg=f"zarr-python {form}/{array}")
    decoded = [xr.open_dataset(f, engine="netcdf4") for f in d.files]
    try:
        files = xr.concat(decoded, dim="time", coords="minimal", compat="override",
                          combine_attrs="override").load()
        # v2 through .zmetadata (what xarray tries first), v3 as stored
        opts: dict[str, Any] = {"zarr_format": _zarr_format(form), "chunks": None,
                                "consolidated": form.startswith("v2")}
        mnt = xr.open_zarr(root, **opts).load()
        raw = xr.open_zarr(root, mask_and_scale=False, decode_times=False, **opts).load()
    finally:
        for ds in decoded:
            ds.close()
    assert mnt.time.values[0] == np.datetime64("2000-01-01")
    assert mnt.lon.values[0] == 0.0 and mnt.lat.values[2] == 0.0 and mnt.zlev.values[0] == 0.0
    for array in d.arrays:
        got, want = mnt[array].values, files[array].values
        np.testing.assert_array_equal(raw[array].values, d.raw(array), err_msg=f"{form}/{array}")
        if array == "sparse" and form.startswith("v2"):
            # the one trade-off: a missing chunk must read the fill value, which a v2
            # reader then also takes as the mark; every other value is the file's
            assert np.isnan(got[1::2]).all() and (want[1::2] == NC_FILL_F4).all()
            np.testing.assert_array_equal(got[0::2], want[0::2])
            continue
        np.testing.assert_array_equal(got, want, err_msg=f"xarray {form}/{array}")
    if name == "nc4":  # the declared _FillValue masks, as in the file
        assert np.isnan(mnt.temp.values[0, 0, 0]) and np.isnan(files.temp.values[0, 0, 0])
    assert (mnt["count"].values == NC_FILL_I4).sum() == 4  # a value, not a mark


# netCDF-C readers mask netCDF's default fill of the type where a variable declares no
# _FillValue, on the files as well (ncdump prints "_", netCDF4-python masks)
NETCDF_C = ("netcdf4-python", "ncdump")
# Known wrong values that are not about fill values: Debian's netCDF-C 4.9.0 ignores the
# byte order of a v2 dtype, and netCDF3 stores big-endian (">f4"); v2-decoded serves
# little-endian and reads right. netCDF-C 4.10 (the netCDF4 wheel) reads both.
KNOWN_WRONG = {("ncdump", "nc3", "v2", a) for a in ("time", "lat", "lon", "count")}


def _expected(d: Dataset, array: str, reader: str, form: str) -> Expected:
    raw = d.raw(array)
    mark = d.mark(array)
    if reader in NETCDF_C and mark is None:
        mark = float(netCDF4.default_fillvals[raw.dtype.str[1:]])
    if array == "sparse" and form.startswith("v2") and reader == "xarray":
        mark = NC_FILL_F4  # the trade-off of test_zarr_python_and_xarray_read_the_files_values
    return Expected(raw, fill_value=mark)


@pytest.mark.parametrize("reader_name", list(READERS))
def test_every_reader_reads_the_files_values(datasets, reader_name):
    """Every real reader on every presentation and array: the files' values, or the
    refusal the readers table expects for that presentation (never wrong values)."""
    reader = require_reader(reader_name)
    failures = []
    reads = 0
    for d in datasets.values():
        for form in FORMS:
            for array in d.arrays:
                result = reader.read(d.mount / form, array)
                got = classify(result, _expected(d, array, reader_name, form))
                verdict, fragment = expected_cell(reader_name, form, array, uncompressed=True)
                if (reader_name, d.name, form, array) in KNOWN_WRONG:
                    verdict, fragment = "wrong", "values differ"
                if got.verdict == "pass":
                    reads += 1
                if (got.verdict, fragment in got.detail) != (verdict, True):
                    failures.append(f"{d.name} {form}/{array}: {got.verdict}: {got.detail}")
    assert not failures, f"{reader_name} {reader.version()}:\n" + "\n".join(failures)
    assert reads > 0
    if reader_name == "ncdump":  # the default fill is netCDF-C's mark on the files too
        out = subprocess.run(["ncdump", "-v", "count", str(datasets["nc4"].files[0])],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        assert "count =\n  0, _, 2," in out, out[-500:]


def _gdal_nodata(store: Path, array: str) -> Any:
    out = subprocess.run(["gdalmdiminfo", "-detailed", "-array", array, str(store)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out).get("nodata_value")


def test_gdal_nodata_is_the_mark_not_a_valid_value(datasets):
    require_reader("gdalmdiminfo")
    for form in ("v2", "v2-decoded"):
        for array in ("lat", "lon", "time", "count"):
            assert _gdal_nodata(datasets["nc3"].mount / form, array) is None, (form, array)
        assert _gdal_nodata(datasets["nc4"].mount / form, "lon") == "NaN"
        assert _gdal_nodata(datasets["nc4"].mount / form, "count") is None
        assert _gdal_nodata(datasets["nc4"].mount / form, "temp") == -9999


NAN_B64 = "AAAAAAAA+H8="  # struct.pack("<d", nan), base64: how xarray stores a NaN _FillValue


@pytest.mark.parametrize(("data_type", "fill", "attr", "complete", "want"), [
    # the _FillValue attribute equals the fill value: both kept (NaN: no attribute)
    ("int16", -999, -999, False, (-999, -999)),
    ("float32", -9999.0, "AAAAAICHw8A=", False, (-9999.0, -9999.0)),
    ("float64", "NaN", NAN_B64, False, ("NaN", None)),
    ("float32", "0x7fc00000", NAN_B64, False, ("NaN", None)),  # hex NaN
    # zero: null, whatever the chunks; -0.0 is not what null reads as
    ("float32", 0.0, NAN_B64, False, (None, None)),
    ("float64", 0.0, "AAAAAAA4j8A=", False, (None, -999.0)),  # a mark other than zero
    ("int32", 0, None, False, (None, None)),
    ("bool", False, None, False, (None, None)),
    ("float64", -0.0, None, False, (-0.0, None)),
    ("float64", -0.0, None, True, (None, None)),
    # neither zero nor the mark: the mark when every chunk is stored, else the fill
    ("float32", NC_FILL_F4, NAN_B64, True, ("NaN", None)),
    ("float32", NC_FILL_F4, NAN_B64, False, (NC_FILL_F4, None)),
    ("int32", NC_FILL_I4, None, True, (None, None)),
    ("int32", NC_FILL_I4, None, False, (NC_FILL_I4, None)),
    ("int16", 5, -999, True, (-999, -999)),
    ("float64", "Infinity", None, False, ("Infinity", None)),
    # a plain number where xarray would write base64, and one that does not decode
    ("float64", 1.0, 1.0, False, (1.0, 1.0)),
    ("float64", 1.0, "not base64!", True, (None, None)),
])
def test_v2_fill_rule(data_type, fill, attr, complete, want):
    from vchunkfs.presentation.converted import v2_attributes, v2_fill, v2_fill_needs_chunks

    meta: dict[str, Any] = {"node_type": "array", "data_type": data_type, "fill_value": fill,
                            "attributes": {} if attr is None else {"_FillValue": attr}}
    got = v2_fill(meta, complete)
    assert (got.fill_value, got.attribute) == want
    assert json.dumps(got.fill_value, allow_nan=False)  # strict JSON
    attrs = v2_attributes(meta, complete)
    assert attrs.get("_FillValue") == want[1] and ("_FillValue" in attrs) == (want[1] is not None)
    # the answer depends on the chunks exactly where v2_fill_needs_chunks says so
    depends = v2_fill(meta, True) != v2_fill(meta, False)
    assert not depends or v2_fill_needs_chunks(meta)
