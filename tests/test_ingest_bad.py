"""Bad input to vchunkfs ingest: one clear line naming the file and the reason, the exit
status of docs/cli.md, and the branch unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import servers
import xarray as xr
from commands import cli, make_days

pytestmark = pytest.mark.timeout(300)


def history(repo: Path) -> list[str]:
    return [c["id"] for c in json.loads(cli("log", str(repo), "--json").stdout)]


def netcdf3_days(directory: Path, n: int) -> list[Path]:
    directory.mkdir(parents=True)
    out = []
    for day in range(n):
        t = np.array([np.datetime64("2024-08-01") + np.timedelta64(day, "D")])
        ds = xr.Dataset(coords={"time": t, "lat": np.arange(30.0), "lon": np.arange(40.0)})
        ds["sst"] = (("time", "lat", "lon"), np.full((1, 30, 40), day, dtype="float32"))
        path = directory / f"day{day:02d}.nc"
        ds.to_netcdf(path, format="NETCDF3_64BIT")
        out.append(path)
    return out


def expect_one_line(r, status: int, text: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == status and len(lines) == 1 and text in lines[0], r


def test_local_bad_files(tmp_path):
    files = make_days(tmp_path / "data", 3)
    prefix = tmp_path.as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    cli("ingest", str(repo), *map(str, files[:2]), "--concat-dim", "time")
    before = history(repo)
    # an HDF5 file cut short
    cut = tmp_path / "cut" / files[2].name
    cut.parent.mkdir()
    cut.write_bytes(files[2].read_bytes()[:-5000])
    r = cli("ingest", str(repo), str(cut), "--concat-dim", "time", "--append", check=False)
    expect_one_line(r, 2, f"{cut.as_uri()}: cannot read it as HDFParser: Unable to "
                          "synchronously open file (truncated file")
    # a netCDF3 file cut short after its header: its refs would end past its end
    nc3 = netcdf3_days(tmp_path / "nc3", 2)
    nc3[1].write_bytes(nc3[1].read_bytes()[:-100])
    cli("init", str(tmp_path / "repo3"), "--container", prefix)
    r = cli("ingest", str(tmp_path / "repo3"), *map(str, nc3), "--concat-dim", "time",
            check=False)
    expect_one_line(r, 2, f"{nc3[1].as_uri()}: truncated: sst has a chunk ending at byte")
    assert len(history(tmp_path / "repo3")) == 1
    # a day whose sst has another dtype than the repository's
    other = tmp_path / "other" / files[2].name
    other.parent.mkdir()
    with xr.open_dataset(files[2], mask_and_scale=False) as ds:
        ds = ds.load()
    ds["sst"] = ds.sst.astype("int32")
    ds["sst"].encoding = {"dtype": "int32", "zlib": True, "chunksizes": ds.sst.shape}
    ds.to_netcdf(other, engine="netcdf4")
    r = cli("ingest", str(repo), str(other), "--concat-dim", "time", "--append", check=False)
    expect_one_line(r, 2, f"{other.as_uri()}: variable 'sst' has dtype int32 instead of int16")
    # not data at all
    junk = tmp_path / "junk.nc"
    junk.write_bytes(os.urandom(3000))
    r = cli("ingest", str(repo), str(junk), "--concat-dim", "time", "--append", check=False)
    expect_one_line(r, 2, f"{junk}: not netCDF/HDF5")
    assert history(repo) == before


def test_urls_that_cannot_be_read(tmp_path, monkeypatch):
    files = make_days(tmp_path / "data", 2)
    with servers.moto_s3_server() as s3:
        for k, v in {"AWS_ACCESS_KEY_ID": s3.access_key_id,
                     "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
                     "AWS_REGION": s3.region}.items():
            monkeypatch.setenv(k, v)
        bucket = "bad-" + os.urandom(4).hex()
        s3.create_bucket(bucket)
        s3.put_object(bucket, f"d/{files[0].name}", files[0].read_bytes())
        prefix = f"s3://{bucket}/d/"
        repo = tmp_path / "repo"
        cli("init", str(repo))
        src = ["--source-endpoint", s3.endpoint_url, "--container", prefix]
        cli("ingest", str(repo), f"s3://{bucket}/d/*.nc", "--concat-dim", "time", *src)
        before = history(repo)
        missing = f"s3://{bucket}/d/{files[1].name}"
        r = cli("ingest", str(repo), missing, "--concat-dim", "time", "--append", *src,
                check=False)
        # (its state is taken before it is parsed: the HEAD finds nothing)
        expect_one_line(r, 2, f"{missing}: cannot read it: no such object")
        # unsigned requests: the private bucket refuses to serve them
        r = cli("ingest", str(repo), f"s3://{bucket}/d/{files[0].name}", "--concat-dim",
                "time", "--append", *src, "--source-anonymous", check=False)
        expect_one_line(r, 2, f"s3://{bucket}/d/{files[0].name}: cannot read it")
        assert history(repo) == before
