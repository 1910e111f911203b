"""icechunk's own log output, filtered for vchunkfs users."""

from __future__ import annotations

import os

import icechunk as ic

DEFAULT_FILTER = "error"


def quiet_engine_logs() -> None:
    """Show only icechunk's errors unless ``ICECHUNK_LOG`` asks for more.

    icechunk warns on every local-filesystem open that concurrent commits are
    unsafe; vchunkfs writers commit under a lock (see ``writer.commit_lock``),
    so the warning would only mislead a reader of the command's output.
    """
    ic.set_logs_filter(os.environ.get("ICECHUNK_LOG", DEFAULT_FILTER))
