"""STUDY.toml -> :class:`Spec` (stdlib ``tomllib``), every key checked; a bad file is one line naming the key.

    [study]                      # optional table
    name = "digits-small"        # label recorded in every row (default: the file's stem)
    seeds = [0]                  # training seeds; with pretrained = "none" the seed also draws the base weights
    per_class = 20               # optional: at most N images of every class in every split (class-balanced)
    limit = 60                   # optional: the first N images of every split (after per_class)
    batch_size = 32              # embedding batch size
    others = ["a", "b"]          # tasks that count as "other tasks" for forgetting (default: every task)
    tensorboard = true           # optional: each tuned cell's training logs TensorBoard events into
                                 # cells/<cell>/tensorboard/ (the tensorboard extra; default false)

    [[models]]                   # one or more
    name = "ViT-B-32"            # an open_clip model name
    pretrained = "openai"        # a tag, a local weights file, or "none" (random init; the default)
    label = "b32"                # optional short name (default: name/pretrained)

    [[tasks]]                    # one or more
    name = "pets"
    train = "folder:pets/train"  # data source specs (embedx embed --data)
    test = "folder:pets/test"
    templates = ["a photo of a {}."]   # optional class prompts (default: the source's)
    classnames = ["cat", "dog"]  # optional: replace the source's class names (one per class, in its order)
    domain = "photos"            # optional label: the fits are also made within each domain

    [[methods]]                  # one or more
    name = "lora"                # full | bitfit | attention | lora | adapter
    epochs = 1
    lr = 0.01                    # optional: the method's default
    optimizer = "adam"           # optional: the method's default
    batch_size = 32
    weight_decay = 1e-4
    towers = "both"
    options = { rank = 4 }       # the method's options (train_blocks, rank, reduction)
    label = "lora-r4"            # optional (default: name)
"""
from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field

from embedx.errors import EmbedxError

METHODS = ("full", "bitfit", "attention", "lora", "adapter")
METHOD_OPTIONS = ("train_blocks", "rank", "reduction")


@dataclass(frozen=True)
class Model:
    name: str
    pretrained: str = "none"
    label: str = ""


@dataclass(frozen=True)
class Task:
    name: str
    train: str
    test: str
    templates: tuple[str, ...] | None = None
    classnames: tuple[str, ...] | None = None
    domain: str = ""


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    epochs: int = 1
    lr: float | None = None
    optimizer: str | None = None
    batch_size: int = 32
    weight_decay: float = 1e-4
    towers: str = "both"
    options: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Spec:
    name: str
    path: str
    sha256: str          # of the file's bytes: a changed file is a changed study
    models: tuple[Model, ...]
    tasks: tuple[Task, ...]
    methods: tuple[Method, ...]
    seeds: tuple[int, ...] = (0,)
    limit: int | None = None
    batch_size: int = 32
    per_class: int | None = None
    others: tuple[str, ...] = field(default_factory=tuple)
    tensorboard: bool = False  # tuned cells log TensorBoard events into their folder's tensorboard/


def _bad(key: str, msg: str) -> EmbedxError:
    return EmbedxError(f"{key}: {msg}", param="spec_path")


def _check_keys(table: dict, allowed, key: str) -> None:
    for k in table:
        if k not in allowed:
            raise _bad(f"{key}.{k}" if key else k, f"unknown key (allowed: {', '.join(allowed)})")


def _str(t: dict, k: str, key: str, default=None, required=False) -> str | None:
    if k not in t:
        if required:
            raise _bad(f"{key}.{k}", "missing")
        return default
    v = t[k]
    if not isinstance(v, str) or not v.strip():
        raise _bad(f"{key}.{k}", f"must be a non-empty string, got {v!r}")
    return v.strip()


def _int(t: dict, k: str, key: str, default=None, minimum=1) -> int | None:
    if k not in t:
        return default
    v = t[k]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _bad(f"{key}.{k}", f"must be an integer >= {minimum}, got {v!r}")
    return v


def _float(t: dict, k: str, key: str, default=None) -> float | None:
    if k not in t:
        return default
    v = t[k]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v or v == float("inf"):
        raise _bad(f"{key}.{k}", f"must be a positive number, got {v!r}")
    return float(v)


def _tables(doc: dict, k: str) -> list[dict]:
    v = doc.get(k)
    if v is None:
        raise _bad(k, f"missing: add at least one [[{k}]] table")
    if not isinstance(v, list) or not v or not all(isinstance(x, dict) for x in v):
        raise _bad(k, f"must be one or more [[{k}]] tables")
    return v


def _unique(names, key: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise _bad(key, f"{n!r} appears twice")
        seen.add(n)


def _model(t: dict, i: int) -> Model:
    key = f"models[{i}]"
    _check_keys(t, ("name", "pretrained", "label"), key)
    name = _str(t, "name", key, required=True)
    pre = _str(t, "pretrained", key, "none")
    return Model(name, pre, _str(t, "label", key, name if pre == "none" else f"{name}/{pre}"))


def _task(t: dict, i: int) -> Task:
    key = f"tasks[{i}]"
    _check_keys(t, ("name", "train", "test", "templates", "classnames", "domain"), key)
    tpl = t.get("templates")
    if tpl is not None:
        if not isinstance(tpl, list) or not tpl or not all(isinstance(s, str) and "{}" in s for s in tpl):
            raise _bad(f"{key}.templates", "must be a list of strings, each with one '{}' for the class name")
        tpl = tuple(tpl)
    names = t.get("classnames")
    if names is not None:
        if not isinstance(names, list) or len(names) < 2 or not all(isinstance(s, str) and s.strip() for s in names):
            raise _bad(f"{key}.classnames", "must be a list of at least 2 non-empty strings, one per class")
        _unique(names, f"{key}.classnames")
        names = tuple(s.strip() for s in names)
    return Task(_str(t, "name", key, required=True), _str(t, "train", key, required=True),
                _str(t, "test", key, required=True), tpl, names, _str(t, "domain", key, ""))


def _method(t: dict, i: int) -> Method:
    key = f"methods[{i}]"
    _check_keys(t, ("name", "label", "epochs", "lr", "optimizer", "batch_size", "weight_decay", "towers",
                    "options"), key)
    name = _str(t, "name", key, required=True)
    if name not in METHODS:
        raise _bad(f"{key}.name", f"unknown method {name!r} (one of {', '.join(METHODS)})")
    opts = t.get("options", {})
    if not isinstance(opts, dict):
        raise _bad(f"{key}.options", "must be a table, e.g. { rank = 4 }")
    _check_keys(opts, METHOD_OPTIONS, f"{key}.options")
    for k in opts:
        _int(opts, k, f"{key}.options")
    opt = _str(t, "optimizer", key)
    if opt is not None and opt not in ("adam", "sgd"):
        raise _bad(f"{key}.optimizer", f"must be adam or sgd, got {opt!r}")
    towers = _str(t, "towers", key, "both")
    if towers not in ("both", "image", "text"):
        raise _bad(f"{key}.towers", f"must be both, image or text, got {towers!r}")
    wd = t.get("weight_decay", 1e-4)
    if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not 0 <= wd < float("inf"):
        raise _bad(f"{key}.weight_decay", f"must be a number >= 0, got {wd!r}")
    return Method(name, _str(t, "label", key, name), _int(t, "epochs", key, 1), _float(t, "lr", key), opt,
                  _int(t, "batch_size", key, 32), float(wd), towers, tuple(sorted(opts.items())))


def parse(text: str, path: str = "STUDY.toml", sha256: str | None = None) -> Spec:
    """The study in ``text`` (TOML) -> :class:`Spec`; EmbedxError (one line naming the key) when it is wrong."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EmbedxError(f"study file {path}: not valid TOML: {e}", param="spec_path") from None
    _check_keys(doc, ("study", "models", "tasks", "methods"), "")
    head = doc.get("study", {})
    if not isinstance(head, dict):
        raise _bad("study", "must be a [study] table")
    _check_keys(head, ("name", "seeds", "limit", "per_class", "batch_size", "others", "tensorboard"), "study")
    tensorboard = head.get("tensorboard", False)
    if not isinstance(tensorboard, bool):
        raise _bad("study.tensorboard", f"must be true or false, got {tensorboard!r}")
    models = tuple(_model(t, i) for i, t in enumerate(_tables(doc, "models")))
    tasks = tuple(_task(t, i) for i, t in enumerate(_tables(doc, "tasks")))
    methods = tuple(_method(t, i) for i, t in enumerate(_tables(doc, "methods")))
    _unique([m.label for m in models], "models.label")
    _unique([t.name for t in tasks], "tasks.name")
    _unique([m.label for m in methods], "methods.label")
    seeds = head.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise _bad("study.seeds", f"must be a non-empty list of integers >= 0, got {seeds!r}")
    _unique(seeds, "study.seeds")
    names = [t.name for t in tasks]
    others = head.get("others", names)
    if not isinstance(others, list) or not all(isinstance(s, str) for s in others):
        raise _bad("study.others", f"must be a list of task names, got {others!r}")
    for o in others:
        if o not in names:
            raise _bad("study.others", f"{o!r} is not a task (tasks: {', '.join(names)})")
    stem = os.path.splitext(os.path.basename(path))[0]
    return Spec(_str(head, "name", "study", stem), path, sha256 or hashlib.sha256(text.encode()).hexdigest(),
                models, tasks, methods, tuple(seeds), _int(head, "limit", "study"),
                _int(head, "batch_size", "study", 32), _int(head, "per_class", "study"), tuple(others),
                tensorboard)


def load(path: str) -> Spec:
    """Read and parse the study file at ``path``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise EmbedxError(f"study file {path}: cannot read: {e.strerror or e}", param="spec_path") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EmbedxError(f"study file {path}: not UTF-8 text", param="spec_path") from None
    return parse(text, path, hashlib.sha256(data).hexdigest())
