"""Mount options: the one place where ``-o`` strings become settings.

The same options come from ``mount.vchunkfs -o ...``, ``mount -t vchunkfs``,
an ``/etc/fstab`` line, a systemd unit and ``vchunkfs mount`` (whose flags are
translated to these strings first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vchunkfs.errors import UsageError
from vchunkfs.presentation.names import canonical_presentations

# Options mount(8), fstab and systemd pass or use that mean nothing to the daemon.
IGNORED = {
    "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner",
    "group", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime",
    "relatime", "norelatime", "strictatime", "diratime", "nodiratime", "async", "sync",
    "rw", "ro", "loop",
}
IGNORED_PREFIXES = ("x-", "comment=", "context=", "fscontext=", "defcontext=", "rootcontext=")

HELP = """\
mount options (-o opt[,opt...]):
  version=NAME          branch, tag or snapshot id the root shows (default: main)
  presentation=NAME     how the hierarchy is shown (docs/readers.md says which reader
                        needs which):
                          v3          stored Zarr v3 metadata, raw chunk bytes (default)
                          v2          Zarr v2 metadata (+ .zmetadata), raw chunk bytes
                          v2-decoded  Zarr v2, chunks decompressed: every reader reads it
                          v3-decoded  Zarr v3, chunks decompressed, codec "bytes" only
                        several joined with '+' (or 'all'): every version directory
                        then holds one subdirectory per presentation, e.g. /mnt/x/v2/
                        WRONG VALUES WITHOUT AN ERROR: zarr.js (which ignores the
                        shuffle filter) on v2, and netCDF-C builds without filter
                        plugins (Debian's ncdump) on v2: use v2-decoded for them
  authorize=PREFIX[=KIND]
                        trust a virtual chunk container (repeatable; KIND: default,
                        anonymous, env). Credentials: auth_file= or the environment
  auth_file=PATH        TOML file of [[authorize]] entries (chmod 600)
  endpoint_url=URL      S3-compatible endpoint of the repository's storage
  region=NAME           storage region
  anonymous             read the repository's storage without credentials
  storage.KEY=VALUE     backend config key (gcs, azure, http storage)
  cache_size=BYTES      the daemon's memory budget for everything it caches, e.g.
                        512M, 2G (default 1G): 1/2 chunk bytes, 1/5 icechunk's
                        manifests, 1/10 each chunk indexes, decoded chunks and names
                        (docs/SEMANTICS.md, "Memory")
  manifest_cache_refs=N chunk refs icechunk keeps in memory (default: a fifth of
                        cache_size at ~80 bytes a ref, 2.7 million for 1G; given, its
                        bytes come out of cache_size first)
  show_versions         list .vchunkfs in the root directory (it is always reachable)
  poll_interval=SEC     how often a branch view checks for a new head (default 2)
  read_ahead_kb=KB      kernel read-ahead of the mount (default 1024: one request per
                        OISST-sized chunk; 0 leaves the kernel default)
  timeout=SEC           deadline of every backend call and every FUSE request: a read
                        or listing still waiting then fails with EIO, the log names the
                        call, and the mount keeps serving (default 30; 0: none)
  prefetch=N            after a cold read of a chunk file, fetch the array's next N
                        chunk files into the daemon's cache (and N/2 before it, for
                        readers that go backward); the window grows 4x while the
                        reader reads on in order, up to 16N, and goes on into the
                        next arrays chunked alike in listing order (default 4; 0: off)
  allow_other           let other users read the mount (needs user_allow_other in
                        /etc/fuse.conf for non-root)
  uid=N, gid=N          owner shown for every file (default: the mounting user)
  workers=N             most FUSE requests served at once (default 64)
  foreground            do not daemonize
  debug                 log every request
  log_file=PATH         where the daemon logs (default: syslog-less stderr when in the
                        foreground, nowhere when daemonized)
  control_socket=PATH   path of the control socket
  control_max_frame=BYTES  largest control request frame (default 64M, the most)
  control_buffer=BYTES  control request bytes held at once over all connections
                        (default 256M); a request waits for room, then gets "busy"
  control_idle_timeout=SEC  close a control connection idle this long (default 600)
  control_stall_timeout=SEC close one stalled this long inside a request or while
                        its reply is sent (default 30)
  control_max_connections=N  control connections served at once (default 256)
  nonempty              mount over a non-empty directory (refused by default, as
                        mount(8) helpers do: its files would be hidden)
ignored, for fstab and mount(8): defaults, auto, noauto, nofail, _netdev, rw, ro, user,
  x-systemd.* and the other generic options. The mount is always read-only.
"""

_SIZE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE)


@dataclass
class MountOptions:
    source: str
    mountpoint: str
    version: str = "main"
    presentation: str = "v3"
    authorize: list[str] = field(default_factory=list)
    auth_file: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False
    storage_config: dict[str, str] = field(default_factory=dict)
    cache_size: int = 1024 * 1024 * 1024  # the memory budget (vchunkfs.fs.budget)
    manifest_cache_refs: int | None = None  # None: the budget's share
    show_versions: bool = False
    poll_interval: float = 2.0
    read_ahead_kb: int = 1024
    prefetch: int = 4
    timeout: float = 30.0  # 0: no deadline
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    workers: int = 64
    foreground: bool = False
    debug: bool = False
    log_file: str | None = None
    control_socket: str | None = None
    control_max_frame: int = 64 * 1024 * 1024
    control_buffer: int = 256 * 1024 * 1024
    control_idle_timeout: float = 600.0
    control_stall_timeout: float = 30.0
    control_max_connections: int = 256
    nonempty: bool = False


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(f"bad size {text!r}: use bytes or a number with K, M, G or T")
    unit = m.group(2).upper()
    return int(m.group(1)) * (1024 ** ("KMGT".index(unit) + 1) if unit else 1)


def split_options(values: list[str]) -> list[str]:
    """``["a,b=1", "c"]`` -> ``["a", "b=1", "c"]``."""
    return [o for v in values for o in v.split(",") if o]


def parse_options(source: str, mountpoint: str, options: list[str]) -> MountOptions:
    """Build :class:`MountOptions` from option strings; unknown ones are a clear error."""
    opts = MountOptions(source=source, mountpoint=mountpoint)
    for raw in split_options(options):
        key, sep, value = raw.partition("=")
        if raw in IGNORED or raw.startswith(IGNORED_PREFIXES):
            continue
        if key.startswith("storage.") and sep:
            opts.storage_config[key[len("storage."):]] = value
            continue
        flag = not sep
        try:
            match key:
                case "version" if value:
                    opts.version = value
                case "presentation" if value:
                    opts.presentation = "+".join(canonical_presentations(value))
                case "authorize" if value:
                    opts.authorize.append(value)
                case "auth_file" if value:
                    opts.auth_file = value
                case "endpoint_url" if value:
                    opts.endpoint_url = value
                case "region" if value:
                    opts.region = value
                case "anonymous" if flag:
                    opts.anonymous = True
                case "cache_size" if value:
                    opts.cache_size = parse_size(value)
                case "manifest_cache_refs" if value:
                    opts.manifest_cache_refs = int(value)
                    if opts.manifest_cache_refs < 1:
                        raise ValueError
                case "show_versions" if flag:
                    opts.show_versions = True
                case "poll_interval" if value:
                    opts.poll_interval = float(value)
                    if opts.poll_interval <= 0:
                        raise ValueError
                case "read_ahead_kb" if value:
                    opts.read_ahead_kb = int(value)
                case "prefetch" if value:
                    opts.prefetch = int(value)
                    if opts.prefetch < 0:
                        raise ValueError
                case "timeout" if value:
                    opts.timeout = float(value)
                    if not opts.timeout >= 0 or opts.timeout == float("inf"):
                        raise ValueError
                case "allow_other" if flag:
                    opts.allow_other = True
                case "uid" if value:
                    opts.uid = int(value)
                case "gid" if value:
                    opts.gid = int(value)
                case "workers" if value:
                    opts.workers = int(value)
                    if opts.workers < 1:
                        raise ValueError
                case "foreground" if flag:
                    opts.foreground = True
                case "debug" if flag:
                    opts.debug = True
                case "log_file" if value:
                    opts.log_file = value
                case "control_socket" if value:
                    opts.control_socket = value
                case "control_max_frame" if value:
                    opts.control_max_frame = parse_size(value)
                    if not 0 < opts.control_max_frame <= 64 * 1024 * 1024:
                        raise ValueError
                case "control_buffer" if value:
                    opts.control_buffer = parse_size(value)
                    if opts.control_buffer < 1:
                        raise ValueError
                case "control_idle_timeout" if value:
                    opts.control_idle_timeout = float(value)
                    if opts.control_idle_timeout <= 0:
                        raise ValueError
                case "control_stall_timeout" if value:
                    opts.control_stall_timeout = float(value)
                    if opts.control_stall_timeout <= 0:
                        raise ValueError
                case "control_max_connections" if value:
                    opts.control_max_connections = int(value)
                    if opts.control_max_connections < 1:
                        raise ValueError
                case "nonempty" if flag:
                    opts.nonempty = True
                case _:
                    raise UsageError(f"unknown mount option {raw!r} (see mount.vchunkfs --help)")
        except ValueError:
            raise UsageError(f"bad value in mount option {raw!r}") from None
    return opts
