"""Filesystems: where a path or URL is opened, and the one place that decides local vs URL.

  locations  ``location(path)``: a :class:`LocalLocation` or :class:`UrlLocation` with its capabilities (``preadv``,
             ``rename``, ``flock``, ``sync``, ``fadvise``) and the questions every storage answers (exists, open, ...)
  url        the filesystem behind a URL (s3, gs, memory, ...), bounded timeouts, storage faults as one-line errors
  files      input files (dumps, arrays, images) read safely: regular files only, capped reads, local or URL
"""
from embedx import _lazy

__all__ = ["LocalLocation", "Location", "UrlLocation", "location"]
__getattr__ = _lazy.exports(__name__, {name: "embedx.fs.locations" for name in __all__})
