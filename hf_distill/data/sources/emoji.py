"""Emoji and flag artwork from npm packages (installed by ``scripts/install_assets.sh`` into ``.assets/npm``).

- ``load_emoji``: class = one emoji (skin-tone variants and flags left out), views = its artwork by
  different vendors: Google (Noto, Apache-2.0) and Twitter (Twemoji, CC BY 4.0) 64 px PNG from
  ``emoji-datasource-google`` / ``-twitter``, and OpenMoji (CC BY-SA 4.0) SVG. Names come from
  ``emoji-datasource``'s ``emoji.json``. Apple and Facebook artwork is proprietary and never used.
- ``load_flags``: class = one country or region, views = ``flag-icons`` (MIT) 4x3 and 1x1 SVG,
  ``svg-country-flags`` (public domain) PNG, and the Google, Twitter and OpenMoji flag emoji.

SVG files are rasterised with ``rsvg-convert`` (Debian ``librsvg2-bin``); without it the SVG views are
skipped with a logged message.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from hf_distill.data.sources import SourceUnavailable, ViewSource, fit_on_white, npm_package

logger = logging.getLogger(__name__)

EMOJI_VENDORS = ("google", "twitter")
REGIONAL_INDICATOR_A = 0x1F1E6
TAG_BASE = 0xE0000


def rasterise_svg(path: Path, size: int) -> Image.Image:
    """An SVG file drawn by ``rsvg-convert`` into a ``size`` box (aspect kept), as an RGBA image."""
    result = subprocess.run(
        ["rsvg-convert", "--width", str(size), "--height", str(size), "--keep-aspect-ratio", str(path)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise ValueError(
            f"rsvg-convert could not draw {path}: {result.stderr.decode(errors='replace').strip()}"
        )
    with Image.open(io.BytesIO(result.stdout)) as image:
        return image.convert("RGBA")


def _png(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGBA")


def _have_rsvg(what: str) -> bool:
    if shutil.which("rsvg-convert"):
        return True
    logger.info("%s: rsvg-convert not found (apt-get install -y librsvg2-bin); SVG views skipped", what)
    return False


def _emoji_table(npm_dir: Path | None) -> list[dict]:
    with open(npm_package("emoji-datasource", npm_dir) / "emoji.json") as handle:
        return json.load(handle)


def _vendor_dirs(npm_dir: Path | None) -> dict[str, Path]:
    dirs = {}
    for vendor in EMOJI_VENDORS:
        try:
            dirs[vendor] = npm_package(f"emoji-datasource-{vendor}", npm_dir) / "img" / vendor / "64"
        except SourceUnavailable as error:
            logger.info("emoji: %s", error)
    return dirs


def _openmoji_dir(npm_dir: Path | None, what: str) -> Path | None:
    try:
        folder = npm_package("openmoji", npm_dir) / "color" / "svg"
    except SourceUnavailable as error:
        logger.info("%s: %s", what, error)
        return None
    return folder if _have_rsvg(what) else None


def _view_source(
    names: list[str], files: list[list[tuple[str, Path]]], view_names: tuple[str, ...], margin: int
) -> ViewSource:
    """Classes whose views are image files (PNG, or SVG drawn by rsvg-convert), fitted on white."""
    index = {name: i for i, name in enumerate(view_names)}
    table = [{index[view]: path for view, path in views} for views in files]

    def render(label: int, view: int, size: int) -> Image.Image:
        path = table[label][view]
        inner = size - 2 * margin
        image = rasterise_svg(path, inner) if path.suffix == ".svg" else _png(path)
        return fit_on_white(image, size, margin)

    return ViewSource(
        class_names=tuple(names),
        views=[tuple(sorted(views)) for views in table],
        view_names=view_names,
        render=render,
    )


def load_emoji(npm_dir: Path | None = None, min_views: int = 2) -> ViewSource:
    """Emoji with at least ``min_views`` vendors' artwork (no skin-tone variants, no flags, no components)."""
    entries = _emoji_table(npm_dir)
    vendors = _vendor_dirs(npm_dir)
    openmoji = _openmoji_dir(npm_dir, "emoji")
    names, files = [], []
    for entry in sorted(entries, key=lambda e: e["sort_order"]):
        if entry["category"] in ("Flags", "Component"):
            continue
        views: list[tuple[str, Path]] = []
        for vendor, folder in vendors.items():
            if entry.get(f"has_img_{vendor}") and (folder / entry["image"]).is_file():
                views.append((vendor, folder / entry["image"]))
        if openmoji is not None:
            for code in (entry["unified"], entry.get("non_qualified") or ""):
                if code and (openmoji / f"{code}.svg").is_file():
                    views.append(("openmoji", openmoji / f"{code}.svg"))
                    break
        if len(views) >= min_views:
            names.append((entry.get("name") or entry["short_name"]).lower())
            files.append(views)
    if len(names) < 10:
        raise SourceUnavailable(
            "emoji: fewer than 10 emoji with two vendors' artwork; install the npm packages emoji-datasource, "
            "emoji-datasource-google, emoji-datasource-twitter (and openmoji) with scripts/install_assets.sh"
        )
    return _view_source(names, files, (*EMOJI_VENDORS, "openmoji"), margin=2)


def _flag_code(unified: str) -> str | None:
    """``1F1EB-1F1F7`` -> ``fr``; ``1F3F4-E0067-E0062-E0065-E006E-E0067-E007F`` -> ``gb-eng``."""
    points = [int(part, 16) for part in unified.split("-")]
    if len(points) == 2 and all(0 <= p - REGIONAL_INDICATOR_A < 26 for p in points):
        return "".join(chr(ord("a") + p - REGIONAL_INDICATOR_A) for p in points)
    if points[0] == 0x1F3F4 and len(points) > 3 and points[-1] == 0xE007F:
        tag = "".join(chr(p - TAG_BASE) for p in points[1:-1])
        return f"{tag[:2]}-{tag[2:]}"
    return None


def load_flags(npm_dir: Path | None = None, min_views: int = 3) -> ViewSource:
    """Country and region flags with at least ``min_views`` renderings (codes as in ``flag-icons``)."""
    flag_icons = npm_package("flag-icons", npm_dir) / "flags"
    codes = sorted(path.stem for path in (flag_icons / "4x3").glob("*.svg"))
    sources: dict[str, Callable[[str], Path | None]] = {}
    if _have_rsvg("flags"):
        sources["flag-icons 4x3"] = lambda code: flag_icons / "4x3" / f"{code}.svg"
        sources["flag-icons 1x1"] = lambda code: flag_icons / "1x1" / f"{code}.svg"
    try:
        country_flags = npm_package("svg-country-flags", npm_dir) / "png100px"
        sources["svg-country-flags"] = lambda code: country_flags / f"{code}.png"
    except SourceUnavailable as error:
        logger.info("flags: %s", error)
    emoji_files: dict[str, dict[str, Path]] = {}
    try:
        entries = [e for e in _emoji_table(npm_dir) if e["category"] == "Flags"]
    except SourceUnavailable as error:
        logger.info("flags: %s", error)
        entries = []
    vendors = _vendor_dirs(npm_dir) if entries else {}
    openmoji = _openmoji_dir(npm_dir, "flags") if entries else None
    for entry in entries:
        code = _flag_code(entry["unified"])
        if code is None:
            continue
        for vendor, folder in vendors.items():
            emoji_files.setdefault(vendor, {})[code] = folder / entry["image"]
        if openmoji is not None:
            emoji_files.setdefault("openmoji", {})[code] = openmoji / f"{entry['unified']}.svg"
    for vendor, table in emoji_files.items():
        sources[f"{vendor} emoji"] = table.get
    names, files = [], []
    for code in codes:
        views = [(view, find(code)) for view, find in sources.items()]
        views = [(view, path) for view, path in views if path is not None and path.is_file()]
        if len(views) >= min_views:
            names.append(code)
            files.append(views)
    if len(names) < 10:
        raise SourceUnavailable(
            f"flags: fewer than 10 flags with {min_views}+ renderings; install the npm packages flag-icons, "
            "svg-country-flags, emoji-datasource-google/-twitter and librsvg2-bin with scripts/install_assets.sh"
        )
    return _view_source(names, files, tuple(sources), margin=2)
