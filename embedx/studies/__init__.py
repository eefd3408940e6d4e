"""``embedx study``: a model x task x method x seed grid of zero-shot measurements and fine-tuning runs, resumable
cell by cell, with the papers' tables and an HTML report (``embedx.studies.run.study``)."""
