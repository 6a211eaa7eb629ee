"""Read the ops marts (models/marts/ops) into plain rows, read-only: for the findings and the dashboard.

Every query is bounded (latest state, or the last HISTORY_RUNS runs), so the page stays
small however long the history or large the corpus: per-chunk lag is binned in DuckDB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from python_jobs.common.errors import PipelineError
from python_jobs.common.warehouse import connect

MARTS = "observability"
HISTORY_RUNS = 200  # runs per chart
LAG_BINS = 24
SERVING_DAYS = 7  # the serving section's window: hourly latency and requests, daily feedback
TOP_QUESTIONS = 15
FRESHNESS_HOURS = 48  # hour-and-runner rows of edit-to-searchable shown


@dataclass
class OpsMarts:
    """What the ops marts say now, bounded: the rows the findings and the dashboard's charts read."""

    failing_nodes: list[dict[str, Any]] = field(default_factory=list)
    warning_nodes: list[dict[str, Any]] = field(default_factory=list)
    status_counts: list[dict[str, Any]] = field(default_factory=list)
    freshness_latest: list[dict[str, Any]] = field(default_factory=list)
    freshness_history: list[dict[str, Any]] = field(default_factory=list)
    index_freshness: dict[str, Any] = field(default_factory=dict)
    index_lag_bins: list[dict[str, Any]] = field(default_factory=list)
    freshness_backlog: dict[str, Any] = field(default_factory=dict)  # ops_freshness_backlog: changes not searchable
    freshness_hours: list[dict[str, Any]] = field(default_factory=list)  # ops_freshness: edit to searchable per hour
    eval_latest: list[dict[str, Any]] = field(default_factory=list)
    eval_trend: list[dict[str, Any]] = field(default_factory=list)
    eval_problems: list[dict[str, Any]] = field(default_factory=list)
    builds: list[dict[str, Any]] = field(default_factory=list)
    tests_attention: list[dict[str, Any]] = field(default_factory=list)
    churn: list[dict[str, Any]] = field(default_factory=list)
    volume_latest: list[dict[str, Any]] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)
    weekly_costs: list[dict[str, Any]] = field(default_factory=list)
    serving_hours: list[dict[str, Any]] = field(default_factory=list)
    serving_totals: dict[str, Any] = field(default_factory=dict)
    unanswered_questions: list[dict[str, Any]] = field(default_factory=list)
    feedback_daily: list[dict[str, Any]] = field(default_factory=list)


QUERIES = {
    "failing_nodes": f"""
        select * from {MARTS}.ops_node_status where is_failure
        order by owner_name nulls last, resource_type, node_name""",
    "warning_nodes": f"""
        select * from {MARTS}.ops_node_status where is_warning
        order by owner_name nulls last, resource_type, node_name""",
    "status_counts": f"""
        select resource_type, status, status_rank, count(*) as nodes
        from {MARTS}.ops_node_status group by all order by status_rank, resource_type, status""",
    "freshness_latest": f"""
        select * from {MARTS}.ops_source_freshness where is_latest
        order by coalesce(error_sla_used, 0) desc, source_table""",
    "freshness_history": f"""
        select source_table, checked_at, lag_hours, status from {MARTS}.ops_source_freshness
        qualify row_number() over (partition by source_table order by checked_at desc) <= {HISTORY_RUNS}
        order by checked_at""",
    "index_lag_bins": f"""
        with lag as (
            select source_to_index_hours as hours from {MARTS}.ops_index_chunks
            where source_to_index_hours is not null
        ),
        bounds as (select min(hours) as low, greatest(max(hours) - min(hours), 1e-9) as span from lag)
        select
            least(floor((hours - low) / span * {LAG_BINS}), {LAG_BINS - 1}) as bin,
            min(hours) as from_hours, max(hours) as to_hours, count(*) as chunks
        from lag, bounds group by bin order by bin""",
    "freshness_hours": f"""
        select * from (
            select * from {MARTS}.ops_freshness order by published_hour desc, runner limit {FRESHNESS_HOURS})
        order by published_hour, runner""",
    "eval_latest": f"""
        select * from {MARTS}.ops_eval_trend where is_latest
        order by dataset, mode, metric, k""",
    "eval_trend": f"""
        select * from {MARTS}.ops_eval_trend
        where eval_run_id in (
            select eval_run_id from {MARTS}.ops_eval_trend group by eval_run_id
            order by max(started_at) desc limit {HISTORY_RUNS})
        order by started_at""",
    "eval_problems": f"""
        select * from {MARTS}.ops_eval_trend where is_latest and (is_regression or is_below_gate)
        order by is_below_gate desc, dataset, mode, metric_key""",
    "builds": f"""
        select * from (select * from {MARTS}.ops_build_history order by started_at desc limit {HISTORY_RUNS})
        order by started_at""",
    "tests_attention": f"""
        select * from {MARTS}.ops_test_history where last_status <> 'pass' or is_flaky or fail_rate > 0
        order by (last_status in ('fail', 'error')) desc, is_flaky desc, fail_rate desc, test_name
        limit 50""",
    "churn": f"""
        select * from (select * from {MARTS}.ops_chunk_churn order by started_at desc limit {HISTORY_RUNS})
        order by started_at""",
    "volume_latest": f"""
        select * from {MARTS}.ops_model_volume
        qualify row_number() over (partition by model_name order by recorded_at desc) = 1
        order by abs(coalesce(row_change_pct, 0)) desc, model_name""",
    "costs": f"""
        select * from (select * from {MARTS}.ops_embedding_cost order by started_at desc limit {HISTORY_RUNS})
        order by started_at""",
    "weekly_costs": f"select * from {MARTS}.ops_embedding_cost_weekly order by cost_week",
    "serving_hours": f"""
        select * from {MARTS}.ops_query_latency
        where request_hour >= now() - interval {SERVING_DAYS} days
        order by request_hour, search_mode""",
    # the questions asked most often that no one has labelled a result of relevant: retrieval's blind spots
    "unanswered_questions": f"""
        select
            question_key,
            arg_max(query_text, logged_at) as question,
            count(*) as times_asked,
            count(distinct caller_name) as callers,
            sum(not_relevant_labels) as not_relevant_labels,
            sum(clicks) as clicks,
            avg(results_returned) as mean_results,
            max(logged_at) as last_asked_at
        from {MARTS}.ops_queries
        where outcome = 'ok' and logged_at >= now() - interval {SERVING_DAYS} days
        group by question_key
        having sum(relevant_labels) = 0
        order by times_asked desc, last_asked_at desc
        limit {TOP_QUESTIONS}""",
    "feedback_daily": f"""
        select feedback_day, feedback_label, count(*) as feedback
        from {MARTS}.ops_feedback
        where given_at >= now() - interval {SERVING_DAYS} days
        group by all order by feedback_day, feedback_label""",
}
# One row: the serving section's tiles, over the same window.
SERVING_TOTALS = f"""
    with queries as (
        select * from {MARTS}.ops_queries where logged_at >= now() - interval {SERVING_DAYS} days
    )
    select
        count(*) as requests,
        count(*) filter (where outcome = 'refused') as refused_requests,
        count(*) filter (where outcome = 'error') as error_requests,
        count(*) filter (where outcome = 'error') / nullif(count(*), 0) as error_rate,
        count(distinct caller_name) as callers,
        quantile_cont(total_ms, 0.95) filter (where outcome = 'ok') as latency_p95_ms,
        sum(feedback_given) as feedback,
        (select count(*) from {MARTS}.eval_feedback_candidates where proposed_relevance > 0) as candidates,
        (select count(*) from {MARTS}.ops_api_keys where is_active) as active_keys
    from queries"""


def load(warehouse: Path) -> OpsMarts:
    data = OpsMarts()
    with connect(warehouse, read_only=True) as con:
        for name, sql in QUERIES.items():
            setattr(data, name, _rows(con, sql))
        index = _rows(con, f"select * from {MARTS}.ops_index_freshness")
        data.index_freshness = index[0] if index else {}
        backlog = _rows(con, f"select * from {MARTS}.ops_freshness_backlog")
        data.freshness_backlog = backlog[0] if backlog else {}
        data.serving_totals = _rows(con, SERVING_TOTALS)[0]
    return data


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    try:
        cursor = con.execute(sql)
    except duckdb.CatalogException as exc:
        raise PipelineError(
            f"the ops marts are not in the warehouse yet ({str(exc).splitlines()[0]}): run `make build` "
            "(or `make report`, which builds them)"
        ) from None
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
