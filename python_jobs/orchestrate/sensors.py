"""Sensors: new landing files start a run; a failed run reaches the alert sinks.

landing_zone
    Asks the ingest job's own change detection (python_jobs/land/changes.py: `scan_landing_zone`, then
    `plan_files` against the manifest of loaded files) whether `rp ingest` would load anything, and
    requests a pipeline run if so. The cursor keeps the last listing it planned from (paths, sizes,
    mtimes): while the zone is as it was, the warehouse is not even opened. It is not opened while a
    run is in progress either (a reader blocks DuckDB's one writer); the sensor looks again after it.

alert_on_failure
    For each failed step of a failed run, the alert the step carried (see alerts.py) or the pipeline's
    job-failure alert, with the Dagster run id added, to the JSON-lines file and the webhook of
    `vars.alerts`. Then it requests the `report` job, unless the failed run wrote the dashboard or was
    that job itself: as with `rp pipeline`, the dashboard shows the failure.
"""

from __future__ import annotations

import json
from dataclasses import replace

import dagster as dg

from python_jobs.common.errors import PipelineError, WarehouseLockedError
from python_jobs.common.settings import Settings
from python_jobs.land import changes
from python_jobs.observe import findings
from python_jobs.orchestrate.alerts import alert_of_step_failure, deliver
from python_jobs.orchestrate.keys import DASHBOARD

LANDING_SENSOR = "landing_zone"
FAILURE_SENSOR = "alert_on_failure"
BUSY_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def landing_sensor(job: dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name=LANDING_SENSOR,
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A pipeline run when `rp ingest` would load new, changed or removed landing files.",
    )
    def landing_zone(context: dg.SensorEvaluationContext):
        return evaluate_landing_zone(Settings.load(), context.cursor, context.instance)

    return landing_zone


def evaluate_landing_zone(
    settings: Settings, cursor: str | None, instance: dg.DagsterInstance | None
) -> dg.SensorResult | dg.SkipReason:
    state = json.loads(cursor) if cursor else {}
    try:
        found = changes.scan(settings)
    except PipelineError as exc:
        return dg.SkipReason(f"cannot list the landing zone: {exc}")
    listing = changes.scan_key(found)
    if state.get("listing") == listing:
        return dg.SkipReason(f"{settings.landing_dir} is as it was when last planned ({len(found)} files)")
    if instance is not None and instance.get_runs(dg.RunsFilter(statuses=BUSY_STATUSES), limit=1):
        return dg.SkipReason("a run is in progress: the landing zone is planned again after it")
    try:
        pending = changes.pending_changes(settings, found)
    except WarehouseLockedError as exc:
        return dg.SkipReason(f"{exc} Planned again at the next tick.")
    cursor = json.dumps({"listing": listing, "changes": pending.key if pending.any else None})
    if not pending.any:
        return dg.SensorResult(skip_reason=dg.SkipReason("no new, changed or removed landing files"), cursor=cursor)
    request = dg.RunRequest(
        run_key=f"landing-{listing}-{pending.key}",
        tags={"landing_changes": pending.describe(), "landing_dir": str(settings.landing_dir)},
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)


def failure_sensor(report_job: dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=FAILURE_SENSOR,
        request_job=report_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Every failed run's alerts to the sinks of vars.alerts, then the dashboard brought up to date.",
    )
    def alert_on_failure(context: dg.RunFailureSensorContext):
        settings = Settings.load()
        run = context.dagster_run
        alerts = [alert_of_step_failure(event, settings) for event in context.get_step_failure_events()]
        if not alerts:  # the run failed outside any step (it could not start, or was killed)
            message = context.failure_event.message or f"run {run.run_id} failed"
            alerts = [findings.job_failure("run", RuntimeError(message), findings.Owners.load(settings))]
        for alert in alerts:
            deliver(replace(alert, where={**alert.where, "dagster_run": run.run_id}), settings, context.log)
        if run.job_name != report_job.name and not _wrote(context.instance, run.run_id, DASHBOARD):
            yield dg.RunRequest(run_key=f"report-after-{run.run_id}", tags={"after_failed_run": run.run_id})

    return alert_on_failure


def _wrote(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey) -> bool:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return any(r.event_log_entry.dagster_event.asset_key == key for r in records if r.event_log_entry.dagster_event)
