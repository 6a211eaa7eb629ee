"""Ranking metrics: hand-computed edge cases, and a cross-check of every metric against ranx.

ranx compiles its metrics with numba on first use (~25 s cold on this machine, a few seconds once numba's
on-disk cache is warm), so one module-scoped fixture pays that once for every ranx test.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from python_jobs.evaluate.metrics import (
    DEFAULT_KS,
    METRICS,
    EvalResult,
    evaluate,
    hit_rate_at_k,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    to_document_ranking,
)

TOLERANCE = 1e-9
KS = (1, 3, 5, 10)
# Our metric name -> ranx's. Checked in ranx 0.3.21's source (ranx/metrics): "hit_rate" is 1 if any relevant
# document is in the top k ("hits" would be their count); "ndcg" is Järvelin's linear gain, "ndcg_burges" the
# exponential 2^rel - 1; "map@k" divides by all relevant documents; "mrr@k" honours k (fix_k).
RANX_NAMES = {
    "precision": "precision",
    "recall": "recall",
    "hit_rate": "hit_rate",
    "mrr": "mrr",
    "ndcg": "ndcg",
    "map": "map",
}
# ranx stands in for an empty result list with this document, judged nowhere (see ranx_reference).
NOT_JUDGED = "__not-judged__"


def _ranx_call(ranx_evaluate, qrels: dict, run: dict, metric_names: list[str]) -> dict:
    from numba.core.errors import NumbaTypeSafetyWarning

    with warnings.catch_warnings():
        # Raised while numba compiles ranx's precision kernel; harmless for these inputs.
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        return ranx_evaluate(qrels, run, metric_names, return_mean=False, threads=1)


@pytest.fixture(scope="module")
def ranx_evaluate():
    """ranx.evaluate, JIT-compiled once for the module by a warm-up call on every metric used here."""
    import ranx  # a dev dependency: a missing ranx must fail, not skip, the cross-checks

    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}}
    run = {"q1": {"b": 0.9, "x": 0.5}, "q2": {"c": 0.4}}
    _ranx_call(ranx.evaluate, qrels, run, [f"{name}@3" for name in RANX_NAMES.values()])
    return ranx.evaluate


def ranx_reference(
    ranx_evaluate, run: dict, qrels: dict, ks=KS, min_relevance: int = 1
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-query values and means computed by ranx, under this module's conventions.

    What is adapted, and why it is fair:
    - Queries: ranx requires the run and the qrels to have the same query ids and would score a judged query
      without relevant documents 0 and average it in. We pass ranx exactly the queries that have a document
      with relevance >= min_relevance (the ones our evaluate scores), adding those missing from the run.
    - Qrels: only positive grades are passed (0 means not relevant either way); grades below min_relevance
      stay, ranx drops them itself with its "-l<level>" suffix, as we do.
    - Duplicates: a ranx run is a dict, so chunks are collapsed here independently of to_document_ranking
      (first occurrence and its score kept). Test runs have strictly decreasing scores along the list, so
      ranx's sort by score reproduces the list order.
    - Empty result lists: ranx's dict converter cannot build an empty result array (numba type error), so an
      empty list is given one document that is judged nowhere. For k >= 1 no metric here can tell the two
      apart: none counts non-relevant documents, and precision@k divides by k, not by the list length.
    """
    query_ids = [q for q, rels in qrels.items() if any(g >= min_relevance for g in rels.values())]
    if not query_ids:
        return {}, {}
    ranx_qrels = {q: {d: g for d, g in qrels[q].items() if g > 0} for q in query_ids}
    ranx_run = {}
    for q in query_ids:
        docs: dict[str, float] = {}
        for doc_id, score in run.get(q, ()):
            docs.setdefault(doc_id, float(score))
        ranx_run[q] = docs or {NOT_JUDGED: 0.0}
    level = "" if min_relevance == 1 else f"-l{min_relevance}"
    names = {f"{m}@{k}": f"{RANX_NAMES[m]}@{k}{level}" for m in METRICS for k in ks}
    scores = _ranx_call(ranx_evaluate, ranx_qrels, ranx_run, list(names.values()))
    # With dicts, ranx returns one value per query in the dicts' (shared) insertion order.
    per_query = {q: {ours: float(scores[theirs][i]) for ours, theirs in names.items()} for i, q in enumerate(query_ids)}
    aggregate = {ours: float(np.mean(scores[theirs])) for ours, theirs in names.items()}
    return per_query, aggregate


def assert_matches_ranx(ranx_evaluate, run: dict, qrels: dict, ks=KS, min_relevance: int = 1) -> EvalResult:
    result = evaluate(run, qrels, ks=ks, min_relevance=min_relevance)
    expected_per_query, expected_aggregate = ranx_reference(ranx_evaluate, run, qrels, ks, min_relevance)
    assert result.per_query.keys() == expected_per_query.keys()
    for query_id, expected in expected_per_query.items():
        got = result.per_query[query_id]
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=TOLERANCE, rel=0), (query_id, key)
    if expected_aggregate:
        for key, value in expected_aggregate.items():
            assert result.aggregate[key] == pytest.approx(value, abs=TOLERANCE, rel=0), key
    else:
        assert all(math.isnan(v) for v in result.aggregate.values())
    judged = {q for q, rels in qrels.items() if any(g >= min_relevance for g in rels.values())}
    assert set(result.skipped_queries) == (set(qrels) | set(run)) - judged
    return result


def random_world(rng: np.random.Generator, num_queries: int) -> tuple[dict, dict]:
    """Runs and graded qrels 0-2 with the awkward cases mixed in.

    Some queries are unjudged, some judged with only zeros, some judged but missing from the run or with an
    empty list; lists run from 0 to 25 chunks (often fewer than k) with repeated documents; scores strictly
    decrease along each list.
    """
    run: dict[str, list[tuple[str, float]]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for i in range(num_queries):
        query_id = f"q{i:04d}"
        pool = [f"doc-{j}" for j in range(int(rng.integers(3, 30)))]
        shape = rng.random()
        if shape > 0.1:  # judged (possibly with only zeros)
            judged = rng.choice(pool, size=int(rng.integers(1, len(pool) + 1)), replace=False)
            qrels[query_id] = {
                str(d): int(g) for d, g in zip(judged, rng.integers(0, 3, size=len(judged)), strict=True)
            }
        if shape < 0.9 or rng.random() < 0.5:  # in the run (possibly with an empty list)
            length = int(rng.integers(0, 26))
            doc_ids = rng.choice(pool, size=length, replace=True)
            scores = np.arange(length, 0, -1) + rng.random(length) * 0.5
            run[query_id] = [(str(d), float(s)) for d, s in zip(doc_ids, scores, strict=True)]
    return run, qrels


@pytest.mark.parametrize("min_relevance", [1, 2])
def test_every_metric_agrees_with_ranx_on_random_runs(ranx_evaluate, min_relevance):
    run, qrels = random_world(np.random.default_rng(20240917 + min_relevance), num_queries=600)
    result = assert_matches_ranx(ranx_evaluate, run, qrels, min_relevance=min_relevance)
    # The world really holds the awkward cases.
    assert result.num_skipped > 0
    assert any(q not in run or not run[q] for q in result.per_query)
    assert any(len(to_document_ranking(run[q])) < len(run[q]) for q in result.per_query if q in run)


def test_cutoffs_beyond_the_defaults_agree_with_ranx(ranx_evaluate):
    run, qrels = random_world(np.random.default_rng(7), num_queries=200)
    assert_matches_ranx(ranx_evaluate, run, qrels, ks=(2, 7, 20, 50))


@st.composite
def runs_and_qrels(draw) -> tuple[dict, dict]:
    documents = [f"d{i}" for i in range(10)]
    run, qrels = {}, {}
    for i in range(draw(st.integers(1, 8))):
        query_id = f"q{i}"
        if draw(st.booleans()):
            qrels[query_id] = draw(st.dictionaries(st.sampled_from(documents), st.integers(0, 2), max_size=8))
        if draw(st.booleans()):
            doc_ids = draw(st.lists(st.sampled_from(documents), max_size=14))
            run[query_id] = [(d, float(len(doc_ids) - rank)) for rank, d in enumerate(doc_ids)]
    return run, qrels


@settings(max_examples=50, deadline=None)
@given(world=runs_and_qrels())
def test_every_metric_agrees_with_ranx_property(ranx_evaluate, world):
    run, qrels = world
    assert_matches_ranx(ranx_evaluate, run, qrels)


# Hand-computed edge cases ---------------------------------------------------------------------------------


def test_every_metric_on_a_hand_computed_query():
    # Ranks: 1 b (rel 1), 2 x, 3 a (rel 2), 4 y; c (rel 1) never retrieved. R = 3.
    run = {"q": [("b", 0.9), ("x", 0.8), ("a", 0.7), ("y", 0.6)]}
    qrels = {"q": {"a": 2, "b": 1, "c": 1, "z": 0}}
    got = evaluate(run, qrels, ks=(1, 3)).per_query["q"]
    dcg3 = 1 / math.log2(2) + 2 / math.log2(4)
    idcg3 = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    expected = {
        "precision@1": 1.0,
        "precision@3": 2 / 3,
        "recall@1": 1 / 3,
        "recall@3": 2 / 3,
        "hit_rate@1": 1.0,
        "hit_rate@3": 1.0,
        "mrr@1": 1.0,
        "mrr@3": 1.0,
        "ndcg@1": 1 / 2,  # gain 1 against the ideal first gain 2
        "ndcg@3": dcg3 / idcg3,
        "map@1": 1 / 3,
        "map@3": (1 / 1 + 2 / 3) / 3,
    }
    assert got == pytest.approx(expected, abs=1e-12)


def test_fewer_results_than_k_divides_precision_by_k():
    run = {"q": [("a", 0.9), ("x", 0.5)]}
    qrels = {"q": {"a": 1}}
    got = evaluate(run, qrels, ks=(5,)).per_query["q"]
    assert got["precision@5"] == pytest.approx(1 / 5)
    assert got["recall@5"] == 1.0
    assert got["ndcg@5"] == 1.0
    assert got["map@5"] == 1.0
    assert precision_at_k(["a", "x"], {"a": 1}, 5) == pytest.approx(1 / 5)


def test_k_larger_than_the_list_scores_like_the_full_list_except_precision():
    run = {"q": [("x", 0.9), ("a", 0.8), ("b", 0.7)]}
    qrels = {"q": {"a": 1, "b": 2, "c": 1}}
    got = evaluate(run, qrels, ks=(3, 10, 1000)).per_query["q"]
    for metric in ("recall", "hit_rate", "mrr", "map"):
        assert got[f"{metric}@10"] == got[f"{metric}@3"] == got[f"{metric}@1000"], metric
    assert got["precision@3"] == pytest.approx(2 / 3)
    assert got["precision@10"] == pytest.approx(2 / 10)
    assert got["precision@1000"] == pytest.approx(2 / 1000)
    # The ideal ranking also ends at R = 3 documents, so nDCG stops changing past rank 3 too.
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    assert got["ndcg@3"] == pytest.approx(dcg / (2 + 1 / math.log2(3) + 1 / math.log2(4)))
    assert got["ndcg@10"] == got["ndcg@3"]


def test_chunks_of_one_document_count_once_at_their_best_rank():
    chunks = [("a", 0.95), ("a", 0.9), ("x", 0.8), ("a", 0.7), ("b", 0.6)]
    assert to_document_ranking(chunks) == [("a", 0.95), ("x", 0.8), ("b", 0.6)]
    qrels = {"q": {"a": 1, "b": 1}}
    got = evaluate({"q": chunks}, qrels, ks=(3,)).per_query["q"]
    # Document ranking a, x, b: two relevant documents in the top 3, not "a" three times.
    assert got["precision@3"] == pytest.approx(2 / 3)
    assert got["recall@3"] == 1.0
    assert got["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert got["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert precision_at_k(["a", "a", "x", "b"], qrels["q"], 3) == pytest.approx(2 / 3)


def test_to_document_ranking_keeps_first_occurrence_in_order():
    assert to_document_ranking([]) == []
    assert to_document_ranking([("b", 1.0), ("a", 3.0), ("b", 5.0), ("c", 0.0), ("a", 2.0)]) == [
        ("b", 1.0),
        ("a", 3.0),
        ("c", 0.0),
    ]


def test_query_without_relevant_documents_is_skipped_from_the_mean_and_reported():
    run = {
        "judged": [("a", 0.9)],
        "only_zero_grades": [("z", 0.9)],
        "unjudged": [("a", 0.9)],
    }
    qrels = {"judged": {"a": 1}, "only_zero_grades": {"z": 0}, "no_judgments": {}}
    result = evaluate(run, qrels, ks=(1,))
    assert result.skipped_queries == ["no_judgments", "only_zero_grades", "unjudged"]
    assert result.num_skipped == 3
    assert list(result.per_query) == ["judged"]
    assert result.num_evaluated == 1
    assert all(value == 1.0 for value in result.aggregate.values())
    # Per query, the 0/0 metrics are undefined and the others are 0.
    for function in (recall_at_k, ndcg_at_k, map_at_k):
        assert math.isnan(function(["z"], {"z": 0}, 1))
    for function in (precision_at_k, hit_rate_at_k, mrr_at_k):
        assert function(["z"], {"z": 0}, 1) == 0.0


def test_query_missing_from_the_run_scores_zero_and_counts_in_the_mean():
    run = {"found": [("a", 0.9)], "empty": []}
    qrels = {"found": {"a": 1}, "missing": {"b": 2}, "empty": {"c": 1}}
    result = evaluate(run, qrels, ks=(1, 10))
    assert set(result.per_query) == {"found", "missing", "empty"}
    assert result.skipped_queries == []
    for query_id in ("missing", "empty"):
        assert set(result.per_query[query_id].values()) == {0.0}
    assert result.aggregate["recall@10"] == pytest.approx(1 / 3)
    assert result.aggregate["precision@1"] == pytest.approx(1 / 3)


def test_graded_relevance_changes_ndcg_but_not_precision():
    run = {"q": [("a", 0.9), ("b", 0.8)]}
    flat = evaluate(run, {"q": {"a": 1, "b": 1}}, ks=(2,)).per_query["q"]
    graded = evaluate(run, {"q": {"a": 1, "b": 2}}, ks=(2,)).per_query["q"]
    for metric in ("precision", "recall", "hit_rate", "mrr", "map"):
        assert flat[f"{metric}@2"] == graded[f"{metric}@2"], metric
    assert flat["ndcg@2"] == pytest.approx(1.0)
    # Grade-2 document at rank 2 instead of 1: (1 + 2/log2 3) / (2 + 1/log2 3).
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert graded["ndcg@2"] == pytest.approx(expected)
    assert graded["ndcg@2"] < 1.0


def test_min_relevance_raises_the_bar_for_every_metric():
    run = {"q": [("a", 0.9), ("b", 0.8)]}
    qrels = {"q": {"a": 1, "b": 2}}
    got = evaluate(run, qrels, ks=(1, 2), min_relevance=2).per_query["q"]
    assert got["precision@1"] == 0.0
    assert got["mrr@2"] == pytest.approx(1 / 2)
    assert got["recall@2"] == 1.0
    assert got["ndcg@2"] == pytest.approx((2 / math.log2(3)) / 2)  # a's grade 1 is below the bar: no gain
    assert evaluate(run, {"q": {"a": 1}}, min_relevance=2).skipped_queries == ["q"]


def test_list_order_is_the_ranking_whatever_the_scores():
    qrels = {"q": {"b": 1}}
    tied = evaluate({"q": [("a", 0.5), ("b", 0.5)]}, qrels, ks=(1, 2)).per_query["q"]
    rising = evaluate({"q": [("a", 0.1), ("b", 0.9)]}, qrels, ks=(1, 2)).per_query["q"]
    assert tied == rising
    assert tied["mrr@2"] == pytest.approx(1 / 2)
    assert tied["hit_rate@1"] == 0.0


def test_no_query_with_relevant_documents_gives_nan_means():
    result = evaluate({"q": [("a", 1.0)]}, {"q": {"a": 0}}, metrics=("precision", "ndcg"), ks=(3,))
    assert result.per_query == {}
    assert result.skipped_queries == ["q"]
    assert set(result.aggregate) == {"precision@3", "ndcg@3"}
    assert all(math.isnan(value) for value in result.aggregate.values())


def test_result_keys_follow_metrics_and_cutoffs():
    result = evaluate({"q": [("a", 1.0)]}, {"q": {"a": 1}})
    expected = [f"{metric}@{k}" for metric in METRICS for k in DEFAULT_KS]
    assert list(result.per_query["q"]) == expected
    assert list(result.aggregate) == expected
    result = evaluate({"q": [("a", 1.0)]}, {"q": {"a": 1}}, metrics=["mrr"], ks=[10, 1, 10])
    assert list(result.aggregate) == ["mrr@1", "mrr@10"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ks": (0,)}, "positive integer"),
        ({"ks": (3.0,)}, "positive integer"),
        ({"ks": ()}, "at least one cutoff"),
        ({"metrics": ("ndcg", "bleu")}, "unknown metric"),
        ({"metrics": ()}, "at least one metric"),
        ({"min_relevance": 0}, "min_relevance"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate({"q": [("a", 1.0)]}, {"q": {"a": 1}}, **kwargs)


def test_ten_thousand_queries_of_a_hundred_results_evaluate_quickly():
    rng = np.random.default_rng(3)
    doc_ids = rng.integers(0, 300, size=(10_000, 100))
    judged = rng.integers(0, 300, size=(10_000, 5))
    grades = rng.integers(0, 3, size=(10_000, 5))
    run = {f"q{i}": [(f"d{d}", 100.0 - r) for r, d in enumerate(row)] for i, row in enumerate(doc_ids.tolist())}
    qrels = {
        f"q{i}": {f"d{d}": g for d, g in zip(docs, gs, strict=True)}
        for i, (docs, gs) in enumerate(zip(judged.tolist(), grades.tolist(), strict=True))
    }
    start = time.perf_counter()
    result = evaluate(run, qrels)
    elapsed = time.perf_counter() - start
    assert result.num_evaluated + result.num_skipped == 10_000
    # About 0.4 s on the 2-core dev machine; the bound leaves room for a loaded CI box.
    assert elapsed < 3.0, f"evaluate took {elapsed:.2f} s"
