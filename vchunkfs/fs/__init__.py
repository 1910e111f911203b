"""The filesystem: a FUSE-agnostic core (:mod:`.namespace`) behind a thin pyfuse3 adapter
(:mod:`.operations`).

Concurrency rules (all of this package runs in one trio thread):

* inode table, trees and the block cache are touched only from the trio thread,
  between awaits, so they need no locks;
* every call into the repository layer crosses the bridge (``await bridge.call``)
  and may suspend: state read before such an await is re-checked after it;
* one fetch per block however many readers: the first reader fetches, the
  others wait for its result (or its error);
* kernel cache invalidation is queued with ``invalidate_entry_async`` or done
  outside request handlers (from the branch poller), never inside a handler.
"""
