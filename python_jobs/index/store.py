"""The LanceDB vector index, in a local directory or under an s3:// prefix: tables, the live pointer,
the vector cache and the run lock.

Layout of the index directory (or prefix):

    chunks_<model id>.lance    one index table per model fingerprint: a row per chunk
    vectors_<model id>.lance   the vector cache of that model: a row per distinct content hash
    live.json                  which table and version queries read, and the tables before it
    .embed.lock                held by the one embedding run allowed at a time (on object storage,
                               the lease .embed.lease.json: python_jobs/index/objectstore.py)

Queries read the table and version named in live.json, never the table's latest
version: a run's commits become visible all at once when it publishes, so a reader never
sees half a run, and a new model's table is filled beside the live one and swapped in by
rewriting live.json atomically when it is complete (locally with os.replace, on object
storage with a conditional put: docs/object-storage.md). Lance versions the published one
is pinned by a tag, so version cleanup never removes what queries read.

What never goes to object storage (staged rows, ONNX exports) lives in the location's local
scratch directory (`IndexLocation.scratch`), which for a local index is the index directory.

Full-text search ranks by BM25, whose statistics (how many rows there are, how long they
are, how many hold each term) are those of the column searched. Searched over every row, a
caller could tell from how scores move which words the documents above their clearance
contain. So each access level but the highest has a full-text column of its own, holding
embedding_text for the rows a caller cleared for that level may read and null for the others
(Lance leaves null rows out of the statistics); the highest level searches embedding_text.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from python_jobs.chunk.schema import INDEXED_CHUNK_COLUMNS
from python_jobs.common.errors import ExitCode, PipelineError
from python_jobs.common.locations import IndexLocation
from python_jobs.index.encoders import ModelFingerprint
from python_jobs.index.objectstore import LeaseLostError, lease_lost, storage_for

if TYPE_CHECKING:  # lancedb takes ~2 s to import: a run with nothing to do never imports it
    import lancedb

INDEX_PREFIX = "chunks_"
CACHE_PREFIX = "vectors_"
LIVE_FILE = "live.json"
LOCK_FILE = ".embed.lock"
LEASE_OBJECT = ".embed.lease.json"  # the run lock on object storage
MODEL_CACHE_DIR = "_models"  # converted models (ONNX exports) of the backends that need them
# Tagged versions are never cleaned up: `live` is the published one; evaluations pin theirs as `eval`.
LIVE_TAG = "live"
HISTORY_LENGTH = 10  # earlier live tables remembered in live.json
# What an index table holds, as live.json records it: 1 is a table from before the per-level full-text
# columns (FTS_COLUMNS), which the next embedding run rebuilds from the vector cache.
# 3 leaves positions (chunk_index) out, so a chunk that only moved keeps its row, and adds first_chunk.
INDEX_LAYOUT = 3
# The full-text column each clearance searches, lowest first (python_jobs.search.filters.ACCESS_LEVELS):
# it holds embedding_text for the rows of that level and the ones below it, null for the others.
FTS_COLUMNS = {"public": "fts_text_public", "internal": "fts_text_internal", "confidential": "embedding_text"}

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
    # document_chunks' columns (python_jobs/chunk/schema.py), then how the row was made, the full-text
    # columns of the lower clearances, then the vector.
    columns = {
        **INDEXED_CHUNK_COLUMNS,
        **INDEX_COLUMNS,
        **dict.fromkeys(clearance_columns(), pa.string()),
        "vector": vector_type(dimension),
    }
    return pa.schema([pa.field(name, kind, nullable=name != "chunk_id") for name, kind in columns.items()])


def clearance_columns() -> dict[str, tuple[str, ...]]:
    """Each full-text column the index adds, with the access levels whose rows it holds."""
    levels = tuple(FTS_COLUMNS)
    return {
        column: levels[: position + 1]
        for position, column in enumerate(FTS_COLUMNS.values())
        if column not in INDEXED_CHUNK_COLUMNS
    }


def clearance_texts(access_level: pa.Array | pa.ChunkedArray, embedding_text: pa.Array | pa.ChunkedArray) -> dict:
    """The full-text columns of some rows: embedding_text where the row's level is in the column's, else null."""
    null = pa.scalar(None, pa.string())
    columns = {}
    for column, levels in clearance_columns().items():
        readable = pc.fill_null(pc.is_in(access_level, value_set=pa.array(levels)), False)
        columns[column] = pc.if_else(readable, embedding_text, null)
    return columns


def has_clearance_columns(table: lancedb.table.Table) -> bool:
    return set(clearance_columns()) <= set(table.schema.names)


def has_current_layout(table: lancedb.table.Table) -> bool:
    """Whether the table has the columns of INDEX_LAYOUT, no more and no fewer (rows are written whole)."""
    return set(table.schema.names) == set(index_schema(1).names)


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
    layout: int = 1  # INDEX_LAYOUT of the table; files written before it was recorded are layout 1


class VectorIndex:
    """The index directory (or object-storage prefix): open tables, read and publish the live pointer."""

    def __init__(self, location: IndexLocation | Path | str):
        if not isinstance(location, IndexLocation):
            location = IndexLocation.local(location)
        self.location = location
        self.storage = storage_for(location)
        self._db = None

    @property
    def directory(self) -> Path:
        """The local index directory (a ConfigError for an index on object storage)."""
        return Path(self.location)

    @property
    def db(self):
        if self._db is None:
            import lancedb

            if self.location.is_remote:
                self._db = lancedb.connect(self.location.uri, storage_options=self.location.storage_options or None)
            else:
                self._db = lancedb.connect(str(self.location.path))
        return self._db

    def table_dir(self, name: str) -> Path:
        return self.directory / f"{name}.lance"

    def has_table(self, name: str) -> bool:
        """Whether the table's files are there, without opening it (or importing lancedb)."""
        return self.storage.has_folder(f"{name}.lance")

    def table_names(self) -> list[str]:
        if not self.location.is_remote and not self.directory.exists():
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

    def overwrite(self, name: str, schema: pa.Schema) -> lancedb.table.Table:
        """A new, empty version of table `name`, written without reading any of its data files (so a table
        with damaged files can be rebuilt); its earlier versions and tags stay. A table whose own metadata
        cannot be read is removed and created again."""
        try:
            return self.db.create_table(name, schema=schema, mode="overwrite")
        except (OSError, ValueError, RuntimeError):
            self.storage.remove_folder(f"{name}.lance")
            return self.db.create_table(name, schema=schema)

    def truncated_files(self, name: str) -> list[str]:
        """Data files of table `name` that do not end as every Lance file does: cut short, or overwritten at the end."""
        return self.storage.truncated(f"{name}.lance/data", ".lance", LANCE_FILE_MAGIC)

    # --- the live pointer -------------------------------------------------------------

    @property
    def live_file(self) -> Path:
        return self.directory / LIVE_FILE

    @property
    def live_name(self) -> str:
        """Where live.json is, for messages: a path, or an s3:// URI."""
        return self.storage.describe(LIVE_FILE)

    def live(self) -> LivePointer | None:
        return self._read_live()[0]

    def _read_live(self):
        """The pointer, and what was read (for the conditional write that replaces it)."""
        stored = self.storage.read(LIVE_FILE)
        if stored is None:
            return None, None
        try:
            data = json.loads(stored.data.decode("utf-8"))
            pointer = LivePointer(**data)
        except (ValueError, TypeError) as exc:
            raise PipelineError(
                f"{self.live_name} is unreadable ({exc}): run `make verify ARGS=--repair` to republish the index"
            ) from None
        # A tag name or a string would open some version, not necessarily the one published.
        if not isinstance(pointer.table, str) or type(pointer.version) is not int or pointer.version < 1:
            raise PipelineError(
                f"{self.live_name} is unreadable (table {pointer.table!r} version {pointer.version!r} is not a table "
                "name and a version number): run `make verify ARGS=--repair` to republish the index"
            )
        return pointer, stored

    def set_live_aside(self, suffix: str) -> str:
        """Move an unreadable live.json out of the way (a repair publishes a new one); where it went."""
        return self.storage.set_aside(LIVE_FILE, f"{LIVE_FILE}.{suffix}")

    def open_live(self) -> lancedb.table.Table | None:
        """The published table at its published version: what queries should read."""
        pointer = self.live()
        return self.open(pointer.table, pointer.version) if pointer else None

    def publish(
        self, table: lancedb.table.Table, model: ModelFingerprint, run_id: str, chunk_signature: str | None = None
    ) -> LivePointer:
        """Point queries at the table's current version, atomically: a rename locally, a conditional put on the
        pointer read here on object storage (so a publisher that raced another publishes nothing)."""
        lost = lease_lost(self.location, LEASE_OBJECT)
        if lost:
            raise LeaseLostError(f"{lost}: not published; run `make embed` again")
        version = table.version
        _move_tag(table, LIVE_TAG, version)
        previous, stored = self._read_live()
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
            layout=INDEX_LAYOUT if has_current_layout(table) else 1,
        )
        data = json.dumps(asdict(pointer), indent=2, sort_keys=True).encode("utf-8")
        self.storage.replace(LIVE_FILE, data, stored)
        return pointer

    # --- the run lock -----------------------------------------------------------------

    def lock(self, wait_seconds: float = 0.0) -> contextlib.AbstractContextManager[None]:
        """Hold the index for one embedding run; a second run waits up to `wait_seconds`, then gives up. Locally a
        lock file; on object storage a lease object (python_jobs/index/objectstore.py), so a run on another
        machine is kept out too."""

        def busy(holder: str) -> IndexBusyError:
            return IndexBusyError(
                f"index {self.location} is being updated by another embedding run ({holder}). "
                "Wait for it to finish, or pass --wait SECONDS to queue behind it."
            )

        name = LEASE_OBJECT if self.location.is_remote else LOCK_FILE
        return self.storage.lock(name, busy, wait_seconds)


# Reading a whole table goes a batch at a time, so memory stays flat at any size.
SCAN_BATCH_ROWS = 8192
# How far a stored vector's length may be from 1 when the model normalizes (float32 rounding is ~1e-7).
UNIT_TOLERANCE = 1e-3
# The last bytes of every Lance data file: a file that does not end with them was cut short.
LANCE_FILE_MAGIC = b"LANC"


def scan(table: lancedb.table.Table, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Every row of the table at its checked-out version, every column unless told otherwise, a batch at a
    time. A data file that cannot be read raises (lance reports it as OSError, RuntimeError or ValueError)."""
    yield from table.search().select(columns or table.schema.names).limit(None).to_batches(SCAN_BATCH_ROWS)


def bad_vectors(vectors: pa.Array | pa.ChunkedArray, normalized: bool) -> dict[str, np.ndarray]:
    """Boolean masks over the rows: `missing` (no vector), `non_finite` (a NaN or an infinity in it) and,
    when the model normalizes, `non_unit` (a finite vector whose length is not 1)."""
    if isinstance(vectors, pa.ChunkedArray):
        vectors = vectors.combine_chunks()
    missing = vectors.is_null().to_numpy(zero_copy_only=False)
    dimension = vectors.type.list_size
    values = vectors.values.slice(vectors.offset * dimension, len(vectors) * dimension)
    matrix = values.to_numpy(zero_copy_only=False).reshape(len(vectors), dimension).astype(np.float64)
    finite = np.isfinite(matrix).all(axis=1)
    non_finite = ~finite & ~missing
    non_unit = np.zeros(len(vectors), dtype=bool)
    if normalized:
        norms = np.linalg.norm(np.where(finite[:, None], matrix, 0.0), axis=1)
        non_unit = finite & ~missing & (np.abs(norms - 1.0) > UNIT_TOLERANCE)
    return {"missing": missing, "non_finite": non_finite, "non_unit": non_unit}


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
