"""History as text, the way ``git log`` shows it, for people reading with ``cat``."""

from __future__ import annotations

import json
from collections.abc import Iterable

from vchunkfs.repository.repo import Commit


def render_history(commits: Iterable[Commit], refs: dict[str, list[str]] | None = None) -> str:
    """One block per commit, newest first; ``refs`` maps snapshot ids to branch/tag labels."""
    out = []
    for c in commits:
        labels = (refs or {}).get(c.id, [])
        head = f"snapshot {c.id}" + (f" ({', '.join(labels)})" if labels else "")
        lines = [head, f"Date:    {c.written_at:%Y-%m-%d %H:%M:%S %Z}"]
        user_meta = {k: v for k, v in c.metadata.items() if not k.startswith("__")}
        if user_meta:
            lines.append(f"Meta:    {json.dumps(user_meta, default=str, sort_keys=True)}")
        lines.append("")
        lines += [f"    {line}" for line in (c.message or "").splitlines()] or ["    "]
        lines.append("")
        out.append("\n".join(lines) + "\n")
    return "".join(out)
