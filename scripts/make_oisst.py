"""Write netCDF4 files shaped like NOAA OISST v2.1 daily files (the real ones need the internet).

Each file holds one day: ``sst``, ``anom``, ``err`` and ``ice`` as int16 on
(time=1, zlev=1, lat=720, lon=1440) with scale_factor 0.01, _FillValue -999,
chunks (1, 1, 720, 1440), zlib level 4 with shuffle, and CF time units, like
``oisst-avhrr-v02r01.YYYYMMDD.nc``. The fields are smooth (a latitude profile,
large-scale waves, a land mask, sea ice near the poles) so that compression
ratios resemble the real files'.

Usage: python scripts/make_oisst.py OUTDIR [--days 31] [--start 2024-08-01] [--scale 1]
(``--scale 4`` writes a 180x360 grid, for quick demos and tests.)
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import netCDF4
import numpy as np

FILL = np.int16(-999)
EPOCH = datetime.date(1978, 1, 1)
EDDY_WAVES = 24


def grid(scale: int) -> tuple[np.ndarray, np.ndarray]:
    step = 0.25 * scale
    lat = np.arange(-90 + step / 2, 90, step, dtype="f4")
    lon = np.arange(step / 2, 360, step, dtype="f4")
    return lat, lon


def land_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """A fixed, smooth pattern of continents (True = land)."""
    la, lo = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    blobs = np.sin(2 * lo + 0.5) * np.cos(3 * la) + 0.6 * np.sin(5 * lo) * np.sin(2 * la + 1)
    return (blobs > 0.75) | (lat[:, None] < -78)


def fields(day: int, lat: np.ndarray, lon: np.ndarray, land: np.ndarray) -> dict[str, np.ndarray]:
    la, lo = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    phase = 2 * np.pi * day / 365.0
    climatology = 29.0 * np.cos(la) ** 2 - 1.8 + 1.5 * np.sin(la) * np.cos(phase)
    waves = 0.8 * np.sin(3 * lo + phase) * np.cos(2 * la) + 0.3 * np.sin(7 * lo - 2 * la + phase)
    anom = 0.6 * np.sin(2 * lo - phase) * np.cos(la) ** 3 + 0.2 * np.cos(5 * la + lo)
    # mesoscale eddies: many random smooth waves, which keep the chunks' compression
    # ratio near the real files' (about 6:1 for sst)
    rng = np.random.default_rng(day)
    eddies = np.zeros(land.shape)
    for _ in range(EDDY_WAVES):
        kx, ky = rng.integers(4, 48, 2)
        eddies += np.sin(kx * lo + ky * la + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.01, 0.05)
    anom = anom + eddies
    sst = np.maximum(climatology + waves + anom, -1.8)
    ice = np.clip((np.abs(lat)[:, None] - 62.0) / 18.0, 0, 1) * (sst < 0.5)
    err = 0.1 + 0.3 * np.abs(np.sin(4 * lo) * np.cos(la)) + 0.05 * (day % 7)
    out = {}
    for name, values in (("sst", sst), ("anom", anom), ("err", err), ("ice", ice)):
        scaled = np.round(np.broadcast_to(values, land.shape) * 100).astype("i2")
        scaled[land] = FILL
        if name == "ice":
            scaled[~land & (ice == 0)] = FILL  # ice is only defined where there is ice
        out[name] = scaled
    return out


ATTRS = {
    "sst": ("Daily sea surface temperature", "Celsius", -300, 4500),
    "anom": ("Daily sea surface temperature anomalies", "Celsius", -1200, 1200),
    "err": ("Estimated error standard deviation of analysed_sst", "Celsius", 0, 1000),
    "ice": ("Sea ice concentration", "%", 0, 100),
}


def write_day(path: Path, date: datetime.date, scale: int) -> None:
    lat, lon = grid(scale)
    land = land_mask(lat, lon)
    day = (date - EPOCH).days
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.title = "NOAA/NCEI 1/4 Degree Daily Optimum Interpolation Sea Surface Temperature " \
                   "(OISST) Analysis, Version 2.1 - look-alike written by vchunkfs"
        ds.Conventions = "CF-1.6, ACDD-1.3"
        ds.source = "synthetic; scripts/make_oisst.py"
        ds.createDimension("time", 1)
        ds.createDimension("zlev", 1)
        ds.createDimension("lat", len(lat))
        ds.createDimension("lon", len(lon))
        t = ds.createVariable("time", "f4", ("time",))
        t.long_name, t.units, t.calendar = "Center time of the day", \
            "days since 1978-01-01 12:00:00", "standard"
        t[:] = [day]
        z = ds.createVariable("zlev", "f4", ("zlev",))
        z.long_name, z.units, z.positive = "Sea surface height", "meters", "down"
        z[:] = [0.0]
        la = ds.createVariable("lat", "f4", ("lat",))
        la.long_name, la.units = "Latitude", "degrees_north"
        la[:] = lat
        lo = ds.createVariable("lon", "f4", ("lon",))
        lo.long_name, lo.units = "Longitude", "degrees_east"
        lo[:] = lon
        for name, values in fields(day, lat, lon, land).items():
            long_name, units, vmin, vmax = ATTRS[name]
            v = ds.createVariable(name, "i2", ("time", "zlev", "lat", "lon"), zlib=True,
                                  complevel=4, shuffle=True,
                                  chunksizes=(1, 1, len(lat), len(lon)), fill_value=FILL)
            v.long_name, v.units = long_name, units
            v.scale_factor = np.float32(0.01)
            v.add_offset = np.float32(0.0)
            v.valid_min, v.valid_max = np.int16(vmin), np.int16(vmax)
            v.set_auto_maskandscale(False)
            v[0, 0] = values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--days", type=int, default=31)
    p.add_argument("--start", type=datetime.date.fromisoformat,
                   default=datetime.date(2024, 8, 1))
    p.add_argument("--scale", type=int, default=1, choices=(1, 2, 4, 8),
                   help="coarsen the 0.25 degree grid by this factor")
    args = p.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    for i in range(args.days):
        date = args.start + datetime.timedelta(days=i)
        path = args.outdir / f"oisst-avhrr-v02r01.{date:%Y%m%d}.nc"
        if not path.exists():
            write_day(path, date, args.scale)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
