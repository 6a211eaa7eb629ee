"""Compare the chunk table with the index, chunk by chunk, and say what a run must do.

The plan is computed from the index itself (an anti-join of its key columns against
`document_chunks`, in DuckDB), never from a record store kept beside it that could drift
after a failure. Every chunk falls in one class:

    new               chunk id not in the index
    text_changed      in the index with another content hash, or from another model
    metadata_changed  same text, other metadata (title, owner, access level, ...): no model call
    unchanged         nothing to do
    deleted           in the index, gone from the chunk table

A chunk that needs a vector gets it from the model's vector cache when its text was
embedded before (a repeated footer, a moved chunk, a document deleted and re-added);
only the distinct texts that are in no cache are embedded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from python_jobs.chunk.schema import INDEXED_CHUNK_COLUMNS
from python_jobs.common.errors import PipelineError
from python_jobs.common.sqltext import sql_string
from python_jobs.index.encoders import ModelFingerprint
from python_jobs.index.gate import GateResult

CHUNKS_RELATION = "knowledge.document_chunks"
SETTINGS_RELATION = "knowledge.chunking_settings"
CLASSES = ("new", "text_changed", "metadata_changed", "unchanged", "deleted")
# A change in any of these rewrites the row and keeps the vector. `text` is not among them: it is
# part of embedding_text, so a change to it changes content_hash (and hashing it is most of the cost).
NOT_METADATA = {"chunk_id", "content_hash", "embedding_text", "text"}
METADATA_COLUMNS = tuple(c for c in INDEXED_CHUNK_COLUMNS if c not in NOT_METADATA)
INDEX_KEY_COLUMNS = ["chunk_id", "content_hash", "metadata_hash", "model_fingerprint"]


def metadata_hash_sql() -> str:
    """One hash of every metadata column, computed the same way for the chunk table and the index."""
    parts = ", ".join(f"coalesce(cast({c} as varchar), '\\0')" for c in METADATA_COLUMNS)
    return f"md5(concat_ws(chr(31), {parts}))"


@dataclass
class ChunkSource:
    """The chunking settings the chunk table was built with."""

    embedding_model: str
    model_max_tokens: int
    chunking_config_hash: str


@dataclass
class EmbedPlan:
    model: ModelFingerprint
    target_table: str
    counts: dict[str, int]
    chunks_total: int
    duplicates: int  # chunk ids with more than one index row: all copies are replaced
    texts_to_embed: int  # distinct content hashes no cache holds
    tokens_to_embed: int
    chunks_reused: int  # rows that get a cached vector, or one embedded for an identical text this run
    tokens_reused: int
    delete_ids: list[str] = field(default_factory=list)
    staged: Path | None = None  # rows to write, sorted by content hash (real runs only)
    seconds: float = 0.0

    @property
    def rows_to_write(self) -> int:
        return self.counts["new"] + self.counts["text_changed"] + self.counts["metadata_changed"] + self.duplicates

    @property
    def is_empty(self) -> bool:
        return self.rows_to_write == 0 and not self.delete_ids

    @property
    def cache_hit_rate(self) -> float | None:
        needing = self.chunks_reused + self.texts_to_embed
        return None if needing == 0 else self.chunks_reused / needing

    def estimated_cost(self, price_per_million_tokens: float) -> float:
        return self.tokens_to_embed * price_per_million_tokens / 1_000_000


def chunk_signature(model: ModelFingerprint, gate: GateResult) -> str:
    """What the chunk table looked like, for this model: the quality gate's fingerprint of every row.

    Recorded when a run publishes; a run that finds the same signature (and the same model) has
    nothing to do and stops before reading the index. The gate has already read the table for
    it, so the no-change check costs no second scan.
    """
    return f"{model.id}:{gate.row_count}:{gate.fingerprint}"


def bound_memory(con: duckdb.DuckDBPyConnection, spill_dir: Path, limit: str = "1GB") -> None:
    """Let DuckDB spill the plan's joins and the staging sort to disk instead of growing with the corpus."""
    spill_dir.mkdir(parents=True, exist_ok=True)
    con.execute(f"set memory_limit = {sql_string(limit)}")
    con.execute(f"set temp_directory = {sql_string(spill_dir)}")


def read_chunk_source(con: duckdb.DuckDBPyConnection) -> ChunkSource:
    try:
        row = con.execute(
            f"select embedding_model, model_max_tokens, chunking_config_hash from {SETTINGS_RELATION}"
        ).fetchone()
        con.execute(f"select 1 from {CHUNKS_RELATION} limit 0")
    except duckdb.CatalogException:
        raise PipelineError(
            f"{CHUNKS_RELATION} is not in the warehouse yet: run `make ingest` and `make build` first"
        ) from None
    if row is None:
        raise PipelineError(f"{SETTINGS_RELATION} is empty: run `make build`")
    return ChunkSource(*row)


def make_plan(
    con: duckdb.DuckDBPyConnection,
    model: ModelFingerprint,
    target_table: str,
    index_keys: pa.Table | None,
    cache_keys: pa.Table | None,
    stage_to: Path | None = None,
) -> EmbedPlan:
    """Classify every chunk against the index; with `stage_to`, also write the rows to apply there."""
    started = time.perf_counter()
    index_keys = index_keys if index_keys is not None else _empty(INDEX_KEY_COLUMNS)
    cache_keys = cache_keys if cache_keys is not None else _empty(["content_hash"])
    con.register("index_keys", index_keys)
    con.register("cache_keys", cache_keys)
    try:
        con.execute(
            f"""
            create or replace temp table embed_plan as
            with chunks as (
                select chunk_id, content_hash, token_count, {metadata_hash_sql()} as metadata_hash
                from {CHUNKS_RELATION}
            ),
            indexed as (
                select
                    chunk_id,
                    min(content_hash) as content_hash,
                    min(metadata_hash) as metadata_hash,
                    bool_and(model_fingerprint = $model) and min(content_hash) = max(content_hash) as consistent,
                    count(*) as copies
                from index_keys
                group by chunk_id
            ),
            classified as (
                select
                    coalesce(chunks.chunk_id, indexed.chunk_id) as chunk_id,
                    chunks.content_hash,
                    chunks.token_count,
                    chunks.metadata_hash,
                    coalesce(indexed.copies, 0) > 1 as duplicated,
                    case
                        when chunks.chunk_id is null then 'deleted'
                        when indexed.chunk_id is null then 'new'
                        when indexed.content_hash <> chunks.content_hash or not indexed.consistent
                            then 'text_changed'
                        when indexed.metadata_hash is distinct from chunks.metadata_hash then 'metadata_changed'
                        else 'unchanged'
                    end as change
                from chunks
                full outer join indexed on chunks.chunk_id = indexed.chunk_id
            )
            select
                classified.*,
                -- duplicated rows are deleted, then written again whole: they need a vector too
                change in ('new', 'text_changed') or (duplicated and change <> 'deleted') as needs_vector,
                classified.content_hash not in (select content_hash from cache_keys) as uncached
            from classified
            """,
            {"model": model.id},
        )
        counts = dict.fromkeys(CLASSES, 0) | dict(
            con.execute("select change, count(*) from embed_plan group by change").fetchall()
        )
        duplicates, total = con.execute(
            "select count(*) filter (where duplicated and change <> 'deleted'), "
            "count(*) filter (where change <> 'deleted') from embed_plan"
        ).fetchone()
        texts, tokens = con.execute(
            """
            select count(*), coalesce(sum(token_count), 0) from (
                select content_hash, any_value(token_count) as token_count
                from embed_plan where needs_vector and uncached group by content_hash
            )"""
        ).fetchone()
        reused, reused_tokens = con.execute(
            "select count(*), coalesce(sum(token_count), 0) from embed_plan where needs_vector"
        ).fetchone()
        delete_ids = [
            row[0]
            for row in con.execute(
                "select chunk_id from embed_plan where change = 'deleted' or duplicated order by chunk_id"
            ).fetchall()
        ]
        plan = EmbedPlan(
            model=model,
            target_table=target_table,
            counts=counts,
            chunks_total=total,
            duplicates=duplicates,
            texts_to_embed=texts,
            tokens_to_embed=int(tokens),
            chunks_reused=reused - texts,
            tokens_reused=int(reused_tokens) - int(tokens),
            delete_ids=delete_ids,
        )
        if stage_to is not None and plan.rows_to_write:
            plan.staged = _stage_rows(con, stage_to)
    finally:
        con.unregister("index_keys")
        con.unregister("cache_keys")
    plan.seconds = time.perf_counter() - started
    return plan


def _stage_rows(con: duckdb.DuckDBPyConnection, path: Path) -> Path:
    """Write the rows to apply to a Parquet file, so the warehouse is released before any embedding.

    Sorted by token count, then content hash: identical texts are adjacent, so they fall in one
    commit batch and embed once, and each model batch holds texts of about one length, so little
    of it is padding.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ", ".join(f"chunks.{c}" for c in INDEXED_CHUNK_COLUMNS)
    con.execute(
        f"""
        copy (
            select
                {columns}, plan.metadata_hash, plan.needs_vector, plan.uncached,
                -- not in the index (or deleted first): appended, which needs no join against the table
                plan.change = 'new' or plan.duplicated as absent
            from {CHUNKS_RELATION} as chunks
            inner join embed_plan as plan on chunks.chunk_id = plan.chunk_id
            where plan.needs_vector or plan.change = 'metadata_changed'
            order by chunks.token_count, chunks.content_hash, chunks.chunk_id
        ) to '{path}' (format parquet)
        """
    )
    return path


def _empty(columns: list[str]) -> pa.Table:
    return pa.table({c: pa.array([], pa.string()) for c in columns})
