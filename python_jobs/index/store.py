"""The LanceDB vector index on disk: tables, the live pointer, the vector cache and the run lock.

Layout of the index directory:

    chunks_<model id>.lance    one index table per model fingerprint: a row per chunk
    vectors_<model id>.lance   the vector cache of that model: a row per distinct content hash
    live.json                  which table and version queries read, and the tables before it
    .embed.lock                held by the one embedding run allowed at a time

Queries read the table and version named in live.json, never the table's latest
version: a run's commits become visible all at once when it publishes, so a reader never
sees half a run, and a new model's table is filled beside the live one and swapped in by
rewriting live.json (atomically, with os.replace) when it is complete. Lance versions the
published one is pinned by a tag, so version cleanup never removes what queries read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from python_jobs.chunk.schema import INDEXED_CHUNK_COLUMNS
from python_jobs.common.errors import ExitCode, PipelineError
from python_jobs.index.encoders import ModelFingerprint

if TYPE_CHECKING:  # lancedb takes ~2 s to import: a run with nothing to do never imports it
    import lancedb

INDEX_PREFIX = "chunks_"
CACHE_PREFIX = "vectors_"
LIVE_FILE = "live.json"
LOCK_FILE = ".embed.lock"
MODEL_CACHE_DIR = "_models"  # converted models (ONNX exports) of the backends that need them
# Tagged versions are never cleaned up: `live` is the published one; evaluations pin theirs as `eval`.
LIVE_TAG = "live"
HISTORY_LENGTH = 10  # earlier live tables remembered in live.json

# Columns the embedding job adds: how the row was made.
INDEX_COLUMNS: dict[str, pa.DataType] = {
    "metadata_hash": pa.string(),
    "model_name": pa.string(),
    "model_fingerprint": pa.string(),
    "model_weights_hash": pa.string(),
    "model_dimension": pa.int32(),
    "model_normalized": pa.bool_(),
    "indexed_at": pa.timestamp("us", tz="UTC"),
    "run_id": pa.string(),
}


class IndexBusyError(PipelineError):
    """Another embedding run holds the index; retrying later will work."""

    exit_code = ExitCode.BUSY


def vector_type(dimension: int) -> pa.DataType:
    return pa.list_(pa.float32(), dimension)


def index_schema(dimension: int) -> pa.Schema:
    # document_chunks' columns (python_jobs/chunk/schema.py), then how the row was made, then the vector.
    columns = {**INDEXED_CHUNK_COLUMNS, **INDEX_COLUMNS, "vector": vector_type(dimension)}
    return pa.schema([pa.field(name, kind, nullable=name != "chunk_id") for name, kind in columns.items()])


def cache_schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("vector", vector_type(dimension)),
            pa.field("embedded_at", pa.timestamp("us", tz="UTC")),
            pa.field("run_id", pa.string()),
        ]
    )


def index_table_name(model: ModelFingerprint) -> str:
    return f"{INDEX_PREFIX}{model.id}"


def cache_table_name(model: ModelFingerprint) -> str:
    return f"{CACHE_PREFIX}{model.id}"


@dataclass
class LivePointer:
    """What queries read: one table at one version, and the tables published before it."""

    table: str
    version: int
    model: dict[str, Any]
    run_id: str
    published_at: str
    history: list[dict[str, Any]] = field(default_factory=list)
    # What document_chunks looked like when this was published: a run that finds the same can
    # stop before reading the index (python_jobs.index.plan.chunk_signature).
    chunk_signature: str | None = None


class VectorIndex:
    """The index directory: open tables, read and publish the live pointer."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._db = None

    @property
    def db(self):
        if self._db is None:
            import lancedb

            self._db = lancedb.connect(str(self.directory))
        return self._db

    def has_table(self, name: str) -> bool:
        """Whether the table's files are there, without opening it (or importing lancedb)."""
        return (self.directory / f"{name}.lance").is_dir()

    def table_names(self) -> list[str]:
        if not self.directory.exists():
            return []
        names, page = [], self.db.list_tables()
        names += page.tables
        while page.page_token:
            page = self.db.list_tables(page_token=page.page_token)
            names += page.tables
        return names

    def open(self, name: str, version: int | None = None) -> lancedb.table.Table | None:
        if name not in self.table_names():
            return None
        table = self.db.open_table(name)
        if version is not None:
            table.checkout(version)
        return table

    def open_or_create(self, name: str, schema: pa.Schema) -> lancedb.table.Table:
        return self.open(name) or self.db.create_table(name, schema=schema, exist_ok=True)

    def drop(self, name: str) -> None:
        self.db.drop_table(name)

    # --- the live pointer -------------------------------------------------------------

    @property
    def live_file(self) -> Path:
        return self.directory / LIVE_FILE

    def live(self) -> LivePointer | None:
        try:
            data = json.loads(self.live_file.read_text(encoding="utf-8"))
            return LivePointer(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise PipelineError(
                f"{self.live_file} is unreadable ({exc}): run `make verify ARGS=--repair` to republish the index"
            ) from None

    def open_live(self) -> lancedb.table.Table | None:
        """The published table at its published version: what queries should read."""
        pointer = self.live()
        return self.open(pointer.table, pointer.version) if pointer else None

    def publish(
        self, table: lancedb.table.Table, model: ModelFingerprint, run_id: str, chunk_signature: str | None = None
    ) -> LivePointer:
        """Point queries at the table's current version, atomically."""
        version = table.version
        _move_tag(table, LIVE_TAG, version)
        previous = self.live()
        history = [] if previous is None else previous.history
        if previous and previous.table != table.name:  # a model swap: remember what served before
            history = [{"table": previous.table, "version": previous.version, "model": previous.model}, *history]
        pointer = LivePointer(
            table=table.name,
            version=version,
            model=asdict(model) | {"id": model.id},
            run_id=run_id,
            published_at=datetime.now(UTC).isoformat(),
            history=history[:HISTORY_LENGTH],
            chunk_signature=chunk_signature,
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.live_file.with_suffix(f".tmp{os.getpid()}")
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(asdict(pointer), handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.live_file)
        return pointer

    # --- the run lock -----------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, wait_seconds: float = 0.0) -> Iterator[None]:
        """Hold the index for one embedding run; a second run waits up to `wait_seconds`, then gives up."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        with path.open("a+", encoding="utf-8") as handle:
            deadline = time.monotonic() + wait_seconds
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        holder = handle.read().strip() or "another process"
                        raise IndexBusyError(
                            f"index {self.directory} is being updated by another embedding run ({holder}). "
                            "Wait for it to finish, or pass --wait SECONDS to queue behind it."
                        ) from None
                    time.sleep(0.2)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}, started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)


def read_columns(table: lancedb.table.Table | None, columns: list[str]) -> pa.Table | None:
    """Some columns of every row (no vectors unless asked): the index as the plan sees it."""
    if table is None:
        return None
    return table.search().select(columns).limit(None).to_arrow()


def pin(table: lancedb.table.Table, tag: str, version: int | None = None) -> None:
    """Keep a version from cleanup (e.g. the one an evaluation ran against) by tagging it."""
    _move_tag(table, tag, table.version if version is None else version)


def _move_tag(table: lancedb.table.Table, tag: str, version: int) -> None:
    if tag in table.tags.list():
        table.tags.update(tag, version)
    else:
        table.tags.create(tag, version)
