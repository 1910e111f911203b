"""End-to-end demo of the repository layer: archival netCDF files -> versioned virtual dataset.

1. writes three OISST-like daily netCDF4 files (scripts/make_oisst.py);
2. creates an Icechunk repository with a file:// virtual chunk container over them;
3. writes Zarr metadata and virtual refs (byte ranges found with h5py) for two
   days, commits, tags v1, appends the third day in a second commit;
4. shows the result with the vchunkfs command line, and checks every chunk
   read through vchunkfs against netCDF4 reading the files.

5. mounts the repository (at WORKDIR/mnt unless given) and shows it with shell
   tools; the mount stays in place, with the command to unmount it.

Usage: python scripts/demo.py [WORKDIR [MOUNTPOINT]]   (default: ./demo-data)
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import icechunk as ic
import netCDF4
import numcodecs
import numpy as np
from make_oisst import main as make_oisst
from zarr.codecs.numcodecs import Shuffle, Zlib

from vchunkfs.bridge import close_shared_bridge, shared_bridge
from vchunkfs.repository import Authorization, Repo, parse_repo_url
from vchunkfs.repository.logs import quiet_engine_logs
from vchunkfs.repository.writer import Writer, create_tag

VARIABLES = ("sst", "anom", "err", "ice")
COORDS = ("time", "zlev", "lat", "lon")


def array_doc(var: netCDF4.Variable, ndays: int) -> dict:
    """Zarr v3 metadata for a daily variable, with the netCDF file's own codecs."""
    shape = list(var.shape)
    shape[0] = ndays
    attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in var.__dict__.items()
             if k != "_FillValue"}
    return {
        "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": "int16",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(var.chunking())}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": int(var._FillValue),
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                   Shuffle(elementsize=2).to_dict(), Zlib(level=4).to_dict()],
        "attributes": {**attrs, "_FillValue": int(var._FillValue)},
        "dimension_names": list(var.dimensions),
    }


def coord_doc(name: str, values: np.ndarray, attrs: dict) -> dict:
    return {
        "zarr_format": 3, "node_type": "array", "shape": [len(values)], "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [len(values)]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": attrs, "dimension_names": [name],
    }


def chunk_range(path: Path, var: str) -> tuple[int, int]:
    with h5py.File(path, "r") as f:
        info = f[var].id.get_chunk_info(0)
        return info.byte_offset, info.size


def write_days(run, w: Writer, files: list[Path], first_day: int, total_days: int) -> None:
    with netCDF4.Dataset(files[0]) as ds:
        for v in VARIABLES:
            run(lambda v=v: w.set_metadata(v, array_doc(ds[v], total_days)))
        times = []
        for f in files[:total_days]:
            with netCDF4.Dataset(f) as d:
                times.append(float(d["time"][0]))
        for c in COORDS if first_day == 0 else ("time",):  # lat, lon, zlev never change
            values = np.asarray(times if c == "time" else ds[c][:], dtype="<f4")
            run(lambda c=c, values=values: w.set_metadata(c, coord_doc(c, values, dict(
                ds[c].__dict__))))
            run(lambda c=c, values=values: w.set_chunk(f"{c}/c/0", values.tobytes()))
    for day in range(first_day, total_days):
        for v in VARIABLES:
            offset, length = chunk_range(files[day], v)
            run(lambda v=v, day=day, offset=offset, length=length: w.set_virtual_ref(
                f"{v}/c/{day}/0/0/0", files[day].resolve().as_uri(), offset, length,
                checksum=_mtime(files[day])))


def _mtime(path: Path) -> datetime.datetime:
    """The changed-source check: the file's mtime, rounded up to icechunk's whole seconds."""
    return datetime.datetime.fromtimestamp(math.ceil(path.stat().st_mtime), datetime.UTC)


def cli(*args: str) -> None:
    print(f"\n$ vchunkfs {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "vchunkfs.cli.main", *args], check=True)


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-data").resolve()
    data, repo_dir = work / "data", work / "oisst"
    quiet_engine_logs()
    make_oisst([str(data), "--days", "3"])
    files = sorted(data.glob("*.nc"))
    shutil.rmtree(repo_dir, ignore_errors=True)
    prefix = data.as_uri() + "/"
    run = shared_bridge().run
    auth = Authorization.load([prefix])
    container = ic.VirtualChunkContainer(prefix, ic.local_filesystem_store(str(data)))
    repo = run(lambda: Repo.create(parse_repo_url(str(repo_dir)), containers=[container],
                                   authorization=auth))
    w = run(lambda: Writer.open(repo))
    run(lambda: w.set_group("", {"title": "OISST look-alike, virtual", "Conventions": "CF-1.6"}))
    write_days(run, w, files, 0, 2)
    v1 = run(lambda: w.commit("first two days", {"days": 2}))
    run(lambda: create_tag(repo, "v1", v1))
    write_days(run, w, files, 2, 3)
    run(lambda: w.commit("append day 3", {"days": 3}))

    cli("log", str(repo_dir))
    cli("ls", f"{repo_dir}@v1", "sst/c/0/0/0", "-l")
    cli("show", str(repo_dir), "sst", "--authorize", prefix)
    cli("diff", str(repo_dir), "v1", "main")

    print("\nChecking every chunk read through vchunkfs against netCDF4 on the files:")
    view = run(lambda: repo.view("main"))
    for day, f in enumerate(files):
        with netCDF4.Dataset(f) as ds:
            for v in VARIABLES:
                raw = run(lambda v=v, day=day: view.read(f"{v}/c/{day}/0/0/0"))
                data_bytes = numcodecs.Shuffle(elementsize=2).decode(numcodecs.Zlib().decode(raw))
                values = np.frombuffer(data_bytes, dtype="<i2").reshape(ds[v].shape)
                ds[v].set_auto_maskandscale(False)
                assert np.array_equal(values, ds[v][:]), (f, v)
                if v == "sst":
                    mid = values[0, 0, values.shape[2] // 2, :: values.shape[3] // 4] * 0.01
        print(f"  {f.name}: {', '.join(VARIABLES)} equal; sst on the equator every 90 deg: "
              + " ".join(f"{t:.2f}" for t in mid) + " C")
    meta = json.loads(run(lambda: view.read("sst/zarr.json")))
    print(f"\nsst shape on main: {meta['shape']}; tag v1 keeps the first two days.")
    close_shared_bridge()

    mountpoint = Path(sys.argv[2]) if len(sys.argv) > 2 else work / "mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
    print(f"\n$ mount.vchunkfs {repo_dir} {mountpoint} -o authorize={prefix}", flush=True)
    subprocess.run([sys.executable, "-m", "vchunkfs.cli.mount", str(repo_dir), str(mountpoint),
                    "-o", f"authorize={prefix},log_file={work / 'vchunkfs.log'}"], check=True)
    for cmd in (["ls", "-l", str(mountpoint)],
                ["ls", "-l", str(mountpoint / "sst" / "c" / "2" / "0" / "0")],
                ["cat", str(mountpoint / ".vchunkfs" / "HEAD")],
                ["ls", str(mountpoint / ".vchunkfs" / "tags" / "v1" / "sst" / "c")],
                ["du", "-sh", str(mountpoint / "sst")]):
        print(f"\n$ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    print(f"\nRepository: {repo_dir}\nSources:    {data}\nMounted at: {mountpoint} "
          f"(history: cat {mountpoint}/.vchunkfs/history)")
    print(f"Unmount with: fusermount3 -u {mountpoint}   (or: vchunkfs umount {mountpoint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
