"""Text from data on a matplotlib figure, drawn literally.

matplotlib parses a string holding an even number of unescaped ``$`` as mathtext: a class name, task name or
method such as ``$^$`` then raises when the figure is saved (after all the work). :func:`literal` escapes every
``$`` (matplotlib draws ``\\$`` as ``$`` and parses nothing), so any string shows as typed. Every tick label,
title, legend label and annotation that quotes data goes through it.
"""
from __future__ import annotations


def literal(text) -> str:
    """``text`` (any value, ``str()`` of it) safe to draw: never parsed as mathtext."""
    return str(text).replace("$", r"\$")
