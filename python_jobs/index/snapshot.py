"""What the live index holds, chunk by chunk, copied into the warehouse for the ops marts.

LanceDB is not a dbt source, so after each embedding run that changed the published index,
`ops.indexed_chunks` is replaced with the key columns of every row of the published version
(no vectors, no text). The index freshness mart compares it with `document_chunks`: what is
indexed, what is stale, what is not indexed yet, and how long changes took to arrive.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from python_jobs.common.ledger import Ledger, has_rows, replace_all
from python_jobs.index.store import VectorIndex, read_columns

INDEXED_CHUNKS = {
    "chunk_id": "varchar",
    "doc_id": "varchar",
    "content_hash": "varchar",
    "metadata_hash": "varchar",
    "model_fingerprint": "varchar",
    "source_updated_at": "timestamp",
    "indexed_at": "timestamptz",
    "run_id": "varchar",
    "index_table": "varchar",
    "index_version": "bigint",
}
COPIED = [name for name in INDEXED_CHUNKS if name not in ("index_table", "index_version")]


def ledger(ops_schema: str) -> Ledger:
    return Ledger(ops_schema, "indexed_chunks", INDEXED_CHUNKS, ("chunk_id",))


def refresh(warehouse: Path, ops_schema: str, index: VectorIndex) -> bool:
    """Copy the published version in, unless that version is already there. Returns whether it wrote."""
    live = index.live()
    if live is None or not index.has_table(live.table):
        return False
    snapshot = ledger(ops_schema)
    if has_rows(warehouse, snapshot, "index_table = ? and index_version = ?", [live.table, live.version]):
        return False
    rows = read_columns(index.open(live.table, live.version), COPIED)
    rows = rows.append_column("index_table", pa.array([live.table] * rows.num_rows, pa.string()))
    rows = rows.append_column("index_version", pa.array([live.version] * rows.num_rows, pa.int64()))
    replace_all(warehouse, snapshot, rows)
    return True
