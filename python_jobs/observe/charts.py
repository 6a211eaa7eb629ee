"""The dashboard's charts, as Plotly figures made from the rows of the ops marts (observe/marts.py).

Each function returns None when there is nothing to plot yet, so the page says so instead
of drawing an empty frame. Colours are fixed per meaning: red fails, amber warns.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from python_jobs.observe.marts import OpsMarts

FAIL, WARN, OK, MUTED = "#c0392b", "#d68910", "#1e8449", "#7f8c8d"
MODE_COLOURS = {"vector": "#2e86c1", "fts": "#8e44ad", "hybrid": "#16a085"}
TREND_METRICS = ("ndcg@10", "hit_rate@5", "mrr@10", "recall@10")
LAYOUT = dict(
    template="plotly_white",
    height=360,
    # the title at the very top, the legend between it and the plot: neither covers the other
    margin=dict(l=60, r=20, t=90, b=60),
    legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
    font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12),
)


def _titled(text: str) -> dict:
    return dict(text=text, x=0, xanchor="left", y=0.98, yanchor="top")


def all_charts(data: OpsMarts) -> dict[str, go.Figure | None]:
    """Chart id -> figure; the template places each by id."""
    return {
        "freshness-lag": source_lag(data),
        "freshness-history": source_lag_history(data),
        "index-lag": index_lag(data),
        "eval-trend": eval_trend(data),
        "test-pass-rate": test_pass_rate(data),
        "chunk-churn": chunk_churn(data),
        "cost-per-run": cost_per_run(data),
        "weekly-budget": weekly_budget(data),
        "serving-latency": serving_latency(data),
        "serving-requests": serving_requests(data),
        "feedback-volume": feedback_volume(data),
    }


def source_lag(data: OpsMarts) -> go.Figure | None:
    rows = data.freshness_latest
    if not rows:
        return None
    names = [r["source_table"] for r in rows]
    colours = [FAIL if r["is_failure"] else WARN if r["is_warning"] else OK for r in rows]
    fig = go.Figure(go.Bar(x=names, y=[r["lag_hours"] for r in rows], marker_color=colours, name="hours since load"))
    for key, colour, label in (("warn_after_hours", WARN, "warn after"), ("error_after_hours", FAIL, "error after")):
        fig.add_trace(
            go.Scatter(
                x=names,
                y=[r[key] for r in rows],
                mode="markers",
                marker=dict(symbol="line-ew-open", size=40, line=dict(width=3, color=colour)),
                name=label,
            )
        )
    fig.update_layout(title=_titled("Source lag against its SLA"), yaxis_title="hours", **LAYOUT)
    return fig


def source_lag_history(data: OpsMarts) -> go.Figure | None:
    by_source = _group(data.freshness_history, "source_table")
    if not by_source:
        return None
    fig = go.Figure()
    for source, rows in by_source.items():
        fig.add_trace(
            go.Scatter(
                x=[r["checked_at"] for r in rows], y=[r["lag_hours"] for r in rows], mode="lines+markers", name=source
            )
        )
    fig.update_layout(title=_titled("Source lag at each freshness check"), yaxis_title="hours", **LAYOUT)
    return fig


def index_lag(data: OpsMarts) -> go.Figure | None:
    bins = data.index_lag_bins
    if not bins:
        return None
    # documents edited long before they were indexed put the lag in days
    unit, per = ("d", 24.0) if bins[-1]["to_hours"] > 72 else ("h", 1.0)
    labels = [f"{b['from_hours'] / per:.1f}–{b['to_hours'] / per:.1f} {unit}" for b in bins]
    fig = go.Figure(go.Bar(x=labels, y=[b["chunks"] for b in bins], marker_color="#2e86c1", name="chunks"))
    summary = data.index_freshness
    title = "Index lag: document updated_at to indexed_at"
    if summary.get("lag_p50_hours") is not None:
        title += f" (p50 {summary['lag_p50_hours'] / per:.1f} {unit}, p95 {summary['lag_p95_hours'] / per:.1f} {unit})"
    fig.update_layout(title=_titled(title), xaxis_title="lag", yaxis_title="current chunks", **LAYOUT)
    return fig


def eval_trend(data: OpsMarts) -> go.Figure | None:
    rows = [r for r in data.eval_trend if r["metric_key"] in TREND_METRICS]
    if not rows:
        return None
    fig = make_subplots(rows=2, cols=2, subplot_titles=TREND_METRICS, shared_xaxes=True, vertical_spacing=0.12)
    for position, metric in enumerate(TREND_METRICS):
        row, col = divmod(position, 2)
        for (dataset, mode), series in _group(rows, "dataset", "mode").items():
            series = [r for r in series if r["metric_key"] == metric]
            if not series:
                continue
            name = f"{mode} ({dataset})"
            fig.add_trace(
                go.Scatter(
                    x=[r["started_at"] for r in series],
                    y=[r["metric_value"] for r in series],
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=position == 0,
                    line=dict(color=MODE_COLOURS.get(mode)),
                    marker=dict(
                        color=[
                            FAIL if r["is_regression"] or r["is_below_gate"] else MODE_COLOURS.get(mode, OK)
                            for r in series
                        ],
                        size=[11 if r["is_regression"] or r["is_below_gate"] else 6 for r in series],
                        symbol=["x" if r["is_regression"] or r["is_below_gate"] else "circle" for r in series],
                    ),
                ),
                row=row + 1,
                col=col + 1,
            )
            floors = {r["gate_floor"] for r in series if r["gate_floor"] is not None}
            for floor in floors:
                fig.add_hline(
                    y=floor, line_dash="dash", line_color=MODE_COLOURS.get(mode, MUTED), row=row + 1, col=col + 1
                )
    fig.update_layout(
        title=_titled("Retrieval quality per eval run (x: regression or below its gate; dashes: gates)"), **LAYOUT
    )
    fig.update_layout(height=560)
    return fig


def test_pass_rate(data: OpsMarts) -> go.Figure | None:
    builds = [b for b in data.builds if b["tests_run"]]
    if not builds:
        return None
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=_run_labels(builds),
            y=[b["test_pass_rate"] for b in builds],
            mode="lines+markers",
            name="pass rate",
            marker=dict(
                color=[FAIL if b["tests_failed"] else WARN if b["tests_warned"] else OK for b in builds], size=8
            ),
            text=[f"{b['tests_passed']}/{b['tests_run']} passed, {b['tests_failed']} failed" for b in builds],
            hovertemplate="%{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=_titled("Test pass rate per dbt run"), yaxis=dict(range=[0, 1.05], tickformat=".0%"), **LAYOUT
    )
    fig.update_xaxes(type="category")
    return fig


def chunk_churn(data: OpsMarts) -> go.Figure | None:
    runs = data.churn
    if not runs:
        return None
    x = _run_labels(runs)
    fig = go.Figure()
    for key, colour in (
        ("chunks_new", OK),
        ("chunks_text_changed", "#2e86c1"),
        ("chunks_metadata_changed", "#85c1e9"),
        ("chunks_deleted", FAIL),
        ("chunks_pending", WARN),
    ):
        fig.add_trace(
            go.Bar(
                x=x, y=[r[key] for r in runs], name=key.removeprefix("chunks_").replace("_", " "), marker_color=colour
            )
        )
    fig.update_layout(title=_titled("Chunk churn per embedding run"), barmode="stack", yaxis_title="chunks", **LAYOUT)
    fig.update_xaxes(type="category")
    return fig


def cost_per_run(data: OpsMarts) -> go.Figure | None:
    runs = data.costs
    if not runs:
        return None
    x = _run_labels(runs)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Bar(x=x, y=[r["estimated_cost_usd"] for r in runs], name="estimated cost (USD)", marker_color="#2e86c1")
    )
    fig.add_trace(
        go.Scatter(
            x=x, y=[r["cache_hit_rate"] for r in runs], name="cache hit rate", mode="lines+markers", line=dict(color=OK)
        ),
        secondary_y=True,
    )
    fig.update_layout(title=_titled("Embedding cost and vector reuse per run"), **LAYOUT)
    fig.update_xaxes(type="category")
    fig.update_yaxes(title_text="USD", secondary_y=False)
    fig.update_yaxes(title_text="cache hit rate", range=[0, 1.05], tickformat=".0%", secondary_y=True)
    return fig


def weekly_budget(data: OpsMarts) -> go.Figure | None:
    weeks = data.weekly_costs
    if not weeks:
        return None
    x = [f"week of {w['cost_week']:%Y-%m-%d}" for w in weeks]
    fig = go.Figure(
        go.Bar(
            x=x,
            y=[w["estimated_cost_usd"] for w in weeks],
            name="spend",
            marker_color=[FAIL if w["is_over_budget"] else "#2e86c1" for w in weeks],
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x, y=[w["budget_usd"] for w in weeks], name="budget", mode="lines", line=dict(color=FAIL, dash="dash")
        )
    )
    fig.update_layout(title=_titled("Embedding spend per week against the budget"), yaxis_title="USD", **LAYOUT)
    return fig


def serving_latency(data: OpsMarts) -> go.Figure | None:
    """p50 and p95 latency of the successful requests, per hour and search mode (p99 on hover)."""
    rows = [r for r in data.serving_hours if r["latency_p50_ms"] is not None]
    if not rows:
        return None
    fig = go.Figure()
    for mode, series in _group(rows, "search_mode").items():
        colour = MODE_COLOURS.get(mode, MUTED)
        for key, dash in (("latency_p95_ms", "solid"), ("latency_p50_ms", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=[_hour(r["request_hour"]) for r in series],
                    y=[r[key] for r in series],
                    mode="lines+markers",
                    name=f"{mode} {key.split('_')[1]}",
                    line=dict(color=colour, dash=dash),
                    text=[f"p99 {r['latency_p99_ms']:.1f} ms, {r['ok_requests']} requests" for r in series],
                    hovertemplate="%{x}<br>%{y:.1f} ms<br>%{text}<extra></extra>",
                )
            )
    fig.update_layout(
        title=_titled("Service latency per hour and mode (solid p95, dotted p50)"), yaxis_title="ms", **LAYOUT
    )
    fig.update_xaxes(type="category", categoryorder="category ascending")
    return fig


def serving_requests(data: OpsMarts) -> go.Figure | None:
    """Requests per hour by outcome, and the share that failed with a 5xx."""
    hours: dict[Any, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in data.serving_hours:
        for key in ("ok_requests", "refused_requests", "error_requests", "requests"):
            hours[row["request_hour"]][key] += row[key]
    if not hours:
        return None
    ordered = sorted(hours)
    x = [_hour(h) for h in ordered]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for key, colour, label in (
        ("ok_requests", OK, "ok"),
        ("refused_requests", WARN, "refused (4xx)"),
        ("error_requests", FAIL, "error (5xx)"),
    ):
        fig.add_trace(go.Bar(x=x, y=[hours[h][key] for h in ordered], name=label, marker_color=colour))
    rates = [hours[h]["error_requests"] / hours[h]["requests"] for h in ordered]
    fig.add_trace(
        go.Scatter(
            x=x,
            y=rates,
            name="error rate",
            mode="lines+markers",
            line=dict(color=FAIL, dash="dash"),
        ),
        secondary_y=True,
    )
    fig.update_layout(title=_titled("Requests per hour by outcome"), barmode="stack", **LAYOUT)
    fig.update_xaxes(type="category")
    fig.update_yaxes(title_text="requests", secondary_y=False)
    top = max([*rates, 0.05]) * 1.1  # an error-free day reads as a flat line at 0%, not a zoomed-in one
    fig.update_yaxes(title_text="error rate", range=[0, top], tickformat=".0%", secondary_y=True)
    return fig


def feedback_volume(data: OpsMarts) -> go.Figure | None:
    by_label = _group(data.feedback_daily, "feedback_label")
    if not by_label:
        return None
    colours = {"relevant": OK, "not_relevant": FAIL, "click": "#2e86c1"}
    fig = go.Figure()
    for label, rows in sorted(by_label.items()):
        fig.add_trace(
            go.Bar(
                x=[f"{r['feedback_day']:%Y-%m-%d}" for r in rows],
                y=[r["feedback"] for r in rows],
                name=label.replace("_", " "),
                marker_color=colours.get(label, MUTED),
            )
        )
    fig.update_layout(title=_titled("Feedback per day by label"), barmode="stack", yaxis_title="feedback", **LAYOUT)
    fig.update_xaxes(type="category")
    return fig


def _hour(value) -> str:
    """An hour as a category label (one point per hour, however far apart the hours with traffic are)."""
    return f"{value:%m-%d %H:00}"


def _run_labels(runs: list[dict[str, Any]]) -> list[str]:
    """Runs by when they started (a category axis: one bar per run, however far apart)."""
    return [f"{r['started_at']:%m-%d %H:%M:%S}" for r in runs]


def _group(rows: list[dict[str, Any]], *keys: str) -> dict[Any, list[dict[str, Any]]]:
    grouped: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row[keys[0]] if len(keys) == 1 else tuple(row[k] for k in keys)].append(row)
    return dict(grouped)
