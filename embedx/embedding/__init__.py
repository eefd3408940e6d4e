"""The ``embed`` workflow (``embedx.embed(...)``, ``embedx embed``).

  serial   a source and an encoder streamed into a store, resumable
  options  the run's options, grouped: source, encode, write, cluster
  plan     what serial and cluster runs share so their stores are the same byte for byte
  cluster  the same run as Dask tasks writing disjoint chunks
"""
