"""What needs attention, as alerts: one place that turns failures into `Alert`s.

The pipeline raises these as each step ends (dbt results, eval gates, job errors); the
dashboard's "Needs attention" section lists the same kinds read back from the ops marts, so
a failure reads the same in the terminal, in the alert sinks and on the page. Each kind links
to its playbook in docs/runbook.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from python_jobs.common.settings import Settings
from python_jobs.observe.alerts import Alert
from python_jobs.observe.marts import OpsMarts
from python_jobs.transform.results import group_owners

RUNBOOK = "docs/runbook.md"
PLAYBOOKS = {
    "source_stale": "stale-source",
    "index_stale": "stale-index",
    "freshness_sla": "freshness-sla",
    "dbt_test_failed": "failing-data-test",
    "dbt_model_error": "failing-data-test",
    "flaky_test": "failing-data-test",
    "eval_gate_failed": "eval-regression",
    "eval_regression": "eval-regression",
    "budget_exceeded": "budget-exceeded",
    "model_changed": "embedding-model-change",
    "index_broken": "corrupted-or-missing-index",
    "warehouse_locked": "locked-warehouse",
    "job_failed": "job-failed",
}
# The dbt group (models/_groups.yml) that owns each step's own failures; dbt nodes carry their own group.
RETRIEVAL_GROUP = "knowledge"
PLATFORM_GROUP = "platform_ops"
STEP_GROUPS = {"embed": RETRIEVAL_GROUP, "eval": RETRIEVAL_GROUP, "index": RETRIEVAL_GROUP}


@dataclass(frozen=True)
class Owners:
    """Each dbt group's owner, as the manifest says (python_jobs.transform.results.group_owners)."""

    groups: Mapping[str, tuple[str | None, str | None]]

    def of(self, group: str) -> dict[str, str | None]:
        name, email = self.groups.get(group, (None, None))
        return {"owner": name, "email": email}

    def of_step(self, step: str) -> dict[str, str | None]:
        return self.of(STEP_GROUPS.get(step, PLATFORM_GROUP))

    @classmethod
    def load(cls, settings: Settings) -> Owners:
        return cls(group_owners(settings.dbt_target_dir, settings.project_dir))


def runbook(kind: str) -> str:
    return f"{RUNBOOK}#{PLAYBOOKS.get(kind, 'job-failed')}"


def node_failure(step: str, row: Mapping[str, Any], run_id: str | None = None, level: str = "error") -> Alert:
    """A failed test, an errored model or seed, or a source past its SLA (a dbt result row)."""
    kind = _node_kind(row)
    name = row.get("node_name") or row.get("source_table") or row.get("table_name") or row["unique_id"]
    if kind == "source_stale":
        lag = row.get("lag_hours")
        if lag is None and row.get("lag_seconds") is not None:
            lag = row["lag_seconds"] / 3600
        limit = row.get("error_after_hours") or _hours(row.get("error_after_seconds"))
        if level == "warn":
            limit = row.get("warn_after_hours") or _hours(row.get("warn_after_seconds"))
        summary = f"source {_source_name(row)} is stale: loaded {_fmt(lag)} h ago, SLA {_fmt(limit)} h"
    elif kind == "dbt_test_failed":
        failures = row.get("failures")
        summary = f"test {name} failed" + (f" ({failures} rows)" if failures else "")
    else:
        summary = f"{row.get('resource_type', 'node')} {name} {row.get('status', 'failed')}"
    where = {
        "compiled_sql": row.get("compiled_path"),
        "failing_rows_table": row.get("failing_rows_relation"),
        "failing_rows_sample": _sample(row.get("failing_rows_sample")),
        "tested_node": row.get("tested_node"),
        "defined_in": row.get("original_file_path"),
    }
    return Alert(
        level=level,
        kind=kind,
        step=step,
        subject=row["unique_id"],
        summary=summary,
        error=(row.get("message") or "").strip(),
        owner=row.get("owner_name"),
        email=row.get("owner_email"),
        where={k: v for k, v in where.items() if v},
        runbook=runbook(kind),
        run_id=run_id or row.get("invocation_id") or row.get("last_invocation_id"),
    )


def step_alert(step: str, failures: list[Mapping[str, Any]], run_id: str | None, level: str = "error") -> Alert:
    """One alert for a dbt step's failing results: the first named, the others in details."""
    ordered = sorted(failures, key=_failure_order)
    first = node_failure(step, ordered[0], run_id, level)
    others = tuple(
        {"subject": a.subject, "summary": a.summary, "owner": a.owner, "email": a.email, **dict(a.where)}
        for a in (node_failure(step, row, run_id, level) for row in ordered[1:])
    )
    return replace(first, details=others)


def eval_failure(step: str, summary, run_id: str, owners: Owners) -> Alert:
    """The eval gates that failed, with the questions that got worse (or scored lowest)."""
    failures = summary.gate_failures
    first = failures[0]
    kind = "eval_regression" if first.kind == "regression" else "eval_gate_failed"
    return Alert(
        level="error",
        kind=kind,
        step=step,
        subject=f"{first.mode} {first.metric}",
        summary=f"{len(failures)} eval gate(s) failed on {summary.dataset}: {first.describe()}",
        error="; ".join(f.describe() for f in failures),
        **owners.of(RETRIEVAL_GROUP),
        where={
            "eval_run_id": run_id,
            "question_ids": sorted({q["question_id"] for f in failures for q in f.worse_questions}),
            "per_question_results": "ops.eval_question_results",
            "index_version": summary.index_version,
        },
        runbook=runbook(kind),
        run_id=run_id,
        details=tuple(
            {"subject": f"{f.mode} {f.metric}", "summary": f.describe(), "kind": f.kind} for f in failures[1:]
        ),
    )


def job_failure(step: str, error: BaseException, owners: Owners, kind: str = "job_failed") -> Alert:
    return Alert(
        level="error",
        kind=kind,
        step=step,
        subject=f"make {step}",
        summary=f"{step} failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
        error=str(error) or type(error).__name__,
        **owners.of_step(step),
        where={"rerun": f"make {step}"},
        runbook=runbook(kind),
    )


def from_marts(data: OpsMarts, owners: Owners) -> list[Alert]:
    """Everything the ops marts say needs attention, errors first: the dashboard's first section."""
    found: list[Alert] = []
    found += [node_failure("status", row) for row in data.failing_nodes if row["resource_type"] != "source"]
    found += [
        node_failure("freshness", {**row, "resource_type": "source"}, level="error" if row["is_failure"] else "warn")
        for row in data.freshness_latest
        if row["is_failure"] or row["is_warning"]
    ]
    found += [eval_trend_alert(row, owners) for row in data.eval_problems]
    found += list(index_alerts(data.index_freshness, owners))
    found += list(freshness_alerts(data.freshness_backlog, owners))
    found += list(budget_alerts(data.weekly_costs[-1:], owners))
    found += [flaky_alert(row) for row in data.tests_attention if row["is_flaky"]]
    return sorted(found, key=lambda a: a.level != "error")


def eval_trend_alert(row: Mapping[str, Any], owners: Owners) -> Alert:
    below = row["is_below_gate"]
    kind = "eval_gate_failed" if below else "eval_regression"
    if below:
        summary = (
            f"{row['mode']} {row['metric_key']} = {row['metric_value']:.4f}, below its gate {row['gate_floor']:.2f}"
        )
    else:
        summary = (
            f"{row['mode']} {row['metric_key']} fell to {row['metric_value']:.4f} "
            f"from {row['baseline_value']:.4f} at the last good run"
        )
    return Alert(
        level="error",
        kind=kind,
        step="eval",
        subject=f"{row['mode']} {row['metric_key']}",
        summary=f"{summary} ({row['dataset']})",
        **owners.of(RETRIEVAL_GROUP),
        where={"eval_run_id": row["eval_run_id"], "per_question_results": "ops.eval_question_results"},
        runbook=runbook(kind),
        run_id=row["eval_run_id"],
    )


def index_alerts(index: Mapping[str, Any], owners: Owners) -> Iterable[Alert]:
    """A breached index SLA is an error; chunks merely waiting for the next embed are a warning."""
    if not index or not index.get("chunks_pending"):
        return
    pending = ", ".join(
        f"{index[f'chunks_{state}']:,} {state.replace('_', ' ')}"
        for state in ("stale", "not_indexed", "deleted_pending")
    )
    breached = bool(index.get("is_sla_breached"))
    yield Alert(
        level="error" if breached else "warn",
        kind="index_stale",
        step="index",
        subject="ops_index_freshness",
        summary=(
            f"{index['chunks_pending']:,} chunks pending in the index "
            f"({pending}); "
            f"oldest waiting {_fmt(index.get('oldest_pending_hours'))} h, SLA {_fmt(index.get('sla_hours'))} h"
        ),
        **owners.of(RETRIEVAL_GROUP),
        where={"chunks": "observability.ops_index_chunks where is_pending", "plan": "make embed ARGS=--dry-run"},
        runbook=runbook("index_stale"),
    )


def freshness_alerts(backlog: Mapping[str, Any], owners: Owners) -> Iterable[Alert]:
    """vars.ops.freshness_sla_seconds (ops_freshness_backlog): a change not yet searchable after it is an
    error; the latest hour's edit-to-searchable p95 over it is a warning."""
    if not backlog:
        return
    sla = backlog.get("sla_seconds")
    where = {"changes": "observability.ops_freshness_backlog", "hours": "observability.ops_freshness"}
    if backlog.get("is_sla_breached"):
        yield Alert(
            level="error",
            kind="freshness_sla",
            step="freshness",
            subject=str(backlog.get("oldest_landing_path")),
            summary=(
                f"{backlog['changes_not_searchable']:,} change(s) not searchable; the oldest, "
                f"{backlog.get('oldest_landing_path')} ({backlog.get('oldest_outcome')}), has waited "
                f"{_fmt(backlog.get('oldest_waiting_seconds'))} s, SLA {_fmt(sla)} s"
            ),
            **owners.of(RETRIEVAL_GROUP),
            where=where | {"events": "ops.freshness_events where outcome in ('pending', 'blocked', 'failed')"},
            runbook=runbook("freshness_sla"),
        )
    elif backlog.get("is_latest_hour_over_sla"):
        yield Alert(
            level="warn",
            kind="freshness_sla",
            step="freshness",
            subject=f"edit to searchable, hour of {backlog.get('latest_hour')}",
            summary=(
                f"edits took {_fmt(backlog.get('latest_hour_p95_seconds'))} s to become searchable (p95, hour of "
                f"{backlog.get('latest_hour')}), over the SLA of {_fmt(sla)} s"
            ),
            **owners.of(RETRIEVAL_GROUP),
            where=where,
            runbook=runbook("freshness_sla"),
        )


def open_changes_alert(changes: list[Mapping[str, Any]], sla_seconds: float, owners: Owners) -> Alert:
    """The watcher's alert for changes still not searchable after the SLA (rows of ops.freshness_events)."""
    oldest = changes[0]
    return Alert(
        level="error",
        kind="freshness_sla",
        step="watch",
        subject=str(oldest["path"]),
        summary=(
            f"{len(changes):,} change(s) not searchable after the SLA of {sla_seconds:g} s; the oldest, "
            f"{oldest['path']} ({oldest['outcome']}), has waited {oldest['waiting_seconds']:,.0f} s"
        ),
        error=str(oldest.get("detail") or ""),
        **owners.of(RETRIEVAL_GROUP),
        where={"event_ids": [str(c["event_id"]) for c in changes], "paths": sorted({str(c["path"]) for c in changes})},
        runbook=runbook("freshness_sla"),
    )


def budget_alerts(weeks: list[Mapping[str, Any]], owners: Owners) -> Iterable[Alert]:
    for week in weeks:
        if week["is_over_budget"]:
            yield Alert(
                level="warn",
                kind="budget_exceeded",
                step="embed",
                subject=f"embedding spend, week of {week['cost_week']:%Y-%m-%d}",
                summary=(
                    f"embedding spend ${week['estimated_cost_usd']:.4f} is over the weekly budget "
                    f"${week['budget_usd']:.2f} ({week['budget_used']:.0%})"
                ),
                **owners.of(RETRIEVAL_GROUP),
                where={"runs": "observability.ops_embedding_cost", "weeks": "observability.ops_embedding_cost_weekly"},
                runbook=runbook("budget_exceeded"),
            )


def flaky_alert(row: Mapping[str, Any]) -> Alert:
    return Alert(
        level="warn",
        kind="flaky_test",
        step="status",
        subject=row["unique_id"],
        summary=(
            f"test {row['test_name']} is flaky: {row['status_changes']} status changes, "
            f"fail rate {row['fail_rate']:.0%} over its last {row['runs']} runs"
        ),
        owner=row.get("owner_name"),
        email=row.get("owner_email"),
        where={"history": "observability.ops_test_history", "tested_node": row.get("tested_node")},
        runbook=runbook("flaky_test"),
    )


def _node_kind(row: Mapping[str, Any]) -> str:
    if row.get("resource_type") == "source" or "source_table" in row or "lag_seconds" in row:
        return "source_stale"
    if row.get("resource_type") in ("test", "unit_test"):
        return "dbt_test_failed"
    return "dbt_model_error"


def _failure_order(row: Mapping[str, Any]) -> tuple[int, str]:
    """Errored models first (everything after them was skipped), then sources, then tests."""
    order = {"dbt_model_error": 0, "source_stale": 1, "dbt_test_failed": 2}
    return order[_node_kind(row)], str(row.get("unique_id"))


def _source_name(row: Mapping[str, Any]) -> str:
    if row.get("source_table"):
        return row["source_table"]
    if row.get("source_name"):
        return f"{row['source_name']}.{row['table_name']}"
    return row["unique_id"].removeprefix("source.").split(".", 1)[-1]


def _sample(value: str | None) -> list[dict[str, Any]] | None:
    return json.loads(value) if value else None


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:,.1f}"
