"""What a reader may not read: locations no declared and authorized container covers
(EACCES like an unauthorized container, with the same kind of log line)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import icechunk as ic
import pytest
import zarr
from mounting import mounted

pytestmark = pytest.mark.timeout(300)
CHUNK = 16
PRESENTATIONS = {"v3": "a/c/{}", "v3-decoded": "a/c/{}", "v2": "a/{}", "v2-decoded": "a/{}"}


def make_repo(path: Path, containers: list[Path], locations: list[str]) -> None:
    """An array ``a`` of 16-byte raw chunks, chunk i a virtual ref to ``locations[i]``,
    written with icechunk's API without its container check."""
    config = ic.RepositoryConfig.default()
    for d in containers:
        config.set_virtual_chunk_container(ic.VirtualChunkContainer(
            d.as_uri() + "/", ic.local_filesystem_store(str(d))))
    repo = ic.Repository.create(ic.local_filesystem_storage(str(path)), config)
    repo.save_config()
    s = repo.writable_session("main")
    zarr.group(s.store).create_array("a", shape=(CHUNK * len(locations),), chunks=(CHUNK,),
                                      dtype="u1", fill_value=0, compressors=None)
    for i, loc in enumerate(locations):
        s.store.set_virtual_ref(f"a/c/{i}", loc, offset=0, length=CHUNK,
                                validate_container=False)
    s.commit("hostile refs")


def read_errno(path: Path) -> int | bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        return e.errno or 0


def test_locations_outside_authorized_containers_are_eacces(tmp_path):
    data, other, secret = tmp_path / "data", tmp_path / "other", tmp_path / "secret"
    for d in (data, other, secret):
        d.mkdir()
    (data / "ok.bin").write_bytes(bytes(range(CHUNK)))
    (other / "o.bin").write_bytes(b"O" * CHUNK)
    (secret / "s.txt").write_bytes(b"S" * CHUNK)
    os.chmod(secret / "s.txt", 0o600)
    d, o = data.as_uri(), other.as_uri()
    refused = {  # chunk index -> what the log must name
        1: (f"{d}/../secret/s.txt", (secret / "s.txt").as_uri()),  # icechunk resolves '..'
        2: (f"{d}/%2E%2E/secret/s.txt", (secret / "s.txt").as_uri()),
        3: (f"{d}/%2e%2e/secret/s.txt", (secret / "s.txt").as_uri()),
        4: ("file:///etc/passwd", "file:///etc/passwd"),  # no container declared for it
        5: (f"{o}/o.bin", f"{o}/"),  # declared, not authorized
        6: (f"{d}/sub/%2F..%2F..%2Fsecret/s.txt", "secret/s.txt"),  # not addressable
    }
    make_repo(tmp_path / "repo", [data, other],
              [f"{d}/ok.bin"] + [loc for loc, _ in refused.values()])
    # the same refs to /etc/passwd from a repository that declares no container, even
    # with its directory "authorized"
    make_repo(tmp_path / "bare", [], ["file:///etc/passwd"])

    with mounted(tmp_path / "repo", tmp_path / "m", f"authorize={d}/",
                 "presentation=all") as m:
        for pres, key in PRESENTATIONS.items():
            base = m.path / pres
            assert read_errno(base / key.format(0)) == bytes(range(CHUNK)), pres
            for i in refused:
                assert read_errno(base / key.format(i)) == errno.EACCES, (pres, i)
        with pytest.raises(OSError) as e:
            zarr.open_group(str(m.path / "v3"), mode="r")["a"][:]
        assert e.value.errno == errno.EACCES
        assert m.proc.poll() is None
    log = m.log_text()
    for i, (_loc, named) in refused.items():
        line = next((ln for ln in log.splitlines() if f"a/c/{i}:" in ln), "")
        assert named in line, (i, log)
        assert ("no declared and authorized virtual chunk container covers" in line
                or "which this reader has not authorized" in line), line
    assert "Traceback" not in log

    with mounted(tmp_path / "bare", tmp_path / "m2", "authorize=file:///etc/") as m2:
        assert read_errno(m2.path / "a" / "c" / "0") == errno.EACCES
    assert "file:///etc/passwd, which no declared and authorized" in m2.log_text()
