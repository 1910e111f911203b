"""Daily appends: --append --new-only from the stored refs, out-of-order days refused,
and two appends started together never interleave the time axis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from commands import CLI, cli, make_days
from datasets import assert_reads_like_files, read_h5
from mounting import mounted

pytestmark = pytest.mark.timeout(300)


def history(repo: Path) -> list[str]:
    return [c["id"] for c in json.loads(cli("log", str(repo), "--json").stdout)]


def stored_times(repo: Path, prefix: str) -> np.ndarray:
    import icechunk as ic

    r = ic.Repository.open(ic.local_filesystem_storage(str(repo)),
                           authorize_virtual_chunk_access=ic.containers_credentials(
                               {prefix: ic.credentials.LocalFileSystemAccess}))
    ds = xr.open_zarr(r.readonly_session("main").store, consolidated=False, chunks=None)
    return ds.time.values


def test_the_same_line_every_day(tmp_path):
    """A cron job: the same glob each day; only files not referenced yet are read."""
    archive = tmp_path / "archive"
    days = make_days(tmp_path / "all", 5)
    archive.mkdir()
    prefix = archive.as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    for f in days[:3]:
        shutil.copy2(f, archive / f.name)
    cli("ingest", str(repo), str(archive / "*.nc"), "--concat-dim", "time")
    line = ["ingest", str(repo), str(archive / "*.nc"), "--concat-dim", "time", "--append",
            "--new-only"]
    # nothing new: nothing committed, and it says so
    before = history(repo)
    r = cli(*line)
    assert "nothing new: the 3 inputs are all referenced by branch main already; nothing " \
        "committed" in r.stdout, r.stdout
    assert history(repo) == before
    out = json.loads(cli(*line, "--json").stdout)
    assert out == {"snapshot": None, "files": 0, "skipped": 3}
    # the next two days arrive, one a day
    for f in days[3:]:
        shutil.copy2(f, archive / f.name)
        out = json.loads(cli(*line, "--json").stdout)
        assert out["files"] == 1 and out["skipped"] == len(list(archive.glob("*.nc"))) - 1
    assert len(history(repo)) == len(before) + 2
    archived = sorted(archive.glob("*.nc"))
    with mounted(repo, tmp_path / "m", f"authorize={prefix}") as m:
        assert_reads_like_files(m.path, archived)
        # the time coordinate is chunked by the first ingest's 3 days (the appends add a
        # chunk), not a chunk file per day as the files chunk it
        meta = json.loads((m.path / "time" / "zarr.json").read_text())
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [3], meta
        assert sorted(p.name for p in (m.path / "time" / "c").iterdir()) == ["0", "1"]
        assert [c["name"] for c in meta["codecs"]] == ["bytes"], meta  # raw values
        dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        raw = np.concatenate([np.frombuffer((m.path / "time" / "c" / c).read_bytes(), dtype)
                              for c in ("0", "1")])
        np.testing.assert_array_equal(raw[:len(archived)],
                                      [read_h5(f, "time")[0] for f in archived])


def test_days_out_of_order_are_refused(tmp_path):
    days = make_days(tmp_path / "data", 5)
    prefix = (tmp_path / "data").as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    cli("ingest", str(repo), *map(str, [days[0], days[1], days[3]]), "--concat-dim", "time")
    before = history(repo)
    # day 3 filled in after day 4: cannot be appended
    r = cli("ingest", str(repo), str(days[2]), "--concat-dim", "time", "--append",
            check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "its time 2024-08-03T12:00:00 does not follow the stored last time " \
        "2024-08-04T12:00:00 (out of order" in lines[0], r.stderr
    # an existing day: --replace-region auto is the way
    r = cli("ingest", str(repo), str(days[1]), "--concat-dim", "time", "--append",
            check=False)
    assert r.returncode == 2 and "replace it with --replace-region auto" in r.stderr, r.stderr
    assert history(repo) == before
    cli("ingest", str(repo), str(days[1]), "--concat-dim", "time", "--replace-region", "auto")
    cli("ingest", str(repo), str(days[4]), "--concat-dim", "time", "--append")
    times = stored_times(repo, prefix)
    assert len(times) == 4 and (np.diff(times) > np.timedelta64(0, "ns")).all()


@pytest.mark.parametrize("round_", range(2))
def test_two_appends_at_once_keep_the_time_axis_in_order(tmp_path, round_):
    """Days 11-20 and 21-31 appended by two processes started together onto days 1-10:
    both land in order, or the one that would land out of order fails clearly."""
    days = make_days(tmp_path / "data", 31)
    prefix = (tmp_path / "data").as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo), "--container", prefix)
    cli("ingest", str(repo), *map(str, days[:10]), "--concat-dim", "time")
    env = {**os.environ, "ICECHUNK_LOG": "error"}
    runs = {name: subprocess.Popen([*CLI, "ingest", str(repo), *map(str, part),
                                    "--concat-dim", "time", "--append"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env)
            for name, part in (("early", days[10:20]), ("late", days[20:]))}
    done = {name: (p.wait(timeout=240), p.stderr.read() if p.stderr else "")
            for name, p in runs.items()}
    times = stored_times(repo, prefix)
    assert (np.diff(times) > np.timedelta64(0, "ns")).all(), times
    early, late = done["early"], done["late"]
    if early[0] == 0 and late[0] == 0:
        assert len(times) == 31
    else:
        # the late days landed first: the early ones cannot follow them
        assert late[0] == 0 and early[0] == 2, done
        assert "does not follow the stored last time" in early[1] and \
            len(early[1].strip().splitlines()) == 1, early[1]
        assert len(times) == 21
    import icechunk as ic

    r = ic.Repository.open(ic.local_filesystem_storage(str(repo)),
                           authorize_virtual_chunk_access=ic.containers_credentials(
                               {prefix: ic.credentials.LocalFileSystemAccess}))
    sst = xr.open_zarr(r.readonly_session("main").store, consolidated=False, chunks=None,
                       mask_and_scale=False).sst.values
    landed = days if len(times) == 31 else [*days[:10], *days[20:]]
    np.testing.assert_array_equal(sst, np.concatenate([read_h5(f, "sst") for f in landed]))


def test_two_appends_at_once_on_an_s3_repository(tmp_path, monkeypatch):
    """The same race with the repository on S3 (moto): no commit lock there, icechunk's
    conditional branch update alone makes the loser redo its checks."""
    import servers

    days = make_days(tmp_path / "data", 31)
    prefix = (tmp_path / "data").as_uri() + "/"
    with servers.moto_s3_server() as s3:
        env = {**os.environ, "ICECHUNK_LOG": "error", "AWS_ACCESS_KEY_ID": s3.access_key_id,
               "AWS_SECRET_ACCESS_KEY": s3.secret_access_key, "AWS_REGION": s3.region}
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
            monkeypatch.setenv(k, env[k])
        s3.create_bucket("repos")
        repo = "s3://repos/daily"
        at = ["--endpoint-url", s3.endpoint_url]
        cli("init", repo, *at, "--container", prefix)
        cli("ingest", repo, *at, *map(str, days[:10]), "--concat-dim", "time")
        runs = {name: subprocess.Popen([*CLI, "ingest", repo, *at, *map(str, part),
                                        "--concat-dim", "time", "--append"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=env)
                for name, part in (("early", days[10:20]), ("late", days[20:]))}
        done = {name: (p.wait(timeout=240), p.stderr.read() if p.stderr else "")
                for name, p in runs.items()}
        import icechunk as ic

        r = ic.Repository.open(
            ic.s3_storage(bucket="repos", prefix="daily", region=s3.region,
                          endpoint_url=s3.endpoint_url, allow_http=True, force_path_style=True,
                          access_key_id=s3.access_key_id,
                          secret_access_key=s3.secret_access_key),
            authorize_virtual_chunk_access=ic.containers_credentials(
                {prefix: ic.credentials.LocalFileSystemAccess}))
        ds = xr.open_zarr(r.readonly_session("main").store, consolidated=False, chunks=None,
                          mask_and_scale=False)
        times = ds.time.values
        assert (np.diff(times) > np.timedelta64(0, "ns")).all(), times
        if done["early"][0] == 0 and done["late"][0] == 0:
            landed = days
        else:
            assert done["late"][0] == 0 and done["early"][0] == 2, done
            assert "does not follow the stored last time" in done["early"][1], done
            landed = [*days[:10], *days[20:]]
        np.testing.assert_array_equal(ds.sst.values,
                                      np.concatenate([read_h5(f, "sst") for f in landed]))
