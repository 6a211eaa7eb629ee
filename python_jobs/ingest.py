"""Land the files of the landing zone into the warehouse's `raw` schema.

Incremental and idempotent: a manifest (`raw._landing_files`) remembers each file's size,
mtime and SHA-256, so only new or changed files are read again; a file that disappeared
takes its rows with it. All changes of a run are applied in one DuckDB transaction, after
every changed file has been parsed, so a file that cannot be parsed fails the job and the
last good load stays exactly as it was. Records that cannot be read land in
`raw._quarantine` with the file, line and reason; nothing is dropped silently.

Why hand-written rather than dlt: what this job must guarantee (per-line quarantine with
line numbers, file-level change detection, all-or-nothing publication across tables) sits
below dlt's abstractions: dlt would still need this parsing code and adds its own state
store beside the warehouse. DuckDB's transactions give the atomicity directly.

Example:
    python -m python_jobs.ingest              # load what changed
    python -m python_jobs.ingest --json       # machine-readable summary
    python -m python_jobs.ingest --full-refresh
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import click
import duckdb
import pyarrow as pa
from tqdm import tqdm

from python_jobs.cli_support import emit, run_job
from python_jobs.config import Settings
from python_jobs.errors import LandingFileError, PipelineError
from python_jobs.landing import SOURCES, LandingSource, ParsedFile, discover, file_sha256, read_file
from python_jobs.warehouse import connect

METADATA_COLUMNS = (
    "_source_file VARCHAR NOT NULL, _source_line INTEGER NOT NULL, _record_hash VARCHAR NOT NULL, "
    "_file_hash VARCHAR NOT NULL, _loaded_at TIMESTAMPTZ NOT NULL, _ingest_run_id VARCHAR NOT NULL"
)


@dataclass
class FileState:
    source: str
    path: str  # relative to the landing directory
    size: int
    mtime_ns: int
    file_hash: str | None = None


@dataclass
class IngestSummary:
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
    for source in SOURCES:
        for path in discover(landing_dir, source):
            stat = path.stat()
            rel = path.relative_to(landing_dir).as_posix()
            found[rel] = FileState(source.table, rel, stat.st_size, stat.st_mtime_ns)
    return found


def plan_files(
    con: duckdb.DuckDBPyConnection,
    schema: str,
    landing_dir: Path,
    found: dict[str, FileState],
    full_refresh: bool,
    checksum: bool,
    allow_source_removal: bool,
) -> tuple[list[FileState], list[FileState], list[str], dict[str, int]]:
    """Split files into new, changed (content differs) and removed; the rest are unchanged.

    A file whose size and mtime match the manifest is taken as unchanged without reading it
    (as make and rsync do); `--checksum` hashes every file instead."""
    known = {
        row[0]: row[1:]
        for row in con.execute(
            f"select source_file, size_bytes, mtime_ns, file_hash, source from {schema}._landing_files"
        ).fetchall()
    }
    new, changed, unchanged_touch = [], [], {}
    for rel, state in found.items():
        previous = known.get(rel)
        if previous is None:
            state.file_hash = file_sha256(landing_dir / rel)
            new.append(state)
            continue
        size, mtime_ns, file_hash, _ = previous
        if not full_refresh and not checksum and size == state.size and mtime_ns == state.mtime_ns:
            continue
        state.file_hash = file_sha256(landing_dir / rel)
        if full_refresh or state.file_hash != file_hash:
            changed.append(state)
        else:
            unchanged_touch[rel] = state.mtime_ns  # touched, same bytes: remember the new mtime only
    removed = [rel for rel in known if rel not in found]
    gone_sources = {known[rel][3] for rel in removed} - {s.source for s in found.values()}
    if gone_sources and not allow_source_removal:
        raise PipelineError(
            f"every landing file of {', '.join(sorted(gone_sources))} is gone from {landing_dir}: refusing "
            "to delete all of its rows. If the landing directory is right and the source really is "
            "empty now, run again with --allow-source-removal."
        )
    return new, changed, removed, unchanged_touch


def parse_all(
    landing_dir: Path, files: list[FileState], settings: Settings, encoding: str, quiet: bool
) -> dict[str, ParsedFile]:
    """Parse every file before writing anything; collect every unreadable file into one error."""
    by_table = {s.table: s for s in SOURCES}
    parsed, failures = {}, []
    for state in tqdm(files, desc="parsing landing files", unit="file", disable=quiet or len(files) < 50):
        try:
            parsed[state.path] = read_file(
                landing_dir / state.path,
                by_table[state.source],
                state.path,
                encoding=encoding,
                max_document_bytes=settings.ingest.max_document_bytes,
            )
        except LandingFileError as exc:
            failures.append(str(exc))
    if failures:
        listing = "\n  ".join(failures)
        raise LandingFileError(
            f"{len(failures)} landing file(s) cannot be read; nothing was loaded and the last good load is "
            f"unchanged:\n  {listing}"
        )
    return parsed


def _record_hash(values: list[str | None]) -> str:
    return hashlib.sha256(json.dumps(values, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


def rows_to_arrow(
    source: LandingSource, state: FileState, parsed: ParsedFile, loaded_at: datetime, run_id: str
) -> pa.Table:
    columns: dict[str, list] = {c: [] for c in source.columns}
    lines, hashes = [], []
    for line, values in parsed.rows:
        for name, value in zip(source.columns, values, strict=True):
            columns[name].append(value)
        lines.append(line)
        hashes.append(_record_hash(values))
    n = len(lines)
    data = {name: pa.array(values, pa.string()) for name, values in columns.items()}
    data.update(
        {
            "_source_file": pa.array([state.path] * n, pa.string()),
            "_source_line": pa.array(lines, pa.int32()),
            "_record_hash": pa.array(hashes, pa.string()),
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
) -> IngestSummary:
    """Bring the raw schema up to date with the landing zone; see the module docstring."""
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    run_id = f"ingest-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    summary = IngestSummary(run_id, str(settings.landing_dir), str(settings.warehouse_path))
    schema = settings.raw_schema
    landing_dir = settings.landing_dir
    con = connect(settings.warehouse_path)
    try:
        ensure_schema(con, schema)
        try:
            found = scan_landing_zone(landing_dir)
            new, changed, removed, touched = plan_files(
                con, schema, landing_dir, found, full_refresh, checksum, allow_source_removal
            )
            to_read = new + changed
            parsed = parse_all(landing_dir, to_read, settings, encoding or settings.ingest.encoding, quiet)
            _apply(con, schema, settings, summary, run_id, started_at, to_read, changed, removed, touched, parsed)
        except PipelineError as exc:
            summary.status = "error"
            _record_run(con, schema, summary, started_at, error=str(exc))
            raise
        summary.files_new, summary.files_changed = len(new), len(changed)
        summary.files_removed = len(removed)
        summary.files_unchanged = len(found) - len(new) - len(changed)
        summary.seconds = round(time.perf_counter() - started, 3)
        _record_run(con, schema, summary, started_at)
    finally:
        con.close()
    return summary


def _apply(con, schema, settings, summary, run_id, started_at, to_read, changed, removed, touched, parsed) -> None:
    by_table = {s.table: s for s in SOURCES}
    source_of = dict(con.execute(f"select source_file, source from {schema}._landing_files").fetchall())
    con.begin()
    try:
        for rel in [s.path for s in changed] + removed:
            table = source_of[rel]
            deleted = con.execute(f"delete from {schema}.{table} where _source_file = ?", [rel]).fetchone()[0]
            summary.rows_deleted += deleted
            summary.per_table.setdefault(table, {"loaded": 0, "deleted": 0, "quarantined": 0})["deleted"] += deleted
            con.execute(f"delete from {schema}._quarantine where source_file = ?", [rel])
        if removed:
            con.execute(f"delete from {schema}._landing_files where source_file in (select unnest(?))", [removed])
        for state in to_read:
            result = parsed[state.path]
            source = by_table[state.source]
            counts = summary.per_table.setdefault(source.table, {"loaded": 0, "deleted": 0, "quarantined": 0})
            batch = rows_to_arrow(source, state, result, started_at, run_id)
            if batch.num_rows:
                con.register("landing_batch", batch)
                con.execute(f"insert into {schema}.{source.table} by name select * from landing_batch")
                con.unregister("landing_batch")
            for q in result.quarantined:
                con.execute(
                    f"insert into {schema}._quarantine values (?, ?, ?, ?, ?, ?, ?)",
                    [source.table, state.path, q.line, q.reason, q.raw_record, started_at, run_id],
                )
            modified_at = datetime.fromtimestamp(state.mtime_ns / 1e9, UTC)
            con.execute(
                f"""insert into {schema}._landing_files values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    on conflict (source_file) do update set file_hash = excluded.file_hash,
                    size_bytes = excluded.size_bytes, mtime_ns = excluded.mtime_ns,
                    modified_at = excluded.modified_at, row_count = excluded.row_count,
                    quarantined_count = excluded.quarantined_count, loaded_at = excluded.loaded_at,
                    ingest_run_id = excluded.ingest_run_id""",
                [
                    source.table,
                    state.path,
                    state.file_hash,
                    state.size,
                    state.mtime_ns,
                    modified_at,
                    batch.num_rows,
                    len(result.quarantined),
                    started_at,
                    started_at,
                    run_id,
                ],
            )
            counts["loaded"] += batch.num_rows
            counts["quarantined"] += len(result.quarantined)
            summary.rows_loaded += batch.num_rows
            summary.rows_quarantined += len(result.quarantined)
            summary.warnings += result.warnings
            summary.warnings += [f"{state.path}:{q.line}: quarantined: {q.reason}" for q in result.quarantined[:20]]
        for rel, mtime_ns in touched.items():
            con.execute(f"update {schema}._landing_files set mtime_ns = ? where source_file = ?", [mtime_ns, rel])
        con.commit()
    except BaseException:
        con.rollback()
        raise


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
    if len(summary.warnings) > 30:
        lines.append(f"  ... {len(summary.warnings) - 30} more warnings")
    return "\n".join(lines)


@click.command()
@click.option("--full-refresh", is_flag=True, help="Re-read every landing file, changed or not.")
@click.option("--checksum", is_flag=True, help="Hash every file instead of trusting unchanged size and mtime.")
@click.option("--encoding", default=None, help="Encoding of the landing files (default: vars.ingest.encoding, utf-8).")
@click.option(
    "--allow-source-removal",
    is_flag=True,
    help="Allow a run in which every file of a source is gone (deletes all of its rows).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def main(full_refresh: bool, checksum: bool, encoding: str | None, allow_source_removal: bool, as_json: bool) -> None:
    """Land new and changed files from the landing zone into the raw schema.

    Example: python -m python_jobs.ingest --json
    """
    settings = Settings.load()
    summary = run_job(
        lambda: ingest(
            settings,
            full_refresh=full_refresh,
            checksum=checksum,
            encoding=encoding,
            allow_source_removal=allow_source_removal,
            quiet=as_json,
        )
    )
    emit(asdict(summary), render(summary), as_json)


if __name__ == "__main__":
    main()
