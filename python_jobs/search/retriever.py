"""Search the published index: vector, full-text or hybrid, with filters and access control.

Three modes, over the table and version that live.json names (never a half-written run):

- `vector`: the question is embedded by the model that built the index (same fingerprint:
  weights, backend, normalization) and ranked by cosine similarity; exact search until
  the table has an ANN index (vars.embedding.ann_min_rows), then the index's candidates
  re-ranked by exact cosine (python_jobs.index.upkeep.ANN_SEARCH).
- `fts`: LanceDB's full-text index on `embedding_text` (BM25; stemmed, stop words removed).
  The question is one match query, never parsed as query syntax. BM25's statistics are those
  of the caller's clearance (the highest level it may read): each clearance has a full-text
  column of its own (python_jobs.index.store.FTS_COLUMNS), so no score depends on a document
  the caller may not read, and no caller can learn a word of one from how scores move.
- `hybrid`: both lists, `candidates` deep each, fused by reciprocal rank fusion,
  score(chunk) = sum over the lists it is in of 1 / (rrf_k + rank), rank from 1 and
  rrf_k = 60 (Cormack et al., 2009). RRF needs no score calibration between BM25 and
  cosine, and a chunk found by both lists rises above one found by either alone.
  Ties are broken by chunk id, so results are reproducible.

Access levels and metadata filters become one prefilter (python_jobs.search.filters)
applied inside each search before ranking, so no mode, fusion included, can return a
chunk the caller may not read. `per_document` keeps each document's best chunk only
(results are then documents, ranked by their best chunk), fetching deeper until it has k
documents or the candidates run out.

Example:
    rp query "how do I descale the kettle" --mode hybrid -k 5
    rp query "E01 after descaling" --access-level internal --doc-type troubleshooting
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from python_jobs.chunk.schema import INDEXED_CHUNK_COLUMNS
from python_jobs.common.errors import PipelineError
from python_jobs.common.output import Summary, terminal_safe, text_console
from python_jobs.common.settings import Settings
from python_jobs.index.encoders import Embedder, load_embedder
from python_jobs.index.store import FTS_COLUMNS, MODEL_CACHE_DIR, LivePointer, VectorIndex
from python_jobs.index.upkeep import ANN_SEARCH
from python_jobs.search.filters import (
    ACCESS_LEVELS,
    DEFAULT_ACCESS_LEVELS,
    FilterError,
    Filters,
    checked_access_levels,
)

MODES = ("vector", "fts", "hybrid")
RRF_K = 60
QUERY_BATCH = 64
QUERY_CACHE_SIZE = 10_000  # query vectors kept per Retriever (1.5 KB each)
# Each list of a hybrid search is this deep at least; fusion can only reorder what it sees.
HYBRID_MIN_CANDIDATES = 50
# What a result carries: the chunk's text and where it came from, not how it was cut or embedded.
RESULT_COLUMNS = [
    name
    for name in INDEXED_CHUNK_COLUMNS
    if name not in {"section_id", "embedding_text", "token_count", "content_hash", "chunking_config_hash"}
]
HIT_COLUMNS = ("chunk_id", "doc_id", "doc_title", "heading_path", "text", "source_updated_at")
METADATA_COLUMNS = tuple(name for name in RESULT_COLUMNS if name not in HIT_COLUMNS)


@dataclass
class Hit:
    """One result: a chunk (or, per document, a document's best chunk) with where it came from."""

    rank: int
    score: float  # cosine similarity (vector), BM25 (fts) or the RRF sum (hybrid)
    chunk_id: str
    doc_id: str
    doc_title: str
    heading_path: str
    text: str
    metadata: dict[str, Any]
    vector_rank: int | None = None  # its rank in each list a hybrid search fused
    fts_rank: int | None = None


@dataclass
class SearchResult(Summary):
    query: str
    mode: str
    k: int
    access_levels: tuple[str, ...]
    filters: str
    per_document: bool
    index_table: str
    index_version: int
    hits: list[Hit] = field(default_factory=list)

    def doc_ids(self) -> list[str]:
        return [hit.doc_id for hit in self.hits]

    def to_text(self) -> str:
        return render(self)


class Retriever:
    """The published index, opened once for many queries (the evaluation runs hundreds)."""

    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        index = VectorIndex(settings.index_dir)
        pointer = index.live()
        if pointer is None:
            raise PipelineError(f"no published index in {settings.index_dir}: run `make embed` first")
        self.pointer: LivePointer = pointer
        try:
            self.table = index.open(pointer.table, pointer.version)
        except (OSError, RuntimeError, ValueError) as exc:  # lance: a version that is gone, a damaged table
            raise PipelineError(
                f"live.json in {settings.index_dir} names {pointer.table} version {pointer.version}, which cannot "
                f"be opened ({_first_line(exc)}): run `make verify ARGS=--repair`"
            ) from None
        if self.table is None:
            raise PipelineError(
                f"live.json in {settings.index_dir} names table {pointer.table}, which is not there: "
                "run `make verify ARGS=--repair`"
            )
        self._embedder = embedder
        self._rows = None
        self._columns = set(self.table.schema.names)
        # Query vectors by question, most recently used last: an evaluation embeds its questions up front, and
        # the service asks the same popular questions again. Bounded, since the service lives for days.
        self._query_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._query_lock = threading.Lock()

    @property
    def version(self) -> int:
        return self.pointer.version

    @property
    def row_count(self) -> int:
        if self._rows is None:
            self._rows = self.table.count_rows()
        return self._rows

    def search(
        self,
        query: str,
        mode: str = "hybrid",
        k: int = 10,
        filters: Filters | None = None,
        access_levels: Sequence[str] = DEFAULT_ACCESS_LEVELS,
        per_document: bool = False,
        candidates: int | None = None,
    ) -> SearchResult:
        if mode not in MODES:
            raise FilterError(f"mode {mode!r} is unknown: use one of {', '.join(MODES)}")
        if k < 1:
            raise FilterError(f"k={k} must be at least 1")
        if not query.strip():
            raise FilterError("the query is empty")
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise FilterError(f"the query is not valid UTF-8 (byte {exc.start} of it): pass text, not bytes") from None
        filters = filters or Filters()
        levels = checked_access_levels(access_levels)
        where = filters.where(levels)
        result = SearchResult(
            query, mode, k, levels, filters.describe(), per_document, self.pointer.table, self.pointer.version
        )
        vector = self.embed_query(query) if mode in ("vector", "hybrid") else None
        depth = max(k, candidates or 0, HYBRID_MIN_CANDIDATES if mode == "hybrid" else 0)
        if per_document:
            depth = max(depth, 4 * k)
        while True:
            hits, counts = self._ranked(mode, query, vector, where, depth, levels)
            if per_document:
                hits = _best_per_document(hits)
            # Every search returned fewer rows than asked: deeper would find nothing new.
            exhausted = all(count < depth for count in counts)
            if len(hits) >= k or exhausted or depth >= self.row_count:
                break
            depth *= 4  # documents with many matching chunks crowded the others out: look deeper
        for rank, hit in enumerate(hits[:k], start=1):
            hit.rank = rank
        result.hits = hits[:k]
        return result

    def embed_query(self, query: str) -> np.ndarray:
        with self._query_lock:
            vector = self._query_vectors.get(query)
            if vector is not None:
                self._query_vectors.move_to_end(query)
                return vector
        vector = self._query_embedder().encode([query])[0]
        self._remember({query: vector})
        return vector

    def embed_queries(self, queries: Sequence[str]) -> None:
        """Embed many questions in batches up front (an evaluation asks hundreds)."""
        with self._query_lock:
            todo = list(dict.fromkeys(q for q in queries if q not in self._query_vectors))
        for start in range(0, len(todo), QUERY_BATCH):
            batch = todo[start : start + QUERY_BATCH]
            self._remember(dict(zip(batch, self._query_embedder().encode(batch), strict=True)))

    def _remember(self, vectors: dict[str, np.ndarray]) -> None:
        with self._query_lock:
            self._query_vectors.update(vectors)
            while len(self._query_vectors) > QUERY_CACHE_SIZE:
                self._query_vectors.popitem(last=False)

    # --- the modes ------------------------------------------------------------------------

    def _ranked(
        self, mode: str, query: str, vector, where: str, depth: int, levels: tuple[str, ...]
    ) -> tuple[list[Hit], list[int]]:
        """The ranked hits, and how many rows each search returned."""
        try:
            if mode == "vector":
                hits = self._vector(vector, where, depth)
                return hits, [len(hits)]
            if mode == "fts":
                hits = self._fts(query, where, depth, levels)
                return hits, [len(hits)]
            vector_hits, fts_hits = self._vector(vector, where, depth), self._fts(query, where, depth, levels)
            return _fuse(vector_hits, fts_hits), [len(vector_hits), len(fts_hits)]
        except (OSError, RuntimeError) as exc:  # lance reports a data file it cannot read as one of these
            raise PipelineError(
                f"the published index {self.pointer.table} version {self.pointer.version} cannot be read "
                f"({_first_line(exc)}): run `make verify` to see what is damaged, `make verify ARGS=--repair` "
                "to rebuild it"
            ) from None

    def _vector(self, vector: np.ndarray, where: str, depth: int) -> list[Hit]:
        # With the ANN index: probe ANN_SEARCH.nprobes partitions, re-rank by exact cosine (scores are exact).
        rows = (
            ANN_SEARCH.apply(self.table.search(vector, vector_column_name="vector").distance_type("cosine"))
            .where(where, prefilter=True)
            .select([*RESULT_COLUMNS, "_distance"])
            .limit(depth)
            .to_arrow()
        )
        scores = [1.0 - d for d in rows.column("_distance").to_pylist()]
        hits = _hits(rows, scores)
        for rank, hit in enumerate(hits, start=1):
            hit.vector_rank = rank
        return hits

    def _fts(self, query: str, where: str, depth: int, levels: tuple[str, ...]) -> list[Hit]:
        from lancedb.query import MatchQuery

        rows = (
            self.table.search(MatchQuery(query, self._fts_column(levels)), query_type="fts")
            .where(where, prefilter=True)
            .select([*RESULT_COLUMNS, "_score"])
            .limit(depth)
            .to_arrow()
        )
        hits = _hits(rows, rows.column("_score").to_pylist())
        # BM25 ties are common for short queries: order them the same way every time.
        hits.sort(key=lambda hit: (-hit.score, hit.chunk_id))
        for rank, hit in enumerate(hits, start=1):
            hit.fts_rank = rank
        return hits

    def _fts_column(self, levels: tuple[str, ...]) -> str:
        """The full-text column of the caller's clearance: the highest of its levels (each level may read the
        ones below it). The prefilter still narrows the rows to exactly `levels`."""
        clearance = max(levels, key=ACCESS_LEVELS.index)
        column = FTS_COLUMNS.get(clearance)
        if column is None or column not in self._columns:
            raise PipelineError(
                f"the published index {self.pointer.table} has no full-text column for access level {clearance!r} "
                "(it predates full-text statistics per access level): run `make embed`, which rebuilds it from "
                "the vector cache"
            )
        return column

    def _query_embedder(self) -> Embedder:
        """The model that built the live index, checked by fingerprint: vectors of another model
        (or backend, or normalization) are not comparable with the index's."""
        if self._embedder is None:
            model = self.pointer.model
            # The configured settings where they match the index, so a process that embeds and then
            # searches loads the model once.
            settings = self.settings.embedding.model_copy(
                update={"backend": model["backend"], "normalize": model["normalized"]}
            )
            embedder = load_embedder(model["name"], settings, self.settings.index_dir.scratch / MODEL_CACHE_DIR)
            if embedder.fingerprint.id != model["id"]:
                raise PipelineError(
                    f"the index {self.pointer.table} was built with {model['name']} fingerprint {model['id']}, but "
                    f"that model now has fingerprint {embedder.fingerprint.id} (its files changed): run `make embed` "
                    "to rebuild the index for it"
                )
            self._embedder = embedder
        elif self._embedder.fingerprint.id != self.pointer.model["id"]:
            raise PipelineError(
                f"the query embedder {self._embedder.fingerprint.describe()} is not the model that built the index "
                f"{self.pointer.table} ({self.pointer.model['id']})"
            )
        return self._embedder


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _hits(rows: pa.Table, scores: list[float]) -> list[Hit]:
    hits = []
    for row, score in zip(rows.select(RESULT_COLUMNS).to_pylist(), scores, strict=True):
        updated = row["source_updated_at"]
        metadata = {name: row[name] for name in METADATA_COLUMNS}
        metadata["source_updated_at"] = updated.isoformat() if isinstance(updated, datetime) else updated
        hits.append(
            Hit(
                rank=0,
                score=float(score),
                chunk_id=row["chunk_id"],
                doc_id=row["doc_id"],
                doc_title=row["doc_title"],
                heading_path=row["heading_path"],
                text=row["text"],
                metadata=metadata,
            )
        )
    return hits


def _fuse(vector_hits: list[Hit], fts_hits: list[Hit]) -> list[Hit]:
    """Reciprocal rank fusion of two ranked lists of chunks (see the module docstring)."""
    fused: dict[str, Hit] = {}
    scores: dict[str, float] = {}
    for hits, rank_field in ((vector_hits, "vector_rank"), (fts_hits, "fts_rank")):
        for rank, hit in enumerate(hits, start=1):
            kept = fused.setdefault(hit.chunk_id, hit)
            setattr(kept, rank_field, rank)
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    for chunk_id, hit in fused.items():
        hit.score = scores[chunk_id]
    return sorted(fused.values(), key=lambda hit: (-hit.score, hit.chunk_id))


def _best_per_document(hits: list[Hit]) -> list[Hit]:
    seen: set[str] = set()
    best = []
    for hit in hits:
        if hit.doc_id not in seen:
            seen.add(hit.doc_id)
            best.append(hit)
    return best


def render(result: SearchResult) -> str:
    """The hits as a table for a terminal. Everything in it but the layout is data (a document's text can
    hold `[/]`, `[red]` or `:x:`), so it is shown as the text it is, never as markup; `--json` does not
    come through here."""
    from rich.table import Table

    unit = "documents" if result.per_document else "chunks"
    console = text_console(160)
    console.print(
        terminal_safe(
            f"{result.mode} search, top {result.k} {unit} ({result.index_table} v{result.index_version}; "
            f"access {', '.join(result.access_levels)}; filters: {result.filters})"
        )
    )
    table = Table()
    for column, justify in (("#", "right"), ("score", "right"), ("doc", "left"), ("section", "left"), ("text", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for hit in result.hits:
        snippet = " ".join(hit.text.split())
        table.add_row(
            str(hit.rank),
            f"{hit.score:.4f}",
            terminal_safe(f"{hit.doc_id}\n{hit.metadata['doc_type']}, {hit.metadata['access_level']}"),
            terminal_safe(hit.heading_path),
            terminal_safe(snippet[:160] + ("…" if len(snippet) > 160 else "")),
        )
    console.print(table if result.hits else terminal_safe(f"no {unit} found for {result.query!r}"))
    return console.file.getvalue().rstrip()
