"""One memory budget for everything the daemon caches (``cache_size=``).

The budget is split between the caches below; each is bounded by its share, so
the daemon's memory beyond the interpreter's baseline (Python, numpy, zarr,
icechunk: about 100 MB) stays within the budget plus what requests in flight
hold (at most ``workers`` blocks of 8 MiB, and one decoded chunk larger than
its share). docs/SEMANTICS.md has the table.

=================  =====  ==============================================================
share              of     holds
=================  =====  ==============================================================
``blocks``         1/2    file bytes: chunk files, 8 MiB blocks of larger ones (BlockCache)
``manifests``      1/5    icechunk's manifest cache (``num_chunk_refs``, ~80 bytes a ref)
``indexes``        1/10   the arrays' chunk indexes (16 bytes a chunk) and chunk sizes
``decoded``        1/10   decoded chunks read in parts (the decoded presentations)
``names``          1/10   the daemon's entry and listing caches and retired inodes
=================  =====  ==============================================================

An explicit ``manifest_cache_refs=`` takes its bytes out of the budget first.
"""

from __future__ import annotations

from dataclasses import dataclass

REF_BYTES = 80  # icechunk's manifest cache, per chunk ref (measured: 2M refs ~160 MB)
NAME_BYTES = 250  # a cached or listed entry
RETIRED_BYTES = 1000  # a retired inode with its cached reply (measured)
SIZE_BYTES = 250  # a cached chunk size (ViewCaches.sizes)
MIN_MANIFEST_REFS = 10_000
MIN_ENTRIES = 1_000


@dataclass(frozen=True)
class MemoryBudget:
    total: int
    blocks: int
    manifest_refs: int
    index_bytes: int
    size_entries: int
    decoded_bytes: int
    entry_cache: int  # Namespace._entries
    listing_entries: int  # Namespace._listings
    retired_inodes: int

    @classmethod
    def split(cls, total: int, manifest_refs: int | None = None) -> MemoryBudget:
        """The shares of ``total`` bytes (``manifest_refs``: an explicit manifest cache)."""
        if manifest_refs is None:
            manifest_refs = max(total // 5 // REF_BYTES, MIN_MANIFEST_REFS)
            rest = total
        else:
            rest = max(total - manifest_refs * REF_BYTES, total // 2)
        tenth = rest // 10
        return cls(
            total=total,
            blocks=rest // 2,
            manifest_refs=manifest_refs,
            index_bytes=tenth * 3 // 4,
            size_entries=max(tenth // 4 // SIZE_BYTES, MIN_ENTRIES),
            decoded_bytes=tenth,
            entry_cache=max(tenth // 2 // NAME_BYTES, MIN_ENTRIES),
            listing_entries=max(tenth // 4 // NAME_BYTES, MIN_ENTRIES),
            retired_inodes=max(tenth // 4 // RETIRED_BYTES, MIN_ENTRIES),
        )

    def describe(self) -> str:
        mib = 1024 * 1024
        return (f"memory budget {self.total / mib:.0f} MiB: blocks {self.blocks / mib:.0f} MiB, "
                f"manifests {self.manifest_refs:,} refs, indexes {self.index_bytes / mib:.0f} "
                f"MiB + {self.size_entries:,} sizes, decoded {self.decoded_bytes / mib:.0f} MiB, "
                f"{self.entry_cache:,} entries, {self.listing_entries:,} listed entries, "
                f"{self.retired_inodes:,} retired inodes")
