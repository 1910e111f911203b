"""The filesystem: a FUSE-agnostic core behind a thin pyfuse3 adapter (:mod:`.operations`).

The core: :mod:`.namespace` (versions, trees, generations, branch following,
lookups and listings) over :mod:`.inodes` (the inode table and lookup counts) and
:mod:`.reads` (open files, the block cache of :mod:`.blockcache`, the
prefetcher), with the vocabulary in :mod:`.nodes`, the memory budget in
:mod:`.budget`, and the repository behind the :class:`.source.VersionSource`
seam (:mod:`.faults` injects faults into it for tests).

Concurrency rules: docs/concurrency.md. In short, all of this package runs in one
trio thread; state read before an ``await`` is re-checked after it; every call
into the repository layer crosses the bridge with a deadline; one fetch per block
however many readers; kernel invalidations never inside a request handler.
"""
