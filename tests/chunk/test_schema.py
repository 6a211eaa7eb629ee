"""document_chunks is declared once (python_jobs/chunk/schema.py): the dbt YAML, the index and search
all follow that declaration."""

from __future__ import annotations

import yaml

from python_jobs.chunk.schema import BUILD_ONLY_COLUMNS, CHUNK_SCHEMA, duckdb_type
from python_jobs.common.settings import PROJECT_DIR
from python_jobs.index.store import index_schema
from python_jobs.search.retriever import RESULT_COLUMNS


def model_columns(path: str, model: str) -> dict[str, str | None]:
    models = yaml.safe_load((PROJECT_DIR / path).read_text(encoding="utf-8"))["models"]
    (entry,) = [m for m in models if m["name"] == model]
    return {column["name"]: column.get("data_type") for column in entry["columns"]}


def test_the_dbt_yaml_declares_every_chunk_column_with_the_schemas_type():
    declared = model_columns("models/marts/retrieval/_retrieval__models.yml", "document_chunks")
    assert declared == {field.name: duckdb_type(field.type) for field in CHUNK_SCHEMA}


def test_the_index_and_search_results_carry_the_chunk_columns_as_declared():
    index = index_schema(384)
    for field in CHUNK_SCHEMA:
        if field.name in BUILD_ONLY_COLUMNS:
            assert field.name not in index.names
        else:
            assert index.field(field.name).type == field.type, field.name
    assert set(RESULT_COLUMNS) <= set(CHUNK_SCHEMA.names)
    assert {"chunk_id", "doc_id", "text", "heading_path", "doc_title", "access_level"} <= set(RESULT_COLUMNS)
