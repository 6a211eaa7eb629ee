"""Document bodies with normalized unicode and whitespace, counted in words and model tokens.

Python because token counts must come from the embedding model's own tokenizer.
"""

import re

import pyarrow as pa

from python_jobs.embedding_model import resolve_model
from python_jobs.markdown_text import normalize_markdown

WORD = re.compile(r"\w+(?:['’-]\w+)*")
BATCH_DOCUMENTS = 1_000  # bounds the memory held by tokenizer encodings


def model(dbt, session):
    dbt.config(materialized="table")
    settings = dbt.ref("chunking_settings").to_arrow_table().to_pylist()[0]
    tokenizer = resolve_model(settings["embedding_model"]).tokenizer()
    documents = dbt.ref("stg_docs__documents").project("doc_id, body").to_arrow_table()

    doc_ids = documents["doc_id"].to_pylist()
    bodies = [normalize_markdown(body) for body in documents["body"].to_pylist()]
    token_counts: list[int] = []
    for start in range(0, len(bodies), BATCH_DOCUMENTS):
        encodings = tokenizer.encode_batch(bodies[start : start + BATCH_DOCUMENTS], add_special_tokens=False)
        token_counts.extend(len(encoding.ids) for encoding in encodings)

    return pa.table(
        {
            "doc_id": pa.array(doc_ids, pa.string()),
            "body": pa.array(bodies, pa.string()),
            "word_count": pa.array([len(WORD.findall(body)) for body in bodies], pa.int32()),
            "token_count": pa.array(token_counts, pa.int32()),
        }
    )
