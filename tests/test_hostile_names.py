"""Repositories whose node names collide with the mount's own names, or are no Zarr names.

Each repository is written with icechunk's own API (zarr on an icechunk store,
or raw ``zarr.json`` keys set on the store), so only names icechunk accepts are
tried; it refuses ``.`` and ``..`` (see ``test_icechunk_refuses_dot_segments``).
The rule is in docs/SEMANTICS.md ("The tree"): the versions directory wins at
the mount root, nodes the mount cannot show are hidden, and each hidden node is
logged once as a warning.
"""

from __future__ import annotations

import ast
import asyncio
import errno
import json
import os
import re
from collections import Counter
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import zarr
from mounting import mounted
from zarr.core.buffer import cpu

from vchunkfs.repository.snapshot import node_tree

pytestmark = pytest.mark.timeout(300)

PRESENTATIONS = ("v3", "v2", "v2-decoded", "v3-decoded")
V2_NAMES = (".zarray", ".zattrs", ".zgroup", ".zmetadata")
LONG = "x" * 300
GROUP_DOC = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()

# raw zarr.json keys icechunk accepts, and the node path it stores for each
RAW_KEYS = {
    "/abs/zarr.json": "//abs",
    "g//h/zarr.json": "/g//h",
    "./dot/zarr.json": "/./dot",
    "k/zarr.json/zarr.json": "/k/zarr.json",
    "arr/c/zarr.json": "/arr/c",
    "arr/sub/zarr.json": "/arr/sub",
    "orph/kid/zarr.json": "/orph/kid",
}
# hidden in every presentation (each logged once); "/.vchunkfs" is the versions dir's
HIDDEN = {"/.vchunkfs", "/zarr.json", "/__x", "/...", "/a\0b", "/" + LONG,
          *RAW_KEYS.values()}
HIDDEN_V2 = {"/" + n for n in V2_NAMES}  # hidden in v2 and v2-decoded only
# paths of hidden nodes as a reader would spell them (the others are files or chunk
# directories, or no path can name them: NUL)
ABSENT = ("__x", "...", "dot", "abs", "g/h", "orph", "orph/kid", "arr/sub", "zarr.json/c",
          "k/zarr.json/zarr.json")
# what each presentation's root lists
ROOT_V3 = sorted(["arr", "g", "k", "ok", "zarr.json", *V2_NAMES])
ROOT_V2 = sorted(["arr", "g", "k", "ok", ".zattrs", ".zgroup", ".zmetadata"])


def _set_raw(store: ic.IcechunkStore, key: str, doc: bytes) -> None:
    async def go() -> None:
        await store.set(key, cpu.Buffer.from_bytes(doc))
    asyncio.run(go())


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """main: a plain array ``ok`` (tagged v1), then every hostile name icechunk accepts."""
    path = tmp_path_factory.mktemp("hostile") / "repo"
    repo = ic.Repository.create(ic.local_filesystem_storage(str(path)))
    s = repo.writable_session("main")
    root = zarr.create_group(s.store)
    root.create_array("ok", shape=(4,), chunks=(2,), dtype="i2", fill_value=0)[:] = [1, 2, 3, 4]
    v1 = s.commit("plain")
    repo.create_tag("v1", v1)
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="r+")
    # a fake versions directory: HEAD and a tag v1 of other content
    fake = root.create_group(".vchunkfs")
    fake.create_array("HEAD", shape=(2,), chunks=(2,), dtype="i1", fill_value=0)[:] = [7, 7]
    fake.create_group("tags").create_group("v1").create_array(
        "ok", shape=(4,), chunks=(4,), dtype="i2", fill_value=0)[:] = [9, 9, 9, 9]
    root.create_array("zarr.json", shape=(2,), chunks=(2,), dtype="i1", fill_value=0)[:] = [5, 6]
    for name in ("__x", "...", "a\0b", LONG, *V2_NAMES):
        root.create_group(name)
    root.create_group("g")
    root.create_group("k")
    root.create_array("arr", shape=(2,), chunks=(2,), dtype="i1", fill_value=0)[:] = [1, 1]
    for key in RAW_KEYS:
        _set_raw(s.store, key, GROUP_DOC)
    main = s.commit("hostile names")
    nodes = {n["path"] for n in repo.inspect_snapshot(main)["nodes"]}
    assert nodes >= HIDDEN | HIDDEN_V2  # icechunk stored every one of them
    return path, v1, main


def _walk(top: Path) -> int:
    """Every directory below ``top`` lists each name once; returns the entries seen."""
    seen = 0

    def fail(e: OSError) -> None:
        raise e

    for d, dirs, files in os.walk(top, onerror=fail):
        names = dirs + files
        dup = [n for n, c in Counter(names).items() if c > 1]
        assert not dup, (d, dup)
        seen += len(names)
    return seen


def _hidden_warnings(log: str) -> Counter[str]:
    found = re.findall(r"WARNING.*node ('(?:[^'\\]|\\.)*') is hidden: ", log)
    return Counter(ast.literal_eval(p) for p in found)


def _head(m, snapshot: str) -> None:
    assert (m.path / ".vchunkfs" / "HEAD").read_text().split() == [
        "branch", "main", "snapshot", snapshot]


def test_icechunk_refuses_dot_segments(tmp_path):
    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "repo")))
    s = repo.writable_session("main")
    root = zarr.create_group(s.store)
    for name in (".", ".."):
        with pytest.raises(ValueError):
            root.create_group(name)
    for key in ("../up/zarr.json", "t/../zarr.json"):
        with pytest.raises(ic.IcechunkError):
            _set_raw(s.store, key, GROUP_DOC)


def test_versions_dir_and_metadata_win_at_the_mount_root(hostile, tmp_path):
    path, _v1, main = hostile
    with mounted(path, tmp_path / "m", "show_versions") as m:
        _head(m, main)
        # the root: the stored document, one zarr.json, one .vchunkfs, nothing hidden
        assert sorted(os.listdir(m.path)) == sorted([*ROOT_V3, ".vchunkfs"])
        assert json.loads((m.path / "zarr.json").read_bytes())["node_type"] == "group"
        assert sorted(os.listdir(m.path / ".vchunkfs")) == [
            "HEAD", "branches", "history", "snapshots", "staged", "tags"]
        _head(m, main)  # after the listing that met the colliding node
        tag = m.path / ".vchunkfs" / "tags" / "v1"
        assert sorted(os.listdir(tag)) == ["ok", "zarr.json"]
        np.testing.assert_array_equal(zarr.open_array(tag / "ok", mode="r")[...], [1, 2, 3, 4])
        # no version root shows a node named like the versions directory
        branch = m.path / ".vchunkfs" / "branches" / "main"
        assert ".vchunkfs" not in os.listdir(branch)
        with pytest.raises(FileNotFoundError):
            os.stat(branch / ".vchunkfs")
        for d in (m.path, branch):
            for absent in ABSENT:
                with pytest.raises(OSError) as e:
                    os.stat(d / absent)
                assert e.value.errno in (errno.ENOENT, errno.ENOTDIR), absent
            with pytest.raises(FileNotFoundError):  # FUSE passes names of up to 1024 bytes
                os.stat(d / LONG)
            assert os.listdir(d / "g") == ["zarr.json"]
            assert sorted(os.listdir(d / "arr")) == ["c", "zarr.json"]
            assert os.listdir(d / "arr" / "c") == ["0"]
            assert not (d / "zarr.json" / "c").exists()
        assert _walk(branch) > 0
        np.testing.assert_array_equal(zarr.open_array(m.path / "ok", mode="r")[...], [1, 2, 3, 4])
        assert m.proc.poll() is None
    log = m.log_text()
    assert "Traceback" not in log, log
    assert _hidden_warnings(log) == Counter(HIDDEN), log


def test_every_presentation_hides_what_collides(hostile, tmp_path):
    path, _v1, main = hostile
    with mounted(path, tmp_path / "m", "presentation=all") as m:
        _head(m, main)
        assert sorted(os.listdir(m.path)) == sorted(PRESENTATIONS)
        for name in PRESENTATIONS:
            d = m.path / name
            want = ROOT_V3 if name.startswith("v3") else ROOT_V2
            assert sorted(os.listdir(d)) == want, name
            assert _walk(d) > 0
            assert not (d / ".vchunkfs").exists() and not (d / "abs").exists()
            assert not (d / "__x").exists() and not (d / "...").exists()
            assert not (d / "orph").exists() and not (d / "k" / "zarr.json").is_dir()
            assert os.listdir(d / "g") == (["zarr.json"] if name.startswith("v3")
                                            else [".zattrs", ".zgroup"])
            if name.startswith("v3"):
                doc = json.loads((d / "zarr.json").read_bytes())
                assert doc["node_type"] == "group" and not (d / "zarr.json" / "c").exists()
                for n in V2_NAMES:  # no collision in a v3 directory
                    assert (d / n / "zarr.json").is_file()
            else:
                assert json.loads((d / ".zgroup").read_bytes()) == {"zarr_format": 2}
                assert json.loads((d / ".zattrs").read_bytes()) == {}
                meta = json.loads((d / ".zmetadata").read_bytes())["metadata"]
                assert sorted(meta) == [".zattrs", ".zgroup", "arr/.zarray", "arr/.zattrs",
                                        "g/.zattrs", "g/.zgroup", "k/.zattrs", "k/.zgroup",
                                        "ok/.zarray", "ok/.zattrs"]
            arr = zarr.open_array(d / "ok", mode="r", zarr_format=3 if "v3" in name else 2)
            np.testing.assert_array_equal(arr[...], [1, 2, 3, 4])
        _head(m, main)
        assert m.proc.poll() is None
    log = m.log_text()
    assert "Traceback" not in log, log
    assert _hidden_warnings(log) == Counter(HIDDEN | HIDDEN_V2), log


def test_node_tree_rule(caplog):
    raw = {"/": "group", "/a": "group", "/a/.vchunkfs": "group", "/a/b": "array",
           "/a/b/c": "group", "/a/b/c/d": "array", "/.vchunkfs": "array",
           "/.vchunkfs/x": "group", "/orph/kid": "group", "/orph/kid/more": "group",
           "/..a": "group", "/.": "group", "/..": "group", "/__a": "group", "/_a": "group",
           "/__a/__b": "group", "/g": "group", "/g//h": "group", "/g//h/": "group"}
    with caplog.at_level("WARNING", logger="vchunkfs.names"):
        nodes = node_tree([{"path": p, "node_type": k} for p, k in raw.items()], "S1")
        node_tree([{"path": p, "node_type": k} for p, k in raw.items()], "S1")
    assert sorted(nodes) == ["", "..a", "_a", "a", "a/.vchunkfs", "a/b", "g"]
    assert nodes[""].children == ("..a", "_a", "a", "g") and nodes["g"].children == ()
    assert nodes["a"].children == (".vchunkfs", "b") and nodes["a/b"].children == ()
    reported = Counter(r.getMessage().split("'")[1] for r in caplog.records)
    assert reported == Counter(["/a/b/c", "/.vchunkfs", "/orph/kid", "/.", "/..", "/__a",
                                "/g//h"])
