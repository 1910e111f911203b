"""What each real reader makes of each presentation: the observed matrix, as a table.

Observed with the readers scripts/setup-readers installs, on sample stores
(test_reader_harness.py) and on a mounted repository (test_readers.py); the
same table holds for both. docs/readers.md is generated from the mount's run.
"""

from __future__ import annotations

import os

import pytest

from readers.harness import READERS, Reader, Verdict
from readers.samples import Form

# (reader, form) -> (verdict, a fragment of the error line or of how the values differ),
# for sst; TIME_DIFFERS has the cells where time (float32, 1-D) goes another way.
# Cells not listed pass.
EXPECTED: dict[tuple[str, Form], tuple[Verdict, str]] = {
    # The netCDF4 wheel's netCDF-C 4.10.1 reads Zarr v2 only: no zarr.json support.
    ("netcdf4-python", "v3"): ("refused", "NetCDF: Unknown file format"),
    ("netcdf4-python", "v3-decoded"): ("refused", "NetCDF: Unknown file format"),
    # tensorstore 0.1.86: zarr3 has no numcodecs.* codecs; zarr (v2) has no filters at all.
    ("tensorstore", "v3"): ("refused", '"numcodecs.shuffle" is not registered'),
    ("tensorstore", "v2"): ("refused", "filters are not supported"),
    # GDAL 3.12's Zarr driver: shuffle works as a v2 filter, not as a v3 numcodecs codec.
    ("gdal-python", "v3"): ("refused", "Unsupported codec: numcodecs.shuffle"),
    # Debian's GDAL 3.6 knows only a pre-release Zarr v3 layout: a v3 group opens as an
    # empty group ("Cannot find array"), and 3.6 has no shuffle filter for v2.
    ("gdalmdiminfo", "v3"): ("refused", "Cannot find array sst"),
    ("gdalmdiminfo", "v2"): ("refused", "Filter shuffle not handled"),
    ("gdalmdiminfo", "v3-decoded"): ("refused", "Cannot find array sst"),
    ("gdal_translate", "v3"): ("refused", "No such file or directory"),
    ("gdal_translate", "v2"): ("refused", "Filter shuffle not handled"),
    ("gdal_translate", "v3-decoded"): ("refused", "No such file or directory"),
    # Debian's netCDF-C 4.9.0: no Zarr v3 (the group reads as empty), and no filter
    # plugins, so shuffle+zlib chunks are taken as raw: sst prints garbage, then segfaults.
    ("ncdump", "v3"): ("refused", "sst: No such variable"),
    ("ncdump", "v2"): ("refused", "ncdump killed by SIGSEGV"),
    ("ncdump", "v3-decoded"): ("refused", "sst: No such variable"),
    # zarr.js reads Zarr v2 only, and ignores the filters: shuffled bytes come back as is.
    ("zarr.js", "v3"): ("refused", "array not found at path sst"),
    ("zarr.js", "v2"): ("wrong", "values differ"),
    ("zarr.js", "v3-decoded"): ("refused", "array not found at path sst"),
}
TIME_DIFFERS: dict[tuple[str, Form], tuple[Verdict, str]] = {
    # a chunk smaller than the values asked for does not crash ncdump: wrong numbers
    ("ncdump", "v2"): ("wrong", "2 of 2 values differ"),
}

# Whether each reader applies scale_factor/add_offset and masks the fill value, on sst.
DECODES: dict[str, tuple[bool, bool]] = {
    "xarray": (True, True),
    "netcdf4-python": (True, True),
    "ncdump": (False, True),  # prints "_" for the fill value
}


# The cells above that come from the shuffle + zlib codecs, not from the metadata format.
# An array stored without them (the coordinates VirtualiZarr loads and stores natively,
# e.g. time in an ingested month) reads in these cells.
CODEC_CELLS = {("tensorstore", "v3"), ("tensorstore", "v2"), ("gdal-python", "v3"),
               ("gdalmdiminfo", "v2"), ("gdal_translate", "v2"), ("ncdump", "v2"),
               ("zarr.js", "v2")}


def expected_cell(reader: str, form: Form, array: str,
                  uncompressed: bool = False) -> tuple[Verdict, str]:
    """The verdict and a fragment of the detail; ``uncompressed`` for an array stored
    with the bytes codec alone."""
    if uncompressed and (reader, form) in CODEC_CELLS:
        return "pass", ""
    if array == "time" and (reader, form) in TIME_DIFFERS:
        return TIME_DIFFERS[reader, form]
    verdict, detail = EXPECTED.get((reader, form), ("pass", ""))
    return verdict, detail.replace("sst", array)


def require_reader(name: str) -> Reader:
    """The reader, or fail: the test command installs every reader (scripts/setup-readers),
    so a missing one is a failed install, not a pass. VCHUNKFS_READERS_OPTIONAL=1 turns
    that into a skip, for a laptop without them."""
    reader = READERS[name]
    reason = reader.missing()
    if reason is not None:
        if os.environ.get("VCHUNKFS_READERS_OPTIONAL") == "1":
            pytest.skip(reason)
        pytest.fail(f"{name} is not installed: {reason} (run scripts/setup-readers)")
    return reader
