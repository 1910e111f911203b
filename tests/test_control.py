"""Writes through a real daemon's control socket: the CLI, the client, fuzzing, permissions,
conflicts with a direct icechunk writer. Every change is checked by reading the mount."""

from __future__ import annotations

import csv
import json
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

import icechunk as ic
import msgpack
import numpy as np
import pytest
import zarr
from commands import cli
from datasets import SST_V3_METADATA, chunk_refs, last_modified, read_h5, write_sources
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mounting import mounted

from vchunkfs.control import Client, ControlError

pytestmark = pytest.mark.timeout(300)
SST_META = SST_V3_METADATA


@pytest.fixture
def setup(tmp_path):
    """A repository made with `vchunkfs init`, mounted, with its sources."""
    sources = write_sources(tmp_path / "src")
    prefix = (tmp_path / "src").resolve().as_uri() + "/"
    cli("init", str(tmp_path / "repo"), "--container", prefix)
    sock = str(tmp_path / "ctl.sock")
    with mounted(tmp_path / "repo", tmp_path / "m", f"authorize={prefix}",
                 f"control_socket={sock}") as m:
        yield m, sources, prefix, tmp_path


def pread(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


def history(m) -> list[str]:
    return [c["id"] for c in json.loads(cli("ctl", str(m.path), "--json", "log").stdout)]


def test_cli_workflow(setup):
    m, sources, prefix, tmp = setup
    mp = str(m.path)
    meta = tmp / "sst.json"
    meta.write_text(json.dumps(SST_META))
    cli("ctl", mp, "set-meta", "sst", str(meta))
    refs = chunk_refs(sources[0], "sst", "sst")
    table = tmp / "refs.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "location", "offset", "length", "checksum"])
        for r in refs:
            w.writerow([r.key, r.location, r.offset, r.length,
                        last_modified(sources[0]).timestamp()])
    out = cli("ctl", mp, "import-refs", str(table)).stdout
    assert f"staged {len(refs)} refs" in out
    staged = m.path / ".vchunkfs" / "staged" / "main"
    assert (staged / refs[0].key).read_bytes() == pread(sources[0], refs[0].offset,
                                                        refs[0].length)
    assert not (m.path / "sst").exists()  # not committed yet
    assert "sst" in cli("ctl", mp, "changes").stdout
    sid = cli("ctl", mp, "commit", "-m", "sst of day 0", "--meta", '{"by": "cli"}').stdout.strip()
    # the root shows the new head at once, and every chunk equals the source bytes
    for r in refs:
        assert (m.path / r.key).read_bytes() == pread(sources[0], r.offset, r.length)
    np.testing.assert_array_equal(zarr.open_group(str(m.path), mode="r")["sst"][:],
                                  read_h5(sources[0], "sst"))
    assert history(m)[0] == sid
    assert "sst of day 0" in (m.path / ".vchunkfs" / "history").read_text()
    assert not os.listdir(m.path / ".vchunkfs" / "staged")

    cli("ctl", mp, "tag", "create", "day0")
    cli("ctl", mp, "branch", "create", "dev", "--from", "day0")
    assert os.listdir(m.path / ".vchunkfs" / "tags") == ["day0"]
    assert sorted(os.listdir(m.path / ".vchunkfs" / "branches")) == ["dev", "main"]

    # a second day on main, one ref at a time, and a native chunk
    for r in chunk_refs(sources[1], "sst", "sst"):
        cli("ctl", mp, "set-ref", r.key, r.location, str(r.offset), str(r.length))
    blob = tmp / "blob"
    blob.write_bytes(b"\x05\x06")
    small = dict(SST_META, shape=[2], data_type="uint8", fill_value=0, dimension_names=None,
                 chunk_grid={"name": "regular", "configuration": {"chunk_shape": [2]}},
                 codecs=[{"name": "bytes"}], attributes={})
    meta.write_text(json.dumps(small))
    cli("ctl", mp, "set-meta", "grp/small", str(meta))
    cli("ctl", mp, "set-chunk", "grp/small/c/0", str(blob))
    cli("ctl", mp, "commit", "-m", "day 1")
    np.testing.assert_array_equal(zarr.open_group(str(m.path), mode="r")["sst"][:],
                                  read_h5(sources[1], "sst"))
    assert (m.path / "grp" / "small" / "c" / "0").read_bytes() == b"\x05\x06"
    tag_view = zarr.open_group(str(m.path / ".vchunkfs" / "tags" / "day0"), mode="r")
    np.testing.assert_array_equal(tag_view["sst"][:], read_h5(sources[0], "sst"))
    d = json.loads(cli("ctl", mp, "--json", "diff", "day0", "main").stdout)
    assert d["updated_chunks"]["/sst"] == 4 and d["new_arrays"] == ["/grp/small"]

    # delete, then discard: nothing changes
    cli("ctl", mp, "delete", "grp")
    assert not (m.path / ".vchunkfs" / "staged" / "main" / "grp").exists()
    assert cli("ctl", mp, "discard").stdout.strip() == "discarded"
    assert (m.path / "grp").exists()
    # branches: reset and delete
    cli("ctl", mp, "branch", "reset", "dev", "--to", "main")
    assert json.loads(cli("ctl", mp, "--json", "branch", "list").stdout)["dev"] == history(m)[0]
    cli("ctl", mp, "branch", "delete", "dev")
    cli("ctl", mp, "tag", "delete", "day0")
    assert os.listdir(m.path / ".vchunkfs" / "tags") == []
    # containers: add one (saved to the config), list, remove
    cli("ctl", mp, "containers", "add", "s3://bucket/more/", "--container-region", "us-east-1")
    listing = json.loads(cli("ctl", mp, "--json", "containers").stdout)
    assert {c["url_prefix"] for c in listing} == {prefix, "s3://bucket/more/"}
    stored = ic.Repository.fetch_config(ic.local_filesystem_storage(str(tmp / "repo")))
    assert stored is not None and "s3://bucket/more/" in (stored.virtual_chunk_containers or {})
    bad = cli("ctl", mp, "containers", "add", "s3://bucket/noslash", check=False)
    assert bad.returncode == 2 and "must end with '/'" in bad.stderr
    cli("ctl", mp, "containers", "remove", "s3://bucket/more/")
    status = json.loads(cli("ctl", mp, "--json", "status").stdout)
    assert status["root"]["snapshot"] == history(m)[0] and status["pid"] == m.pid


def test_client_grid_parquet_and_msgpack(setup):
    m, sources, _prefix, tmp = setup
    with Client.for_mountpoint(m.path) as c:
        c.set_metadata("sst", SST_META)
        refs = chunk_refs(sources[1], "sst", "sst")
        n = c.set_virtual_refs_grid("sst", (4, 1, 1, 1), [r.location for r in refs],
                                    np.array([r.offset for r in refs]),
                                    np.array([r.length for r in refs]), batch_refs=1)
        assert n == 4
        c.commit("grid refs")
    np.testing.assert_array_equal(zarr.open_group(str(m.path), mode="r")["sst"][:],
                                  read_h5(sources[1], "sst"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    field_meta = dict(SST_META, shape=[30, 40], data_type="float32", fill_value=0.0,
                      dimension_names=["y", "x"], attributes={},
                      codecs=[{"name": "bytes", "configuration": {"endian": "little"}}],
                      chunk_grid={"name": "regular", "configuration": {"chunk_shape": [8, 16]}})
    frefs = chunk_refs(sources[0], "field", "field")
    cols = {k: [getattr(r, k) for r in frefs] for k in ("key", "location", "offset", "length")}
    pq.write_table(pa.table(cols), tmp / "refs.parquet")
    with Client.for_mountpoint(m.path) as c:
        c.set_metadata("field", field_meta)
    cli("ctl", str(m.path), "import-refs", str(tmp / "refs.parquet"))
    cli("ctl", str(m.path), "commit", "-m", "field from parquet")
    np.testing.assert_array_equal(zarr.open_group(str(m.path), mode="r")["field"][:],
                                  read_h5(sources[0], "field"))
    packed = tmp / "refs.msgpack"
    packed.write_bytes(b"".join(msgpack.packb({"key": r.key.replace("field", "f2"),
                                               "location": r.location, "offset": r.offset,
                                               "length": r.length}) for r in frefs))
    with Client.for_mountpoint(m.path) as c:
        c.set_metadata("f2", field_meta)
    cli("ctl", str(m.path), "import-refs", str(packed))
    cli("ctl", str(m.path), "commit", "-m", "f2 from msgpack")
    np.testing.assert_array_equal(zarr.open_group(str(m.path), mode="r")["f2"][:],
                                  read_h5(sources[0], "field"))


def test_client_factorizes_locations_in_order_of_first_use():
    from vchunkfs.control.client import _factorize
    from vchunkfs.control.protocol import NO_LOCATION

    table, index = _factorize(["file:///b", "", "file:///a", "file:///b", ""])
    assert table == ["file:///b", "file:///a"]
    assert index.dtype == np.dtype("<u4")
    assert index.tolist() == [0, NO_LOCATION, 1, 0, NO_LOCATION]
    assert _factorize([])[0] == [] and len(_factorize([])[1]) == 0


def test_daemon_malloc_arena_limit_leaves_an_explicit_setting(monkeypatch):
    from vchunkfs.daemon.run import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


def test_bad_requests_change_nothing(setup):
    m, sources, _prefix, _tmp = setup
    before = history(m)
    with Client.for_mountpoint(m.path) as c:
        c.set_metadata("sst", SST_META)
        c.commit("array")
        head = history(m)
        r = chunk_refs(sources[0], "sst", "sst")[0]
        cases = [
            (dict(op="set_virtual_ref", key=r.key, location="file:///etc/passwd", offset=0,
                  length=10), "invalid_input"),
            (dict(op="set_virtual_ref", key=r.key, location=r.location, offset=-1, length=1),
             "invalid_input"),
            (dict(op="set_metadata", path="x", document={"zarr_format": 2}), "invalid_input"),
            (dict(op="set_metadata", path="x", document=b"{not json"), "invalid_input"),
            (dict(op="set_virtual_refs_keys", refs=[{"key": "nope/c/0", "location": r.location,
                                                     "offset": 0, "length": 4}]),
             "invalid_input"),
            (dict(op="set_virtual_refs_block", array="sst", shape=[2], location_table=[],
                  location_index=b"\x00" * 8, offsets=b"", lengths=b""), "invalid_input"),
            (dict(op="commit", message=""), "invalid_input"),
            (dict(op="no_such_op"), "unknown_op"),
            (dict(op="create_tag", name="a/b"), "usage"),
            (dict(op="history", version="nope"), "version_not_found"),
        ]
        for args, code in cases:
            op = args.pop("op")
            with pytest.raises(ControlError) as e:
                c.call(op, **args)
            assert e.value.code == code, (op, e.value)
        assert c.call("changes")["changed"] is False
        with pytest.raises(ControlError) as e:
            c.commit("nothing staged")
        assert e.value.code == "usage"
    assert history(m) == head and head[1:] == before
    assert not os.listdir(m.path / ".vchunkfs" / "staged")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda b: struct.pack(">I", len(b)) + b, st.binary(max_size=64)),
    st.builds(lambda x: struct.pack(">I", len(x)) + x, st.builds(
        lambda d: msgpack.packb(d), st.dictionaries(
            st.sampled_from(["v", "id", "op", "args", "x"]),
            st.one_of(st.integers(-3, 3), st.text(max_size=8), st.none(), st.binary(max_size=8),
                      st.sampled_from(["commit", "set_chunk", "delete", "status"])),
            max_size=4))),
    st.just(struct.pack(">I", 0)), st.just(struct.pack(">I", 2**31)),
), min_size=1, max_size=4))
def test_fuzz_malformed_frames(fuzz_mount, frames):
    m, sock_path, head = fuzz_mount
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock_path)
        for f in frames:
            try:
                s.sendall(f)
            except OSError:
                break  # the server closed this connection: allowed
    # the daemon still serves reads and other connections, and nothing changed
    assert (m.path / ".vchunkfs" / "HEAD").read_text().split()[-1] == head
    assert os.listdir(m.path) == []  # an empty repository: an empty directory
    with Client(sock_path, timeout=10) as c:
        status = c.status()
        assert status["root"]["snapshot"] == head and status["staged"] == {}


@pytest.fixture(scope="module")
def fuzz_mount(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    prefix = (tmp / "src").resolve().as_uri() + "/"
    write_sources(tmp / "src")
    cli("init", str(tmp / "repo"), "--container", prefix)
    sock = str(tmp / "ctl.sock")
    with mounted(tmp / "repo", tmp / "m", f"authorize={prefix}", f"control_socket={sock}") as m:
        with Client(sock) as c:
            head = c.status()["root"]["snapshot"]
        yield m, sock, head
        with Client(sock) as c:
            assert c.status()["root"]["snapshot"] == head


def test_other_users_are_refused(tmp_path):
    name = "vchunkfs-test-other"
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True)
    uid = pwd.getpwnam(name).pw_uid
    cli("init", str(tmp_path / "repo"))
    # the other user must be able to reach the socket's directory (pytest's is 0700)
    sock_dir = Path(tempfile.mkdtemp(prefix="vchunkfs-test-", dir="/tmp"))
    sock_dir.chmod(0o755)
    sock = str(sock_dir / "ctl.sock")
    # the other user runs the system python (stdlib only: root's venv is not readable)
    request = msgpack.packb({"v": 1, "id": 1, "op": "commit", "args": {"message": "x"}})
    script = ("import socket,struct,sys\n"
              "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
              "b=bytes.fromhex(sys.argv[2]); s.sendall(struct.pack('>I',len(b))+b)\n"
              "n=struct.unpack('>I',s.recv(4))[0]; print(s.recv(n).hex())\n")

    def as_other() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/bin/python3", "-c", script, sock, request.hex()],
                              capture_output=True, text=True, timeout=30, user=uid, group=uid,
                              env={}, cwd="/")

    try:
        with mounted(tmp_path / "repo", tmp_path / "m", f"control_socket={sock}"):
            assert os.stat(sock).st_mode & 0o777 == 0o600
            r = as_other()  # the socket file itself is 0600
            assert r.returncode != 0 and "Permission denied" in r.stderr
            os.chmod(sock, 0o666)  # even with the file open to all, the peer's uid is checked
            r = as_other()
            assert r.returncode == 0, r.stderr
            reply = msgpack.unpackb(bytes.fromhex(r.stdout.strip()))
            assert reply["ok"] is False and reply["error"]["code"] == "permission", reply
            with Client(sock) as c:  # the owner still can, and nothing was committed
                assert c.status()["staged"] == {}
                assert len(c.call("history")) == 1
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_conflict_with_a_direct_writer(setup):
    m, _sources, _prefix, tmp = setup
    small = dict(SST_META, shape=[4], data_type="uint8", fill_value=0, dimension_names=None,
                 chunk_grid={"name": "regular", "configuration": {"chunk_shape": [1]}},
                 codecs=[{"name": "bytes"}], attributes={})
    with Client.for_mountpoint(m.path) as c:
        c.set_metadata("a", small)
        c.commit("array a")
        c.set_chunk("a/c/0", b"\x01")  # staged through the socket
        repo = ic.Repository.open(ic.local_filesystem_storage(str(tmp / "repo")))
        direct = repo.writable_session("main")
        zarr.open_array(direct.store, path="a")[0] = 2  # the same chunk, from Python
        direct_sid = direct.commit("direct writer")
        with pytest.raises(ControlError) as e:
            c.commit("socket writer")
        assert e.value.code == "conflict" and "discard and redo" in e.value.message
        assert c.call("changes")["changed"]  # the staged change is kept for inspection
        c.discard()
        c.set_chunk("a/c/0", b"\x01")  # redone on the new head
        socket_sid = c.commit("socket writer, redone")
    ids = history(m)
    assert ids[0] == socket_sid and ids[1] == direct_sid
    assert (m.path / "a" / "c" / "0").read_bytes() == b"\x01"
    # disjoint changes need no retry: the socket's commit is rebased
    with Client.for_mountpoint(m.path) as c:
        c.set_chunk("a/c/1", b"\x03")
        direct = repo.writable_session("main")
        zarr.open_array(direct.store, path="a")[2] = 4
        d2 = direct.commit("direct, chunk 2")
        s2 = c.commit("socket, chunk 1")
    assert history(m)[:2] == [s2, d2]
    g = zarr.open_group(str(m.path), mode="r")
    assert list(g["a"][:]) == [1, 3, 4, 0]


def test_import_refs_is_a_bulk_path(setup):
    """200,000 refs from a CSV through `ctl import-refs`: staged per array in bulk (it did
    6.3k refs/s one by one; a million now take about 4 s), every ref where it belongs."""
    import time

    m, sources, _prefix, tmp = setup
    n = 200_000
    meta = tmp / "many.json"
    meta.write_text(json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": [n // 1000, 1000],
        "data_type": "uint8", "chunk_grid": {"name": "regular",
                                             "configuration": {"chunk_shape": [1, 1]}},
        "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
        "codecs": [{"name": "bytes"}], "attributes": {}}))
    cli("ctl", str(m.path), "set-meta", "many", str(meta))
    location = sources[0].resolve().as_uri()
    table = tmp / "many.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "location", "offset", "length"])
        for i in range(n):
            w.writerow([f"many/c/{i // 1000}/{i % 1000}", location, i % 4093, 1])
    t0 = time.monotonic()
    out = cli("ctl", str(m.path), "import-refs", str(table)).stdout
    seconds = time.monotonic() - t0
    assert f"staged {n:,} refs" in out
    assert seconds < 20, f"{n} refs took {seconds:.1f} s"  # one by one: about 32 s
    status = json.loads(cli("ctl", str(m.path), "--json", "status").stdout)
    assert status["staged"]["main"]["chunks_changed"] == n
    staged = m.path / ".vchunkfs" / "staged" / "main" / "many" / "c"
    for i in (0, 4093, n - 1):
        assert (staged / str(i // 1000) / str(i % 1000)).read_bytes() == \
            pread(sources[0], i % 4093, 1)
    # a bad key anywhere refuses the whole request: nothing more is staged
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "location", "offset", "length"])
        w.writerows([f"many/c/0/{i}", location, 0, 1] for i in range(1000))
        w.writerow(["many/c/999/0", location, 0, 1])
    bad = cli("ctl", str(m.path), "import-refs", str(table), check=False)
    assert bad.returncode == 2 and "many/c/999/0 is not a chunk key" in bad.stderr
    bad = cli("ctl", str(m.path), "import-refs", str(table), "--batch", "300000", check=False)
    assert bad.returncode == 2 and "--batch" in bad.stderr and "100,000" in bad.stderr
    status = json.loads(cli("ctl", str(m.path), "--json", "status").stdout)
    assert status["staged"]["main"]["chunks_changed"] == n
    cli("ctl", str(m.path), "discard")
