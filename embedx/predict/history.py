"""The history CSV: observed fine-tuning outcomes of measured tasks (read, validate, filter, append).

One row per fine-tuning run (stdlib ``csv``, UTF-8, a header line first; rows are counted from 1 after it):

  task, model, method   who was fine-tuned on what, and how (task must not be blank)
  zs_acc, ft_acc        zero-shot and fine-tuned accuracy on the task's test split, fractions in [0, 1]
  ood_delta             mean accuracy change on other (off-target) tasks after fine-tuning; may be blank
  store                 optional: the task's ZERO-SHOT embedding store (relative paths are taken from the CSV's
                        folder); predictors missing from the CSV are computed from it
  anything else         a numeric predictor column (a measure or transfer score); a blank cell is missing

Outcomes (paper B, Niss et al.):

  gain        = (ft_acc - zs_acc) / (1 - zs_acc)   fine-tuning gain normalized by the zero-shot error
  forgetting  = ood_delta                          sign kept as given: negative = accuracy lost elsewhere

``append_row`` adds a run to a history file; the file is always rewritten atomically (temporary file in the
same folder, fsync, rename), so a crash leaves either the old file or the new one, never a torn row.

Formula injection (OWASP "CSV injection"): a text cell written that starts with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return (after any ``'``) gets a ``'`` in front, so a spreadsheet shows it as text instead of
running it; numbers (``-0.041``) are written as they are. Reading takes that one ``'`` off again, so every cell
reads back exactly as it was given (:func:`neutralize`, :func:`restore`).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field

from embedx.store.atomic import atomic_write_bytes as _atomic_write_bytes
from embedx.errors import EmbedxError

REQUIRED = ("task", "model", "method", "zs_acc", "ft_acc", "ood_delta")
STORE = "store"
OUTCOMES = ("gain", "forgetting")
RESERVED = OUTCOMES + ("row",)  # keys of the result's rows: not allowed as predictor column names
_MISSING = ("", "nan", "na", "n/a", "none", "null")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would run as a formula (OWASP)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def neutralize(text: str) -> str:
    """A CSV cell safe to open in a spreadsheet: text that would start a formula (after any ``'`` already
    there) gets one ``'`` in front; numbers (``-0.041``, ``+1e-3``) and every other text are unchanged."""
    if text.lstrip("'")[:1] in _FORMULA and not _numeric(text):
        return "'" + text
    return text


def restore(cell: str) -> str:
    """The value :func:`neutralize` wrote ``cell`` for: its added ``'`` taken off (``restore(neutralize(v)) == v``
    for every ``v``)."""
    if cell.startswith("'") and cell.lstrip("'")[:1] in _FORMULA and not _numeric(cell[1:]):
        return cell[1:]
    return cell


@dataclass
class Row:
    """One validated history row. ``values`` holds the predictor cells that are present (blank = absent)."""

    index: int  # 1-based, counted after the header
    task: str
    model: str
    method: str
    zs_acc: float
    ft_acc: float
    ood_delta: float | None
    store: str | None  # resolved path or URL
    cells: dict[str, str] = field(default_factory=dict)  # raw (stripped) cells, for --where
    values: dict[str, float] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        """(ft_acc - zs_acc) / (1 - zs_acc); zs_acc < 1 is checked when the row is read."""
        return (self.ft_acc - self.zs_acc) / (1.0 - self.zs_acc)

    @property
    def forgetting(self) -> float | None:
        return self.ood_delta

    def outcome(self, name: str) -> float | None:
        return self.gain if name == "gain" else self.forgetting


@dataclass
class History:
    path: str
    columns: list[str]
    predictors: list[str]  # predictor columns, in file order
    has_store: bool
    rows: list[Row]


def _where(path: str, i: int, task: str | None = None) -> str:
    return f"{path}: row {i}" + (f" (task {task})" if task else "")


def _number(cell: str, path: str, i: int, task: str, col: str) -> float | None:
    """A numeric cell -> float, None when blank (or nan/NA). Non-numeric or infinite: one-line error."""
    if cell.strip().lower() in _MISSING:
        return None
    try:
        v = float(cell)
    except ValueError:
        raise EmbedxError(f"{_where(path, i, task)}: column {col} = {cell!r} is not a number") from None
    if not math.isfinite(v):
        raise EmbedxError(f"{_where(path, i, task)}: column {col} = {cell!r} is not a finite number")
    return v


def resolve_store(cell: str, csv_path: str) -> str:
    """A store cell: URLs and absolute paths as given, relative paths from the CSV's folder."""
    from embedx.fs.locations import location

    loc = location(cell).expanduser()
    if not loc.local or os.path.isabs(loc.path):
        return loc.path
    cell = loc.path
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(csv_path)), cell))


def _read_table(path: str) -> tuple[list[str], list[list[str]]]:
    if not os.path.exists(path):
        raise EmbedxError(f"history file {path} not found")
    if os.path.isdir(path):
        raise EmbedxError(f"history file {path} is a folder; give the CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise EmbedxError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); is it a CSV file?") from None
    except csv.Error as e:
        raise EmbedxError(f"{path} is not a valid CSV file: {e}") from None
    table = [[restore(c) for c in r] for r in table if any(c.strip() for c in r)]  # blank lines carry nothing
    if not table:
        raise EmbedxError(f"{path} is empty; expected a header line with columns {', '.join(REQUIRED)}")
    header = [c.strip() for c in table[0]]
    return header, table[1:]


def read(path: str) -> History:
    """Read and validate a history CSV (every row, also those a --where filter will drop)."""
    header, body = _read_table(path)
    if any(not c for c in header):
        raise EmbedxError(f"{path}: the header has a blank column name (column {header.index('') + 1})")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise EmbedxError(f"{path}: duplicate column(s) {', '.join(dup)} in the header")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise EmbedxError(f"{path} lacks required column(s) {', '.join(missing)} "
                          f"(needs {', '.join(REQUIRED)}; found {', '.join(header)})")
    predictors = [c for c in header if c not in REQUIRED and c != STORE]
    bad = [c for c in predictors if c in RESERVED]
    if bad:
        raise EmbedxError(f"{path}: column(s) {', '.join(bad)} clash with the outcomes embedx computes "
                          "(gain, forgetting); rename them")
    if not body:
        raise EmbedxError(f"{path} has a header but no rows; a fit needs at least 3")
    rows = []
    for i, raw in enumerate(body, 1):
        if len(raw) != len(header):
            raise EmbedxError(f"{_where(path, i)} has {len(raw)} cells but the header has {len(header)} columns")
        cells = {c: v.strip() for c, v in zip(header, raw)}
        task = cells["task"]
        if not task:
            raise EmbedxError(f"{_where(path, i)}: task is blank")
        acc = {}
        for col in ("zs_acc", "ft_acc"):
            v = _number(cells[col], path, i, task, col)
            if v is None:
                raise EmbedxError(f"{_where(path, i, task)}: {col} is missing")
            if not 0.0 <= v <= 1.0:
                hint = " (a fraction, not a percentage)" if 1.0 < v <= 100.0 else ""
                raise EmbedxError(f"{_where(path, i, task)}: {col} = {cells[col]} is outside [0, 1]{hint}")
            acc[col] = v
        if acc["zs_acc"] == 1.0:
            raise EmbedxError(f"{_where(path, i, task)}: zs_acc = 1 leaves no error to gain on; gain is undefined")
        ood = _number(cells["ood_delta"], path, i, task, "ood_delta")
        store = cells.get(STORE) or None
        values = {}
        for col in predictors:
            v = _number(cells[col], path, i, task, col)
            if v is not None:
                values[col] = v
        rows.append(Row(i, task, cells["model"], cells["method"], acc["zs_acc"], acc["ft_acc"], ood,
                        resolve_store(store, path) if store else None, cells, values))
    return History(path, header, predictors, STORE in header, rows)


def parse_where(specs) -> dict[str, list[str]]:
    """``["method=lora", "model=ViT-B-32", "method=bitfit"]`` -> {method: [lora, bitfit], model: [ViT-B-32]}.

    A row is kept when, for every named column, its cell equals one of the values (AND across columns,
    OR within one column). A dict {col: value or [values]} is accepted as is."""
    if not specs:
        return {}
    if isinstance(specs, dict):
        return {str(k): [str(v)] if isinstance(v, (str, int, float)) else [str(x) for x in v]
                for k, v in specs.items()}
    out: dict[str, list[str]] = {}
    for s in specs:
        col, eq, val = str(s).partition("=")
        if not eq or not col.strip():
            raise EmbedxError(f"where needs COLUMN=VALUE, got {s!r}", param="where")
        out.setdefault(col.strip(), []).append(val.strip())
    return out


def select(history: History, where: dict[str, list[str]]) -> list[Row]:
    """The rows matching every ``where`` column (exact string match on the stripped cell)."""
    unknown = [c for c in where if c not in history.columns]
    if unknown:
        raise EmbedxError(f"where: {history.path} has no column {', '.join(unknown)} "
                          f"(columns: {', '.join(history.columns)})", param="where")
    return [r for r in history.rows if all(r.cells[c] in vals for c, vals in where.items())]


def describe_where(where: dict[str, list[str]]) -> str:
    return " and ".join(f"{c}={'|'.join(v)}" for c, v in where.items())


# --- writing ----------------------------------------------------------------------------------------------------

def atomic_write_bytes(path: str, data: bytes) -> None:
    """``data`` onto ``path`` atomically (embedx.store.atomic); a one-line error when the folder does not exist."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise EmbedxError(f"cannot write {path}: folder {folder} does not exist")
    _atomic_write_bytes(path, data)


def _cell(v) -> str:
    """None/NaN -> blank; floats with full round-trip precision (repr: the shortest exact form)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    try:
        import numpy as np

        if isinstance(v, np.integer):
            return str(int(v))
        if isinstance(v, np.floating):
            v = float(v)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def _order(columns) -> list[str]:
    """The 6 required columns first, then store, then the rest in first-seen order."""
    seen = list(dict.fromkeys(columns))
    rest = [c for c in seen if c not in REQUIRED and c != STORE]
    return list(REQUIRED) + ([STORE] if STORE in seen else []) + rest


def append_row(path: str, row: dict) -> None:
    """Append one run to the history CSV at ``path`` (created with a header when missing).

    ``row`` needs task, model, method, zs_acc, ft_acc; ood_delta, store and predictor values are optional.
    A column the file lacks is added (existing rows get a blank cell) and a column the row lacks is left blank.
    The whole file is rewritten atomically every time (histories are small), so rows already written are never
    lost, even if the process dies mid-write. Concurrent writers (parallel fine-tuning runs) are serialized by
    an advisory lock on the file's folder where the platform supports ``fcntl``."""
    row = {str(k).strip(): v for k, v in row.items()}
    missing = [c for c in REQUIRED[:5] if row.get(c) is None or (isinstance(row[c], str) and not row[c].strip())]
    if missing:
        raise EmbedxError(f"cannot append to {path}: the row lacks {', '.join(missing)}")
    with _Lock(path):
        if os.path.exists(path) and os.path.getsize(path) > 0:
            header, body = _read_table(path)
            for i, r in enumerate(body, 1):
                if len(r) != len(header):
                    raise EmbedxError(f"cannot append to {path}: {_where(path, i)} has {len(r)} cells but the "
                                      f"header has {len(header)} columns")
            old = [dict(zip(header, r)) for r in body]
        else:
            header, old = [], []
        cols = _order(header + list(row))
        buf = io.StringIO(newline="")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([neutralize(c) for c in cols])
        for r in old:
            w.writerow([neutralize(r.get(c, "")) for c in cols])
        w.writerow([neutralize(_cell(row.get(c))) for c in cols])
        atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


class _Lock:
    """An exclusive advisory ``flock`` on the history file's folder (no stray lock file is left behind); a no-op
    where the platform lacks fcntl or cannot open folders."""

    def __init__(self, path: str):
        self.folder = os.path.dirname(os.path.abspath(path))
        self.fd = None

    def __enter__(self):
        if not os.path.isdir(self.folder):
            raise EmbedxError(f"cannot write a history file in {self.folder}: the folder does not exist")
        try:
            import fcntl

            self.fd = os.open(self.folder, os.O_RDONLY)
        except (ImportError, OSError):  # pragma: no cover (Windows)
            return self
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        return False
