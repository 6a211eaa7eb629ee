"""Freshness checks, declared from the SLAs the project already states:

    raw/<table> freshness     one per dbt source with a `freshness:` block (warn_after, error_after in its
                              _sources.yml), all evaluated by one `dbt source freshness` run through the
                              jobs' wrapper (python_jobs/transform/dbt.py), recorded in
                              ops.dbt_source_freshness like every `rp freshness`
    vector_index              `vars.ops.index_freshness_sla_hours`, as the ops mart ops_index_freshness
      index_freshness         applies it (built by the ops_marts assets just before)

The age measured is the data's: a source's newest `_loaded_at`, a chunk's wait for the index. A source
past warn_after is a warning (delivered to the alert sinks), past error_after an error: the check fails
at severity ERROR and its step fails with the pipeline's alert. Neither blocks the index: the data is
old, not wrong (the quality gate guards wrong).
"""

from typing import Any

import dagster as dg
from dagster import AssetCheckExecutionContext

from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect
from python_jobs.observe import findings, marts
from python_jobs.orchestrate.alerts import RETRY, alert_failure, deliver, step_failures
from python_jobs.orchestrate.keys import INDEX
from python_jobs.orchestrate.project import Project, SourceSla, raw_key
from python_jobs.transform.dbt import run_dbt

FRESHNESS = "freshness"
INDEX_FRESHNESS = "index_freshness"
INDEX_FRESHNESS_MART = "ops_index_freshness"


def check_definitions(project: Project) -> list[dg.AssetChecksDefinition]:
    return [source_freshness_checks(project), index_freshness_check(project)]


def source_freshness_checks(project: Project) -> dg.AssetChecksDefinition:
    settings = project.settings
    slas = project.source_slas
    specs = [
        dg.AssetCheckSpec(
            FRESHNESS,
            asset=raw_key(table, settings.raw_schema),
            description=f"dbt source freshness of {sla.name}: {_sla_text(sla)} ({sla.defined_in}).",
            metadata=_sla_metadata(sla),
        )
        for table, sla in slas.items()
    ]

    @dg.multi_asset_check(specs=specs, name="source_freshness", can_subset=True, retry_policy=RETRY)
    def source_freshness(context: AssetCheckExecutionContext):
        """`rp freshness`: each selected source's newest load against its SLA, in one dbt run."""
        settings = Settings.load()
        selected = {key.asset_key for key in context.selected_asset_check_keys}
        chosen = {table: sla for table, sla in slas.items() if raw_key(table, settings.raw_schema) in selected}
        args = ["source", "freshness"]
        if len(chosen) < len(slas):
            args += ["--select", *(f"source:{sla.name}" for sla in chosen.values())]
        with step_failures(FRESHNESS, settings):
            ran = run_dbt(settings, args)
        captured = ran.captured
        rows = {row["unique_id"]: row for row in (captured.freshness if captured else [])}
        invocation_id = captured.invocation["invocation_id"] if captured else None
        for table, sla in chosen.items():
            yield freshness_result(raw_key(table, settings.raw_schema), sla, rows.get(sla.unique_id), invocation_id)
        stale = [row for row in rows.values() if row["status"] == "warn"]
        if stale:
            deliver(findings.step_alert(FRESHNESS, stale, invocation_id, level="warn"), settings, context.log)
        if captured and captured.failures:
            raise alert_failure(findings.step_alert(FRESHNESS, captured.failures, invocation_id))
        if ran.exit_code != 0:
            error = RuntimeError(f"dbt source freshness exited {ran.exit_code}; its log is {settings.dbt_log_dir}")
            raise alert_failure(findings.job_failure(FRESHNESS, error, project.owners))

    return source_freshness


def freshness_result(
    key: dg.AssetKey, sla: SourceSla, row: dict[str, Any] | None, invocation_id: str | None
) -> dg.AssetCheckResult:
    if row is None:
        return dg.AssetCheckResult(
            asset_key=key,
            check_name=FRESHNESS,
            passed=False,
            description=f"dbt source freshness recorded no result for {sla.name} (invocation {invocation_id})",
        )
    lag = row.get("lag_seconds")
    status = row["status"]
    lag_text = "?" if lag is None else f"{lag / 3600:,.1f}"
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=FRESHNESS,
        passed=status == "pass",
        severity=dg.AssetCheckSeverity.WARN if status == "warn" else dg.AssetCheckSeverity.ERROR,
        description=f"{sla.name} {status}: loaded {lag_text} h ago; {_sla_text(sla)}",
        metadata={
            key: value
            for key, value in {
                "status": status,
                "lag_hours": None if lag is None else round(lag / 3600, 2),
                "max_loaded_at": str(row["max_loaded_at"]) if row.get("max_loaded_at") else None,
                "dbt_invocation_id": invocation_id,
                **_sla_metadata(sla),
            }.items()
            if value is not None
        },
    )


def index_freshness_check(project: Project) -> dg.AssetChecksDefinition:
    spec = dg.AssetCheckSpec(
        INDEX_FRESHNESS,
        asset=INDEX,
        additional_deps=[project.node_key(INDEX_FRESHNESS_MART)],
        description="No landed change waits longer than vars.ops.index_freshness_sla_hours to be indexed "
        f"({INDEX_FRESHNESS_MART}); changes waiting within it are a warning.",
    )

    @dg.multi_asset_check(specs=[spec], name="index_freshness", retry_policy=RETRY)
    def index_freshness(context: AssetCheckExecutionContext):
        settings = Settings.load()
        with step_failures("report", settings):
            index = index_freshness_row(settings)
        alerts = list(findings.index_alerts(index, project.owners))
        breached = any(a.level == "error" for a in alerts)
        yield dg.AssetCheckResult(
            asset_key=INDEX,
            check_name=INDEX_FRESHNESS,
            passed=not alerts,
            severity=dg.AssetCheckSeverity.WARN if alerts and not breached else dg.AssetCheckSeverity.ERROR,
            description=alerts[0].summary if alerts else "no chunk is waiting for the index",
            metadata={
                key: index.get(key)
                for key in ("chunks_pending", "oldest_pending_hours", "sla_hours", "is_sla_breached")
                if index.get(key) is not None
            },
        )
        if breached:  # the warning is the dashboard's to deliver, as the report step does
            raise alert_failure(next(a for a in alerts if a.level == "error"))

    return index_freshness


def index_freshness_row(settings: Settings) -> dict[str, Any]:
    """The one row of the mart the dashboard's index finding reads (python_jobs/observe/marts.py)."""
    with connect(settings.warehouse_path, read_only=True) as con:
        cursor = con.execute(f"select * from {marts.MARTS}.{INDEX_FRESHNESS_MART}")
        names = [column[0] for column in cursor.description]
        row = cursor.fetchone()
    return dict(zip(names, row, strict=True)) if row else {}


def _sla_text(sla: SourceSla) -> str:
    parts = [f"warn after {sla.warn_after_hours:g} h" if sla.warn_after_hours else None]
    parts.append(f"error after {sla.error_after_hours:g} h" if sla.error_after_hours else None)
    return ", ".join(p for p in parts if p)


def _sla_metadata(sla: SourceSla) -> dict[str, Any]:
    return {
        key: value
        for key, value in (("warn_after_hours", sla.warn_after_hours), ("error_after_hours", sla.error_after_hours))
        if value is not None
    }
