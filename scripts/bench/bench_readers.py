#!/usr/bin/env python3
"""Real readers of one variable for a month: through a vchunkfs mount against the netCDF files.

Issue 6's benchmark. One data set: 31 OISST-like netCDF4 files
(``scripts/make_oisst.py``: 720 x 1440 int16 ``sst``, zlib + shuffle, one chunk
per day), ingested with ``vchunkfs ingest`` and mounted with
``presentation=v2-decoded`` (Zarr v2 documents, chunks served decoded). The
contestants are two Debian command-line tools, each reading ``sst`` for the
whole month once from the original files ("direct") and once through the mount:

``gdal_translate``, per day (what a user does):
    direct: for each file ``gdal_translate -q -of ENVI --config GDAL_NETCDF_BOTTOMUP NO
    NETCDF:"FILE":sst OUT`` (31 invocations); mount: for each day T
    ``gdal_translate -q -of ENVI ZARR:"MNT":/sst:T:0 OUT`` (31 invocations).
    ``GDAL_NETCDF_BOTTOMUP=NO`` keeps the netCDF driver from flipping the rows
    (lat runs south to north in the files); the Zarr driver does not flip, and
    with it both sides write byte-identical rasters.
``gdal_translate``, one invocation per side:
    a VRT of 31 bands (``gdalbuildvrt -separate``, built once, untimed) over the
    31 NETCDF: subdatasets, or over the 31 ZARR: slices, translated to one
    31-band ENVI file.
``ncdump -v sst``:
    direct: ``ncdump -v sst FILE > /dev/null`` for each file (31 invocations);
    mount: ``ncdump -v sst 'file://MNT#mode=zarr,file' > /dev/null`` (one
    invocation for the whole month: the mount is one data set). The output is
    ~180 MB of text on both sides.

Outputs go to /dev/shm (tmpfs), so writing them costs no disk I/O. Before the
timed runs the outputs are checked once (untimed): the ENVI rasters must be
byte-identical and the ``sst`` values printed by ncdump equal.

States. "cold": for the mount a fresh mount (new daemon: empty block and
decoded-chunk caches), then ``sync; echo 3 > /proc/sys/vm/drop_caches`` for
both sides, then one untimed run of the tool that reads no data (``--version``)
so that its binaries and libraries are back in memory on both sides (the
daemon, started before the drop, keeps its mapped code: dropping the tool's
code and not the daemon's would charge only the direct side). "warm": the same
pass again right after the cold one (page cache and the daemon's caches warm).

Each run takes one cold and one warm sample of every contestant; the order of
the tools rotates and the two sides alternate from run to run, so that a slow
spell on the shared machine falls on both alike. Figures are medians of the
runs, with the best run and the spread ((max - min) / median).

Usage (root: drop_caches; take the machine's benchmark lock)::

    flock /tmp/vchunkfs-bench.lock python scripts/bench/bench_readers.py [--runs 5] [--out R.md]
    python scripts/bench/bench_readers.py --profile   # py-spy of the daemon, one cold pass each

The data lives in /tmp/vchunkfs-bench-readers (built once, reused). Every mount
made here is unmounted and its daemon (by pid) stopped before the script exits.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from xml.sax.saxutils import escape

from bench_mount import drop_and_settle, unmount  # same directory: the mount benchmark's helpers

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parent
DATA = Path("/tmp/vchunkfs-bench-readers")
NC_DIR = DATA / "nc"
REPO = DATA / "repo"
MNT = DATA / "mnt"
OUT = Path("/dev/shm/vchunkfs-bench-readers")
DAYS = 31
VAR = "sst"
PRESENTATION = "v2-decoded"
TARGET = 1.5  # the mount within 1.5x of the same tool on the netCDF files
GDAL_DIRECT = ["--config", "GDAL_NETCDF_BOTTOMUP", "NO"]


# -- the data set -------------------------------------------------------------------


def nc_files() -> list[Path]:
    return sorted(NC_DIR.glob("oisst-avhrr-v02r01.*.nc"))[:DAYS]


def build() -> None:
    """The netCDF files and the repository, with the vchunkfs CLI; reused when present."""
    if (DATA / "READY").exists():
        return
    print(f"building the data set in {DATA} ...", flush=True)
    env = {**os.environ, "ICECHUNK_LOG": "error"}
    subprocess.run([sys.executable, str(SCRIPTS / "make_oisst.py"), str(NC_DIR), "--days",
                    str(DAYS)], check=True, stdout=subprocess.DEVNULL, env=env)
    if len(nc_files()) != DAYS:
        raise RuntimeError(f"expected {DAYS} netCDF files in {NC_DIR}")
    cli = [sys.executable, "-m", "vchunkfs.cli.main"]
    subprocess.run([*cli, "init", str(REPO)], check=True, env=env)
    subprocess.run([*cli, "ingest", str(REPO), f"{NC_DIR}/*.nc", "--concat-dim", "time",
                    "--container", f"file://{NC_DIR}/"], check=True, env=env)
    (DATA / "READY").touch()


# -- system -------------------------------------------------------------------------


class Mount:
    """``python -m vchunkfs.cli.mount REPO MNT -o presentation=v2-decoded,...,foreground``.

    Foreground, so that the daemon's pid is ours (to stop it, and for py-spy);
    ready once MNT is a mount that answers a stat.
    """

    def __init__(self, *options: str) -> None:
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        MNT.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(MNT):
            raise RuntimeError(f"{MNT} is already mounted")
        opts = ",".join((f"presentation={PRESENTATION}", f"authorize=file://{NC_DIR}/",
                         "foreground", *self.options))
        with open(DATA / "mount.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vchunkfs.cli.mount", str(REPO), str(MNT), "-o", opts],
                stdout=log, stderr=log, env={**os.environ, "ICECHUNK_LOG": "error"})
        deadline = time.monotonic() + 60
        while not os.path.ismount(MNT):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}; "
                                   f"see {DATA / 'mount.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{MNT} not mounted after 60 s")
            time.sleep(0.02)
        os.stat(MNT)

    def stop(self) -> None:
        unmount(MNT)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
                unmount(MNT)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


# -- contestants ----------------------------------------------------------------------


@dataclass
class Contestant:
    """One tool reading ``sst`` for the month, from one side: a list of commands in turn."""

    tool: str  # the row of the table
    side: str  # "direct" or "mount"
    commands: list[list[str]]
    warm_up: list[str]  # reads no data: brings the tool's code back after a drop
    samples: dict[str, list[float]] = field(default_factory=lambda: {"cold": [], "warm": []})
    # CPU seconds of the tool's processes, and of the daemon, per sample
    tool_cpu: dict[str, list[float]] = field(default_factory=lambda: {"cold": [], "warm": []})
    daemon_cpu: dict[str, list[float]] = field(default_factory=lambda: {"cold": [], "warm": []})

    def run(self, state: str | None = None, daemon: int | None = None) -> float:
        """Runs the commands one after the other; returns the wall time. With ``state``,
        also records the sample and the CPU time the tool and the daemon used."""
        c0, d0 = _children_cpu(), _process_cpu(daemon)
        t0 = time.perf_counter()
        for cmd in self.commands:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - t0
        if state is not None:
            self.samples[state].append(seconds)
            self.tool_cpu[state].append(_children_cpu() - c0)
            self.daemon_cpu[state].append(_process_cpu(daemon) - d0)
        return seconds


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads so far); 0 without one."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gdal_slice(t: int) -> str:
    return f'ZARR:"{MNT}":/{VAR}:{t}:0'


def gdal_file(f: Path) -> str:
    return f'NETCDF:"{f}":{VAR}'


def ncdump_url() -> str:
    return f"file://{MNT}#mode=zarr,file"


def contestants() -> list[tuple[Contestant, Contestant]]:
    """(direct, mount) pairs, one per table row."""
    files = nc_files()
    d, m = OUT / "direct", OUT / "mount"
    version = ["gdal_translate", "--version"]
    gt = ["gdal_translate", "-q", "-of", "ENVI"]
    rows = [
        (Contestant("gdal_translate, per day (31 + 31 runs)", "direct",
                    [[*gt, *GDAL_DIRECT, gdal_file(f), str(d / "day.envi")] for f in files],
                    version),
         Contestant("gdal_translate, per day (31 + 31 runs)", "mount",
                    [[*gt, gdal_slice(t), str(m / "day.envi")] for t in range(len(files))],
                    version)),
        (Contestant("gdal_translate, 31-band VRT (1 + 1 run)", "direct",
                    [[*gt, *GDAL_DIRECT, str(OUT / "direct.vrt"), str(d / "month.envi")]],
                    version),
         Contestant("gdal_translate, 31-band VRT (1 + 1 run)", "mount",
                    [[*gt, str(OUT / "mount.vrt"), str(m / "month.envi")]], version)),
        (Contestant("ncdump -v sst (31 runs + 1 run)", "direct",
                    [["ncdump", "-v", VAR, str(f)] for f in files], ["ncdump"]),
         Contestant("ncdump -v sst (31 runs + 1 run)", "mount",
                    [["ncdump", "-v", VAR, ncdump_url()]], ["ncdump"])),
        (Contestant("ncdump -h, headers only (31 runs + 1 run)", "direct",
                    [["ncdump", "-h", str(f)] for f in files], ["ncdump"]),
         Contestant("ncdump -h, headers only (31 runs + 1 run)", "mount",
                    [["ncdump", "-h", ncdump_url()]], ["ncdump"])),
    ]
    return rows


def build_vrts() -> None:
    """The two 31-band VRTs, written out (``gdalbuildvrt`` refuses the Zarr slices, whose
    geotransform has a positive north-south pixel size). No georeferencing, no nodata:
    each band a SimpleSource (a plain copy) of one day."""
    files = nc_files()
    write_vrt(OUT / "direct.vrt", [gdal_file(f) for f in files])
    write_vrt(OUT / "mount.vrt", [gdal_slice(t) for t in range(len(files))])


def write_vrt(path: Path, sources: Sequence[str], width: int = 1440, height: int = 720) -> None:
    bands = "".join(
        f'''  <VRTRasterBand dataType="Int16" band="{i + 1}">
    <SimpleSource>
      <SourceFilename relativeToVRT="0">{escape(src)}</SourceFilename>
      <SourceBand>1</SourceBand>
      <SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>
      <DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>
    </SimpleSource>
  </VRTRasterBand>
''' for i, src in enumerate(sources))
    path.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n{bands}'
                    "</VRTDataset>\n")


# -- verification (untimed) -----------------------------------------------------------


def verify() -> list[str]:
    """The two sides' outputs agree; returns what was checked."""
    files = nc_files()
    gt = ["gdal_translate", "-q", "-of", "ENVI"]
    for t, f in enumerate(files):
        subprocess.run([*gt, *GDAL_DIRECT, gdal_file(f), str(OUT / "direct" / f"v{t}.envi")],
                       check=True)
        subprocess.run([*gt, gdal_slice(t), str(OUT / "mount" / f"v{t}.envi")], check=True)
        a = (OUT / "direct" / f"v{t}.envi").read_bytes()
        b = (OUT / "mount" / f"v{t}.envi").read_bytes()
        if a != b:
            raise AssertionError(f"gdal_translate day {t}: the rasters differ")
    done = [f"gdal_translate per day: the 31 ENVI rasters ({len(a)} bytes each) are "
            "byte-identical between direct and mount"]
    for side in ("direct", "mount"):
        subprocess.run([*gt, *(GDAL_DIRECT if side == "direct" else []),
                        str(OUT / f"{side}.vrt"), str(OUT / side / "vmonth.envi")], check=True)
    a = (OUT / "direct" / "vmonth.envi").read_bytes()
    if a != (OUT / "mount" / "vmonth.envi").read_bytes():
        raise AssertionError("gdal_translate VRT: the 31-band rasters differ")
    if a != b"".join((OUT / "direct" / f"v{t}.envi").read_bytes() for t in range(len(files))):
        raise AssertionError("gdal_translate VRT: not the 31 days one after the other")
    done.append(f"gdal_translate VRT: the 31-band ENVI rasters ({len(a)} bytes) are "
                "byte-identical, and equal to the 31 days' rasters in a row")
    direct = hashlib.sha256()
    values = 0
    for i, f in enumerate(files):
        text = subprocess.run(["ncdump", "-v", VAR, str(f)], check=True,
                              capture_output=True).stdout
        data = _ncdump_values(text)
        values += data.count(b",") + 1
        direct.update((b"," if i else b"") + data)
    text = subprocess.run(["ncdump", "-v", VAR, ncdump_url()], check=True,
                          capture_output=True).stdout
    mount_values = _ncdump_values(text)
    if hashlib.sha256(mount_values).digest() != direct.digest():
        raise AssertionError("ncdump: the sst values differ")
    done.append(f"ncdump -v sst: the {values} values printed (whitespace removed, the 31 files' "
                "in a row) are identical to the mount's; headers differ as expected (the "
                "mount is one 31-day data set with all variables)")
    return done


def _ncdump_values(text: bytes) -> bytes:
    """The values of ``sst = ... ;`` in ncdump's data section, without whitespace."""
    data = text[text.index(b"\ndata:\n"):]
    m = re.search(rb"\n " + VAR.encode() + rb" =\s*(.*?)\s*;", data, re.S)
    if m is None:
        raise AssertionError("ncdump printed no sst data")
    return re.sub(rb"\s+", b"", m.group(1))


# -- the runs -----------------------------------------------------------------------


def sample(c: Contestant, mount: Mount) -> None:
    """One cold then one warm pass of ``c``."""
    if c.side == "mount":
        mount.restart()
    drop_and_settle()
    subprocess.run(c.warm_up, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = mount.pid if c.side == "mount" else None
    c.run("cold", daemon)
    c.run("warm", daemon)


def timed_runs(rows: list[tuple[Contestant, Contestant]], mount: Mount, runs: int) -> None:
    for r in range(runs):
        order = rows[r % len(rows):] + rows[:r % len(rows)]
        for direct, mnt in order:
            for c in ((direct, mnt) if r % 2 == 0 else (mnt, direct)):
                sample(c, mount)
                print(f"  run {r + 1}: {c.tool:<42} {c.side:<6}  cold {c.samples['cold'][-1]:6.2f}"
                      f" s  warm {c.samples['warm'][-1]:6.2f} s", flush=True)


def profile(rows: list[tuple[Contestant, Contestant]], mount: Mount) -> list[str]:
    """One cold pass of every mount contestant with py-spy recording the daemon.

    Writes DATA/profile-N.txt (collapsed stacks, ``--idle`` off) and returns a summary
    (the functions with the most samples, self and total)."""
    out = []
    for i, (_direct, c) in enumerate(rows):
        mount.restart()
        drop_and_settle()
        subprocess.run(c.warm_up, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path = DATA / f"profile-{i}.txt"
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                                str(mount.pid), "-r", "250", "-f", "raw", "-o", str(path),
                                "--threads", "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        seconds = c.run()
        time.sleep(0.3)
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
        out.append(f"### {c.tool}, mount, cold: {seconds:.2f} s; stacks in {path}")
        out += summarize_profile(path)
    return out


def summarize_profile(path: Path, top: int = 15) -> list[str]:
    total: dict[str, int] = {}
    self_: dict[str, int] = {}
    threads: dict[str, int] = {}
    n = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = stack.split(";")
        n += k
        threads[frames[0]] = threads.get(frames[0], 0) + k
        for f in set(frames[1:]):
            total[f] = total.get(f, 0) + k
        self_[frames[-1]] = self_.get(frames[-1], 0) + k
    lines = [f"{n} samples at 250/s (all threads, idle excluded)", "",
             "| thread | samples |", "|---|---:|"]
    lines += [f"| {t} | {k} |" for t, k in sorted(threads.items(), key=lambda x: -x[1])[:6]]
    lines += ["", "| function (self) | samples | share |", "|---|---:|---:|"]
    lines += [f"| `{f}` | {k} | {k / n:.0%} |"
              for f, k in sorted(self_.items(), key=lambda x: -x[1])[:top]]
    lines += ["", "| function (total) | samples | share |", "|---|---:|---:|"]
    lines += [f"| `{f}` | {k} | {k / n:.0%} |"
              for f, k in sorted(total.items(), key=lambda x: -x[1])[:top]]
    return [*lines, ""]


# -- the report -----------------------------------------------------------------------


def _med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _spread(xs: Sequence[float]) -> float:
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else 0.0


def _read_ahead(mountpoint: Path) -> str:
    st = os.stat(mountpoint)
    try:
        return Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/"
                    "read_ahead_kb").read_text().strip()
    except OSError:
        return "?"


def report(rows: list[tuple[Contestant, Contestant]], runs: int, checks: list[str],
           extra: list[str], options: Sequence[str], read_ahead: str) -> str:
    lines = [f"# bench_readers.py: {DAYS} days of `{VAR}`, {runs} runs",
             "", f"- {platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
             f"Python {platform.python_version()}",
             f"- {_version(['gdal_translate', '--version'])}; "
             f"{_version(['ncdump'], stderr=True)}",
             f"- mount: -o presentation={PRESENTATION},{','.join(options) or ''} (defaults "
             f"otherwise); bdi read_ahead_kb {read_ahead}; "
             f"load average at the end: {os.getloadavg()[0]:.2f}", "",
             "Checked once before timing:", "", *[f"- {c}" for c in checks], "",
             "| reader | state | direct s | mount s | mount / direct | target <= "
             f"{TARGET}x | best direct | best mount | spread direct | spread mount |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for direct, mnt in rows:
        for state in ("cold", "warm"):
            ds, ms = direct.samples[state], mnt.samples[state]
            if not ds or not ms:
                continue
            ratio = _med(ms) / _med(ds)
            lines.append(f"| {direct.tool} | {state} | {_med(ds):.2f} | {_med(ms):.2f} | "
                         f"{ratio:.2f}x | {'met' if ratio <= TARGET else '**missed**'} | "
                         f"{min(ds):.2f} | {min(ms):.2f} | {_spread(ds):.0%} | "
                         f"{_spread(ms):.0%} |")
    lines += ["", "CPU seconds per pass (medians): the tool's processes, and the daemon's.", "",
              "| reader | state | tool CPU direct | tool CPU mount | daemon CPU | "
              "wall direct | wall mount |", "|---|---|---:|---:|---:|---:|---:|"]
    for direct, mnt in rows:
        for state in ("cold", "warm"):
            if not direct.samples[state]:
                continue
            lines.append(f"| {direct.tool} | {state} | {_med(direct.tool_cpu[state]):.2f} | "
                         f"{_med(mnt.tool_cpu[state]):.2f} | {_med(mnt.daemon_cpu[state]):.2f} | "
                         f"{_med(direct.samples[state]):.2f} | {_med(mnt.samples[state]):.2f} |")
    lines += ["", "Samples (s):", ""]
    for direct, mnt in rows:
        for c in (direct, mnt):
            for state in ("cold", "warm"):
                lines.append(f"- {c.tool}, {c.side}, {state}: "
                             + ", ".join(f"{s:.2f}" for s in c.samples[state]))
    return "\n".join([*lines, "", *extra])


def _version(cmd: list[str], stderr: bool = False) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    text = p.stderr if stderr else p.stdout
    for line in text.splitlines():
        if "GDAL" in line or "netcdf library version" in line.lower():
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else "?"


# -- main -----------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def mounted(options: Sequence[str]) -> Iterator[Mount]:
    mount = Mount(*options)
    try:
        mount.start()
        yield mount
    finally:
        mount.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs (medians)")
    p.add_argument("--profile", action="store_true",
                   help="also record the daemon with py-spy during one cold pass of each tool")
    p.add_argument("--only", choices=("gdal", "vrt", "ncdump", "header"), action="append",
                   help="only these rows (repeatable)")
    p.add_argument("--mount-options", default="",
                   help="more -o options for the mount, e.g. read_ahead_kb=0,cache_size=64M")
    p.add_argument("--no-verify", action="store_true", help="skip the output check")
    p.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_readers.py: run as root (drop_caches)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    build()
    for side in ("direct", "mount"):
        (OUT / side).mkdir(parents=True, exist_ok=True)
    options = [o for o in args.mount_options.split(",") if o]
    with mounted(options) as mount:
        build_vrts()
        rows = contestants()
        if args.only:
            keys = {"gdal": 0, "vrt": 1, "ncdump": 2, "header": 3}
            rows = [rows[keys[k]] for k in dict.fromkeys(args.only)]
        checks = [] if args.no_verify else verify()
        for c in checks:
            print(f"  ok: {c}", flush=True)
        if args.runs:
            timed_runs(rows, mount, args.runs)
        extra = profile(rows, mount) if args.profile else []
        read_ahead = _read_ahead(MNT)
    text = report(rows, args.runs, checks, extra, options, read_ahead)
    print()
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        samples = {f"{c.tool} / {c.side}": {"wall": c.samples, "tool_cpu": c.tool_cpu,
                                            "daemon_cpu": c.daemon_cpu}
                   for row in rows for c in row}
        args.out.with_suffix(".json").write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
