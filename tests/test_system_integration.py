"""mount(8), /etc/fstab and systemd integration, with the helper really installed in /sbin."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mounting import unmount

PROJECT = Path(__file__).resolve().parent.parent
HELPER = Path("/sbin/mount.vchunkfs")

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="installing into /sbin needs root")


@pytest.fixture(scope="module")
def installed_helper():
    existed = HELPER.exists()
    subprocess.run([str(PROJECT / "scripts" / "install-mount-helper")], check=True,
                   capture_output=True)
    yield HELPER
    if not existed:
        subprocess.run([str(PROJECT / "scripts" / "install-mount-helper"), "--uninstall"],
                       check=True, capture_output=True)


def test_mount_t_vchunkfs(installed_helper, local_repo, tmp_path):
    path, built = local_repo
    mp = tmp_path / "m"
    mp.mkdir()
    r = subprocess.run(["mount", "-t", "vchunkfs", str(path), str(mp), "-o",
                        f"authorize={built.container_prefix},nofail,_netdev"],
                       capture_output=True, text=True, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        line = next(li for li in Path("/proc/mounts").read_text().splitlines()
                    if li.split()[1] == str(mp))
        assert line.split()[2] == "fuse.vchunkfs" and " ro," in f" {line.split()[3]},"
        ref = built.refs["day1"][0]
        assert (mp / ref.key).stat().st_size == ref.length
        assert subprocess.run(["umount", str(mp)], timeout=30).returncode == 0
        assert not os.path.ismount(mp)
    finally:
        unmount(mp)


def test_fstab_line(installed_helper, local_repo, tmp_path):
    path, built = local_repo
    mp = tmp_path / "f"
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{path} {mp} vchunkfs version=v1,authorize={built.container_prefix},"
                     "noauto,nofail,x-systemd.automount 0 0\n")
    r = subprocess.run(["mount", "--fstab", str(fstab), str(mp)], capture_output=True,
                       text=True, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        head = (mp / ".vchunkfs" / "HEAD").read_text().split()
        assert head == ["tag", "v1", "snapshot", built.snapshots["v1"]]
    finally:
        unmount(mp)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_unit_verifies(installed_helper, tmp_path):
    unit = tmp_path / "vchunkfs@oisst.service"
    shutil.copy(PROJECT / "systemd" / "vchunkfs@.service", unit)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr
