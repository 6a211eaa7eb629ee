"""Check the published index against `document_chunks`; with --repair, bring it back in line.

Reports chunks missing from the index, orphaned index rows (their chunk is gone), stale
rows (another content hash, another model, or other metadata), duplicated chunk ids and
rows without a vector, using the same chunk-by-chunk comparison the embedding job plans
with, on the version queries read. Exit 1 when anything is wrong.

--repair runs the embedding job, which computes its plan from the index and so fixes
all of the above (duplicates are deleted and written once again); a live pointer that
cannot be read is set aside first, so the run can publish a new one.

Example:
    rp verify
    rp verify --repair --json
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import click

from python_jobs.chunk.model_files import resolve_model
from python_jobs.common.errors import PipelineError
from python_jobs.common.output import Summary
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect
from python_jobs.index.embed import EmbedOptions, embed
from python_jobs.index.encoders import fingerprint
from python_jobs.index.plan import INDEX_KEY_COLUMNS, make_plan, read_chunk_source
from python_jobs.index.store import VectorIndex, index_table_name, read_columns

SAMPLE_IDS = 5
# verify's names for the plan's classes
PROBLEMS = {"new": "missing", "deleted": "orphaned", "text_changed": "stale", "metadata_changed": "stale_metadata"}


@dataclass
class VerifyReport(Summary):
    index_dir: str
    live_table: str | None = None
    live_version: int | None = None
    expected_table: str = ""
    chunks: int = 0
    index_rows: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return not any(self.problems.values())

    def to_text(self) -> str:
        return render_report(self)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"healthy": self.healthy}


def verify(settings: Settings) -> VerifyReport:
    started = time.perf_counter()
    index = VectorIndex(settings.index_dir)
    report = VerifyReport(index_dir=str(settings.index_dir))
    with connect(settings.warehouse_path, read_only=True) as con:
        source = read_chunk_source(con)
        model = fingerprint(resolve_model(source.embedding_model), settings.embedding)
        report.expected_table = index_table_name(model)
        pointer = index.live()
        table = None
        if pointer is None:
            report.notes.append("nothing is published yet (no live.json): run `make embed`")
        else:
            report.live_table, report.live_version = pointer.table, pointer.version
            try:
                table = index.open(pointer.table, pointer.version)
            except (OSError, ValueError, RuntimeError) as exc:
                report.notes.append(
                    f"live.json names {pointer.table} version {pointer.version}, which fails to open: {exc}"
                )
            if table is None:
                report.problems["unreadable_live_index"] = 1
            elif pointer.table != report.expected_table:
                report.notes.append(
                    f"the live index was built with model {pointer.model.get('name')} ({pointer.table}); the chunks "
                    f"are for {model.describe()}: every row counts as stale until `make embed` swaps the new one in"
                )
        keys = read_columns(table, INDEX_KEY_COLUMNS)
        plan = make_plan(con, model, report.expected_table, keys, None)
        examples = con.execute(
            f"""
            select change, list(chunk_id order by chunk_id)[1:{SAMPLE_IDS}]
            from embed_plan where change <> 'unchanged' group by change
            """
        ).fetchall()
        duplicated = con.execute(
            f"select count(*), list(chunk_id order by chunk_id)[1:{SAMPLE_IDS}] from embed_plan where duplicated"
        ).fetchone()
    report.chunks = plan.chunks_total
    report.index_rows = 0 if keys is None else keys.num_rows
    for change, name in PROBLEMS.items():
        report.problems[name] = plan.counts[change]
    report.examples = {PROBLEMS[change]: ids for change, ids in examples}
    report.problems["duplicated"] = duplicated[0]
    if duplicated[0]:
        report.examples["duplicated"] = duplicated[1]
    if table is not None:
        report.problems["missing_vectors"] = table.count_rows("vector IS NULL")
        latest = index.open(pointer.table)
        if latest is not None and latest.version != pointer.version:
            report.notes.append(
                f"{pointer.table} has commits after the published version {pointer.version} (latest "
                f"{latest.version}): an interrupted run; the next `make embed` finishes and publishes it"
            )
    report.seconds = time.perf_counter() - started
    return report


def repair(settings: Settings, options: EmbedOptions):
    """Set aside an unreadable live pointer, then let the embedding job converge the index."""
    index = VectorIndex(settings.index_dir)
    try:
        index.live()
    except PipelineError:
        aside = index.live_file.with_name(f"live.json.unreadable-{datetime.now(UTC):%Y%m%dT%H%M%S}")
        index.live_file.rename(aside)
        click.echo(f"set the unreadable live pointer aside as {aside}", err=True)
    return embed(settings, options)


def render_report(report: VerifyReport) -> str:
    status = "healthy" if report.healthy else "PROBLEMS FOUND"
    lines = [
        f"verify {report.index_dir}: {status} in {report.seconds:.2f}s",
        f"  live:   {report.live_table} version {report.live_version} (expected table {report.expected_table})",
        f"  rows:   {report.index_rows:,} in the index, {report.chunks:,} chunks in document_chunks",
    ]
    for name, count in report.problems.items():
        example = report.examples.get(name)
        lines.append(f"  {name:<22} {count:>8,}" + (f"   e.g. {', '.join(example)}" if count and example else ""))
    lines += [f"  note: {note}" for note in report.notes]
    if not report.healthy:
        lines.append("  fix:  make verify ARGS=--repair")
    return "\n".join(lines)
