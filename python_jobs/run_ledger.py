"""Run ledgers: one row per job run in an ops table of the warehouse, declared as a dbt source.

A run writes its row when it starts (status `running`) and again when it ends, so a run
that was killed is still on record; the next run of the same job, which holds the job's
lock, marks such rows `interrupted`. New columns are added to an existing table, so a
ledger written by an older version keeps its history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_jobs.warehouse import connect


@dataclass(frozen=True)
class Ledger:
    schema: str
    table: str
    columns: Mapping[str, str]  # name -> DuckDB type; the first is the run id

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.table}"


def record(warehouse: Path, ledger: Ledger, row: Mapping[str, Any]) -> None:
    """Insert or replace the run's row (by run id); unknown keys are an error, missing ones null."""
    unknown = set(row) - set(ledger.columns)
    if unknown:
        raise ValueError(f"{ledger.relation} has no column(s) {sorted(unknown)}")
    names = list(ledger.columns)
    with connect(warehouse) as con:
        _ensure(con, ledger)
        placeholders = ", ".join("?" for _ in names)
        con.execute(
            f"insert or replace into {ledger.relation} ({', '.join(names)}) values ({placeholders})",
            [row.get(name) for name in names],
        )


def mark_interrupted(warehouse: Path, ledger: Ledger, finished_at: Any) -> int:
    """Runs still `running` although their job's lock is free were killed: say so."""
    with connect(warehouse) as con:
        _ensure(con, ledger)
        updated = con.execute(
            f"update {ledger.relation} set status = 'interrupted', finished_at = ? where status = 'running'",
            [finished_at],
        ).fetchone()
    return int(updated[0]) if updated else 0


def _ensure(con, ledger: Ledger) -> None:
    con.execute(f"create schema if not exists {ledger.schema}")
    key, *_ = ledger.columns
    columns = ", ".join(
        f"{name} {kind}" + (" primary key" if name == key else "") for name, kind in ledger.columns.items()
    )
    con.execute(f"create table if not exists {ledger.relation} ({columns})")
    existing = {
        row[0]
        for row in con.execute(
            "select column_name from information_schema.columns where table_schema = ? and table_name = ?",
            [ledger.schema, ledger.table],
        ).fetchall()
    }
    for name, kind in ledger.columns.items():
        if name not in existing:
            con.execute(f"alter table {ledger.relation} add column {name} {kind}")
