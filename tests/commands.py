"""The command line and the project's scripts, run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "vchunkfs.cli.main"]


def cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``vchunkfs ARGS``; with ``check``, a non-zero exit fails the test with its output."""
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "ICECHUNK_LOG": "error"})
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def make_days(directory: Path, days: int, start: str = "2024-08-01", scale: int = 4) -> list[Path]:
    """OISST-like daily files from scripts/make_oisst.py (1/scale of the real grid)."""
    subprocess.run([sys.executable, str(PROJECT / "scripts" / "make_oisst.py"), str(directory),
                    "--days", str(days), "--start", start, "--scale", str(scale)], check=True,
                   capture_output=True)
    return sorted(directory.glob("*.nc"))


def ingest_days(base: Path, days: int) -> tuple[Path, str, list[Path]]:
    """OISST-like days in ``base/data`` ingested into a new ``base/repo`` with vchunkfs ingest:
    (repository, container prefix, files)."""
    files = make_days(base / "data", days)
    prefix = (base / "data").as_uri() + "/"
    cli("init", str(base / "repo"))
    cli("ingest", str(base / "repo"), *map(str, files), "--concat-dim", "time",
        "--container", prefix)
    return base / "repo", prefix, files
