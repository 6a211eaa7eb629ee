"""The Dagster code location: `dagster dev -m python_jobs.orchestrate.definitions` (`make dagster`).

Built from the same configuration every `rp` command reads (dbt_project.yml `vars:`, RP_VARS and the
RP_* paths, python_jobs/common/settings.py) and from dbt's manifest (parsed into the configured target
dir when missing or stale). Steps run one at a time in one process: DuckDB has one writer per file.

Example:
    from python_jobs.common.settings import Settings
    from python_jobs.orchestrate.definitions import build_definitions
    defs = build_definitions(Settings.load())
    defs.resolve_job_def("pipeline").execute_in_process()
"""

from __future__ import annotations

import dagster as dg

from python_jobs.common.settings import Settings
from python_jobs.orchestrate.assets import python_assets
from python_jobs.orchestrate.checks import check_definitions
from python_jobs.orchestrate.project import Project
from python_jobs.orchestrate.schedules import daily_schedule, pipeline_job, report_job
from python_jobs.orchestrate.sensors import failure_sensor, landing_sensor
from python_jobs.orchestrate.transform import dbt_asset_definitions, dbt_resource


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.load()
    project = Project.load(settings)
    pipeline, report = pipeline_job(), report_job(project)
    return dg.Definitions(
        assets=[*dbt_asset_definitions(project), *python_assets(project)],
        asset_checks=check_definitions(project),
        jobs=[pipeline, report],
        schedules=[daily_schedule(pipeline)],
        sensors=[landing_sensor(pipeline), failure_sensor(report)],
        resources={"dbt": dbt_resource(settings)},
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
