"""Source files and Icechunk repositories for the tests, written by netCDF4/h5py and icechunk.

The repositories are built with icechunk's own API (not vchunkfs's writer),
so the layer under test reads what icechunk and VirtualiZarr write.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import icechunk as ic
import netCDF4
import numpy as np
import zarr
from servers import S3Endpoint
from zarr.codecs.numcodecs import Shuffle, Zlib

SST_SHAPE = (4, 1, 36, 72)  # time, zlev, lat, lon: OISST in miniature
SST_CHUNKS = (1, 1, 36, 72)
FIELD_SHAPE = (30, 40)
FIELD_CHUNKS = (8, 16)  # 4 x 3 chunks, the last ones partial


def write_sources(directory: Path, ndays: int = 2) -> list[Path]:
    """One netCDF4 file per day: int16 ``sst`` (zlib+shuffle, CF attributes), float32 ``field``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(42)
    lat = np.linspace(-89.5, 89.5, SST_SHAPE[2])
    for day in range(ndays):
        path = directory / f"day{day:02d}.nc"
        with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
            ds.createDimension("time", SST_SHAPE[0])
            ds.createDimension("zlev", 1)
            ds.createDimension("lat", SST_SHAPE[2])
            ds.createDimension("lon", SST_SHAPE[3])
            ds.createDimension("y", FIELD_SHAPE[0])
            ds.createDimension("x", FIELD_SHAPE[1])
            sst = ds.createVariable("sst", "i2", ("time", "zlev", "lat", "lon"), zlib=True,
                                    complevel=4, shuffle=True, chunksizes=SST_CHUNKS,
                                    fill_value=np.int16(-999))
            sst.scale_factor = 0.01
            sst.units = "Celsius"
            sst.set_auto_maskandscale(False)
            base = 2500 * np.cos(np.deg2rad(lat))[None, None, :, None]
            values = (base + rng.normal(0, 30, SST_SHAPE) + day * 7).astype("i2")
            values[:, :, :3, :] = -999  # land / missing, as in OISST
            sst[:] = values
            fld = ds.createVariable("field", "f4", ("y", "x"), chunksizes=FIELD_CHUNKS)
            fld[:] = rng.normal(day, 1, FIELD_SHAPE).astype("f4")
        paths.append(path)
    return paths


@dataclass
class Ref:
    key: str
    location: str
    offset: int
    length: int


def chunk_refs(path: Path, var: str, zarr_path: str) -> list[Ref]:
    """The byte range of every stored chunk of ``var``, read with h5py."""
    refs = []
    with h5py.File(path, "r") as f:
        d = f[var]
        for i in range(d.id.get_num_chunks()):
            info = d.id.get_chunk_info(i)
            coords = tuple(o // c for o, c in zip(info.chunk_offset, d.chunks, strict=True))
            key = f"{zarr_path}/c/" + "/".join(str(c) for c in coords)
            refs.append(Ref(key, path.resolve().as_uri(), info.byte_offset, info.size))
    return refs


def read_h5(path: Path, var: str) -> np.ndarray:
    """Raw stored values (no scaling, no masking), as an independent reader sees them."""
    with h5py.File(path, "r") as f:
        return np.asarray(f[var][...])


@dataclass(frozen=True)
class DayChunk:
    """The one chunk of ``var`` in a day's OISST-like file (scripts/make_oisst.py at full
    scale stores each variable in one chunk), and its byte range in that file."""

    var: str
    day: int
    nc: Path
    offset: int
    length: int

    @property
    def key(self) -> str:  # the Zarr v3 chunk key once the days are ingested along time
        return f"{self.var}/c/{self.day}/0/0/0"

    def source_bytes(self) -> bytes:
        with open(self.nc, "rb") as f:
            return os.pread(f.fileno(), self.length, self.offset)


def day_chunks(files: list[Path], variables: tuple[str, ...]) -> list[DayChunk]:
    """Every variable's chunk of every day, in array order, read with h5py."""
    out = []
    for var in variables:
        for day, f in enumerate(files):
            with h5py.File(f, "r") as h:
                ds = h[var]
                if ds.id.get_num_chunks() != 1:
                    raise RuntimeError(f"{f}:{var}: expected one chunk")
                info = ds.id.get_chunk_info(0)
                out.append(DayChunk(var, day, f, info.byte_offset, info.size))
    return out


@dataclass
class BuiltRepo:
    """What the tests need to know about a repository they built."""

    sources: list[Path]
    container_prefix: str
    snapshots: dict[str, str] = field(default_factory=dict)  # label -> snapshot id
    refs: dict[str, list[Ref]] = field(default_factory=dict)  # label -> refs of that commit


def last_modified(path: Path) -> datetime.datetime:
    """The changed-source checksum for a file: its mtime, rounded up to whole seconds
    (icechunk compares at one-second precision)."""
    return datetime.datetime.fromtimestamp(math.ceil(path.stat().st_mtime), datetime.UTC)


def local_container(directory: Path) -> ic.VirtualChunkContainer:
    prefix = directory.resolve().as_uri() + "/"
    return ic.VirtualChunkContainer(prefix, ic.local_filesystem_store(str(directory.resolve())))


Published = dict[Path, tuple[str, str | datetime.datetime]]


def publish_locally(sources: list[Path]) -> Published:
    """Sources read from the local disk: file:// URLs, checked by modification time."""
    return {p: (p.resolve().as_uri(), last_modified(p)) for p in sources}


def build_repo(storage: ic.Storage, sources_dir: Path, *,
               container: ic.VirtualChunkContainer | None = None,
               publish: Callable[[list[Path]], Published] = publish_locally) -> BuiltRepo:
    """A repository with history, written by icechunk itself.

    * ``v1`` (tag) on main: group attributes, ``sst`` virtual into day00.nc,
      ``field`` virtual, ``native`` a native array, ``small`` inline chunks.
    * main then moves to ``day1``: ``sst`` re-pointed at day01.nc.
    * branch ``dev`` from v1 adds ``dev_only``.

    ``publish`` makes the written sources reachable and returns, per file, the
    URL the refs use and the checksum (ETag or time) recorded with them.
    """
    sources = write_sources(sources_dir)
    published = publish(sources)
    container = container or local_container(sources_dir)
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(container)
    repo = ic.Repository.create(storage, config)
    repo.save_config()
    built = BuiltRepo(sources, container.url_prefix)

    def refs_for(path: Path, var: str, zpath: str) -> list[Ref]:
        refs = chunk_refs(path, var, zpath)
        for r in refs:
            r.location = published[path][0]
        return refs

    s = repo.writable_session("main")
    root = zarr.group(s.store, attributes={"title": "vchunkfs test", "Conventions": "CF-1.6"})
    root.create_array("sst", shape=SST_SHAPE, chunks=SST_CHUNKS, dtype="i2", fill_value=-999,
                      compressors=[Shuffle(elementsize=2), Zlib(level=4)],
                      dimension_names=["time", "zlev", "lat", "lon"],
                      attributes={"scale_factor": 0.01, "_FillValue": -999, "units": "Celsius"})
    root.create_array("field", shape=FIELD_SHAPE, chunks=FIELD_CHUNKS, dtype="f4",
                      compressors=None, fill_value=np.nan, dimension_names=["y", "x"])
    native = root.create_array("native", shape=(1000,), chunks=(250,), dtype="i4", fill_value=0,
                               compressors=None)
    native[:] = np.arange(1000, dtype="i4")  # 1000-byte chunks: stored natively
    small = root.create_group("grp").create_array("small", shape=(6,), chunks=(2,), dtype="u1",
                                                  fill_value=0, compressors=None)
    small[:4] = [1, 2, 3, 4]  # 2-byte chunks: inlined in the manifest; the last is missing
    refs = refs_for(sources[0], "sst", "sst") + refs_for(sources[0], "field", "field")
    for r in refs:
        s.store.set_virtual_ref(r.key, r.location, offset=r.offset, length=r.length,
                                checksum=published[sources[0]][1])
    built.snapshots["v1"] = s.commit("day 0: sst and field from day00.nc")
    built.refs["v1"] = refs
    repo.create_tag("v1", built.snapshots["v1"])

    s = repo.writable_session("main")
    refs1 = refs_for(sources[1], "sst", "sst")
    for r in refs1:
        s.store.set_virtual_ref(r.key, r.location, offset=r.offset, length=r.length,
                                checksum=published[sources[1]][1])
    built.snapshots["day1"] = s.commit("day 1: sst from day01.nc", metadata={"day": 1})
    built.refs["day1"] = refs1 + [r for r in refs if r.key.startswith("field/")]

    repo.create_branch("dev", built.snapshots["v1"])
    s = repo.writable_session("dev")
    g = zarr.open_group(s.store)
    g.create_array("dev_only", shape=(3,), chunks=(3,), dtype="i1", fill_value=0)[:] = [7, 8, 9]
    built.snapshots["dev"] = s.commit("dev: add dev_only")
    return built


def assert_reads_like_files(zarr_dir: Path, files: list[Path], zarr_format: int = 3) -> None:
    """xarray on a Zarr directory equals xarray on the netCDF files, concatenated along time:
    raw integers, coordinates (decoded time included), attributes, and the encodings that
    matter (scale_factor, _FillValue); scaled values equal within float32 precision."""
    import xarray as xr

    raw_m = xr.open_zarr(str(zarr_dir), consolidated=False, zarr_format=zarr_format,
                         chunks=None, mask_and_scale=False)
    parts = [xr.open_dataset(f, engine="netcdf4", mask_and_scale=False) for f in files]
    parts += [xr.open_dataset(f, engine="netcdf4") for f in files]
    n = len(files)
    try:
        raw_d = xr.concat(parts[:n], dim="time", coords="minimal", compat="override",
                          combine_attrs="override")
        xr.testing.assert_equal(raw_m.load(), raw_d.load())
        assert raw_m.attrs == raw_d.attrs
        for v in raw_d.variables:  # zarr adds a NaN fill value to float coordinates
            strip = {"_FillValue"} if v in raw_d.coords else set()
            assert {k: a for k, a in raw_m[v].attrs.items() if k not in strip} == {
                k: a for k, a in raw_d[v].attrs.items() if k not in strip}, v
        # scaled and masked: equal values (the zarr attributes carry scale_factor as a
        # float64 where netCDF has a float32, so xarray decodes to float64 there)
        dec_m = xr.open_zarr(str(zarr_dir), consolidated=False, zarr_format=zarr_format,
                             chunks=None)
        dec_d = xr.concat(parts[n:], dim="time", coords="minimal", compat="override",
                          combine_attrs="override")
        for v in ("sst", "anom", "err", "ice"):
            np.testing.assert_allclose(dec_m[v].values, dec_d[v].values, rtol=1e-6)
            assert int(np.isnan(dec_m[v].values).sum()) == int(
                np.isnan(dec_d[v].values).sum()) > 0
            enc_m, enc_d = dec_m[v].encoding, dec_d[v].encoding
            assert float(enc_m["scale_factor"]) == float(np.float32(enc_d["scale_factor"]))
            assert enc_m["_FillValue"] == enc_d["_FillValue"] == -999
        assert np.issubdtype(dec_m.time.dtype, np.datetime64)
        assert (dec_m.time.values == dec_d.time.values).all()
    finally:
        for p in parts:
            p.close()


def write_like_the_guide(files: list[Path], repo_path: Path, message: str) -> str:
    """The Icechunk guide's Python: VirtualiZarr opens each file, xr.concat along time,
    a file:// container over the files' directory, to_icechunk, commit. Returns the id."""
    import xarray as xr
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser

    registry = ObjectStoreRegistry({"file://": LocalStore()})
    vds = xr.concat([open_virtual_dataset(f.as_uri(), registry=registry, parser=HDFParser())
                     for f in files], dim="time", coords="minimal", compat="override",
                    combine_attrs="override")
    data = files[0].parent.resolve()
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(ic.VirtualChunkContainer(
        data.as_uri() + "/", ic.local_filesystem_store(str(data))))
    repo = ic.Repository.create(ic.local_filesystem_storage(str(repo_path)), config)
    repo.save_config()
    session = repo.writable_session("main")
    vds.vz.to_icechunk(session.store)
    return session.commit(message)


SST_V3_METADATA = {
    "zarr_format": 3, "node_type": "array", "shape": list(SST_SHAPE), "data_type": "int16",
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(SST_CHUNKS)}},
    "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
    "fill_value": -999,
    "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
               {"name": "numcodecs.shuffle", "configuration": {"elementsize": 2}},
               {"name": "numcodecs.zlib", "configuration": {"level": 4}}],
    "attributes": {"scale_factor": 0.01}, "dimension_names": ["time", "zlev", "lat", "lon"],
}


def build_s3_repo(s3: S3Endpoint, sources_dir: Path) -> tuple[BuiltRepo, dict[str, str]]:
    """:func:`build_repo` on a moto server: the repository at ``s3://repos/r``, the
    sources at ``s3://archive/nc/`` with their ETags recorded; also the environment a
    mount needs (``authorize=s3://archive/nc/=env``, ``endpoint_url=``)."""
    s3.create_bucket("repos")
    s3.create_bucket("archive")

    def publish(sources: list[Path]) -> Published:
        out: Published = {}
        for p in sources:
            s3.put_object("archive", f"nc/{p.name}", p.read_bytes())
            out[p] = (f"s3://archive/nc/{p.name}",
                      s3.head_object("archive", f"nc/{p.name}")["ETag"].strip('"'))
        return out

    container = ic.VirtualChunkContainer("s3://archive/nc/", ic.s3_store(
        region=s3.region, endpoint_url=s3.endpoint_url, allow_http=True,
        s3_compatible=True, force_path_style=True))
    storage = ic.s3_storage(bucket="repos", prefix="r", region=s3.region,
                            endpoint_url=s3.endpoint_url, allow_http=True,
                            force_path_style=True, access_key_id=s3.access_key_id,
                            secret_access_key=s3.secret_access_key)
    built = build_repo(storage, sources_dir, container=container, publish=publish)
    env = {"AWS_ACCESS_KEY_ID": s3.access_key_id,
           "AWS_SECRET_ACCESS_KEY": s3.secret_access_key, "AWS_REGION": s3.region}
    return built, env
