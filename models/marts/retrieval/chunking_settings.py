"""The chunking settings in force for this build: one row that every chunking step reads.

Settings come from `vars.retrieval` in dbt_project.yml (passed in through this model's
config, so they show in the lineage docs); the model's token limit and tokenizer hash
are read from the embedding model's own files.
"""

import pyarrow as pa

from python_jobs.chunk.chunker import chunking_settings
from python_jobs.common.settings import RetrievalSettings


def model(dbt, session):
    dbt.config(materialized="table")
    # dbt finds the config a Python model reads by parsing literal dbt.config.get calls.
    retrieval = RetrievalSettings.from_vars(
        {
            "embedding_model": dbt.config.get("embedding_model"),
            "chunk_target_tokens": dbt.config.get("chunk_target_tokens"),
            "chunk_overlap_tokens": dbt.config.get("chunk_overlap_tokens"),
            "shared_section_headings": dbt.config.get("shared_section_headings"),
            "max_chunk_characters": dbt.config.get("max_chunk_characters"),
            "pii_policy": dbt.config.get("pii_policy"),
            "boilerplate_min_docs": dbt.config.get("boilerplate_min_docs"),
        }
    )
    return pa.Table.from_pylist([chunking_settings(retrieval)])
