"""Real mounts for the tests: start a daemon, wait until mounted, always unmount.

A mount made here is taken down in teardown with ``fusermount3 -u`` (lazy
``-z`` as a last resort), and only the daemon this helper started is killed,
by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HELPER = [sys.executable, "-m", "vchunkfs.cli.mount"]


@dataclass
class Mount:
    path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def wait_mounted(path: Path, proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} before mounting")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not mounted after {timeout} s")
        time.sleep(0.02)


def unmount(path: Path) -> None:
    """Unmount however the mount is doing; never raises."""
    if not os.path.ismount(path):
        return
    for args in (["fusermount3", "-u"], ["fusermount3", "-u", "-z"]):
        r = subprocess.run([*args, str(path)], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)


@contextlib.contextmanager
def mounted(repo: str | Path, mountpoint: Path, *options: str, env: dict[str, str] | None = None,
            log: Path | None = None) -> Iterator[Mount]:
    """A foreground daemon serving ``repo`` at ``mountpoint`` for the duration of the block."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = log or mountpoint.with_name(mountpoint.name + ".log")
    opts = ",".join(("foreground", *options))
    full_env = {**os.environ, "ICECHUNK_LOG": "error", **(env or {})}
    with open(log, "ab") as logf:
        proc = subprocess.Popen([*HELPER, str(repo), str(mountpoint), "-o", opts],
                                stdout=logf, stderr=logf, env=full_env)
    try:
        wait_mounted(mountpoint, proc)
        yield Mount(mountpoint, proc, log)
    finally:
        unmount(mountpoint)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=15)
            unmount(mountpoint)


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
