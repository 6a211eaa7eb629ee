"""Run ledgers: one row per job run in an ops table of the warehouse, declared as a dbt source.

A run writes its row when it starts (status `running`) and again when it ends, so a run
that was killed is still on record; the next run of the same job, which holds the job's
lock, marks such rows `interrupted`. New columns are added to an existing table, so a
ledger written by an older version keeps its history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from python_jobs.common.warehouse import connect


@dataclass(frozen=True)
class Ledger:
    schema: str
    table: str
    columns: Mapping[str, str]  # name -> DuckDB type; the first is the run id
    key: tuple[str, ...] = ()  # the primary key; by default the first column

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.key or (next(iter(self.columns)),)


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


def record_run(warehouse: Path, tables: Sequence[tuple[Ledger, Sequence[Mapping[str, Any]]]]) -> None:
    """Write one run's rows to several tables in one transaction: all of them or none.

    Rows already there for the same run ids are replaced, so recording a run twice is harmless.
    """
    with connect(warehouse) as con:
        con.execute("begin")
        for ledger, rows in tables:
            _ensure(con, ledger)
            if not rows:
                continue
            unknown = {name for row in rows for name in row} - set(ledger.columns)
            if unknown:
                raise ValueError(f"{ledger.relation} has no column(s) {sorted(unknown)}")
            run_column = next(iter(ledger.columns))
            run_ids = sorted({row[run_column] for row in rows})
            con.execute(f"delete from {ledger.relation} where {run_column} in (select unnest(?))", [run_ids])
            batch = pa.table({name: [row.get(name) for row in rows] for name in ledger.columns})
            con.register("_ledger_rows", batch)
            casts = ", ".join(f"cast({name} as {kind}) as {name}" for name, kind in ledger.columns.items())
            con.execute(f"insert into {ledger.relation} by name select {casts} from _ledger_rows")
            con.unregister("_ledger_rows")
        con.execute("commit")


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
    columns = ", ".join(f"{name} {kind}" for name, kind in ledger.columns.items())
    key = ", ".join(ledger.primary_key)
    con.execute(f"create table if not exists {ledger.relation} ({columns}, primary key ({key}))")
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


def replace_all(warehouse: Path, ledger: Ledger, rows: pa.Table) -> None:
    """Replace every row of a snapshot table with `rows`, in one transaction."""
    with connect(warehouse) as con:
        con.execute("begin")
        _ensure(con, ledger)
        con.execute(f"delete from {ledger.relation}")
        con.register("_snapshot_rows", rows)
        casts = ", ".join(f"cast({name} as {kind}) as {name}" for name, kind in ledger.columns.items())
        con.execute(f"insert into {ledger.relation} by name select {casts} from _snapshot_rows")
        con.unregister("_snapshot_rows")
        con.execute("commit")


def has_rows(warehouse: Path, ledger: Ledger, where: str, parameters: Sequence[Any] = ()) -> bool:
    """Whether the ledger has a row matching `where` (false when it does not exist yet)."""
    with connect(warehouse, read_only=True) as con:
        try:
            return con.execute(f"select count(*) from {ledger.relation} where {where}", parameters).fetchone()[0] > 0
        except duckdb.CatalogException:
            return False
