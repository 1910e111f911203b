"""Local sources: never a byte from outside the authorized prefix, never a changed file's bytes.

Every read through the mount is compared with the bytes of the source file as it
was ingested (read with h5py's chunk table from a pristine copy): each read is
either exactly those bytes or the documented errno, never anything else.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import servers
import xarray as xr
from commands import cli, ingest_days, make_days
from datasets import chunk_refs, read_h5
from mounting import mounted
from servers import FaultProxy

from vchunkfs.errors import SourceChangedError, SourceOutsideContainerError
from vchunkfs.repository.sources import (
    LocalSources,
    SourceRecord,
    SourceRecords,
    records_in_metadata,
)

pytestmark = pytest.mark.timeout(300)


def _sources(tmp_path: Path) -> LocalSources:
    async def no_ancestry(_sid: str):  # type: ignore[no-untyped-def]
        return
        yield

    prefix = (tmp_path / "data").as_uri() + "/"
    return LocalSources([prefix], lambda: [prefix], SourceRecords(no_ancestry))


def test_symlinks_leaving_the_prefix_are_refused_and_staying_inside_followed(tmp_path):
    data, secret = tmp_path / "data", tmp_path / "secret"
    (data / "sub").mkdir(parents=True)
    secret.mkdir()
    (secret / "s.txt").write_bytes(b"SECRET" * 10)
    (secret / "s.txt").chmod(0o600)
    (data / "sub" / "a.bin").write_bytes(bytes(range(256)))
    (data / "out.bin").symlink_to(secret / "s.txt")  # absolute, leaving
    (data / "rel.bin").symlink_to("../secret/s.txt")  # relative, leaving
    (data / "in.bin").symlink_to(data / "sub" / "a.bin")  # absolute, staying inside
    (data / "dir").symlink_to(secret)  # a directory link leaving
    os.mkfifo(data / "fifo")
    local = _sources(tmp_path)
    url = (data).as_uri() + "/"
    root = local.root(url + "in.bin")
    assert root == str(data.resolve()) + "/"
    assert local.read(url + "in.bin", root, 10, 4, None, "k") == bytes([10, 11, 12, 13])
    refused = 0
    for name in ("out.bin", "rel.bin", "dir/s.txt", "fifo"):  # a FIFO must not hang the read
        with pytest.raises(SourceOutsideContainerError) as e:
            local.read(url + name, root, 0, 6, None, "k")
        assert "outside" in str(e.value) or "not a regular file" in str(e.value)
        refused += 1
    assert refused == 4
    # urls outside every authorized prefix are not this reader's to read at all
    assert local.root("file:///etc/passwd") is None
    assert local.root((tmp_path / "database").as_uri() + "/x") is None


def test_records_catch_what_modification_times_miss(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    f = data / "a.bin"
    f.write_bytes(bytes(1000))
    st = f.stat()
    record = SourceRecord.from_stat(st)
    local = _sources(tmp_path)
    url = f.as_uri()
    root = local.root(url)
    assert root is not None
    assert local.read(url, root, 0, 10, record, "k") == bytes(10)
    with open(f, "r+b") as fh:  # same size, bytes flipped, modification time restored
        fh.write(b"\xff")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(SourceChangedError, match="change time"):
        local.read(url, root, 0, 10, record, "k")
    with pytest.raises(SourceChangedError, match="too short"):
        local.read(url, root, 990, 20, None, "k")


def test_records_in_metadata_ignore_malformed_entries():
    md = {"vchunkfs": {"sources": {"file:///a": [1, 2, 3, 4], "file:///b": [1, 2],
                                   "file:///c": "x", "file:///d": [1, 2, 3, True]}}}
    assert records_in_metadata(md) == {"file:///a": SourceRecord(1, 2, 3, 4)}
    assert records_in_metadata({"vchunkfs": "x"}) == {}
    assert records_in_metadata(None) == {}


# -- through the mount ----------------------------------------------------------


def _flipped_copy(src: Path, dest: Path, offset: int) -> None:
    """A same-size copy of ``src`` with bytes flipped at ``offset``, back-dated to its mtime."""
    data = bytearray(src.read_bytes())
    for i in range(offset, offset + 16):
        data[i] ^= 0xFF
    dest.write_bytes(bytes(data))
    st = src.stat()
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))


def _inplace_mtime_restored(f: Path, off: int, spare: Path) -> None:
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.seek(off)
        fh.write(bytes(b ^ 0xFF for b in fh.read(16)))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replaced_backdated(f: Path, off: int, spare: Path) -> None:
    _flipped_copy(f, spare, off)
    os.replace(spare, f)


def _truncated(f: Path, off: int, spare: Path) -> None:
    os.truncate(f, off + 8)


def _deleted(f: Path, off: int, spare: Path) -> None:
    f.unlink()


def _rsync_a(f: Path, off: int, spare: Path) -> None:
    _flipped_copy(f, spare, off)
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-a", str(spare), str(f)], check=True)
    else:  # what rsync -a does: a temporary file renamed over, times preserved
        tmp = f.with_name("." + f.name + ".tmp")
        shutil.copy2(spare, tmp)
        os.replace(tmp, f)


def _cp_p(f: Path, off: int, spare: Path) -> None:
    _flipped_copy(f, spare, off)
    subprocess.run(["cp", "-p", str(spare), str(f)], check=True)


MUTATIONS: dict[str, Callable[[Path, int, Path], None]] = {
    "in place, mtime restored": _inplace_mtime_restored,
    "replaced and back-dated": _replaced_backdated,
    "truncated": _truncated,
    "deleted": _deleted,
    "rsync -a of another file": _rsync_a,
    "cp -p of another file": _cp_p,
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_changed_local_source_is_an_error_never_wrong_bytes(tmp_path, mutation):
    repo, prefix, files = ingest_days(tmp_path, 2)
    # what each chunk file must hold: the bytes of the files as they were ingested
    expected: dict[str, tuple[int, bytes]] = {}
    for day, f in enumerate(files):
        raw = f.read_bytes()
        for r in chunk_refs(f, "sst", "sst"):
            coords = r.key.split("/")[2:]
            key = "/".join(["sst", "c", str(day), *coords[1:]])
            expected[key] = (day, raw[r.offset:r.offset + r.length])
    target = files[1]
    first = min(r.offset for r in chunk_refs(target, "sst", "sst"))
    MUTATIONS[mutation](target, first, tmp_path / "spare.nc")
    right = refused = wrong = 0
    with mounted(repo, tmp_path / "m", f"authorize={prefix}", "prefetch=0") as m:
        for _ in range(2):  # a second pass: nothing wrong was cached either
            for key, (day, want) in expected.items():
                try:
                    got = (m.path / key).read_bytes()
                except OSError as e:
                    assert e.errno == errno.EIO, (key, e)
                    assert day == 1, f"{key} of the unchanged file refused"
                    refused += 1
                    continue
                if got == want:
                    right += 1
                else:
                    wrong += 1
        log = m.log_text()
        stats = json.loads(os.getxattr(m.path, "user.vchunkfs.stats"))
    print(f"{mutation}: {right} right, {refused} refused, {wrong} wrong; {stats}")
    assert wrong == 0
    # the first read found the records and the index: the others took the local way
    # (a worker thread, no bridge), which must refuse the changed file as well
    assert stats["local_fetches"] >= len(expected) - 1, stats
    assert refused == 2 * sum(1 for d, _ in expected.values() if d == 1)
    assert right == 2 * sum(1 for d, _ in expected.values() if d == 0)
    assert target.as_uri() in log


def test_ingest_records_its_local_sources_in_the_commit(tmp_path):
    repo, _prefix, files = ingest_days(tmp_path, 2)
    r = ic.Repository.open(ic.local_filesystem_storage(str(repo)))
    head = r.lookup_snapshot(r.lookup_branch("main"))
    records = records_in_metadata(head.metadata)
    assert set(records) == {f.as_uri() for f in files}
    for f in files:
        assert records[f.as_uri()] == SourceRecord.from_stat(f.stat())


# -- object-store sources: ingest records each object's ETag --------------------


@pytest.fixture(scope="module")
def s3():
    with servers.moto_s3_server() as endpoint:
        yield endpoint


def _days_on_s3(s3: servers.S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                days: int) -> tuple[list[Path], str, str]:
    """OISST-like days uploaded to a new bucket under ``data/``, with the moto server's
    credentials in the environment: (local files, bucket, container prefix)."""
    for k, v in {"AWS_ACCESS_KEY_ID": s3.access_key_id,
                 "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
                 "AWS_REGION": s3.region}.items():
        monkeypatch.setenv(k, v)
    files = make_days(tmp_path / "data", days)
    bucket = "src-" + os.urandom(4).hex()
    s3.create_bucket(bucket)
    for f in files:
        s3.put_object(bucket, f"data/{f.name}", f.read_bytes())
    return files, bucket, f"s3://{bucket}/data/"


def _day0_served_day1_refused(repo: Path, where: Path, prefix: str, files: list[Path],
                              refs: list) -> str:  # type: ignore[type-arg]
    """Mount ``repo``: every sst chunk of day 0 holds its source's bytes (read here from
    the local copy), every chunk of day 1 (``refs``, its changed object) is EIO. Returns
    the daemon's log."""
    day0 = {"/".join(["sst", "c", "0", *r.key.split("/")[3:]]):
            files[0].read_bytes()[r.offset:r.offset + r.length]
            for r in chunk_refs(files[0], "sst", "sst")}
    assert refs
    with mounted(repo, where, f"authorize={prefix}", "prefetch=0") as m:
        for key, want in day0.items():
            assert (m.path / key).read_bytes() == want, key
        for r in refs:
            key = "/".join(["sst", "c", "1", *r.key.split("/")[3:]])
            with pytest.raises(OSError) as e:
                (m.path / key).read_bytes()
            assert e.value.errno == errno.EIO, key
        return m.log_text()


@pytest.mark.parametrize("mutation", ["rewritten, same size", "truncated", "deleted"])
def test_a_changed_object_is_an_error_never_wrong_bytes(s3, tmp_path, monkeypatch, mutation):
    """An object rewritten with the same size within the same second as its ingest:
    Last-Modified cannot tell, the ETag recorded by ingest does. Truncated and deleted
    objects are errors too."""
    files, bucket, prefix = _days_on_s3(s3, tmp_path, monkeypatch, 2)
    urls = [prefix + f.name for f in files]
    repo = tmp_path / "repo"
    cli("init", str(repo))
    cli("ingest", str(repo), *urls, "--concat-dim", "time", "--container", prefix,
        "--source-endpoint", s3.endpoint_url, "--source-region", s3.region)
    # the refs carry the objects' ETags, and Icechunk itself reads them (the repository
    # stays Icechunk's own format)
    ice = ic.Repository.open(ic.local_filesystem_storage(str(repo)),
                             authorize_virtual_chunk_access=ic.containers_credentials(
                                 {prefix: ic.s3_credentials(access_key_id=s3.access_key_id,
                                                            secret_access_key=s3.secret_access_key)}))
    stored = xr.open_zarr(ice.readonly_session("main").store, consolidated=False,
                          zarr_format=3, mask_and_scale=False)["sst"].values
    for day, f in enumerate(files):
        np.testing.assert_array_equal(stored[day], read_h5(f, "sst")[0])
    raw = files[1].read_bytes()
    refs = chunk_refs(files[1], "sst", "sst")
    flipped = bytearray(raw)
    for r in refs:
        flipped[r.offset] ^= 0xFF
    key1 = f"data/{files[1].name}"
    if mutation == "deleted":
        s3.delete_object(bucket, key1)
    else:  # same size with flipped bytes, or cut just after the first chunk's first byte
        s3.put_object(bucket, key1, bytes(flipped) if mutation.startswith("rewritten")
                      else raw[:min(r.offset for r in refs) + 1])
    log = _day0_served_day1_refused(repo, tmp_path / "m", prefix, files, refs)
    assert files[1].name in log


@pytest.mark.parametrize("presentation", ["v3", "v2"])
def test_local_reads_in_worker_threads_serve_the_source_bytes(tmp_path, presentation):
    """Chunks of sources with a record are read on the trio side, without the bridge
    (v3, and v2 whose chunk names differ from the stored keys): every chunk file holds
    the bytes of its ref in the source file, read here with plain file reads."""
    repo, prefix, files = ingest_days(tmp_path, 3)
    expected: dict[str, bytes] = {}
    for day, f in enumerate(files):
        raw = f.read_bytes()
        for r in chunk_refs(f, "sst", "sst"):
            rest = [str(day), *r.key.split("/")[3:]]
            name = "/".join(["c", *rest]) if presentation == "v3" else ".".join(rest)
            expected[f"sst/{name}"] = raw[r.offset:r.offset + r.length]
    with mounted(repo, tmp_path / "m", f"authorize={prefix}", f"presentation={presentation}",
                 "prefetch=0") as m:
        for key, want in expected.items():
            assert (m.path / key).read_bytes() == want, key
        stats = json.loads(os.getxattr(m.path, "user.vchunkfs.stats"))
    # the first read found the records and the index; the others took the local way
    assert stats["local_fetches"] >= len(expected) - 1, stats


# -- a source rewritten while ingest parses it ----------------------------------


def _rewrite_after_parse(monkeypatch: pytest.MonkeyPatch, name: str,
                         rewrite: Callable[[], None]) -> None:
    """Let ingest parse the source called ``name``, then ``rewrite`` it at once (before
    ingest looks at any source again): a fault schedule around VirtualiZarr's parse."""
    import vchunkfs.ingest as ingest_module

    parse = ingest_module._open_one

    def parse_then_rewrite(url: str, registry, parser):  # type: ignore[no-untyped-def]
        ds = parse(url, registry, parser)
        if url.endswith("/" + name):
            rewrite()
        return ds

    monkeypatch.setattr(ingest_module, "_open_one", parse_then_rewrite)


def _flip_chunks(raw: bytes, refs: list) -> bytes:  # type: ignore[type-arg]
    flipped = bytearray(raw)
    for r in refs:
        flipped[r.offset] ^= 0xFF
    return bytes(flipped)


def test_a_local_source_rewritten_while_parsed_commits_nothing(tmp_path, monkeypatch):
    """The file is rewritten in place (same size, modification time put back) just after
    VirtualiZarr parsed it. Its record was taken before the parse, so the commit finds it
    changed and commits nothing; a record taken after the parse would have vouched for
    the new bytes at the old offsets."""
    from vchunkfs.cli.main import main

    files = make_days(tmp_path / "data", 2)
    prefix = (tmp_path / "data").as_uri() + "/"
    repo = tmp_path / "repo"
    cli("init", str(repo))
    target = files[1]

    def rewrite() -> None:
        st = target.stat()
        target.write_bytes(_flip_chunks(target.read_bytes(), chunk_refs(target, "sst", "sst")))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))

    _rewrite_after_parse(monkeypatch, target.name, rewrite)
    before = ic.Repository.open(ic.local_filesystem_storage(str(repo))).lookup_branch("main")
    status = main(["ingest", str(repo), *map(str, files), "--concat-dim", "time",
                   "--container", prefix])
    assert status != 0
    after = ic.Repository.open(ic.local_filesystem_storage(str(repo))).lookup_branch("main")
    assert after == before  # nothing committed


@pytest.mark.parametrize("inputs", ["glob", "urls"])
def test_an_object_rewritten_while_parsed_is_never_served(s3, tmp_path, monkeypatch, inputs):
    """The object is rewritten (same size) just after VirtualiZarr parsed it. Its ETag was
    taken before the parse (from the glob's listing, or a HEAD), so Icechunk's If-Match
    refuses its chunks: EIO, never the new bytes at the old offsets."""
    from vchunkfs.cli.main import main

    files, bucket, prefix = _days_on_s3(s3, tmp_path, monkeypatch, 2)
    args = [prefix + "*.nc"] if inputs == "glob" else [prefix + f.name for f in files]
    target = files[1]
    refs = chunk_refs(target, "sst", "sst")
    _rewrite_after_parse(monkeypatch, target.name, lambda: s3.put_object(
        bucket, f"data/{target.name}", _flip_chunks(target.read_bytes(), refs)))
    repo = tmp_path / "repo"
    cli("init", str(repo))
    assert main(["ingest", str(repo), *args, "--concat-dim", "time", "--container", prefix,
                 "--source-endpoint", s3.endpoint_url, "--source-region", s3.region]) == 0
    _day0_served_day1_refused(repo, tmp_path / "m", prefix, files, refs)


def test_ingest_takes_each_objects_state_before_reading_it(s3, tmp_path, monkeypatch):
    """Through a proxy that records every request. URLs given one by one get one HEAD
    each from ingest, all of them before any request of the parser (which makes its
    own HEAD and GETs of each file); a glob's objects get none from ingest (the listing
    gave their ETags): one HEAD a file fewer in all."""
    files, _bucket, prefix = _days_on_s3(s3, tmp_path, monkeypatch, 3)
    names = [f.name for f in files]
    requests: dict[str, list[tuple[str, str]]] = {}
    for inputs, args in (("urls", [prefix + n for n in names]), ("glob", [prefix + "*.nc"])):
        seen: list[tuple[str, str]] = []  # (method, object name) of every request
        proxy = FaultProxy((s3.host, s3.port))

        def record(line: str, seen: list[tuple[str, str]] = seen) -> None:
            method, target = line.split()[:2]
            seen.append((method, target.split("?")[0].rsplit("/", 1)[-1]))

        proxy.request_schedule = record  # type: ignore[assignment]
        try:
            repo = tmp_path / f"repo-{inputs}"
            cli("init", str(repo))
            cli("ingest", str(repo), *args, "--concat-dim", "time", "--container", prefix,
                "--source-endpoint", proxy.url, "--source-region", s3.region)
        finally:
            proxy.close()
        requests[inputs] = [r for r in seen if r[1] in names]
    urls, globbed = requests["urls"], requests["glob"]
    # ingest's own HEADs come first, one per file, before the parser touches any file
    assert sorted(urls[:len(names)]) == [("HEAD", n) for n in names], urls
    assert urls[len(names):] == globbed, (urls, globbed)  # then the same as with a glob
    assert globbed and all(m in ("HEAD", "GET") for m, _ in globbed), globbed
