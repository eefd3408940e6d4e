"""``embedx import``: a store from existing arrays (npy / npz / parquet).

Arrays are validated completely before anything is written (NaN/inf rows, zero rows, float16 overflow,
dimension mismatch, labels out of range), streamed in row blocks so a memory-mapped ``.npy`` of any size
works, and written to a temporary sibling that replaces ``out`` only once it is complete: an existing
store is never half-overwritten.
"""
from __future__ import annotations

import os

import numpy as np

from embedx import store as st
from embedx import validate
from embedx.engine.progress import Bar, enabled
from embedx.errors import EmbedxError, one_line
from embedx.rowsource import as_numpy
from embedx.rows import check_block
from embedx.store.placement import staged, writer_lock
from embedx.texts import MAX_TEXT_CHARS, cap_texts, note, read_line
from embedx.fs.locations import location
from embedx.fs.url import storage_faults

BLOCK_ROWS = 65536


def load_array(spec, what: str = "array") -> np.ndarray:
    """``file.npy`` (memory-mapped), ``file.npz[:key]`` or ``file.parquet[:column]``; an in-memory numpy array or
    torch tensor is taken as it is."""
    if not isinstance(spec, (str, os.PathLike)):
        return as_numpy(spec)
    spec = os.fspath(spec)
    path, key = spec, None
    for ext in (".npz", ".parquet"):
        head, sep, tail = spec.rpartition(ext + ":")
        if sep and head:
            path, key = head + ext, tail
    if not os.path.isfile(path):
        from embedx.fs.locations import location

        if not location(path).local:  # never read: no credentials, no endpoint involved
            raise EmbedxError(f"{what} {path} is a URL; arrays are read from local files (copy it here first, or "
                              f"import a dump folder at a URL as a whole)")
        raise EmbedxError(f"{what} file not found: {path}")
    try:
        if path.endswith(".npy"):
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if key is None:
                    if len(keys) != 1:
                        raise EmbedxError(f"{path} holds {len(keys)} arrays ({', '.join(keys)}); name one as "
                                          f"{path}:KEY")
                    key = keys[0]
                if key not in keys:
                    raise EmbedxError(f"{path} has no array {key!r} (has: {', '.join(keys)})")
                return z[key]
        if path.endswith(".parquet"):
            return _parquet(path, key)
    except EmbedxError:
        raise
    except Exception as e:
        raise EmbedxError(f"cannot read {what} from {path}: {one_line(e, 200)}") from None
    raise EmbedxError(f"{what}: unsupported file type {path!r} (use .npy, .npz or .parquet)")


def _parquet(path: str, column: str | None) -> np.ndarray:
    """One list column (each row a vector), or every numeric column as one dimension."""
    import pyarrow.parquet as pq
    import pyarrow.types as pt

    table = pq.read_table(path, columns=[column] if column else None)
    if column is None and table.num_columns == 1:
        column = table.column_names[0]
    if column is not None:
        col = table.column(column).combine_chunks()
        if pt.is_list(col.type) or pt.is_large_list(col.type) or pt.is_fixed_size_list(col.type):
            return _list_matrix(col, f"{path}:{column}")
        return col.to_numpy(zero_copy_only=False)
    cols = [table.column(c).to_numpy() for c in table.column_names]
    return np.stack(cols, axis=1)


def _list_matrix(col, what: str) -> np.ndarray:
    """A list column as a matrix: every row a list of the same length, no null row, no null value (a ragged or
    gappy column is refused, never reshaped into a wrong matrix)."""
    import pyarrow.compute as pc

    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise EmbedxError(f"{what}: row {row} is null ({col.null_count} null rows); every row needs a vector")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and lengths.min() != lengths.max():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise EmbedxError(f"{what}: ragged lists (row 0 has {lengths[0]} values, row {row} has {lengths[row]}); "
                          f"every row needs a vector of the same length")
    values = col.flatten()
    if values.null_count:
        raise EmbedxError(f"{what}: {values.null_count} null values inside the lists; every value must be a number")
    values = values.to_numpy(zero_copy_only=False)
    return values.reshape(len(col), -1) if len(col) else values.reshape(0, 0)


def _check_labels(labels: np.ndarray, n: int, c: int) -> np.ndarray:
    """int32 class index per image, each in [-1, c) (``embedx.validate.labels``)."""
    return validate.labels(labels, n, c).astype(np.int32)


def _read_names(path, c: int, what: str) -> tuple[list[str], int]:
    """(the names of the text rows, each at most ``texts.MAX_TEXT_CHARS`` characters; how many were cut)."""
    if path is None:
        return [str(k) for k in range(c)], 0
    if not isinstance(path, (str, os.PathLike)):  # the names themselves
        names, cut = cap_texts(str(v) for v in path)
        if len(names) != c:
            raise EmbedxError(f"names has {len(names)} entries, but there are {c} {what}")
        return names, cut
    names, cut = _file_lines(path, "names")
    if len(names) != c:
        raise EmbedxError(f"{path} has {len(names)} names, but there are {c} {what}")
    return names, cut


def import_arrays(out: str, *, images: str | None = None, texts: str | None = None, labels: str | None = None,
                  paired: bool = False, names: str | None = None, paired_array: str | None = None,
                  dtype: str = "float16", overwrite: bool = False, codec: str = st.DEFAULT_CODEC,
                  chunk_rows: int | None = None, model: str | None = None, dataset: str | None = None,
                  pretrained: str | None = None, ids=None) -> dict:
    """Validate the arrays, write them as a complete store at ``out``; return its metadata. ``model``,
    ``pretrained``: recorded as the model and weights that made the rows (CLIP_benchmark's result files name them).
    ``ids``: the source id of each row (:func:`expand_ids`; default the row index)."""
    if dtype not in st.DTYPES:
        raise EmbedxError(f"dtype must be float16 or float32, got {dtype!r}", param="dtype")
    st.check_target(out, overwrite)
    if paired_array is not None:
        if images is not None or texts is not None or labels is not None:
            raise EmbedxError("paired_array replaces images, texts and labels; give one or the other",
                              param=("paired_array", "images", "texts", "labels"))
        both = load_array(paired_array, "paired array")
        if both.ndim != 3 or both.shape[0] != 2:
            raise EmbedxError(f"paired_array needs shape (2, N, d), got {both.shape}", param="paired_array")
        x, t, paired, sources = both[0], both[1], True, [paired_array]
    else:
        if images is None or texts is None:
            raise EmbedxError("give images and texts (or paired_array)", param=("images", "texts", "paired_array"))
        x, t = load_array(images, "images"), load_array(texts, "texts")
        sources = [s for s in (images, texts, labels) if s is not None]
    unit = check_block(x, "images", dtype)
    unit &= check_block(t, "texts", dtype, dim=x.shape[1], dim_of="images")
    n, c = x.shape[0], t.shape[0]
    if paired:
        if labels is not None:
            raise EmbedxError("paired and labels exclude each other (paired rows are their own labels)",
                              param=("paired", "labels"))
        if ids is not None:
            row_ids, x = expand_ids(ids, x, c)
        if c != x.shape[0]:
            raise EmbedxError(f"paired needs as many text rows as image rows, got {n} images and {c} texts (with "
                              "several captions per image, give ids: one per caption)", param="paired")
        n, y = c, None
    else:
        if labels is None:
            raise EmbedxError("give labels (class index per image) or paired=True (text i pairs with image i)",
                              param="labels")
        y = _check_labels(load_array(labels, "labels"), n, c)
        if ids is not None:
            row_ids, _ = expand_ids(ids, x, n)
    text_names, cut = _read_names(names, c, "captions" if paired else "text rows")
    files = [os.fspath(s) for s in sources if isinstance(s, (str, os.PathLike))]
    meta = {"model": model, "pretrained": pretrained, "seed": None,
            "dataset": dataset or (os.path.basename(files[0]) if files else "arrays"),
            "mode": "paired" if paired else "classes", "normalized": unit, "written_by": "import",
            "source": {"imported_from": [location(s).absolute() for s in files] or
                       ["<in-memory arrays>"]}}
    note(meta, cut, "captions" if paired else "names")
    with writer_lock(out), storage_faults(out):  # one writer at a time; leftovers of killed writers repaired first
        st.check_target(out, overwrite)
        return _write(out, x, t, y, text_names, meta, dtype, codec, chunk_rows, overwrite,
                      row_ids if ids is not None else None)


def _file_lines(path, what: str) -> tuple[list[str], int]:
    """(the lines of UTF-8 text file ``path`` without their newlines, trailing empty lines dropped, each at most
    ``texts.MAX_TEXT_CHARS`` characters; how many were cut). A missing or unreadable file is one line."""
    if not os.path.isfile(path):
        raise EmbedxError(f"{what} file not found: {path}", param=what)
    lines, cut = [], 0
    try:
        with open(path, encoding="utf-8") as f:
            while (got := read_line(f)) is not None:  # a line of any length: its first MAX_TEXT_CHARS characters
                lines.append(got[0])
                cut += got[1]
    except (OSError, UnicodeDecodeError) as e:
        raise EmbedxError(f"cannot read {what} from {path}: {one_line(e, 200)}", param=what) from None
    while lines and lines[-1] == "":
        lines.pop()
    return lines, cut


def expand_ids(ids, x: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(one id string per stored row, the image rows) from ``ids``: a 1-D array (or .npy/.npz/.parquet spec, or a
    .txt file of one id per line) of
    ``n_rows`` ids, one per text row of a paired store (per image of a class store). Rows that share an id are one
    item: an image with several captions, each caption a positive of that image for retrieval recall. The images
    come either one per row (``len(x) == n_rows``, an image repeated beside each of its captions, as clip-retrieval
    writes them) or once per distinct id (COCO-style: ``len(x)`` = the number of distinct ids, ``x[k]`` the
    image of the k-th distinct id in order of first appearance in ``ids``), and are then repeated row by row."""
    if isinstance(ids, (str, os.PathLike)) and os.fspath(ids).endswith(".txt"):
        lines, cut = _file_lines(os.fspath(ids), "ids")
        if cut:  # a cut id could equal another one: refused, not merged
            raise EmbedxError(f"{ids}: {cut} ids are longer than {MAX_TEXT_CHARS} characters", param="ids")
        a = np.array(lines, dtype=object)
    else:
        a = np.asarray(load_array(ids, "ids") if isinstance(ids, (str, os.PathLike)) else as_numpy(ids))
    if a.ndim != 1 or len(a) != n_rows:
        raise EmbedxError(f"ids needs one id per row ({n_rows}: one per caption of a paired store, per image of a "
                          f"class store), got shape {a.shape}", param="ids")
    a = a.astype(str)
    if len(x) == n_rows:
        return a, x
    uniq, first, inv = np.unique(a, return_index=True, return_inverse=True)
    if len(uniq) != len(x):
        raise EmbedxError(f"ids has {len(uniq)} distinct ids for {len(x)} image rows: give one image row per "
                          f"distinct id (in order of first appearance) or one per id ({n_rows})", param="ids")
    rank = np.empty(len(uniq), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))  # distinct id -> its image row
    return a, np.asarray(x)[rank[inv.reshape(-1)]]


def _write(out, x, t, y, text_names, meta, dtype, codec, chunk_rows, overwrite, row_ids=None) -> dict:
    target = out.rstrip("/")
    with staged(target) as tmp:  # atomic: the target holds the old store or the new one, whole
        local = tmp != target
        w = st.StoreWriter.create(tmp, n_rows=x.shape[0], dim=x.shape[1], meta=meta,
                                  n_texts=None if y is None else t.shape[0], dtype=dtype, codec=codec,
                                  chunk_rows=chunk_rows, overwrite=not local and overwrite, background=False)
        w.durable_commits = not local  # staged: finalize makes it durable before it is placed
        if y is not None:
            w.write_texts(np.asarray(t), text_names)
        block = max(1, BLOCK_ROWS // w.meta["chunk_rows"]) * w.meta["chunk_rows"]  # whole chunks
        bar = Bar(x.shape[0], "import", enabled(None))
        for s in range(0, x.shape[0], block):
            bar.update(min(block, x.shape[0] - s))
            e = min(s + block, x.shape[0])
            ids = [str(i) for i in range(s, e)] if row_ids is None else row_ids[s:e]
            if y is None:
                w.append(np.asarray(x[s:e]), None, ids, text_emb=np.asarray(t[s:e]), text_names=text_names[s:e])
            else:
                w.append(np.asarray(x[s:e]), y[s:e], ids)
            w.commit(e)
        bar.close()
        return w.finalize()
