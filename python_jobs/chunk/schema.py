"""The `document_chunks` table, declared once.

The dbt Python model writes it (python_jobs/chunk/chunker.py), the index copies its columns
next to the vectors (python_jobs/index/store.py), search returns a projection of them
(python_jobs/search/retriever.py), and the dbt YAML declares the same `data_type`s, which a
test holds against this schema (tests/chunk/test_schema.py).
"""

from __future__ import annotations

import pyarrow as pa

# Document columns copied onto every chunk, for filtering and freshness.
DOCUMENT_COLUMNS = ("doc_type", "product_sku", "category", "access_level", "owner")

CHUNK_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("chunk_index", pa.int32()),
        ("first_chunk", pa.bool_()),
        ("section_id", pa.string()),
        ("heading_path", pa.string()),
        ("text", pa.string()),
        ("embedding_text", pa.string()),
        ("token_count", pa.int32()),
        ("content_hash", pa.string()),
        ("doc_title", pa.string()),
        *((name, pa.string()) for name in DOCUMENT_COLUMNS),
        ("source_updated_at", pa.timestamp("us")),
        ("document_fingerprint", pa.string()),
        ("chunking_config_hash", pa.string()),
        # What vars.retrieval.pii_policy did with personal data in the document (block, redact, allow), and
        # how many matches were replaced in the chunk's heading path and text; the no_pii test reads the first.
        ("pii_action", pa.string()),
        ("pii_redactions", pa.int32()),
    ]
)

# The build's own: document_fingerprint decides which documents dbt re-chunks, the PII columns are for the
# no_pii test and the run summaries, and chunk_index orders a document's chunks for a reader. None is copied
# to the index: a row there is rewritten when a column it holds changes, and a chunk's position changes for
# every chunk after an insertion, where its text and id do not (docs/embedding.md). The index keeps only
# first_chunk, which changes for the chunk that becomes or stops being its document's first.
BUILD_ONLY_COLUMNS = frozenset({"document_fingerprint", "pii_action", "pii_redactions", "chunk_index"})
# What a chunk row of the index carries besides its vector and how it was made.
INDEXED_CHUNK_COLUMNS: dict[str, pa.DataType] = {
    field.name: field.type for field in CHUNK_SCHEMA if field.name not in BUILD_ONLY_COLUMNS
}

# What a document's chunks are made from. content_hash covers the landed front matter and
# body, so the fingerprint needs no body: an incremental build can compare fingerprints of
# every document without reading their text.
FINGERPRINT_COLUMNS = ("doc_id", "content_hash", "title", "updated_at", *DOCUMENT_COLUMNS)

DUCKDB_TYPES = {
    pa.string(): "varchar",
    pa.int32(): "integer",
    pa.bool_(): "boolean",
    pa.timestamp("us"): "timestamp",
}


def duckdb_type(kind: pa.DataType) -> str:
    """The DuckDB type dbt declares for an Arrow type of this schema (`data_type` in the YAML)."""
    return DUCKDB_TYPES[kind]
