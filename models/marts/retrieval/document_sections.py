"""The text hash of each section of each document: what boilerplate_sections counts.

Incremental: a document is cut again only when its landed content or the chunking settings changed
(the same documents document_chunks re-chunks for their content); its old rows are replaced as a
whole (delete+insert on doc_id), and a post-hook removes the rows of documents that are gone.
"""

import pyarrow as pa

from python_jobs.chunk.boilerplate import section_table


def model(dbt, session):
    dbt.config(materialized="incremental", incremental_strategy="delete+insert", unique_key="doc_id")
    settings = dbt.ref("chunking_settings").to_arrow_table().to_pylist()[0]
    config_hash = settings["chunking_config_hash"]
    documents = dbt.ref("documents")

    if dbt.is_incremental:
        # Compare content hashes first, and read the text of the changed documents only.
        current = set(
            session.execute(
                f"select distinct doc_id, source_content_hash from {dbt.this} where chunking_config_hash = ?",
                [config_hash],
            ).fetchall()
        )
        keys = documents.project("doc_id, content_hash").fetchall()
        changed = [doc_id for doc_id, content_hash in keys if (doc_id, content_hash) not in current]
        changed_ids = session.from_arrow(pa.table({"doc_id": pa.array(changed, pa.string())}))
        documents = documents.join(changed_ids, "doc_id", how="semi")

    rows = documents.project("doc_id, title, body, content_hash").to_arrow_table().to_pylist()
    return section_table(rows, config_hash)
