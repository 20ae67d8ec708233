"""Glyph sources rendered with FreeType (PIL ``ImageFont``) from Debian font packages.

- ``load_cjk_characters``: class = one CJK unified ideograph, views = typefaces of different designs
  (Noto Sans/Serif CJK, AR PL UKai/UMing, WenQuanYi, IPA, VL Gothic, Hanazono).
- ``load_hangul_syllables``: class = one precomposed Hangul syllable, views = Korean typefaces (Nanum,
  Un fonts, Baekmuk, Noto CJK KR).
- ``load_latin_typefaces``: class = one typeface (a font file covering basic Latin), views = different
  pseudo-words set in it: retrieval must recognise the design, not the letters.

Coverage is read from each font's character map (fontTools) and checked for ink (FreeType), so a class
only uses typefaces that really draw it (no fallback boxes, no blank images).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hf_distill.data.sources import SourceUnavailable, ViewSource, fit_on_white

logger = logging.getLogger(__name__)

FONT_ROOTS = tuple(
    Path(path) for path in os.environ.get("HF_DISTILL_FONT_DIRS", "/usr/share/fonts").split(os.pathsep)
)


@dataclass(frozen=True)
class Face:
    """One face of a font file: ``path`` relative to a font root, ``index`` inside a collection (.ttc)."""

    name: str
    path: str
    index: int = 0


# Typefaces of distinct designs (regional variants of one family draw most ideographs the same: one each).
CJK_FACES = (
    Face("Noto Sans CJK SC", "opentype/noto/NotoSansCJK-Regular.ttc", 2),
    Face("Noto Sans CJK SC Bold", "opentype/noto/NotoSansCJK-Bold.ttc", 2),
    Face("Noto Serif CJK SC", "opentype/noto/NotoSerifCJK-Regular.ttc", 2),
    Face("Noto Serif CJK JP Bold", "opentype/noto/NotoSerifCJK-Bold.ttc", 0),
    Face("AR PL UKai CN", "truetype/arphic/ukai.ttc", 0),
    Face("AR PL UMing TW", "truetype/arphic/uming.ttc", 2),
    Face("WenQuanYi Micro Hei", "truetype/wqy/wqy-microhei.ttc", 0),
    Face("WenQuanYi Zen Hei", "truetype/wqy/wqy-zenhei.ttc", 0),
    Face("IPAGothic", "opentype/ipafont-gothic/ipag.ttf"),
    Face("IPAMincho", "opentype/ipafont-mincho/ipam.ttf"),
    Face("VL Gothic", "truetype/vlgothic/VL-Gothic-Regular.ttf"),
    Face("HanaMinA", "truetype/hanazono/HanaMinA.ttf"),
)
HANGUL_FACES = (
    Face("NanumGothic", "truetype/nanum/NanumGothic.ttf"),
    Face("NanumGothic Bold", "truetype/nanum/NanumGothicBold.ttf"),
    Face("NanumBarunGothic", "truetype/nanum/NanumBarunGothic.ttf"),
    Face("NanumMyeongjo", "truetype/nanum/NanumMyeongjo.ttf"),
    Face("NanumMyeongjo Bold", "truetype/nanum/NanumMyeongjoBold.ttf"),
    Face("NanumSquare", "truetype/nanum/NanumSquareR.ttf"),
    Face("NanumSquareRound Bold", "truetype/nanum/NanumSquareRoundB.ttf"),
    Face("NanumGothicCoding", "truetype/nanum/NanumGothicCoding.ttf"),
    Face("Un Batang", "truetype/unfonts-core/UnBatang.ttf"),
    Face("Un Dotum", "truetype/unfonts-core/UnDotum.ttf"),
    Face("Un Dinaru", "truetype/unfonts-core/UnDinaru.ttf"),
    Face("Un Graphic", "truetype/unfonts-core/UnGraphic.ttf"),
    Face("Un Gungseo", "truetype/unfonts-core/UnGungseo.ttf"),
    Face("Un Pilgi", "truetype/unfonts-core/UnPilgi.ttf"),
    Face("Baekmuk Batang", "truetype/baekmuk/batang.ttf"),
    Face("Baekmuk Dotum", "truetype/baekmuk/dotum.ttf"),
    Face("Baekmuk Gulim", "truetype/baekmuk/gulim.ttf"),
    Face("Baekmuk Headline", "truetype/baekmuk/hline.ttf"),
    Face("Noto Sans CJK KR", "opentype/noto/NotoSansCJK-Regular.ttc", 1),
    Face("Noto Serif CJK KR Bold", "opentype/noto/NotoSerifCJK-Bold.ttc", 1),
)
# Fonts of original Latin designs. TeX Gyre is left out on purpose: its families are derivatives of the URW
# base 35 (Termes = Nimbus Roman, Heros = Nimbus Sans ...), two labels for one design; so are Noto's Display
# optical sizes; symbol, dingbat and math fonts are no typefaces of letters.
LATIN_FONT_GLOBS = (
    "truetype/dejavu/DejaVu*.ttf",
    "opentype/urw-base35/*.otf",
    "truetype/noto/NotoSans-*.ttf",
    "truetype/noto/NotoSerif-*.ttf",
)
LATIN_EXCLUDED = ("Math", "Symbol", "D050000L")
LATIN_PROBE = "AaBbGgQqRrSsYy0123"
CJK_RANGE = (0x4E00, 0x9FFF)
HANGUL_RANGE = (0xAC00, 0xD7A3)


def _resolve(face: Face, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        path = root / face.path
        if path.is_file():
            return path
    return None


def _codepoints(path: Path, index: int) -> set[int]:
    from fontTools.ttLib import TTFont

    with TTFont(str(path), fontNumber=index, lazy=True) as font:
        return set((font.getBestCmap() or {}).keys())


def _inked(path: Path, index: int, low: int, high: int) -> set[int]:
    """Code points in ``[low, high]`` that the face maps to a glyph with ink.

    Some fonts map a whole block but draw only part of it (NanumSquare and Baekmuk Dotum map all 11,172
    Hangul syllables and leave most of them empty); an empty glyph would be a blank image of that class.
    """
    font = ImageFont.truetype(str(path), size=32, index=index, layout_engine=ImageFont.Layout.BASIC)
    inked = set()
    for code in _codepoints(path, index):
        if low <= code <= high:
            _, top, _, bottom = font.getbbox(chr(code))
            if bottom > top:
                inked.add(code)
    return inked


class _FontCache:
    """``ImageFont`` objects per thread (a FreeType face must not be used by two threads at once)."""

    def __init__(self, faces: Sequence[tuple[Path, int]]):
        self.faces = list(faces)
        self.local = threading.local()

    def get(self, view: int, size: int) -> ImageFont.FreeTypeFont:
        fonts = getattr(self.local, "fonts", None)
        if fonts is None:
            fonts = self.local.fonts = {}
        if (view, size) not in fonts:
            path, index = self.faces[view]
            # The basic layout (no HarfBuzz/raqm): the same pixels whether or not libraqm is installed.
            fonts[view, size] = ImageFont.truetype(
                str(path), size=size, index=index, layout_engine=ImageFont.Layout.BASIC
            )
        return fonts[view, size]


def _draw_glyph(font: ImageFont.FreeTypeFont, char: str, size: int) -> Image.Image:
    """One character at the font's own scale, its ink centred in a white ``size`` square (RGB)."""
    canvas = Image.new("L", (size, size), 255)
    left, top, right, bottom = font.getbbox(char)
    ImageDraw.Draw(canvas).text(
        ((size - left - right) / 2, (size - top - bottom) / 2), char, font=font, fill=0
    )
    return canvas.convert("RGB")


def _draw_text(font: ImageFont.FreeTypeFont, text: str, size: int, margin: int) -> Image.Image:
    """Black text on white, cropped to its ink and fitted (aspect kept) into a ``size`` square."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox(
        (0, 0), text, font=font, align="center"
    )
    width, height = max(1, int(np.ceil(right - left))), max(1, int(np.ceil(bottom - top)))
    canvas = Image.new("L", (width + 4, height + 4), 255)
    ImageDraw.Draw(canvas).multiline_text((2 - left, 2 - top), text, font=font, fill=0, align="center")
    return fit_on_white(canvas, size, margin)


def _glyph_source(
    faces: Sequence[Face], code_range: tuple[int, int], what: str, packages: str, roots: Sequence[Path] | None
) -> ViewSource:
    roots = FONT_ROOTS if roots is None else roots
    found = [(face, _resolve(face, roots)) for face in faces]
    available = [(face, path) for face, path in found if path is not None]
    missing = [face.name for face, path in found if path is None]
    if missing:
        logger.info("%s: typefaces not installed, skipped: %s", what, ", ".join(missing))
    if len(available) < 3:
        raise SourceUnavailable(
            f"{what}: only {len(available)} of the {len(faces)} typefaces are installed under "
            f"{[str(r) for r in roots]} (install them with `apt-get install -y {packages}`)"
        )
    low, high = code_range
    coverage = [_inked(path, face.index, low, high) for face, path in available]
    codes = sorted(set().union(*coverage))
    views = [tuple(v for v, covered in enumerate(coverage) if code in covered) for code in codes]
    cache = _FontCache([(path, face.index) for face, path in available])

    def render(label: int, view: int, size: int) -> Image.Image:
        # An em of 85 % of the image: ideographs keep their relative size and stroke weight.
        return _draw_glyph(cache.get(view, round(size * 0.85)), chr(codes[label]), size)

    return ViewSource(
        class_names=tuple(f"U+{code:04X} {chr(code)}" for code in codes),
        views=views,
        view_names=tuple(face.name for face, _ in available),
        render=render,
    )


def load_cjk_characters(roots: Sequence[Path] | None = None) -> ViewSource:
    """CJK unified ideographs (U+4E00-U+9FFF) in the typefaces of ``CJK_FACES`` that are installed."""
    return _glyph_source(
        CJK_FACES,
        CJK_RANGE,
        "CJK characters",
        "fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-microhei fonts-wqy-zenhei "
        "fonts-ipafont-gothic fonts-ipafont-mincho fonts-vlgothic fonts-hanazono",
        roots,
    )


def load_hangul_syllables(roots: Sequence[Path] | None = None) -> ViewSource:
    """The 11,172 precomposed Hangul syllables in the typefaces of ``HANGUL_FACES`` that are installed."""
    return _glyph_source(
        HANGUL_FACES,
        HANGUL_RANGE,
        "Hangul syllables",
        "fonts-nanum fonts-unfonts-core fonts-baekmuk fonts-noto-cjk",
        roots,
    )


def pseudo_words(count: int, seed: int = 0) -> list[str]:
    """``count`` two-line strings of random letters and digits (3 + 3 characters), fixed by ``seed``."""
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789&?"))
    rng = np.random.default_rng(seed)
    letters = alphabet[rng.integers(0, len(alphabet), size=(count, 6))]
    return ["".join(row[:3]) + "\n" + "".join(row[3:]) for row in letters]


def load_latin_typefaces(roots: Sequence[Path] | None = None, num_words: int = 64) -> ViewSource:
    """Typefaces (font files matching ``LATIN_FONT_GLOBS``) that draw basic Latin; views = ``pseudo_words``."""
    roots = FONT_ROOTS if roots is None else roots
    fonts = []
    for root in roots:
        for pattern in LATIN_FONT_GLOBS:
            for path in sorted(root.glob(pattern)):
                if any(word in path.stem for word in LATIN_EXCLUDED):
                    continue
                if all(ord(c) in _codepoints(path, 0) for c in LATIN_PROBE):
                    fonts.append(path)
    if len(fonts) < 10:
        raise SourceUnavailable(
            f"Latin typefaces: only {len(fonts)} fonts match {list(LATIN_FONT_GLOBS)} under {[str(r) for r in roots]} "
            "(install them with `apt-get install -y fonts-noto-core fonts-urw-base35 fonts-dejavu-core`)"
        )
    words = pseudo_words(num_words)
    cache = _FontCache([(path, 0) for path in fonts])

    def render(label: int, view: int, size: int) -> Image.Image:
        return _draw_text(cache.get(label, 40), words[view], size, margin=max(1, size // 16))

    return ViewSource(
        class_names=tuple(path.stem for path in fonts),
        views=[tuple(range(num_words))] * len(fonts),
        view_names=tuple(word.replace("\n", "/") for word in words),
        render=render,
    )
