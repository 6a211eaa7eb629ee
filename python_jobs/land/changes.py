"""What the next ingest would load, without loading it: the landing zone's pending changes.

The ingest job's own selection (python_jobs/land/ingest.py: `scan_landing_zone`, then `plan_files`
against the manifest `raw._landing_files`), run read-only, for whatever needs to know whether a run
is due: the orchestrator's landing-zone sensor (python_jobs/orchestrate/sensors.py) asks this, so it
requests a run for exactly the files `rp ingest` would read.

Example:
    from python_jobs.land.changes import pending_changes
    changes = pending_changes(settings)
    if changes.any:
        print(changes.key, changes.describe())
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import duckdb

from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect
from python_jobs.land.ingest import FileState, LoadPlan, ensure_schema, plan_files, scan_landing_zone


@dataclass(frozen=True)
class PendingChanges:
    plan: LoadPlan
    found: dict[str, FileState]  # every landing file, as scanned

    @property
    def any(self) -> bool:
        return bool(self.plan.to_read or self.plan.removed)

    @property
    def key(self) -> str:
        """Names this set of changes: the same files with the same content give the same key."""
        parts = sorted(f"+{s.path}:{s.file_hash}" for s in self.plan.to_read)
        parts += sorted(f"-{path}" for path in self.plan.removed)
        return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]

    def describe(self) -> str:
        plan = self.plan
        return f"{len(plan.new)} new, {len(plan.changed)} changed, {len(plan.removed)} removed landing file(s)"


def scan_key(found: dict[str, FileState]) -> str:
    """Names the landing zone as `scan_landing_zone` sees it (paths, sizes, mtimes), without reading a file."""
    listing = "\n".join(f"{rel}\t{s.size}\t{s.mtime_ns}" for rel, s in sorted(found.items()))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()[:16]


def scan(settings: Settings) -> dict[str, FileState]:
    return scan_landing_zone(settings.landing_dir)


def pending_changes(settings: Settings, found: dict[str, FileState] | None = None) -> PendingChanges:
    """The files the next `rp ingest` would read or remove, found as it finds them.

    Opens the warehouse read-only for as long as the manifest query takes (a busy warehouse raises
    WarehouseLockedError); before the first ingest every file is new. A source whose files are all
    gone counts as a change here: the ingest itself refuses it, with the message that says why."""
    found = scan(settings) if found is None else found
    if not settings.warehouse_path.exists():
        return PendingChanges(_plan_against_empty_manifest(settings, found), found)
    with connect(settings.warehouse_path, read_only=True) as con:
        if _has_manifest(con, settings.raw_schema):
            plan = plan_files(con, settings.raw_schema, settings.landing_dir, found, allow_source_removal=True)
            return PendingChanges(plan, found)
    return PendingChanges(_plan_against_empty_manifest(settings, found), found)


def _has_manifest(con: duckdb.DuckDBPyConnection, schema: str) -> bool:
    (count,) = con.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = '_landing_files'",
        [schema],
    ).fetchone()
    return bool(count)


def _plan_against_empty_manifest(settings: Settings, found: dict[str, FileState]) -> LoadPlan:
    with duckdb.connect() as memory:  # the manifest's shape, with nothing in it: every file is new
        ensure_schema(memory, settings.raw_schema)
        return plan_files(memory, settings.raw_schema, settings.landing_dir, found, allow_source_removal=True)
