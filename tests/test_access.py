"""What a reader may not read: locations no declared and authorized container covers
(EACCES like an unauthorized container, with the same kind of log line), and staged
changes, which only the daemon's user (and root) may read, even with allow_other."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import icechunk as ic
import pytest
import zarr
from datasets import SST_V3_METADATA
from mounting import mounted

from vchunkfs.control import Client

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
                or "which this reader has not authorized" in line
                or "only files below an authorized file:// prefix are read" in line), line
    assert "Traceback" not in log

    with mounted(tmp_path / "bare", tmp_path / "m2", "authorize=file:///etc/") as m2:
        assert read_errno(m2.path / "a" / "c" / "0") == errno.EACCES
    assert "file:///etc/passwd, which no declared and authorized" in m2.log_text()


# -- staged changes with allow_other ------------------------------------------------------


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, user="nobody",
                          group="nogroup", env={"PATH": "/usr/bin:/bin"}, cwd="/")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory user nobody can traverse (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="vchunkfs-access-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_staged_changes_are_owner_only_with_allow_other(tmp_path, shared_dir):
    ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "repo")))
    sock = str(tmp_path / "ctl.sock")
    small = dict(SST_V3_METADATA, shape=[2], data_type="uint8", fill_value=0,
                 dimension_names=None, codecs=[{"name": "bytes"}], attributes={},
                 chunk_grid={"name": "regular", "configuration": {"chunk_shape": [1]}})
    with mounted(tmp_path / "repo", shared_dir / "m", "allow_other",
                 f"control_socket={sock}", log=tmp_path / "m.log") as m:
        with Client(sock) as c:
            c.set_metadata("a", small)
            c.set_chunk("a/c/0", b"\x01")
            c.commit("committed a")
            c.set_chunk("a/c/1", b"\x02")  # staged, not committed
        v = m.path / ".vchunkfs"
        staged = v / "staged" / "main"
        assert (staged / "a" / "c" / "1").read_bytes() == b"\x02"  # the owner reads it
        for p, mode in ((v / "staged", 0o500), (staged, 0o500), (staged / "a", 0o500),
                        (staged / "a" / "zarr.json", 0o400), (staged / "a" / "c" / "1", 0o400)):
            st = os.stat(p)
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (mode, os.getuid()), p
        assert stat.S_IMODE(os.stat(m.path / "a" / "c" / "0").st_mode) == 0o444
        # another user reads the committed branch, and nothing of the staged changes
        for path in (m.path / "a" / "c" / "0", v / "branches" / "main" / "a" / "c" / "0"):
            r = as_nobody("cat", str(path))
            assert r.returncode == 0 and r.stdout == "\x01", (path, r.stderr)
        for cmd in (("ls", str(v / "staged")), ("ls", str(staged)),
                    ("cat", str(staged / "a" / "c" / "1")),
                    ("cat", str(staged / "a" / "zarr.json")), ("stat", str(staged / "a"))):
            r = as_nobody(*cmd)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (cmd, r)
            assert "\x02" not in r.stdout
