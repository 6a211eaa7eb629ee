"""Land the files of the landing zone into the warehouse's `raw` schema.

Incremental and idempotent: a manifest (`raw._landing_files`) remembers each file's size,
mtime and SHA-256, so only new or changed files are read again; a file that disappeared
takes its rows with it. All changes of a run are applied in one DuckDB transaction, parsed
and inserted in byte-bounded batches; a file that cannot be parsed fails the job (after
every file was checked, so all are named at once) and the transaction is rolled back, so
the last good load stays exactly as it was. Records that cannot be read land in
`raw._quarantine` with the file, line and reason; nothing is dropped silently.

Why hand-written rather than dlt: what this job must guarantee (per-line quarantine with
line numbers, file-level change detection, all-or-nothing publication across tables) sits
below dlt's abstractions: dlt would still need this parsing code and adds its own state
store beside the warehouse. DuckDB's transactions give the atomicity directly.

Example:
    rp ingest              # load what changed
    rp ingest --json       # machine-readable summary
    rp ingest --full-refresh
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
from tqdm import tqdm

from python_jobs.common.errors import LandingFileError, MassQuarantineError, PipelineError
from python_jobs.common.output import Summary
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect
from python_jobs.land.zone import SOURCES, LandingSource, ParsedFile, discover, file_sha256, read_file

METADATA_COLUMNS = (
    "_source_file VARCHAR NOT NULL, _source_line INTEGER NOT NULL, _record_hash VARCHAR NOT NULL, "
    "_file_hash VARCHAR NOT NULL, _loaded_at TIMESTAMPTZ NOT NULL, _ingest_run_id VARCHAR NOT NULL"
)


@dataclass
class FileState:
    source: str  # raw table
    path: str  # relative to the landing directory
    size: int
    mtime_ns: int
    file_hash: str | None = None


@dataclass
class LoadPlan:
    new: list[FileState]
    changed: list[FileState]
    removed: dict[str, str]  # path -> raw table
    touched: dict[str, int]  # same bytes, new mtime: path -> mtime_ns
    unchanged: int

    @property
    def to_read(self) -> list[FileState]:
        return self.new + self.changed


@dataclass
class IngestSummary(Summary):
    run_id: str
    landing_dir: str
    warehouse: str
    status: str = "success"
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    rows_loaded: int = 0
    rows_deleted: int = 0
    rows_quarantined: int = 0
    seconds: float = 0.0
    per_table: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    warnings_total: int = 0

    def warn(self, messages: Iterable[str]) -> None:
        """Keep the first MAX_WARNINGS messages; raw._quarantine has every record anyway."""
        for message in messages:
            if len(self.warnings) < MAX_WARNINGS:
                self.warnings.append(message)
            self.warnings_total += 1

    def count(self, table: str, what: str, n: int) -> None:
        counts = self.per_table.setdefault(table, {"loaded": 0, "deleted": 0, "quarantined": 0})
        counts[what] += n

    def to_text(self) -> str:
        return render(self)


def ensure_schema(con: duckdb.DuckDBPyConnection, schema: str) -> None:
    con.execute(f"create schema if not exists {schema}")
    for source in SOURCES:
        columns = ", ".join(f"{c} VARCHAR" for c in source.columns)
        con.execute(f"create table if not exists {schema}.{source.table} ({columns}, {METADATA_COLUMNS})")
    con.execute(f"""
        create table if not exists {schema}._landing_files (
            source VARCHAR NOT NULL, source_file VARCHAR PRIMARY KEY, file_hash VARCHAR NOT NULL,
            size_bytes BIGINT NOT NULL, mtime_ns BIGINT NOT NULL, modified_at TIMESTAMPTZ NOT NULL,
            row_count INTEGER NOT NULL, quarantined_count INTEGER NOT NULL,
            first_loaded_at TIMESTAMPTZ NOT NULL, loaded_at TIMESTAMPTZ NOT NULL, ingest_run_id VARCHAR NOT NULL)""")
    con.execute(f"""
        create table if not exists {schema}._quarantine (
            source VARCHAR NOT NULL, source_file VARCHAR NOT NULL, line INTEGER NOT NULL,
            reason VARCHAR NOT NULL, raw_record VARCHAR, quarantined_at TIMESTAMPTZ NOT NULL,
            ingest_run_id VARCHAR NOT NULL)""")
    con.execute(f"""
        create table if not exists {schema}._ingest_runs (
            run_id VARCHAR PRIMARY KEY, started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ,
            status VARCHAR NOT NULL, landing_dir VARCHAR, files_new INTEGER, files_changed INTEGER,
            files_unchanged INTEGER, files_removed INTEGER, rows_loaded BIGINT, rows_deleted BIGINT,
            rows_quarantined BIGINT, error VARCHAR)""")


def scan_landing_zone(landing_dir: Path) -> dict[str, FileState]:
    if not landing_dir.is_dir():
        raise PipelineError(
            f"landing directory {landing_dir} does not exist: set vars.landing_dir in dbt_project.yml "
            "or RP_LANDING_DIR, or generate data with `make data`"
        )
    found: dict[str, FileState] = {}
    zone = landing_dir.resolve()
    outside = []
    for source in SOURCES:
        for path in discover(landing_dir, source):
            target = path.resolve()
            if not target.is_relative_to(zone):
                outside.append(f"{path.relative_to(landing_dir).as_posix()} -> {target}")
                continue
            stat = path.stat()
            rel = path.relative_to(landing_dir).as_posix()
            found[rel] = FileState(source.table, rel, stat.st_size, stat.st_mtime_ns)
    if outside:
        raise LandingFileError(
            f"{len(outside)} landing path(s) are symbolic links that leave the landing zone {zone}; links must "
            "stay inside it (copy the file in instead). Nothing was read:\n  " + "\n  ".join(outside)
        )
    return found


def plan_files(
    con: duckdb.DuckDBPyConnection,
    schema: str,
    landing_dir: Path,
    found: dict[str, FileState],
    *,
    full_refresh: bool = False,
    checksum: bool = False,
    allow_source_removal: bool = False,
) -> LoadPlan:
    """Split files into new, changed (content differs), touched and removed.

    A file whose size and mtime match the manifest is taken as unchanged without reading it
    (as make and rsync do); `--checksum` hashes every file instead."""
    known = {
        path: (source, size, mtime_ns, file_hash)
        for path, source, size, mtime_ns, file_hash in con.execute(
            f"select source_file, source, size_bytes, mtime_ns, file_hash from {schema}._landing_files"
        ).fetchall()
    }
    plan = LoadPlan(new=[], changed=[], removed={}, touched={}, unchanged=0)
    for rel, state in found.items():
        previous = known.get(rel)
        if previous is None:
            state.file_hash = file_sha256(landing_dir / rel)
            plan.new.append(state)
            continue
        _, size, mtime_ns, file_hash = previous
        if not full_refresh and not checksum and (size, mtime_ns) == (state.size, state.mtime_ns):
            plan.unchanged += 1
            continue
        state.file_hash = file_sha256(landing_dir / rel)
        if full_refresh or state.file_hash != file_hash:
            plan.changed.append(state)
        else:
            plan.touched[rel] = state.mtime_ns
            plan.unchanged += 1
    plan.removed = {rel: known[rel][0] for rel in known if rel not in found}
    gone_sources = set(plan.removed.values()) - {s.source for s in found.values()}
    if gone_sources and not allow_source_removal:
        raise PipelineError(
            f"every landing file of {', '.join(sorted(gone_sources))} is gone from {landing_dir}: refusing "
            "to delete all of its rows. If the landing directory is right and the source really is "
            "empty now, run again with --allow-source-removal."
        )
    return plan


def rows_to_arrow(
    source: LandingSource, state: FileState, parsed: ParsedFile, loaded_at: datetime, run_id: str
) -> pa.Table:
    columns: dict[str, list] = {c: [] for c in source.columns}
    lines = []
    for line, values in parsed.rows:
        for name, value in zip(source.columns, values, strict=True):
            columns[name].append(value)
        lines.append(line)
    n = len(lines)
    data = {name: pa.array(values, pa.string()) for name, values in columns.items()}
    data.update(
        {
            "_source_file": pa.array([state.path] * n, pa.string()),
            "_source_line": pa.array(lines, pa.int32()),
            "_file_hash": pa.array([state.file_hash] * n, pa.string()),
            "_loaded_at": pa.array([loaded_at] * n, pa.timestamp("us", tz="UTC")),
            "_ingest_run_id": pa.array([run_id] * n, pa.string()),
        }
    )
    return pa.table(data)


def ingest(
    settings: Settings,
    *,
    full_refresh: bool = False,
    checksum: bool = False,
    encoding: str | None = None,
    allow_source_removal: bool = False,
    quiet: bool = False,
    batch_files: int = 2_000,
    batch_bytes: int = 32 * 2**20,
) -> IngestSummary:
    """Bring the raw schema up to date with the landing zone; see the module docstring."""
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    run_id = f"ingest-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    summary = IngestSummary(run_id, str(settings.landing_dir), str(settings.warehouse_path))
    schema = settings.raw_schema
    con = connect(settings.warehouse_path)
    try:
        ensure_schema(con, schema)
        try:
            found = scan_landing_zone(settings.landing_dir)
            plan = plan_files(
                con,
                schema,
                settings.landing_dir,
                found,
                full_refresh=full_refresh,
                checksum=checksum,
                allow_source_removal=allow_source_removal,
            )
            summary.files_new, summary.files_changed = len(plan.new), len(plan.changed)
            summary.files_removed, summary.files_unchanged = len(plan.removed), plan.unchanged
            loader = _Loader(con, settings, summary, started_at, encoding or settings.ingest.encoding)
            loader.apply(plan, batch_files, batch_bytes, quiet)
        except (PipelineError, OSError) as exc:
            if isinstance(exc, OSError):  # a landing file vanished or cannot be read between scan and load
                exc = LandingFileError(
                    f"{exc.filename or settings.landing_dir}: cannot be read ({exc.strerror or exc}); nothing was "
                    "loaded and the last good load is unchanged. Run the ingest again once the file is back."
                )
            summary.status = "error"
            # The transaction was rolled back: report no rows moved, only what was found.
            summary.rows_loaded = summary.rows_deleted = summary.rows_quarantined = 0
            summary.per_table = {}
            _record_run(con, schema, summary, started_at, error=str(exc))
            raise exc from None
        summary.seconds = round(time.perf_counter() - started, 3)
        _record_run(con, schema, summary, started_at)
    finally:
        con.close()
    return summary


class _Loader:
    """Applies a plan inside one transaction: deletes replaced rows, then streams batches in."""

    def __init__(self, con, settings: Settings, summary: IngestSummary, loaded_at: datetime, encoding: str):
        self.con, self.settings, self.summary = con, settings, summary
        self.schema, self.loaded_at, self.encoding = settings.raw_schema, loaded_at, encoding
        self.by_table = {s.table: s for s in SOURCES}
        self.first_loaded_at: dict[str, datetime] = {}

    def apply(self, plan: LoadPlan, batch_files: int, batch_bytes: int, quiet: bool) -> None:
        self.con.begin()
        try:
            replaced = {s.path: s.source for s in plan.changed} | plan.removed
            self._delete(replaced)
            failures: list[str] = []
            files = plan.to_read
            with tqdm(total=len(files), desc="landing files", unit="file", disable=quiet or len(files) < 50) as bar:
                for batch in _batches(files, batch_files, batch_bytes):
                    parsed = self._parse(batch, failures)
                    if not failures:  # once anything failed, only keep checking, to name every bad file
                        self._insert(batch, parsed)
                    bar.update(len(batch))
            if failures:
                listing = "\n  ".join(failures)
                raise LandingFileError(
                    f"{len(failures)} landing file(s) cannot be read; nothing was loaded and the last good "
                    f"load is unchanged:\n  {listing}"
                )
            self._refuse_mass_quarantine()
            for rel, mtime_ns in plan.touched.items():
                self.con.execute(
                    f"update {self.schema}._landing_files set mtime_ns = ? where source_file = ?", [mtime_ns, rel]
                )
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def _refuse_mass_quarantine(self) -> None:
        """Quarantining most of a source is a broken export or a wrong setting: load nothing instead."""
        limit = self.settings.ingest.max_quarantine_share
        for table, counts in sorted(self.summary.per_table.items()):
            if not counts["quarantined"]:
                continue
            (kept,) = self.con.execute(f"select count(*) from {self.schema}.{table}").fetchone()
            share = counts["quarantined"] / (kept + counts["quarantined"])
            if share > limit:
                raise MassQuarantineError(
                    f"this run would quarantine {counts['quarantined']:,} records of source {table} and leave "
                    f"{kept:,}: {share:.0%} of it, over vars.ingest.max_quarantine_share ({limit:.0%}). Nothing was "
                    f"loaded and the last good load is unchanged. The first reasons: "
                    + "; ".join(self.summary.warnings[:3])
                )

    def _delete(self, replaced: dict[str, str]) -> None:
        if not replaced:
            return
        paths = pa.table({"path": list(replaced), "source": list(replaced.values())})
        self.con.register("replaced_files", paths)
        for table in sorted(set(replaced.values())):
            (deleted,) = self.con.execute(
                f"delete from {self.schema}.{table} where _source_file in "
                "(select path from replaced_files where source = ?)",
                [table],
            ).fetchone()
            self.summary.rows_deleted += deleted
            self.summary.count(table, "deleted", deleted)
        self.first_loaded_at = dict(
            self.con.execute(
                f"select source_file, first_loaded_at from {self.schema}._landing_files "
                "where source_file in (select path from replaced_files)"
            ).fetchall()
        )
        for bookkeeping in ("_quarantine", "_landing_files"):
            self.con.execute(
                f"delete from {self.schema}.{bookkeeping} where source_file in (select path from replaced_files)"
            )
        self.con.unregister("replaced_files")

    def _parse(self, batch: list[FileState], failures: list[str]) -> dict[str, ParsedFile]:
        parsed = {}
        for state in batch:
            try:
                parsed[state.path] = read_file(
                    self.settings.landing_dir / state.path,
                    self.by_table[state.source],
                    state.path,
                    encoding=self.encoding,
                    max_document_bytes=self.settings.ingest.max_document_bytes,
                )
            except LandingFileError as exc:
                failures.append(str(exc))
        return parsed

    def _insert(self, batch: list[FileState], parsed: dict[str, ParsedFile]) -> None:
        run_id, loaded_at = self.summary.run_id, self.loaded_at
        rows_by_table: dict[str, list[pa.Table]] = {}
        quarantine, manifest = [], []
        for state in batch:
            result = parsed[state.path]
            rows = rows_to_arrow(self.by_table[state.source], state, result, loaded_at, run_id)
            rows_by_table.setdefault(state.source, []).append(rows)
            quarantine += [
                (state.source, state.path, q.line, q.reason, q.raw_record, loaded_at, run_id)
                for q in result.quarantined
            ]
            manifest.append(
                (
                    state.source,
                    state.path,
                    state.file_hash,
                    state.size,
                    state.mtime_ns,
                    datetime.fromtimestamp(state.mtime_ns / 1e9, UTC),
                    rows.num_rows,
                    len(result.quarantined),
                    self.first_loaded_at.get(state.path, loaded_at),
                    loaded_at,
                    run_id,
                )
            )
            self.summary.rows_loaded += rows.num_rows
            self.summary.rows_quarantined += len(result.quarantined)
            self.summary.count(state.source, "loaded", rows.num_rows)
            self.summary.count(state.source, "quarantined", len(result.quarantined))
            self.summary.warn(result.warnings)
            self.summary.warn(f"{state.path}:{q.line}: quarantined: {q.reason}" for q in result.quarantined)
        for table, tables in rows_by_table.items():
            # The record hash is computed in DuckDB, vectorized: a JSON array keeps nulls and
            # separators unambiguous.
            values = ", ".join(self.by_table[table].columns)
            self._insert_arrow(table, pa.concat_tables(tables), f", md5(to_json([{values}])) as _record_hash")
        if quarantine:
            self._insert_arrow("_quarantine", _records_to_arrow(QUARANTINE_COLUMNS, quarantine))
        self._insert_arrow("_landing_files", _records_to_arrow(MANIFEST_COLUMNS, manifest))

    def _insert_arrow(self, table: str, data: pa.Table, extra_columns: str = "") -> None:
        if data.num_rows == 0:
            return
        self.con.register("landing_batch", data)
        self.con.execute(f"insert into {self.schema}.{table} by name select *{extra_columns} from landing_batch")
        self.con.unregister("landing_batch")


MAX_WARNINGS = 100
QUARANTINE_COLUMNS = ("source", "source_file", "line", "reason", "raw_record", "quarantined_at", "ingest_run_id")
MANIFEST_COLUMNS = (
    "source",
    "source_file",
    "file_hash",
    "size_bytes",
    "mtime_ns",
    "modified_at",
    "row_count",
    "quarantined_count",
    "first_loaded_at",
    "loaded_at",
    "ingest_run_id",
)


def _batches(files: list[FileState], max_files: int, max_bytes: int) -> Iterable[list[FileState]]:
    """Consecutive groups of files, each under max_files and (unless one file alone is larger) max_bytes."""
    batch: list[FileState] = []
    size = 0
    for state in files:
        if batch and (len(batch) >= max_files or size + state.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(state)
        size += state.size
    if batch:
        yield batch


def _records_to_arrow(columns: tuple[str, ...], records: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(columns, r, strict=True)) for r in records])


def _record_run(con, schema, summary: IngestSummary, started_at: datetime, error: str | None = None) -> None:
    con.execute(
        f"insert or replace into {schema}._ingest_runs values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            summary.run_id,
            started_at,
            datetime.now(UTC),
            summary.status,
            summary.landing_dir,
            summary.files_new,
            summary.files_changed,
            summary.files_unchanged,
            summary.files_removed,
            summary.rows_loaded,
            summary.rows_deleted,
            summary.rows_quarantined,
            error,
        ],
    )


def render(summary: IngestSummary) -> str:
    lines = [
        f"ingest {summary.run_id}: {summary.status} in {summary.seconds:.2f}s",
        f"  files: {summary.files_new} new, {summary.files_changed} changed, "
        f"{summary.files_unchanged} unchanged, {summary.files_removed} removed",
        f"  rows:  {summary.rows_loaded:,} loaded, {summary.rows_deleted:,} deleted, "
        f"{summary.rows_quarantined:,} quarantined (see raw._quarantine)",
    ]
    for table, counts in sorted(summary.per_table.items()):
        lines.append(
            f"    {table:<20} +{counts['loaded']:,} -{counts['deleted']:,} quarantined {counts['quarantined']:,}"
        )
    lines += [f"  warning: {w}" for w in summary.warnings[:30]]
    if summary.warnings_total > 30:
        lines.append(f"  ... {summary.warnings_total - 30} more warnings (every quarantined record: raw._quarantine)")
    return "\n".join(lines)
