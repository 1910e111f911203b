"""Names of the presentations, importable without zarr or icechunk.

The mount helper parses options before it forks the daemon, and icechunk
starts threads when imported, so option parsing must not import it.
"""

from __future__ import annotations

from vchunkfs.errors import UsageError

# canonical names, in the order "all" lists them
NAMES = ("v3", "v2", "v2-decoded", "v3-decoded")
# other spellings accepted on input
ALIASES = {"zarr-v3": "v3", "zarr-v2": "v2", "decoded": "v2-decoded"}
ALL = "all"


def canonical_presentations(spec: str) -> list[str]:
    """Canonical names from ``NAME``, ``NAME+NAME...`` or ``all``; raises UsageError."""
    names: list[str] = []
    for part in spec.split("+"):
        part = part.strip()
        found = list(NAMES) if part == ALL else [ALIASES.get(part, part)]
        for name in found:
            if name not in NAMES:
                raise UsageError(f"unknown presentation {part!r}: use one of "
                                 + ", ".join(NAMES) + ", several joined with '+', or 'all'")
            if name not in names:
                names.append(name)
    return names
