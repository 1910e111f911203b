"""A vchunkfs writer in its own process, for the racing-writers tests.

Usage: race_writer.py REPO_URL KEY BYTE GO_FILE [ENDPOINT_URL]
Opens a session on main, stages one native chunk, creates GO_FILE.ready-KEY-BYTE,
waits until GO_FILE exists (so all writers commit at once from the same base),
commits, and prints one JSON line:
{"ok": true, "snapshot": ID} or {"ok": false, "code": CODE, "message": ...}.
"""

from __future__ import annotations

import json
import os
import sys
import time

import icechunk as ic

from vchunkfs.bridge import shared_bridge
from vchunkfs.errors import VchunkfsError
from vchunkfs.repository import Repo, StorageOptions, parse_repo_url
from vchunkfs.repository.writer import Writer


def main() -> int:
    url, key, value, go = sys.argv[1:5]
    endpoint = sys.argv[5] if len(sys.argv) > 5 else None
    ic.set_logs_filter("error")
    bridge = shared_bridge()
    opts = StorageOptions(endpoint_url=endpoint, region="us-east-1") if endpoint else None
    repo = bridge.run(lambda: Repo.open(parse_repo_url(url), storage_options=opts))
    writer = bridge.run(lambda: Writer.open(repo, "main"))
    bridge.run(lambda: writer.set_chunk(key, bytes([int(value)])))
    with open(f"{go}.ready-{key.replace('/', '_')}-{value}", "w") as ready:
        ready.write(writer.base_snapshot)
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            print(json.dumps({"ok": False, "code": "timeout", "message": "no go signal"}))
            return 1
        time.sleep(0.001)
    try:
        sid = bridge.run(lambda: writer.commit(f"write {key}={value}"))
    except VchunkfsError as e:
        print(json.dumps({"ok": False, "code": e.code, "message": e.message}))
        return e.exit_status
    print(json.dumps({"ok": True, "snapshot": sid}))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown of the engine's threads
