"""Stage 2, chunk: markdown normalization, the chunker and the model files it counts tokens with, and
the document_chunks schema. The only package the dbt Python models import: it loads no model runtime
and no index (an import-linter contract says so). See docs/chunking.md."""
