"""The control protocol: length-prefixed msgpack frames over a Unix socket.

A frame is a 4-byte unsigned big-endian length ``N`` (1 <= N <= MAX_FRAME)
followed by ``N`` bytes holding one msgpack map. Requests::

    {"v": 1, "id": INT, "op": STR, "args": MAP}

Replies, one per request, in request order::

    {"v": 1, "id": INT, "ok": true, "result": ANY[, "warnings": [STR, ...]]}
    {"v": 1, "id": INT | nil, "ok": false, "error": {"code": STR, "message": STR}}

``warnings`` (optional) says what went wrong *after* the request was applied
(e.g. the mount could not show a commit at once): the request still succeeded.
A frame that cannot be read as a request gets an error reply with code
``protocol`` and ``id`` nil, and the server closes that connection only.
docs/control-protocol.md is the full reference (operations, arguments, codes).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Buffer
from typing import Any

import msgpack

VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")

# refs in one set_virtual_refs_keys request (about 8 MB of msgpack, 50-80 MB of the
# daemon's memory while it is served); Client.set_virtual_refs sends 50,000 a request
MAX_KEYS_REFS = 100_000

# a location index meaning "no chunk here" in set_virtual_refs_block
NO_LOCATION = 0xFFFFFFFF

XATTR_SOCKET = "user.vchunkfs.control_socket"


class ProtocolError(Exception):
    """A frame that is not a well-formed request or reply."""


def encode(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the limit of {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def decode_body(body: Buffer) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types for bad input
        raise ProtocolError(f"frame is not valid msgpack: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a msgpack map")
    return message


def frame_length(header: bytes) -> int:
    (n,) = _HEADER.unpack(header)
    if n == 0 or n > MAX_FRAME:
        raise ProtocolError(f"frame length {n} outside 1..{MAX_FRAME}")
    return int(n)


def check_request(message: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """(id, op, args) of a request, or :class:`ProtocolError`."""
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r}; "
                            f"this server speaks {VERSION}")
    rid, op, args = message.get("id"), message.get("op"), message.get("args", {})
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ProtocolError("request 'id' must be an integer")
    if not isinstance(op, str):
        raise ProtocolError("request 'op' must be a string")
    if not isinstance(args, dict):
        raise ProtocolError("request 'args' must be a map")
    return rid, op, args


def ok(rid: int, result: Any = None) -> dict[str, Any]:
    return {"v": VERSION, "id": rid, "ok": True, "result": result}


def error(rid: int | None, code: str, message: str) -> dict[str, Any]:
    return {"v": VERSION, "id": rid, "ok": False, "error": {"code": code, "message": message}}


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes (blocking socket); EOFError if the peer closed."""
    parts = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def recv_message(sock: socket.socket) -> dict[str, Any]:
    return decode_body(recv_exact(sock, frame_length(recv_exact(sock, _HEADER.size))))


HEADER_SIZE = _HEADER.size
