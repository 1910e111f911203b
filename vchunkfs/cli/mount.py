"""``mount.vchunkfs`` (the mount(8) helper) and ``vchunkfs mount`` / ``vchunkfs umount``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from vchunkfs.daemon.options import HELP, parse_options
from vchunkfs.errors import UsageError, VchunkfsError

HELPER_USAGE = """\
usage: mount.vchunkfs SOURCE MOUNTPOINT [-sfnv] [-o opt[,opt...]]

Mount the Icechunk repository SOURCE (a path, s3://, gs://, az://, http(s)://) at
MOUNTPOINT as a read-only Zarr hierarchy. Follows mount(8)'s helper conventions, so
`mount -t vchunkfs SOURCE DIR -o ...` and /etc/fstab lines work once this helper is
installed as /sbin/mount.vchunkfs (scripts/install-mount-helper).

example:
  mount.vchunkfs s3://bucket/oisst /mnt/oisst -o version=v1,authorize=s3://noaa/oisst/

-s -n -v are accepted and ignored; -f (fake) checks the arguments without mounting.
Returns once the mount is ready; exit status 0, or non-zero with one error line.

"""


def helper_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mount.vchunkfs``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(HELPER_USAGE + HELP)
        return 0 if args else 1
    positional: list[str] = []
    options: list[str] = []
    fake = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-o" and i + 1 < len(args):
            options.append(args[i + 1])
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            options.append(a[2:])
        elif a in ("-t", "-N") and i + 1 < len(args):
            i += 2
            continue
        elif a.startswith("-") and len(a) > 1 and set(a[1:]) <= set("sfnv"):
            fake = fake or "f" in a
        elif a.startswith("-"):
            return _error(UsageError(f"unknown argument {a!r} (see mount.vchunkfs --help)"))
        else:
            positional.append(a)
        i += 1
    if len(positional) != 2:
        return _error(UsageError("expected SOURCE and MOUNTPOINT (see mount.vchunkfs --help)"))
    return _mount(positional[0], positional[1], options, fake)


def _mount(source: str, mountpoint: str, options: list[str], fake: bool = False) -> int:
    from vchunkfs.daemon.run import mount

    try:
        opts = parse_options(source, mountpoint, options)
        if fake:
            return 0
        return mount(opts)
    except VchunkfsError as e:
        return _error(e)


def _error(e: VchunkfsError) -> int:
    print(f"mount.vchunkfs: {e.message}", file=sys.stderr)
    return e.exit_status


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # not at the top: mount.vchunkfs (this module run as a script) stays light
    from vchunkfs.cli.common import add_json_option

    p = sub.add_parser(
        "mount", help="mount a repository as a read-only Zarr directory",
        description="Mount REPO at MOUNTPOINT; returns once the mount is ready.",
        epilog="examples:\n  vchunkfs mount ./oisst /mnt/oisst --version v1 "
               "--authorize file:///data/oisst/\n"
               "  vchunkfs mount ./oisst /mnt/oisst --presentation v2-decoded   "
               "# for GDAL 3.6, ncdump, zarr.js\n\n" + HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", metavar="REPO")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--version", dest="mount_version", metavar="NAME",
                   help="branch, tag or snapshot the root shows (default main)")
    p.add_argument("--authorize", action="append", default=argparse.SUPPRESS,
                   metavar="PREFIX[=KIND]", help="trust a virtual chunk container (repeatable)")
    p.add_argument("--auth-file", metavar="PATH", default=argparse.SUPPRESS)
    p.add_argument("--presentation", metavar="NAME[+NAME...]",
                   help="v3 (default), v2, v2-decoded, v3-decoded, several joined with '+', "
                        "or all (see the presentation= option below)")
    p.add_argument("--cache-size", metavar="BYTES", help="e.g. 512M, 2G")
    p.add_argument("--show-versions", action="store_true", help="list .vchunkfs in the root")
    p.add_argument("--allow-other", action="store_true")
    p.add_argument("--foreground", action="store_true", help="do not daemonize")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--log-file", metavar="PATH")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS",
                   help="mount options, as for mount.vchunkfs")
    add_json_option(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount a vchunkfs mount",
                       description="Unmount MOUNTPOINT; the daemon exits by itself.",
                       epilog="example:\n  vchunkfs umount /mnt/oisst",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--lazy", action="store_true",
                   help="detach now, clean up when no longer busy (umount -l)")
    add_json_option(p)
    p.set_defaults(func=cmd_umount)


def cmd_mount(args: argparse.Namespace) -> int:
    options = list(args.options)
    pairs = (("version", args.mount_version), ("auth_file", args.auth_file),
             ("presentation", args.presentation),
             ("cache_size", args.cache_size), ("log_file", args.log_file))
    options += [f"{k}={v}" for k, v in pairs if v]
    options += [f"authorize={a}" for a in args.authorize]
    flags = (("show_versions", args.show_versions), ("allow_other", args.allow_other),
             ("foreground", args.foreground), ("debug", args.debug))
    options += [k for k, on in flags if on]
    parse_options(args.repo, args.mountpoint, options)  # report bad options here
    # This process has imported icechunk, which runs threads; the daemon must be
    # forked from a single-threaded process, so the helper starts afresh.
    argv = [sys.executable, "-m", "vchunkfs.cli.mount", args.repo, args.mountpoint]
    if options:
        argv += ["-o", ",".join(options)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def cmd_umount(args: argparse.Namespace) -> int:
    from vchunkfs.daemon.run import unmount

    unmount(args.mountpoint, args.lazy)
    if args.json:
        from vchunkfs.cli.common import emit_json


        emit_json({"unmounted": args.mountpoint})
    return 0





if __name__ == "__main__":
    sys.exit(helper_main())
