"""OpenClipArt image-caption pairs (Debian ``openclipart-png`` + ``openclipart-svg``, public domain).

Each PNG under ``ROOT/png`` has an SVG at the same relative path under ``ROOT/svg``. Its caption is the SVG's first
``<dc:title>`` followed by up to 8 ``<rdf:li>`` keywords of its ``<dc:subject>``. PNGs are visited in sorted path
order; a PNG whose bytes (MD5) were seen before is dropped. Images are composited on white (open_clip drops alpha);
an image Pillow refuses (over its decompression-bomb limit, truncated, unreadable) is skipped.
"""
from __future__ import annotations

import hashlib
import html
import os
import re
import warnings
from dataclasses import dataclass

from embedx.errors import EmbedxError

ROOT = "/usr/share/openclipart"
MAX_KEYWORDS = 8
_TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.S)
_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.S)
_LI = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.S)


@dataclass(frozen=True)
class Pair:
    png: str
    caption: str
    category: str  # the top-level folder (animals, food, ...)


def _clean(s: str) -> str:
    return " ".join(html.unescape(s).split())


def caption(svg_text: str, fallback: str) -> str:
    """``title, kw1, kw2, ...`` (at most :data:`MAX_KEYWORDS` keywords, empty ones dropped)."""
    m = _TITLE.search(svg_text)
    title = _clean(m.group(1)) if m else ""
    title = title or fallback.replace("_", " ")
    subject = _SUBJECT.search(svg_text)
    kws = [k for k in (_clean(x) for x in _LI.findall(subject.group(1) if subject else "")) if k][:MAX_KEYWORDS]
    return ", ".join([title] + kws)


def find_pairs(root: str = ROOT) -> list[Pair]:
    """The de-duplicated pairs, in sorted path order."""
    png_root, svg_root = os.path.join(root, "png"), os.path.join(root, "svg")
    if not os.path.isdir(png_root) or not os.path.isdir(svg_root):
        raise EmbedxError(f"no OpenClipArt at {root}: apt-get install openclipart-png openclipart-svg",
                          param="root")
    pngs = sorted(os.path.join(d, f) for d, _, fs in os.walk(png_root) for f in fs if f.endswith(".png"))
    seen, out = set(), []
    for p in pngs:
        with open(p, "rb") as f:
            md5 = hashlib.md5(f.read()).hexdigest()
        if md5 in seen:
            continue
        seen.add(md5)
        rel = os.path.relpath(p, png_root)
        svg = os.path.join(svg_root, os.path.splitext(rel)[0] + ".svg")
        try:
            with open(svg, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        stem = os.path.splitext(os.path.basename(p))[0]
        out.append(Pair(p, caption(text, stem), rel.split(os.sep)[0]))
    return out


def load_rgb(path: str):
    """The image composited on white as RGB, or None when Pillow refuses it (its size guard counts as refusal)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                rgba = im.convert("RGBA")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
