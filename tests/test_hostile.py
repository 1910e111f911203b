"""A hostile repository, built with icechunk's own API, read through the mount in every
presentation: each read is the right bytes or the documented errno, and the daemon lives.

The cases not repeated here have their own suites: `..` and percent-encoded `..`,
`/etc/passwd` with and without a declared container (tests/test_access.py), shadowing
and odd node names (tests/test_hostile_names.py), changed sources
(tests/test_sources.py), damaged manifests and snapshots
(tests/test_damaged_repository.py).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import icechunk as ic
import pytest
import servers
import zarr
from mounting import mounted

pytestmark = pytest.mark.timeout(300)

CHUNK = 16
PRESENTATIONS = {"v3": "a/c/{}", "v3-decoded": "a/c/{}", "v2": "a/{}", "v2-decoded": "a/{}"}


@dataclass(frozen=True)
class Case:
    name: str
    location: str
    offset: int
    length: int
    expect: bytes | int  # the chunk's bytes, or the errno every presentation must give


def write_repo(path: Path, containers: list[ic.VirtualChunkContainer], cases: list[Case]) -> None:
    """Array ``a`` of raw uint8 chunks of CHUNK bytes; chunk i is a ref to case i."""
    config = ic.RepositoryConfig.default()
    for c in containers:
        config.set_virtual_chunk_container(c)
    repo = ic.Repository.create(ic.local_filesystem_storage(str(path)), config)
    repo.save_config()
    s = repo.writable_session("main")
    zarr.group(s.store).create_array("a", shape=(CHUNK * len(cases),), chunks=(CHUNK,),
                                      dtype="u1", fill_value=0, compressors=None)
    for i, c in enumerate(cases):
        s.store.set_virtual_ref(f"a/c/{i}", c.location, offset=c.offset, length=c.length,
                                validate_container=False)
    s.commit("hostile refs")


def outcome(path: Path) -> bytes | int:
    """The first MiB of the file (a hostile size such as 2**62 is never read whole)."""
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        return e.errno or 0


@pytest.fixture
def listener() -> Iterator[tuple[int, list[int]]]:
    """A TCP port that counts the connections it receives (and answers none)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1], accepted
    finally:
        stop.set()
        t.join(timeout=5)
        sock.close()


def test_hostile_refs_in_every_presentation(tmp_path, listener):
    port, accepted = listener
    data, secret, www = tmp_path / "data", tmp_path / "secret", tmp_path / "www"
    for d in (data / "sub", secret, www):
        d.mkdir(parents=True)
    payload = bytes(range(CHUNK))
    (data / "ok.bin").write_bytes(payload)
    (data / "sub" / "inner.bin").write_bytes(payload[::-1])
    (secret / "s.txt").write_bytes(b"S" * CHUNK)
    (secret / "s.txt").chmod(0o600)
    (data / "out.bin").symlink_to(secret / "s.txt")
    (data / "rel.bin").symlink_to("../secret/s.txt")
    (data / "in.bin").symlink_to(data / "sub" / "inner.bin")
    (data / "reldir").symlink_to("sub")
    (data / "outdir").symlink_to(secret)
    os.mkfifo(data / "fifo")
    (www / "w.bin").write_bytes(payload)
    d = data.as_uri()
    with servers.http_range_server(www) as web:
        served = f"{web.url}/"
        silent = f"http://127.0.0.1:{port}/"
        cases = [
            Case("plain file", f"{d}/ok.bin", 0, CHUNK, payload),
            Case("symlink inside (absolute)", f"{d}/in.bin", 0, CHUNK, payload[::-1]),
            Case("directory symlink inside", f"{d}/reldir/inner.bin", 0, CHUNK, payload[::-1]),
            Case("symlink leaving (absolute)", f"{d}/out.bin", 0, CHUNK, errno.EACCES),
            Case("symlink leaving (relative)", f"{d}/rel.bin", 0, CHUNK, errno.EACCES),
            Case("directory symlink leaving", f"{d}/outdir/s.txt", 0, CHUNK, errno.EACCES),
            Case("a FIFO", f"{d}/fifo", 0, CHUNK, errno.EACCES),
            Case("a directory", f"{d}/sub", 0, CHUNK, errno.EACCES),
            Case("offset past the end", f"{d}/ok.bin", 2**40, CHUNK, errno.EIO),
            Case("length past the end", f"{d}/ok.bin", 4, CHUNK, errno.EIO),
            Case("length 2**40", f"{d}/ok.bin", 0, 2**40, errno.EIO),
            Case("length 2**62", f"{d}/ok.bin", 0, 2**62, errno.EIO),
            Case("missing file", f"{d}/nope.bin", 0, CHUNK, errno.EIO),
            Case("http, declared, unauthorized", f"{silent}x.bin", 0, CHUNK, errno.EACCES),
            Case("http, undeclared", f"http://127.0.0.1:{port}/y/x.bin", 0, CHUNK,
                 errno.EACCES),
            Case("http, authorized", f"{served}w.bin", 0, CHUNK, payload),
            Case("http, offset past the end", f"{served}w.bin", 2**40, CHUNK, errno.EIO),
            Case("http, length 2**62", f"{served}w.bin", 0, 2**62, errno.EIO),
        ]
        containers = [
            ic.VirtualChunkContainer(d + "/", ic.local_filesystem_store(str(data))),
            ic.VirtualChunkContainer(silent, ic.http_store()),
            ic.VirtualChunkContainer(served, ic.http_store()),
        ]
        write_repo(tmp_path / "repo", containers, cases)
        reads = 0
        wrong: list[tuple[str, str, object]] = []
        with mounted(tmp_path / "repo", tmp_path / "m", f"authorize={d}/",
                     f"authorize={served}", "presentation=all", "prefetch=0") as m:
            for _ in range(2):  # a second pass: no error was cached as bytes, nor bytes lost
                for pres, key in PRESENTATIONS.items():
                    for i, case in enumerate(cases):
                        got = outcome(m.path / pres / key.format(i))
                        reads += 1
                        if got != case.expect:
                            wrong.append((pres, case.name, got))
            assert m.proc.poll() is None, "the daemon died"
            log = m.log_text()
    print(f"hostile refs: {len(cases)} cases x {len(PRESENTATIONS)} presentations x 2 passes "
          f"= {reads} reads, {len(wrong)} unexpected")
    assert not wrong, wrong
    assert accepted == [], "an unauthorized container received a connection"
    assert "Traceback" not in log
    assert "outside" in log and "not a regular file" in log


def test_icechunk_refuses_zero_length_refs(tmp_path):
    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "r")))
    s = repo.writable_session("main")
    zarr.group(s.store).create_array("a", shape=(4,), chunks=(4,), dtype="u1", fill_value=0)
    with pytest.raises(ic.IcechunkError, match="zero-length chunk"):
        s.store.set_virtual_ref("a/c/0", "file:///etc/passwd", offset=0, length=0,
                                validate_container=False)
