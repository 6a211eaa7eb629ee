"""Check the published index against `document_chunks`; with --repair, bring it back in line.

Verify reads the whole published table, every row and every column, a batch at a time (how long
that takes at a million chunks: docs/embedding.md), and reports

- what the embedding job would change, found by the same chunk-by-chunk comparison it plans
  with: chunks missing from the index, orphaned rows (their chunk is gone), stale rows (another
  content hash, another model, or other metadata) and duplicated chunk ids;
- damage no plan sees: rows without a vector, vectors holding a NaN or an infinity, vectors not
  of unit length when the model normalizes, text that differs from the chunk's although the
  content hash is the same (each row's text and embedding text are hashed as they are read and
  compared with the chunk table's in DuckDB), full-text columns that disagree with the row's
  access level, and a table whose data cannot be read at all (its data files cut short or
  overwritten; a file whose Lance footer is gone is named);
- the pointer: live.json naming a table or version that is not there, a version no tag pins (so
  version cleanup could remove it), or a table without the full-text columns per access level.

Exit 1 when anything is wrong.

--repair never trusts the embedding job's no-change shortcut. What the job's plan fixes (missing,
orphaned, stale and duplicated rows, an old version published) it fixes as any run does, and
publishes again. Anything else (damage, an unreadable live.json) is rebuilt: every chunk is
written into a new version of the table without reading the damaged one, each with its vector
from the vector cache (whose own damaged entries are dropped first) or, for the texts the cache
lacks, from the model; then it is published.

Example:
    rp verify
    rp verify --repair --json
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from python_jobs.chunk.model_files import resolve_model
from python_jobs.common.errors import PipelineError
from python_jobs.common.output import Summary
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect
from python_jobs.index.embed import EmbedOptions, embed
from python_jobs.index.encoders import fingerprint
from python_jobs.index.plan import CHUNKS_RELATION, INDEX_KEY_COLUMNS, bound_memory, make_plan, read_chunk_source
from python_jobs.index.runs import EmbedSummary
from python_jobs.index.store import (
    LIVE_TAG,
    VectorIndex,
    bad_vectors,
    clearance_columns,
    clearance_texts,
    has_clearance_columns,
    has_current_layout,
    index_table_name,
    scan,
)

SAMPLE_IDS = 5
# verify's names for the plan's classes
PROBLEMS = {"new": "missing", "deleted": "orphaned", "text_changed": "stale", "metadata_changed": "stale_metadata"}
# What the plan neither sees nor fixes: --repair rebuilds the table when verify finds any of these.
DAMAGE = (
    "unreadable_live_index",
    "missing_vectors",
    "non_finite_vectors",
    "non_unit_vectors",
    "corrupt_text",
    "wrong_fts_text",
    "outdated_layout",
)


@dataclass
class VerifyReport(Summary):
    index_dir: str
    live_table: str | None = None
    live_version: int | None = None
    expected_table: str = ""
    chunks: int = 0
    index_rows: int = 0
    rows_read: int = 0  # rows of the published version read in full
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

    def found(self, problem: str, chunk_ids: Iterable[str]) -> None:
        """Count rows with `problem`, keeping the first few chunk ids as examples."""
        chunk_ids = list(chunk_ids)
        self.problems[problem] = self.problems.get(problem, 0) + len(chunk_ids)
        examples = self.examples.setdefault(problem, [])
        examples[:] = sorted([*examples, *chunk_ids])[:SAMPLE_IDS]
        if not examples:
            del self.examples[problem]


def verify(settings: Settings) -> VerifyReport:
    started = time.perf_counter()
    index = VectorIndex(settings.index_dir)
    report = VerifyReport(index_dir=str(settings.index_dir))
    report.problems = dict.fromkeys((*PROBLEMS.values(), "duplicated", *DAMAGE, "unpinned_live_version"), 0)
    with connect(settings.warehouse_path, read_only=True) as con, tempfile.TemporaryDirectory() as spill:
        bound_memory(con, Path(spill))  # the comparison spills to disk rather than growing with the index
        source = read_chunk_source(con)
        model = fingerprint(resolve_model(source.embedding_model), settings.embedding)
        report.expected_table = index_table_name(model)
        pointer = index.live()
        keys = None
        if pointer is None:
            report.notes.append("nothing is published yet (no live.json): run `make embed`")
        else:
            report.live_table, report.live_version = pointer.table, pointer.version
            table = _open_published(index, pointer.table, pointer.version, report)
            if table is not None:
                normalized = bool(pointer.model.get("normalized", True))
                keys = read_whole(table, index, normalized, report)
                _check_pointer(index, table, pointer.table, pointer.version, model.describe(), report)
        if pointer is not None and keys is None:  # not comparable: the damage is the finding
            ((report.chunks,),) = con.execute(f"select count(*) from {CHUNKS_RELATION}").fetchall()
        else:
            _compare(con, model, report, keys)
            if keys is not None:
                _compare_text(con, report, keys)
    report.index_rows = 0 if keys is None else keys.num_rows
    report.seconds = time.perf_counter() - started
    return report


def _open_published(index: VectorIndex, name: str, version: int, report: VerifyReport):
    """The published table at its version, or None with the reason in the report."""
    try:
        table = index.open(name, version)
    except (OSError, ValueError, RuntimeError) as exc:
        report.notes.append(
            f"live.json names {name} version {version}, which cannot be opened: {_first_line(exc)}"
            + _latest(index, name)
        )
        table = None
    else:
        if table is None:
            report.notes.append(f"live.json names table {name}, which is not in {index.location}")
    if table is None:
        report.problems["unreadable_live_index"] = 1
    return table


def read_whole(table, index: VectorIndex, normalized: bool, report: VerifyReport) -> pa.Table | None:
    """Read every row and column of `table`, counting damaged rows into the report; the key columns the plan
    compares and the digests of each row's texts (KEPT_SCHEMA), or None (with the reason in the report) when
    the table's data cannot be read."""
    keys: list[pa.RecordBatch] = []
    fts_checked = has_clearance_columns(table)
    try:
        for batch in scan(table):
            report.rows_read += batch.num_rows
            keys.append(_kept(batch))
            chunk_ids = batch.column("chunk_id").to_pylist()
            masks = bad_vectors(batch.column("vector"), normalized)
            for problem, mask in (
                ("missing_vectors", masks["missing"]),
                ("non_finite_vectors", masks["non_finite"]),
                ("non_unit_vectors", masks["non_unit"]),
                ("wrong_fts_text", _wrong_fts_text(batch) if fts_checked else None),
            ):
                if mask is not None and mask.any():
                    report.found(problem, (c for c, bad in zip(chunk_ids, mask, strict=True) if bad))
    except (OSError, RuntimeError, ValueError) as exc:
        report.problems["unreadable_live_index"] = 1
        report.notes.append(
            f"reading {table.name} version {table.version} failed after {report.rows_read:,} rows: {_first_line(exc)}"
        )
        cut = index.truncated_files(table.name)
        report.notes += [f"data file {path} is truncated (its Lance footer is missing)" for path in cut]
        return None
    if not fts_checked:
        report.problems["outdated_layout"] = 1
        report.notes.append(
            f"{table.name} has no full-text columns per access level: its BM25 statistics are shared by every "
            "level (`make verify ARGS=--repair`, or the next `make embed`, rebuilds it from the vector cache)"
        )
    elif not has_current_layout(table):
        report.problems["outdated_layout"] = 1
        report.notes.append(
            f"{table.name} has the columns of an earlier layout (it holds chunk positions, which rewrite every "
            "later row of a document when a chunk is inserted): `make verify ARGS=--repair`, or the next "
            "`make embed`, rebuilds it from the vector cache"
        )
    return pa.Table.from_batches(keys, schema=KEPT_SCHEMA)


# What verify keeps of each row: the plan's key columns and an MD5 of each text the row serves.
TEXT_DIGESTS = {"text": "text_md5", "embedding_text": "embedding_text_md5"}
KEPT_SCHEMA = pa.schema([(name, pa.string()) for name in (*INDEX_KEY_COLUMNS, *TEXT_DIGESTS.values())])


def _kept(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The columns verify keeps of a batch, in buffers of their own: a column of a batch read from Lance keeps
    the whole batch (texts and vectors) in memory for as long as it is referenced."""
    columns = [pa.concat_arrays([batch.column(name), batch.column(name).slice(0, 0)]) for name in INDEX_KEY_COLUMNS]
    for source in TEXT_DIGESTS:
        texts = batch.column(source).to_pylist()
        columns.append(pa.array([None if t is None else hashlib.md5(t.encode("utf-8")).hexdigest() for t in texts]))
    return pa.RecordBatch.from_arrays(columns, schema=KEPT_SCHEMA)


def _compare_text(con, report: VerifyReport, kept: pa.Table) -> None:
    """Rows the plan leaves alone (their content hash is the chunk's) whose text or embedding text is not the
    chunk's: damaged where they are stored. A row whose hash differs is stale, and the plan rewrites it."""
    differs = " or ".join(f"kept.{d} is distinct from md5(chunks.{c})" for c, d in TEXT_DIGESTS.items())
    con.register("verify_kept", kept)
    try:
        corrupt = con.execute(
            f"""
            select distinct kept.chunk_id
            from verify_kept as kept
            inner join {CHUNKS_RELATION} as chunks
                on kept.chunk_id = chunks.chunk_id and kept.content_hash = chunks.content_hash
            where {differs}
            order by 1
            """
        ).fetchall()
    finally:
        con.unregister("verify_kept")
    report.found("corrupt_text", [chunk_id for (chunk_id,) in corrupt])


def _wrong_fts_text(batch: pa.RecordBatch) -> np.ndarray:
    """Rows whose full-text columns are not what their access level gives (a row in a column it must not be
    in would count in the statistics of a clearance that may not read it)."""
    expected = clearance_texts(batch.column("access_level"), batch.column("embedding_text"))
    wrong = np.zeros(batch.num_rows, dtype=bool)
    for column in clearance_columns():
        stored, wanted = batch.column(column), expected[column]
        same = pc.fill_null(pc.equal(stored, wanted), False)
        both_null = pc.and_(pc.is_null(stored), pc.is_null(wanted))
        wrong |= ~pc.or_(same, both_null).to_numpy(zero_copy_only=False)
    return wrong


def _check_pointer(index: VectorIndex, table, name: str, version: int, expected: str, report: VerifyReport) -> None:
    if name != report.expected_table:
        report.notes.append(
            f"the live index was built with another model ({name}); the chunks are for {expected}: every row counts "
            "as stale until `make embed` swaps the new one in"
        )
    pinned = (table.tags.list().get(LIVE_TAG) or {}).get("version")
    if pinned != version:
        report.problems["unpinned_live_version"] = 1
        report.notes.append(
            f"the published version {version} is not the one the `{LIVE_TAG}` tag pins ({pinned}): version cleanup "
            "could remove it (an interrupted publish leaves this too; a repair publishes again)"
        )
    latest = index.open(name)
    if latest is not None and latest.version > version:
        report.notes.append(
            f"{name} has commits after the published version {version} (latest {latest.version}): an interrupted "
            "run; the next `make embed` finishes and publishes it"
        )


def _compare(con, model, report: VerifyReport, keys: pa.Table | None) -> None:
    """The plan's comparison of the chunks with the rows read, as problems."""
    plan = make_plan(con, model, report.expected_table, keys, None)
    examples = con.execute(
        f"""
        select change, list(chunk_id order by chunk_id)[1:{SAMPLE_IDS}]
        from embed_plan where change <> 'unchanged' group by change
        """
    ).fetchall()
    (duplicated,) = con.execute(
        f"select count(*), list(chunk_id order by chunk_id)[1:{SAMPLE_IDS}] from embed_plan where duplicated"
    ).fetchall()  # fetchall: DuckDB keeps a result fetched with fetchone open, and the connection busy
    report.chunks = plan.chunks_total
    for change, name in PROBLEMS.items():
        report.problems[name] = plan.counts[change]
    report.examples |= {PROBLEMS[change]: ids for change, ids in examples}
    report.problems["duplicated"] = duplicated[0]
    if duplicated[0]:
        report.examples["duplicated"] = duplicated[1]


def repair(settings: Settings, options: EmbedOptions) -> EmbedSummary:
    """Fix what verify finds: by an embedding run that cannot take the no-change shortcut, rebuilding the
    table from the vector cache when it is damaged or live.json cannot be used."""
    index = VectorIndex(settings.index_dir)
    reasons = []
    try:
        index.live()
    except PipelineError:
        aside = index.set_live_aside(f"unreadable-{datetime.now(UTC):%Y%m%dT%H%M%S}")
        click.echo(f"set the unreadable live pointer aside as {aside}", err=True)
        reasons.append("live.json was unreadable")
    if not reasons:
        report = verify(settings)
        reasons += [f"{name} ({report.problems[name]:,})" for name in DAMAGE if report.problems.get(name)]
        if not reasons and report.live_table == report.expected_table:
            reasons += _latest_damage(index, report)
    if reasons:
        click.echo(f"rebuilding the index from the vector cache: {', '.join(reasons)}", err=True)
    return embed(settings, replace(options, shortcut=False, rebuild=bool(reasons)))


def _latest_damage(index: VectorIndex, report: VerifyReport) -> list[str]:
    """The embedding job plans against the table's latest version: when that is not the published one (an
    interrupted run), it is read in full too, and any damage in it calls for a rebuild."""
    name = report.expected_table
    try:
        latest = index.open(name)
    except (OSError, ValueError, RuntimeError) as exc:
        return [f"the latest version of {name} cannot be opened ({_first_line(exc)})"]
    if latest is None or latest.version == report.live_version:
        return []
    scratch = VerifyReport(index_dir=report.index_dir, expected_table=name)
    read_whole(latest, index, True, scratch)
    damaged = [problem for problem in DAMAGE if scratch.problems.get(problem)]
    return [f"{problem} in the latest version {latest.version} of {name}" for problem in damaged]


def _latest(index: VectorIndex, name: str) -> str:
    try:
        table = index.open(name)
    except (OSError, ValueError, RuntimeError):
        return ""
    return f" (its latest version is {table.version})" if table is not None else ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def render_report(report: VerifyReport) -> str:
    status = "healthy" if report.healthy else "PROBLEMS FOUND"
    lines = [
        f"verify {report.index_dir}: {status} in {report.seconds:.2f}s",
        f"  live:   {report.live_table} version {report.live_version} (expected table {report.expected_table})",
        f"  rows:   {report.index_rows:,} in the index ({report.rows_read:,} read in full), "
        f"{report.chunks:,} chunks in document_chunks",
    ]
    for name, count in report.problems.items():
        example = report.examples.get(name)
        lines.append(f"  {name:<22} {count:>8,}" + (f"   e.g. {', '.join(example)}" if count and example else ""))
    lines += [f"  note: {note}" for note in report.notes]
    if not report.healthy:
        lines.append("  fix:  make verify ARGS=--repair")
    return "\n".join(lines)
