"""Class names for a ``folder:`` source, whose labels are its sorted subfolders (label k = the k-th subfolder).

``classes=FILE`` (``--classes``) names them, in one of three forms:

  * **one name a line** (UTF-8): line k names the k-th sorted subfolder; as many lines as subfolders;
  * **a mapping, one ``FOLDER NAME`` a line**: the first word of each line is a subfolder, the rest of the line (as
    written) its name; ImageNet's ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``) is one. The file may
    name more folders than there are (a subset of ImageNet); every subfolder must be named;
  * **JSON** (a ``.json`` file): a list of names (line form), ``{"FOLDER": "NAME"}``, or Keras'
    ``imagenet_class_index.json`` form ``{"0": ["n01440764", "tench"], ...}``.

Without a file, a folder whose subfolders are all WordNet ids (``n01440764``: an ImageNet-style tree, the whole set
or a subset such as Imagenette) is named in English by :func:`embedx.sources.public_sets.wordnet_names`.
Names must differ from each other (two classes with one prompt cannot be told apart).
"""
from __future__ import annotations

import json
import logging
import re

from embedx.errors import EmbedxError
from embedx.fs.files import SMALL_CAP, NotAFile, read_capped
from embedx.fs.locations import location

log = logging.getLogger("embedx")

WNID = re.compile(r"^n\d{8}$")
FORMS = "one class name a line, 'FOLDER NAME' lines, or JSON"


def _read_text(path: str) -> str:
    try:
        return read_capped(location(path).expanduser().path, SMALL_CAP, "a classes file").decode("utf-8")
    except FileNotFoundError:
        raise EmbedxError(f"classes file not found: {path}", param="classes") from None
    except NotAFile as e:
        if e.kind == "a folder":
            raise EmbedxError(f"classes file {path} is a folder (expected {FORMS})", param="classes") from None
        raise EmbedxError(e.about(f"classes file {path}"), param="classes") from None
    except UnicodeDecodeError:
        raise EmbedxError(f"classes file {path} is not UTF-8 text (expected {FORMS})", param="classes") from None
    except OSError as e:
        raise EmbedxError(f"cannot read classes file {path} ({e.strerror or e})", param="classes") from None


def _few(items, n: int = 3) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _from_json(text: str, path: str) -> list[str] | dict[str, str]:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise EmbedxError(f"classes file {path} is not valid JSON ({e})", param="classes") from None
    if isinstance(obj, list) and all(isinstance(v, str) for v in obj):
        return [v.strip() for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(v, str) for v in obj.values()):
            return {str(k).strip(): v.strip() for k, v in obj.items()}
        if all(isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in obj.values()):
            return {v[0].strip(): v[1].strip() for v in obj.values()}  # {"0": ["n01440764", "tench"], ...}
    raise EmbedxError(f"classes file {path}: expected a JSON list of names, {{\"FOLDER\": \"NAME\"}} or "
                      f"{{\"INDEX\": [\"FOLDER\", \"NAME\"]}}", param="classes")


def _from_lines(text: str, path: str, folders: list[str]) -> list[str] | dict[str, str]:
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise EmbedxError(f"classes file {path} is empty (expected {FORMS})", param="classes")
    if "" in lines:
        raise EmbedxError(f"classes file {path}: line {lines.index('') + 1} is blank", param="classes")
    pairs = [ln.split(None, 1) for ln in lines]
    if all(len(p) == 2 for p in pairs) and set(folders) <= {p[0] for p in pairs}:
        mapping: dict[str, str] = {}
        for k, (folder, name) in enumerate(pairs):
            if folder in mapping:
                raise EmbedxError(f"classes file {path}: folder {folder!r} is named twice (line {k + 1})",
                                  param="classes")
            mapping[folder] = name.strip()
        return mapping
    return lines


def read_folder_classes(path: str, folders: list[str], root: str) -> list[str]:
    """The names of ``folders`` (the sorted subfolders of ``root``) that the classes file ``path`` gives, in the
    folders' order; one line naming what does not fit otherwise."""
    text = _read_text(path)
    is_json = path.lower().endswith(".json") or text.lstrip().startswith(("{", "["))
    got = _from_json(text, path) if is_json else _from_lines(text, path, folders)
    if isinstance(got, dict):
        missing = [f for f in folders if f not in got]
        if missing:
            raise EmbedxError(f"classes file {path} names no class for {len(missing)} of the {len(folders)} "
                              f"subfolders of {root} (first: {_few(missing)})", param="classes")
        names = [got[f] for f in folders]
    else:
        if len(got) != len(folders):
            raise EmbedxError(f"classes file {path} has {len(got)} names for the {len(folders)} subfolders of "
                              f"{root} (one name a line, line k naming the k-th subfolder in sorted order; or "
                              f"'FOLDER NAME' lines)", param="classes")
        names = list(got)
    blank = [f for f, n in zip(folders, names) if not n]
    if blank:
        raise EmbedxError(f"classes file {path}: the name of {blank[0]!r} is blank", param="classes")
    check_distinct(names, folders, f"classes file {path}")
    return names


def check_distinct(names: list[str], folders: list[str], where: str) -> None:
    seen: dict[str, str] = {}
    for f, n in zip(folders, names):
        if n in seen:
            raise EmbedxError(f"{where}: subfolders {seen[n]!r} and {f!r} are both named {n!r} (names must differ)",
                              param="classes")
        seen[n] = f


def auto_names(folders: list[str], root: str) -> tuple[list[str], str] | None:
    """(English names, where they come from) for subfolders that are all WordNet ids; None otherwise (or when the
    tables that name them are not installed, or name only some of them: a warning says so)."""
    if not folders or not all(WNID.match(f) for f in folders):
        return None
    from embedx.sources import public_sets

    try:
        got = public_sets.wordnet_names(folders)
    except EmbedxError as e:
        log.warning(f"folder {root}: its subfolders are WordNet ids, kept as class names ({e}); pass classes=FILE "
                    f"to name them", extra={"param": "classes"})
        return None
    if got is None:
        unknown = [f for f in folders if f not in public_sets.synset_lemmas()]
        log.warning(f"folder {root}: its subfolders look like WordNet ids but {_few(unknown)} are not ImageNet "
                    f"synsets; kept the folder names as class names (pass classes=FILE to name them)",
                    extra={"param": "classes"})
        return None
    return got
