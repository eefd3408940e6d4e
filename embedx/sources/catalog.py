"""Data sources: ``folder:PATH``, ``csv:PATH``, ``wds:PATTERN`` (WebDataset tar shards, ``embedx.sources.webdataset``),
``parquet:PATTERN`` (image bytes or paths in Parquet files, ``embedx.sources.parquet``), ``digits`` and ``synthetic``
(seeded noise images, benchmarks).

A source is an ordered list of items (an id, a class label or a caption) plus a loader that turns an item
into a PIL image. Order is deterministic (sorted paths), so a resumed run sees the same items at the same
positions; :meth:`Source.fingerprint` hashes the listing so a resume on changed data is refused.
"""
from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image

from embedx.errors import EmbedxError, one_line
from embedx.sources.base import Source, _pil_rgb  # Source: defined there, imported from here as before

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DIGIT_NAMES = tuple(str(k) for k in range(10))  # as MNIST in the IIMM code
DIGITS_TEMPLATE = 'a photo of the number: "{}".'
DIGITS_SIZE = 64  # 8x8 digits are upscaled (nearest) to this many pixels per side


def _listed_name(rel: str) -> str | None:
    """``rel`` if it can be stored (valid UTF-8), else None (os.walk keeps undecodable bytes as surrogates)."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return None


def folder_source(path: str, spec: str) -> Source:
    """One subfolder per class (sorted); images anywhere below it."""
    if not os.path.isdir(path):
        raise EmbedxError(f"folder not found: {path}")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise EmbedxError(f"{path} has no class subfolders (expected one subfolder per class)")
    ids, labels, excluded = [], [], []
    for c, name in enumerate(classes):
        for root, dirs, files in os.walk(os.path.join(path, name)):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    full = os.path.join(root, f)
                    rel = _listed_name(os.path.relpath(full, path))
                    if rel is None:
                        excluded.append({"id": os.fsencode(os.path.relpath(full, path)).decode("utf-8",
                                                                                               "backslashreplace"),
                                         "error": "file name is not valid UTF-8 (rename it to embed it)"})
                    elif not os.path.isfile(full):
                        excluded.append({"id": rel, "error": "not a regular file"})
                    else:
                        ids.append(rel)
                        labels.append(c)
    if not ids:
        raise EmbedxError(f"{path} has class subfolders but no images ({', '.join(IMAGE_EXTENSIONS)})")
    return Source(spec, ids, lambda i: _pil_rgb(os.path.join(path, ids[i])), classnames=classes,
                  labels=np.asarray(labels, dtype=np.int32), excluded=excluded)


def csv_source(path: str, spec: str) -> Source:
    """Columns ``image`` and ``label`` (class names) or ``caption``; relative paths are resolved against
    the CSV's folder."""
    if not os.path.isfile(path):
        raise EmbedxError(f"csv file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = set(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise EmbedxError(f"{path} is not a UTF-8 CSV text file ({type(e).__name__}: "
                          f"{one_line(e, 120)})") from None
    if "image" not in cols or not ({"label", "caption"} & cols):
        raise EmbedxError(f"{path} needs a column 'image' and a column 'label' or 'caption' (has: "
                          f"{', '.join(sorted(cols)) or 'none'})")
    if not rows:
        raise EmbedxError(f"{path} has no rows")
    base = os.path.dirname(os.path.abspath(path))
    ids = [r["image"] or "" for r in rows]
    from embedx.fs.locations import location

    urls = [p for p in ids if not location(p).local]
    if urls:
        raise EmbedxError(f"{path}: {len(urls)} of {len(ids)} images are URLs (first: {urls[0][:80]}); embedx reads "
                          f"local files: download them first (e.g. with img2dataset)")
    files = [p if os.path.isabs(p) else os.path.join(base, p) for p in ids]
    if not any(os.path.isfile(p) for p in files):
        raise EmbedxError(f"{path}: none of its {len(files)} image paths is a file (first: {files[0][:120]}); paths "
                          f"are relative to the CSV's folder")

    def load(i: int) -> Image.Image:
        return _pil_rgb(files[i])

    if "label" in cols:
        names = [r["label"].strip() for r in rows]
        if any(not n for n in names):
            raise EmbedxError(f"{path}: empty label in row {names.index('') + 2}")
        classes = sorted(set(names))
        index = {c: k for k, c in enumerate(classes)}
        return Source(spec, ids, load, classnames=classes,
                      labels=np.asarray([index[n] for n in names], dtype=np.int32))
    return Source(spec, ids, load, captions=[r["caption"] for r in rows])


DIGITS_SPLITS = {"": slice(None), "train": slice(0, 1437), "test": slice(1437, None)}  # 80/20, in file order
DIGITS_SPEC = "digits[:train|:test][:classes=LIST][:rotate=DEG][:noise=SIGMA]"


def _digit_classes(value: str) -> list[int]:
    """``3,5,8`` or ``0-4`` or a mix (``0-2,7``): sorted, distinct digits."""
    out = set()
    for part in value.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise EmbedxError(f"digits classes={value!r}: use digits and ranges like 3,5,8 or 0-4") from None
        if not 0 <= a <= b <= 9:
            raise EmbedxError(f"digits classes={value!r}: digits are 0-9 (ranges low-high)")
        out.update(range(a, b + 1))
    if len(out) < 2:
        raise EmbedxError(f"digits classes={value!r}: a task needs at least 2 classes")
    return sorted(out)


def _digits_options(spec: str) -> tuple[str, list[int], float, float]:
    """(split, classes, rotate degrees, noise sigma) of a digits spec; one-line errors for anything else."""
    parts = spec.split(":")[1:]
    split = parts.pop(0) if parts and "=" not in parts[0] else ""
    if split not in DIGITS_SPLITS:
        raise EmbedxError(f"unknown digits split {split!r}; use {DIGITS_SPEC}")
    opts = {"classes": "0-9", "rotate": "0", "noise": "0"}
    for p in parts:
        key, eq, value = p.partition("=")
        if not eq or key not in opts:
            raise EmbedxError(f"unknown digits option {p!r}; use {DIGITS_SPEC}")
        opts[key] = value
    try:
        rotate, noise = float(opts["rotate"]), float(opts["noise"])
    except ValueError:
        raise EmbedxError(f"digits rotate= and noise= take numbers, got {spec!r}") from None
    if not 0 <= noise <= 10:
        raise EmbedxError(f"digits noise={noise} must be in [0, 10] (pixel noise std / 255)")
    return split, _digit_classes(opts["classes"]), rotate, noise


def digits_source(spec: str = "digits") -> Source:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), upscaled: a real labelled
    image set that works offline. ``digits:train`` / ``digits:test`` are its first 1,437 / last 360 images
    (the customary 80/20 split, disjoint writers' blocks in file order); ids keep the global index.

    Tasks of different difficulty from the same images: ``classes=3,5,8`` (or ``0-4``) keeps those digits,
    labels renumbered 0..k-1 in order, class names the digits; ``rotate=DEG`` turns every image (a shifted
    domain); ``noise=SIGMA`` adds Gaussian pixel noise of std SIGMA*255, seeded by the image's global index
    (the same image always gets the same noise). Example: ``digits:train:classes=0-4:rotate=90``.
    """
    from sklearn.datasets import load_digits

    split, classes, rotate, noise = _digits_options(spec)
    d = load_digits()
    keep = np.arange(len(d.target))[DIGITS_SPLITS[split]]
    keep = keep[np.isin(d.target[keep], classes)]
    pixels = np.clip(d.images[keep] * (255.0 / 16.0), 0, 255).astype(np.uint8)
    relabel = np.full(10, -1, np.int32)
    relabel[classes] = np.arange(len(classes), dtype=np.int32)

    def load(i: int) -> Image.Image:
        im = Image.fromarray(255 - pixels[i], mode="L")  # dark digit on a light background
        im = im.resize((DIGITS_SIZE, DIGITS_SIZE), Image.NEAREST)
        if rotate % 360:
            im = im.rotate(rotate, resample=Image.BILINEAR, fillcolor=255)
        if noise:
            g = np.random.default_rng(int(keep[i])).standard_normal(im.size[::-1]) * (noise * 255.0)
            im = Image.fromarray(np.clip(np.asarray(im, np.float64) + g, 0, 255).astype(np.uint8), mode="L")
        return im.convert("RGB")

    ids = [f"digits:{i}" for i in keep]
    return Source(spec, ids, load, classnames=[DIGIT_NAMES[k] for k in classes],
                  labels=relabel[d.target[keep]], default_template=DIGITS_TEMPLATE)


SYNTHETIC_SPEC = "synthetic[:N][:size=PX][:classes=C][:seed=S]"


def synthetic_source(spec: str = "synthetic") -> Source:
    """N (default 10,000) RGB noise images of PX x PX pixels (default 224: no resize work for most models),
    image i drawn from a generator seeded by (S, i), label i mod C (default 10), class names ``class k``.
    For throughput benchmarks and smoke tests: it costs no disk and reads the same everywhere."""
    parts = spec.split(":")[1:]
    opts = {"n": "10000", "size": "224", "classes": "10", "seed": "0"}
    if parts and "=" not in parts[0]:
        opts["n"] = parts.pop(0)
    for p in parts:
        key, eq, value = p.partition("=")
        if not eq or key not in opts or key == "n":
            raise EmbedxError(f"unknown synthetic option {p!r}; use {SYNTHETIC_SPEC}")
        opts[key] = value
    try:
        n, size, classes, seed = (int(opts[k]) for k in ("n", "size", "classes", "seed"))
    except ValueError:
        raise EmbedxError(f"synthetic options take integers, got {spec!r}; use {SYNTHETIC_SPEC}") from None
    if n < 1 or size < 1 or classes < 1 or seed < 0:
        raise EmbedxError(f"synthetic N, size and classes must be positive and seed >= 0, got {spec!r}")

    def load(i: int) -> Image.Image:
        rgb = np.random.default_rng([seed, i]).integers(0, 256, (size, size, 3), dtype=np.uint8)
        return Image.fromarray(rgb, mode="RGB")

    return Source(spec, [f"synthetic:{i}" for i in range(n)], load, classnames=[f"class {k}" for k in range(classes)],
                  labels=(np.arange(n) % classes).astype(np.int32))


def parse_source(spec: str, *, classes: str | None = None, image_col: str | None = None,
                 caption_col: str | None = None, label_col: str | None = None) -> Source:
    """``folder:PATH`` | ``csv:PATH`` | ``wds:PATTERN`` | ``parquet:PATTERN`` |
    ``digits[:train|:test][:classes=..][:rotate=..][:noise=..]`` | ``synthetic[:N][:size=PX][:classes=C][:seed=S]``.

    ``classes`` (a class-names file, one a line), ``caption_col``, ``label_col`` apply to ``wds:`` and ``parquet:``
    (``image_col`` to ``parquet:`` only): see :func:`embedx.sources.webdataset.wds_source` and
    :func:`embedx.sources.parquet.parquet_source`."""
    kind, _, arg = spec.partition(":")
    opts = {"classes": classes, "image_col": image_col, "caption_col": caption_col, "label_col": label_col}
    given = [k for k, v in opts.items() if v]
    takes = {"wds": ("classes", "caption_col", "label_col"), "parquet": tuple(opts)}.get(kind, ())
    if any(k not in takes for k in given):
        k = next(k for k in given if k not in takes)
        raise EmbedxError(f"{k} applies to "
                          f"{'parquet: sources' if k == 'image_col' else 'wds: and parquet: sources'}, not {spec!r}",
                          param=k)
    if kind == "wds" and arg:
        from embedx.sources.webdataset import wds_source

        return wds_source(arg, spec, classes=classes, caption_col=caption_col, label_col=label_col)
    if kind == "parquet" and arg:
        from embedx.sources.parquet import parquet_source

        return parquet_source(arg, spec, **opts)
    if kind == "digits":
        return digits_source(spec)
    if kind == "synthetic":
        return synthetic_source(spec)
    if kind == "folder" and arg:
        return folder_source(os.path.expanduser(arg), spec)
    if kind == "csv" and arg:
        return csv_source(os.path.expanduser(arg), spec)
    raise EmbedxError(f"unknown data source {spec!r}; use folder:PATH, csv:PATH, wds:PATTERN, parquet:PATTERN, "
                      f"{DIGITS_SPEC} or {SYNTHETIC_SPEC}")


def default_workers() -> int:
    """Workers for loading/preprocessing; on 2-core machines the forward pass needs both cores."""
    n = os.cpu_count() or 1
    return 0 if n <= 2 else min(8, n // 2)
