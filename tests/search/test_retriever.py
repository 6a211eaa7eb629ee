"""Retrieval through the real model and a real LanceDB index: modes, fusion, filters, access control."""

from __future__ import annotations

import json
import sys

import pytest

from python_jobs.search.filters import ACCESS_LEVELS, FilterError, Filters, access_levels_up_to
from python_jobs.search.retriever import RRF_K, Retriever
from tests.worlds import KETTLE_SKU, SECRET_DOC_ID, SECRET_QUERY, Workspace

MODES = ("vector", "fts", "hybrid")
KETTLE = "faq-brightwater-variable-temp-kettle"
PRICE_MATCH = "faq-price-match"
STAFF_PRICE_MATCH = "faq-staff-price-match-at-register"


@pytest.fixture(scope="module")
def retriever(search_world: Workspace) -> Retriever:
    return Retriever(search_world.settings())


def test_each_mode_returns_top_k_chunks_with_scores_and_metadata(retriever):
    for mode in MODES:
        result = retriever.search("how do I descale the kettle", mode, k=4)
        assert len(result.hits) == 4, mode
        assert [h.rank for h in result.hits] == [1, 2, 3, 4]
        scores = [h.score for h in result.hits]
        assert scores == sorted(scores, reverse=True), mode
        top = result.hits[0]
        assert top.doc_id == KETTLE, mode
        assert top.doc_title.startswith("Brightwater") and top.heading_path.startswith(top.doc_title)
        assert top.metadata["doc_type"] == "faq" and top.metadata["access_level"] == "public"
        assert top.metadata["product_sku"] == KETTLE_SKU and top.metadata["source_updated_at"].startswith("2026-03-02")
        assert result.index_version == retriever.version


def test_vector_scores_are_cosine_similarities(retriever):
    import numpy as np

    hit = retriever.search("keep the water warm", "vector", k=1).hits[0]
    row = retriever.table.search().where(f"chunk_id = '{hit.chunk_id}'").select(["vector"]).to_arrow()
    stored = np.array(row.column("vector")[0].as_py())
    query = retriever.embed_query("keep the water warm")
    expected = float(stored @ query / (np.linalg.norm(stored) * np.linalg.norm(query)))
    assert hit.score == pytest.approx(expected, abs=1e-5)


def test_hybrid_is_reciprocal_rank_fusion_of_the_two_lists(retriever):
    query = "price match an online retailer"
    depth = 50
    vector = {h.chunk_id: h.rank for h in retriever.search(query, "vector", k=depth).hits}
    fts = {h.chunk_id: h.rank for h in retriever.search(query, "fts", k=depth).hits}
    expected = {
        chunk: sum(1 / (RRF_K + ranks[chunk]) for ranks in (vector, fts) if chunk in ranks) for chunk in {*vector, *fts}
    }
    expected_order = sorted(expected, key=lambda chunk: (-expected[chunk], chunk))[:10]
    hybrid = retriever.search(query, "hybrid", k=10, candidates=depth).hits
    assert [h.chunk_id for h in hybrid] == expected_order
    for hit in hybrid:
        assert hit.score == pytest.approx(expected[hit.chunk_id])
        assert (hit.vector_rank, hit.fts_rank) == (vector.get(hit.chunk_id), fts.get(hit.chunk_id))


@pytest.mark.parametrize("per_document", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_confidential_best_match_never_reaches_a_public_caller(retriever, mode, per_document):
    cleared = retriever.search(SECRET_QUERY, mode, k=5, access_levels=ACCESS_LEVELS, per_document=per_document)
    assert cleared.hits[0].doc_id == SECRET_DOC_ID, "the note must be the best match, or this test proves nothing"
    for levels in (("public",), access_levels_up_to("internal")):
        hits = retriever.search(SECRET_QUERY, mode, k=50, access_levels=levels, per_document=per_document).hits
        assert hits, (mode, levels)
        assert all(h.metadata["access_level"] in levels for h in hits), (mode, levels)
        assert SECRET_DOC_ID not in {h.doc_id for h in hits}


def test_internal_documents_need_internal_clearance(retriever):
    query = "price match at the register for a customer"
    public = {h.doc_id for h in retriever.search(query, "hybrid", k=20).hits}
    internal = {h.doc_id for h in retriever.search(query, "hybrid", k=20, access_levels=("public", "internal")).hits}
    assert STAFF_PRICE_MATCH not in public
    assert STAFF_PRICE_MATCH in internal


def test_metadata_filters_narrow_every_mode(retriever):
    cases = [
        (Filters.of(product_sku=KETTLE_SKU), lambda h: h.metadata["product_sku"] == KETTLE_SKU),
        (Filters.of(doc_type=["troubleshooting", "policy"]), lambda h: h.metadata["doc_type"] != "faq"),
        (Filters.of(category="Kitchen"), lambda h: h.metadata["category"] == "Kitchen"),
        (Filters.of(updated_to="2026-01-01"), lambda h: h.metadata["source_updated_at"] < "2026-01-01"),
        (Filters.of(updated_from="2026-03-01", updated_to="2026-03-03"), lambda h: h.doc_id == KETTLE),
    ]
    for filters, holds in cases:
        for mode in MODES:
            hits = retriever.search(
                "descale price match", mode, k=30, filters=filters, access_levels=ACCESS_LEVELS
            ).hits
            assert hits, (filters, mode)
            assert all(holds(h) for h in hits), (filters, mode, [h.doc_id for h in hits])
    only_price_match = Filters.of(doc_id=PRICE_MATCH)
    assert {h.doc_id for h in retriever.search("kettle", "vector", k=30, filters=only_price_match).hits} == {
        PRICE_MATCH
    }


def test_filter_values_and_query_text_cannot_inject_expressions(retriever):
    injected = Filters.of(doc_type="faq') OR (access_level = 'confidential")
    for mode in MODES:
        assert retriever.search(SECRET_QUERY, mode, k=10, filters=injected).hits == []
    hostile = "kettle' OR access_level = 'confidential' -- \"quoted\" (AND) title:x *"
    for mode in MODES:
        hits = retriever.search(hostile, mode, k=20).hits
        assert all(h.metadata["access_level"] == "public" for h in hits)


def test_per_document_keeps_each_documents_best_chunk(retriever):
    chunks = retriever.search("kettle temperature", "vector", k=200, access_levels=ACCESS_LEVELS).hits
    documents = retriever.search(
        "kettle temperature", "vector", k=3, per_document=True, access_levels=ACCESS_LEVELS
    ).hits
    assert len({h.doc_id for h in documents}) == len(documents) == 3
    first_chunk_of = {}
    for hit in chunks:
        first_chunk_of.setdefault(hit.doc_id, hit.chunk_id)
    assert [h.chunk_id for h in documents] == [first_chunk_of[d] for d in list(first_chunk_of)[:3]]


def test_bad_arguments_are_clear_errors(retriever):
    with pytest.raises(FilterError, match="mode 'semantic' is unknown"):
        retriever.search("x", "semantic")
    with pytest.raises(FilterError, match="access level 'secret' is unknown"):
        retriever.search("x", "fts", access_levels=("secret",))
    with pytest.raises(FilterError, match="no access level"):
        retriever.search("x", "fts", access_levels=())
    with pytest.raises(FilterError, match="updated_from='last week' is not a date"):
        Filters.of(updated_from="last week")
    with pytest.raises(FilterError, match="the query is empty"):
        retriever.search("   ", "fts")


def test_cli_prints_a_table_or_json(search_world):
    text = search_world.job("query", "descale the kettle", "--mode", "fts", "-k", "2", check=True).stdout
    assert "fts search, top 2 chunks" in text and KETTLE in text
    result = json.loads(
        search_world.job("query", SECRET_QUERY, "--access-level", "confidential", "--documents", "--json").stdout
    )
    assert result["hits"][0]["doc_id"] == SECRET_DOC_ID and result["per_document"] is True
    bad = search_world.job("query", "x", "--updated-from", "yesterday")
    assert bad.returncode == 2 and "is not a date" in bad.stderr and "Traceback" not in bad.stderr


def test_no_published_index_is_a_clear_error(world: Workspace):
    result = world.run(sys.executable, "-m", "python_jobs", "query", "anything")
    assert result.returncode == 1
    assert "no published index" in result.stderr and "make embed" in result.stderr
