"""Retrieval Platform: one package per pipeline stage (land, chunk, transform, index, search, evaluate,
observe) over `common`; `pipeline.py` runs them in order and `cli.py` is the `rp` command line."""
