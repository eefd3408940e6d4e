"""The typed result of a planner run: values, timings, estimates, per-class rows, and what was read."""
from __future__ import annotations


class Result(dict):
    """``values``: {score: float}; ``timings``: seconds per unit of work; ``estimates``: sampled scores' intervals;
    ``per_class``: rows per class; ``info``: counts and provenance (n_images, n_texts, dim, ties, integrity).

    The result is also the dict ``to_dict()`` returns (the JSON the CLI prints), so ``result["iimm"]`` and
    ``json.dumps(result)`` work; build a new one rather than editing it."""

    def __init__(self, values: dict, timings: dict | None = None, estimates: dict | None = None,
                 per_class: dict | None = None, info: dict | None = None, timings_key: str | None = "timings_s"):
        self.values = dict(values)
        self.timings = dict(timings or {})
        self.estimates = dict(estimates or {})
        self.per_class = per_class
        self.info = dict(info or {})
        self.timings_key = timings_key
        super().__init__(self.to_dict())

    def to_dict(self) -> dict:
        out = dict(self.values)
        head = {k: self.info[k] for k in ("n_images", "n_texts", "dim") if k in self.info}
        out.update(head)
        if self.timings_key:
            out[self.timings_key] = self.timings
        if "ties" in self.info:
            out["ties"] = self.info["ties"]
        if self.estimates:
            out["estimates"] = self.estimates
        if self.per_class is not None:
            out["per_class"] = self.per_class
        out.update({k: v for k, v in self.info.items() if k not in head and k != "ties"})
        return out

    @property
    def seconds(self) -> dict:
        """Alias of ``timings`` (the transfer scores' name for it)."""
        return self.timings

    def __repr__(self) -> str:
        vals = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in self.values.items())
        return f"Result({vals})"
