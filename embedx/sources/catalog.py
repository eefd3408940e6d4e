"""Data sources: ``folder:PATH``, ``csv:PATH``, ``digits`` and ``synthetic`` (seeded noise images, benchmarks) here;
``wds:PATTERN`` (WebDataset tar shards, ``embedx.sources.webdataset``) and ``parquet:PATTERN`` (image bytes or paths
in Parquet files, ``embedx.sources.parquet``) there. Each is a registered kind (``embedx.engine.kinds``): its name,
summary, options, opener and ``can_open(path)``; :func:`parse_source` reads a spec through the registry, and a bare
path is read by the one kind that recognises it.

A source is an ordered list of items (an id, a class label or a caption) plus a loader that turns an item
into a PIL image. Order is deterministic (sorted paths), so a resumed run sees the same items at the same
positions; :meth:`Source.fingerprint` hashes the listing so a resume on changed data is refused.
"""
from __future__ import annotations

import csv
import logging
import os

import numpy as np
from PIL import Image

from embedx.engine import kinds
from embedx.engine.kinds import Option
from embedx.errors import EmbedxError, one_line
from embedx.sources.base import Source, _pil_rgb  # Source: defined there, imported from here as before

log = logging.getLogger("embedx")

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


def _class_folder(path: str) -> bool:
    """A local folder with a subfolder (``folder:``'s layout: one a class)."""
    path = os.path.expanduser(path)
    return os.path.isdir(path) and any(e.is_dir() for e in os.scandir(path))


FOLDER_CLASSES = Option("classes", "the subfolders' class names: a file of one name a line (line k names the k-th "
                                   "sorted subfolder), of `FOLDER NAME` lines (ImageNet's LOC_synset_mapping.txt), "
                                   "or JSON (a list, {folder: name}, or imagenet_class_index.json) [default: the "
                                   "subfolder names; WordNet ids (n01440764) named in English]")


@kinds.register("source", "folder", usage="folder:PATH", can_open=_class_folder, options=(FOLDER_CLASSES,),
                summary="one subfolder per class (sorted; its name is the class name, WordNet-id folders such as "
                        "n01440764 named in English: `tench`), images anywhere below it; "
                        "`:names=cifar10|cifar100|imagenet1k|stl10` names the classes of a public set held as "
                        "folders in English, with its prompt template")
def _open_folder(arg: str, spec: str, classes: str | None = None) -> Source:
    path, sep, names = arg.rpartition(":names=")
    if not sep or "/" in names:
        path, names = arg, None
    return folder_source(os.path.expanduser(path), spec, names=names, classes=classes)


def folder_source(path: str, spec: str, names: str | None = None, classes: str | None = None) -> Source:
    """One subfolder per class (sorted); images anywhere below it. The class names: ``names``, a public set
    (:mod:`embedx.sources.public_sets`) whose English class names replace the subfolder names, which must be
    exactly that set's classes; or ``classes``, a classes file (:mod:`embedx.sources.folder_classes`); else the
    subfolder names, except that WordNet-id subfolders (an ImageNet-style tree) are named in English
    (:func:`embedx.sources.public_sets.wordnet_names`) with the template ``a photo of a {}.``."""
    if not os.path.isdir(path):
        raise EmbedxError(f"folder not found: {path}")
    folders = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not folders:
        raise EmbedxError(f"{path} has no class subfolders (expected one subfolder per class)")
    from embedx.sources import folder_classes, public_sets

    if names is not None and classes is not None:
        raise EmbedxError(f"names={names} and classes={classes} both name the classes of {path}: drop one",
                          param="classes")
    english = None
    if names is not None:
        english = public_sets.class_names(names, folders, path)
    elif classes is not None:
        english = folder_classes.read_folder_classes(classes, folders, path)
    else:
        auto = folder_classes.auto_names(folders, path)
        if auto is not None:
            english = auto[0]
            log.info(f"folder {path}: its {len(folders)} WordNet-id subfolders are named from {auto[1]} "
                     f"({folders[0]} -> {english[0]!r}); classes=FILE names them otherwise",
                     extra={"param": "classes"})
    ids, labels, excluded = [], [], []
    for c, name in enumerate(folders):
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
    extra = {} if english is None else {"default_template": public_sets.TEMPLATE}
    return Source(spec, ids, lambda i: _pil_rgb(os.path.join(path, ids[i])), classnames=english or folders,
                  labels=np.asarray(labels, dtype=np.int32), excluded=excluded, **extra)


def _csv_file(path: str) -> bool:
    return path.lower().endswith(".csv") and os.path.isfile(os.path.expanduser(path))


@kinds.register("source", "csv", usage="csv:PATH", can_open=_csv_file,
                summary="a CSV with columns `image` (paths relative to the CSV) and `label` (class names) or "
                        "`caption` (a paired store)")
def _open_csv(arg: str, spec: str) -> Source:
    return csv_source(os.path.expanduser(arg), spec)


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
    missing = [i for i, p in enumerate(files) if not os.path.isfile(p)]
    if len(missing) == len(files):
        raise EmbedxError(f"{path}: none of its {len(files)} image paths is a file (first: {files[0][:120]}); paths "
                          f"are relative to the CSV's folder")
    if missing:
        shown = ", ".join(ids[i][:80] for i in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                                                 else "")
        log.warning(f"{path}: {len(missing)} of its {len(files)} image paths ({len(missing) / len(files):.0%}) are "
                    f"not files: {shown} (paths are relative to the CSV's folder)")

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


DIGITS_OPTIONS = (
    Option("split", "`train`: the first 1,437 images, `test`: the last 360 (80/20 in file order); all 1,797 when "
                    "left out", "", in_spec=True, positional=True),
    Option("classes", "the digits kept, e.g. 3,5,8 or 0-4 (labels renumbered 0..k-1 in order)", "0-9", in_spec=True),
    Option("rotate", "every image turned by DEG degrees (a shifted domain)", 0, in_spec=True),
    Option("noise", "Gaussian pixel noise of std SIGMA*255 in [0, 10], seeded by the image", 0, in_spec=True),
)


def digits_source(spec: str = "digits") -> Source:
    """scikit-learn's digits as the spec ``digits[:train|:test][:classes=LIST][:rotate=DEG][:noise=SIGMA]`` asks
    (:func:`open_digits`)."""
    return open_digits(spec.partition(":")[2], spec, **kinds.spec_options(spec, DIGITS_OPTIONS, DIGITS_SPEC))


@kinds.register("source", "digits", usage=DIGITS_SPEC, options=DIGITS_OPTIONS,
                summary="scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), upscaled: a real "
                        "labelled image set that works offline")
def open_digits(arg: str, spec: str, *, split, classes, rotate, noise) -> Source:
    """The digits (the summary above), upscaled to ``DIGITS_SIZE`` pixels a side. ``digits:train`` /
    ``digits:test`` are its first 1,437 / last 360 images (the customary 80/20 split, disjoint writers' blocks in
    file order); ids keep the global index.

    Tasks of different difficulty from the same images: ``classes=3,5,8`` (or ``0-4``) keeps those digits,
    labels renumbered 0..k-1 in order, class names the digits; ``rotate=DEG`` turns every image (a shifted
    domain); ``noise=SIGMA`` adds Gaussian pixel noise of std SIGMA*255, seeded by the image's global index
    (the same image always gets the same noise). Example: ``digits:train:classes=0-4:rotate=90``.
    """
    from sklearn.datasets import load_digits

    if split not in DIGITS_SPLITS:
        raise EmbedxError(f"unknown digits split {split!r}; use {DIGITS_SPEC}")
    try:
        rotate, noise = float(rotate), float(noise)
    except ValueError:
        raise EmbedxError(f"digits rotate= and noise= take numbers, got {spec!r}") from None
    if not 0 <= noise <= 10:
        raise EmbedxError(f"digits noise={noise} must be in [0, 10] (pixel noise std / 255)")
    classes = _digit_classes(str(classes))
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
SYNTHETIC_OPTIONS = (
    Option("n", "the number of images", 10000, in_spec=True, positional=True),
    Option("size", "pixels per side", 224, in_spec=True),
    Option("classes", "labels: image i has label i mod C", 10, in_spec=True),
    Option("seed", "image i is drawn from a generator seeded by (S, i)", 0, in_spec=True),
)


def synthetic_source(spec: str = "synthetic") -> Source:
    """Seeded noise images as the spec ``synthetic[:N][:size=PX][:classes=C][:seed=S]`` asks
    (:func:`open_synthetic`)."""
    return open_synthetic(spec.partition(":")[2], spec, **kinds.spec_options(spec, SYNTHETIC_OPTIONS, SYNTHETIC_SPEC))


@kinds.register("source", "synthetic", usage=SYNTHETIC_SPEC, options=SYNTHETIC_OPTIONS,
                summary="seeded RGB noise images: no disk, the same everywhere (throughput and smoke checks)")
def open_synthetic(arg: str, spec: str, *, n, size, classes, seed) -> Source:
    """N (default 10,000) RGB noise images of PX x PX pixels (default 224: no resize work for most models),
    image i drawn from a generator seeded by (S, i), label i mod C (default 10), class names ``class k``.
    For throughput benchmarks and smoke tests: it costs no disk and reads the same everywhere."""
    try:
        n, size, classes, seed = (int(v) for v in (n, size, classes, seed))
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
    """The source ``spec`` names: ``KIND:ARG`` for a registered kind (``embedx.engine.kinds``; ``folder:PATH``,
    ``csv:PATH``, ``wds:PATTERN``, ``parquet:PATTERN``, ``digits[...]``, ``synthetic[...]``), or a bare path that
    exactly one kind recognises (``can_open``), read as ``KIND:PATH`` (the spec the store records).

    ``classes`` (a class-names file, one a line), ``caption_col``, ``label_col`` apply to ``wds:`` and ``parquet:``
    (``image_col`` to ``parquet:`` only): see :func:`embedx.sources.webdataset.wds_source` and
    :func:`embedx.sources.parquet.parquet_source`; the registry refuses them for the other kinds."""
    kind, spec = source_kind(spec)
    return kind.open(spec, {"classes": classes, "image_col": image_col, "caption_col": caption_col,
                            "label_col": label_col})


def source_kind(spec: str) -> tuple[kinds.Kind, str]:
    """(the kind ``spec`` names, the spec as ``KIND:ARG``): by its prefix, else the one kind whose ``can_open``
    recognises ``spec`` as a path. One line naming the kinds for anything else."""
    name, colon, rest = spec.partition(":")
    kind = kinds.get("source", name)
    if kind is not None:
        if kind.takes_path and not rest:
            raise EmbedxError(f"unknown data source {spec!r}: {name} needs a path ({kind.usage}); "
                              f"use {_usages()}")
        return kind, spec
    found = kinds.recognise("source", spec) if spec else []
    if len(found) == 1:
        return found[0], f"{found[0].name}:{spec}"
    if found:
        raise EmbedxError(f"{spec!r} can be read as {' or '.join(k.name for k in found)}: name the kind "
                          f"({', '.join(f'{k.name}:{spec}' for k in found)})")
    hint = _nearest(spec)
    raise EmbedxError(f"unknown data source {spec!r}{hint}" + ("" if hint.startswith(":") else f"; use {_usages()}"))


def _nearest(spec: str) -> str:
    """What ``spec`` (no kind's) was most likely meant as: ``folder:PATH`` for an existing folder (saying why it does
    not read as one as it is), ``KIND[:REST]`` for a misspelt kind (difflib), else " (no kind reads what is there)"
    for an existing path, or ""."""
    import difflib

    path = os.path.expanduser(spec) if spec else ""
    if path and os.path.isdir(path):
        try:
            entries = list(os.scandir(path))
        except OSError:
            entries = []
        images = sum(e.name.lower().endswith(IMAGE_EXTENSIONS) for e in entries)
        what = f"{images} images directly in it" if images else "no subfolder"
        return (f": did you mean folder:{spec}? (folder: reads one subfolder per class, named after its class; "
                f"{spec} holds {what})")
    if path and os.path.exists(path):
        return " (no kind reads what is there)"
    name, colon, rest = spec.partition(":")
    near = difflib.get_close_matches(name.lower(), list(kinds.names("source")), n=1, cutoff=0.6)
    if near:
        return f" (did you mean {near[0]}{colon}{rest}?)"
    return ""


def _usages() -> str:
    return ", ".join(k.usage for k in kinds.kinds("source").values())


def default_workers() -> int:
    """Workers for loading/preprocessing; on 2-core machines the forward pass needs both cores."""
    n = os.cpu_count() or 1
    return 0 if n <= 2 else min(8, n // 2)
