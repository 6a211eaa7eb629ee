"""Stage 5, search: vector, full-text and hybrid retrieval over the published index, with filters and
access levels as one safe prefilter. See docs/retrieval.md."""
