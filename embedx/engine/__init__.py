"""The engine every score runs on: ``registry`` (what each score needs), ``plan`` (the fewest passes),
``executor`` (where passes run), ``result`` (the typed result), ``progress`` (feedback on long work)."""
