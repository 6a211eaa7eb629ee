"""Failures as the pipeline reports them: an `Alert` (python_jobs/observe/findings.py) carried by the
Dagster failure of the step that found it, and delivered by the run failure sensor to the sinks of
`vars.alerts` (the JSON-lines file and the webhook), with the owner and runbook link the same failure
gets from `rp pipeline`.

A step that finds an error-level problem (a dbt test, a stale source, an eval gate, a refused or
failed job) raises `alert_failure(alert)`: a `dagster.Failure` whose metadata holds the alert, and
which the retry policy does not retry. Only a busy warehouse or index (exit code 75) is left to the
retry policy (`RETRY`). Warnings do not fail a step; the step delivers them itself, as the pipeline does.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import dagster as dg

from python_jobs.common.errors import ExitCode, PipelineError
from python_jobs.common.settings import Settings
from python_jobs.index.embed import BudgetExceededError
from python_jobs.observe import findings
from python_jobs.observe.alerts import Alert, SinkResult, send

ALERT_METADATA = "alert"
# A locked warehouse or a busy index clears when the other process finishes: retried after 10, 20
# and 40 s (each give or take a random share, so two waiting runs do not collide again).
RETRY = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def alert_failure(alert: Alert) -> dg.Failure:
    """A step failure that carries `alert` to the run failure sensor; never retried."""
    metadata: dict[str, Any] = {ALERT_METADATA: dg.MetadataValue.json(alert.to_json()), "kind": alert.kind}
    if alert.owner or alert.email:
        metadata["owner"] = " ".join(p for p in (alert.owner, f"<{alert.email}>" if alert.email else None) if p)
    if alert.runbook:
        metadata["runbook"] = alert.runbook
    return dg.Failure(description=alert.render(), metadata=metadata, allow_retries=False)


@contextlib.contextmanager
def step_failures(step: str, settings: Settings) -> Iterator[None]:
    """Turn what a library function raises into the alert `rp pipeline` raises for the same step."""
    try:
        yield
    except dg.Failure:
        raise
    except PipelineError as exc:
        if exc.exit_code == ExitCode.BUSY:
            raise  # the retry policy's to retry: another process holds the warehouse or the index
        kind = "budget_exceeded" if isinstance(exc, BudgetExceededError) else "job_failed"
        raise alert_failure(findings.job_failure(step, exc, findings.Owners.load(settings), kind=kind)) from exc
    except Exception as exc:  # a bug: the alert carries the traceback, and retrying would not help
        error = RuntimeError("".join(traceback.format_exception_only(exc)).strip())
        alert = findings.job_failure(step, error, findings.Owners.load(settings))
        raise alert_failure(replace(alert, error=traceback.format_exc())) from exc


def alert_from_json(record: Mapping[str, Any]) -> Alert:
    """The Alert a step failure carried (Alert.to_json() as stored in the event log)."""
    fields = dict(record)
    fields["raised_at"] = datetime.fromisoformat(fields["raised_at"])
    fields["details"] = tuple(fields.get("details") or ())
    fields["where"] = dict(fields.get("where") or {})
    return Alert(**fields)


def alert_of_step_failure(event: dg.DagsterEvent, settings: Settings) -> Alert:
    """The alert a failed step carried, or for a failure that carried none (retries exhausted on a busy
    warehouse, an error in Dagster itself) the job failure alert the pipeline gives such an error."""
    data = event.step_failure_data
    user = data.user_failure_data if data else None
    carried = user.metadata.get(ALERT_METADATA) if user else None
    if carried is not None:
        return alert_from_json(carried.value)
    error = data.error if data else None
    name = error.cls_name if error else None
    message = error.message.strip() if error else "the step failed"
    kind = "warehouse_locked" if name == "WarehouseLockedError" else "job_failed"
    step = event.step_key or "run"
    return findings.job_failure(step, RuntimeError(message), findings.Owners.load(settings), kind=kind)


def deliver(alert: Alert, settings: Settings, log: Any = None) -> list[SinkResult]:
    """Send `alert` to every configured sink; a sink that fails is logged, never raised."""
    results = send(alert, settings.alerts)
    for result in results:
        if log is not None and not result.ok:
            log.warning(f"alert not delivered to {result.sink}: {result.detail}")
    return results
