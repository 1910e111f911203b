#!/usr/bin/env python3
"""GRIB2 scanning and decoding: gribberish against kerchunk's ``scan_grib`` (ecCodes).

Writes FILES GRIB2 files with ecCodes (its GRIB2 sample, regridded to a
720 x 1440 global grid; 4 fields x 5 pressure levels = 20 messages a file;
``--packing``), then, in this process, best of ``--runs``:

* scan: time per message to get the virtual refs of every file, with
  gribberish's VirtualiZarr parser (``open_virtual_dataset``, which vchunkfs
  ingest uses) and with kerchunk's ``scan_grib`` (per-message reference sets,
  no combining);
* decode: time per message of the read-time codec on the message bytes:
  kerchunk's numcodecs ``grib`` (ecCodes; what the mount's decoded
  presentations use) and gribberish's ``parse_grib_message(...).data()``;
* agreement: the decoded values of both against ``codes_get_values``.

    python scripts/bench/bench_grib.py [DIR] [--files 20] [--runs 3] [--packing grid_simple]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def write(path: Path, day: int, packing: str) -> None:
    import eccodes

    with open(path, "wb") as f:
        for k, (disc, cat, num) in enumerate([(0, 0, 0), (0, 2, 2), (0, 2, 3), (0, 1, 0)]):
            for level in (1000, 850, 700, 500, 250):
                h = eccodes.codes_grib_new_from_samples("GRIB2")
                for key, value in (("Ni", 1440), ("Nj", 720),
                                   ("latitudeOfFirstGridPointInDegrees", 89.875),
                                   ("longitudeOfFirstGridPointInDegrees", 0.125),
                                   ("latitudeOfLastGridPointInDegrees", -89.875),
                                   ("longitudeOfLastGridPointInDegrees", 359.875),
                                   ("iDirectionIncrementInDegrees", 0.25),
                                   ("jDirectionIncrementInDegrees", 0.25),
                                   ("dataDate", int(f"2024{1 + day // 28:02d}{1 + day % 28:02d}")),
                                   ("discipline", disc), ("parameterCategory", cat),
                                   ("parameterNumber", num), ("typeOfFirstFixedSurface", 100),
                                   ("scaleFactorOfFirstFixedSurface", 0),
                                   ("scaledValueOfFirstFixedSurface", level * 100),
                                   ("bitsPerValue", 16), ("packingType", packing)):
                    eccodes.codes_set(h, key, value)
                y, x = np.mgrid[0:720, 0:1440]
                vals = 250 + 20 * np.sin(y / 50 + day + k) + np.cos(x / 70) * level / 100
                eccodes.codes_set_values(h, vals.ravel())
                eccodes.codes_write(h, f)
                eccodes.codes_release(h)


def messages(path: Path) -> list[bytes]:
    import eccodes

    out = []
    with open(path, "rb") as f:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            out.append(eccodes.codes_get_message(h))
            eccodes.codes_release(h)
    return out


def best(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", default="/tmp/vchunkfs-bench-grib", type=Path)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--packing", default="grid_simple")
    args = ap.parse_args()
    d = args.dir / args.packing
    d.mkdir(parents=True, exist_ok=True)
    files = [d / f"f{i:03d}.grib2" for i in range(args.files)]
    for i, f in enumerate(files):
        if not f.exists():
            write(f, i, args.packing)
    urls = [f.resolve().as_uri() for f in files]
    n_msgs = sum(len(messages(f)) for f in files)

    from gribberish.virtualizarr import GribberishParser
    from kerchunk.grib2 import scan_grib
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset

    registry = ObjectStoreRegistry({"file://": LocalStore()})
    parser = GribberishParser(collapse_groups=True)
    scan_g = best(lambda: [open_virtual_dataset(u, registry=registry, parser=parser)
                           for u in urls], args.runs)
    scan_k = best(lambda: [scan_grib(str(f)) for f in files], args.runs)

    import eccodes
    import gribberish
    from kerchunk.codecs import GRIBCodec

    msgs = messages(files[0])
    codec = GRIBCodec(var="t", dtype="float64")
    dec_e = best(lambda: [codec.decode(m) for m in msgs], args.runs)
    dec_g = best(lambda: [np.asarray(gribberish.parse_grib_message(m, 0).data())
                          for m in msgs], args.runs)
    worst_e = worst_g = 0.0
    for m in msgs:
        h = eccodes.codes_new_from_message(m)
        want = eccodes.codes_get_values(h)
        eccodes.codes_release(h)
        worst_e = max(worst_e, float(np.abs(codec.decode(m) - want).max()))
        got = np.asarray(gribberish.parse_grib_message(m, 0).data()).ravel()
        worst_g = max(worst_g, float(np.abs(got - want).max()))
    size = os.path.getsize(files[0]) / len(msgs)
    print(f"{args.files} files, {n_msgs} messages ({args.packing}, 720 x 1440, "
          f"{size / 1024:.0f} KiB a message), best of {args.runs}")
    print("| step | gribberish | kerchunk / ecCodes |")
    print("|---|---:|---:|")
    print(f"| scan, ms per message | {1000 * scan_g / n_msgs:.2f} | {1000 * scan_k / n_msgs:.2f} |")
    print(f"| decode, ms per message | {1000 * dec_g / len(msgs):.2f} | "
          f"{1000 * dec_e / len(msgs):.2f} |")
    print(f"| largest difference from codes_get_values | {worst_g:g} | {worst_e:g} |")
    print("command: " + " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
