"""``Result``: what every public call returns (``measure``, ``transfer``, ``drift``, ``import_arrays``, ``embed``,
``study``).

A result is a read-only ``Mapping`` of score name -> value (the measures, transfer scores or drift statistics
alone), so it behaves as pandas and scikit-learn users expect::

    r = embedx.measure("cifar.zarr")
    r["gap"], dict(r), list(r.values())
    pd.Series(r)                 # one result
    pd.DataFrame([r1, r2, r3])   # one row per result, one column per measure

Beside the mapping: ``timings`` (seconds per step of the work), ``info`` (n_images, n_texts, dim, store path,
ties, integrity, ... everything that is not a score), ``provenance`` (schema, embedx version, the stores read with
their generation ids, the options that change numbers), ``estimates`` (sampled scores' intervals), ``per_class``
(rows per class, when asked for). ``to_dict()`` is all of it as JSON-able plain data: the layout the CLI writes
(``{schema, embedx_version, created, stores, options, <scores>, n_images, n_texts, dim, timings_s, ...}``).
"""
from __future__ import annotations

from collections.abc import Mapping

#: keys a result's provenance holds (the head of the CLI's JSON, ``embedx.provenance.provenance``)
PROVENANCE_KEYS = ("schema", "embedx_version", "created", "stores", "options")
#: the key ``to_dict()`` puts the timings under (the CLI's JSON name for them)
TIMINGS_KEY = "timings_s"
_HEAD = ("n_images", "n_texts", "dim")


class Result(Mapping):
    """Scores as a read-only mapping {name: value}, with ``timings``, ``info``, ``provenance``, ``estimates``,
    ``per_class`` beside it (module docstring). ``kind``: "measure", "transfer", "drift", "import", "embed" or
    "study".

    ``document``: the JSON-able dict ``to_dict()`` returns, when the call has its own layout (drift's summary, an
    import's store metadata); otherwise ``to_dict()`` builds the measures' layout."""

    def __init__(self, values: Mapping, timings: Mapping | None = None, estimates: Mapping | None = None,
                 per_class: Mapping | None = None, info: Mapping | None = None, *, provenance: Mapping | None = None,
                 kind: str = "measure", document: Mapping | None = None):
        self._values = dict(values)
        self.timings: dict = dict(timings or {})
        self.estimates: dict = dict(estimates or {})
        self.per_class = per_class
        self.info: dict = dict(info or {})
        self.provenance: dict = dict(provenance or {})
        self.kind = kind
        self._document = None if document is None else dict(document)

    # -- Mapping ------------------------------------------------------------------------------------------------
    def __getitem__(self, name: str):
        try:
            return self._values[name]
        except KeyError:
            where = ("; n_images, dim, ... are in .info, timings in .timings"
                     if name in self.info or name == TIMINGS_KEY else "")
            raise KeyError(f"{name!r} is not a score of this result (scores: {', '.join(self._values)}){where}") \
                from None

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    # -- views --------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """What the result is about: the store's path (``"<arrays>"`` for in-memory rows; drift: AFTER's)."""
        return str(self.info.get("store", self.info.get("path", self.kind)))

    def to_dict(self, provenance: bool = True) -> dict:
        """Everything as plain data (dicts, lists, numbers, strings): the provenance head (unless
        ``provenance=False``), the scores, the info (n_images, n_texts, dim first), ``timings_s``, ``estimates``
        and ``per_class``: the CLI's JSON (where an undefined score, NaN here, is null)."""
        if self._document is not None:
            body = _plain(self._document)
            if not provenance:
                body = {k: v for k, v in body.items() if k not in PROVENANCE_KEYS}
            return body
        out = dict(self._values)
        head = {k: self.info[k] for k in _HEAD if k in self.info}
        out.update(head)
        out[TIMINGS_KEY] = dict(self.timings)
        if "ties" in self.info:
            out["ties"] = self.info["ties"]
        if self.estimates:
            out["estimates"] = self.estimates
        if self.per_class is not None:
            out["per_class"] = self.per_class
        out.update({k: v for k, v in self.info.items() if k not in head and k not in ("ties", "store")})
        return _plain({**self.provenance, **out} if provenance else out)

    def to_series(self):
        """The scores as a ``pandas.Series`` named after ``name`` (float64; an undefined score is NaN)."""
        import pandas as pd

        return pd.Series({k: _float(v) for k, v in self._values.items()}, name=self.name, dtype="float64")

    def to_frame(self):
        """The scores as a one-row ``pandas.DataFrame`` indexed by ``name``: ``pd.concat([r.to_frame() for r in
        results])`` is a table of several runs (``pd.DataFrame([r1, r2])`` too, with a plain index)."""
        return self.to_series().to_frame().T

    def __repr__(self) -> str:
        shown = list(self._values.items())[:6]
        vals = ", ".join(f"{k}={_short(v)}" for k, v in shown)
        more = f", ... {len(self._values) - len(shown)} more" if len(self._values) > len(shown) else ""
        n = self.info.get("n_images")
        tail = [f"n_images={n}"] if n is not None else []
        if not self._values:  # an import: where the rows went
            tail.append(f"store={self.name!r}")
        return f"Result[{self.kind}]({vals}{more}{'; ' if vals and tail else ''}{', '.join(tail)})"

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(repr(self))


def store_result(path: str, meta: Mapping, kind: str, options: Mapping | None = None) -> Result:
    """The result of a call that writes a store (``import_arrays``, ``embed``): no scores; ``info`` the store's
    path, counts and layout; ``provenance`` its generation id; ``to_dict()`` its whole metadata (``meta``)."""
    from embedx.provenance import provenance
    from embedx.store import Store

    st = Store(str(path), verify_content=False)
    info = {"store": str(path), "n_images": st.n_images, "n_texts": st.n_texts, "dim": st.dim,
            **{k: meta.get(k) for k in ("mode", "dtype", "codec", "chunk_rows", "model", "pretrained", "dataset",
                                        "normalized", "n_skipped")}}
    return Result({}, info=info, provenance=provenance(kind, {"store": st}, options=options), kind=kind,
                  document=meta)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else repr(v)


def _float(v) -> float:
    return float("nan") if v is None else float(v)


def _plain(x):
    """``x`` as plain data: dicts, lists, str, int, float (numpy scalars/arrays converted). An undefined score
    stays NaN, as it always was in this dict (``json.dumps`` writes NaN; the CLI writes null)."""
    if isinstance(x, Result):
        return x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy scalar or array
        return _plain(x.tolist())
    return x
