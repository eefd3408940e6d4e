"""Interchange with other tools' files.

  arrays          ``embedx import`` of npy / npz / parquet arrays (``embedx.import_arrays``)
  dumps           ``embedx import --from``: clip-retrieval, DataComp and embedx export dumps, streamed
  export          ``embedx export``: npy, clip-retrieval and parquet dumps of a store
  clip_benchmark  CLIP_benchmark's result object for measures
"""
