"""Small pure parts: chunk key grammar, repository URLs, authorization parsing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vchunkfs.errors import UnauthorizedContainerError, UsageError
from vchunkfs.repository import Authorization, ChunkGrid, parse_repo_url
from vchunkfs.repository.authorization import Grant, read_auth_file, unauthorized_prefix
from vchunkfs.repository.chunkgrid import ChunkPath


def grid(shape, chunks, encoding=None):
    meta = {"shape": shape, "chunk_grid": {"name": "regular",
                                           "configuration": {"chunk_shape": chunks}}}
    if encoding:
        meta["chunk_key_encoding"] = encoding
    return ChunkGrid.from_metadata(meta)


def test_default_encoding_paths():
    g = grid([10, 20], [3, 7])
    assert g.grid_shape == (4, 3) and g.num_chunks == 12
    assert g.key((3, 2)) == "c/3/2"
    assert g.parse("c/3/2") == ChunkPath((3, 2), True)
    assert g.parse("c/3") == ChunkPath((3,), False)
    assert g.parse("c") == ChunkPath((), False)
    for bad in ("c/4/0", "c/03/2", "c/3/2/0", "c/-1/0", "c/+1/0", "d/0/0", "c/3/", "c//2"):
        assert g.parse(bad) is None, bad
    assert not g.flat and g.top_dir() == "c"


def test_other_encodings():
    dot = grid([4, 4], [2, 2], {"name": "default", "configuration": {"separator": "."}})
    assert dot.key((1, 0)) == "c.1.0" and dot.parse("c.1.0") == ChunkPath((1, 0), True)
    assert dot.flat and dot.parse("c") is None and dot.parse("c/1/0") is None
    v2 = grid([4, 4], [2, 2], {"name": "v2"})
    assert v2.key((1, 0)) == "1.0" and v2.parse("1.0") == ChunkPath((1, 0), True)
    v2n = grid([4, 4], [2, 2], {"name": "v2", "configuration": {"separator": "/"}})
    assert v2n.parse("1") == ChunkPath((1,), False) and v2n.parse("1/1") == ChunkPath((1, 1), True)
    assert not v2n.flat and v2n.top_dir() is None
    scalar = grid([], [])
    assert scalar.key(()) == "c" and scalar.parse("c") == ChunkPath((), True) and scalar.flat
    assert grid([], [], {"name": "v2"}).parse("0") == ChunkPath((), True)
    assert grid([0, 5], [2, 2]).num_chunks == 0


def test_repo_urls(tmp_path):
    assert parse_repo_url(str(tmp_path)).url == f"file://{tmp_path}"
    assert parse_repo_url(f"file://{tmp_path}/").path == str(tmp_path)
    s3 = parse_repo_url("s3://bucket/some/prefix/")
    assert (s3.scheme, s3.bucket, s3.prefix) == ("s3", "bucket", "some/prefix")
    gs = parse_repo_url("gs://b/p")
    assert (gs.scheme, gs.bucket, gs.prefix, gs.url) == ("gcs", "b", "p", "gs://b/p")
    az = parse_repo_url("az://acct/cont/pre/fix")
    assert (az.account, az.bucket, az.prefix) == ("acct", "cont", "pre/fix")
    http = parse_repo_url("https://host/repo/")
    assert http.read_only and http.path == "https://host/repo"
    for bad in ("ftp://x/y", "s3://", "az://acct", "s3://b/p?endpoint=x", "file://host/x", ""):
        with pytest.raises(UsageError):
            parse_repo_url(bad)


def test_grants_and_prefix_rules():
    with pytest.raises(UsageError, match="must end with '/'"):
        Authorization.load(["s3://bucket/data"], environ={})
    with pytest.raises(UsageError, match="must be a URL"):
        Authorization.load(["/data/"], environ={})
    with pytest.raises(UsageError, match="never on a command line"):
        Authorization.load(["s3://bucket/data/=static"], environ={})
    auth = Authorization.load(["s3://b/x/=anonymous", "file:///data/"],
                              environ={"VCHUNKFS_AUTHORIZE": "s3://b/x/ https://h/p/"})
    assert auth.prefixes == ["s3://b/x/", "https://h/p/", "file:///data/"]
    assert {g.prefix: g.kind for g in auth.grants}["s3://b/x/"] == "anonymous"  # option wins
    creds = auth.to_icechunk()
    assert creds is not None and set(creds) == set(auth.prefixes)
    assert Authorization.load([], environ={}).to_icechunk() is None


def test_auth_file(tmp_path):
    f = tmp_path / "auth.toml"
    f.write_text('[[authorize]]\nprefix = "s3://b/p/"\ncredentials = "static"\n'
                 'access_key_id = "AK"\nsecret_access_key = "SK"\n'
                 '[[authorize]]\nprefix = "gs://g/"\ncredentials = "anonymous"\n')
    os.chmod(f, 0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        read_auth_file(f)
    os.chmod(f, 0o600)
    grants = read_auth_file(f)
    assert [(g.prefix, g.kind) for g in grants] == [("s3://b/p/", "static"),
                                                    ("gs://g/", "anonymous")]
    assert grants[0].secrets == {"access_key_id": "AK", "secret_access_key": "SK"}
    assert "SK" not in repr(grants[0])  # secrets stay out of logs
    auth = Authorization.load([], environ={"VCHUNKFS_AUTH_FILE": str(f)})
    assert auth.to_icechunk() is not None
    f.write_text('[[authorize]]\nprefix = "s3://b/p/"\ncredentials = "static"\n')
    with pytest.raises(UsageError, match="lack access_key_id"):
        Grant("s3://b/p/", "static", {}).to_icechunk()
    f.write_text("not toml [")
    with pytest.raises(UsageError, match="not valid TOML"):
        read_auth_file(f)


def test_unauthorized_message():
    text = ("a virtual chunk in this repository resolves to the url prefix s3://b/p/, to be "
            "able to fetch the chunk you need to authorize ...")
    assert unauthorized_prefix(text) == "s3://b/p/"
    err = UnauthorizedContainerError("s3://b/p/", "sst/c/0")
    assert "--authorize s3://b/p/" in str(err) and "sst/c/0" in str(err)


def test_listing_key_puts_chunks_in_array_order() -> None:
    from vchunkfs.repository.chunkgrid import listing_key

    def order(names: list[str]) -> list[str]:
        return sorted(names, key=listing_key)

    # a chunk directory, and names that are not chunk names (by name, first)
    assert order(["10", "2", "c", "1", "zarr.json", "0", "x1", "\u0663", "11"]) == [
        "c", "x1", "zarr.json", "\u0663", "0", "1", "2", "10", "11"]
    # a v2 array directory, and a flat v3 one
    assert order(["1.10", ".zattrs", "1.2", "0.11", "10.0", "0.9", ".zarray"]) == [
        ".zarray", ".zattrs", "0.9", "0.11", "1.2", "1.10", "10.0"]
    assert order(["c.1.0", "c.0.10", "zarr.json", "c.0.9"]) == [
        "zarr.json", "c.0.9", "c.0.10", "c.1.0"]


def test_the_daemon_fixes_glibcs_mmap_threshold_unless_the_environment_sets_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from vchunkfs.daemon.run import fix_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_mmap_threshold() is False
    code = ("import os; os.environ.pop('MALLOC_MMAP_THRESHOLD_', None); "
            "from vchunkfs.daemon.run import fix_mmap_threshold; "
            "raise SystemExit(0 if fix_mmap_threshold() else 1)")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0  # glibc here


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "10", "2", "c", "zarr"]), min_size=1,
                         max_size=4), max_size=12))
def test_array_walk_is_the_order_a_recursive_listing_reads_arrays(paths: list[list[str]]
                                                                  ) -> None:
    """ArrayWalk against a plain model: list the root, descend into each group in
    listing order, depth first (what ``find`` does over the mount)."""
    from vchunkfs.repository.chunkgrid import listing_key
    from vchunkfs.repository.snapshot import ArrayWalk, Node

    # every path is an array unless another path lies under it (then it is a group)
    arrays = {"/".join(p) for p in paths}
    groups = {"/".join(p[:i]) for p in paths for i in range(len(p))}
    arrays -= groups
    children: dict[str, set[str]] = {g: set() for g in groups}
    for path in arrays | groups:
        if path:
            parent, _, name = path.rpartition("/")
            children[parent].add(name)
    nodes = {g: Node(g, "group", tuple(sorted(children[g]))) for g in groups}
    nodes |= {a: Node(a, "array") for a in arrays}

    def listed(group: str) -> list[str]:
        out = []
        for name in sorted(children.get(group, ()), key=listing_key):
            path = f"{group}/{name}" if group else name
            out += [path] if path in arrays else listed(path)
        return out

    walk = ArrayWalk(nodes)
    assert list(walk.order) == (listed("") if "" in groups else [])
    for i, a in enumerate(walk.order):
        # on round the circle: the arrays after it, then those before it, never itself
        assert list(walk.after(a)) == list(walk.order[i + 1:] + walk.order[:i])
    assert list(walk.after("no/such/array")) == []
