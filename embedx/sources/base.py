"""The data source type (:class:`Source`) that every source module builds: ``embedx.sources`` (folders, CSV, digits,
synthetic), ``embedx.sources.webdataset`` and ``embedx.sources.parquet``. Its own module so that those import it without
importing the dispatch (:func:`embedx.sources.catalog.parse_source`), which imports them."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from embedx.texts import cap_texts


@dataclass
class Source:
    """``ids[i]`` is loaded by ``load(i)``; ``labels[i]`` indexes ``classnames`` (class sources) and
    ``captions[i]`` is its caption (paired sources)."""

    spec: str
    ids: list[str]
    load: Callable[[int], Image.Image]
    classnames: list[str] | None = None
    labels: np.ndarray | None = None
    captions: list[str] | None = None
    default_template: str = "a photo of a {}."
    excluded: list[dict] = field(default_factory=list)  # files left out when listing: {"id", "error"}
    texts_truncated: int = 0  # captions and class names cut to texts.MAX_TEXT_CHARS (embedx.texts)

    def __post_init__(self):
        """Captions and class names longer than ``texts.MAX_TEXT_CHARS`` are cut to it here, where every data
        source's texts enter: what is tokenized and stored is bounded whatever a caption holds."""
        for name in ("captions", "classnames"):
            texts = getattr(self, name)
            if texts is not None:
                capped, cut = cap_texts(texts)
                if cut:
                    setattr(self, name, capped)
                    self.texts_truncated += cut

    @property
    def paired(self) -> bool:
        return self.captions is not None

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int) -> "Source":
        """The first ``n`` items (``--limit``)."""
        from dataclasses import replace

        n = min(n, len(self))
        return replace(self, spec=f"{self.spec}[:{n}]", ids=self.ids[:n],
                       labels=None if self.labels is None else self.labels[:n],
                       captions=None if self.captions is None else self.captions[:n])

    def per_class(self, n: int) -> "Source":
        """At most ``n`` items of every class, the first ones in the source's order, the order kept (``--per-class``:
        a class-balanced subset where ``head`` would take the first classes of a source grouped by class)."""
        from dataclasses import replace

        from embedx.errors import EmbedxError

        if self.labels is None:
            raise EmbedxError(f"per_class needs class labels; {self.spec} is an image-caption source",
                              param="per_class")
        labels = np.asarray(self.labels)
        rank = np.zeros(len(labels), dtype=np.int64)
        seen: dict[int, int] = {}
        for i, c in enumerate(labels.tolist()):
            rank[i] = seen.get(c, 0)
            seen[c] = rank[i] + 1
        keep = np.flatnonzero(rank < n)
        return replace(self, spec=f"{self.spec}[per_class={n}]", ids=[self.ids[i] for i in keep],
                       labels=labels[keep], load=_Subset(self.load, keep))

    def renamed(self, names) -> "Source":
        """The same items with ``names`` as the class names (one per class, in the source's class order)."""
        from dataclasses import replace

        from embedx.errors import EmbedxError

        names = [names] if isinstance(names, str) else list(names)
        if self.classnames is None:
            raise EmbedxError(f"classnames need class labels; {self.spec} is an image-caption source",
                              param="classnames")
        if len(names) != len(self.classnames) or not all(isinstance(n, str) and n.strip() for n in names):
            raise EmbedxError(f"classnames: {len(self.classnames)} non-empty names needed for {self.spec} "
                              f"({', '.join(self.classnames[:4])}{', ...' if len(self.classnames) > 4 else ''}), "
                              f"got {len(names)}", param="classnames")
        return replace(self, classnames=[n.strip() for n in names])

    def fingerprint(self) -> str:
        """sha256 over the ordered ids, labels/captions and class names."""
        h = hashlib.sha256()
        h.update(json.dumps([self.spec, self.classnames], sort_keys=True).encode())
        for i, item in enumerate(self.ids):
            tail = self.captions[i] if self.paired else int(self.labels[i])
            h.update(json.dumps([item, tail]).encode())
        return h.hexdigest()


class _Subset:
    """``load`` of a subset: item ``j`` is the parent's item ``keep[j]`` (a class, so loader workers can pickle it)."""

    def __init__(self, load: Callable[[int], Image.Image], keep: np.ndarray):
        self.parent, self.keep = load, keep

    def __call__(self, j: int) -> Image.Image:
        return self.parent(int(self.keep[j]))


def _pil_rgb(path: str) -> Image.Image:
    """The image file ``path`` (local) as RGB. A FIFO or device named *.png would block the reader forever, and a
    file above ``IMAGE_CAP`` is no image: both raise (an unreadable image) without a read."""
    from embedx.fs.files import IMAGE_CAP, NotAFile, open_binary, regular_size

    try:
        n = regular_size(path)
    except NotAFile as e:
        raise OSError(e.reason) from None
    except FileNotFoundError:
        raise OSError("no such file") from None
    if n > IMAGE_CAP:
        raise OSError(f"image file of {n:,} bytes is above the {IMAGE_CAP >> 20} MiB cap")
    with open_binary(path) as f, Image.open(f) as im:
        return im.convert("RGB")
