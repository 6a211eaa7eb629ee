"""`make sql Q="..."`: one read-only query against the warehouse, printed as a table.

For the runbook's diagnoses (what failed, what is stale): it opens the file read-only, so it
never takes the write lock from a running build, and it refuses to write.

Example:
    python -m python_jobs.observe.sql "select * from observability.ops_node_status where is_failure"
    python -m python_jobs.observe.sql --json "select count(*) as chunks from knowledge.document_chunks"
"""

from __future__ import annotations

import io
import json

import click
import duckdb

from python_jobs.common.errors import PipelineError
from python_jobs.common.output import run_job
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect

MAX_ROWS = 200


def query(settings: Settings, sql: str, limit: int = MAX_ROWS) -> tuple[list[str], list[tuple]]:
    with connect(settings.warehouse_path, read_only=True) as con:
        try:
            cursor = con.execute(sql)
        except duckdb.Error as exc:
            raise PipelineError(f"query failed: {str(exc).splitlines()[0]}") from None
        if cursor.description is None:
            return [], []
        return [d[0] for d in cursor.description], cursor.fetchmany(limit)


def render(columns: list[str], rows: list[tuple], limit: int = MAX_ROWS) -> str:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200, file=io.StringIO())
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    console.print(table)
    if len(rows) == limit:
        console.print(f"(first {limit} rows)")
    return console.file.getvalue().rstrip()


@click.command()
@click.argument("sql")
@click.option("--limit", default=MAX_ROWS, show_default=True, help="Most rows to print.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON objects.")
def main(sql: str, limit: int, as_json: bool) -> None:
    """Run one read-only SQL query against the warehouse and print the rows."""
    settings = run_job(Settings.load)
    columns, rows = run_job(lambda: query(settings, sql, limit))
    if as_json:
        click.echo(json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str))
    else:
        click.echo(render(columns, rows, limit))


if __name__ == "__main__":
    main()
