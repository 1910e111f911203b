"""Following a branch on a real mount: a failure while the branch moves never ends it."""

from __future__ import annotations

import os
import shutil
import time

import icechunk as ic
import numpy as np
import pytest
import zarr
from datasets import build_repo
from mounting import mounted

pytestmark = pytest.mark.timeout(300)


def test_an_unreadable_new_snapshot_keeps_the_mount_serving(tmp_path):
    """The issue's case: a commit to main whose snapshot file is removed before the poll.
    The daemon keeps serving the previous snapshot, logs the new one, and moves once the
    file is back."""
    built = build_repo(ic.local_filesystem_storage(str(tmp_path / "repo")), tmp_path / "src")
    with mounted(tmp_path / "repo", tmp_path / "m", f"authorize={built.container_prefix}",
                 "poll_interval=0.5", "timeout=5") as m:
        before = sorted(os.listdir(m.path))
        native = (m.path / "native" / "c" / "0").read_bytes()
        repo = ic.Repository.open(ic.local_filesystem_storage(str(tmp_path / "repo")))
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="native")[:] = np.arange(1000, dtype="i4") * 3
        new = s.commit("native x3")
        snap = tmp_path / "repo" / "snapshots" / new
        aside = tmp_path / "aside"
        shutil.move(snap, aside)  # before the poll (0.5 s) could read it
        time.sleep(2.5)  # several polls
        assert m.proc.poll() is None, m.log_text()
        assert sorted(os.listdir(m.path)) == before
        assert (m.path / "native" / "c" / "0").read_bytes() == native
        assert os.getxattr(m.path, "user.vchunkfs.snapshot").decode() == built.snapshots["day1"]
        assert new in m.log_text()
        shutil.move(aside, snap)
        deadline = time.monotonic() + 15
        while os.getxattr(m.path, "user.vchunkfs.snapshot").decode() != new:
            assert time.monotonic() < deadline, m.log_text()
            time.sleep(0.2)
        got = np.frombuffer((m.path / "native" / "c" / "0").read_bytes(), "<i4")
        assert (got == np.arange(250, dtype="i4") * 3).all()
        assert m.proc.poll() is None
    assert "Traceback" not in m.log_text(), m.log_text()
