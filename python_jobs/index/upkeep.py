"""Index upkeep: full-text, scalar and ANN indexes, compaction and version cleanup.

Run by the embedding job before it publishes (and the ANN index after, see `build_ann_index`);
what it costs at scale is in docs/benchmarks.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from python_jobs.index.store import FTS_COLUMNS

if TYPE_CHECKING:  # lancedb takes ~2 s to import: a run with nothing to do never imports it
    import lancedb

# Filters and merges on these columns use an index instead of a scan.
SCALAR_INDEXES = (("chunk_id", "BTree"), ("doc_id", "BTree"), ("access_level", "Bitmap"), ("doc_type", "Bitmap"))
# Compaction, index merging and version cleanup (`optimize`) rewrite data: they run when enough
# has piled up, not after every small run. Until then new rows are searched without an index.
OPTIMIZE_MIN_UNINDEXED_ROWS = 10_000
OPTIMIZE_MIN_UNINDEXED_SHARE = 0.05
OPTIMIZE_MAX_SMALL_FRAGMENTS = 64  # versions are cleaned up then too (they are kept keep_versions_days anyway)


@dataclass
class UpkeepReport:
    fts_index: str = "present"
    ann_index: str = "none"
    ann_seconds: float = 0.0
    optimized: bool = False
    scalar_indexes: list[str] = field(default_factory=list)
    versions_removed: int = 0
    tables_dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _optimize_due(table: lancedb.table.Table) -> bool:
    rows = table.count_rows()
    unindexed = max((table.index_stats(i.name).num_unindexed_rows for i in table.list_indices()), default=0)
    small_fragments = table.stats()["fragment_stats"]["num_small_fragments"]
    return (
        unindexed > max(OPTIMIZE_MIN_UNINDEXED_ROWS, OPTIMIZE_MIN_UNINDEXED_SHARE * rows)
        or small_fragments > OPTIMIZE_MAX_SMALL_FRAGMENTS
    )


def compact_and_clean_up(table: lancedb.table.Table, keep_days: float, report: UpkeepReport | None = None) -> int:
    """Compact, fold new rows into the indexes, and remove versions older than `keep_days` but
    never a pinned one: Lance refuses to remove a tagged version, so the cutoff stops at the
    oldest tagged version."""
    versions = table.list_versions()
    now = datetime.now()  # Lance version timestamps are naive local time
    pinned = {info["version"] for info in table.tags.list().values()}
    keep = timedelta(days=keep_days)
    oldest_pinned = min((v["timestamp"] for v in versions if v["version"] in pinned), default=None)
    if oldest_pinned is not None:
        keep = max(keep, now - oldest_pinned + timedelta(seconds=1))
    table.optimize(cleanup_older_than=keep)
    remaining = {v["version"] for v in table.list_versions()}
    removed = len({v["version"] for v in versions} - remaining)
    if report is not None:
        report.versions_removed, report.optimized = removed, True
    return removed


def cache_upkeep(cache: lancedb.table.Table, keep_days: float) -> None:
    """The vector cache is looked up by content hash; it has no pinned versions."""
    import lancedb.index

    if ("content_hash",) not in {tuple(index.columns) for index in cache.list_indices()}:
        cache.create_index("content_hash", config=lancedb.index.BTree())
    if _optimize_due(cache):
        compact_and_clean_up(cache, keep_days)


def needs_ann_index(table: lancedb.table.Table, ann_min_rows: int) -> bool:
    """Whether the table is big enough for an ANN index and has none yet."""
    has_one = any(tuple(index.columns) == ("vector",) for index in table.list_indices())
    return not has_one and table.count_rows() >= max(ann_min_rows, 256)  # IVF training needs rows


@dataclass(frozen=True)
class AnnSearch:
    """How a query searches the ANN index: how many partitions it probes, and how many candidates per
    result it re-ranks by exact cosine on the full vectors. Chosen with `ann_index_config`: recall@10
    against exact search at 100,000 and 1,000,000 vectors, real and random, in docs/benchmarks.md."""

    nprobes: int
    refine_factor: int

    def apply(self, query):
        """A LanceDB vector query with these parameters (a table without the index ignores them)."""
        return query.nprobes(self.nprobes).refine_factor(self.refine_factor)


ANN_SEARCH = AnnSearch(nprobes=40, refine_factor=10)
# Partitions of ROWS_PER_PARTITION rows, at most MAX_PARTITIONS: ANN_SEARCH's 40 probes then cover every
# partition up to ~650,000 rows and two thirds of the index at 1,000,000. With LanceDB's default (~8,000
# rows a partition: 122 at 1,000,000) and 20 probes, recall@10 at 1,000,000 was 0.89 on NFCorpus vectors
# and 0.36 on random ones; with 61 partitions, 20 probes gave 0.93, 32 gave 0.97, 40 gave 0.985 at 46 ms
# a query against 2.4 s exact (docs/benchmarks.md). The price is a query cost growing with rows / 64:
# past ~1,000,000 rows a table, shard (docs/scale.md).
ROWS_PER_PARTITION = 16_384
MAX_PARTITIONS = 64


def ann_index_config(rows: int):
    """IVF with 8-bit scalar-quantized vectors (IVF_SQ), k-means trained briefly on a small sample, in
    partitions of ROWS_PER_PARTITION rows, never more than MAX_PARTITIONS.

    Why not IVF_HNSW_SQ (the index before): its graph per partition took 81-121 s per 125,000 vectors
    on an idle machine, and 296 s of a 331 s build at 172,000 chunks; IVF_SQ builds in ~2 s at
    100,000 and ~13 s at 1,000,000 and, with `ANN_SEARCH`'s probes and exact re-ranking, finds the
    same top 10 at 100,000 (0.983 of it at 1,000,000).
    IVF_PQ trains a codebook per sub-vector: slower still (676 s at 100,000) and lossy without a
    large refine. Fewer k-means iterations on fewer samples (10 and 64 per partition, not 50 and 256)
    cost no recall: the probes and the re-ranking absorb a coarser partitioning.
    """
    from lancedb.index import IvfSq

    partitions = max(1, min(MAX_PARTITIONS, rows // ROWS_PER_PARTITION))
    return IvfSq(distance_type="cosine", num_partitions=partitions, max_iterations=10, sample_rate=64)


def build_ann_index(table: lancedb.table.Table) -> float:
    """The ANN index, built after a publish: it speeds queries up but never holds fresh data back.

    Until it exists, queries search exactly. A run killed while building it leaves no index, and the
    next run builds it. Rows added later are searched exactly until upkeep's `optimize()` folds them
    into the index, without retraining it (see `_optimize_due`).
    """
    started = time.perf_counter()
    table.create_index("vector", config=ann_index_config(table.count_rows()))
    return time.perf_counter() - started


def upkeep(table: lancedb.table.Table, keep_days: float) -> UpkeepReport:
    """Indexes, compaction and version cleanup, before a run publishes.

    Full-text (one per clearance, see python_jobs.index.store) and scalar indexes always (the
    ANN index comes after the publish, see `build_ann_index`). Rows written after an index was
    built are searched without it
    (correct, a little slower) until `compact_and_clean_up` folds them in, which happens once
    enough has piled up (`_optimize_due`): it rewrites data, so small runs stay small.
    """
    import lancedb.index

    started = time.perf_counter()
    report = UpkeepReport()
    if _optimize_due(table):  # first: a first build's many small fragments are compacted before indexing
        compact_and_clean_up(table, keep_days, report)
    present = {tuple(index.columns): index.index_type for index in table.list_indices()}
    for column in FTS_COLUMNS.values():  # one per clearance: each has its own BM25 statistics
        if (column,) not in present and column in table.schema.names:
            table.create_index(column, config=lancedb.index.FTS())
            report.fts_index = "created"
    for column, kind in SCALAR_INDEXES:
        if (column,) not in present:
            table.create_index(column, config=getattr(lancedb.index, kind)())
            report.scalar_indexes.append(column)
    if ("vector",) in present:
        report.ann_index = "present"
    report.seconds = time.perf_counter() - started
    return report
