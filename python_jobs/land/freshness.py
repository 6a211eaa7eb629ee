"""Freshness per change: when each landing file's edit was made, seen, landed, built, embedded and published.

Every new, changed or removed landing file that a run lands is one row of `ops.freshness_events` (a dbt
source, models/staging/ops/_ops__sources.yml; `ops_freshness` turns it into edit-to-searchable
percentiles per hour and the oldest change not yet searchable). `rp watch` and `make pipeline` write the
same rows, through a `FreshnessTracker`:

    begin       the manifest as it was before the ingest; open changes of runs that are gone are adopted
    ingested    a row per file the ingest loaded or removed (a re-read with the same content is no change)
    built       the dbt build that covered them passed its error-level tests
    published   the embedding run published them: index version, when embedded, when published
    blocked     a test failed (or the quality gate refused): the index still serves the last good version
    failed      a step failed for another reason (an unreadable file, a busy warehouse)

A change stays open (`pending`, `blocked`, `failed`) until a run publishes it; a later edit of the same
file closes it as `superseded`. Open changes of a run that stopped (SIGTERM, kill -9) are adopted by the
next run, which holds the workspace lock (`tracking_lock`): so a restart after a kill reports the edit's
whole wait, from when it was made. Outcomes: published, deleted, quarantined (the file produced no row:
see raw._quarantine), blocked, failed, superseded, and pending while a run works on it.

Example:
    tracker = FreshnessTracker(settings, "pipeline", run_id)
    tracker.begin()
    tracker.ingested(ingest(settings))
    tracker.built(datetime.now(UTC))
    tracker.published(index_version=12, embedded_at=..., published_at=...)
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from python_jobs.common.errors import ExitCode, PipelineError
from python_jobs.common.ledger import Ledger, record_run
from python_jobs.common.locks import held
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect

EVENTS = {
    "event_id": "varchar",
    "path": "varchar",  # the landing file, relative to the landing directory
    "source": "varchar",  # its raw table
    "doc_id": "varchar",  # documents only
    "change": "varchar",  # added, changed, removed
    "file_hash": "varchar",  # SHA-256 of the content landed; null for a removal
    "first_load": "boolean",  # landed into an empty manifest: a bulk load, not an edit
    "runner": "varchar",  # watch or pipeline
    "run_id": "varchar",  # the watch cycle or pipeline run that last worked on it
    "modified_at": "timestamptz",  # the file's mtime; null for a removal
    "seen_at": "timestamptz",  # the watcher's file event, or the start of the run
    "ingested_at": "timestamptz",
    "built_at": "timestamptz",
    "embedded_at": "timestamptz",
    "published_at": "timestamptz",
    "index_version": "bigint",
    "outcome": "varchar",
    "detail": "varchar",
    "recorded_at": "timestamptz",
}
OPEN = ("pending", "blocked", "failed")
LOCK_SUFFIX = ".watch.lock"


def ledger(settings: Settings) -> Ledger:
    return Ledger(settings.ops_schema, "freshness_events", EVENTS)


class WorkspaceBusyError(PipelineError):
    """Another watcher or pipeline run is keeping this workspace fresh."""

    exit_code = ExitCode.BUSY


def lock_path(settings: Settings) -> Path:
    return settings.warehouse_path.with_name(settings.warehouse_path.name + LOCK_SUFFIX)


def tracking_lock(settings: Settings, holder: str) -> contextlib.AbstractContextManager[None]:
    """Hold the workspace for one watcher or pipeline run (a lock file beside the warehouse), or raise
    WorkspaceBusyError naming the process that holds it. The lock goes with the process: kill -9 frees it."""
    path = lock_path(settings)

    def busy(who: str) -> WorkspaceBusyError:
        return WorkspaceBusyError(
            f"{who} is keeping this workspace fresh (warehouse {settings.warehouse_path}, lock {path}): one "
            "watcher or pipeline run at a time. Stop it first (SIGTERM or Ctrl-C), or let it do the work."
        )

    return held(path, busy, holder)


class FreshnessTracker:
    """The changes one run lands, and what became of them; every step writes them to ops.freshness_events."""

    def __init__(self, settings: Settings, runner: str, run_id: str, started_at: datetime | None = None):
        self.settings, self.runner, self.run_id = settings, runner, run_id
        self.started_at = started_at or datetime.now(UTC)
        self.events: dict[str, dict[str, Any]] = {}  # path -> the open change of that file
        self.closed: list[dict[str, Any]] = []  # superseded in this run
        self._before: dict[str, tuple[str, str, str | None]] = {}  # path -> (source, file hash, doc id)

    # --- the steps ---------------------------------------------------------------------------

    def begin(self) -> None:
        """Read the manifest before the ingest, and adopt the open changes runs that are gone left behind."""
        if not self.settings.warehouse_path.exists():
            return
        with connect(self.settings.warehouse_path, read_only=True) as con:
            self._before = _manifest(con, self.settings.raw_schema)
            for row in _open_events(con, ledger(self.settings).relation):  # oldest first
                if row["path"] in self.events:  # two open changes of one file: the older one was replaced
                    self._supersede(self.events[row["path"]])
                if row.get("ingested_at") is not None:
                    row["outcome"] = "pending"  # landed: this run builds and publishes it
                self.events[row["path"]] = row | {"run_id": self.run_id, "runner": self.runner}

    def ingested(self, run_id: str, seen: Mapping[str, datetime] | None = None) -> list[dict[str, Any]]:
        """Record the files ingest run `run_id` loaded or removed; the changes of this run."""
        seen = seen or {}
        with connect(self.settings.warehouse_path, read_only=True) as con:
            after = _manifest(con, self.settings.raw_schema)
            loaded = con.execute(
                f"select source_file, source, file_hash, modified_at, loaded_at, row_count, quarantined_count "
                f"from {self.settings.raw_schema}._landing_files where ingest_run_id = ?",
                [run_id],
            ).fetchall()
            reasons = dict(
                con.execute(
                    f"select source_file, min(reason) from {self.settings.raw_schema}._quarantine "
                    "where ingest_run_id = ? group by source_file",
                    [run_id],
                ).fetchall()
            )
            (finished,) = con.execute(
                f"select coalesce(max(finished_at), now()) from {self.settings.raw_schema}._ingest_runs "
                "where run_id = ?",
                [run_id],
            ).fetchone()
        first_load = not self._before
        changes = []
        for path, source, file_hash, modified_at, loaded_at, rows, quarantined in loaded:
            before = self._before.get(path)
            if before is not None and before[1] == file_hash:
                continue  # re-read with the same content (a full refresh): not a change
            event = self._change(path, source, "changed" if before else "added", file_hash, seen)
            event |= {"modified_at": modified_at, "ingested_at": loaded_at, "first_load": first_load}
            event["doc_id"] = after[path][2] or (before[2] if before else None) or event.get("doc_id")
            if rows == 0 and quarantined:
                event |= {"outcome": "quarantined", "detail": reasons.get(path, "quarantined by the ingest")}
            changes.append(event)
        for path, (source, _, doc_id) in self._before.items():
            if path not in after:
                event = self._change(path, source, "removed", None, seen)
                event |= {"doc_id": doc_id or event.get("doc_id"), "ingested_at": finished, "first_load": False}
                changes.append(event)
        touched = {event["path"] for event in changes}
        for path, event in list(self.events.items()):
            if path in touched or event.get("ingested_at") is not None:
                continue
            # Adopted from a run whose ingest never finished: landed since (by this run, or by hand)?
            current = after.get(path)
            if (event["change"] == "removed" and current is None) or (current and current[1] == event["file_hash"]):
                event.update(ingested_at=finished, outcome="pending")
            else:
                self._supersede(event)
                del self.events[path]
        self._save()
        return changes

    def ingest_failed(self, error: BaseException, attempted: list[tuple[str, str, str, str | None]] = ()) -> None:
        """The ingest refused the run (an unreadable file): `attempted` (path, source, change, file hash) fail."""
        for path, source, change, file_hash in attempted:
            self._change(path, source, change, file_hash, {})
        self._finish("failed", _first_line(error), only_pending=False)

    def built(self, at: datetime) -> None:
        for event in self.events.values():
            landed = event["outcome"] in ("pending", "quarantined") and event.get("ingested_at") is not None
            if landed and (event.get("built_at") is None or event["built_at"] < event["ingested_at"]):
                event["built_at"] = at
        self._save()

    def blocked(self, reason: str) -> None:
        self._finish("blocked", reason)

    def failed(self, reason: str) -> None:
        self._finish("failed", reason)

    def published(self, index_version: int | None, embedded_at: datetime, published_at: datetime) -> None:
        """The index version that serves the changes (removals: no longer serves them)."""
        for event in self.events.values():
            if event["outcome"] not in ("pending", "quarantined") or event.get("ingested_at") is None:
                continue
            if event["outcome"] == "pending":
                event["outcome"] = "deleted" if event["change"] == "removed" else "published"
                event["detail"] = None
            event |= {"embedded_at": embedded_at, "published_at": published_at, "index_version": index_version}
        self._save()
        self.events = {path: e for path, e in self.events.items() if e["outcome"] in OPEN}

    # --- what it holds -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return sum(e["outcome"] == "pending" for e in self.events.values())

    def open_changes(self) -> list[dict[str, Any]]:
        """The changes not yet searchable when the run ended, each with `changed_at` (its edit, or when seen)."""
        return [
            {
                "event_id": e["event_id"],
                "path": e["path"],
                "outcome": e["outcome"],
                "detail": e.get("detail"),
                "changed_at": e.get("modified_at") or e["seen_at"],
            }
            for e in self.events.values()
            if e["outcome"] in OPEN
        ]

    def oldest_open(self, now: datetime | None = None) -> float | None:
        """Seconds the oldest change not yet searchable has waited (from its edit, else when it was seen)."""
        now = now or datetime.now(UTC)
        starts = [e.get("modified_at") or e["seen_at"] for e in self.events.values() if e["outcome"] in OPEN]
        return max(((now - start).total_seconds() for start in starts), default=None)

    # --- helpers -----------------------------------------------------------------------------

    def _change(
        self, path: str, source: str, change: str, file_hash: str | None, seen: Mapping[str, datetime]
    ) -> dict[str, Any]:
        """The open change of `path` for this content: the one already open if it is the same content,
        else a new one (an open change of older content is superseded)."""
        current = self.events.get(path)
        if current is not None and current.get("file_hash") == file_hash:
            if current["outcome"] != "quarantined":
                current["outcome"] = "pending"
            return current
        if current is not None:
            self._supersede(current)
        event = {name: None for name in EVENTS} | {
            "event_id": uuid.uuid4().hex,
            "path": path,
            "source": source,
            "change": change,
            "file_hash": file_hash,
            "first_load": False,
            "runner": self.runner,
            "run_id": self.run_id,
            "seen_at": seen.get(path) or self.started_at,
            "outcome": "pending",
        }
        self.events[path] = event
        return event

    def _supersede(self, event: dict[str, Any]) -> None:
        event.update(outcome="superseded", detail="a later edit of the file replaced it before it was searchable")
        self.closed.append(event)

    def _finish(self, outcome: str, reason: str, only_pending: bool = True) -> None:
        for event in self.events.values():
            if event["outcome"] == "pending" or (not only_pending and event["outcome"] in OPEN):
                event.update(outcome=outcome, detail=reason)
        self._save()

    def _save(self) -> None:
        now = datetime.now(UTC)
        rows = [dict(e, recorded_at=now, run_id=self.run_id) for e in [*self.closed, *self.events.values()]]
        if rows:
            record_run(self.settings.warehouse_path, [(ledger(self.settings), rows)])
        self.closed = []


def publish_times(
    started: datetime, finished: datetime, busy_seconds: float, pointer_published_at: str | None
) -> tuple[datetime, datetime]:
    """(embedded_at, published_at) of an embedding run that ran from `started` to `finished`: published when
    live.json moved (a run with nothing to publish: the changes are served as of its end), embedded once its
    plan, model and index writes were done (`busy_seconds`), before index upkeep and the publish."""
    published_at = finished
    if pointer_published_at is not None:
        moved = datetime.fromisoformat(pointer_published_at)
        if moved >= started:
            published_at = moved
    return min(started + timedelta(seconds=busy_seconds), published_at), published_at


def attempted_changes(settings: Settings) -> list[tuple[str, str, str, str | None]]:
    """What a refused ingest would have landed, as the ingest's own planning finds it (path, raw table, change,
    file hash), for `FreshnessTracker.ingest_failed`; [] when even that cannot be read."""
    from python_jobs.land.changes import pending_changes

    try:
        plan = pending_changes(settings).plan
    except PipelineError:
        return []
    return [
        *((s.path, s.source, "added", s.file_hash) for s in plan.new),
        *((s.path, s.source, "changed", s.file_hash) for s in plan.changed),
        *((path, source, "removed", None) for path, source in plan.removed.items()),
    ]


def _manifest(con: duckdb.DuckDBPyConnection, raw_schema: str) -> dict[str, tuple[str, str, str | None]]:
    """path -> (raw table, file hash, doc id) of every landed file."""
    try:
        rows = con.execute(
            f"select f.source_file, f.source, f.file_hash, d.doc_id from {raw_schema}._landing_files as f "
            f"left join (select _source_file, any_value(doc_id) as doc_id from {raw_schema}.docs_documents "
            "group by _source_file) as d on d._source_file = f.source_file"
        ).fetchall()
    except duckdb.CatalogException:
        return {}
    return {path: (source, file_hash, doc_id) for path, source, file_hash, doc_id in rows}


def _open_events(con: duckdb.DuckDBPyConnection, relation: str) -> list[dict[str, Any]]:
    try:
        cursor = con.execute(
            f"select * from {relation} where outcome in ({', '.join(repr(o) for o in OPEN)}) order by seen_at"
        )
    except duckdb.CatalogException:
        return []
    names = [d[0] for d in cursor.description]
    return [{name: row[i] for i, name in enumerate(names) if name in EVENTS} for row in cursor.fetchall()]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
