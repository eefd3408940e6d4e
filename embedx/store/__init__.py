"""Embedding stores, schema 1 (DESIGN.md, "Store"): a Zarr v3 group on a local path or an fsspec URL.

  reader      :class:`Store`: whole-chunk reads checked against their checksums, never past the commit marker;
              :class:`StoreRef` / :func:`open_ref`: a store as a task in another process opens it
  writer      :class:`StoreWriter`: crash-safe, resumable writes (data first, the commit marker last)
  sink        :class:`ChunkSink`: every write of rows, whole chunks checksummed and summed as they are written
  layout      the schema: arrays, chunk files, metadata, committed rows
  placement   staging folders, atomic placement of a finished store, the writer lock, crash recovery
  chunkio     direct (zarr-bypassing) reads and writes of whole uncompressed chunks
  checksums   crc32c per chunk file and the content hash of the rows; ``integrity`` verifies both
  atomic      atomic file writes
"""
from embedx import _lazy

__all__ = ["ARRAYS", "CODECS", "DEFAULT_CODEC", "DTYPES", "SCHEMA", "StorageError", "Store", "StoreError", "StoreRef", "StoreWriter", "TARGET_CHUNK_BYTES", "check_target", "default_chunk_rows", "exists", "is_url", "normalized_sum", "open_ref", "opened_verified", "read_meta", "sync_tree"]
__getattr__ = _lazy.exports(__name__, {
    "Store": "embedx.store.reader", "StoreRef": "embedx.store.reader", "open_ref": "embedx.store.reader", "opened_verified": "embedx.store.reader",
    "StoreWriter": "embedx.store.writer", "DTYPES": "embedx.store.writer", "CODECS": "embedx.store.writer", "DEFAULT_CODEC": "embedx.store.writer", "TARGET_CHUNK_BYTES": "embedx.store.writer", "check_target": "embedx.store.writer", "exists": "embedx.store.layout", "default_chunk_rows": "embedx.store.writer", "normalized_sum": "embedx.store.sink", "sync_tree": "embedx.store.writer",
    "ARRAYS": "embedx.store.layout", "SCHEMA": "embedx.store.layout", "read_meta": "embedx.store.layout", "is_url": "embedx.fs.url",
    "StoreError": "embedx.errors", "StorageError": "embedx.errors",
})
