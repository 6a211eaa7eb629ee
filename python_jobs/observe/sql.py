"""`make sql Q="..."`: one read-only query against the warehouse, printed as a table.

For the runbook's diagnoses (what failed, what is stale): it opens the file read-only, so it
never takes the write lock from a running build, and it refuses to write.

Example:
    rp sql "select * from observability.ops_node_status where is_failure"
    rp sql --json "select count(*) as chunks from knowledge.document_chunks"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from python_jobs.common.errors import PipelineError
from python_jobs.common.output import Summary, terminal_safe, text_console
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect

MAX_ROWS = 200


@dataclass
class QueryResult(Summary):
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    limit: int = MAX_ROWS

    def to_json(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_text(self) -> str:
        return render(self.columns, self.rows, self.limit)


def query(settings: Settings, sql: str, limit: int = MAX_ROWS) -> QueryResult:
    with connect(settings.warehouse_path, read_only=True) as con:
        try:
            cursor = con.execute(sql)
        except duckdb.Error as exc:
            raise PipelineError(f"query failed: {str(exc).splitlines()[0]}") from None
        if cursor.description is None:
            return QueryResult(limit=limit)
        return QueryResult([d[0] for d in cursor.description], cursor.fetchmany(limit), limit)


def render(columns: list[str], rows: list[tuple], limit: int = MAX_ROWS) -> str:
    """The rows as a table; every name and value is shown as the text it is (never as markup)."""
    from rich.table import Table

    console = text_console(200)
    table = Table(*(terminal_safe(str(name)) for name in columns))
    for row in rows:
        table.add_row(*("" if value is None else terminal_safe(str(value)) for value in row))
    console.print(table)
    if len(rows) == limit:
        console.print(f"(first {limit} rows)")
    return console.file.getvalue().rstrip()
