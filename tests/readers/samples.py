"""Sample Zarr directory stores shaped like the mount's presentations of an OISST day.

Each *form* is one way the mount can present the same Icechunk array:

``v3``          Zarr v3, the stored codecs: bytes + ``numcodecs.shuffle`` + ``numcodecs.zlib``
``v2``          Zarr v2 with a ``shuffle`` filter and a ``zlib`` compressor, ``.zmetadata``
``v2-decoded``  Zarr v2, chunks served decompressed (no filters, no compressor)
``v3-decoded``  Zarr v3, chunks served decompressed (the ``bytes`` codec alone)

The group holds ``sst`` (int16, (T, 1, 720, 1440), chunks (1, 1, 720, 1440), fill -999,
scale_factor 0.01, add_offset 0) and the coordinates ``time`` (float32, CF units),
``zlev``, ``lat`` and ``lon``, all with the same codecs as the form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BytesCodec
from zarr.codecs.numcodecs import Shuffle, Zlib

Form = Literal["v3", "v2", "v2-decoded", "v3-decoded"]
FORMS: tuple[Form, ...] = ("v3", "v2", "v2-decoded", "v3-decoded")

FILL = -999
SCALE_FACTOR = 0.01
ADD_OFFSET = 0.0
NLAT, NLON = 720, 1440
TIME_UNITS = "days since 1978-01-01 12:00:00"

SST_ATTRS: dict[str, Any] = {
    "long_name": "Daily sea surface temperature",
    "units": "Celsius",
    "scale_factor": SCALE_FACTOR,
    "add_offset": ADD_OFFSET,
    "valid_min": -300,
    "valid_max": 4500,
}


def sst_values(ntime: int) -> np.ndarray:
    """Raw int16 values: a smooth field in hundredths of a degree, -999 over 'land'."""
    lat = np.linspace(-89.875, 89.875, NLAT)
    lon = np.linspace(0.125, 359.875, NLON)
    la, lo = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    land = (np.sin(2 * lo + 0.5) * np.cos(3 * la) > 0.75) | (lat[:, None] < -78)
    out = np.empty((ntime, 1, NLAT, NLON), dtype=np.int16)
    for t in range(ntime):
        field = 29.0 * np.cos(la) ** 2 - 1.8 + 0.8 * np.sin(3 * lo + t) * np.cos(2 * la)
        raw = np.round(field * 100).astype(np.int16)
        raw[land] = FILL
        out[t, 0] = raw
    return out


def ground_truth(ntime: int) -> dict[str, np.ndarray]:
    """The raw values of every array in a sample store (what h5py reads from the files)."""
    return {
        "sst": sst_values(ntime),
        "time": (16436.0 + np.arange(ntime)).astype(np.float32),  # 2023-01-01 onwards
        "zlev": np.zeros(1, dtype=np.float32),
        "lat": np.linspace(-89.875, 89.875, NLAT, dtype=np.float32),
        "lon": np.linspace(0.125, 359.875, NLON, dtype=np.float32),
    }


DIMS: dict[str, list[str]] = {
    "sst": ["time", "zlev", "lat", "lon"],
    "time": ["time"], "zlev": ["zlev"], "lat": ["lat"], "lon": ["lon"],
}

COORD_ATTRS: dict[str, dict[str, Any]] = {
    "time": {"long_name": "Center time of the day", "units": TIME_UNITS, "calendar": "standard"},
    "zlev": {"long_name": "Sea surface height", "units": "meters", "positive": "down"},
    "lat": {"long_name": "Latitude", "units": "degrees_north"},
    "lon": {"long_name": "Longitude", "units": "degrees_east"},
}


def write_sample(root: Path, form: Form, ntime: int = 2) -> dict[str, np.ndarray]:
    """Write the sample group at ``root`` in ``form``; return its ground truth."""
    truth = ground_truth(ntime)
    zarr_format: Literal[2, 3] = 2 if form.startswith("v2") else 3
    compressed = not form.endswith("-decoded")
    group = zarr.open_group(str(root), mode="w", zarr_format=zarr_format)
    group.attrs.update({"Conventions": "CF-1.6", "title": "OISST-like sample for vchunkfs"})
    for name, values in truth.items():
        attrs = dict(SST_ATTRS if name == "sst" else COORD_ATTRS[name])
        fill: int | None = FILL if name == "sst" else None
        if fill is not None:
            attrs["_FillValue"] = fill
        size = values.dtype.itemsize
        chunks = (1, 1, NLAT, NLON) if name == "sst" else values.shape
        kwargs: dict[str, Any]
        if zarr_format == 3:
            kwargs = {"serializer": BytesCodec(), "dimension_names": DIMS[name],
                      "compressors": [Shuffle(elementsize=size), Zlib(level=4)]
                      if compressed else None,
                      "fill_value": FILL if fill is not None else 0}
        else:
            attrs["_ARRAY_DIMENSIONS"] = DIMS[name]
            kwargs = {"filters": [numcodecs.Shuffle(elementsize=size)] if compressed else None,
                      "compressors": numcodecs.Zlib(level=4) if compressed else None,
                      "fill_value": fill}
        array = group.create_array(name, shape=values.shape, chunks=chunks,
                                   dtype=values.dtype, attributes=attrs, **kwargs)
        array[...] = values
    if zarr_format == 2:
        zarr.consolidate_metadata(str(root), zarr_format=2)
    return truth
