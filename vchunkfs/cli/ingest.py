"""``vchunkfs ingest``: archival files -> virtual refs in a repository, in one commit."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING

from vchunkfs.cli.common import add_json_option, add_repo_options, emit_json, open_repo, run
from vchunkfs.errors import UsageError
from vchunkfs.ingest import PARSERS, IngestPlan, ingest, read_files_from

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Sub) -> None:
    p = sub.add_parser(
        "ingest", help="add archival files (netCDF4/HDF5, netCDF3, Zarr, kerchunk refs) to a "
                       "repository as virtual refs, and commit",
        description="Read only the files' metadata (VirtualiZarr), combine them along "
                    "--concat-dim like the Icechunk guide, check that they agree, write "
                    "virtual refs with VirtualiZarr's to_icechunk and commit. A failed "
                    "ingest commits nothing.\n\n"
                    "Variables without --concat-dim (an orography, a land-sea mask, lat/lon) "
                    "are kept once, with refs to the first file, not stacked once per file "
                    "as the guide's xr.concat snippet does (data_vars='all'): every file "
                    "must hold the same ones (shape, dtype, attributes; values of loaded "
                    "coordinates; chunking, codecs, fill value, chunk sizes, and the chunk "
                    "bytes up to 4 MiB per variable), or the ingest names the variable and "
                    "the first file that differs. --append and --replace-region keep them "
                    "as stored after comparing the new copies with the stored arrays "
                    "(the same, less attributes). The concat coordinate (time), loaded "
                    "in memory, is written in chunks of the first ingest's values (up to "
                    "4096), not one value a file as the files chunk it.",
        epilog="examples:\n"
               "  vchunkfs ingest ./oisst 'data/oisst-*.nc' --concat-dim time "
               "--container file:///abs/data/\n"
               "  vchunkfs ingest ./oisst data/oisst-avhrr-v02r01.20240901.nc "
               "--concat-dim time --append\n"
               "  vchunkfs ingest ./oisst data/reprocessed/*.nc --concat-dim time "
               "--replace-region time=14:16\n"
               "  vchunkfs ingest ./scenes 'tiles/*.tif' --concat-dim time   "
               "# TIFFs: a new dimension\n"
               "  vchunkfs ingest ./oisst refs.json --parser kerchunk-json\n\n"
               "parsers: hdf (netCDF4/HDF5), netcdf3, tiff (needs virtual-tiff), grib (GRIB2: "
               "needs vchunkfs[grib]; messages -> arrays along time and level, decoded by "
               "ecCodes; the mount's v2-decoded/v3-decoded presentations serve them "
               "decoded), zarr, kerchunk-json, kerchunk-parquet; auto picks by content or "
               "name.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", metavar="REPO")
    inputs = p.add_argument("inputs", nargs="+", metavar="FILE_OR_GLOB",
                   help="paths, globs (quote them) or URLs; sorted before combining. Globs "
                        "(*, ?, [...], ** for any depth) in s3://, gs:// and az:// URLs are "
                        "expanded by listing the bucket; http(s):// cannot be listed")
    # "+", not "*": a "*" positional matches nothing right after REPO and then refuses
    # the files given after an option (REPO --endpoint-url URL FILES); optional only so
    # that --files-from can stand alone
    inputs.required = False
    p.add_argument("--files-from", metavar="FILE|-",
                   help="read more inputs from FILE (- for standard input), one URL or path "
                        "per line, taken as they are; blank lines and # comments skipped")
    p.add_argument("--concat-dim", metavar="DIM", help="dimension to combine files along")
    p.add_argument("--new-dim", action="store_true",
                   help="--concat-dim is a new leading dimension the files lack (implied "
                        "for TIFF images)")
    p.add_argument("--parser", choices=PARSERS, default="auto",
                   help="how to read the files (default: by their content)")
    p.add_argument("--append", action="store_true",
                   help="append along --concat-dim to the existing arrays")
    p.add_argument("--new-only", action="store_true",
                   help="with --append: skip the inputs the branch's refs already point "
                        "into (a daily job can run the same line every day); nothing new "
                        "commits nothing and says so")
    p.add_argument("--replace-region", dest="write_region", metavar="auto|DIM=START:STOP",
                   help="point the slice START:STOP of DIM (or where the files' "
                        "coordinates fall, with auto) at these files instead; arrays "
                        "without DIM stay as they are")
    p.add_argument("--branch", default="main")
    p.add_argument("-m", "--message", help="commit message")
    p.add_argument("--container", metavar="PREFIX",
                   help="add this virtual chunk container (url prefix ending in /) if the "
                        "repository has none covering the files")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="read file metadata in N processes (this one and N-1 helpers, "
                        "which start up while this one reads)")
    p.add_argument("--dask", action="store_true",
                   help="read metadata on Dask (VirtualiZarr's parallel open), for thousands "
                        "of files on a cluster")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="read metadata on this dask.distributed scheduler's workers, one task "
                        "per file (default with --dask: $DASK_SCHEDULER_ADDRESS, if set); the "
                        "files are then checked and combined here as without it")
    p.add_argument("--group", help="the group inside the files to read (for TIFF: the IFD "
                                   "number, default 0)")
    p.add_argument("--source-region", help="region of s3:// sources")
    p.add_argument("--source-endpoint", metavar="URL",
                   help="endpoint of the sources' object store: an S3-compatible server, the "
                        "GCS base URL, or the Azure blob endpoint (an emulator); credentials "
                        "come from the backend's environment variables (AWS_*, GOOGLE_*, "
                        "AZURE_STORAGE_*)")
    p.add_argument("--source-account", metavar="NAME",
                   help="Azure storage account of az://CONTAINER/... sources (or "
                        "AZURE_STORAGE_ACCOUNT_NAME)")
    p.add_argument("--source-anonymous", action="store_true", help="read sources unsigned")
    add_repo_options(p)
    add_json_option(p)
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    inputs = list(args.inputs or [])
    if args.files_from:
        inputs += read_files_from(args.files_from)
    if not inputs:
        raise UsageError("no inputs: give files, globs or URLs, or --files-from FILE")
    plan = IngestPlan(inputs=inputs, concat_dim=args.concat_dim, parser=args.parser,
                      branch=args.branch, message=args.message, append=args.append,
                      region=args.write_region, container=args.container, workers=args.workers,
                      dask=args.dask, new_dim=args.new_dim, source_region=args.source_region,
                      source_endpoint=args.source_endpoint,
                      source_anonymous=args.source_anonymous,
                      source_account=args.source_account, group=args.group,
                      new_only=args.new_only,
                      scheduler=args.scheduler or (os.environ.get("DASK_SCHEDULER_ADDRESS")
                                                   if args.dask else None) or None)
    repo = open_repo(args, args.repo)
    start = time.monotonic()
    tty = sys.stderr.isatty() and not args.json

    def progress(done: int, total: int) -> None:
        if tty:
            rate = done / max(time.monotonic() - start, 1e-9)
            width = 30
            bar = "#" * (width * done // total) + "-" * (width - width * done // total)
            print(f"\rscanning [{bar}] {done}/{total} files ({rate:.1f} files/s)", end="",
                  file=sys.stderr, flush=True)

    if args.new_only and not args.append:
        raise UsageError("--new-only goes with --append (the first ingest takes every file)")
    result = ingest(repo, plan, run, progress)
    if tty and result.files:
        print(file=sys.stderr)
    if not result.files:  # --new-only, and every input is referenced already
        if args.json:
            emit_json({"snapshot": None, "files": 0, "skipped": result.skipped})
        else:
            print(f"nothing new: the {result.skipped} inputs are all referenced by branch "
                  f"{args.branch} already; nothing committed")
        return 0
    doc = {"snapshot": result.snapshot, "files": result.files, "refs": result.refs,
           "variables": result.variables, "container_added": result.container,
           "seconds": {k: round(v, 3) for k, v in result.timings.items()},
           "skipped": result.skipped, "scan_processes": result.scan_processes}
    if args.json:
        emit_json(doc)
    else:
        if result.container:
            print(f"added virtual chunk container {result.container}")
        print(f"{'appended' if args.append else 'ingested'} {result.files} files "
              f"({result.refs} refs; {', '.join(result.variables)}) in "
              f"{sum(result.timings.values()):.1f} s"
              + (f"; skipped {result.skipped} already referenced" if result.skipped else ""))
        print(result.snapshot)
    return 0
