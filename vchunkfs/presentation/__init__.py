"""Presentations: how a snapshot is shown as files.

A presentation maps a snapshot's Zarr hierarchy to file names, exact sizes and
file bytes. ``v3`` shows the snapshot as stored; ``v2``, ``v2-decoded`` and
``v3-decoded`` (module ``converted``) show the same snapshot to readers that
need Zarr v2 metadata or chunks without compression. The filesystem knows
presentations only through :class:`base.Presentation`. This package imports nothing itself, so that
``names`` stays importable without icechunk (see ``names``).
"""
