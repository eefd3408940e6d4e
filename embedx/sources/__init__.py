"""Data sources for ``embed``: an ordered list of items (id, label or caption) and a loader to a PIL image.

  base        :class:`Source`, what every kind builds
  catalog     ``parse_source(spec)`` through the kinds registry (``embedx.engine.kinds``); folder, csv, digits,
              synthetic
  files       local or URL image files listed from a folder or CSV
  webdataset  WebDataset tar shards
  parquet     image bytes or paths in Parquet files
  prompts     zero-shot prompt templates
"""
from embedx import _lazy

__all__ = ["Source", "default_workers", "parse_source"]
__getattr__ = _lazy.exports(__name__, {"Source": "embedx.sources.base", "default_workers": "embedx.sources.catalog",
                                       "parse_source": "embedx.sources.catalog"})
