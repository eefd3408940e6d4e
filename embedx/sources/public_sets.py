"""English class names and a default prompt template for the common public sets, for users who hold them as
``folder:`` trees: ``folder:PATH:names=SET`` (SET one of :data:`SETS`) maps the folder's sorted subfolder names
onto the set's class names, the way CLIP_benchmark names them.

- ``cifar10``, ``stl10``: the 10 class names, which are the folder names (sorted = the sets' label order);
- ``cifar100``: the 100 fine labels' folder names (``aquarium_fish``, sorted = the label order), named with spaces
  (``aquarium fish``);
- ``imagenet1k``: the 1,000 WordNet ids (``n01440764`` ...; timm's ``imagenet_synsets.txt``), which sorted are the
  label order, named by open_clip's ``IMAGENET_CLASSNAMES`` (read from ``open_clip/zero_shot_metadata.py``, a data
  file, without importing open_clip).

A subfolder name matches when equal after lower-casing and writing spaces and hyphens as ``_``. A folder whose
subfolders are not exactly the set's classes is refused in one line naming what is missing or extra.
"""
from __future__ import annotations

import functools
import importlib.util
import os

from embedx.errors import EmbedxError

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10 = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
CIFAR100 = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm")
TEMPLATE = "a photo of a {}."
SETS = ("cifar10", "cifar100", "imagenet1k", "stl10")
TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet1k": "ImageNet-1k", "stl10": "STL-10"}


def _package_file(module: str, *parts: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedxError(f"names=imagenet1k needs the package {module} (pip install {module})")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise EmbedxError(f"names=imagenet1k: {path} not found in the installed {module}")
    return path


@functools.lru_cache(maxsize=1)
def imagenet() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the 1,000 sorted WordNet ids, open_clip's ImageNet class names in that order)."""
    with open(_package_file("timm", "data", "_info", "imagenet_synsets.txt"), encoding="utf-8") as f:
        wnids = tuple(line.strip() for line in f if line.strip())
    spec = importlib.util.spec_from_file_location("_embedx_zero_shot_metadata",
                                                  _package_file("open_clip", "zero_shot_metadata.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = tuple(module.IMAGENET_CLASSNAMES)
    if len(wnids) != 1000 or len(names) != 1000 or list(wnids) != sorted(wnids):
        raise EmbedxError(f"names=imagenet1k: expected 1,000 sorted WordNet ids and 1,000 names, found "
                          f"{len(wnids)} and {len(names)}")
    return wnids, names


def folder_ids(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the set's subfolder names in label order, its English class names) for ``names=name``."""
    if name == "imagenet1k":
        return imagenet()
    if name == "cifar100":
        return CIFAR100, tuple(c.replace("_", " ") for c in CIFAR100)
    if name in ("cifar10", "stl10"):
        ids = CIFAR10 if name == "cifar10" else STL10
        return ids, ids
    raise EmbedxError(f"unknown names={name!r}; use one of {', '.join(SETS)}", param="names")


def _key(folder: str) -> str:
    return folder.strip().lower().replace(" ", "_").replace("-", "_")


def _few(items, n: int = 5) -> str:
    items = sorted(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def class_names(name: str, folders: list[str], path: str) -> list[str]:
    """The English names of ``folders`` (sorted subfolder names of ``path``), which must be exactly the classes of
    the set ``name``; one line naming the missing and extra ones otherwise."""
    ids, names = folder_ids(name)
    english = dict(zip((_key(i) for i in ids), names))
    keys = [_key(f) for f in folders]
    missing, extra = set(english) - set(keys), set(keys) - set(english)
    if missing or extra or len(keys) != len(english):
        why = "; ".join(w for w in (f"missing {_few(missing)}" if missing else "",
                                    f"not {TITLES[name]} classes: {_few(extra)}" if extra else "") if w)
        raise EmbedxError(f"folder {path}: its {len(folders)} subfolders are not the {len(ids)} {TITLES[name]} "
                          f"classes (names={name}): {why or 'two subfolders name the same class'}", param="names")
    return [english[k] for k in keys]
