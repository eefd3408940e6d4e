"""Filesystems: where a path or URL is opened.

  url     the filesystem behind a URL (s3, gs, memory, ...), bounded timeouts, storage faults as one-line errors
  files   input files (dumps, arrays, images) read safely: regular files only, capped reads, local or URL
"""
