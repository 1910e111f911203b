"""Plot one day's sea-surface temperature read through a vchunkfs mount, like the guide's
final plot: ``ds.sst.isel(time=DAY).plot()`` on the dataset opened from the mount.

Usage: python scripts/plot_sst.py MOUNTPOINT [--day N | --date YYYY-MM-DD] [--out FILE.png]
MOUNTPOINT may be the mount root or one presentation directory of it (v3, v2, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import xarray as xr


def open_mount(path: Path) -> xr.Dataset:
    """The dataset at the mount root, or in its v3 (else v2-decoded) presentation directory."""
    for candidate in (path, path / "v3", path / "v2-decoded", path / "v2"):
        if (candidate / "zarr.json").exists():
            return xr.open_zarr(candidate, consolidated=False, zarr_format=3)
        if (candidate / ".zgroup").exists():
            return xr.open_zarr(candidate, consolidated=True, zarr_format=2)
    raise SystemExit(f"plot_sst: no Zarr group at {path} (is it a vchunkfs mount?)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--day", type=int, default=0, help="index along time (default 0)")
    p.add_argument("--date", help="a date instead of --day, e.g. 2024-08-15")
    p.add_argument("--out", type=Path, help="PNG to write (default sst-DATE.png)")
    args = p.parse_args(argv)
    ds = open_mount(args.mountpoint)
    try:
        day = ds.sst.sel(time=args.date, method="nearest") if args.date else ds.sst.isel(
            time=args.day)
    except (IndexError, KeyError) as e:
        raise SystemExit(f"plot_sst: no such day: {e} (time has {ds.sizes['time']} steps)"
                         ) from None
    day = day.squeeze()  # zlev
    date = str(day.time.values)[:10]
    out = args.out or Path(f"sst-{date}.png")
    fig, ax = plt.subplots(figsize=(10, 5))
    day.plot(ax=ax, cmap="RdYlBu_r", center=False,
             cbar_kwargs={"label": "sea surface temperature [degC]"})
    ax.set_title(f"OISST-like sea surface temperature, {date}, read through {args.mountpoint}")
    fig.savefig(out, dpi=100, bbox_inches="tight")
    valid = int(day.notnull().sum())
    print(f"{out}: {date}, {valid} ocean cells, {float(day.min()):.2f} to "
          f"{float(day.max()):.2f} degC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
