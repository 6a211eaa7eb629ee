"""The query log and the feedback, written off the hot path to Parquet files that dbt reads.

Why files and not the warehouse: DuckDB allows one writer per file, and `make build` / `make embed`
hold it for minutes. A service writing there would either stall requests behind the lock or need the
batch jobs to wait for it. So the service never opens the warehouse: a request puts its row on a
bounded in-process queue (no I/O, microseconds) and returns; one writer thread flushes the queue every
`vars.serve.log_flush_seconds` into a new Parquet file per table, written under a `.tmp` name and
renamed when whole, so a reader (dbt's `read_parquet` glob of `part-*.parquet`) never sees half a file:

    <serve_log_dir>/query_log/part-<UTC yyyymmddTHHMMSSffffff>-<8 hex>.parquet
    <serve_log_dir>/feedback/part-<...>.parquet

A full queue (the writer cannot keep up) or a directory that cannot be written drops the rows, counts
them in /metrics (`rp_serve_log_rows_dropped`) and logs a warning: a lost log row never fails a query.
On shutdown the writer drains the queue before the process exits.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

QUERY_LOG = "query_log"
FEEDBACK = "feedback"
_TIMESTAMP = pa.timestamp("us", tz="UTC")

QUERY_LOG_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string()),  # uuid4 hex
        pa.field("logged_at", _TIMESTAMP),
        pa.field("caller", pa.string()),  # the key's name, never the key; null when no valid key was sent
        pa.field("access_level", pa.string()),
        pa.field("route", pa.string()),  # /v1/search or /v1/context
        pa.field("status", pa.int32()),
        pa.field("error", pa.string()),  # null when the request succeeded
        pa.field("mode", pa.string()),
        pa.field("k", pa.int32()),
        pa.field("query", pa.string()),
        pa.field("filters", pa.string()),  # JSON
        pa.field("per_document", pa.bool_()),
        pa.field("index_table", pa.string()),
        pa.field("index_version", pa.int64()),
        pa.field("prompt_name", pa.string()),  # null for search
        pa.field("prompt_version", pa.string()),
        pa.field("context_tokens", pa.int32()),  # null for search
        pa.field("results", pa.string()),  # JSON list of {"rank", "chunk_id", "doc_id", "score"}
        pa.field("embed_ms", pa.float64()),
        pa.field("search_ms", pa.float64()),
        pa.field("total_ms", pa.float64()),
    ]
)

FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("feedback_id", pa.string()),
        pa.field("query_id", pa.string()),
        pa.field("logged_at", _TIMESTAMP),
        pa.field("caller", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("chunk_id", pa.string()),  # null when the feedback names a document
        pa.field("label", pa.string()),  # relevant, not_relevant or click
        pa.field("comment", pa.string()),
    ]
)

SCHEMAS = {QUERY_LOG: QUERY_LOG_SCHEMA, FEEDBACK: FEEDBACK_SCHEMA}
# Most rows in one Parquet file: a burst is several files, not one huge write holding the queue.
MAX_BATCH_ROWS = 50_000
WARN_EVERY_SECONDS = 30.0


def part_name(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"part-{now:%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}.parquet"


class LogWriter:
    """A bounded queue of rows and the thread that writes them in batches."""

    def __init__(
        self,
        directory: Path,
        queue_size: int,
        flush_seconds: float,
        on_written: Callable[[str, int], None] | None = None,
        on_dropped: Callable[[str, str, int], None] | None = None,
    ):
        self.directory = directory
        self.flush_seconds = flush_seconds
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=queue_size)
        self._on_written = on_written or (lambda table, rows: None)
        self._on_dropped = on_dropped or (lambda table, reason, rows: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning: dict[str, float] = {}
        self.written = {QUERY_LOG: 0, FEEDBACK: 0}
        self.dropped = {QUERY_LOG: 0, FEEDBACK: 0}

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def log(self, table: str, row: dict[str, Any]) -> bool:
        """Queue a row without blocking; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait((table, row))
            return True
        except queue.Full:
            self._drop(table, "queue_full", 1, f"the log queue is full ({self._queue.maxsize} rows)")
            return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rp-serve-log-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()  # rows queued after the thread's last look (or when it was never started)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Write every queued row: one file per table per MAX_BATCH_ROWS."""
        while True:
            batches: dict[str, list[dict[str, Any]]] = {}
            taken = 0
            while taken < MAX_BATCH_ROWS:
                try:
                    table, row = self._queue.get_nowait()
                except queue.Empty:
                    break
                batches.setdefault(table, []).append(row)
                taken += 1
            for table, rows in batches.items():
                self._write(table, rows)
            if taken < MAX_BATCH_ROWS:
                return

    def _write(self, table: str, rows: list[dict[str, Any]]) -> None:
        folder = self.directory / table
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / part_name()
            temporary = path.with_name(path.name + ".tmp")
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[table]), temporary)
            os.replace(temporary, path)
        except (OSError, pa.ArrowException) as exc:
            self._drop(table, "write_failed", len(rows), f"cannot write {folder}: {exc}")
            return
        self.written[table] += len(rows)
        self._on_written(table, len(rows))

    def _drop(self, table: str, reason: str, rows: int, why: str) -> None:
        self.dropped[table] += rows
        self._on_dropped(table, reason, rows)
        now = time.monotonic()
        if now - self._last_warning.get(reason, -WARN_EVERY_SECONDS) >= WARN_EVERY_SECONDS:
            self._last_warning[reason] = now
            log.warning(
                "dropped %d %s row(s): %s (requests are unaffected; rp_serve_log_rows_dropped counts them)",
                rows,
                table,
                why,
            )


# --- what feedback is checked against ---------------------------------------------------------


@dataclass(frozen=True)
class QueryRecord:
    """What a query returned, to check feedback on it: who asked, and which chunks of which documents."""

    query_id: str
    caller: str | None
    results: tuple[tuple[str, str], ...]  # (chunk_id, doc_id) in rank order

    def doc_of(self, chunk_id: str) -> str | None:
        return next((doc for chunk, doc in self.results if chunk == chunk_id), None)

    def returned_doc(self, doc_id: str) -> bool:
        return any(doc == doc_id for _, doc in self.results)


class RecentQueries:
    """The last `size` answered queries, in memory (older ones are read back from the query log)."""

    def __init__(self, size: int):
        self.size = size
        self._records: OrderedDict[str, QueryRecord] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, record: QueryRecord) -> None:
        with self._lock:
            self._records[record.query_id] = record
            while len(self._records) > self.size:
                self._records.popitem(last=False)

    def get(self, query_id: str) -> QueryRecord | None:
        with self._lock:
            return self._records.get(query_id)


def _parts(directory: Path, table: str, day: date | None = None) -> list[Path]:
    prefix = f"part-{day:%Y%m%d}" if day else "part-"
    return sorted((directory / table).glob(f"{prefix}*.parquet"))


def find_query(directory: Path, query_id: str) -> QueryRecord | None:
    """A query's record from the query log files, newest first; None if it was never logged as answered."""
    import pyarrow.dataset as ds

    files = _parts(directory, QUERY_LOG)
    if not files:
        return None
    try:
        dataset = ds.dataset([str(f) for f in files], schema=QUERY_LOG_SCHEMA, format="parquet")
        found = dataset.to_table(
            columns=["query_id", "caller", "status", "results"],
            filter=(ds.field("query_id") == query_id) & (ds.field("status") == 200),
        ).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        log.warning("cannot read the query log in %s to check feedback: %s", directory, exc)
        return None
    if not found:
        return None
    row = found[-1]
    results = tuple((r["chunk_id"], r["doc_id"]) for r in json.loads(row["results"] or "[]"))
    return QueryRecord(row["query_id"], row["caller"], results)


def tokens_used_today(directory: Path, today: date | None = None) -> dict[str, int]:
    """Context tokens served per caller today (UTC), from the query log files written today."""
    import pyarrow.compute as pc

    today = today or datetime.now(UTC).date()
    used: dict[str, int] = {}
    for file in _parts(directory, QUERY_LOG, today):
        try:
            table = pq.read_table(file, columns=["caller", "logged_at", "status", "context_tokens"])
        except (OSError, pa.ArrowException) as exc:
            log.warning("cannot read %s to seed the daily token budgets: %s", file, exc)
            continue
        midnight = pa.scalar(datetime.combine(today, datetime.min.time(), tzinfo=UTC), _TIMESTAMP)
        served = pc.and_(pc.equal(table["status"], 200), pc.is_valid(table["context_tokens"]))
        table = table.filter(pc.and_(served, pc.greater_equal(table["logged_at"], midnight)))
        for caller, tokens in zip(table["caller"].to_pylist(), table["context_tokens"].to_pylist(), strict=True):
            if caller:
                used[caller] = used.get(caller, 0) + tokens
    return used
