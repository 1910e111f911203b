"""Run real Zarr readers on a Zarr directory and say what each one read.

Every reader in ``READERS`` has ``read(store_dir, array) -> ReaderResult``: the values the
reader returned for the array at ``array`` (a path inside the group at ``store_dir``), or
its refusal with the reader's own error line. ``classify`` compares a result with the
ground truth (the raw values h5py reads from the source files) and says "pass", "wrong"
(read without error, values differ) or "refused".

The readers are the real programs and libraries a user would run, installed by
``scripts/setup-readers``:

==================  ==================================================================
``zarr-python``     ``zarr.open_array(...)[...]`` (raw values)
``xarray``          ``xr.open_zarr(..., decode_times=False)`` (CF-decoded: scaled, masked)
``netcdf4-python``  the netCDF4 wheel's bundled netCDF-C, ``file://...#mode=zarr,file``
``tensorstore``     the ``zarr`` driver where ``.zarray`` exists, else ``zarr3``
``gdal-python``     the GDAL bundled in the rasterio wheel: ``ZARR:"dir":/array``
``gdalmdiminfo``    Debian's GDAL (gdal-bin): ``gdalmdiminfo -detailed -array``
``gdal_translate``  Debian's GDAL: every 2D slice subdataset to ENVI, read back
``ncdump``          Debian's netCDF-C (netcdf-bin): ``ncdump -v`` on ``#mode=zarr,file``
``zarrita.js``      ``zarrita`` + ``@zarrita/storage`` FileSystemStore on Node
``zarr.js``         the old ``zarr`` npm package (Zarr v2 only) on Node
==================  ==================================================================
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[2]
JS_DIR = Path(__file__).resolve().parent / "js"
#: npm installs the JS readers here (scripts/setup-readers); VCHUNKFS_READERS_JS overrides
JS_MODULES = Path(os.environ.get("VCHUNKFS_READERS_JS", REPO / ".cache" / "readers-js"))
TIMEOUT = 120.0

Verdict = Literal["pass", "wrong", "refused"]


@dataclass(frozen=True)
class ReaderResult:
    """What one reader made of one array: values, or a refusal with its error line."""

    reader: str
    version: str
    values: npt.NDArray[Any] | None = None
    scaled: bool = False  # scale_factor / add_offset applied
    masked: bool = False  # fill values replaced by NaN
    error: str | None = None  # the reader's own error line, when it refused
    log: str = ""  # more of what it said (stderr), for debugging

    @property
    def refused(self) -> bool:
        return self.values is None

    def __post_init__(self) -> None:
        if (self.values is None) == (self.error is None):
            raise ValueError("a ReaderResult holds values or an error, not both or neither")


@dataclass(frozen=True)
class Expected:
    """The ground truth of one array: raw values and the CF attributes a reader may apply."""

    raw: npt.NDArray[Any]
    fill_value: float | None = None
    scale_factor: float = 1.0
    add_offset: float = 0.0

    def as_read_by(self, result: ReaderResult) -> npt.NDArray[Any]:
        """The values a correct reader returns, given what it says it applied."""
        if not (result.scaled or result.masked):
            return self.raw
        out = self.raw.astype(np.float64)
        if result.masked and self.fill_value is not None:
            out[self.raw == self.fill_value] = np.nan
        if result.scaled:
            out = out * self.scale_factor + self.add_offset
        return out


@dataclass(frozen=True)
class Classification:
    verdict: Verdict
    detail: str  # the error line, or how the values differ, or "" for a pass


def classify(result: ReaderResult, expected: Expected) -> Classification:
    """Say whether ``result`` is a pass, wrong values, or a refusal."""
    if result.values is None:
        return Classification("refused", result.error or "")
    want = expected.as_read_by(result)
    got = result.values
    if got.shape != want.shape:
        return Classification("wrong", f"shape {got.shape}, expected {want.shape}")
    if np.issubdtype(want.dtype, np.integer) and np.issubdtype(got.dtype, np.integer):
        same = got == want
    else:
        got_f, want_f = got.astype(np.float64), want.astype(np.float64)
        same = np.isclose(got_f, want_f, rtol=1e-6, atol=0.0, equal_nan=True)
    bad = int(same.size - np.count_nonzero(same))
    if bad:
        first = tuple(int(i) for i in np.argwhere(~same)[0])
        return Classification(
            "wrong", f"{bad} of {same.size} values differ; at {first}: "
            f"{got[first]!r}, expected {want[first]!r}")
    return Classification("pass", "")


@dataclass(frozen=True)
class Reader:
    """A reader: ``read`` runs it; ``missing`` says why it cannot run here, or None."""

    name: str
    describe: str
    read: Callable[[Path, str], ReaderResult]
    missing: Callable[[], str | None]
    version: Callable[[], str]


# ---------------------------------------------------------------- helpers


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _missing_module(*dists: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        for d in dists:
            try:
                importlib.metadata.version(d)
            except importlib.metadata.PackageNotFoundError:
                return f"the Python package {d} is not installed (scripts/setup-readers)"
        return None
    return missing


def _missing_program(*programs: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        for p in programs:
            if shutil.which(p) is None:
                return f"{p} is not on PATH (scripts/setup-readers)"
        return None
    return missing


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text.strip()


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(str(exc))}"


def _masked_to_nan(values: Any) -> tuple[npt.NDArray[Any], bool]:
    """numpy array from a (maybe masked) array; masked elements become NaN."""
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values)
        data = np.asarray(values.data)
        if mask.any():
            data = data.astype(np.float64)
            data[mask] = np.nan
        return data, True
    return np.asarray(values), False


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str

    def failure(self, program: str) -> str:
        """The program's own error line, or how it died."""
        errors = [ln.strip() for ln in self.stderr.splitlines() if "ERROR" in ln]
        if errors:
            return errors[0]
        if self.returncode < 0:
            name = signal.Signals(-self.returncode).name
            return f"{program} killed by {name}"
        return _first_line(self.stderr) or f"{program} exited with {self.returncode}"


def _run(argv: list[str], *, cwd: Path | None = None, stdin: str | None = None,
         env: dict[str, str] | None = None) -> _Run:
    proc = subprocess.run(argv, cwd=cwd, input=stdin, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    return _Run(proc.returncode, proc.stdout, proc.stderr)


def _clean_env(*drop: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in drop}


# ---------------------------------------------------------------- Python readers


def _zarr_python(store_dir: Path, array: str) -> ReaderResult:
    import zarr

    name, version = "zarr-python", zarr.__version__
    try:
        arr = zarr.open_array(str(store_dir), path=array, mode="r")
        values = np.asarray(arr[...])
    except Exception as exc:
        return ReaderResult(name, version, error=_error_line(exc))
    return ReaderResult(name, version, values)


def _xarray(store_dir: Path, array: str) -> ReaderResult:
    import xarray as xr

    name = "xarray"
    version = f"{xr.__version__} (zarr {_dist_version('zarr')})"
    try:
        with warnings.catch_warnings():
            # consolidated=None tries .zmetadata first and warns when it falls back
            warnings.simplefilter("ignore", RuntimeWarning)
            ds = xr.open_zarr(str(store_dir), chunks=None, decode_times=False)
        with ds:
            var = ds[array]
            values = np.asarray(var.values)
            enc = var.encoding
    except Exception as exc:
        return ReaderResult(name, version, error=_error_line(exc))
    return ReaderResult(name, version, values,
                        scaled="scale_factor" in enc or "add_offset" in enc,
                        masked="_FillValue" in enc and np.issubdtype(values.dtype, np.floating))


def _netcdf4_version() -> str:
    try:
        import netCDF4
    except ImportError:
        return "not installed"
    return f"{netCDF4.__version__} (netCDF-C {netCDF4.__netcdf4libversion__})"


def _netcdf4(store_dir: Path, array: str) -> ReaderResult:
    # netCDF4/__init__.py sets HDF5_PLUGIN_PATH to its bundled plugins directory when the
    # variable is unset; without those plugins no shuffle/zlib chunk can be decoded.
    import netCDF4

    name, version = "netcdf4-python", _netcdf4_version()
    url = f"file://{store_dir.resolve()}#mode=zarr,file"
    try:
        with netCDF4.Dataset(url) as ds:
            var = ds[array]
            attrs = set(var.ncattrs())
            values, masked = _masked_to_nan(var[...])
    except Exception as exc:
        return ReaderResult(name, version, error=_error_line(exc))
    return ReaderResult(name, version, values,
                        scaled=bool(attrs & {"scale_factor", "add_offset"}), masked=masked)


def _tensorstore(store_dir: Path, array: str) -> ReaderResult:
    import tensorstore as ts

    name, version = "tensorstore", _dist_version("tensorstore")
    path = store_dir.resolve() / array
    driver = "zarr" if (path / ".zarray").exists() else "zarr3"
    spec = {"driver": driver, "kvstore": {"driver": "file", "path": f"{path}/"}}
    try:
        store = ts.open(spec, read=True).result()
        values = np.asarray(store.read().result())
    except Exception as exc:
        # tensorstore appends the whole spec as "[tensorstore_spec=...]"
        message = re.sub(r"\s*\[tensorstore_spec=.*", "", _error_line(exc))
        return ReaderResult(name, version, error=f"{driver} driver: {message}")
    return ReaderResult(name, version, values)


def _rasterio_version() -> str:
    try:
        import rasterio
    except ImportError:
        return "not installed"
    return f"GDAL {rasterio.__gdal_version__} (rasterio {rasterio.__version__} wheel)"


def _gdal_python(store_dir: Path, array: str) -> ReaderResult:
    """GDAL's Zarr driver as rasterio's bundled GDAL opens it (the classic raster API).

    GDAL >= 3.8 exposes an N-D array as one dataset whose bands run over the non-spatial
    dimensions (band tags DIM_<name>_INDEX); this reshapes the bands back to N-D.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    name, version = "gdal-python", _rasterio_version()
    try:
        with warnings.catch_warnings(), rasterio.Env():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(f'ZARR:"{store_dir.resolve()}":/{array}') as ds:
                values = np.asarray(ds.read())
                dims: dict[str, int] = {}
                for band in range(1, ds.count + 1):
                    for key, value in ds.tags(band).items():
                        m = re.fullmatch(r"DIM_(.+)_INDEX", key)
                        if m:
                            dims[m.group(1)] = max(dims.get(m.group(1), 0), int(value) + 1)
    except Exception as exc:
        return ReaderResult(name, version, error=_error_line(exc))
    if dims:
        values = values.reshape(*dims.values(), *values.shape[1:])
    elif values.shape[:2] == (1, 1):
        values = values[0, 0]  # the classic API shows a 1-D array as a one-line raster
    return ReaderResult(name, version, values)


# ---------------------------------------------------------------- Debian CLI readers

_GDAL_NUMPY = {"Byte": "u1", "Int8": "i1", "UInt16": "u2", "Int16": "i2", "UInt32": "u4",
               "Int32": "i4", "UInt64": "u8", "Int64": "i8", "Float32": "f4", "Float64": "f8"}
# ENVI header "data type" codes
_ENVI_NUMPY = {1: "u1", 2: "<i2", 3: "<i4", 4: "<f4", 5: "<f8", 12: "<u2", 13: "<u4",
               14: "<i8", 15: "<u8"}


@cache
def _gdal_cli_version() -> str:
    if shutil.which("gdalinfo") is None:
        return "not installed"
    out = _run(["gdalinfo", "--version"]).stdout  # "GDAL 3.6.2, released 2023/01/02"
    return _first_line(out).split(",")[0]


def _gdalmdiminfo(store_dir: Path, array: str) -> ReaderResult:
    name, version = "gdalmdiminfo", _gdal_cli_version()
    run = _run(["gdalmdiminfo", "-detailed", "-array", array, str(store_dir.resolve())])
    if run.returncode != 0 or not run.stdout.strip():
        # on an unreadable array it prints nothing and exits 0 ("Cannot find array")
        return ReaderResult(name, version, error=run.failure("gdalmdiminfo"), log=run.stderr)
    info = json.loads(run.stdout)
    dtype = _GDAL_NUMPY.get(str(info.get("datatype")), "f8")
    values = np.array(info["values"], dtype=dtype)
    return ReaderResult(name, version, values, log=run.stderr)


def _gdal_translate(store_dir: Path, array: str) -> ReaderResult:
    """The classic raster tools: list subdatasets with gdalinfo, translate each 2D slice
    (``ZARR:"dir":/array:i:j`` for the extra dimensions' indices) to ENVI, read it back."""
    name, version = "gdal_translate", _gdal_cli_version()
    root = f'ZARR:"{store_dir.resolve()}"'
    info = _run(["gdalinfo", "-json", root])
    if info.returncode != 0:
        return ReaderResult(name, version, error=info.failure("gdalinfo"), log=info.stderr)
    subdatasets = json.loads(info.stdout).get("metadata", {}).get("SUBDATASETS", {})
    prefix = f"{root}:/{array}"
    slices: dict[tuple[int, ...], str] = {}
    for key, value in subdatasets.items():
        if key.endswith("_NAME") and (value == prefix or value.startswith(prefix + ":")):
            rest = value[len(prefix):]
            slices[tuple(int(i) for i in rest.split(":")[1:])] = value
    if len(slices) > 1:
        # GDAL 3.6 also lists the whole N-D array, which the classic tools cannot open
        # ("Indices of extra dimensions must be specified"): keep the 2D slices
        slices.pop((), None)
    elif list(slices) == [()]:
        # with several N-D arrays GDAL lists only the arrays; name the slices as a user
        # does (ZARR:"dir":/sst:14:0), from the sizes gdalmdiminfo gives
        mdim = _run(["gdalmdiminfo", "-array", array, "-limit", "0", root])
        if mdim.returncode == 0:
            sizes = [int(d["size"]) for d in json.loads(mdim.stdout)["dimensions"]]
            if len(sizes) > 2:
                slices = {ix: f"{prefix}:" + ":".join(map(str, ix))
                          for ix in np.ndindex(*sizes[:-2])}
    if not slices:
        return ReaderResult(name, version, log=info.stderr,
                            error=info.failure("gdalinfo") if "ERROR" in info.stderr
                            else f"gdalinfo lists no subdataset for /{array}")
    planes: dict[tuple[int, ...], npt.NDArray[Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vchunkfs-gdal-") as tmp:
        for index, subdataset in slices.items():
            out = Path(tmp) / "slice.bin"
            run = _run(["gdal_translate", "-q", "-of", "ENVI", subdataset, str(out)])
            if run.returncode != 0:
                return ReaderResult(name, version, error=run.failure("gdal_translate"),
                                    log=run.stderr)
            header = out.with_suffix(".hdr").read_text()
            fields = dict(re.findall(r"^\s*([a-z ]+?)\s*=\s*(\S+)\s*$", header, re.M))
            dtype = _ENVI_NUMPY[int(fields["data type"])]
            shape = (int(fields["bands"]), int(fields["lines"]), int(fields["samples"]))
            planes[index] = np.fromfile(out, dtype=dtype).reshape(shape)[0]
    if list(planes) == [()] and planes[()].shape[0] == 1:
        # the classic API shows a 1-D array as a one-line raster
        return ReaderResult(name, version, planes[()][0])
    extra = tuple(max(ix[d] for ix in planes) + 1 for d in range(len(next(iter(planes)))))
    first = next(iter(planes.values()))
    values = np.empty(extra + first.shape, dtype=first.dtype)
    for index, plane in planes.items():
        values[index] = plane
    return ReaderResult(name, version, values)


@cache
def _ncdump_version() -> str:
    if shutil.which("ncdump") is None:
        return "not installed"
    usage = _run(["ncdump"]).stderr  # ends "netcdf library version 4.9.0 of ..."
    m = re.search(r"netcdf library version (\S+)", usage)
    return f"netCDF-C {m.group(1)}" if m else "unknown"


def _ncdump(store_dir: Path, array: str) -> ReaderResult:
    """Debian's ncdump on ``file://DIR#mode=zarr,file``: prints raw values, ``_`` for fill."""
    name, version = "ncdump", _ncdump_version()
    url = f"file://{store_dir.resolve()}#mode=zarr,file"
    # the netCDF4 wheel, once imported, sets HDF5_PLUGIN_PATH to its own plugins: keep
    # them away from Debian's library so this is what a Debian user gets
    run = _run(["ncdump", "-p", "9,17", "-v", array, url], env=_clean_env("HDF5_PLUGIN_PATH"))
    if run.returncode != 0:
        error = run.failure("ncdump")
        if run.returncode < 0 and "data:" in run.stdout:
            error += " after printing some values"  # e.g. compressed bytes taken as raw
        return ReaderResult(name, version, error=error, log=run.stderr + run.stdout[-2000:])
    m = re.search(rf"^data:\s*^\s*{re.escape(array)} =(.*?);\s*$", run.stdout, re.M | re.S)
    if m is None:
        return ReaderResult(name, version, error=f"ncdump printed no data for {array}",
                            log=run.stdout[-2000:])
    shape_m = re.search(rf"^\s*\S+ {re.escape(array)}\(([^)]*)\) ;", run.stdout, re.M)
    dims_m = re.search(r"^dimensions:(.*?)^variables:", run.stdout, re.M | re.S)
    tokens = [t for t in re.split(r"[,\s]+", m.group(1)) if t]
    masked = "_" in tokens
    # float NaN and infinities print as NaNf, Infinityf, -Infinityf
    values = np.array([np.nan if t == "_" else float(t.removesuffix("f")) for t in tokens])
    if shape_m and dims_m:
        sizes = dict(re.findall(r"^\s*(\S+) = (\d+) ;", dims_m.group(1), re.M))
        values = values.reshape([int(sizes[d.strip()]) for d in shape_m.group(1).split(",")])
    return ReaderResult(name, version, values, masked=masked)


# ---------------------------------------------------------------- Node readers


def _node_missing(package: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        if shutil.which("node") is None:
            return "node is not on PATH (scripts/setup-readers)"
        if not (JS_MODULES / "node_modules" / package / "package.json").exists():
            return f"npm package {package} is not in {JS_MODULES} (scripts/setup-readers)"
        return None
    return missing


def _node_version(package: str) -> Callable[[], str]:
    def version() -> str:
        try:
            meta = json.loads((JS_MODULES / "node_modules" / package / "package.json")
                              .read_text())
        except OSError:
            return "not installed"
        node = _run(["node", "--version"]).stdout.strip() if shutil.which("node") else "?"
        return f"{meta['version']} (node {node})"
    return version


def _node_reader(name: str, script: str, package: str) -> Callable[[Path, str], ReaderResult]:
    """Run tests/readers/js/SCRIPT with node, from JS_MODULES so that its imports resolve
    to the npm packages installed there (the script comes on standard input)."""
    def read(store_dir: Path, array: str) -> ReaderResult:
        version = _node_version(package)()
        source = (JS_DIR / script).read_text()
        run = _run(["node", "--input-type=module", "-", str(store_dir.resolve()), array],
                   cwd=JS_MODULES, stdin=source)
        if run.returncode != 0 or not run.stdout.startswith("{"):
            return ReaderResult(name, version, error=run.failure("node"), log=run.stderr)
        out = json.loads(run.stdout)
        if "error" in out:
            return ReaderResult(name, version, error=str(out["error"]), log=run.stderr)
        dtype = np.dtype(str(out["dtype"]).replace("v2:", ""))
        values = np.array(out["values"], dtype=dtype).reshape(out["shape"])
        return ReaderResult(name, version, values)
    return read


# ---------------------------------------------------------------- the registry

READERS: dict[str, Reader] = {
    r.name: r for r in [
        Reader("zarr-python", "zarr.open_array(dir, path=array)[...]", _zarr_python,
               _missing_module("zarr"), lambda: _dist_version("zarr")),
        Reader("xarray", "xr.open_zarr(dir, decode_times=False)[array].values", _xarray,
               _missing_module("xarray", "zarr"), lambda: _dist_version("xarray")),
        Reader("netcdf4-python", "netCDF4.Dataset('file://DIR#mode=zarr,file')[array][...]",
               _netcdf4, _missing_module("netCDF4"), _netcdf4_version),
        Reader("tensorstore", "ts.open({'driver': 'zarr' or 'zarr3', 'kvstore': file})",
               _tensorstore, _missing_module("tensorstore"),
               lambda: _dist_version("tensorstore")),
        Reader("gdal-python", "rasterio.open('ZARR:\"DIR\":/array').read() (bundled GDAL)",
               _gdal_python, _missing_module("rasterio"), _rasterio_version),
        Reader("gdalmdiminfo", "gdalmdiminfo -detailed -array ARRAY DIR (Debian gdal-bin)",
               _gdalmdiminfo, _missing_program("gdalmdiminfo"), _gdal_cli_version),
        Reader("gdal_translate", "gdal_translate -of ENVI 'ZARR:\"DIR\":/array:i:j' per slice",
               _gdal_translate, _missing_program("gdalinfo", "gdal_translate"),
               _gdal_cli_version),
        Reader("ncdump", "ncdump -v ARRAY 'file://DIR#mode=zarr,file' (Debian netcdf-bin)",
               _ncdump, _missing_program("ncdump"), _ncdump_version),
        Reader("zarrita.js", "zarrita open + get with @zarrita/storage FileSystemStore",
               _node_reader("zarrita.js", "zarrita.mjs", "zarrita"),
               _node_missing("zarrita"), _node_version("zarrita")),
        Reader("zarr.js", "zarr (npm) openArray + getRaw over a node:fs store",
               _node_reader("zarr.js", "zarrjs.mjs", "zarr"),
               _node_missing("zarr"), _node_version("zarr")),
    ]
}


def read_all(store_dir: Path, array: str) -> Iterator[tuple[Reader, ReaderResult | str]]:
    """Every reader's result on one array, or the reason the reader is missing."""
    for reader in READERS.values():
        reason = reader.missing()
        if reason is not None:
            yield reader, reason
            continue
        yield reader, reader.read(store_dir, array)


# ---------------------------------------------------------------- command line


def expected_from_zarr(store_dir: Path, array: str) -> Expected:
    """Ground truth from zarr-python's raw read, with the array's CF attributes."""
    import zarr

    arr = zarr.open_array(str(store_dir), path=array, mode="r")
    attrs: dict[str, Any] = dict(arr.attrs)
    fill = attrs.get("_FillValue", arr.fill_value if arr.metadata.zarr_format == 3 else None)
    return Expected(np.asarray(arr[...]), fill_value=None if fill is None else float(fill),
                    scale_factor=float(attrs.get("scale_factor", 1.0)),
                    add_offset=float(attrs.get("add_offset", 0.0)))


def main(argv: list[str] | None = None) -> int:
    """``python tests/readers/harness.py DIR [ARRAY] [--truth DIR2] [--only NAME,...]``:
    run every reader on DIR/ARRAY and classify against zarr-python's read of DIR2/ARRAY
    (default DIR itself), e.g. a mounted presentation against a plain copy."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("store", type=Path)
    parser.add_argument("array", nargs="?", default="sst")
    parser.add_argument("--truth", type=Path, help="a store with the right values")
    parser.add_argument("--only", help="comma-separated reader names")
    args = parser.parse_args(argv)
    expected = expected_from_zarr(args.truth or args.store, args.array)
    names = args.only.split(",") if args.only else list(READERS)
    for name in names:
        reader = READERS[name]
        reason = reader.missing()
        if reason is not None:
            print(f"{name:15} missing  {reason}")
            continue
        result = reader.read(args.store, args.array)
        got = classify(result, expected)
        flags = "".join(f for f, on in (("S", result.scaled), ("M", result.masked)) if on)
        print(f"{name:15} {got.verdict:8} {flags:2} {reader.version()}: {got.detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
