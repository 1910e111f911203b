"""vchunkfs ingest --scheduler: metadata read on a real dask.distributed LocalCluster
(several worker processes on loopback), giving the same repository as a local scan."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import xarray as xr
from commands import cli, make_days
from datasets import read_h5

pytestmark = pytest.mark.timeout(300)
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    # worker processes import vchunkfs: they inherit PYTHONPATH from this process
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  worker_dashboard_address=None) as c:
        yield c


def store_dataset(repo, prefix):
    import icechunk as ic

    r = ic.Repository.open(ic.local_filesystem_storage(str(repo)),
                           authorize_virtual_chunk_access=ic.containers_credentials(
                               {prefix: ic.credentials.LocalFileSystemAccess}))
    return xr.open_zarr(r.readonly_session("main").store, consolidated=False, chunks=None,
                        mask_and_scale=False).load()


def test_scan_on_a_local_cluster_gives_the_same_repository(cluster, tmp_path, monkeypatch):
    files = make_days(tmp_path / "data", 8)
    prefix = (tmp_path / "data").as_uri() + "/"
    with distributed.Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2
    for name, extra, env in (("local", [], None),
                             ("cluster", ["--scheduler", cluster.scheduler_address], None),
                             ("env", ["--dask"], cluster.scheduler_address)):
        if env:
            monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", env)
        cli("init", str(tmp_path / name), "--container", prefix)
        out = json.loads(cli("ingest", str(tmp_path / name), str(tmp_path / "data" / "*.nc"),
                             "--concat-dim", "time", *extra, "--json").stdout)
        assert out["files"] == 8
        if extra:
            # both worker processes read files (tasks spread over the cluster)
            assert out["scan_processes"] == 2, out
    local = store_dataset(tmp_path / "local", prefix)
    for name in ("cluster", "env"):
        xr.testing.assert_identical(store_dataset(tmp_path / name, prefix), local)
    np.testing.assert_array_equal(local.sst.values,
                                  np.concatenate([read_h5(f, "sst") for f in files]))
    # a bad file read on a worker: one line naming it, nothing committed
    files[3].write_bytes(files[3].read_bytes()[:3000])
    cli("init", str(tmp_path / "bad"), "--container", prefix)
    r = cli("ingest", str(tmp_path / "bad"), str(tmp_path / "data" / "*.nc"), "--concat-dim",
            "time", "--scheduler", cluster.scheduler_address, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and files[3].name in lines[0], r.stderr
    # a scheduler that is not there
    r = cli("ingest", str(tmp_path / "bad"), str(files[0]), "--concat-dim", "time",
            "--scheduler", "tcp://127.0.0.1:9", check=False)
    assert r.returncode == 2 and "--scheduler tcp://127.0.0.1:9: cannot connect" in r.stderr
