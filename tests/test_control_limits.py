"""The control socket's bounds on a real daemon: frame size, buffered bytes, idle and
stalled connections, connection count and backlog. Each refusal is one clear error
reply, and the daemon keeps serving."""

from __future__ import annotations

import errno
import socket
import struct
import time

import msgpack
import pytest
from commands import cli
from mounting import mounted

from vchunkfs.control import Client, ControlError
from vchunkfs.control.protocol import recv_message

pytestmark = pytest.mark.timeout(120)
KiB = 1024


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    cli("init", str(tmp / "repo"))
    sock = str(tmp / "ctl.sock")
    with mounted(tmp / "repo", tmp / "m", f"control_socket={sock}", "control_max_frame=256K",
                 "control_buffer=256K", "control_idle_timeout=2", "control_stall_timeout=1",
                 "control_max_connections=40") as m:
        yield m, sock
        assert m.proc.poll() is None, "the daemon exited"
        assert "Traceback" not in m.log_text(), m.log_text()[-3000:]


def connect(sock: str, timeout: float = 10) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock)
    return s


def frame(op: str, **args: object) -> bytes:
    body = msgpack.packb({"v": 1, "id": 1, "op": op, "args": args})
    return struct.pack(">I", len(body)) + body


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_frame_over_the_limit_is_refused_before_it_is_read(limited):
    _m, sock = limited
    with connect(sock) as s:
        s.sendall(struct.pack(">I", 300 * KiB) + b"\0" * (64 * KiB))
        reply = recv_message(s)
        assert reply["ok"] is False and reply["error"]["code"] == "protocol"
        assert "262144" in reply["error"]["message"] and "0.25 MiB" in reply["error"]["message"]
        assert closed(s)
    with Client(sock) as c:
        assert c.status()["staged"] == {}


def test_a_request_over_the_protocol_limit_is_a_clear_client_error(limited):
    _m, sock = limited
    with Client(sock) as c:
        with pytest.raises(ControlError) as e:
            c.set_chunk("x", b"\0" * (65 * 1024 * KiB))
        assert e.value.code == "too_large" and "exceeds the limit" in e.value.message
        assert c.status()["staged"] == {}  # the connection is still usable


def test_idle_and_stalled_connections_are_closed(limited):
    _m, sock = limited
    with connect(sock) as idle, connect(sock) as stalled:
        stalled.sendall(frame("status")[:7])  # inside a frame, then nothing
        t0 = time.monotonic()
        reply = recv_message(stalled)
        assert reply["error"]["code"] == "timeout" and "inside a frame" in \
            reply["error"]["message"]
        assert 0.8 < time.monotonic() - t0 < 5
        assert closed(stalled)
        reply = recv_message(idle)
        assert reply["error"]["code"] == "timeout" and "no request for 2 s" in \
            reply["error"]["message"]
        assert closed(idle)


def test_the_client_reconnects_after_an_idle_close(limited):
    _m, sock = limited
    with Client(sock) as c:
        assert c.status()["staged"] == {}
        time.sleep(2.5)  # past the idle timeout: the daemon closed the connection
        assert c.status()["staged"] == {}


def test_requests_wait_for_buffer_room_then_are_refused_clearly(limited):
    _m, sock = limited
    big = 200 * KiB  # holds most of the 256 KiB budget while it trickles in
    with connect(sock) as hog, connect(sock) as other:
        hog.sendall(struct.pack(">I", big) + b"\0" * 1000)
        time.sleep(0.2)
        other.sendall(frame("set_chunk", key="x", data=b"\1" * (100 * KiB)))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.6:  # keep the hog moving (never stalled)
            hog.sendall(b"\0")
            time.sleep(0.2)
        reply = recv_message(other)
        assert reply["error"]["code"] == "busy" and "buffers are full" in \
            reply["error"]["message"]
    with Client(sock) as c:  # the budget is back once the hog is gone
        assert c.status()["staged"] == {}


def test_fast_connects_queue_and_excess_connections_get_busy(limited):
    _m, sock = limited
    conns = []
    try:
        for _ in range(200):  # more than the old backlog of 64, without waiting for accept
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(sock)
            except BlockingIOError as e:  # EAGAIN: the listen queue was full
                pytest.fail(f"connect {len(conns)} failed: {errno.errorcode[e.errno]}")
            conns.append(s)
        for s in conns:
            s.setblocking(True)
            s.settimeout(10)
        busy = 0
        for s in conns[40:]:
            reply = recv_message(s)
            busy += reply["error"]["code"] == "busy"
        assert busy >= 150
    finally:
        for s in conns:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the daemon sees the closed connections go, and serves again
        try:
            with Client(sock) as c:
                assert c.status()["staged"] == {}
            break
        except ControlError as e:
            assert e.code == "busy" and time.monotonic() < deadline
            time.sleep(0.1)
