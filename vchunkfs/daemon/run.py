"""The mount daemon's life cycle: checks, fork, the ready report, unmounting.

``mount()`` returns only once the filesystem is mounted and answering, or with
one clear error line: the daemon (a forked child, unless ``foreground``)
reports ``ok`` or the error over a pipe before the parent exits. The fork
happens before any thread or event loop starts. SIGTERM, SIGINT and SIGHUP,
``umount`` and ``fusermount3 -u`` all end the daemon cleanly; under systemd it
sends ``READY=1`` once mounted.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

from vchunkfs.daemon.options import MountOptions
from vchunkfs.errors import MountError, UsageError, VchunkfsError


def check_mountpoint(path: str, nonempty: bool = False) -> str:
    """The absolute mountpoint, or a :class:`MountError` saying why it cannot be used.

    A non-empty directory is refused unless ``nonempty`` (as mount(8) helpers do):
    mounting over it would hide its files without a word.
    """
    mp = Path(path).expanduser()
    if not mp.exists():
        if _fstype(os.path.abspath(mp)) is not None:
            raise MountError(f"{path} is a mount whose daemon is gone (ENOTCONN); "
                             f"unmount it first: vchunkfs umount {path}")
        raise MountError(f"mountpoint {path} does not exist")
    if not mp.is_dir():
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(mp):
        raise MountError(f"{path} is already a mount point (unmount it first: "
                         f"vchunkfs umount {path})")
    if not nonempty:
        try:
            with os.scandir(mp) as entries:
                first = next(entries, None)
        except OSError as e:
            raise MountError(f"mountpoint {path}: {e.strerror}") from e
        if first is not None:
            raise MountError(f"mountpoint {path} is not empty (the mount would hide "
                             f"{first.name} and the rest); use an empty directory, or "
                             "mount with -o nonempty to hide them")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: install fuse3 and load the fuse module "
                         "(modprobe fuse)")
    if os.getuid() != 0 and not shutil.which("fusermount3"):
        raise MountError("fusermount3 not found: install the fuse3 package")
    return str(mp.resolve())


def mount(opts: MountOptions) -> int:
    """Mount and return 0 once ready; raise :class:`VchunkfsError` on failure."""
    opts.mountpoint = check_mountpoint(opts.mountpoint, opts.nonempty)
    if opts.foreground:
        return _serve_here(opts, ready_fd=None)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        os.setsid()
        _detach_stdio(opts.log_file)
        status = 1
        try:
            status = _serve_here(opts, ready_fd=write_end)
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode(errors="replace").strip()
    if report == "ok":
        return 0
    os.waitpid(pid, 0)
    if report.startswith("error "):
        _, code, message = report.split(" ", 2)
        err = VchunkfsError(message)
        err.exit_status = int(code)
        raise err
    raise MountError("the daemon exited before the mount was ready"
                     + (f" (see {opts.log_file})" if opts.log_file else
                        "; run with -o foreground,debug to see why"))


def _serve_here(opts: MountOptions, ready_fd: int | None) -> int:
    limit_malloc_arenas()
    fix_mmap_threshold()
    # Imported only now: zarr and icechunk start threads when imported, and the
    # fork above must happen while this process has a single thread.
    from vchunkfs.daemon.serve import serve

    return serve(opts, ready_fd)


MALLOC_ARENAS = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept fixed
_M_ARENA_MAX = -8  # mallopt parameters, glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt``; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False  # not glibc: other C libraries have other knobs
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(param, value))


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let the daemon's threads share ``arenas`` glibc malloc arenas (default: 8 per core).

    Called before the daemon starts any thread. icechunk allocates with the C
    library's malloc from tokio's threads; each thread gets an arena of its own,
    whose heap grows by ``mprotect`` calls (each takes the process's memory-map
    lock, which every page fault also takes). A commit of 1,000,000 virtual
    refs made 57,789 ``mprotect`` calls with glibc's default arenas and 13,766
    with two; interleaved runs took 1.54-1.67 s (0.43-0.46 s of system time)
    against 1.32-1.58 s (0.28-0.38 s), and up to 2.4 s (1.0 s of system time)
    in other runs. It does not remove all of that system time (a later run
    with it: 0.8-1.6 s); see docs/benchmarks.md. An explicit
    ``MALLOC_ARENA_MAX`` in the environment wins. Returns whether the limit was set.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    return _mallopt(_M_ARENA_MAX, arenas)


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Give every allocation of ``threshold`` bytes or more its own mapping, returned
    to the system when freed (glibc).

    Chunk bytes are allocated and freed all the time (fetched, cached, evicted).
    glibc starts with this threshold but raises it to the size of every mapped
    block freed (up to 32 MiB), after which chunk-sized buffers come from the heap
    and stay in the process when freed: under 16 readers streaming 48 MiB
    through an 8 MiB budget, RSS rose 11.2 MiB over its baseline with glibc's
    moving threshold and 3.0-3.9 MiB with it fixed (scripts/bench/bench_load.py,
    docs/reliability.md). Setting it turns the moving threshold off. An explicit
    ``MALLOC_MMAP_THRESHOLD_`` in the environment wins. Returns whether it was set.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return _mallopt(_M_MMAP_THRESHOLD, threshold)


def _detach_stdio(log_file: str | None) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    else:
        os.dup2(devnull, 2)
    os.close(devnull)


def unmount(mountpoint: str, lazy: bool = False) -> None:
    """Unmount a vchunkfs mount (the daemon then exits by itself).

    Found in the mount table, not by ``stat``: the mountpoint of a daemon that was
    killed answers every ``stat`` with ENOTCONN, and must be unmounted all the same
    (as ``fusermount3 -u`` does).
    """
    absolute = os.path.abspath(os.path.expanduser(mountpoint))
    mp, fstype = absolute, _fstype(absolute)
    if fstype is None:
        mp = os.path.realpath(absolute)
        fstype = _fstype(mp)
    if fstype is None:
        raise UsageError(f"{mountpoint} is not mounted")
    if fstype != "fuse.vchunkfs":
        raise UsageError(f"{mountpoint} is a {fstype} mount, not vchunkfs")
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mp]
    if not shutil.which("fusermount3"):
        cmd = ["umount"] + (["-l"] if lazy else []) + [mp]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        detail = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        if "busy" in detail.lower():
            raise MountError(f"{mountpoint} is busy (a process has a file open or its working "
                             f"directory there); close it, or use --lazy")
        raise MountError(f"cannot unmount {mountpoint}: {detail}")


def _fstype(mountpoint: str) -> str | None:
    """The type of the last mount at ``mountpoint`` in the mount table, or None."""
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and _unescape(fields[1]) == mountpoint:
                found = fields[2]
    return found


def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)

