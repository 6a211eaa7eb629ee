"""The ANN index the embedding job builds answers like exact search, and takes new rows in without a rebuild."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from python_jobs.index.upkeep import ANN_SEARCH, build_ann_index

DIMENSION = 384
ROWS = 3_000


def unit_vectors(rng: np.random.Generator, rows: int) -> np.ndarray:
    # Uniform random directions: no cluster structure, the hardest case for a partitioned index.
    vectors = rng.normal(size=(rows, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def arrow(vectors: np.ndarray, start: int = 0) -> pa.Table:
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + len(vectors))),
            "vector": pa.FixedSizeListArray.from_arrays(flat, DIMENSION),
        }
    )


def recall_at_10(table, vectors: np.ndarray, queries: np.ndarray) -> float:
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    hits = 0
    for query, truth in zip(queries, exact, strict=True):
        search = table.search(query, vector_column_name="vector").distance_type("cosine").limit(10)
        found = ANN_SEARCH.apply(search).select(["id"]).to_arrow().column("id").to_pylist()
        hits += len(set(found) & set(truth.tolist()))
    return hits / (10 * len(queries))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    import lancedb

    rng = np.random.default_rng(11)
    vectors = unit_vectors(rng, ROWS)
    table = lancedb.connect(str(tmp_path_factory.mktemp("ann"))).create_table("vectors", arrow(vectors))
    build_ann_index(table)
    return table, vectors, rng


def test_ann_index_finds_the_exact_top_10_with_the_retrievers_search_parameters(indexed):
    table, vectors, rng = indexed
    assert [i.index_type for i in table.list_indices() if tuple(i.columns) == ("vector",)]
    assert recall_at_10(table, vectors, unit_vectors(rng, 50)) >= 0.9


def test_rows_added_later_are_found_and_optimize_folds_them_in_without_a_rebuild(indexed):
    table, vectors, rng = indexed
    index = next(i.name for i in table.list_indices() if tuple(i.columns) == ("vector",))
    extra = unit_vectors(rng, 300)
    table.add(arrow(extra, start=ROWS))
    everything = np.vstack([vectors, extra])
    assert table.index_stats(index).num_unindexed_rows == 300
    queries = extra[:20] + 0.05 * unit_vectors(rng, 20)  # near the new rows: they must be found
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    assert recall_at_10(table, everything, queries) >= 0.9  # unindexed rows are searched exactly

    table.optimize()
    assert table.index_stats(index).num_unindexed_rows == 0
    assert recall_at_10(table, everything, queries) >= 0.9
