"""The control socket's memory under hostile and bulk load (issue 11), RSS of the daemon.

Mounts a fresh local repository (daemonized, its pid from ``ctl status``) and measures
the daemon's VmRSS (/proc/PID/status):

1. ``frames``: CONNECTIONS connections at once each announce a FRAME_MB frame and send
   SEND_MB of it, then hold (no more bytes); RSS at its peak while they hold, and
   5 s after they all closed.
2. ``refs``: REFS refs by key (one array of REFS chunks, refs into one local file),
   streamed with ``Client.set_virtual_refs`` (or ``--one-request``: all in one
   ``set_virtual_refs_keys`` request); RSS before, at the peak, 5 s after the reply
   and 5 s after discarding them.

Usage: python scripts/bench/bench_control_memory.py [--connections 20] [--frame-mb 60]
       [--send-mb 50] [--refs 400000] [--one-request] [--workdir DIR] [-o OPT]...

Run it with PYTHONPATH at the vchunkfs to measure: the daemon is started as
``sys.executable -m vchunkfs.cli.mount``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack

from vchunkfs.control import Client, ControlError

MB = 1024 * 1024


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """The peak RSS of ``pid``, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak


def frames(sock: str, pid: int, connections: int, frame_mb: int, send_mb: int,
           hold: float) -> dict[str, object]:
    before = rss_mb(pid)
    sampler = Sampler(pid)
    outcomes: list[str] = []
    sent_mb: list[float] = []

    def one() -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sent = 0
        try:
            s.connect(sock)
            s.settimeout(hold)
            s.sendall(struct.pack(">I", frame_mb * MB))
            block = b"\0" * MB
            for _ in range(send_mb):
                s.sendall(block)
                sent += MB
            time.sleep(hold)
            outcomes.append("held")
        except OSError as e:
            outcomes.append(type(e).__name__)
        finally:
            sent_mb.append(sent / MB)
            s.close()

    threads = [threading.Thread(target=one) for _ in range(connections)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    during = sampler.stop()
    time.sleep(5)
    return {"connections": connections, "frame_mb": frame_mb, "send_mb": send_mb,
            "rss_before_mb": round(before), "rss_peak_mb": round(during),
            "rss_5s_after_mb": round(rss_mb(pid)), "seconds": round(time.monotonic() - t0, 1),
            "mb_accepted_total": round(sum(sent_mb)),
            "outcomes": {o: outcomes.count(o) for o in set(outcomes)}}


def refs(sock: str, pid: int, n: int, src: Path, stream: bool) -> dict[str, object]:
    with Client(sock) as c:
        c.set_metadata("big", {
            "zarr_format": 3, "node_type": "array", "shape": [n], "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
            "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
            "codecs": [{"name": "bytes"}], "attributes": {}})
        location = (src / "data.bin").as_uri()

        def request() -> Iterator[dict[str, object]]:
            for i in range(n):
                yield {"key": f"big/c/{i}", "location": location, "offset": i, "length": 1}

        frame_mb = len(msgpack.packb({"refs": list(request())})) / MB
        time.sleep(1)
        before = rss_mb(pid)
        sampler = Sampler(pid)
        t0 = time.monotonic()
        if stream:  # Client.set_virtual_refs: 50,000 refs a request
            count = c.set_virtual_refs(request())
        else:  # the whole list in one request (refused since the per-request limit)
            try:
                count = c.call("set_virtual_refs_keys", refs=list(request()))["count"]
            except ControlError as e:
                count = f"refused: {e.message}"
        seconds = time.monotonic() - t0
        peak = sampler.stop()
        time.sleep(5)
        after = rss_mb(pid)
        c.discard()
        time.sleep(5)
        discarded = rss_mb(pid)
    return {"refs": count, "one_request_mb": round(frame_mb, 1), "streamed": stream,
            "seconds": round(seconds, 2), "rss_before_mb": round(before),
            "rss_peak_mb": round(peak), "rss_5s_after_mb": round(after),
            "rss_5s_after_discard_mb": round(discarded)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--frame-mb", type=int, default=60)
    p.add_argument("--send-mb", type=int, default=50)
    p.add_argument("--hold", type=float, default=10.0, help="seconds each connection holds")
    p.add_argument("--refs", type=int, default=400_000)
    p.add_argument("--one-request", action="store_true",
                   help="send the refs in one request instead of Client.set_virtual_refs")
    p.add_argument("--workdir", type=Path)
    p.add_argument("-o", action="append", default=[], metavar="OPT")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vchunkfs-bench-ctlmem-"))
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "data.bin").write_bytes(b"\1" * args.refs)
    env = {**os.environ, "ICECHUNK_LOG": "error"}
    vchunkfs = [sys.executable, "-m", "vchunkfs.cli.main"]
    subprocess.run([*vchunkfs, "init", str(work / "repo"), "--container",
                    src.as_uri() + "/"], check=True, env=env, capture_output=True)
    mp, sock = work / "mnt", str(work / "ctl.sock")
    mp.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "vchunkfs.cli.mount", str(work / "repo"), str(mp),
                    "-o", ",".join([f"authorize={src.as_uri()}/", f"control_socket={sock}",
                                    f"log_file={work / 'daemon.log'}", *args.o])],
                   check=True, env=env)
    try:
        with Client(sock) as c:
            pid = int(c.status()["pid"])
        out = {"daemon_rss_at_start_mb": round(rss_mb(pid)),
               "frames": frames(sock, pid, args.connections, args.frame_mb, args.send_mb,
                                args.hold),
               "refs": refs(sock, pid, args.refs, src, not args.one_request)
               if args.refs else None}
        print(json.dumps(out, indent=2))
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
