"""Bring the LanceDB index up to date with `document_chunks`, embedding only what changed.

A run, in order (each step's guarantee in brackets):

1. quality gate: the latest dbt build must have no error-level failure on the chunks or
   their parents                                                       [bad data is not served]
2. plan: classify every chunk against the index itself (python_jobs.index.plan), and
   stage the rows to write to Parquet; the warehouse is read-only and released here
3. budget: stop before embedding anything if the plan needs more tokens than allowed
4. apply, in batches of `commit_rows`: embed the texts no cache holds, commit them to the
   model's vector cache, then merge the rows into the index    [a kill loses one batch at most]
5. upkeep: full-text, scalar and (at size) ANN indexes, compaction, version cleanup
6. publish: point live.json at the new version                  [queries see all of a run or none]

A new model (or backend, or normalization) has a new fingerprint and so a new table,
filled beside the live one; the publish step swaps it in once it is complete. Killing the
job anywhere and running it again converges to what a clean build gives: the plan is
recomputed from the index, vectors already committed to the cache are not embedded again,
and nothing is visible to queries until the publish.

Example:
    python -m python_jobs.index.embed --dry-run     # the plan: counts, tokens, estimated cost
    python -m python_jobs.index.embed               # apply it
    python -m python_jobs.index.embed --json --max-tokens 200000
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from python_jobs.common.errors import PipelineError
from python_jobs.common.failpoints import failpoint
from python_jobs.common.ledger import Ledger, mark_interrupted, record
from python_jobs.common.output import emit, progress_bar, run_job
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect
from python_jobs.index import gate as quality_gate
from python_jobs.index import snapshot as index_snapshot
from python_jobs.index.encoders import Embedder, load_embedder
from python_jobs.index.plan import (
    CLASSES,
    INDEX_KEY_COLUMNS,
    EmbedPlan,
    bound_memory,
    chunk_signature,
    make_plan,
    read_chunk_source,
)
from python_jobs.index.store import (
    CHUNK_COLUMNS,
    INDEX_PREFIX,
    MODEL_CACHE_DIR,
    VectorIndex,
    build_ann_index,
    cache_schema,
    cache_table_name,
    cache_upkeep,
    index_schema,
    index_table_name,
    needs_ann_index,
    read_columns,
    sql_in,
    upkeep,
    vector_type,
)

STAGING_DIR = "_staging"
DELETE_BATCH = 1000
# Rows already in the index are updated by merges, and each merge scans the whole table however
# few rows it changes: a run updates in merges of up to this many rows (a 1% change is one merge).
MERGE_ROWS = 100_000
WRITE_ROWS = 8192  # staged rows read at a time while preparing merges

EMBED_RUNS = {
    "run_id": "varchar",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "status": "varchar",  # running, success, failed, refused_quality_gate, refused_budget, interrupted
    "forced": "boolean",
    "model_name": "varchar",
    "model_fingerprint": "varchar",
    "model_backend": "varchar",
    "model_dimension": "integer",
    "chunking_config_hash": "varchar",
    "index_table": "varchar",
    "index_version": "bigint",
    "published": "boolean",
    "swapped_from": "varchar",
    "chunks_total": "bigint",
    "chunks_new": "bigint",
    "chunks_text_changed": "bigint",
    "chunks_metadata_changed": "bigint",
    "chunks_unchanged": "bigint",
    "chunks_deleted": "bigint",
    "duplicates_removed": "bigint",
    "texts_embedded": "bigint",
    "tokens_embedded": "bigint",
    "chunks_reused": "bigint",
    "tokens_reused": "bigint",
    "cache_hit_rate": "double",
    "price_per_million_tokens": "double",
    "estimated_cost_usd": "double",
    "token_budget": "bigint",
    "plan_seconds": "double",
    "embed_seconds": "double",
    "write_seconds": "double",
    "upkeep_seconds": "double",
    "total_seconds": "double",
    "chunks_per_second": "double",
    "error": "varchar",
}


class BudgetExceededError(PipelineError):
    """The plan needs more tokens than a run may spend; nothing was embedded."""

    exit_code = 4


@dataclass
class EmbedOptions:
    dry_run: bool = False
    force: bool = False  # index even when the quality gate fails
    max_tokens: int | None = None  # overrides vars.embedding.max_tokens_per_run
    wait_seconds: float = 0.0  # how long to queue behind another run
    progress: bool | None = None  # None: a progress bar on a terminal only


@dataclass
class EmbedSummary:
    run_id: str
    status: str = "running"
    dry_run: bool = False
    forced: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    model_loaded: bool = False
    chunking_config_hash: str = ""
    index_dir: str = ""
    index_table: str = ""
    index_version: int | None = None
    published: bool = False
    swapped_from: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    chunks_total: int = 0
    duplicates_removed: int = 0
    texts_embedded: int = 0
    tokens_embedded: int = 0
    chunks_reused: int = 0
    tokens_reused: int = 0
    cache_hit_rate: float | None = None
    price_per_million_tokens: float = 0.0
    estimated_cost_usd: float = 0.0
    token_budget: int = 0
    plan_seconds: float = 0.0
    embed_seconds: float = 0.0
    write_seconds: float = 0.0
    upkeep_seconds: float = 0.0
    total_seconds: float = 0.0
    upkeep: dict[str, Any] | None = None
    quality_gate: str = ""
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def chunks_per_second(self) -> float | None:
        busy = self.embed_seconds + self.write_seconds
        return self.texts_embedded / busy if self.texts_embedded and busy else None

    def ledger_row(self, started_at: datetime) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": started_at,
            "finished_at": None if self.status == "running" else datetime.now(UTC),
            "status": self.status,
            "forced": self.forced,
            "model_name": self.model.get("name"),
            "model_fingerprint": self.model.get("id"),
            "model_backend": self.model.get("backend"),
            "model_dimension": self.model.get("dimension"),
            "chunking_config_hash": self.chunking_config_hash or None,
            "index_table": self.index_table or None,
            "index_version": self.index_version,
            "published": self.published,
            "swapped_from": self.swapped_from,
            "chunks_total": self.chunks_total,
            **{f"chunks_{name}": self.counts.get(name, 0) for name in ("new", "text_changed", "metadata_changed")},
            "chunks_unchanged": self.counts.get("unchanged", 0),
            "chunks_deleted": self.counts.get("deleted", 0),
            "duplicates_removed": self.duplicates_removed,
            "texts_embedded": self.texts_embedded,
            "tokens_embedded": self.tokens_embedded,
            "chunks_reused": self.chunks_reused,
            "tokens_reused": self.tokens_reused,
            "cache_hit_rate": self.cache_hit_rate,
            "price_per_million_tokens": self.price_per_million_tokens,
            "estimated_cost_usd": self.estimated_cost_usd,
            "token_budget": self.token_budget,
            "plan_seconds": self.plan_seconds,
            "embed_seconds": self.embed_seconds,
            "write_seconds": self.write_seconds,
            "upkeep_seconds": self.upkeep_seconds,
            "total_seconds": self.total_seconds,
            "chunks_per_second": self.chunks_per_second,
            "error": self.error,
        }


def ledger(settings: Settings) -> Ledger:
    return Ledger(settings.ops_schema, "embed_runs", EMBED_RUNS)


def embed(settings: Settings, options: EmbedOptions | None = None, embedder: Embedder | None = None) -> EmbedSummary:
    """Plan and apply one run; `embedder` replaces the configured model (the benchmark's stand-in)."""
    options = options or EmbedOptions()
    summary = EmbedSummary(run_id=_new_run_id(), dry_run=options.dry_run, forced=options.force)
    started, clock = datetime.now(UTC), time.perf_counter()
    if options.dry_run:
        _run(settings, options, summary, embedder)
        summary.total_seconds = time.perf_counter() - clock
        return summary

    index = VectorIndex(settings.index_dir)
    with index.lock(options.wait_seconds):
        mark_interrupted(settings.warehouse_path, ledger(settings), started)
        record(settings.warehouse_path, ledger(settings), summary.ledger_row(started))
        try:
            _run(settings, options, summary, embedder)
            # The ops marts' copy of what the index holds (only when the published version moved).
            index_snapshot.refresh(settings.warehouse_path, settings.ops_schema, index)
            summary.status = "success"
        except BaseException as exc:
            summary.status = {
                quality_gate.QualityGateError: "refused_quality_gate",
                BudgetExceededError: "refused_budget",
            }.get(type(exc), "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            summary.error = str(exc) or type(exc).__name__
            raise
        finally:
            shutil.rmtree(settings.index_dir / STAGING_DIR, ignore_errors=True)
            summary.total_seconds = time.perf_counter() - clock
            record(settings.warehouse_path, ledger(settings), summary.ledger_row(started))
    return summary


def _run(settings: Settings, options: EmbedOptions, summary: EmbedSummary, embedder: Embedder | None) -> None:
    index = VectorIndex(settings.index_dir)
    summary.index_dir = str(settings.index_dir)
    staging = settings.index_dir / STAGING_DIR
    if not options.dry_run:
        shutil.rmtree(staging, ignore_errors=True)  # rows staged by a run that was killed

    with connect(settings.warehouse_path, read_only=True) as con:
        source = read_chunk_source(con)
        summary.chunking_config_hash = source.chunking_config_hash
        if source.embedding_model != settings.retrieval.embedding_model:
            summary.warnings.append(
                f"document_chunks were cut for {source.embedding_model!r} but vars.retrieval.embedding_model is "
                f"{settings.retrieval.embedding_model!r}: embedding with the chunks' model; run `make build` "
                "to re-cut the chunks for the configured one"
            )
        model_cache = index.directory / MODEL_CACHE_DIR
        embedder = embedder or load_embedder(source.embedding_model, settings.embedding, model_cache)
        model = embedder.fingerprint
        summary.model = asdict(model) | {"id": model.id}
        _check_quality_gate(settings, options, summary)

        target = index_table_name(model)
        signature, rows = chunk_signature(con, model)
        live = index.live()
        if live and live.table == target and live.chunk_signature == signature and index.has_table(target):
            # Nothing changed since this index was published: no need to read it (or import lancedb).
            summary.index_table, summary.index_version, summary.published = target, live.version, True
            summary.chunks_total, summary.counts = rows, {name: 0 for name in CLASSES} | {"unchanged": rows}
            summary.token_budget = _budget(settings, options)
            return
        bound_memory(con, staging / "duckdb")
        table = index.open(target)
        cache = index.open(cache_table_name(model))
        plan = make_plan(
            con,
            model,
            target,
            read_columns(table, INDEX_KEY_COLUMNS),
            read_columns(cache, ["content_hash"]),
            stage_to=None if options.dry_run else staging / f"{summary.run_id}.parquet",
        )
    _summarize_plan(plan, settings, options, summary)
    summary.index_table = target
    if live and live.table != target:
        summary.swapped_from = live.table
    if options.dry_run:
        return

    if plan.tokens_to_embed > summary.token_budget:
        raise BudgetExceededError(
            f"the plan needs {plan.tokens_to_embed:,} tokens ({plan.texts_to_embed:,} texts, est. "
            f"${summary.estimated_cost_usd:.4f}), {plan.tokens_to_embed - summary.token_budget:,} over the budget "
            f"of {summary.token_budget:,} (vars.embedding.max_tokens_per_run, or --max-tokens): nothing was "
            "embedded. Raise the budget for this run with --max-tokens."
        )
    up_to_date = live is not None and table is not None and (live.table, live.version) == (target, table.version)
    if up_to_date and needs_ann_index(table, settings.embedding.ann_min_rows):
        up_to_date = False  # an earlier run was killed while building it
    if plan.is_empty and up_to_date:
        summary.index_version, summary.published, summary.swapped_from = live.version, True, None
        if live.chunk_signature != signature:  # so the next run with nothing to do stops sooner
            index.publish(table, model, live.run_id, signature)
        return  # a no-op: the model was never loaded

    failpoint("after_plan")
    table = index.open_or_create(target, index_schema(model.dimension))
    cache = index.open_or_create(cache_table_name(model), cache_schema(model.dimension))
    _delete(table, plan.delete_ids)
    summary.duplicates_removed = plan.duplicates
    failpoint("after_delete")
    if plan.staged is not None:
        _apply(plan, table, cache, embedder, settings, options, summary)

    report = upkeep(table, settings.embedding.keep_versions_days)
    cache_upkeep(cache, settings.embedding.keep_versions_days)
    summary.upkeep, summary.upkeep_seconds = asdict(report), report.seconds
    rows = table.count_rows()
    if rows != plan.chunks_total:
        raise PipelineError(
            f"index table {target} has {rows:,} rows after the run but document_chunks has {plan.chunks_total:,}: "
            "not published. Run `make verify` to see the difference, `make verify ARGS=--repair` to fix it."
        )
    failpoint("before_publish")
    ann_due = needs_ann_index(table, settings.embedding.ann_min_rows)
    # The signature goes with the last publish only: a run killed while building the ANN index
    # must not look finished to the next one.
    pointer = index.publish(table, model, summary.run_id, None if ann_due else signature)
    summary.index_version, summary.published = pointer.version, True
    summary.model_loaded = getattr(embedder, "loaded", False)
    report.tables_dropped = _drop_retired_tables(index, settings.embedding.keep_previous_indexes)
    if ann_due:
        report.ann_seconds = build_ann_index(table)
        report.ann_index = "created"
        summary.index_version = index.publish(table, model, summary.run_id, signature).version
    summary.upkeep = asdict(report)


def _check_quality_gate(settings: Settings, options: EmbedOptions, summary: EmbedSummary) -> None:
    gate = quality_gate.check(settings.dbt_target_dir)
    if gate.note:
        summary.warnings.append(gate.note)
    if gate.passed:
        summary.quality_gate = "passed" if gate.artifacts else "not checked"
    elif options.force or options.dry_run:
        summary.quality_gate = f"failed ({len(gate.failures)} failures)" + (": forced" if options.force else "")
        summary.warnings.append("quality gate failed: " + "; ".join(gate.failures))
    else:
        quality_gate.require_passing(settings.dbt_target_dir)


def _summarize_plan(plan: EmbedPlan, settings: Settings, options: EmbedOptions, summary: EmbedSummary) -> None:
    price = settings.embedding.price_per_million_tokens
    summary.counts = dict(plan.counts)
    summary.chunks_total = plan.chunks_total
    summary.plan_seconds = plan.seconds
    summary.price_per_million_tokens = price
    summary.token_budget = _budget(settings, options)
    summary.estimated_cost_usd = plan.estimated_cost(price)
    summary.cache_hit_rate = plan.cache_hit_rate
    # What the plan expects; a real run overwrites these with what it did.
    summary.texts_embedded, summary.tokens_embedded = plan.texts_to_embed, plan.tokens_to_embed
    summary.chunks_reused, summary.tokens_reused = plan.chunks_reused, plan.tokens_reused
    summary.duplicates_removed = plan.duplicates


def _budget(settings: Settings, options: EmbedOptions) -> int:
    return settings.embedding.max_tokens_per_run if options.max_tokens is None else options.max_tokens


def _delete(table, chunk_ids: list[str]) -> None:
    for start in range(0, len(chunk_ids), DELETE_BATCH):
        table.delete(sql_in("chunk_id", chunk_ids[start : start + DELETE_BATCH]))


def _apply(plan, table, cache, embedder: Embedder, settings: Settings, options: EmbedOptions, summary) -> None:
    """Write the staged rows. New chunks go in a commit batch at a time, right after their texts
    are embedded and cached; rows already in the index are updated afterwards by a few large
    merges, since each merge scans the whole table however few rows it changes."""
    summary.texts_embedded = summary.tokens_embedded = summary.chunks_reused = summary.tokens_reused = 0
    embedded_earlier: set[str] = set()  # committed to the cache by an earlier batch of this run
    unpaid: set[str] = set()  # embedded by this run, not yet written to a row (see _rows_with_vectors)
    names = table.schema.names
    progress = progress_bar(options.progress, total=plan.texts_to_embed, unit="chunk", desc="embedding", smoothing=0.1)
    with progress:
        for rows in _staged_batches(plan.staged, settings.embedding.commit_rows):
            with_vectors = rows.filter(rows.column("needs_vector"))
            if not with_vectors.num_rows:
                continue
            fresh = _embed_uncached(with_vectors, cache, embedder, embedded_earlier, summary, progress)
            unpaid.update(fresh)
            new_rows = with_vectors.filter(with_vectors.column("absent"))
            if new_rows.num_rows:
                started = time.perf_counter()
                table.add(_rows_with_vectors(new_rows, plan.model, cache, fresh, unpaid, names, summary))
                summary.write_seconds += time.perf_counter() - started
                failpoint("after_index_commit")
    _merge_updates(plan, table, cache, unpaid, summary)
    summary.cache_hit_rate = plan.cache_hit_rate


def _embed_uncached(rows: pa.Table, cache, embedder: Embedder, embedded_earlier: set[str], summary, progress):
    """Embed the texts of `rows` that no cache holds and commit them to the cache; their vectors."""
    to_embed: dict[str, str] = {}
    tokens_of: dict[str, int] = {}
    for content_hash, is_uncached, text, tokens in zip(
        rows.column("content_hash").to_pylist(),
        rows.column("uncached").to_pylist(),
        rows.column("embedding_text").to_pylist(),
        rows.column("token_count").to_pylist(),
        strict=True,
    ):
        if is_uncached and content_hash not in embedded_earlier and content_hash not in to_embed:
            to_embed[content_hash], tokens_of[content_hash] = text, tokens
    if not to_embed:
        return {}
    started = time.perf_counter()
    encoded = embedder.encode(list(to_embed.values()))
    summary.embed_seconds += time.perf_counter() - started
    started = time.perf_counter()
    # Appended, not merged: the plan found these texts in no cache, and a rerun after a crash
    # plans again, so a text is never added twice.
    cache.add(
        pa.table(
            {
                "content_hash": list(to_embed),
                "vector": pa.array(list(encoded), vector_type(encoded.shape[1])),
                "embedded_at": pa.array([datetime.now(UTC)] * len(to_embed), pa.timestamp("us", tz="UTC")),
                "run_id": [summary.run_id] * len(to_embed),
            },
            schema=cache.schema,
        )
    )
    summary.write_seconds += time.perf_counter() - started
    failpoint("after_cache_commit")
    progress.update(len(to_embed))
    summary.texts_embedded += len(to_embed)
    summary.tokens_embedded += sum(tokens_of.values())
    embedded_earlier.update(to_embed)
    return dict(zip(to_embed, encoded, strict=True))


def _rows_with_vectors(
    rows: pa.Table, model, cache, fresh: dict[str, np.ndarray], unpaid: set[str], schema_names: list[str], summary
) -> pa.Table:
    """Index rows for `rows`: chunk columns, model columns and each row's vector (just embedded, or cached)."""
    hashes = rows.column("content_hash").to_pylist()
    vectors = dict(fresh)
    missing = sorted(set(hashes) - set(vectors))
    vectors.update(_cached_vectors(cache, missing))
    lost = [h for h in missing if h not in vectors]
    if lost:
        raise PipelineError(
            f"{len(lost)} vectors expected in the cache {cache.name} are not there (e.g. {lost[0]}): "
            "run `make verify ARGS=--repair`"
        )
    # Every row gets a vector. The first row written with a text embedded in this run paid for
    # it; every other row reused a vector.
    tokens = rows.column("token_count").to_pylist()
    for content_hash, count in zip(hashes, tokens, strict=True):
        if content_hash in unpaid:
            unpaid.discard(content_hash)
        else:
            summary.chunks_reused += 1
            summary.tokens_reused += count
    out = _with_model(_index_columns(rows, summary.run_id, datetime.now(UTC)), model)
    out = out.append_column("vector", pa.array([vectors[h] for h in hashes], vector_type(model.dimension)))
    return out.select(schema_names)


def _merge_updates(plan, table, cache, unpaid: set[str], summary) -> None:
    """Rows already in the index, rewritten whole: a changed text with its new vector (embedded
    above, so cached), a metadata-only change with the vector the row already has.

    Whole rows, never a subset of columns: Lance applies a partial-column merge by rewriting the
    fragments it touches in place, which takes them out of every index (measured: one metadata
    change on a 1.25 M-row table left 1.24 M rows unindexed, and the next upkeep re-indexed them
    all). Whole rows are deleted and appended instead, so only they wait for the index.
    """
    names = table.schema.names
    for group in _merge_groups(pq.ParquetFile(plan.staged)):
        started = time.perf_counter()
        parts = []
        for rows in group:
            needs_vector = rows.column("needs_vector")
            changed, metadata_only = rows.filter(needs_vector), rows.filter(pc.invert(needs_vector))
            if changed.num_rows:
                parts.append(_rows_with_vectors(changed, plan.model, cache, {}, unpaid, names, summary))
            if metadata_only.num_rows:
                parts.append(_rows_with_current_vectors(metadata_only, plan.model, table, names, summary))
        update = pa.concat_tables(parts)
        table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(update)
        summary.write_seconds += time.perf_counter() - started
        failpoint("after_index_commit")


def _rows_with_current_vectors(rows: pa.Table, model, table, schema_names: list[str], summary) -> pa.Table:
    """Index rows for metadata-only changes: new columns, the vector the index already holds."""
    chunk_ids = rows.column("chunk_id").to_pylist()
    vectors = _vectors_by(table, "chunk_id", chunk_ids)
    lost = [c for c in chunk_ids if c not in vectors]
    if lost:
        raise PipelineError(
            f"{len(lost)} rows the plan found in index table {table.name} are gone (e.g. {lost[0]}): another "
            "process changed the index during this run; run `make embed` again"
        )
    out = _with_model(_index_columns(rows, summary.run_id, datetime.now(UTC)), model)
    out = out.append_column("vector", pa.array([vectors[c] for c in chunk_ids], vector_type(model.dimension)))
    return out.select(schema_names)


def _merge_groups(staged: pq.ParquetFile) -> Iterator[list[pa.Table]]:
    """The staged rows of chunks already in the index, MERGE_ROWS at a time."""
    group, size = [], 0
    for batch in staged.iter_batches(batch_size=WRITE_ROWS):
        rows = pa.Table.from_batches([batch])
        rows = rows.filter(pc.invert(rows.column("absent")))
        if rows.num_rows:
            group.append(rows)
            size += rows.num_rows
        if size >= MERGE_ROWS:
            yield group
            group, size = [], 0
    if group:
        yield group


def _staged_batches(path: Path, rows: int) -> Iterator[pa.Table]:
    staged = pq.ParquetFile(path)
    for batch in staged.iter_batches(batch_size=rows):
        yield pa.Table.from_batches([batch])


def _index_columns(rows: pa.Table, run_id: str, now: datetime) -> pa.Table:
    """The chunk's own columns, cast to the index schema, plus when and by which run it was written."""
    columns = {name: rows.column(name).cast(kind) for name, kind in CHUNK_COLUMNS.items()}
    columns["metadata_hash"] = rows.column("metadata_hash")
    columns["indexed_at"] = pa.array([now] * rows.num_rows, pa.timestamp("us", tz="UTC"))
    columns["run_id"] = pa.array([run_id] * rows.num_rows, pa.string())
    return pa.table(columns)


def _with_model(rows: pa.Table, model) -> pa.Table:
    n = rows.num_rows
    for name, value, kind in (
        ("model_name", model.name, pa.string()),
        ("model_fingerprint", model.id, pa.string()),
        ("model_weights_hash", model.weights_hash, pa.string()),
        ("model_dimension", model.dimension, pa.int32()),
        ("model_normalized", model.normalized, pa.bool_()),
    ):
        rows = rows.append_column(name, pa.array([value] * n, kind))
    return rows


def _cached_vectors(cache, hashes: list[str]) -> dict[str, np.ndarray]:
    return _vectors_by(cache, "content_hash", hashes)


def _vectors_by(table, key: str, values: list[str]) -> dict[str, np.ndarray]:
    """The vectors of the rows whose `key` is one of `values`, by that key (an indexed column)."""
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(values), DELETE_BATCH):
        group = values[start : start + DELETE_BATCH]
        rows = table.search().where(sql_in(key, group)).select([key, "vector"]).limit(None).to_arrow()
        vectors = rows.column("vector").combine_chunks().flatten().to_numpy().reshape(rows.num_rows, -1)
        found.update(zip(rows.column(key).to_pylist(), vectors, strict=True))
    return found


def _drop_retired_tables(index: VectorIndex, keep_previous: int) -> list[str]:
    """Drop index tables (and their caches) of models that are neither live nor among the last few."""
    pointer = index.live()
    if pointer is None:
        return []
    keep = {pointer.table} | {entry["table"] for entry in pointer.history[:keep_previous]}
    dropped = []
    for name in index.table_names():
        if name.startswith(INDEX_PREFIX) and name not in keep:
            index.drop(name)
            dropped.append(name)
            cache = name.replace(INDEX_PREFIX, "vectors_", 1)
            if cache in index.table_names():
                index.drop(cache)
    return dropped


def _new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def render(summary: EmbedSummary) -> str:
    counts = summary.counts
    head = "plan (dry run, nothing changed)" if summary.dry_run else f"embed {summary.run_id}: {summary.status}"
    lines = [
        f"{head} in {summary.total_seconds:.2f}s",
        f"  model:  {summary.model.get('name')} ({summary.model.get('dimension')}d, {summary.model.get('backend')}, "
        f"fingerprint {summary.model.get('id')})",
        f"  chunks: {summary.chunks_total:,} in document_chunks: {counts.get('new', 0):,} new, "
        f"{counts.get('text_changed', 0):,} text changed, {counts.get('metadata_changed', 0):,} metadata only, "
        f"{counts.get('unchanged', 0):,} unchanged, {counts.get('deleted', 0):,} deleted"
        + (f", {summary.duplicates_removed:,} duplicated" if summary.duplicates_removed else ""),
        f"  {'to embed' if summary.dry_run else 'embedded'}: {summary.texts_embedded:,} texts, "
        f"{summary.tokens_embedded:,} tokens (est. ${summary.estimated_cost_usd:.4f} at "
        f"${summary.price_per_million_tokens}/M tokens; budget {summary.token_budget:,}); reused "
        f"{summary.chunks_reused:,} cached vectors"
        + (f" (cache hit rate {summary.cache_hit_rate:.0%})" if summary.cache_hit_rate is not None else ""),
    ]
    if not summary.dry_run:
        swap = f", swapped in for {summary.swapped_from}" if summary.swapped_from and summary.published else ""
        lines.append(
            f"  index:  {summary.index_table} version {summary.index_version}"
            f"{' published' if summary.published else ' not published'}{swap} ({summary.index_dir})"
        )
        if summary.texts_embedded:
            lines.append(
                f"  time:   plan {summary.plan_seconds:.2f}s, embed {summary.embed_seconds:.1f}s, write "
                f"{summary.write_seconds:.1f}s, upkeep {summary.upkeep_seconds:.1f}s"
            )
    if summary.quality_gate:
        lines.append(f"  quality gate: {summary.quality_gate}")
    lines += [f"  warning: {w}" for w in summary.warnings]
    return "\n".join(lines)


@click.command()
@click.option("--dry-run", is_flag=True, help="Print the plan (counts, tokens, estimated cost) and change nothing.")
@click.option("--force", is_flag=True, help="Index even when the latest dbt build failed tests on the chunks.")
@click.option("--max-tokens", type=click.IntRange(min=0), help="Token budget of this run (default: vars.embedding).")
@click.option("--wait", "wait_seconds", type=click.FloatRange(min=0), default=0.0, help="Queue up to N s behind a run.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def main(dry_run: bool, force: bool, max_tokens: int | None, wait_seconds: float, progress, as_json: bool) -> None:
    """Embed new and changed chunks of document_chunks into the LanceDB index.

    Example: python -m python_jobs.index.embed --dry-run
    """
    settings = run_job(Settings.load)
    options = EmbedOptions(dry_run, force, max_tokens, wait_seconds, progress)
    summary = run_job(lambda: embed(settings, options))
    emit(asdict(summary) | {"chunks_per_second": summary.chunks_per_second}, render(summary), as_json)


if __name__ == "__main__":
    main()
