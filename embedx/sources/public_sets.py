"""English class names and a default prompt template for the common public sets, for users who hold them as
``folder:`` trees: ``folder:PATH:names=SET`` (SET one of :data:`SETS`) maps the folder's sorted subfolder names
onto the set's class names, the way CLIP_benchmark names them.

- ``cifar10``, ``stl10``: the 10 class names, which are the folder names (sorted = the sets' label order);
- ``cifar100``: the 100 fine labels' folder names (``aquarium_fish``, sorted = the label order), named with spaces
  (``aquarium fish``);
- ``imagenet1k``: the 1,000 WordNet ids (``n01440764`` ...; timm's ``imagenet_synsets.txt``), which sorted are the
  label order, named by open_clip's ``IMAGENET_CLASSNAMES`` (read from ``open_clip/zero_shot_metadata.py``, a data
  file, without importing open_clip).

Any folder of WordNet-id subfolders (the whole of ImageNet-1k or a subset such as Imagenette; ImageNet-21k ids too) is
named without ``names=`` by :func:`wordnet_names`: open_clip's name for an ImageNet-1k id, timm's first lemma
(``imagenet_synset_to_lemma.txt``) for any other.

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
        raise EmbedxError(f"ImageNet class names need the package {module} (pip install {module})")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise EmbedxError(f"ImageNet class names: {path} not found in the installed {module}")
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


@functools.lru_cache(maxsize=1)
def synset_lemmas() -> dict[str, str]:
    """WordNet id -> its first lemma (``n01440764`` -> ``tench``), for the 21,843 ImageNet-21k synsets: timm's
    ``imagenet_synset_to_lemma.txt`` (``ID<TAB>lemma, lemma, ...``), read as a data file."""
    out = {}
    with open(_package_file("timm", "data", "_info", "imagenet_synset_to_lemma.txt"), encoding="utf-8") as f:
        for line in f:
            wnid, _, lemmas = line.rstrip("\n").partition("\t")
            if wnid and lemmas:
                out[wnid] = lemmas.split(",")[0].strip()
    return out


def wordnet_names(wnids: list[str]) -> tuple[list[str], str] | None:
    """(English names of the WordNet ids ``wnids``, where they come from), or None if one of them is not an
    ImageNet synset. An ImageNet-1k id gets open_clip's class name (``IMAGENET_CLASSNAMES``, CLIP's curated names:
    ``tench``, ``goldfish``), any other ImageNet-21k id timm's first lemma; a name two ids share gets the id in
    brackets (``crane (n03126707)``) so that the prompts differ."""
    ids, names = imagenet()
    english = dict(zip(ids, names))
    lemmas = synset_lemmas() if any(w not in english for w in wnids) else {}
    if any(w not in english and w not in lemmas for w in wnids):
        return None
    out = [english.get(w) or lemmas[w] for w in wnids]
    counts: dict[str, int] = {}
    for n in out:
        counts[n] = counts.get(n, 0) + 1
    out = [f"{n} ({w})" if counts[n] > 1 else n for n, w in zip(out, wnids)]
    n_1k = sum(w in english for w in wnids)
    where = ("open_clip's ImageNet-1k class names" if n_1k == len(wnids) else
             f"open_clip's ImageNet-1k class names ({n_1k}) and timm's WordNet lemmas ({len(wnids) - n_1k})"
             if n_1k else "timm's WordNet lemmas")
    return out, where


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
