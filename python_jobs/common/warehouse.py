"""Opening the DuckDB warehouse, with lock conflicts turned into a clear message.

DuckDB allows one writing process per file, and a read-only holder also blocks writers,
so every job opens the file for as short a time as it can and says who to wait for.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from python_jobs.common.errors import PipelineError, WarehouseLockedError


def lock_message(path: Path, duckdb_error: str) -> str:
    pid = re.search(r"PID (\d+)", duckdb_error)
    holder = f"process {pid.group(1)}" if pid else "another process"
    return (
        f"warehouse {path} is locked by {holder} (a running `dbt build` or pipeline job). "
        "DuckDB allows one writer at a time: wait for it to finish, then run this again."
    )


def connect(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse; raise WarehouseLockedError if another process holds it."""
    if read_only and not path.exists():
        raise PipelineError(f"warehouse {path} does not exist yet: run `make ingest` and `make build` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise
        raise WarehouseLockedError(lock_message(path, str(exc))) from None
