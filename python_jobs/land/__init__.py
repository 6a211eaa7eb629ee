"""Stage 1, land: the landing-zone contract (zone.py) and the ingest job that loads new and changed
files into the raw schema. See docs/landing-zone.md and docs/bad-input.md."""
