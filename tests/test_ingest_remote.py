"""vchunkfs ingest of object-store globs: listing s3://, gs:// and az:// buckets (moto,
fake-gcs-server, Azurite), --files-from, and the errors for what cannot be listed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import servers
import xarray as xr
from commands import cli, make_days
from datasets import assert_reads_like_files, read_h5
from mounting import mounted

pytestmark = pytest.mark.timeout(300)


def history(repo: Path) -> list[str]:
    return [c["id"] for c in json.loads(cli("log", str(repo), "--json").stdout)]


@pytest.fixture(scope="module")
def s3():
    with servers.moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(s3, monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": s3.access_key_id,
                 "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
                 "AWS_REGION": s3.region}.items():
        monkeypatch.setenv(k, v)


def upload_days(put, files: list[Path], key_of) -> None:
    for f in files:
        put(key_of(f), f.read_bytes())


def test_s3_glob_is_expanded_by_listing_and_reads_like_the_files(s3, aws_env, tmp_path):
    files = make_days(tmp_path / "data", 4)
    bucket = "glob-" + os.urandom(4).hex()
    s3.create_bucket(bucket)
    # days in month directories, two levels down; plus objects the glob must not take
    upload_days(lambda k, b: s3.put_object(bucket, k, b), files,
                lambda f: f"data/v2.1/2024/08/{f.name}")
    s3.put_object(bucket, "data/v2.1/2024/08/README.txt", b"not data")
    s3.put_object(bucket, "data/other/oisst-avhrr-v02r01.20240801.nc", files[0].read_bytes())
    prefix = f"s3://{bucket}/data/v2.1/"
    repo = tmp_path / "repo"
    cli("init", str(repo))
    src = ["--source-endpoint", s3.endpoint_url, "--source-region", s3.region]
    out = json.loads(cli("ingest", str(repo), f"s3://{bucket}/data/v2.1/**/oisst-*.nc",
                         "--concat-dim", "time", "--container", prefix, *src,
                         "--json").stdout)
    assert out["files"] == 4
    with mounted(repo, tmp_path / "m", f"authorize={prefix}",
                 "presentation=v3+v2-decoded") as m:
        assert_reads_like_files(m.path / "v3", files)
        dec = xr.open_zarr(str(m.path / "v2-decoded"), consolidated=False, zarr_format=2,
                           chunks=None, mask_and_scale=False)
        raw = np.concatenate([read_h5(f, "sst") for f in files])
        np.testing.assert_array_equal(dec.sst.values, raw)  # codecs decoded, not CF
    # the same list from --files-from (a file, and standard input) gives the same dataset
    listing = tmp_path / "list.txt"
    listing.write_text("# made elsewhere\n" + "".join(
        f"s3://{bucket}/data/v2.1/2024/08/{f.name}\n\n" for f in files))
    cli("init", str(tmp_path / "again"), "--container", prefix)
    cli("ingest", str(tmp_path / "again"), "--files-from", str(listing), "--concat-dim",
        "time", *src)
    a = json.loads(cli("show", str(repo), "sst", "--json").stdout)
    b = json.loads(cli("show", str(tmp_path / "again"), "sst", "--json").stdout)
    assert a["chunks"] == b["chunks"] and a["metadata"] == b["metadata"]
    # an empty glob, a listing the credentials cannot make, an https glob: one line, 2/3,
    # nothing committed
    before = history(repo)
    cases = [
        ([f"s3://{bucket}/data/v2.1/**/*.grib2"], 3,
         f"no object matches 's3://{bucket}/data/v2.1/**/*.grib2'"),
        (["https://example.org/data/*.nc"], 2, "an https:// URL cannot be expanded"),
        ([f"s3://no-such-bucket-{os.urandom(3).hex()}/x/*.nc"], 2, "cannot list"),
    ]
    for args, status, message in cases:
        r = cli("ingest", str(repo), *args, "--concat-dim", "time", "--append", *src,
                check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == status and len(lines) == 1 and message in lines[0], (args, r)
    assert history(repo) == before


def read_icechunk(repo: Path, container: ic.VirtualChunkContainer, creds) -> xr.Dataset:
    r = ic.Repository.open(ic.local_filesystem_storage(str(repo)),
                           authorize_virtual_chunk_access=ic.containers_credentials(
                               {container.url_prefix: creds}))
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(container)
    r = ic.Repository.open(ic.local_filesystem_storage(str(repo)), config=config,
                           authorize_virtual_chunk_access=ic.containers_credentials(
                               {container.url_prefix: creds}))
    return xr.open_zarr(r.readonly_session("main").store, consolidated=False, zarr_format=3,
                        chunks=None, mask_and_scale=False).load()


def check_values(ds: xr.Dataset, files: list[Path]) -> None:
    assert ds.sizes["time"] == len(files)
    for v in ("sst", "anom", "err", "ice"):
        np.testing.assert_array_equal(ds[v].values,
                                      np.concatenate([read_h5(f, v) for f in files]))


def test_gcs_glob_on_fake_gcs_server(tmp_path, monkeypatch):
    files = make_days(tmp_path / "data", 3)
    with servers.fake_gcs_server(tmp_path / "gcs") as gcs:
        bucket = "glob-" + os.urandom(4).hex()
        gcs.create_bucket(bucket)
        upload_days(lambda k, b: gcs.put_object(bucket, k, b), files,
                    lambda f: f"oisst/{f.name}")
        monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT_KEY", gcs.service_account_key)
        prefix = f"gs://{bucket}/oisst/"
        repo = tmp_path / "repo"
        cli("init", str(repo))
        cli("ingest", str(repo), f"gs://{bucket}/oisst/*.nc", "--concat-dim", "time",
            "--container", prefix, "--source-endpoint", gcs.url)
        container = ic.VirtualChunkContainer(
            prefix, ic.gcs_store(opts={"service_account_key": gcs.service_account_key}))
        ds = read_icechunk(repo, container,
                           ic.gcs_credentials(service_account_key=gcs.service_account_key))
        check_values(ds, files)
        # through the mount, with the environment's credentials (GOOGLE_SERVICE_ACCOUNT_KEY)
        with mounted(repo, tmp_path / "m", f"authorize={prefix}") as m:
            assert_reads_like_files(m.path, files)
        r = cli("ingest", str(repo), f"gs://{bucket}/oisst/*.grib2", "--concat-dim", "time",
                "--append", "--source-endpoint", gcs.url, check=False)
        assert r.returncode == 3 and "no object matches" in r.stderr, r.stderr


def test_azure_glob_on_azurite(tmp_path, monkeypatch):
    files = make_days(tmp_path / "data", 3)
    servers.ensure_azurite()
    with servers.azurite_blob_server(tmp_path / "az") as az:
        container_name = "glob" + os.urandom(4).hex()
        az.create_container(container_name)
        upload_days(lambda k, b: az.put_blob(container_name, k, b), files,
                    lambda f: f"oisst/2024/{f.name}")
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", az.account_key)
        prefix = f"az://{container_name}/oisst/"
        repo = tmp_path / "repo"
        cli("init", str(repo))
        cli("ingest", str(repo), f"az://{container_name}/oisst/**/*.nc", "--concat-dim", "time",
            "--container", prefix, "--source-endpoint", az.blob_endpoint,
            "--source-account", az.account)
        container = ic.VirtualChunkContainer(prefix, ic.storage.azure_store(
            account=az.account, config={"endpoint": az.blob_endpoint, "allow_http": "true"}))
        ds = read_icechunk(repo, container, ic.azure_credentials(access_key=az.account_key))
        check_values(ds, files)
        # through the mount, with the environment's credentials (AZURE_STORAGE_ACCOUNT_KEY)
        with mounted(repo, tmp_path / "m", f"authorize={prefix}",
                     "presentation=v3+v2-decoded") as m:
            assert_reads_like_files(m.path / "v3", files)
            dec = xr.open_zarr(str(m.path / "v2-decoded"), consolidated=False, zarr_format=2,
                               chunks=None, mask_and_scale=False)
            check_values(dec, files)
