"""Small pictures for report.html: the anomaly-map view of an image's panel or, where no panel was drawn
(`cfa predict --panels defects`), the input image itself.

A thumbnail is named after its source file's path, size and time, so a second report of the same run
writes only what changed; files no image wants any more are removed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cfa_anomaly import viz
from cfa_anomaly.console import progress
from cfa_anomaly.data.images import read_rgb
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.io_utils import atomic_write

THUMB_SIZE = 128  # pixels on the longer side
JPEG_QUALITY = 80
SUFFIX = ".jpg"
MAP_VIEW = 1  # the panel's anomaly-map view (viz.render_panel: input | anomaly map | outline | truth)


@dataclass(frozen=True)
class ThumbSource:
    """Where an image's thumbnail comes from: its panel when there is one, else the input image."""

    panel: Path | None = None
    image: Path | None = None

    def chosen(self) -> Path | None:
        """The file the thumbnail is drawn from (None: neither exists)."""
        for path in (self.panel, self.image):
            if path is not None and path.is_file():
                return path
        return None


def thumbnail_name(path: Path) -> str:
    """The thumbnail's file name: a digest of the source's path, size and time, and of THUMB_SIZE."""
    info = path.stat()
    key = f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}|{THUMB_SIZE}|{MAP_VIEW}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20] + SUFFIX


def _picture(path: Path, is_panel: bool) -> Image.Image:
    """The panel's anomaly-map view (the whole picture when it is no render_panel panel), or the image."""
    if not is_panel:
        return Image.fromarray(read_rgb(path))
    with Image.open(path) as panel:
        box = viz.panel_view_box(MAP_VIEW, panel.size)
        return (panel.crop(box) if box else panel).convert("RGB")


def _write(source: ThumbSource, folder: Path) -> str | None:
    """Write one thumbnail unless it exists; its file name, or None when no source can be read."""
    path = source.chosen()
    if path is None:
        return None
    name = thumbnail_name(path)
    target = folder / name
    if target.is_file():
        return name
    try:
        picture = _picture(path, path == source.panel)
    except (DatasetError, OSError, ValueError):
        return None
    picture.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR)
    atomic_write(target, lambda handle: picture.save(handle, format="JPEG", quality=JPEG_QUALITY))
    return name


def write_thumbnails(sources: Sequence[ThumbSource], folder: Path,
                     workers: int | None = None) -> list[str | None]:
    """Each source's thumbnail in folder, drawn by a few threads (PIL decodes without the GIL): its file
    name, or None where neither picture can be read. Thumbnails of earlier reports that no source wants
    any more are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers, thread_name_prefix="cfa-thumbnail") as pool:
        names = list(progress(pool.map(lambda s: _write(s, folder), sources), desc="thumbnails", unit="image",
                              total=len(sources)))
    wanted = set(names)
    for stale in folder.glob(f"*{SUFFIX}"):
        if stale.name not in wanted:
            stale.unlink(missing_ok=True)
    return names
