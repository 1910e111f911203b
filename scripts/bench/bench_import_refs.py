"""`vchunkfs ctl import-refs` of an N-row CSV through a mount, timed (issue 11).

Makes a fresh local repository with one array of N chunks (1000 per row of the
grid), a CSV of N refs (key, location, offset, length) into one local file, mounts
it, and times ``vchunkfs ctl MOUNT import-refs refs.csv`` (the process, start to
exit) and the commit that follows. Compare with scripts/bench/bench_control.py
(the Python client's columnar bulk path).

Usage: python scripts/bench/bench_import_refs.py [--refs 1000000] [--runs 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--refs", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    n = args.refs
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vchunkfs-bench-import-"))
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "data.bin").write_bytes(b"\1" * 4096)
    location = (src / "data.bin").as_uri()
    table = work / "refs.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "location", "offset", "length"])
        w.writerows([f"big/c/{i // 1000}/{i % 1000}", location, i % 4093, 1] for i in range(n))
    meta = work / "meta.json"
    meta.write_text(json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": [-(-n // 1000), 1000],
        "data_type": "uint8", "chunk_grid": {"name": "regular",
                                             "configuration": {"chunk_shape": [1, 1]}},
        "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
        "codecs": [{"name": "bytes"}], "attributes": {}}))
    env = {**os.environ, "ICECHUNK_LOG": "error"}
    vchunkfs = [sys.executable, "-m", "vchunkfs.cli.main"]
    for run in range(args.runs):
        repo, mp = work / f"repo{run}", work / "mnt"
        shutil.rmtree(repo, ignore_errors=True)
        mp.mkdir(exist_ok=True)
        subprocess.run([*vchunkfs, "init", str(repo), "--container", src.as_uri() + "/"],
                       check=True, env=env, capture_output=True)
        subprocess.run([sys.executable, "-m", "vchunkfs.cli.mount", str(repo), str(mp), "-o",
                        f"authorize={src.as_uri()}/,control_socket={work / 'ctl.sock'}"],
                       check=True, env=env)
        try:
            subprocess.run([*vchunkfs, "ctl", str(mp), "set-meta", "big", str(meta)],
                           check=True, env=env, capture_output=True)
            t0 = time.perf_counter()
            subprocess.run([*vchunkfs, "ctl", str(mp), "import-refs", str(table)], check=True,
                           env=env, capture_output=True)
            t1 = time.perf_counter()
            subprocess.run([*vchunkfs, "ctl", str(mp), "commit", "-m", "refs"], check=True,
                           env=env, capture_output=True)
            t2 = time.perf_counter()
            print(f"run {run}: {n:,} refs: import-refs {t1 - t0:.2f} s "
                  f"({n / (t1 - t0):,.0f} refs/s), commit {t2 - t1:.2f} s", flush=True)
        finally:
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
