"""Ranking metrics for retrieval evaluation: precision, recall, hit rate, MRR, nDCG and MAP at cutoff k.

Inputs
------
- A **run** maps a query id to the ranked list retrieval returned for it, best first:
  ``dict[str, list[tuple[str, float]]]`` of ``(doc_id, score)``. Retrieval returns chunks, so one document
  may appear several times.
- **Qrels** map a query id to graded judgments: ``dict[str, dict[str, int]]`` of ``doc_id -> relevance``.
  A document is *relevant* when its relevance is ``>= min_relevance`` (default 1); relevance 0, any grade
  below the threshold, and documents absent from the qrels are not relevant.

Conventions
-----------
- **Document level.** Every metric is computed on the document ranking: the chunk list collapsed by
  :func:`to_document_ranking`, which keeps each document's first (best) occurrence in list order. A document
  retrieved as three chunks counts once, at the rank of its best chunk.
- **List order is the ranking.** Scores are never read: ties and non-monotonic scores keep the order given,
  because retrieval has already ranked. ranx and trec_eval instead re-sort each query's results by score
  (trec_eval breaks ties by document id, ranx's sort is unstable), so they agree with this module only when
  scores strictly decrease along the collapsed list.
- **Cutoff k** is any positive integer. A list shorter than k is scored as if padded with non-relevant
  documents: precision@k still divides by k (the trec_eval ``P_k`` convention); the other metrics simply
  see no further relevant documents.
- **Per-query definitions** (R = number of relevant documents for the query, rel_i = relevance of the
  document at rank i, hits@k = relevant documents among the top k):

  - ``precision@k`` = hits@k / k
  - ``recall@k`` = hits@k / R
  - ``hit_rate@k`` = 1 if hits@k > 0 else 0 (trec_eval ``success_k``, ranx ``hit_rate``)
  - ``mrr@k`` = 1 / rank of the first relevant document if that rank is <= k, else 0
  - ``ndcg@k`` = DCG@k / IDCG@k with DCG@k = sum over i <= k of gain_i / log2(i + 1), gain_i = rel_i for a
    relevant document and 0 otherwise (linear gain: trec_eval ``ndcg_cut``, ranx ``ndcg``; not the
    exponential 2^rel - 1 of ranx ``ndcg_burges``). IDCG@k is the DCG@k of the relevant judgments sorted by
    relevance, descending.
  - ``map@k`` = (sum of precision@i over the ranks i <= k holding a relevant document) / R, i.e. divided by
    all relevant documents, not min(R, k) (trec_eval ``map_cut``, ranx ``map@k``).

- **Queries with no relevant document** (R = 0: judged with only non-relevant grades, or present in the run
  but absent from the qrels) make recall, nDCG and MAP 0/0. The per-query functions return NaN for those
  three (precision, hit rate and MRR are 0). :func:`evaluate` leaves such queries out of ``per_query`` and
  out of the mean and lists them in ``EvalResult.skipped_queries``. trec_eval likewise skips queries absent
  from the qrels. ranx scores a judged query without relevant documents 0 and averages it in; this module
  does not, so its means equal ranx's on the queries with at least one relevant document.
- **Queries in the qrels but missing from the run** (or with an empty result list) that have a relevant
  document are evaluated as an empty ranking: every metric is 0 and counts in the mean (trec_eval ``-c``,
  ranx ``make_comparable``). trec_eval without ``-c`` would skip them instead.
- **Aggregate** = arithmetic mean over the evaluated queries (those in ``per_query``); NaN for every metric
  when no query has a relevant document.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Run = Mapping[str, Sequence[tuple[str, float]]]
Qrels = Mapping[str, Mapping[str, int]]

METRICS: tuple[str, ...] = ("precision", "recall", "hit_rate", "mrr", "ndcg", "map")
DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)
# Metrics whose per-query value divides by the number of relevant documents (or by IDCG, zero with it).
UNDEFINED_WITHOUT_RELEVANT: frozenset[str] = frozenset({"recall", "ndcg", "map"})


@dataclass
class EvalResult:
    """The result of :func:`evaluate`.

    ``per_query`` maps each evaluated query (one with at least one relevant document) to its metric values,
    keyed ``"<metric>@<k>"`` (e.g. ``"ndcg@10"``). ``aggregate`` holds the mean of each key over
    ``per_query``. ``skipped_queries`` lists, sorted, the queries of the run or the qrels that had no relevant
    document and so were not evaluated.
    """

    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    aggregate: dict[str, float] = field(default_factory=dict)
    skipped_queries: list[str] = field(default_factory=list)

    @property
    def num_evaluated(self) -> int:
        """How many queries the aggregate averages over."""
        return len(self.per_query)

    @property
    def num_skipped(self) -> int:
        """How many queries were left out for having no relevant document."""
        return len(self.skipped_queries)


def to_document_ranking(chunks: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Collapse a chunk ranking to a document ranking.

    Keeps each document's first occurrence (its best-ranked chunk, with that chunk's score) and drops later
    ones, preserving list order: ``[(a, .9), (b, .8), (a, .7)] -> [(a, .9), (b, .8)]``.
    """
    seen: set[str] = set()
    ranking: list[tuple[str, float]] = []
    for doc_id, score in chunks:
        if doc_id not in seen:
            seen.add(doc_id)
            ranking.append((doc_id, score))
    return ranking


def _top_documents(chunks: Iterable[tuple[str, float]], limit: int) -> list[str]:
    """The ids of the first ``limit`` distinct documents of a chunk ranking (``to_document_ranking``, cut)."""
    seen: set[str] = set()
    doc_ids: list[str] = []
    for doc_id, _score in chunks:
        if doc_id not in seen:
            seen.add(doc_id)
            doc_ids.append(doc_id)
            if len(doc_ids) == limit:
                break
    return doc_ids


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    checked = sorted(set(ks))
    if not checked:
        raise ValueError("ks must name at least one cutoff")
    for k in checked:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"cutoff k must be a positive integer, got {k!r}")
    return tuple(checked)


def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    checked = tuple(dict.fromkeys(metrics))
    if not checked:
        raise ValueError("metrics must name at least one metric")
    unknown = [m for m in checked if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")
    return checked


def _check_min_relevance(min_relevance: int) -> None:
    if isinstance(min_relevance, bool) or not isinstance(min_relevance, int) or min_relevance < 1:
        raise ValueError(f"min_relevance must be an integer >= 1 (0 means not relevant), got {min_relevance!r}")


def _log2_discounts(max_k: int) -> list[float]:
    """``log2(rank + 1)`` for ranks 1..max_k (index rank - 1)."""
    return [math.log2(rank + 1) for rank in range(1, max_k + 1)]


def _score_query(
    doc_ids: Sequence[str],
    relevance: Mapping[str, int],
    ideal_gains: Sequence[int],
    ks: Sequence[int],
    metrics: Sequence[str],
    min_relevance: int,
    discounts: Sequence[float],
) -> dict[str, float]:
    """Metric values of one query with at least one relevant document.

    ``doc_ids`` is the duplicate-free document ranking, already cut to ``max(ks)``; ``ideal_gains`` the
    relevances of the relevant documents, sorted descending (its length is R > 0); ``ks`` sorted ascending.
    """
    num_relevant = len(ideal_gains)
    max_k = ks[-1]
    ideal_dcg = [0.0]  # ideal_dcg[n] = IDCG over the first n ideal ranks
    for rank, gain in enumerate(ideal_gains[:max_k]):
        ideal_dcg.append(ideal_dcg[-1] + gain / discounts[rank])

    values: dict[str, float] = {}
    hits = 0
    dcg = 0.0
    precision_sum = 0.0
    first_hit = 0

    def record(k: int) -> None:
        for metric in metrics:
            if metric == "precision":
                value = hits / k
            elif metric == "recall":
                value = hits / num_relevant
            elif metric == "hit_rate":
                value = 1.0 if hits else 0.0
            elif metric == "mrr":
                value = 1.0 / first_hit if first_hit else 0.0
            elif metric == "ndcg":
                value = dcg / ideal_dcg[min(k, num_relevant)]
            else:  # map
                value = precision_sum / num_relevant
            values[f"{metric}@{k}"] = value

    k_index = 0
    for rank, doc_id in enumerate(doc_ids, start=1):
        gain = relevance.get(doc_id, 0)
        if gain >= min_relevance:
            hits += 1
            dcg += gain / discounts[rank - 1]
            precision_sum += hits / rank
            if not first_hit:
                first_hit = rank
        if ks[k_index] == rank:
            record(rank)
            k_index += 1
    # Cutoffs beyond the end of the list: nothing more is relevant (precision still divides by k).
    for k in ks[k_index:]:
        record(k)
    return values


def _ideal_gains(relevance: Mapping[str, int], min_relevance: int) -> list[int]:
    return sorted((gain for gain in relevance.values() if gain >= min_relevance), reverse=True)


def _single(metric: str, ranking: Sequence[str], relevance: Mapping[str, int], k: int, min_relevance: int) -> float:
    (k,) = _check_ks((k,))
    _check_min_relevance(min_relevance)
    ideal = _ideal_gains(relevance, min_relevance)
    if not ideal:
        return math.nan if metric in UNDEFINED_WITHOUT_RELEVANT else 0.0
    doc_ids = _top_documents(((doc_id, 0.0) for doc_id in ranking), k)
    values = _score_query(doc_ids, relevance, ideal, (k,), (metric,), min_relevance, _log2_discounts(k))
    return values[f"{metric}@{k}"]


def precision_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int, min_relevance: int = 1) -> float:
    """Relevant documents among the top k, divided by k (even when fewer than k are ranked).

    ``ranking`` is document ids best first (repeats count once, at their first rank); ``relevance`` is the
    query's judgments ``doc_id -> grade``. 0 when the query has no relevant document.
    """
    return _single("precision", ranking, relevance, k, min_relevance)


def recall_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int, min_relevance: int = 1) -> float:
    """Relevant documents among the top k, divided by the number of relevant documents; NaN if there are none."""
    return _single("recall", ranking, relevance, k, min_relevance)


def hit_rate_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int, min_relevance: int = 1) -> float:
    """1.0 if any of the top k documents is relevant, else 0.0."""
    return _single("hit_rate", ranking, relevance, k, min_relevance)


def mrr_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int, min_relevance: int = 1) -> float:
    """1 / rank of the first relevant document if it is within the top k, else 0.0 (reciprocal rank at k)."""
    return _single("mrr", ranking, relevance, k, min_relevance)


def ndcg_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int, min_relevance: int = 1) -> float:
    """DCG@k / IDCG@k with linear gain (the relevance grade of a relevant document) and discount log2(rank + 1).

    IDCG@k is the DCG@k of the relevant grades sorted descending (trec_eval ``ndcg_cut``). NaN if the query
    has no relevant document.
    """
    return _single("ndcg", ranking, relevance, k, min_relevance)


def map_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int, min_relevance: int = 1) -> float:
    """Average precision cut at k: sum of precision@rank over relevant ranks <= k, over all relevant documents.

    The divisor is the total number of relevant documents, not min(R, k) (trec_eval ``map_cut``). NaN if the
    query has no relevant document.
    """
    return _single("map", ranking, relevance, k, min_relevance)


def evaluate(
    run: Run,
    qrels: Qrels,
    metrics: Iterable[str] = METRICS,
    ks: Iterable[int] = DEFAULT_KS,
    *,
    min_relevance: int = 1,
) -> EvalResult:
    """Score a run against qrels at document level; see the module docstring for every convention.

    Evaluates each query (of the qrels, then of the run) that has at least one document with relevance
    ``>= min_relevance``, scoring a missing or empty result list as an empty ranking. The others are listed in
    ``skipped_queries``. Returns per-query values keyed ``"<metric>@<k>"`` and their means over the evaluated
    queries (NaN when there are none).
    """
    metric_names = _check_metrics(metrics)
    cutoffs = _check_ks(ks)
    _check_min_relevance(min_relevance)
    max_k = cutoffs[-1]
    discounts = _log2_discounts(max_k)
    keys = [f"{metric}@{k}" for metric in metric_names for k in cutoffs]

    per_query: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    for query_id in dict.fromkeys([*qrels, *run]):
        relevance = qrels.get(query_id, {})
        ideal = _ideal_gains(relevance, min_relevance)
        if not ideal:
            skipped.append(query_id)
            continue
        doc_ids = _top_documents(run.get(query_id, ()), max_k)
        values = _score_query(doc_ids, relevance, ideal, cutoffs, metric_names, min_relevance, discounts)
        per_query[query_id] = {key: values[key] for key in keys}

    if per_query:
        count = len(per_query)
        aggregate = {key: math.fsum(values[key] for values in per_query.values()) / count for key in keys}
    else:
        aggregate = dict.fromkeys(keys, math.nan)
    return EvalResult(per_query=per_query, aggregate=aggregate, skipped_queries=sorted(skipped))
