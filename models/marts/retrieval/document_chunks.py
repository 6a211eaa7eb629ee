"""Document chunks: the contract between the warehouse and the vector index.

Incremental: a document is re-chunked only when something copied onto its chunks
changed (its document_fingerprint) or the chunking settings changed; its old chunks
are replaced as a whole (delete+insert on doc_id), and a post-hook removes the chunks
of documents that are gone. `dbt build --full-refresh` re-chunks everything.
"""

from python_jobs.chunking import chunk_table, document_fingerprint
from python_jobs.config import RetrievalSettings

DOCUMENT_COLUMNS = "doc_id, title, body, doc_type, product_sku, category, access_level, owner, updated_at"


def model(dbt, session):
    dbt.config(materialized="incremental", incremental_strategy="delete+insert", unique_key="doc_id")
    settings = dbt.ref("chunking_settings").to_arrow_table().to_pylist()[0]
    retrieval = RetrievalSettings.from_vars(settings)
    config_hash = settings["chunking_config_hash"]
    documents = dbt.ref("documents").project(DOCUMENT_COLUMNS).to_arrow_table().to_pylist()

    if dbt.is_incremental:
        current = set(
            session.execute(
                f"select distinct doc_id, document_fingerprint from {dbt.this} where chunking_config_hash = ?",
                [config_hash],
            ).fetchall()
        )
        documents = [doc for doc in documents if (doc["doc_id"], document_fingerprint(doc)) not in current]

    return chunk_table(retrieval, documents, config_hash)
