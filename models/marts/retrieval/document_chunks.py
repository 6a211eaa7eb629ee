"""Document chunks: the contract between the warehouse and the vector index.

Incremental: a document is re-chunked only when something copied onto its chunks
changed (its document_fingerprint), the set of its sections that are boilerplate changed
(boilerplate_sections), or the chunking settings changed; its old chunks are replaced as a
whole (delete+insert on doc_id), and a post-hook removes the chunks of documents that are gone.
`dbt build --full-refresh` re-chunks everything.
"""

from collections import defaultdict

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
    # The boilerplate texts of the corpus, and which of them each document carries (python_jobs/chunk/boilerplate.py).
    shared = dbt.ref("boilerplate_sections").project("text_hash")
    carried = defaultdict(set)
    for doc_id, text_hash in (
        dbt.ref("document_sections").join(shared, "text_hash").project("doc_id, text_hash").fetchall()
    ):
        carried[doc_id].add(text_hash)
    boilerplate = {text_hash for (text_hash,) in shared.fetchall()}

    def with_boilerplate(document: dict) -> dict:
        document["boilerplate_sections"] = sorted(carried.get(document["doc_id"], ()))
        return document

    if dbt.is_incremental:
        # Compare fingerprints first, and read the text of the changed documents only.
        current = set(
            session.execute(
                f"select distinct doc_id, document_fingerprint from {dbt.this} where chunking_config_hash = ?",
                [config_hash],
            ).fetchall()
        )
        keys = documents.project(", ".join(FINGERPRINT_COLUMNS)).to_arrow_table().to_pylist()
        changed = [
            key["doc_id"] for key in keys if (key["doc_id"], document_fingerprint(with_boilerplate(key))) not in current
        ]
        changed_ids = session.from_arrow(pa.table({"doc_id": pa.array(changed, pa.string())}))
        documents = documents.join(changed_ids, "doc_id", how="semi")

    columns = ", ".join((*FINGERPRINT_COLUMNS, "body"))
    rows = [with_boilerplate(row) for row in documents.project(columns).to_arrow_table().to_pylist()]
    return chunk_table(RetrievalSettings.from_vars(settings), rows, config_hash, boilerplate=boilerplate)
