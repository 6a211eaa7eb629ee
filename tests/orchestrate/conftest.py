"""The orchestrated world: the indexed world after a new delivery of one landing document (its owner
changed), taken from landing files to the dashboard by one in-process run of the Dagster `pipeline` job,
with real dbt and the real LanceDB index (a metadata change is rewritten without loading the model).
What the run materialized and what its checks found are kept beside it (orchestrated.json), so every
worker reads the same run. Read-only: a test that changes it works on a copy."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from python_jobs.orchestrate.definitions import build_definitions
from tests.conftest import NO_GATES, shared_world
from tests.worlds import PROJECT_DIR, Workspace

INSTANCE_CONFIG = PROJECT_DIR / "python_jobs" / "orchestrate" / "dagster.yaml"
DELIVERED = "faq/faq-price-match.md"  # delivered again with another owner: a metadata-only change


def run_env(ws: Workspace, vars: str = NO_GATES) -> dict[str, str]:
    """What a run in this workspace sees: its paths, the tests' dbt settings, RP_VARS."""
    return {
        **ws.paths,
        "DBT_PROFILES_DIR": str(PROJECT_DIR),
        "HF_HUB_OFFLINE": "1",
        "RP_DBT_THREADS": "1",
        "RP_VARS": vars,
    }


@contextmanager
def environment(ws: Workspace, vars: str = NO_GATES, **extra: str) -> Iterator[None]:
    """The process environment of a run in `ws`: steps load their settings from it, as `rp` does."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**run_env(ws, vars), **extra}.items():
            patch.setenv(key, value)
        yield


def dagster_home(ws: Workspace) -> Path:
    """A DAGSTER_HOME for `dagster dev` in `ws`, with the instance settings `make dagster` uses."""
    home = ws.root / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(INSTANCE_CONFIG, home / "dagster.yaml")
    return home


def run_record(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """What a run did, as plain JSON: step statuses, each asset's materialization metadata, each check's result."""
    kinds = {"STEP_SUCCESS": "success", "STEP_FAILURE": "failure", "STEP_SKIPPED": "skipped"}
    record: dict[str, Any] = {
        "run_id": result.run_id,
        "success": result.success,
        "steps": {},
        "assets": {},
        "checks": {},
    }
    for event in result.all_events:
        if event.event_type_value in kinds:
            record["steps"][event.step_key] = kinds[event.event_type_value]
        elif event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            metadata = {key: value.value for key, value in materialization.metadata.items()}
            record["assets"][materialization.asset_key.to_user_string()] = metadata
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            record["checks"][f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"] = {
                "passed": evaluation.passed,
                "severity": evaluation.severity.value,
                "description": evaluation.description,
                "metadata": {key: value.value for key, value in evaluation.metadata.items()},
            }
    return json.loads(json.dumps(record, default=str))


def run_selection(defs: dg.Definitions, selection: dg.AssetSelection, instance: dg.DagsterInstance):
    """Run part of the graph (assets, checks or both) as the UI's "Materialize selected" does."""
    job = dg.define_asset_job("selected", selection=selection)
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    return merged.resolve_job_def("selected").execute_in_process(instance=instance, raise_on_error=False)


@pytest.fixture(scope="session")
def orchestrated_world(indexed_world: Workspace, shared_dir: Path) -> Workspace:
    def build(ws: Workspace) -> None:
        indexed_world.copy(ws.root)
        faq = ws.landing / "docs" / DELIVERED
        faq.write_text(faq.read_text(encoding="utf-8").replace("owner: customer-support", "owner: pricing-team"))
        with environment(ws):
            defs = build_definitions()
            clock = time.perf_counter()
            job = defs.resolve_job_def("pipeline")
            result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
            seconds = time.perf_counter() - clock
        record = run_record(result) | {"seconds": round(seconds, 1)}
        (ws.root / "orchestrated.json").write_text(json.dumps(record), encoding="utf-8")

    ws = shared_world(shared_dir, "orchestrated", build)
    ws.summary = json.loads((ws.root / "orchestrated.json").read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    return ws
