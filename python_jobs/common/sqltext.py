"""SQL text built from values: every value becomes a quoted literal, never part of the expression.

LanceDB filters and a few DuckDB settings take SQL text, not bound parameters. Values there
come from user files (document ids, paths), so they go through here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable


def sql_string(value: object) -> str:
    """`'value'`, with single quotes doubled."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[object]) -> str:
    """`column IN ('a', 'b')` with every value quoted; `column` is one of ours, never user text."""
    return f"{column} IN ({', '.join(sql_string(v) for v in values)})"
