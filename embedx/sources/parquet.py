"""``parquet:PATTERN``: images listed in Parquet files (one file, a folder of them, brace patterns or globs; local
or fsspec URLs), e.g. img2dataset or Hugging Face exports.

Format: an image column holding the image bytes (``binary``, or a ``{bytes, path}`` struct as Hugging Face's
``Image`` feature writes it; a null ``bytes`` falls back to ``path``) or a path string (relative to the Parquet
file's folder, absolute, or a URL read through fsspec); and a caption column (a paired store) or a label column
(a class store: class names from ``--classes NAMES.txt``, from Hugging Face's ``ClassLabel`` metadata, or the
sorted distinct names of a string column). Default column names: image ``image, jpg, png, webp, img,
image_bytes, path, filepath, file_path, image_path, file_name, filename, url``; caption ``caption, text, txt,
TEXT``; label ``label, labels, cls, class``.

Only the small columns (captions, labels, paths) are read when listing. Image bytes are read lazily, one row group
at a time per loading thread (the last row group's image column is kept), so memory stays bounded by a row group.
Rows with a null image, caption or label are left out and listed (id ``FILE:ROW``, or the image path).
"""
from __future__ import annotations

import json
import posixpath
import threading

import numpy as np

from embedx.fs.files import IMAGE_CAP, NotAFile, local_path, open_binary, read_capped
from embedx.fs.files import size as file_size
from embedx.engine import kinds
from embedx.engine.kinds import Option
from embedx.errors import EmbedxError, one_line
from embedx.fs.locations import location
from embedx.sources.base import _pil_rgb
from embedx.sources.files import ShardedSource, decode_image, expand_files, label_index, names_files, read_classes
from embedx.sources.webdataset import CLASSES

IMAGE_COLS = ("image", "jpg", "png", "webp", "img", "image_bytes", "path", "filepath", "file_path", "image_path",
              "file_name", "filename", "url")
CAPTION_COLS = ("caption", "text", "txt", "TEXT")
LABEL_COLS = ("label", "labels", "cls", "class")


def _parquet_file(path: str):
    import pyarrow.parquet as pq

    try:
        f = open_binary(path)  # a regular file, checked before it is opened (embedx.fs.files)
    except NotAFile as e:
        raise EmbedxError(str(e)) from None
    except OSError as e:
        raise EmbedxError(f"cannot read {path} ({e.strerror or one_line(e, 120)})") from None
    try:
        return pq.ParquetFile(f)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for anything not Parquet
        raise EmbedxError(f"{path} is not a readable Parquet file ({_short(e)})") from None


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {one_line(e, 120)}"


def _image_kind(field) -> str:
    import pyarrow as pa

    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "path"
    raise EmbedxError(f"image column {field.name!r} has type {t}; expected image bytes (binary), a {{bytes, path}} "
                      f"struct or a path string")


def _pick(schema, given: str | None, defaults: tuple, what: str, path: str, option: str) -> str | None:
    names = schema.names
    if given:
        if given not in names:
            raise EmbedxError(f"{path} has no column {given!r} ({option}; columns: {', '.join(names)})", param=option)
        return given
    return next((c for c in defaults if c in names), None)


def _hf_classnames(schema, col: str) -> list[str] | None:
    """Class names from Hugging Face's ``ClassLabel`` feature metadata, if the file has it."""
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        feat = json.loads(meta)["info"]["features"][col]
        names = feat.get("names") if isinstance(feat, dict) else None
    except (TypeError, ValueError, KeyError):
        return None
    return [str(n) for n in names] if names else None


@kinds.register("source", "parquet", usage="parquet:PATTERN", can_open=lambda p: names_files(p, ".parquet"),
                summary="Parquet files (img2dataset, Hugging Face exports; local or fsspec URL): an image bytes, "
                        "{bytes, path} or path column and a caption or label column",
                options=(CLASSES,
                         Option("image_col", "the image column (bytes, {bytes, path} struct or path)",
                                f"the first of {', '.join(IMAGE_COLS)}"),
                         Option("caption_col", "the caption column", f"the first of {', '.join(CAPTION_COLS)}"),
                         Option("label_col", "the label column", f"the first of {', '.join(LABEL_COLS)}")))
def parquet_source(pattern: str, spec: str, *, classes: str | None = None, image_col: str | None = None,
                   caption_col: str | None = None, label_col: str | None = None) -> ShardedSource:
    """The rows of the Parquet files ``pattern`` names, in file then row order (see the module docstring)."""
    import pyarrow as pa

    files = expand_files(pattern, ".parquet", "parquet file")
    first = _parquet_file(files[0]).schema_arrow
    icol = _pick(first, image_col, IMAGE_COLS, "image", files[0], "image_col")
    if icol is None:
        raise EmbedxError(f"{files[0]} has no image column (tried {', '.join(IMAGE_COLS)}; columns: "
                          f"{', '.join(first.names)}): name it with image_col", param="image_col")
    kind = _image_kind(first.field(icol))
    if caption_col and (label_col or classes):
        raise EmbedxError("caption_col makes a paired store, label_col and classes a class store: pass one",
                          param=("caption_col", "label_col", "classes"))
    ccol = None if (label_col or classes) else _pick(first, caption_col, CAPTION_COLS, "caption", files[0],
                                                     "caption_col")
    lcol = None
    if ccol is None:
        lcol = _pick(first, label_col, LABEL_COLS, "label", files[0], "label_col")
        if lcol is None:
            raise EmbedxError(f"{files[0]} has no caption column ({', '.join(CAPTION_COLS)}) nor label column "
                              f"({', '.join(LABEL_COLS)}) (columns: {', '.join(first.names)}): name one with "
                              f"caption_col or label_col", param=("caption_col", "label_col"))
    classnames = read_classes(classes) if classes else None
    if lcol and classnames is None and pa.types.is_integer(first.field(lcol).type):
        classnames = _hf_classnames(first, lcol)
        if classnames is None:
            raise EmbedxError(f"{files[0]}: label column {lcol!r} holds integers: pass classes=NAMES.txt (one "
                              f"class name a line, line k naming label k)", param="classes")

    read_cols = [c for c in (ccol, lcol) if c] + ([icol] if kind == "path" else [f"{icol}.path"]
                                                 if kind == "struct" else [])
    ids, targets, excluded = [], [], []
    file_of, rg_of, row_of, paths = [], [], [], []
    n_rows = 0
    for k, f in enumerate(files):
        pf = _parquet_file(f)
        schema = pf.schema_arrow
        missing = [c for c in {icol, ccol, lcol} - {None} if c not in schema.names]
        if missing:
            raise EmbedxError(f"{f} has no column {missing[0]!r} (the first file {files[0]} has it; columns: "
                              f"{', '.join(schema.names)})")
        if _image_kind(schema.field(icol)) != kind:
            raise EmbedxError(f"{f}: image column {icol!r} has type {schema.field(icol).type}, unlike {files[0]}")
        try:  # corrupt pages, thrift or strings: one line naming the file, never a traceback
            table = pf.read(columns=read_cols)
            tcol = table.column(ccol or lcol).to_pylist()
            pcol = None
            if kind == "path":
                pcol = table.column(icol).to_pylist()
            elif kind == "struct":
                pcol = [d.get("path") if isinstance(d, dict) else None for d in table.column(icol).to_pylist()]
            groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        except (OSError, ValueError, pa.ArrowException) as e:  # ArrowInvalid is a ValueError, UnicodeError too
            raise EmbedxError(f"{f}: unreadable Parquet data ({_short(e)})") from None
        if sum(groups) != len(tcol) or any(n < 0 for n in groups):
            raise EmbedxError(f"{f}: corrupt Parquet metadata (its row groups count {sum(groups)} rows, the "
                              f"columns hold {len(tcol)})")
        base = location(f).parent()  # relative image paths are relative to it
        name = posixpath.basename(f)
        row = 0
        for g, n_group in enumerate(groups):
            for r in range(n_group):
                p = pcol[row] if pcol is not None else None
                sid = p if p else f"{name}:{row}"
                t = tcol[row]
                if kind == "path" and not p:
                    excluded.append({"id": sid, "error": f"no image path (column {icol!r} is empty)"})
                elif t is None:
                    excluded.append({"id": sid, "error": f"no {'caption' if ccol else 'label'} (column "
                                                         f"{ccol or lcol!r} is null)"})
                else:
                    ids.append(sid)
                    targets.append(t)
                    file_of.append(k)
                    rg_of.append(g)
                    row_of.append(r)
                    if kind == "path":
                        paths.append(base.resolve(p))
                row += 1
        n_rows += row
    if not ids:
        why = f"; first problem: {excluded[0]['id']}: {excluded[0]['error']}" if excluded else ""
        raise EmbedxError(f"{pattern}: no usable rows in {len(files)} Parquet file(s){why}")
    if kind == "path" and all(loc.local and not loc.isfile() for loc in map(location, paths)):
        raise EmbedxError(f"{pattern}: none of its {len(paths)} image paths is a file (first: {paths[0][:120]}); "
                          f"paths are relative to the Parquet file's folder")

    if kind == "path":
        load = _PathLoad(paths)
    else:
        load = _BytesLoad(files, icol, kind, np.asarray(file_of, np.int32), np.asarray(rg_of, np.int32),
                          np.asarray(row_of, np.int64))
    info = {"format": "parquet", "files": len(files), "rows": n_rows, "usable": len(ids), "left_out": len(excluded),
            "image_column": icol, "image_kind": kind, ("caption_column" if ccol else "label_column"): ccol or lcol}
    common = dict(info=info, file_sizes=[(f, file_size(f)) for f in files], excluded=excluded,
                  caption_field=f"parquet column {ccol!r}")
    if ccol:
        bad = next((t for t in targets if not isinstance(t, str)), None)
        if bad is not None:
            raise EmbedxError(f"{pattern}: caption column {ccol!r} holds {type(bad).__name__} values, not text")
        return ShardedSource(spec, ids, load, captions=targets, **common)
    if classnames is None:  # string labels: the sorted distinct names, as csv: does
        classnames = sorted({str(t).strip() for t in targets})
        if "" in classnames:
            raise EmbedxError(f"{pattern}: empty label in column {lcol!r}")
        if len(classnames) < 2:
            raise EmbedxError(f"{pattern}: label column {lcol!r} has one class ({classnames[0]!r}); a class store "
                              f"needs at least 2")
    where = f"{pattern} column {lcol!r}"
    idx = {n: k for k, n in enumerate(classnames)}
    labels = [idx[t] if isinstance(t, str) and t in idx else label_index(t, classnames, where, classes or "the file")
              for t in targets]
    return ShardedSource(spec, ids, load, classnames=classnames, labels=np.asarray(labels, np.int32), **common)


class _PathLoad:
    def __init__(self, paths: list[str]):
        self.paths = paths

    def __call__(self, i: int):
        p = self.paths[i]
        lp = local_path(p)  # a path or a file:// URL: a local file
        if lp is None:  # a regular file of at most IMAGE_CAP bytes, or unreadable
            return decode_image(read_capped(p, IMAGE_CAP, "an image file"))
        return _pil_rgb(lp)


class _BytesLoad:
    """Row ``i``'s image bytes, read with its whole row group's image column (kept per thread until another row
    group is asked for)."""

    def __init__(self, files, col, kind, file_of, rg_of, row_of):
        self.files, self.col, self.kind = files, col, kind
        self.file_of, self.rg_of, self.row_of = file_of, rg_of, row_of
        self._local = threading.local()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def __call__(self, i: int):
        k, g = int(self.file_of[i]), int(self.rg_of[i])
        loc = self._local
        if getattr(loc, "key", None) != (k, g):
            loc.key, loc.column = None, None  # free the last row group before reading the next
            files = getattr(loc, "files", None) or {}
            if k not in files:
                files.clear()
                files[k] = _parquet_file(self.files[k])
                loc.files = files
            loc.column = files[k].read_row_group(g, columns=[self.col]).column(0)
            loc.key = (k, g)
        v = loc.column[int(self.row_of[i])].as_py()
        if self.kind == "struct":
            data, path = (v or {}).get("bytes"), (v or {}).get("path")
            if data is None:
                if not path:
                    raise OSError("no image: null bytes and no path")
                f = self.files[k]
                return _PathLoad([location(f).parent().resolve(path)])(0)
            v = data
        if v is None:
            raise OSError("no image: null bytes")
        if len(v) > IMAGE_CAP:
            raise OSError(f"image of {len(v):,} bytes is above the {IMAGE_CAP >> 20} MiB cap")
        return decode_image(v)
