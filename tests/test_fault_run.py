"""A real mount on moto behind a fault-injecting proxy (tests/servers.py FaultProxy):
random chunk reads, byte ranges and listings, a writer moving the branch with icechunk
(straight to moto) and control-socket writes through the daemon, while the proxy drops,
delays, stalls and resets the daemon's requests. The figures are printed and recorded in
docs/reliability.md:

* the daemon is alive throughout and exits 0 on unmount;
* wrong bytes 0: every byte read is checked against the source files, read directly;
* acknowledged control writes lost 0: every staged ref acknowledged before a
  successful commit is in that commit (a commit whose reply the proxy cut after the
  branch moved is a success, and is checked like any);
* requests that waited past the deadline 0: a read within 3 x timeout + slack (its
  lookup, its read and, after a failed read-ahead, the kernel's one retry, see
  test_deadlines.py), a listing too.

* at least 1,000 faults injected: the mount's cache is small (64K) and every read
  drops the kernel's copy of the file, so reads reach the backend; reads of the
  sources are faulted more often, and more with the quick kinds (drop, reset).

``VCHUNKFS_FAULT_RUN_SECONDS`` sets how long the faults run (default 50; on a loaded
machine longer, up to twice that, until 1,000 faults were injected),
``VCHUNKFS_FAULT_RUN_CACHE`` the mount's ``cache_size`` (default 64K).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import threading
import time
from pathlib import Path

import icechunk as ic
import pytest
import zarr
from datasets import Ref, build_s3_repo
from mounting import mounted
from servers import (
    PASS,
    Fault,
    fault_proxy,
    moto_s3_server,
    moves_a_branch,
    phased,
    random_schedule,
)

from vchunkfs.control import Client
from vchunkfs.control.client import ControlError

pytestmark = pytest.mark.timeout(240)

TIMEOUT = 2.0
# seconds a read (open, pread, close) may take, at most: its LOOKUP (the branch is
# followed), the READ and the kernel's one retry of a failed read each within the
# daemon's deadline, plus slack for a loaded machine. 2 x TIMEOUT + 3 was too tight:
# under the full suite a read took 7.03 s with no request past its deadline.
BOUND = 3 * TIMEOUT + 3
# A listing is several FUSE requests that may each need the backend (a LOOKUP of the
# directory when it follows the repository, READDIRPLUS, attributes of each branch's
# snapshot): each is bounded by the daemon (it logs "ran ... past its deadline" if not,
# counted below), the whole listing is only reported.
SECONDS = float(os.environ.get("VCHUNKFS_FAULT_RUN_SECONDS", "50"))
MIN_FAULTS = 1000  # the run goes on past SECONDS (up to twice) until this many
READERS = 16
# small enough that most reads miss the block cache and go to the backend (the chunk
# files of the test repository are 0.5-5 kB, about 100 kB in all)
CACHE_SIZE = os.environ.get("VCHUNKFS_FAULT_RUN_CACHE", "64K")
WEIGHTS = {"pass": 0.15, "delay": 0.55, "drop": 0.12, "reset": 0.13, "stall": 0.05}
# reads of the sources (GETs of s3://archive/nc/...): more faults, and more of the quick
# kinds, so that icechunk retries (each retry drawing again) within the deadline
READ_WEIGHTS = {"pass": 0.1, "delay": 0.35, "drop": 0.25, "reset": 0.27, "stall": 0.03}
FAULT = Fault("delay")  # a marker: "in a fault phase"


@dataclasses.dataclass
class Tally:
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    ops: int = 0
    ok: int = 0
    eio: int = 0
    other_errors: list[str] = dataclasses.field(default_factory=list)
    wrong: list[str] = dataclasses.field(default_factory=list)
    late: list[str] = dataclasses.field(default_factory=list)
    bytes_checked: int = 0
    longest: float = 0.0
    longest_list: float = 0.0

    def done(self, what: str, took: float, err: int | None) -> None:
        listing = what.startswith("listdir")
        with self.lock:
            self.ops += 1
            if listing:
                self.longest_list = max(self.longest_list, took)
            else:
                self.longest = max(self.longest, took)
            if not listing and took > BOUND:
                self.late.append(f"{what}: {took:.1f} s")
            if err is None:
                self.ok += 1
            elif err == errno.EIO:
                self.eio += 1
            else:
                self.other_errors.append(f"{what}: {errno.errorcode.get(err, err)}")


def source_bytes(local: dict[str, Path], ref: Ref, off: int = 0, n: int | None = None) -> bytes:
    with open(local[ref.location.rsplit("/", 1)[1]], "rb") as f:
        n = ref.length - off if n is None else max(0, min(n, ref.length - off))
        return os.pread(f.fileno(), n, ref.offset + off)


def read_all(fd: int) -> bytes:
    parts = []
    while part := os.read(fd, 1 << 20):
        parts.append(part)
    return b"".join(parts)


def reader(seed: int, root: Path, files: list[tuple[Path, Ref]], dirs: list[Path],
           local: dict[str, Path], tally: Tally, stop: threading.Event) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        kind = rng.choice(("whole", "range", "range", "list"))
        start = time.monotonic()
        err: int | None = None
        what = kind
        try:
            if kind == "list":
                d = rng.choice(dirs)
                what = f"listdir {d}"
                os.listdir(d)
            else:
                path, ref = rng.choice(files)
                what = f"{kind} {path}"
                fd = os.open(path, os.O_RDONLY)
                try:
                    if kind == "whole":
                        got, want = read_all(fd), source_bytes(local, ref)
                    else:
                        off, n = rng.randrange(ref.length), rng.randrange(1, ref.length + 1)
                        got = os.pread(fd, n, off)
                        want = source_bytes(local, ref, off, n)
                        what += f" [{off}:{off + n}]"
                    # drop the kernel's copy: the next read of the file reaches the daemon
                    # (and, with the small cache_size, the backend through the proxy)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
                with tally.lock:
                    tally.bytes_checked += len(got)
                    if got != want:
                        tally.wrong.append(what)
        except OSError as e:
            err = e.errno or -1
        tally.done(what, time.monotonic() - start, err)


def writer(storage: ic.Storage, stop: threading.Event, commits: list[str]) -> None:
    """Moves main every ~0.5 s with icechunk, straight to moto: root attributes only,
    so the chunk bytes the readers check stay the same."""
    repo = ic.Repository.open(storage)
    i = 0
    while not stop.is_set():
        s = repo.writable_session("main")
        zarr.open_group(s.store, mode="r+").attrs["tick"] = i
        commits.append(s.commit(f"tick {i}"))
        i += 1
        stop.wait(0.5)


def controller(sock: Path, pairs: list[tuple[Ref, Ref]], stop: threading.Event,
               landed: list[tuple[str, dict[str, Ref]]], tally: dict[str, int],
               errors: list[str]) -> None:
    """Stages refs on dev through the daemon and commits them; ``landed`` gets, per
    successful commit, every acknowledged ref it must hold."""
    rng = random.Random(7)
    expected: dict[str, Ref] = {}
    with Client(str(sock), timeout=60) as c:
        n = 0
        while not stop.is_set():
            for _ in range(4):
                old, new = rng.choice(pairs)
                ref = rng.choice((old, new))
                try:
                    c.set_virtual_ref(ref.key, ref.location, ref.offset, ref.length,
                                      branch="dev")
                    expected[ref.key] = ref
                    tally["acked"] += 1
                except ControlError as e:
                    expected.pop(ref.key, None)  # applied or not: unknown
                    errors.append(f"stage: {e}")
                    tally["failed"] += 1
            try:
                snap = c.commit(f"ctl {n}", branch="dev")
                landed.append((snap, dict(expected)))
                tally["commits"] += 1
            except ControlError as e:
                errors.append(f"commit: {e}")
                if e.code == "commit_unknown":
                    # landed or not, nobody could tell: its refs are checked nowhere, and
                    # the next commit must not claim them (discard, or they stay staged)
                    tally["commit_unknown"] += 1
                    expected.clear()
                    try:
                        c.discard(branch="dev")
                    except ControlError as e2:
                        errors.append(f"discard: {e2}")
                else:
                    tally["commit_failed"] += 1
                if e.code == "conflict":  # an earlier commit landed though its reply was
                    # lost (the proxy cut it): the session is stale; drop it, as told
                    try:
                        c.discard(branch="dev")
                        expected.clear()
                        tally["discarded"] += 1
                    except ControlError as e2:
                        errors.append(f"discard: {e2}")
            n += 1


def test_faults_on_moto_through_a_real_mount(tmp_path: Path) -> None:
    with moto_s3_server() as s3, fault_proxy((s3.host, s3.port)) as proxy:
        via = dataclasses.replace(s3, endpoint_url=proxy.url, port=proxy.port)
        built, env = build_s3_repo(via, tmp_path / "src")  # containers name the proxy
        local = {p.name: p for p in built.sources}
        direct = ic.s3_storage(bucket="repos", prefix="r", region=s3.region,
                               endpoint_url=s3.endpoint_url, allow_http=True,
                               force_path_style=True, access_key_id=s3.access_key_id,
                               secret_access_key=s3.secret_access_key)
        sock = tmp_path / "ctl.sock"
        with mounted("s3://repos/r", tmp_path / "m", f"endpoint_url={proxy.url}",
                     "authorize=s3://archive/nc/=env", f"timeout={TIMEOUT:g}",
                     "poll_interval=0.5", f"cache_size={CACHE_SIZE}", f"control_socket={sock}",
                     env=env) as m:
            v1 = m.path / ".vchunkfs" / "tags" / "v1"
            files = ([(m.path / r.key, r) for r in built.refs["day1"]]
                     + [(v1 / r.key, r) for r in built.refs["v1"]])
            dirs = [m.path, m.path / "sst", m.path / "sst" / "c" / "0" / "0" / "0",
                    m.path / "field" / "c", m.path / ".vchunkfs" / "branches",
                    v1 / "sst" / "c" / "1" / "0" / "0"]
            for path, ref in files:  # warm: every file resolvable before the faults
                assert path.read_bytes() == source_bytes(local, ref), path
            day1 = {r.key: r for r in built.refs["day1"]}
            pairs = [(r, day1[r.key]) for r in built.refs["v1"] if r.key.startswith("sst/")]

            tally = Tally()
            ctl = {"acked": 0, "failed": 0, "commits": 0, "commit_failed": 0, "discarded": 0,
                   "commit_unknown": 0}
            landed: list[tuple[str, dict[str, Ref]]] = []
            ctl_errors: list[str] = []
            commits: list[str] = []
            stop = threading.Event()
            # faults for 4 s, then 1 s without: a commit needs several calls in a row to land
            faulting = phased(lambda: FAULT, on=4, off=1)
            draw = random_schedule(WEIGHTS, seed=11, delay=0.3, stall=2 * TIMEOUT)
            draw_read = random_schedule(READ_WEIGHTS, seed=13, delay=0.2, stall=2 * TIMEOUT)
            proxy.schedule = lambda: draw() if faulting() is FAULT else PASS

            def by_request(line: str) -> Fault | None:
                if " /archive/" not in line:
                    return None  # the repository's requests: ``proxy.schedule``
                return draw_read() if faulting() is FAULT else PASS

            proxy.request_schedule = by_request
            threads = [threading.Thread(target=reader, args=(i, m.path, files, dirs, local,
                                                             tally, stop))
                       for i in range(READERS)]
            threads.append(threading.Thread(target=writer, args=(direct, stop, commits)))
            threads.append(threading.Thread(target=controller,
                                            args=(sock, pairs, stop, landed, ctl,
                                                  ctl_errors)))
            started = time.monotonic()
            for t in threads:
                t.start()
            stop.wait(SECONDS)
            # a loaded machine serves fewer requests in the same time: run on (up to
            # SECONDS more) until the run has injected the faults it promises
            while proxy.faults < MIN_FAULTS and time.monotonic() - started < 2 * SECONDS:
                time.sleep(0.5)
            stop.set()
            proxy.schedule = lambda: PASS  # calls under way finish sooner
            proxy.request_schedule = None
            for t in threads:
                t.join(timeout=120)
            ran = time.monotonic() - started
            proxy.schedule = lambda: PASS
            counts = dict(proxy.counts)
            faults = proxy.faults
            assert m.proc.poll() is None, m.log_text()[-3000:]

            # every acknowledged ref is in the commit that followed it
            lost = []
            for snap, want in landed:
                snapdir = m.path / ".vchunkfs" / "snapshots" / snap
                for key, ref in want.items():
                    for _ in range(20):
                        try:
                            got = (snapdir / key).read_bytes()
                            break
                        except OSError:
                            time.sleep(0.25)
                    else:
                        raise AssertionError(f"{snapdir / key} unreadable with faults off")
                    if got != source_bytes(local, ref):
                        lost.append(f"{snap} {key}")
            moved = len(commits)
        code = m.proc.returncode
    past = m.log_text().count("past its deadline")
    # control commits that landed although icechunk raised (their reply lost): counted
    # as landed above (the client got their snapshot), their refs checked like any
    lost_replies = m.log_text().count("landed although the commit call failed")
    print(f"\nfault run: {ran:.0f} s, {faults} faults injected {counts}; "
          f"{tally.ops} reads and listings ({tally.ok} ok, {tally.eio} EIO), "
          f"{tally.bytes_checked} bytes checked, {len(tally.wrong)} wrong; "
          f"longest read {tally.longest:.1f} s (bound {BOUND:g} s), {len(tally.late)} late; "
          f"longest listing {tally.longest_list:.1f} s; "
          f"FUSE requests past their deadline {past}; "
          f"branch moved {moved} times; control: {ctl['acked']} refs acknowledged, "
          f"{ctl['failed']} refused, {ctl['commits']} commits ({ctl['commit_failed']} failed, "
          f"{ctl['discarded']} discards after a conflict, {lost_replies} landed with their "
          f"reply lost, {ctl['commit_unknown']} outcome unknown), "
          f"{len(lost)} acknowledged refs lost; daemon exit {code}")
    print("control errors:", sorted({e[:120] for e in ctl_errors})[:8])
    assert code == 0
    assert faults >= MIN_FAULTS, f"only {faults} faults injected"
    assert not tally.wrong, tally.wrong[:10]
    assert not lost, lost[:10]
    assert not tally.late, tally.late[:10]
    assert past == 0
    assert not tally.other_errors, tally.other_errors[:10]
    assert moved > 0 and ctl["commits"] > 0 and tally.ok > 0
    assert "Traceback" not in m.log_text(), m.log_text()[-3000:]


def test_a_control_commit_whose_reply_is_lost(tmp_path: Path) -> None:
    """Through a real mount: the conditional PUT that moves ``dev`` reaches moto and its
    reply is cut, and icechunk's retries never arrive, so icechunk raises although the
    branch moved. The control client gets success with the snapshot that is now the
    head, holding the staged ref; the next stage + commit works. A branch update that
    never reaches moto is an error, the head unchanged and the changes still staged."""
    with moto_s3_server() as s3, fault_proxy((s3.host, s3.port)) as proxy:
        via = dataclasses.replace(s3, endpoint_url=proxy.url, port=proxy.port)
        built, env = build_s3_repo(via, tmp_path / "src")
        local = {p.name: p for p in built.sources}
        direct = ic.s3_storage(bucket="repos", prefix="r", region=s3.region,
                               endpoint_url=s3.endpoint_url, allow_http=True,
                               force_path_style=True, access_key_id=s3.access_key_id,
                               secret_access_key=s3.secret_access_key)

        def dev_history() -> list[tuple[str, dict[str, object]]]:
            return [(i.id, i.metadata)
                    for i in ic.Repository.open(direct).ancestry(branch="dev")]

        updates: list[str] = []

        def lose(first: str) -> None:
            """Branch updates: the first ``first`` (reset: reaches moto, reply cut;
            drop: never reaches it), icechunk's retries dropped."""
            updates.clear()

            def schedule(line: str) -> Fault | None:
                if not moves_a_branch(line):
                    return None
                updates.append(line)
                return Fault(first if len(updates) == 1 else "drop", cut=0)

            proxy.request_schedule = schedule

        day1 = {r.key: r for r in built.refs["day1"]}
        pairs = [(r, day1[r.key]) for r in built.refs["v1"] if r.key.startswith("sst/")]
        sock = tmp_path / "ctl.sock"
        with mounted("s3://repos/r", tmp_path / "m", f"endpoint_url={proxy.url}",
                     "authorize=s3://archive/nc/=env", f"timeout={TIMEOUT:g}",
                     f"control_socket={sock}", env=env) as m, \
                Client(str(sock), timeout=120) as c:

            def check(snap: str, ref: Ref) -> None:
                got = (m.path / ".vchunkfs" / "snapshots" / snap / ref.key).read_bytes()
                assert got == source_bytes(local, ref), (snap, ref.key)

            # 1. the reply is lost: success, with the snapshot that landed
            _, ref = pairs[0]
            c.set_virtual_ref(ref.key, ref.location, ref.offset, ref.length, branch="dev")
            lose("reset")
            snap = c.commit("lost reply", branch="dev")
            proxy.request_schedule = None
            assert len(updates) > 1  # icechunk retried, and gave up
            (head, meta), *_ = dev_history()
            assert snap == head and "vchunkfs:commit_token" in meta
            check(snap, ref)
            assert "landed although the commit call failed" in m.log_text()
            # the writer moved on: nothing staged, the next commit builds on it
            assert c.call("changes", branch="dev")["changed"] is False
            _, ref2 = pairs[1]
            c.set_virtual_ref(ref2.key, ref2.location, ref2.offset, ref2.length, branch="dev")
            snap2 = c.commit("after the lost reply", branch="dev")
            assert [i for i, _ in dev_history()[:2]] == [snap2, snap]
            check(snap2, ref)
            check(snap2, ref2)

            # 2. the update never reaches moto: an error, and the head stays
            old, _ = pairs[2]
            c.set_virtual_ref(old.key, old.location, old.offset, old.length, branch="dev")
            before = dev_history()
            lose("drop")
            with pytest.raises(ControlError) as failed:
                c.commit("never lands", branch="dev")
            proxy.request_schedule = None
            assert failed.value.code == "backend", failed.value
            assert dev_history() == before
            assert c.call("changes", branch="dev")["changed"] is True
            snap3 = c.commit("lands", branch="dev")
            assert dev_history()[0][0] == snap3 and dev_history()[1:] == before
            check(snap3, old)
        assert m.proc.returncode == 0
    assert "Traceback" not in m.log_text(), m.log_text()[-3000:]
