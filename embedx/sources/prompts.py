"""Prompt templates for class texts: each class name fills the ``{}`` of every template (``embed``, ``finetune``)."""
from __future__ import annotations

import os
from typing import Sequence

from embedx.errors import EmbedxError
from embedx.sources.catalog import Source


def resolve_templates(templates: Sequence[str] | None, source: Source) -> list[str]:
    """Templates from ``--template`` values: literal strings with ``{}``, ``simple`` / ``openai`` (open_clip's
    ImageNet ensembles) or ``@FILE`` (one template per line). Default: the source's own template."""
    if not templates:
        return [source.default_template]
    out: list[str] = []
    for t in templates:
        if t in ("simple", "openai"):
            from open_clip import zero_shot_metadata as zm

            seq = zm.SIMPLE_IMAGENET_TEMPLATES if t == "simple" else zm.OPENAI_IMAGENET_TEMPLATES
            out += [f("{}") for f in seq]
        elif t.startswith("@"):
            path = t[1:]
            if not os.path.isfile(path):
                raise EmbedxError(f"template file not found: {path}")
            with open(path, encoding="utf-8") as f:
                out += [line.strip() for line in f if line.strip()]
        else:
            out.append(t)
    for t in out:
        if "{}" not in t:
            raise EmbedxError(f"template {t!r} has no '{{}}' placeholder for the class name")
    return out
