"""Which groups and arrays of a snapshot the mount shows: the rule for node names.

Icechunk stores a node under any path a writer gives it (it refuses only ``.``
and ``..`` segments from zarr, and ``..`` in a raw key), so a repository can
hold nodes no Zarr store could: an empty name (``//abs``, ``g//h``), a name that
is a metadata document's (``zarr.json``), a child of an array, a node whose
parent group does not exist. Shown as they are, such nodes make two entries of
one name, hide a metadata document, or appear as directories without a
``zarr.json``. A node is hidden, with everything below it, when

* its name is not a valid Zarr v3 node name: empty, made of periods only (``.``,
  ``..``, ``...``), or starting with the reserved prefix ``__``;
* its name is ``zarr.json``, the name of its parent's metadata document;
* its name cannot be a file name: it contains NUL, or is longer than
  ``NAME_MAX`` bytes (``/`` cannot occur: it separates names);
* its parent is an array (an array's directory holds only its metadata and
  chunk keys) or is not a node of the snapshot (Zarr v3 has no implicit groups);
* it is a child of the root named ``.vchunkfs``, the mount's versions directory
  (:mod:`vchunkfs.fs.namespace`): the versions directory wins at the mount root,
  and every presentation of every version hides the node (also from a v2
  ``.zmetadata``), so that a version looks the same wherever it is shown.

The Zarr v2 presentations also hide their document names (see ``converted``).
Each hidden node is logged once per snapshot as a warning naming it and why.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping

log = logging.getLogger("vchunkfs.names")

NAME_MAX = 255  # bytes in one file name (what the mount's statfs reports)
VERSIONS_DIR = ".vchunkfs"
METADATA_NAME = "zarr.json"
# the documents the Zarr v2 presentations make in a group's directory, or that v2
# readers look for there
ZARR_V2_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata"})
_REPORTED_MAX = 10_000


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be shown as a group or array, or None when it can."""
    if not name:
        return "its path has an empty name"
    if name.strip(".") == "":
        return "a Zarr node name cannot be made of periods only"
    if name.startswith("__"):
        return "Zarr reserves names starting with '__'"
    if name == METADATA_NAME:
        return f"{METADATA_NAME} is the name of its parent's metadata document"
    if "\0" in name:
        return "a file name cannot contain NUL"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"a file name cannot be longer than {NAME_MAX} bytes"
    return None


def visible_nodes(kinds: Mapping[str, str], snapshot_id: str) -> dict[str, str]:
    """The nodes the mount shows, as path (no leading ``/``, ``""`` for the root) -> kind,
    from icechunk's ``{"/a/b": "group" | "array"}``; reports each hidden one."""
    out: dict[str, str] = {}
    hidden: set[str] = set()
    for raw in sorted(kinds, key=lambda p: p.count("/")):  # parents first
        path = raw[1:] if raw.startswith("/") else raw
        if path == "":
            out[""] = kinds[raw]
            continue
        parent, _, _ = path.rpartition("/")
        if parent in hidden:
            hidden.add(path)  # the hidden ancestor was reported
            continue
        why = next((p for p in map(name_problem, path.split("/")) if p), None)
        if why is None and path == VERSIONS_DIR:
            why = "it is the name of the mount's versions directory"
        if why is None and parent and parent not in out:
            why = f"its parent {parent!r} is not a group of the snapshot"
        elif why is None and out.get(parent, "group") != "group":
            why = f"it is inside array {parent or '/'!r}, whose names are chunk keys"
        if why is None:
            out[path] = kinds[raw]
        else:
            hidden.add(path)
            report_hidden(snapshot_id, raw, why)
    return out


def hidden_by_name(paths: Iterable[str], names: frozenset[str], snapshot_id: str,
                   reason: str) -> set[str]:
    """Paths among ``paths`` whose name, or an ancestor's, is in ``names``; the topmost
    of each such subtree is reported once, with ``reason``."""
    paths = list(paths)
    top = {p for p in paths if p and p.rsplit("/", 1)[-1] in names}
    if not top:
        return set()
    out: set[str] = set()
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts) + 1):
            if "/".join(parts[:i]) in top:
                out.add(p)
                if i == len(parts):
                    report_hidden(snapshot_id, "/" + p, reason)
                break
    return out


class _Reported:
    """(snapshot, path, reason) already logged, bounded; shared by the bridge's loop
    and the trio thread."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, key: tuple[str, str, str]) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = None
            if len(self._seen) > _REPORTED_MAX:
                self._seen.popitem(last=False)
            return True


_REPORTED = _Reported()


def report_hidden(snapshot_id: str, path: str, reason: str) -> None:
    """Log, once per snapshot, path and reason, that a node is not shown."""
    if _REPORTED.first((snapshot_id, path, reason)):
        log.warning("snapshot %s: node %r is hidden: %s", snapshot_id or "(staged)", path,
                    reason)
