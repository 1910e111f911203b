"""Serving a mount: open the repository, mount with pyfuse3, run until unmounted.

Runs in the daemon (the forked child, or the foreground process). Reports
``ok`` or ``error STATUS MESSAGE`` on the ready pipe exactly once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import icechunk as ic
import pyfuse3
import trio

from vchunkfs.bridge import AsyncioBridge
from vchunkfs.daemon.control_ops import ControlOps
from vchunkfs.daemon.control_server import ControlLimits, ControlServer, default_socket_path
from vchunkfs.daemon.options import MountOptions
from vchunkfs.errors import MountError, VchunkfsError
from vchunkfs.fs.budget import MemoryBudget
from vchunkfs.fs.namespace import FsError, MountConfig, Namespace
from vchunkfs.fs.operations import KernelInvalidator, Operations
from vchunkfs.fs.source import RepoSource
from vchunkfs.presentation.converted import set_decoded_cache_bytes
from vchunkfs.repository import Authorization, Repo, StorageOptions, parse_repo_url
from vchunkfs.repository.logs import quiet_engine_logs
from vchunkfs.repository.snapshot import ViewCaches

log = logging.getLogger("vchunkfs.daemon")


def serve(opts: MountOptions, ready_fd: int | None) -> int:
    """Open the repository, mount, serve until unmounted or signalled; return an exit status."""
    _setup_logging(opts)
    try:
        return _open_and_serve(opts, ready_fd)
    except VchunkfsError as e:
        return _fail(ready_fd, e)
    except FsError as e:
        return _fail(ready_fd, MountError(str(e)))
    except Exception as e:  # report, never leave the waiting parent without an answer
        log.exception("daemon failed")
        return _fail(ready_fd, MountError(f"daemon failed: {type(e).__name__}: {e}"))


def _open_and_serve(opts: MountOptions, ready_fd: int | None) -> int:
    bridge = AsyncioBridge()
    try:
        config = ic.RepositoryConfig.default()
        memory = MemoryBudget.split(opts.cache_size, opts.manifest_cache_refs)
        set_decoded_cache_bytes(memory.decoded_bytes)
        config.caching = ic.CachingConfig(num_chunk_refs=memory.manifest_refs)
        timeout = opts.timeout or None
        repo = bridge.run(lambda: Repo.open(
            parse_repo_url(opts.source),
            authorization=Authorization.load(opts.authorize, opts.auth_file),
            storage_options=StorageOptions.from_env(
                endpoint_url=opts.endpoint_url, region=opts.region,
                anonymous=opts.anonymous or None, config=opts.storage_config or None),
            config=config), timeout, f"open the repository {opts.source}")
        repo.caches = ViewCaches(size_entries=memory.size_entries,
                                 index_bytes=memory.index_bytes, call_timeout=timeout)
        log.info("%s", memory.describe())
        trusted = set(repo.authorization.prefixes)
        for c in repo.containers():
            if c.url_prefix not in trusted:
                log.warning("virtual chunk container %s is not authorized: its chunks will "
                            "read as EACCES (mount with -o authorize=%s to trust it)",
                            c.url_prefix, c.url_prefix)
        socket_path = opts.control_socket or default_socket_path(opts.mountpoint)
        namespace = Namespace(RepoSource(repo), bridge, MountConfig(
            version=opts.version, presentation=opts.presentation, cache_bytes=opts.cache_size,
            show_versions=opts.show_versions, poll_interval=opts.poll_interval,
            prefetch=opts.prefetch, timeout=timeout, memory=memory,
            control_socket=socket_path,
            remote=not repo.location.is_local or any(
                not p.startswith("file://") for p in repo.authorization.prefixes)))
        invalidator = KernelInvalidator()
        ops = ControlOps(repo, bridge, namespace, invalidator, opts.mountpoint)
        namespace.staged = ops
        control = ControlServer(ops, socket_path, owner_uid=os.getuid(), limits=ControlLimits(
            max_frame=opts.control_max_frame, buffer_bytes=opts.control_buffer,
            idle_timeout=opts.control_idle_timeout, stall_timeout=opts.control_stall_timeout,
            max_connections=opts.control_max_connections))
        return trio.run(_serve, opts, namespace, control, ready_fd)
    finally:
        bridge.close()


async def _serve(opts: MountOptions, namespace: Namespace, control: ControlServer,
                 ready_fd: int | None) -> int:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        root = await namespace.start()
        try:
            await control.bind()
        except OSError as e:
            return _fail(ready_fd, MountError(f"control socket {control.path}: {e.strerror or e}"))
        # default_permissions (in pyfuse3's defaults; named here so that it stays): the
        # kernel enforces the modes, which keep staged changes owner-only with allow_other
        fuse_options = set(pyfuse3.default_options) | {
            "ro", "default_permissions", "subtype=vchunkfs",
            "fsname=" + opts.source.replace(",", "%2C")}
        if opts.allow_other:
            fuse_options.add("allow_other")
        if opts.debug:
            fuse_options.add("debug")
        try:
            pyfuse3.init(Operations(namespace, opts.uid, opts.gid), opts.mountpoint, fuse_options)
        except RuntimeError as e:
            control.close()
            return _fail(ready_fd, MountError(f"cannot mount at {opts.mountpoint}: {e}"))
        status = 0  # set when the mount fails to start after pyfuse3.init
        try:
            async def announce_when_answering() -> None:
                nonlocal status
                # A stat of the mountpoint returns once the kernel's handshake (FUSE_INIT)
                # is answered; only then does the kernel keep a read-ahead written to
                # sysfs (before it, it clamps the value back to 128 KiB). The stat runs
                # in a thread: the trio thread must never touch its own mount. A signal
                # before the handshake ends pyfuse3.main with the stat still waiting for
                # an answer nobody will give: the thread is abandoned (the unmount that
                # follows ends its request), else the nursery would wait for it forever.
                try:
                    await trio.to_thread.run_sync(os.stat, opts.mountpoint,
                                                  abandon_on_cancel=True)
                except OSError as e:
                    status = _fail(ready_fd, MountError(
                        f"the mount at {opts.mountpoint} does not answer: {e.strerror or e}"))
                    pyfuse3.terminate()
                    return
                _set_read_ahead(opts.mountpoint, opts.read_ahead_kb)
                log.info("mounted %s (%s %s, snapshot %s) at %s", opts.source,
                         root.version.kind, root.version.name, root.snapshot_id,
                         opts.mountpoint)
                _report(ready_fd, "ok")
                _notify_systemd("READY=1")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals)
                await nursery.start(namespace.run_poller, control.ops.invalidator)
                await nursery.start(namespace.run_prefetcher)
                await nursery.start(control.serve)
                nursery.start_soon(announce_when_answering)
                await pyfuse3.main(min_tasks=2, max_tasks=opts.workers)
                nursery.cancel_scope.cancel()
        finally:
            _notify_systemd("STOPPING=1")
            control.close()
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", opts.mountpoint)
    return status


async def _stop_on_signal(signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        log.info("%s: unmounting", signal.Signals(signum).name)
        pyfuse3.terminate()
        return


def _fail(ready_fd: int | None, e: VchunkfsError) -> int:
    log.error("%s", e.message)
    if ready_fd is None:
        print(f"mount.vchunkfs: {e.message}", file=sys.stderr)
    _report(ready_fd, f"error {e.exit_status} {e.message}")
    return e.exit_status


def _report(ready_fd: int | None, message: str) -> None:
    if ready_fd is None:
        return
    try:
        os.write(ready_fd, message.encode() + b"\n")
        os.close(ready_fd)
    except OSError:
        pass  # the parent is gone; nothing to tell


def _setup_logging(opts: MountOptions) -> None:
    quiet_engine_logs()
    level = logging.DEBUG if opts.debug else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s vchunkfs[%(process)d] %(levelname)s %(message)s")


def _set_read_ahead(mountpoint: str, kb: int) -> None:
    """Let the kernel ask for a whole chunk in one request (default is 128 KiB).

    The device number comes from /proc/self/mountinfo: a stat() of the mountpoint
    would be a request to this very daemon, which is not serving yet.
    """
    if kb <= 0:
        return
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == mountpoint:
                    device = fields[2]
        path = Path("/sys/class/bdi") / device / "read_ahead_kb"
        path.write_text(f"{kb}\n")
    except (OSError, UnboundLocalError, IndexError) as e:
        log.info("read_ahead_kb left at the kernel default: %s", e)


def _notify_systemd(state: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("cannot notify systemd (%s): %s", state, e)


