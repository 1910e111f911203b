"""Deadlines: a backend that stops answering gives EIO within the mount's timeout, the
log names the call, the daemon keeps serving, and reads recover when it answers again."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

import pytest
from datasets import build_s3_repo
from mounting import mounted
from servers import moto_s3_server

pytestmark = pytest.mark.timeout(300)

TIMEOUT = 3.0
# after a failed read-ahead the kernel asks once more for the page a read(2) needs: two
# FUSE requests, each within the deadline
READ_BOUND = 2 * TIMEOUT + 3


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    try:
        fn()
        err = 0
    except OSError as e:
        err = e.errno or -1
    return err, time.monotonic() - start


def test_hung_backend_reads_fail_within_the_deadline_and_recover(tmp_path):
    with moto_s3_server() as s3:
        built, env = build_s3_repo(s3, tmp_path / "src")
        local = {p.name: p for p in built.sources}

        def want(ref):  # type: ignore[no-untyped-def]
            with open(local[ref.location.rsplit("/", 1)[1]], "rb") as f:
                return os.pread(f.fileno(), ref.length, ref.offset)

        with mounted("s3://repos/r", tmp_path / "m", f"endpoint_url={s3.endpoint_url}",
                     "authorize=s3://archive/nc/=env", "prefetch=0", f"timeout={TIMEOUT:g}",
                     env=env) as m:
            refs = built.refs["day1"]
            first, last = refs[0], refs[-1]
            assert (m.path / first.key).read_bytes() == want(first)
            for ref in refs:  # every chunk file looked up (sizes known), only one fetched
                assert (m.path / ref.key).stat().st_size == ref.length

            os.kill(s3.pid, signal.SIGSTOP)  # the server accepts connections, answers nothing
            try:
                err, took = timed(lambda: (m.path / last.key).read_bytes())
                assert err == errno.EIO, err
                assert took < READ_BOUND, took
                # a listing that needs the backend: one deadline for the whole request
                err, took = timed(lambda: os.listdir(m.path / ".vchunkfs" / "branches"))
                assert err in (0, errno.EIO), err
                assert took < TIMEOUT + 3, took
                # a history needs several calls: still one deadline
                err, took = timed(lambda: (m.path / ".vchunkfs" / "history").read_bytes())
                assert err in (0, errno.EIO), err
                assert took < READ_BOUND, took
                # readers in parallel all get their answer within the deadline
                results: list[tuple[int, float]] = []
                threads = [threading.Thread(target=lambda r=r: results.append(
                    timed(lambda: (m.path / r.key).read_bytes()))) for r in refs[1:4]]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert all(e == errno.EIO and t < READ_BOUND for e, t in results), results
                # what was fetched before is still served
                assert (m.path / first.key).read_bytes() == want(first)
                assert m.proc.poll() is None
            finally:
                os.kill(s3.pid, signal.SIGCONT)

            log = m.log_text()
            assert f"timed out after {TIMEOUT:g} s: read {last.key}" in log, log
            # the timed-out fetch was not cached: it is fetched again and is right
            deadline = time.monotonic() + 30
            while True:
                try:
                    data = (m.path / last.key).read_bytes()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            assert data == want(last)
            for ref in refs:
                assert (m.path / ref.key).read_bytes() == want(ref), ref.key
            assert "branches" not in os.listdir(m.path)
            assert sorted(os.listdir(m.path / ".vchunkfs" / "branches")) == ["dev", "main"]
            assert m.proc.poll() is None
        assert "Traceback" not in m.log_text(), m.log_text()
