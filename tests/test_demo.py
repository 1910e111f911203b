"""The README's main job, end to end: scripts/demo on a fresh directory, then the plot."""

from __future__ import annotations

import re
import subprocess
import sys

import netCDF4
import numpy as np
import pytest
from commands import PROJECT
from mounting import unmount

pytestmark = pytest.mark.timeout(600)


def test_demo_mounts_a_month_and_plot_reads_it(tmp_path):
    work, mnt = tmp_path / "work", tmp_path / "mnt"
    try:
        r = subprocess.run(["bash", str(PROJECT / "scripts" / "demo"), str(work), str(mnt)],
                           capture_output=True, text=True, timeout=500)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        out = r.stdout
        # GDAL through the mount agreed with netCDF4 on the file, at three points
        assert len(re.findall(r"GDAL (-?\d+) through the mount, netCDF4 \1 from", out)) == 3
        assert "time = 31 ;" in out and "time = 32 ;" in out
        assert f"Unmount:       {PROJECT}/.venv/bin/vchunkfs umount {mnt}" in out
        assert (mnt / "v3" / "sst" / "c" / "31" / "0" / "0" / "0").is_file()  # day 32

        png = tmp_path / "sst.png"
        p = subprocess.run([sys.executable, str(PROJECT / "scripts" / "plot_sst.py"), str(mnt),
                            "--date", "2024-08-15", "--out", str(png)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
        with netCDF4.Dataset(work / "data" / "oisst-avhrr-v02r01.20240815.nc") as ds:
            ds.set_auto_maskandscale(False)
            sst = np.ma.masked_equal(ds["sst"][0, 0], -999) * np.float32(0.01)
        assert f"{sst.count()} ocean cells, {sst.min():.2f} to {sst.max():.2f} degC" in p.stdout
    finally:
        unmount(mnt)
