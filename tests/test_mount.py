"""Real mounts of icechunk-written repositories, read by Python and by shell tools."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import icechunk as ic
import numpy as np
import pytest
import zarr
from datasets import build_repo, read_h5
from mounting import HELPER, mounted, process_gone, unmount

pytestmark = pytest.mark.timeout(300)


def pread(location: str, offset: int, length: int) -> bytes:
    path = location.removeprefix("file://")
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


@pytest.fixture(scope="module")
def mnt(local_repo, tmp_path_factory):
    path, built = local_repo
    mp = tmp_path_factory.mktemp("mnt") / "m"
    with mounted(path, mp, f"authorize={built.container_prefix}") as m:
        yield m, built
    assert "Traceback" not in m.log_text(), m.log_text()


def test_chunk_files_equal_pread(mnt):
    m, built = mnt
    for label, base in (("day1", m.path), ("v1", m.path / ".vchunkfs" / "tags" / "v1")):
        for ref in built.refs[label]:
            data = (base / ref.key).read_bytes()
            assert data == pread(ref.location, ref.offset, ref.length), (label, ref.key)
    dev = m.path / ".vchunkfs" / "branches" / "dev"
    assert (dev / "dev_only" / "zarr.json").exists() and not (m.path / "dev_only").exists()


def test_tree_sizes_and_hidden_versions_dir(mnt):
    m, built = mnt
    assert sorted(os.listdir(m.path)) == ["field", "grp", "native", "sst", "zarr.json"]
    assert ".vchunkfs" not in os.listdir(m.path) and (m.path / ".vchunkfs").is_dir()
    for ref in built.refs["day1"]:
        assert (m.path / ref.key).stat().st_size == ref.length
    assert sorted(os.listdir(m.path / "grp" / "small" / "c")) == ["0", "1"]
    assert not (m.path / "grp" / "small" / "c" / "2").exists()  # missing: readers use fill
    meta = m.path / "sst" / "zarr.json"
    assert meta.stat().st_size == len(meta.read_bytes())
    sids = set(os.listdir(m.path / ".vchunkfs" / "snapshots"))
    assert set(built.snapshots.values()) <= sids


def test_zarr_python_reads_the_mount(mnt):
    m, built = mnt
    g = zarr.open_group(str(m.path), mode="r")
    np.testing.assert_array_equal(g["sst"][:], read_h5(built.sources[1], "sst"))
    np.testing.assert_array_equal(g["field"][:], read_h5(built.sources[0], "field"))
    np.testing.assert_array_equal(g["native"][:], np.arange(1000))
    np.testing.assert_array_equal(g["grp/small"][:], [1, 2, 3, 4, 0, 0])
    v1 = zarr.open_group(str(m.path / ".vchunkfs" / "tags" / "v1"), mode="r")
    np.testing.assert_array_equal(v1["sst"][:], read_h5(built.sources[0], "sst"))


def test_shell_browsing(mnt):
    m, built = mnt
    v = m.path / ".vchunkfs"

    def sh(*cmd: str) -> str:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (cmd, r.stderr)
        return r.stdout

    found = set(sh("find", str(v / "tags" / "v1"), "-type", "f").split())
    want = {str(v / "tags" / "v1" / r.key) for r in built.refs["v1"]}
    assert want <= found
    du = int(sh("du", "-s", "-b", str(v / "tags" / "v1" / "sst" / "c")).split()[0])
    assert du == sum(r.length for r in built.refs["v1"] if r.key.startswith("sst/"))
    ref = built.refs["v1"][0]
    assert sh("stat", "-c", "%s %A", str(v / "tags" / "v1" / ref.key)).split() == [
        str(ref.length), "-r--r--r--"]
    history = sh("cat", str(v / "history"))
    assert history.index(built.snapshots["day1"]) < history.index(built.snapshots["v1"])
    assert "day 1: sst from day01.nc" in history and "(tag v1)" in history
    assert sh("cat", str(v / "HEAD")).split() == ["branch", "main", "snapshot",
                                                   built.snapshots["day1"]]
    assert sh("ls", str(v / "branches")).split() == ["dev", "main"]
    cmp = subprocess.run(["cmp", str(v / "snapshots" / built.snapshots["v1"] / ref.key),
                          str(v / "tags" / "v1" / ref.key)])
    assert cmp.returncode == 0
    xattr = os.getxattr(v / "tags" / "v1" / "sst", "user.vchunkfs.snapshot").decode()
    assert xattr == built.snapshots["v1"]


def test_every_write_is_erofs(mnt):
    m, _built = mnt
    attempts = [
        lambda: os.open(m.path / "sst" / "zarr.json", os.O_RDWR),
        lambda: os.open(m.path / "new.txt", os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(m.path / "d"),
        lambda: os.unlink(m.path / "zarr.json"),
        lambda: os.rename(m.path / "sst", m.path / "sst2"),
        lambda: os.chmod(m.path / "zarr.json", 0o777),
        lambda: os.setxattr(m.path / "zarr.json", "user.x", b"1"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, attempt


def test_concurrent_readers(mnt):
    m, built = mnt
    refs = built.refs["day1"]
    want = {r.key: pread(r.location, r.offset, r.length) for r in refs}
    failures: list[str] = []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(40):
            r = refs[int(rng.integers(len(refs)))]
            if (m.path / r.key).read_bytes() != want[r.key]:
                failures.append(r.key)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    script = ("import sys,pathlib\nfor k in sys.argv[2:]:\n"
              " sys.stdout.buffer.write(pathlib.Path(sys.argv[1], k).read_bytes())")
    keys = [r.key for r in refs]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(m.path), *keys],
                              stdout=subprocess.PIPE) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert out == b"".join(want[k] for k in keys)
    assert not failures


def test_errors_map_to_errno_and_daemon_keeps_serving(tmp_path):
    built = build_repo(ic.local_filesystem_storage(str(tmp_path / "repo")), tmp_path / "src")
    # no authorization: metadata and sizes readable, chunk bytes refused with EACCES
    with mounted(tmp_path / "repo", tmp_path / "m0") as m:
        assert (m.path / "sst" / "zarr.json").read_bytes()
        with pytest.raises(PermissionError):
            (m.path / "sst" / "c" / "0" / "0" / "0" / "0").read_bytes()
        assert "has not authorized" in m.log_text()
        assert f"container {built.container_prefix} is not authorized" in m.log_text()
    with mounted(tmp_path / "repo", tmp_path / "m1", f"authorize={built.container_prefix}") as m:
        field = m.path / "field" / "c" / "0" / "0"
        assert field.read_bytes()
        st = built.sources[1].stat()
        os.utime(built.sources[1], (st.st_atime, st.st_mtime + 10))  # day01.nc "changed"
        with pytest.raises(OSError) as e:
            (m.path / "sst" / "c" / "1" / "0" / "0" / "0").read_bytes()
        assert e.value.errno == errno.EIO
        shutil.move(built.sources[0], tmp_path / "gone.nc")  # day00.nc disappears
        with pytest.raises(OSError) as e:  # far enough from field/c/0/0 not to be prefetched
            (m.path / "field" / "c" / "3" / "1").read_bytes()
        assert e.value.errno == errno.EIO
        assert field.read_bytes()  # cached before: still served
        assert (m.path / "native" / "c" / "2").read_bytes()  # other reads go on
        log = m.log_text()
        assert "changed after the virtual ref was written" in log and "not found" in log


def test_branch_moves_are_followed(tmp_path):
    built = build_repo(ic.local_filesystem_storage(str(tmp_path / "repo")), tmp_path / "src")
    with mounted(tmp_path / "repo", tmp_path / "m", f"authorize={built.container_prefix}",
                 "poll_interval=0.5") as m:
        old_attrs = json.loads((m.path / "zarr.json").read_bytes())["attributes"]
        held = open(m.path / "native" / "c" / "0", "rb")  # noqa: SIM115
        tag_before = (m.path / ".vchunkfs" / "tags" / "v1" / "zarr.json").read_bytes()
        repo = ic.Repository.open(ic.local_filesystem_storage(str(tmp_path / "repo")))
        s = repo.writable_session("main")
        g = zarr.open_group(s.store)
        g.attrs["title"] = "moved"
        zarr.open_array(s.store, path="native")[:250] = -1
        new = s.commit("another writer")
        deadline = time.monotonic() + 10
        while json.loads((m.path / "zarr.json").read_bytes())["attributes"].get(
                "title") != "moved":
            assert time.monotonic() < deadline, "the root did not follow main"
            time.sleep(0.2)
        assert (m.path / ".vchunkfs" / "HEAD").read_text().split()[-1] == new
        assert np.frombuffer((m.path / "native" / "c" / "0").read_bytes(), "<i4")[0] == -1
        assert np.frombuffer(held.read(), "<i4")[0] == 0  # an open file keeps its snapshot
        held.close()
        main_view = m.path / ".vchunkfs" / "branches" / "main" / "zarr.json"
        assert json.loads(main_view.read_bytes())["attributes"]["title"] == "moved"
        assert (m.path / ".vchunkfs" / "tags" / "v1" / "zarr.json").read_bytes() == tag_before
        assert old_attrs["title"] == "vchunkfs test"


def test_daemonized_mount_umount_and_errors(local_repo, tmp_path):
    path, built = local_repo
    mp = tmp_path / "d"
    mp.mkdir()
    env = {**os.environ, "ICECHUNK_LOG": "error"}
    r = subprocess.run([*HELPER, str(path), str(mp), "-o",
                        f"authorize={built.container_prefix},log_file={tmp_path / 'd.log'}"],
                       capture_output=True, text=True, timeout=60, env=env)
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mp)  # ready when the command returns
        assert (mp / "sst" / "zarr.json").read_bytes()
        busy = subprocess.run([*HELPER, str(path), str(mp)], capture_output=True, text=True,
                              env=env)
        assert busy.returncode == 32 and "already a mount point" in busy.stderr
        pid = int((tmp_path / "d.log").read_text().split("vchunkfs[")[1].split("]")[0])
        u = subprocess.run([sys.executable, "-m", "vchunkfs.cli.main", "umount", str(mp)],
                           capture_output=True, text=True, env=env)
        assert u.returncode == 0, u.stderr
        assert not os.path.ismount(mp)
        deadline = time.monotonic() + 10
        while not process_gone(pid):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        unmount(mp)
    for args, status, message in (
        ([str(path), str(tmp_path / "nowhere")], 32, "does not exist"),
        (["ftp://x/y", str(mp)], 2, "unsupported repository URL"),
        ([str(tmp_path / "norepo"), str(mp)], 3, "no Icechunk repository"),
        ([str(path), str(mp), "-o", "bogus"], 2, "unknown mount option 'bogus'"),
        ([str(path), str(mp), "-o", "version=nope"], 3, "no branch, tag or snapshot 'nope'"),
    ):
        r = subprocess.run([*HELPER, *args], capture_output=True, text=True, env=env,
                           timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == status and len(lines) == 1 and message in lines[0], (args, r)
        assert not os.path.ismount(mp)


def test_signals_kill9_and_remount(local_repo, tmp_path):
    path, built = local_repo
    mp = tmp_path / "k"
    auth = f"authorize={built.container_prefix}"
    with mounted(path, mp, auth) as m:
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(timeout=20) == 0
        assert not os.path.ismount(mp)
    with mounted(path, mp, auth) as m:
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(timeout=20)
        with pytest.raises(OSError) as e:
            os.listdir(mp)
        assert e.value.errno == errno.ENOTCONN  # a dead mount, until someone unmounts it
        unmount(mp)
        assert not os.path.ismount(mp)
    with mounted(path, mp, auth) as m:  # and mounting again works
        assert (m.path / "sst" / "zarr.json").read_bytes()


def test_help_mentions_options():
    r = subprocess.run([*HELPER, "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for word in ("version=", "authorize=", "cache_size=", "allow_other", "foreground",
                 "debug", "log_file=", "control_socket=", "show_versions", "example"):
        assert word in r.stdout, word


def test_one_fetch_per_chunk_however_many_readers(local_repo, tmp_path):
    """The kernel's 128 KiB pieces and 8 processes reading at once cost one fetch per chunk."""
    path, built = local_repo
    with mounted(path, tmp_path / "m", f"authorize={built.container_prefix}",
                 "read_ahead_kb=0", "prefetch=0") as m:
        def stats() -> dict:
            return json.loads(os.getxattr(m.path, "user.vchunkfs.stats"))

        big = m.path / "native" / "c" / "0"  # read 100 bytes at a time: many requests
        with open(big, "rb", buffering=0) as f:
            pieces = iter(lambda: f.read(100), b"")
            assert b"".join(pieces) == np.arange(250, dtype="<i4").tobytes()
        assert stats()["cache_misses"] == 1
        refs = built.refs["day1"]
        script = ("import sys,pathlib\nfor k in sys.argv[2:]:\n"
                  " pathlib.Path(sys.argv[1], k).read_bytes()")
        procs = [subprocess.Popen([sys.executable, "-c", script, str(m.path),
                                   *[r.key for r in refs]]) for _ in range(8)]
        for p in procs:
            assert p.wait(timeout=60) == 0
        s = stats()
        assert s["cache_misses"] == 1 + len(refs), s
        assert s["fetched_bytes"] == 1000 + sum(r.length for r in refs)


def test_a_cold_read_prefetches_the_next_chunks(local_repo, tmp_path):
    """A read that fetched a chunk file fetches the array's next ones into the cache; the
    first read of a prefetched file moves the window on."""
    path, built = local_repo
    with mounted(path, tmp_path / "m", f"authorize={built.container_prefix}",
                 "prefetch=2") as m:
        def stats_when(done: Callable[[dict], bool]) -> dict:
            deadline = time.monotonic() + 10
            while True:
                s = json.loads(os.getxattr(m.path, "user.vchunkfs.stats"))
                if done(s) or time.monotonic() > deadline:
                    return s
                time.sleep(0.02)

        native = np.arange(1000, dtype="<i4").tobytes()  # four 1000-byte chunks
        assert (m.path / "native" / "c" / "0").read_bytes() == native[:1000]
        s = stats_when(lambda s: s["fetched_bytes"] >= 3000)
        assert (s["cache_misses"], s["prefetched"], s["fetched_bytes"]) == (1, 2, 3000), s
        assert (m.path / "native" / "c" / "1").read_bytes() == native[1000:2000]
        s = stats_when(lambda s: s["fetched_bytes"] >= 4000)
        assert (s["cache_misses"], s["prefetched"], s["fetched_bytes"]) == (1, 3, 4000), s
        assert (m.path / "native" / "c" / "3").read_bytes() == native[3000:]
        assert stats_when(lambda s: True)["cache_misses"] == 1


def test_readdir_lists_chunks_in_array_order(tmp_path):
    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "repo")))
    s = repo.writable_session("main")
    a = zarr.group(s.store).create_array("a", shape=(12, 24), chunks=(1, 2), dtype="u1",
                                         fill_value=0, compressors=None)
    a[:] = 1  # 12 x 12 inline chunks
    s.commit("a 12 x 12 grid")
    numeric = [str(i) for i in range(12)]
    with mounted(tmp_path / "repo", tmp_path / "m", "presentation=v3+v2") as m:
        assert os.listdir(m.path / "v3" / "a" / "c") == numeric
        assert os.listdir(m.path / "v3" / "a" / "c" / "11") == numeric
        names = os.listdir(m.path / "v2" / "a")
        assert names[:2] == [".zarray", ".zattrs"]
        assert names[2:] == [f"{i}.{j}" for i in range(12) for j in range(12)]
