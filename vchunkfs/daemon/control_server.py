"""The control socket: a Unix socket serving the control protocol to the mounting user and root.

Each connection is served by its own trio task: frames are read, checked and
answered in order. A frame that is not a request gets one ``protocol`` error
and closes that connection only; an operation that fails gets a typed error
and changes nothing. The socket is mode 0600 and every peer's uid is checked
with SO_PEERCRED.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

import trio

from vchunkfs.control import protocol
from vchunkfs.daemon.control_ops import ControlOps, request_warnings
from vchunkfs.errors import VchunkfsError

log = logging.getLogger("vchunkfs.control")

_PEERCRED = struct.Struct("3i")


def default_socket_path(mountpoint: str) -> str:
    """/run/vchunkfs/ for root, $XDG_RUNTIME_DIR/vchunkfs/ (or /tmp) for other users."""
    if os.getuid() == 0:
        base = Path("/run/vchunkfs")
    else:
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/vchunkfs-{os.getuid()}") \
            / "vchunkfs"
    escaped = mountpoint.strip("/").replace("-", "--").replace("/", "-") or "root"
    return str(base / f"{escaped}.sock")


class ControlServer:
    def __init__(self, ops: ControlOps, path: str, owner_uid: int | None = None) -> None:
        self.ops = ops
        self.path = path
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self._listener: trio.socket.SocketType | None = None

    async def bind(self) -> None:
        """Create the socket (mode 0600) before the mount is announced as ready."""
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
            if await _answers(path):
                raise OSError(errno.EADDRINUSE, f"{path} is in use by another daemon")
            path.unlink()  # left behind by a daemon that died
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(64)
        self._listener = sock

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._listener is not None, "bind() first"
        listener = self._listener
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(self._serve_connection, conn)

    def _peer_allowed(self, conn: trio.socket.SocketType) -> tuple[bool, int]:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        _pid, uid, _gid = _PEERCRED.unpack(raw)
        return uid in (0, self.owner_uid), uid

    async def _serve_connection(self, conn: trio.socket.SocketType) -> None:
        stream = trio.SocketStream(conn)
        try:
            allowed, uid = self._peer_allowed(conn)
            if not allowed:
                log.warning("refused a control connection from uid %d", uid)
                await stream.send_all(protocol.encode(protocol.error(
                    None, "permission", f"uid {uid} may not control this mount; only its "
                    f"owner (uid {self.owner_uid}) and root may")))
                # let the peer finish sending its request (discarded) and read the refusal:
                # closing now would fail its send with EPIPE before it sees why
                await stream.send_eof()
                with trio.move_on_after(1.0):
                    received = 0
                    while received < protocol.MAX_FRAME and (chunk := await stream.receive_some()):
                        received += len(chunk)
                return
            buffer = bytearray()
            while True:
                header = await _read(stream, buffer, protocol.HEADER_SIZE)
                if header is None:
                    return
                try:
                    body = await _read(stream, buffer, protocol.frame_length(header))
                    if body is None:
                        return
                    rid, op, args = protocol.check_request(protocol.decode_body(body))
                except protocol.ProtocolError as e:
                    await stream.send_all(protocol.encode(protocol.error(None, "protocol",
                                                                         str(e))))
                    return
                reply = await self._dispatch(rid, op, args)
                await stream.send_all(_encode_reply(rid, reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError,
                protocol.ProtocolError):
            pass  # the client went away, or closed inside a frame
        finally:
            await stream.aclose()

    async def _dispatch(self, rid: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = self.ops.handlers.get(op)
        if handler is None:
            return protocol.error(rid, "unknown_op", f"unknown operation {op!r}; known: "
                                  + ", ".join(sorted(self.ops.handlers)))
        warnings: list[str] = []
        token = request_warnings.set(warnings)
        try:
            reply = protocol.ok(rid, await handler(args))
        except VchunkfsError as e:
            log.info("%s failed: %s", op, e.message)
            return protocol.error(rid, e.code, e.message)
        except Exception as e:
            log.exception("%s failed unexpectedly", op)
            return protocol.error(rid, "error", f"{type(e).__name__}: {e}")
        finally:
            request_warnings.reset(token)
        if warnings:
            reply["warnings"] = warnings
        return reply


def _encode_reply(rid: int, reply: dict[str, Any]) -> bytes:
    try:
        return protocol.encode(reply)
    except protocol.ProtocolError as e:
        return protocol.encode(protocol.error(rid, "too_large", str(e)))


async def _read(stream: trio.SocketStream, buffer: bytearray, n: int) -> bytes | None:
    """Exactly ``n`` bytes, or None at a clean end of stream before any byte."""
    while len(buffer) < n:
        chunk = await stream.receive_some(max(65536, n - len(buffer)))
        if not chunk:
            if buffer:
                raise protocol.ProtocolError("connection closed inside a frame")
            return None
        buffer += chunk
    data = bytes(buffer[:n])
    del buffer[:n]
    return data


async def _answers(path: Path) -> bool:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()
