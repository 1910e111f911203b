"""Presentations: how a snapshot is shown as files.

A presentation maps a snapshot's Zarr hierarchy to file names, exact sizes and
file bytes. ``zarr-v3`` shows the snapshot as stored; later presentations
(Zarr v2 metadata, decoded chunks) show the same snapshot to readers that need
another form. The filesystem knows presentations only through
:class:`Presentation`.
"""

from vchunkfs.presentation.base import Presentation, make_presentation, presentation_names
from vchunkfs.presentation.history import render_history

__all__ = ["Presentation", "make_presentation", "presentation_names", "render_history"]
