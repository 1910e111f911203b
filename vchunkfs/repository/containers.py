"""Virtual chunk containers built from plain settings (command line, control requests)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import icechunk as ic

from vchunkfs.errors import UsageError
from vchunkfs.repository.authorization import prefix_backend, validate_prefix


def make_container(url_prefix: str, *, name: str | None = None, region: str | None = None,
                   endpoint_url: str | None = None, anonymous: bool = False,
                   account: str | None = None,
                   options: Mapping[str, str] | None = None) -> ic.VirtualChunkContainer:
    """A container whose store kind follows the prefix's scheme.

    s3 uses ``region``, ``endpoint_url`` (an S3-compatible server: path-style,
    http allowed when the URL is http) and ``anonymous``; azure needs
    ``account``; gcs, http and azure take backend ``options``.
    """
    prefix = validate_prefix(url_prefix)
    opts = dict(options or {})
    store: Any
    match prefix_backend(prefix):
        case "file":
            store = ic.local_filesystem_store(prefix.removeprefix("file://"))
        case "http":
            store = ic.http_store(opts=opts or None)
        case "s3":
            store = ic.s3_store(region=region, endpoint_url=endpoint_url,
                                allow_http=bool(endpoint_url and endpoint_url.startswith("http://")),
                                anonymous=anonymous, s3_compatible=bool(endpoint_url),
                                force_path_style=bool(endpoint_url))
        case "gcs":
            store = ic.gcs_store(opts=opts or None)
        case _:
            if not account:
                raise UsageError(f"azure container {prefix} needs an account")
            store = ic.storage.azure_store(account=account, config=opts or None)
    return ic.VirtualChunkContainer(prefix, store, name=name)
