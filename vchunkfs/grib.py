"""GRIB for ``vchunkfs ingest``: each message one chunk, decoded by ecCodes at read time.

Scanning: gribberish's VirtualiZarr parser (``GribberishParser(collapse_groups=True)``)
reads each file's message headers and lays the messages out as arrays along
``time`` and the vertical level (``isobar``, ``hag`` ...), one chunk per message
(its offset and length in the file). Decoding: not gribberish's codec, which is
a Zarr-v3-only ``ArrayBytesCodec`` that numcodecs (hence Zarr v2 readers and
the mount's decoded presentations) cannot use, but kerchunk's numcodecs
``grib`` codec (ecCodes), stored as the v3 chain ``bytes`` + ``numcodecs.grib``:
the message decodes to the chunk's little-endian float64 values. So:

* ``v2-decoded`` and ``v3-decoded`` (the mount decodes with numcodecs, which
  finds kerchunk's ``grib`` codec through its entry point): plain arrays, for
  every reader of docs/readers.md;
* ``v3`` and ``v2`` (the stored bytes): readable by zarr-python with this codec
  registered (``import vchunkfs.grib``) and ecCodes installed, by nothing else.

The choice, and gribberish against kerchunk's ``scan_grib``, is in
docs/benchmarks-ingest.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Self

import numpy as np
from zarr.abc.codec import BytesBytesCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer
from zarr.registry import register_codec

CODEC = "numcodecs.grib"


@dataclass(frozen=True)
class GribCodec(BytesBytesCodec):
    """A GRIB message -> the field's values as little-endian float64 bytes (ecCodes,
    through kerchunk's numcodecs ``grib`` codec). Read-only."""

    var: str
    dtype: str = "float64"
    is_fixed_size = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        conf = dict(data.get("configuration") or {})
        return cls(var=str(conf["var"]), dtype=str(conf.get("dtype", "float64")))

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC, "configuration": {"var": self.var, "dtype": self.dtype}}

    def _numcodec(self) -> Any:
        from kerchunk.codecs import GRIBCodec

        return GRIBCodec(var=self.var, dtype=self.dtype)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        values = np.asarray(self._numcodec().decode(chunk_bytes.to_bytes()))
        return chunk_spec.prototype.buffer.from_bytes(
            np.ascontiguousarray(values, dtype="<" + np.dtype(self.dtype).str[1:]).tobytes())

    async def _encode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer | None:
        raise NotImplementedError("GRIB messages are not written through Zarr")

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError


register_codec(CODEC, GribCodec)


class GribParser:
    """VirtualiZarr parser: gribberish's scan, chunks re-labelled for ecCodes decoding."""

    def __init__(self) -> None:
        try:
            from gribberish.virtualizarr import GribberishParser
            from kerchunk.codecs import GRIBCodec  # noqa: F401 -- the read-time codec
        except ImportError as e:
            from vchunkfs.errors import UsageError

            raise UsageError("GRIB needs gribberish, kerchunk and eccodes "
                             "(pip install 'vchunkfs[grib]')") from e
        self.inner = GribberishParser(collapse_groups=True)

    def __call__(self, url: str, registry: Any) -> Any:
        from virtualizarr.manifests import ManifestArray, ManifestGroup, ManifestStore
        from zarr.codecs import BytesCodec

        store = self.inner(url, registry)
        group = store._group
        arrays: dict[str, ManifestArray] = {}
        for name, arr in group.arrays.items():
            names = [c.to_dict().get("name") for c in arr.metadata.codecs]
            if "gribberish" in names:
                codecs = (BytesCodec(endian="little"), GribCodec(var=str(name)))
                meta = replace(arr.metadata, codecs=codecs, data_type=arr.metadata.data_type,
                               fill_value=np.nan,
                               attributes={k: v for k, v in arr.metadata.attributes.items()
                                           if k != "grid_mapping"})
                arrays[name] = ManifestArray(metadata=meta, chunkmanifest=arr.manifest)
            elif name == "spatial_ref" and not arr.shape:
                continue  # an inlined 0-d grid mapping: its CRS is in each variable's attrs
            else:
                arrays[name] = arr
        if group.groups:
            from vchunkfs.errors import InvalidInputError

            raise InvalidInputError(f"{url}: GRIB messages of several level types or "
                                    "product kinds are not supported yet")
        return ManifestStore(ManifestGroup(arrays=arrays, attributes=group.metadata.attributes),
                             registry=registry)
