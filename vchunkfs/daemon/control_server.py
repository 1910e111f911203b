"""The control socket: a Unix socket serving the control protocol to the mounting user and root.

Each connection is served by its own trio task: frames are read, checked and
answered in order. A frame that is not a request gets one ``protocol`` error
and closes that connection only; an operation that fails gets a typed error
and changes nothing. The socket is mode 0600 and every peer's uid is checked
with SO_PEERCRED.

Memory and time are bounded (:class:`ControlLimits`, docs/control-protocol.md
"Limits"): a frame longer than ``max_frame`` is refused before any of it is
read; the bytes of the requests being read or served, summed over every
connection, stay within ``buffer_bytes`` (a request waits for room, up to the
stall timeout, then is refused with ``busy``); a connection that sends no
request for ``idle_timeout`` seconds, or stalls inside a frame or while its
reply is sent for ``stall_timeout`` seconds, is closed; at most
``max_connections`` are served at once (others get ``busy``).

A body is read straight into an anonymous mmap of its announced size (no
copies; pages are taken only as bytes arrive, and unmapped when it is decoded).
Decoded, a request can take several times its frame, so requests of
``large_frame`` bytes or more are decoded and served one at a time. After a
large request (or one that drops a staged session) the C heap is trimmed (glibc
``malloc_trim``) once no request holds buffer room, so a daemon that grew for one
request does not stay grown.

Timeouts bound only the reading of a request and the sending of its reply, never
the operation: an applied change is always answered.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from vchunkfs.control import protocol
from vchunkfs.daemon.control_ops import ControlOps, request_warnings
from vchunkfs.errors import VchunkfsError

log = logging.getLogger("vchunkfs.control")

_PEERCRED = struct.Struct("3i")
MiB = 1024 * 1024


@dataclass
class ControlLimits:
    """The control socket's bounds (mount options ``control_*``; see the protocol doc)."""

    max_frame: int = protocol.MAX_FRAME  # bytes of one request frame
    buffer_bytes: int = 256 * MiB  # request bytes held at once, all connections together
    idle_timeout: float = 600.0  # seconds a connection may wait between requests
    stall_timeout: float = 30.0  # seconds without progress inside a frame or a reply
    max_connections: int = 256  # connections served at once
    backlog: int = 4096  # listen backlog (the kernel caps it at net.core.somaxconn)
    trim_after: int = 1 * MiB  # a request at least this large trims the heap when done
    large_frame: int = 1 * MiB  # requests at least this large are decoded one at a time


class ByteBudget:
    """Bytes of requests held at once, across connections. Trio thread only.

    ``acquire`` waits until the request fits (a request of at most ``total``
    always fits once nothing else is held); ``release`` never awaits.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        self._freed = trio.Event()

    async def acquire(self, n: int) -> None:
        while self.used and self.used + n > self.total:
            await self._freed.wait()
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        self.used -= n
        self._freed.set()
        self._freed = trio.Event()


def _malloc_trim() -> bool:
    """Give the C heap's free memory back to the system (glibc); False elsewhere."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


_NO_LOCK = contextlib.nullcontext()

# operations that drop a staged session (which may hold millions of refs)
_FREEING_OPS = frozenset({"commit", "discard", "reset_branch", "delete_branch"})


class _Closing(Exception):
    """End this connection after sending ``reply`` (a protocol-level refusal)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.reply = protocol.error(None, code, message)


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
    def __init__(self, ops: ControlOps, path: str, owner_uid: int | None = None,
                 limits: ControlLimits | None = None) -> None:
        self.ops = ops
        self.path = path
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.limits = limits or ControlLimits()
        self.budget = ByteBudget(max(self.limits.buffer_bytes, self.limits.max_frame))
        self.connections = 0
        self.trims = 0
        self._trim_due = False
        self._large = trio.Lock()
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
        sock.listen(self.limits.backlog)
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
                if self.connections >= self.limits.max_connections:
                    nursery.start_soon(self._refuse, conn, "busy",
                                       f"{self.connections} control connections are open, "
                                       f"the most this mount serves at once; try again")
                    continue
                self.connections += 1
                nursery.start_soon(self._serve_connection, conn)

    def _peer_allowed(self, conn: trio.socket.SocketType) -> tuple[bool, int]:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        _pid, uid, _gid = _PEERCRED.unpack(raw)
        return uid in (0, self.owner_uid), uid

    async def _refuse(self, conn: trio.socket.SocketType, code: str, message: str) -> None:
        """Send one error and close, letting the peer read it (see ``_close_with``)."""
        try:
            await _close_with(conn, protocol.error(None, code, message))
        finally:
            conn.close()

    async def _serve_connection(self, conn: trio.socket.SocketType) -> None:
        limits = self.limits
        try:
            allowed, uid = self._peer_allowed(conn)
            if not allowed:
                log.warning("refused a control connection from uid %d", uid)
                await _close_with(conn, protocol.error(
                    None, "permission", f"uid {uid} may not control this mount; only its "
                    f"owner (uid {self.owner_uid}) and root may"))
                return
            header = bytearray(protocol.HEADER_SIZE)
            while True:
                with trio.move_on_after(limits.idle_timeout) as idle:
                    first = await conn.recv_into(header, protocol.HEADER_SIZE)
                if idle.cancelled_caught:
                    raise _Closing("timeout", f"no request for {limits.idle_timeout:g} s; "
                                              "closing the connection")
                if first == 0:
                    return  # a clean end between requests
                await self._recv_exact(conn, memoryview(header)[first:])
                n = struct.unpack(">I", header)[0]
                if n == 0 or n > limits.max_frame:
                    raise _Closing("protocol", f"frame of {n} bytes is outside "
                                               f"1..{limits.max_frame} (the limit is "
                                               f"{limits.max_frame / MiB:g} MiB); send bulk "
                                               "refs in several requests")
                await self._serve_frame(conn, n)
        except _Closing as e:
            log.info("control connection closed: %s", e)
            with contextlib.suppress(OSError, trio.TooSlowError):
                await _close_with(conn, e.reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away
        except Exception:  # a bug here ends this connection, never the daemon
            log.exception("control connection failed")
        finally:
            self.connections -= 1
            conn.close()

    async def _serve_frame(self, conn: trio.socket.SocketType, n: int) -> None:
        """Read one frame of ``n`` bytes within the budget, answer it, release the budget."""
        with trio.move_on_after(self.limits.stall_timeout) as waited:
            await self.budget.acquire(n)
        if waited.cancelled_caught:
            raise _Closing("busy", f"the control socket's buffers are full ({self.budget.used} "
                                   f"of {self.budget.total} bytes held by other requests) for "
                                   f"{self.limits.stall_timeout:g} s; try again")
        # anonymous mmap, not bytearray: its pages take memory only as bytes arrive
        # (a sender that stops halfway costs half), and closing it unmaps them at once
        body = mmap.mmap(-1, n)
        try:
            with memoryview(body) as view:
                await self._recv_exact(conn, view)
            # decoded, a request of many small items takes several times its frame
            # (400,000 refs: 32 MB of msgpack, about 200 MB of objects), so large ones
            # are decoded and served one at a time
            large = self._large if n >= self.limits.large_frame else _NO_LOCK
            async with large:
                try:
                    rid, op, args = protocol.check_request(protocol.decode_body(body))
                except protocol.ProtocolError as e:
                    raise _Closing("protocol", str(e)) from None
                body.close()  # the decoded request is what is held from here on
                reply = _encode_reply(rid, await self._dispatch(rid, op, args))
                del args
            await self._send_all(conn, reply)
        finally:
            with contextlib.suppress(BufferError):  # else unmapped when the last view goes
                body.close()
            self.budget.release(n)
        if n >= self.limits.trim_after or op in _FREEING_OPS:
            self._trim_due = True
        if self._trim_due and self.budget.used == 0:
            # a big request's memory (or a dropped session's) went back to the C heap;
            # give it to the system
            self._trim_due = False
            self.trims += 1
            await trio.to_thread.run_sync(_malloc_trim)

    async def _recv_exact(self, conn: trio.socket.SocketType, view: memoryview) -> None:
        """Fill ``view``; each wait for more is bounded by the stall timeout."""
        got = 0
        while got < len(view):
            part = view[got:]
            try:
                with trio.move_on_after(self.limits.stall_timeout) as stalled:
                    k = await conn.recv_into(part, len(part))
            finally:
                part.release()  # else a traceback holding it keeps the mmap exported
            if stalled.cancelled_caught:
                raise _Closing("timeout", f"no data for {self.limits.stall_timeout:g} s inside "
                                          f"a frame ({got} of {len(view)} bytes); closing")
            if k == 0:
                raise ConnectionError("connection closed inside a frame")
            got += k

    async def _send_all(self, conn: trio.socket.SocketType, data: bytes) -> None:
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            with trio.move_on_after(self.limits.stall_timeout) as stalled:
                sent += await conn.send(view[sent:])
            if stalled.cancelled_caught:
                raise ConnectionError(f"the client read nothing of its reply for "
                                      f"{self.limits.stall_timeout:g} s")

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


async def _close_with(conn: trio.socket.SocketType, reply: dict[str, Any]) -> None:
    """Send ``reply``, then let the peer finish sending (discarded, for a second at most)
    and read it: closing at once would fail the peer's send with EPIPE before it sees why."""
    with trio.move_on_after(1.0):
        data = memoryview(protocol.encode(reply))
        while data:
            data = data[await conn.send(data):]
        conn.shutdown(socket.SHUT_WR)
        sink = bytearray(65536)
        received = 0
        while received < protocol.MAX_FRAME and (k := await conn.recv_into(sink)):
            received += k


async def _answers(path: Path) -> bool:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()
