"""The dbt project as Dagster assets (dagster-dbt): models and seeds are assets, tests are asset checks.

Two `@dbt_assets` over the one manifest, because the ops marts read what the Python stages record:

    warehouse   every model and seed but the ops ones: staging, core marts, the retrieval chain
                (documents -> document_chunks); `dbt build`, tests included
    ops_marts   `tag:ops`: the ledgers' staging and the ops marts the dashboard reads; the same
                `dbt build --select tag:ops` that `rp report` refreshes them with

Keys, groups and owners come from dbt (python_jobs/orchestrate/project.py): a model's key is its schema
and name (`knowledge/document_chunks`), its group and owner its dbt group (models/_groups.yml). A source
over a table the ingest job writes is that table (`raw/<table>`), so the landed tables sit upstream of
staging; the run ledgers the index and the evaluation write (`ops.embed_runs`, `ops.eval_*`) are those
assets, so the ops marts sit downstream of them.

Each build runs as `rp build` does (python_jobs/transform/dbt.py): the jobs' environment and RP_VARS,
the warehouse lock checked first (a busy warehouse is retried with backoff), and the results recorded
in the ops tables for the marts and the alerts. An error-level failure (a test failing at severity
error, a model erroring) fails the step with the alert the pipeline raises, so nothing downstream runs.
"""

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from dagster_dbt import DbtCliResource, dbt_assets

from python_jobs.common.errors import PipelineError, WarehouseLockedError
from python_jobs.common.settings import Settings
from python_jobs.common.warehouse import connect, lock_message
from python_jobs.observe import findings
from python_jobs.orchestrate.alerts import RETRY, alert_failure, step_failures
from python_jobs.orchestrate.project import OPS_TAG, Project
from python_jobs.transform import results as dbt_results
from python_jobs.transform.dbt import LOCK_ERROR, keep_build_artifacts


def dbt_resource(settings: Settings) -> DbtCliResource:
    return DbtCliResource(
        project_dir=str(settings.project_dir),
        profiles_dir=os.environ.get("DBT_PROFILES_DIR", str(settings.project_dir)),
        dbt_executable=str(Path(sys.executable).with_name("dbt")),
    )


def dbt_asset_definitions(project: Project) -> list[dg.AssetsDefinition]:
    translator = project.translator

    @dbt_assets(
        manifest=project.manifest,
        exclude=f"tag:{OPS_TAG}",
        name="warehouse",
        dagster_dbt_translator=translator,
        retry_policy=RETRY,
    )
    def warehouse(context: AssetExecutionContext, dbt: DbtCliResource):
        """dbt build: seeds, staging, the core marts and the retrieval chain, with their tests."""
        yield from build(context, dbt, "build")

    @dbt_assets(
        manifest=project.manifest,
        select=f"tag:{OPS_TAG}",
        name="ops_marts",
        dagster_dbt_translator=translator,
        retry_policy=RETRY,
    )
    def ops_marts(context: AssetExecutionContext, dbt: DbtCliResource):
        """dbt build --select tag:ops: the ops marts over the run ledgers, as `rp report` refreshes them."""
        yield from build(context, dbt, "report")

    return [warehouse, ops_marts]


def build(context: AssetExecutionContext, dbt: DbtCliResource, step: str) -> Iterator[Any]:
    """`dbt build` of the selected assets as `rp build` runs it: events streamed to Dagster, results
    recorded in the ops tables, an error-level failure raised as the pipeline's alert."""
    settings = Settings.load()
    with step_failures(step, settings):
        connect(settings.warehouse_path).close()  # a busy warehouse: WarehouseLockedError, retried
        args = ["build", "--log-path", str(settings.dbt_log_dir), "--log-format-file", "json"]
        if settings.dbt_vars():
            args += ["--vars", settings.dbt_vars()]
        log_file = settings.dbt_log_dir / "dbt.log"
        offset = log_file.stat().st_size if log_file.is_file() else 0
        started = datetime.now(UTC)
        with _environment(settings.dbt_env()):
            invocation = dbt.cli(args, context=context, target_path=settings.dbt_target_dir, raise_on_error=False)
        yield from invocation.stream()
        code = invocation.process.wait()
        error = invocation.get_error()
        if code != 0 and error is not None and LOCK_ERROR in str(error):
            raise WarehouseLockedError(lock_message(settings.warehouse_path, str(error)))
        keep_build_artifacts(settings.dbt_target_dir)
        # Recorded with the selection dagster-dbt added, as `rp build --select ...` records its own.
        recorded = [str(arg) for arg in invocation.process.args[1:]]
        ran = dbt_results.Invocation(recorded, invocation.process.pid, log_file, offset, started, exit_code=code)
        captured = dbt_results.capture(settings.warehouse_path, settings.ops_schema, settings.dbt_target_dir, ran)
    invocation_id = captured.invocation["invocation_id"]
    context.log.info(
        f"dbt invocation {invocation_id} exited {code}: {len(captured.nodes)} results recorded in "
        f"{settings.ops_schema}.dbt_node_results"
    )
    if captured.failures:
        raise alert_failure(findings.step_alert(step, captured.failures, invocation_id))
    if code != 0:  # no node failed: dbt itself did (a compile error, a crash)
        failed = PipelineError(
            f"dbt build exited {code} with no failing node recorded; its log is {log_file}\n{error or ''}"
        )
        raise alert_failure(findings.job_failure(step, failed, findings.Owners.load(settings)))


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """DbtCliResource starts dbt with this process's environment: give it the one `rp build` gives dbt
    (the resolved warehouse, landing zone and index paths) while the process starts."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
