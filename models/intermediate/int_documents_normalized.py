"""Document bodies with normalized unicode and whitespace, counted in words and model tokens.

Python because token counts must come from the embedding model's own tokenizer.
Incremental: only documents whose landed content changed (or all of them, when the
tokenizer changed) are normalized again; a post-hook drops documents that are gone.
"""

import re

import pyarrow as pa

from python_jobs.chunk.markdown import normalize_markdown
from python_jobs.chunk.model_files import resolve_model

WORD = re.compile(r"\w+(?:['’-]\w+)*")
BATCH_DOCUMENTS = 1_000  # bounds the memory held by tokenizer encodings


def model(dbt, session):
    dbt.config(materialized="incremental", incremental_strategy="delete+insert", unique_key="doc_id")
    settings = dbt.ref("chunking_settings").to_arrow_table().to_pylist()[0]
    tokenizer_hash = settings["tokenizer_hash"]
    landed = dbt.ref("stg_docs__documents")  # referenced by name in the SQL below

    if dbt.is_incremental:
        changed = session.sql(
            f"""
            select landed.doc_id, landed.body, landed.content_hash
            from landed
            left join {dbt.this} as normalized
                on landed.doc_id = normalized.doc_id
                and landed.content_hash = normalized.source_content_hash
                and normalized.tokenizer_hash = '{tokenizer_hash}'
            where normalized.doc_id is null
            """
        )
    else:
        changed = landed.project("doc_id, body, content_hash")
    documents = changed.to_arrow_table()

    tokenizer = resolve_model(settings["embedding_model"]).tokenizer()
    bodies = [normalize_markdown(body) for body in documents["body"].to_pylist()]
    token_counts: list[int] = []
    for start in range(0, len(bodies), BATCH_DOCUMENTS):
        encodings = tokenizer.encode_batch_fast(bodies[start : start + BATCH_DOCUMENTS], add_special_tokens=False)
        token_counts.extend(len(encoding.ids) for encoding in encodings)

    return pa.table(
        {
            "doc_id": documents["doc_id"].cast(pa.string()),
            "body": pa.array(bodies, pa.string()),
            "word_count": pa.array([len(WORD.findall(body)) for body in bodies], pa.int32()),
            "token_count": pa.array(token_counts, pa.int32()),
            "source_content_hash": documents["content_hash"].cast(pa.string()),
            "tokenizer_hash": pa.array([tokenizer_hash] * len(bodies), pa.string()),
        }
    )
