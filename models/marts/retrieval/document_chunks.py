"""Document chunks: the contract between the warehouse and the vector index.

Incremental: a document is re-chunked only when something copied onto its chunks
changed (its document_fingerprint) or the chunking settings changed; its old chunks
are replaced as a whole (delete+insert on doc_id), and a post-hook removes the chunks
of documents that are gone. `dbt build --full-refresh` re-chunks everything.
"""

import pyarrow as pa

from python_jobs.chunk.chunker import chunk_table, document_fingerprint
from python_jobs.chunk.schema import FINGERPRINT_COLUMNS
from python_jobs.common.failpoints import failpoint
from python_jobs.common.settings import RetrievalSettings


def model(dbt, session):
    # A column added to the chunk schema (python_jobs/chunk/schema.py) is added to a table built before it.
    dbt.config(
        materialized="incremental",
        incremental_strategy="delete+insert",
        unique_key="doc_id",
        on_schema_change="append_new_columns",
    )
    failpoint("dbt_document_chunks")  # tests kill dbt here to prove its finished nodes are still recorded
    settings = dbt.ref("chunking_settings").to_arrow_table().to_pylist()[0]
    config_hash = settings["chunking_config_hash"]
    documents = dbt.ref("documents")

    if dbt.is_incremental:
        # Compare fingerprints first, and read the text of the changed documents only.
        current = set(
            session.execute(
                f"select distinct doc_id, document_fingerprint from {dbt.this} where chunking_config_hash = ?",
                [config_hash],
            ).fetchall()
        )
        keys = documents.project(", ".join(FINGERPRINT_COLUMNS)).to_arrow_table().to_pylist()
        changed = [key["doc_id"] for key in keys if (key["doc_id"], document_fingerprint(key)) not in current]
        changed_ids = session.from_arrow(pa.table({"doc_id": pa.array(changed, pa.string())}))
        documents = documents.join(changed_ids, "doc_id", how="semi")

    columns = ", ".join((*FINGERPRINT_COLUMNS, "body"))
    rows = documents.project(columns).to_arrow_table().to_pylist()
    return chunk_table(RetrievalSettings.from_vars(settings), rows, config_hash)
