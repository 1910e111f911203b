"""Load under faults, short: scripts/bench/bench_load.py with 16 reader processes for
15 s (the 60 s run and its figures are in docs/reliability.md) streaming 32 MiB of
chunks through an 8 MiB budget: 0 mismatches against os.pread of the sources, the
daemon up and exiting 0, RSS minus its baseline within the budget, nothing added."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "bench_load.py"


def test_sixteen_readers_under_faults_and_branch_moves() -> None:
    seconds = os.environ.get("VCHUNKFS_LOAD_SECONDS", "15")
    r = subprocess.run([sys.executable, str(SCRIPT), "--readers", "16", "--seconds", seconds,
                        "--budget", "8M", "--data-mib", "32", "--slack", "0",
                        "--commit-every", "2", "--json"],
                       capture_output=True, text=True, timeout=200)
    assert r.stdout.strip(), r.stderr[-3000:]
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    print("\nload:", figures)
    assert figures["mismatches"] == 0, figures["first_mismatches"]
    assert figures["daemon_alive"] and figures["daemon_exit"] == 0
    assert figures["other_errors"] == 0
    assert figures["peak_minus_baseline_mib"] <= figures["budget_mib"]
    # the budget was pressed: more bytes read than it holds, most of them fetched
    assert figures["bytes_checked"] > 2 * figures["budget_mib"] * 2**20
    assert figures["cache_misses"] > 100
    assert figures["reads"] > 0 and figures["faults"] > 0 and figures["branch_moves"] > 0
    assert r.returncode == 0, r.stderr[-3000:]
