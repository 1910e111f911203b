"""A Zarr v3 array's codecs, translated to Zarr v2 and decoded with numcodecs.

A v3 codec list is ``[array->array ..., array->bytes, bytes->bytes ...]``. Its
Zarr v2 form is ``filters`` (the array->array codecs, then every bytes->bytes
codec but the last) and ``compressor`` (the last bytes->bytes codec), with the
byte order moved into the v2 ``dtype``. Decoding runs the same chain backwards
with numcodecs, the codec library every Python Zarr reader uses.

Codecs without a v2 form (sharding, a transpose other than a full reversal)
raise :class:`UnsupportedArrayError` with the codec's name, so a presentation
can say which array it cannot show and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np
from numcodecs.abc import Codec

from vchunkfs.errors import BackendError

# v3 data types of a fixed size, and their numpy spelling without byte order
_DATA_TYPES = {
    "bool": "b1", "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8",
    "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8",
    "float16": "f2", "float32": "f4", "float64": "f8",
    "complex64": "c8", "complex128": "c16",
}
# v3 codecs whose configuration numcodecs takes under another spelling
_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


class UnsupportedArrayError(BackendError):
    """An array this presentation cannot show (its codecs or data type have no form here)."""

    code = "unsupported_array"


class ChunkDecodeError(BackendError):
    """A stored chunk did not decode to the array's chunk shape and data type."""

    code = "decode_failed"


@dataclass(frozen=True)
class CodecChain:
    """How one array's chunks are encoded, in the forms presentations need."""

    dtype: np.dtype[Any]  # as stored, byte order included
    chunk_shape: tuple[int, ...]
    order: str  # "C", or "F" when the chain holds a transpose that reverses the axes
    array_codecs: tuple[dict[str, Any], ...]  # v2 specs (numcodecs ids) of array->array codecs
    bytes_codecs: tuple[dict[str, Any], ...]  # v2 specs of bytes->bytes codecs, in encode order

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> CodecChain:
        """Read a v3 ``zarr.json``; raises UnsupportedArrayError naming what has no form."""
        data_type = meta.get("data_type")
        kind = _DATA_TYPES.get(data_type) if isinstance(data_type, str) else None
        if kind is None:
            raise UnsupportedArrayError(f"data type {data_type!r} has no fixed-size form")
        chunk_shape = tuple(int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"])
        array_codecs: list[dict[str, Any]] = []
        bytes_codecs: list[dict[str, Any]] = []
        endian, order, seen_bytes = "little", "C", False
        for codec in meta.get("codecs", []):
            name = codec.get("name", "")
            conf = dict(codec.get("configuration") or {})
            if name == "bytes":
                endian, seen_bytes = conf.get("endian", "little"), True
            elif name == "transpose":
                axes = list(conf.get("order", []))
                if axes != list(range(len(chunk_shape)))[::-1] or order != "C":
                    raise UnsupportedArrayError(f"codec transpose with order {axes} has no "
                                                "Zarr v2 form")
                order = "F" if len(chunk_shape) > 1 else "C"
            elif not seen_bytes:
                array_codecs.append(_v2_spec(name, conf))
            else:
                bytes_codecs.append(_v2_spec(name, conf))
        if not seen_bytes:
            raise UnsupportedArrayError("no 'bytes' codec: the chunk layout is not a plain array")
        byte_order = "|" if kind in ("b1", "i1", "u1") else ("<" if endian == "little" else ">")
        return cls(np.dtype(byte_order + kind), chunk_shape, order,
                   tuple(array_codecs), tuple(bytes_codecs))

    @property
    def decoded_nbytes(self) -> int:
        """Size of a decoded chunk (edge chunks too: Zarr stores them whole)."""
        return math.prod(self.chunk_shape) * self.dtype.itemsize

    def v2_filters_compressor(self) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
        """``filters`` and ``compressor`` of the v2 ``.zarray`` for the stored bytes."""
        filters = list(self.array_codecs) + list(self.bytes_codecs[:-1])
        compressor = self.bytes_codecs[-1] if self.bytes_codecs else None
        return filters or None, compressor

    def decode(self, stored: bytes) -> bytes:
        """Plain C-order, little-endian bytes of one stored chunk (CPU-bound: run off the loop).

        Raises ChunkDecodeError when a codec fails or the result has the wrong size:
        never returns bytes of another length than :attr:`decoded_nbytes`.
        """
        try:
            data: Any = stored
            for spec in reversed(self.bytes_codecs):
                data = _codec(spec).decode(data)
            arr = np.frombuffer(memoryview(data), dtype=self.dtype)
            for spec in reversed(self.array_codecs):
                arr = np.asarray(_codec(spec).decode(arr))
            if arr.size != math.prod(self.chunk_shape):
                raise ValueError(f"{arr.size} elements, expected {math.prod(self.chunk_shape)}")
            arr = arr.reshape(self.chunk_shape, order=self.order)  # type: ignore[call-overload]
            out = np.ascontiguousarray(arr, dtype=self.dtype.newbyteorder("<")).tobytes()
        except Exception as e:
            raise ChunkDecodeError(f"chunk did not decode: {type(e).__name__}: {e}") from e
        if len(out) != self.decoded_nbytes:
            raise ChunkDecodeError(f"chunk decoded to {len(out)} bytes, expected "
                                   f"{self.decoded_nbytes}")
        return out


def _v2_spec(name: str, conf: dict[str, Any]) -> dict[str, Any]:
    """The numcodecs (Zarr v2) spelling of one v3 codec."""
    if name.startswith("numcodecs."):
        spec = {"id": name.removeprefix("numcodecs."), **conf}
    elif name == "gzip":
        spec = {"id": "gzip", "level": conf.get("level", 5)}
    elif name == "zstd":
        spec = {"id": "zstd", "level": conf.get("level", 0),
                "checksum": conf.get("checksum", False)}
    elif name == "blosc":
        spec = {"id": "blosc", "cname": conf.get("cname", "lz4"), "clevel": conf.get("clevel", 5),
                "shuffle": _BLOSC_SHUFFLE.get(conf.get("shuffle", "noshuffle"), 0),
                "blocksize": conf.get("blocksize", 0)}
    elif name == "crc32c":
        spec = {"id": "crc32c"}
    else:
        raise UnsupportedArrayError(f"codec {name!r} has no Zarr v2 form")
    try:
        _codec(spec)
    except Exception as e:
        raise UnsupportedArrayError(f"codec {name!r}: numcodecs cannot build it ({e})") from e
    return spec


_CODECS: dict[str, Codec] = {}


def _codec(spec: dict[str, Any]) -> Codec:
    key = repr(sorted(spec.items()))
    codec = _CODECS.get(key)
    if codec is None:
        codec = _CODECS[key] = numcodecs.get_codec(dict(spec))
    return codec
