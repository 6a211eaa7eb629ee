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
    rp embed --dry-run     # the plan: counts, tokens, estimated cost
    rp embed               # apply it
    rp embed --json --max-tokens 200000
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from python_jobs.chunk.schema import INDEXED_CHUNK_COLUMNS
from python_jobs.common.errors import ExitCode, PipelineError, WarehouseLockedError
from python_jobs.common.failpoints import failpoint
from python_jobs.common.ledger import mark_interrupted, record
from python_jobs.common.output import progress_bar
from python_jobs.common.settings import Settings
from python_jobs.common.sqltext import sql_in
from python_jobs.common.warehouse import connect
from python_jobs.index import gate as quality_gate
from python_jobs.index import snapshot as index_snapshot
from python_jobs.index.encoders import Embedder, load_embedder
from python_jobs.index.plan import (
    CHUNKS_RELATION,
    CLASSES,
    INDEX_KEY_COLUMNS,
    EmbedPlan,
    bound_memory,
    chunk_signature,
    make_plan,
    read_chunk_source,
)
from python_jobs.index.ray_executor import on_executor
from python_jobs.index.runs import EmbedSummary, ledger
from python_jobs.index.store import (
    INDEX_LAYOUT,
    INDEX_PREFIX,
    MODEL_CACHE_DIR,
    VectorIndex,
    bad_vectors,
    cache_schema,
    cache_table_name,
    clearance_texts,
    has_current_layout,
    index_schema,
    index_table_name,
    read_columns,
    scan,
    vector_type,
)
from python_jobs.index.upkeep import build_ann_index, cache_upkeep, needs_ann_index, upkeep

STAGING_DIR = "_staging"
DELETE_BATCH = 1000
# Rows already in the index are updated by merges, and each merge scans the whole table however
# few rows it changes: a run updates in merges of up to this many rows (a 1% change is one merge).
MERGE_ROWS = 100_000
WRITE_ROWS = 8192  # staged rows read at a time while preparing merges
CHECKPOINT_SECONDS = 5.0  # how often a run records what it has committed so far (a killed run's spend)


class BudgetExceededError(PipelineError):
    """The plan needs more tokens than a run may spend; nothing was embedded."""

    exit_code = ExitCode.BUDGET


class MassDeleteError(quality_gate.QualityGateError):
    """The run would delete more of the index than vars.embedding.max_delete_share allows."""


@dataclass
class EmbedOptions:
    dry_run: bool = False
    force: bool = False  # index even when the quality gate fails
    max_tokens: int | None = None  # overrides vars.embedding.max_tokens_per_run
    wait_seconds: float = 0.0  # how long to queue behind another run
    allow_mass_delete: bool = False  # shrink the index by more than vars.embedding.max_delete_share
    # `make verify ARGS=--repair`: never trust the no-change shortcut (live.json may name a damaged or
    # missing version), and with `rebuild` write every chunk into a new version of the table, vectors from
    # the cache (damaged cache entries dropped first) or the model, without reading the table's data.
    shortcut: bool = True
    rebuild: bool = False
    progress: bool | None = None  # None: a progress bar on a terminal only


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
            _run(settings, options, summary, embedder, _checkpointer(settings, summary, started))
            # The ops marts' copy of what the index holds (only when the published version moved).
            index_snapshot.refresh(settings.warehouse_path, settings.ops_schema, index)
            summary.status = "success"
        except BaseException as exc:
            summary.status = {
                quality_gate.QualityGateError: "refused_quality_gate",
                MassDeleteError: "refused_mass_delete",
                BudgetExceededError: "refused_budget",
            }.get(type(exc), "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            summary.error = str(exc) or type(exc).__name__
            raise
        finally:
            shutil.rmtree(settings.index_dir.scratch / STAGING_DIR, ignore_errors=True)
            summary.total_seconds = time.perf_counter() - clock
            record(settings.warehouse_path, ledger(settings), summary.ledger_row(started))
    return summary


def _run(
    settings: Settings,
    options: EmbedOptions,
    summary: EmbedSummary,
    embedder: Embedder | None,
    checkpoint: Callable[[], None] = lambda: None,
) -> None:
    index = VectorIndex(settings.index_dir)
    summary.index_dir = str(settings.index_dir)
    staging = settings.index_dir.scratch / STAGING_DIR  # local disk, also for an index on object storage
    if not options.dry_run:
        shutil.rmtree(staging, ignore_errors=True)  # rows staged by a run that was killed

    with connect(settings.warehouse_path, read_only=True) as con:
        source = read_chunk_source(con)
        # Before the model loads: the gate reads the table this connection plans from, so no dbt run can
        # change it in between (DuckDB allows one writer, and this reader blocks it).
        gate = _check_quality_gate(con, settings, options, summary)
        summary.chunking_config_hash = source.chunking_config_hash
        if source.embedding_model != settings.retrieval.embedding_model:
            summary.warnings.append(
                f"document_chunks were cut for {source.embedding_model!r} but vars.retrieval.embedding_model is "
                f"{settings.retrieval.embedding_model!r}: embedding with the chunks' model; run `make build` "
                "to re-cut the chunks for the configured one"
            )
        model_cache = index.location.scratch / MODEL_CACHE_DIR
        if embedder is None:  # vars.embedding.executor: the model runs here, or on a Ray actor pool
            embedder = load_embedder(source.embedding_model, settings.embedding, model_cache)
            embedder = on_executor(embedder, settings.embedding)
        model = embedder.fingerprint
        summary.model = asdict(model) | {"id": model.id}

        target = index_table_name(model)
        signature, rows = chunk_signature(model, gate), gate.row_count
        live = index.live()
        if (
            options.shortcut
            and not options.rebuild
            and live
            and live.layout == INDEX_LAYOUT
            and live.table == target
            and live.chunk_signature == signature
            and index.has_table(target)
        ):
            # Nothing changed since this index was published: no need to read it (or import lancedb).
            summary.index_table, summary.index_version, summary.published = target, live.version, True
            summary.chunks_total, summary.counts = rows, {name: 0 for name in CLASSES} | {"unchanged": rows}
            summary.token_budget = _budget(settings, options)
            return
        bound_memory(con, staging / "duckdb")
        table, rebuild = _open_index_table(index, target, options, summary)
        cache = _open_cache(index, model, rebuild and not options.dry_run, summary)
        plan = make_plan(
            con,
            model,
            target,
            None if rebuild else _index_keys(table, target),
            read_columns(cache, ["content_hash"]),
            stage_to=None if options.dry_run else staging / f"{summary.run_id}.parquet",
        )
    _summarize_plan(plan, settings, options, summary)
    summary.index_table = target
    _check_mass_delete(table.count_rows() if table is not None else 0, plan, settings, options, summary)
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
    if plan.is_empty and up_to_date and options.shortcut:  # a repair publishes again whatever it finds
        summary.index_version, summary.published, summary.swapped_from = live.version, True, None
        if live.chunk_signature != signature:  # so the next run with nothing to do stops sooner
            index.publish(table, model, live.run_id, signature)
        return  # a no-op: the model was never loaded

    failpoint("after_plan")
    if rebuild:
        table = index.overwrite(target, index_schema(model.dimension))
    else:
        table = index.open_or_create(target, index_schema(model.dimension))
    cache = index.open_or_create(cache_table_name(model), cache_schema(model.dimension))
    _delete(table, plan.delete_ids)
    summary.duplicates_removed = plan.duplicates
    failpoint("after_delete")
    if plan.staged is not None:
        _apply(plan, table, cache, embedder, settings, options, summary, checkpoint)

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
    if rebuild:
        texts = summary.texts_embedded
        summary.warnings.append(
            f"rebuilt {target} from document_chunks as version {summary.index_version}: {rows:,} rows, vectors "
            f"from the cache and {texts:,} text{'' if texts == 1 else 's'} embedded that the cache lacked"
        )


def _open_index_table(index: VectorIndex, target: str, options: EmbedOptions, summary: EmbedSummary):
    """The model's index table (None if there is none yet), and whether this run rebuilds it: when asked to,
    or when the table predates the per-clearance full-text columns (python_jobs.index.store.FTS_COLUMNS)."""
    try:
        table = index.open(target)
    except (OSError, RuntimeError, ValueError) as exc:
        if options.rebuild:
            return None, True
        raise PipelineError(
            f"index table {target} cannot be opened ({_first_line(exc)}): run `make verify ARGS=--repair` to "
            "rebuild it from the vector cache"
        ) from None
    if options.rebuild:
        return table, True
    if table is not None and not has_current_layout(table):
        summary.warnings.append(
            f"index table {target} predates the current layout (full-text columns per access level, no positions): "
            "rebuilt from document_chunks, with vectors from the cache"
        )
        return table, True
    return table, False


def _index_keys(table, target: str) -> pa.Table | None:
    try:
        return read_columns(table, INDEX_KEY_COLUMNS)
    except (OSError, RuntimeError, ValueError) as exc:
        raise PipelineError(
            f"index table {target} cannot be read ({_first_line(exc)}): run `make verify` to see what is damaged "
            "and `make verify ARGS=--repair` to rebuild it from the vector cache"
        ) from None


def _open_cache(index: VectorIndex, model, check: bool, summary: EmbedSummary):
    """The model's vector cache. With `check` (a rebuild), every entry is read first: a damaged vector would
    be copied into the rebuilt table, so it is dropped and its text embedded again, and a cache that cannot
    be read at all is started afresh."""
    name = cache_table_name(model)
    try:
        cache = index.open(name)
        if not check or cache is None:
            return cache
        damaged: list[str] = []
        for batch in scan(cache, ["content_hash", "vector"]):
            masks = bad_vectors(batch.column("vector"), model.normalized)
            bad = masks["missing"] | masks["non_finite"] | masks["non_unit"]
            damaged += [h for h, is_bad in zip(batch.column("content_hash").to_pylist(), bad, strict=True) if is_bad]
    except (OSError, RuntimeError, ValueError) as exc:
        if not check:
            raise PipelineError(
                f"the vector cache {name} cannot be opened ({_first_line(exc)}): run `make verify ARGS=--repair`"
            ) from None
        summary.warnings.append(f"the vector cache {name} cannot be read ({_first_line(exc)}): started afresh")
        return index.overwrite(name, cache_schema(model.dimension))
    _delete(cache, damaged, "content_hash")
    if damaged:
        summary.warnings.append(
            f"dropped {len(damaged):,} damaged vectors from the cache {name}: their texts are embedded again"
        )
    return cache


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_quality_gate(
    con, settings: Settings, options: EmbedOptions, summary: EmbedSummary
) -> quality_gate.GateResult:
    gate = quality_gate.check(con, CHUNKS_RELATION, settings.dbt_target_dir)
    summary.quality_gate = gate.describe()
    if gate.passed:
        return gate
    if options.force or options.dry_run:
        summary.quality_gate = f"failed: {gate.reason}" + (" (forced)" if options.force else "")
        summary.warnings.append("quality gate failed: " + "; ".join([gate.reason, *gate.failures]))
    else:
        quality_gate.require_passing(gate)
    return gate


def _checkpointer(settings: Settings, summary: EmbedSummary, started: datetime) -> Callable[[], None]:
    """Record the tokens and rows committed so far: at the first commit, then at most every CHECKPOINT_SECONDS,
    since a warehouse write costs more than an index commit (per commit it took most of the committer's time:
    bench/bench_scale.py). A busy warehouse only delays the record to the end."""
    last: list[float] = []

    def checkpoint() -> None:
        now = time.monotonic()
        if last and now - last[0] < CHECKPOINT_SECONDS:
            return
        last[:] = [now]
        with contextlib.suppress(WarehouseLockedError):
            record(settings.warehouse_path, ledger(settings), summary.ledger_row(started))

    return checkpoint


def _check_mass_delete(indexed: int, plan: EmbedPlan, settings: Settings, options: EmbedOptions, summary) -> None:
    """An empty or gutted chunk table is far more often a mistake upstream than an intended purge."""
    if not indexed or plan.chunks_total >= indexed:
        return
    share, limit = 1 - plan.chunks_total / indexed, settings.embedding.max_delete_share
    if share <= limit:
        return
    message = (
        f"this run would shrink the index from {indexed:,} to {plan.chunks_total:,} chunks, deleting {share:.0%} "
        f"of it, over vars.embedding.max_delete_share ({limit:.0%})"
    )
    if options.allow_mass_delete or options.dry_run:
        summary.warnings.append(message + (": allowed by --allow-mass-delete" if options.allow_mass_delete else ""))
        return
    raise MassDeleteError(
        f"{message}: nothing was changed and the published index still serves. If the chunk table is right, "
        "run again with --allow-mass-delete; if not, check what the last ingest and build quarantined or dropped."
    )


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


def _delete(table, keys: list[str], column: str = "chunk_id") -> None:
    for start in range(0, len(keys), DELETE_BATCH):
        table.delete(sql_in(column, keys[start : start + DELETE_BATCH]))


def _apply(
    plan, table, cache, embedder: Embedder, settings: Settings, options: EmbedOptions, summary, checkpoint
) -> None:
    """Write the staged rows. New chunks go in a commit batch at a time, right after their texts
    are embedded and cached; rows already in the index are updated afterwards by a few large
    merges, since each merge scans the whole table however few rows it changes."""
    summary.texts_embedded = summary.tokens_embedded = summary.chunks_reused = summary.tokens_reused = 0
    embedded_earlier: set[str] = set()  # committed to the cache by an earlier batch of this run
    unpaid: set[str] = set()  # embedded by this run, not yet written to a row (see _rows_with_vectors)
    names = table.schema.names
    progress = progress_bar(options.progress, total=plan.texts_to_embed, unit="chunk", desc="embedding", smoothing=0.1)
    with progress, _ahead_of_commits(embedder, plan.staged, settings.embedding.commit_rows) as embedder:
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
                checkpoint()  # the ledger counts what is committed, so a killed run still shows what it spent
                failpoint("after_index_commit")
    _merge_updates(plan, table, cache, unpaid, summary)
    summary.cache_hit_rate = plan.cache_hit_rate


def _ahead_of_commits(embedder: Embedder, staged: Path, commit_rows: int):
    """`embedder`, or for an executor that embeds ahead of the commits (`encode_stream`: the Ray actor pool of
    python_jobs/index/ray_executor.py) its vectors of every text the commit batches will embed, given to it in
    their order before the first and handed back a batch at a time, in that order."""
    if not hasattr(embedder, "encode_stream"):
        return contextlib.nullcontext(embedder)
    return contextlib.closing(_Streamed(embedder, _texts_in_commit_order(staged, commit_rows)))


class _Streamed:
    def __init__(self, embedder, texts: Iterator[list[str]]):
        self.fingerprint = embedder.fingerprint
        self._vectors = embedder.encode_stream(texts)

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = next(self._vectors, None)
        if vectors is None or len(vectors) != len(texts):
            got = 0 if vectors is None else len(vectors)
            raise PipelineError(f"the executor returned {got} vectors for a batch of {len(texts)} texts")
        return vectors

    def close(self) -> None:
        self._vectors.close()


def _texts_in_commit_order(staged: Path, commit_rows: int) -> Iterator[list[str]]:
    """The texts _apply embeds, a commit batch at a time, in its order."""
    embedded_earlier: set[str] = set()
    for rows in _staged_batches(staged, commit_rows):
        to_embed, _ = _texts_to_embed(rows.filter(rows.column("needs_vector")), embedded_earlier)
        if to_embed:
            embedded_earlier.update(to_embed)
            yield list(to_embed.values())


def _texts_to_embed(rows: pa.Table, embedded_earlier: set[str]) -> tuple[dict[str, str], dict[str, int]]:
    """The distinct texts of `rows` that no cache holds and no earlier batch embedded, and their tokens."""
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
    return to_embed, tokens_of


def _embed_uncached(rows: pa.Table, cache, embedder: Embedder, embedded_earlier: set[str], summary, progress):
    """Embed the texts of `rows` that no cache holds and commit them to the cache; their vectors."""
    to_embed, tokens_of = _texts_to_embed(rows, embedded_earlier)
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
    columns = {name: rows.column(name).cast(kind) for name, kind in INDEXED_CHUNK_COLUMNS.items()}
    columns["metadata_hash"] = rows.column("metadata_hash")
    columns["indexed_at"] = pa.array([now] * rows.num_rows, pa.timestamp("us", tz="UTC"))
    columns["run_id"] = pa.array([run_id] * rows.num_rows, pa.string())
    columns |= clearance_texts(columns["access_level"], columns["embedding_text"])
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
