"""The engine every score runs on.

  registry  what each score needs        plan      the fewest passes that serve them
  kinds     the kinds of input: data sources and dump formats (name, options, opener, can_open)
  executor  where passes run (serial, threaded; one map / map_reduce interface)
  dask      the same interface on a Dask cluster (embedx[dist]); ``cluster`` connects to one
  result    the typed result             progress  feedback on long work      docs  the README's tables
"""
