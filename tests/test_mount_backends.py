"""Mounts of repositories on S3 (moto), written by icechunk and by VirtualiZarr."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import assert_reads_like_files, build_s3_repo, write_like_the_guide
from mounting import mounted
from servers import moto_s3_server

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


def test_s3_mount_and_backend_down(tmp_path):
    server = moto_s3_server()
    s3 = server.__enter__()
    stopped = False
    try:
        built, env = build_s3_repo(s3, tmp_path / "src")
        # prefetch=0: the last chunk must still be unfetched when the backend goes down
        with mounted("s3://repos/r", tmp_path / "m", f"endpoint_url={s3.endpoint_url}",
                     "authorize=s3://archive/nc/=env", "prefetch=0", env=env) as m:
            local = {p.name: p for p in built.sources}
            refs = built.refs["day1"]
            for ref in refs[:-1]:
                with open(local[ref.location.rsplit("/", 1)[1]], "rb") as f:
                    want = os.pread(f.fileno(), ref.length, ref.offset)
                assert (m.path / ref.key).read_bytes() == want, ref.key
            tags = os.listdir(m.path / ".vchunkfs" / "tags")
            assert tags == ["v1"]

            server.__exit__(None, None, None)  # the backend goes down mid-session
            stopped = True
            start = time.monotonic()
            with pytest.raises(OSError) as e:
                (m.path / refs[-1].key).read_bytes()
            assert e.value.errno == errno.EIO
            elapsed = time.monotonic() - start
            # what was fetched before is still served; the daemon is alive
            assert (m.path / refs[0].key).read_bytes()
            assert (m.path / "sst" / "zarr.json").read_bytes()
            assert m.proc.poll() is None
            assert elapsed < 120
    finally:
        if not stopped:
            server.__exit__(None, None, None)


def test_virtualizarr_repository_reads_like_the_files(tmp_path):
    """The guide's workflow (VirtualiZarr -> to_icechunk), mounted; xarray on the mount equals
    xarray on the netCDF files: values, decoded time, attributes, encodings."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(PROJECT / "scripts" / "make_oisst.py"), str(data),
                    "--days", "3", "--scale", "4"], check=True, capture_output=True)
    files = sorted(data.glob("*.nc"))
    prefix = data.as_uri() + "/"
    write_like_the_guide(files, tmp_path / "repo", "three days, by VirtualiZarr")

    with mounted(tmp_path / "repo", tmp_path / "m", f"authorize={prefix}") as m:
        assert_reads_like_files(m.path, files)
