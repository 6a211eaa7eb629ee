"""The jobs and the schedule.

pipeline          every asset and check, landing files to the dashboard: what `rp pipeline` runs
report            the ops marts and the dashboard: what the pipeline still runs after a failure
                  (the run failure sensor requests it, so the dashboard shows what failed)
daily_pipeline    the pipeline job every day at 05:00 UTC
"""

from __future__ import annotations

import dagster as dg

from python_jobs.orchestrate.checks import INDEX_FRESHNESS
from python_jobs.orchestrate.keys import DASHBOARD, INDEX
from python_jobs.orchestrate.project import OPS_TAG, Project

PIPELINE_JOB = "pipeline"
REPORT_JOB = "report"
DAILY_CRON = "0 5 * * *"


def pipeline_job() -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.all(),
        description="ingest, dbt build with its tests, source freshness, embed with its gate, eval with its gates, "
        "the ops marts and the dashboard: `rp pipeline` as assets.",
    )


def report_job(project: Project) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        REPORT_JOB,
        selection=dg.AssetSelection.assets(*project.model_keys(OPS_TAG), DASHBOARD)
        | dg.AssetSelection.checks(dg.AssetCheckKey(INDEX, INDEX_FRESHNESS)),
        description="The ops marts and the dashboard (`rp report`): run after a failed run, as the pipeline "
        "still writes the dashboard when a step fails.",
    )


def daily_schedule(job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="daily_pipeline",
        job=job,
        cron_schedule=DAILY_CRON,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="The whole pipeline once a day, so freshness, the index and the evaluation are checked even "
        "on a day no landing file arrives.",
    )
