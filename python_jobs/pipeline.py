"""`make pipeline`: ingest, build, freshness, embed, eval and report, stopping at the first failure.

Each step runs in this process and is judged by what it recorded, not only its exit code:

    ingest     the ingest job                    error: it failed (a malformed file, a lock, ...)
    build      dbt build, results recorded       error: a model errored or a test failed at severity error
               (of what changed since the last successful build, or nothing: docs/freshness.md)
    freshness  dbt source freshness              error: a source is past error_after; warn: past warn_after
    embed      the incremental embedding job     error: quality gate, budget, or any failure
    eval       the seeded questions, with gates  error: a gate failed or a metric regressed
    report     ops marts and the dashboard       error: the index is past its SLA; warn: chunks
                                                 pending, the weekly budget spent, flaky tests

At the first error the data steps stop and one alert is printed, naming the failing node or
metric, its owner and email, the error and where to look; the report is still written, so the
dashboard shows the failure. Every alert, warnings too, goes to the sinks in `vars.alerts` (a
JSON-lines file, and a webhook if configured). The exit code is the failing step's.

Every landing-file change the run lands gets a row in ops.freshness_events, as `rp watch` writes them
(python_jobs/land/freshness.py), so the dashboard compares batch and watch freshness. A run holds the
workspace lock a watcher holds: while `rp watch` keeps a workspace fresh, `rp pipeline` exits 75.

Example:
    rp pipeline --full-refresh
    rp pipeline --json > summary.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import click

from python_jobs.common.errors import PipelineError, WarehouseLockedError
from python_jobs.common.output import Summary
from python_jobs.common.settings import Settings
from python_jobs.evaluate import run as evaluation
from python_jobs.index import embed
from python_jobs.index.gate import QualityGateError
from python_jobs.index.store import VectorIndex
from python_jobs.land import ingest
from python_jobs.land.freshness import FreshnessTracker, attempted_changes, publish_times, tracking_lock
from python_jobs.observe import findings, report
from python_jobs.observe.alerts import Alert, send
from python_jobs.observe.findings import Owners
from python_jobs.transform import build_state
from python_jobs.transform.dbt import run_dbt

STEPS = ("ingest", "build", "freshness", "embed", "eval", "report")
# What the report step alerts on; the other kinds were raised by the step they belong to.
REPORT_KINDS = frozenset({"index_stale", "budget_exceeded", "flaky_test", "freshness_sla"})


@dataclass
class StepResult:
    step: str
    status: str = "skipped"  # ok, warn, failed or skipped
    exit_code: int = 0
    seconds: float = 0.0
    alerts: list[Alert] = field(default_factory=list)
    detail: str = ""  # e.g. why the build was skipped

    def fail(self, alert: Alert, exit_code: int) -> StepResult:
        self.status, self.exit_code = "failed", exit_code or 1
        self.alerts.append(alert)
        return self


@dataclass
class PipelineOptions:
    full_refresh: bool = False
    output: TextIO | None = None  # where the steps print (stderr when stdout is --json)


@dataclass
class PipelineSummary(Summary):
    steps: list[StepResult] = field(default_factory=list)
    failed_step: str | None = None
    report_path: str | None = None
    undelivered: list[str] = field(default_factory=list)  # sink warnings
    freshness: FreshnessTracker | None = field(default=None, repr=False)  # this run's changes (ops.freshness_events)
    build_plan: build_state.BuildPlan | None = field(default=None, repr=False)

    @property
    def exit_code(self) -> int:
        return next((s.exit_code for s in self.steps if s.status == "failed"), 0)

    def to_text(self) -> str:
        return render(self)

    def to_json(self) -> dict[str, Any]:
        return summary_json(self)


def run_pipeline(settings: Settings, options: PipelineOptions | None = None) -> PipelineSummary:
    options = options or PipelineOptions()
    out = options.output or sys.stdout
    summary = PipelineSummary()
    started = datetime.now(UTC)
    run_id = f"pipeline-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    summary.freshness = FreshnessTracker(settings, "pipeline", run_id, started)
    with tracking_lock(settings, "rp pipeline"):
        _run_steps(settings, options, summary, out)
    return summary


def _run_steps(settings: Settings, options: PipelineOptions, summary: PipelineSummary, out: TextIO) -> None:
    for name in STEPS:
        result = StepResult(name)
        summary.steps.append(result)
        if summary.failed_step and name != "report":
            continue  # the report still runs: the dashboard shows the failure
        print(f"\n== {name} ==", file=out, flush=True)
        clock = time.perf_counter()
        with contextlib.redirect_stdout(out):
            _run_step(name, settings, options, result, summary)
        result.seconds = time.perf_counter() - clock
        for alert in result.alerts:
            _deliver(alert, settings, summary, out)
        if result.status == "failed" and not summary.failed_step:
            summary.failed_step = name


def _run_step(name: str, settings: Settings, options: PipelineOptions, result: StepResult, summary) -> None:
    try:
        STEP_FUNCTIONS[name](settings, options, result, summary)
        if result.status == "skipped":
            result.status = "warn" if result.alerts else "ok"
    except WarehouseLockedError as exc:
        result.fail(findings.job_failure(name, exc, Owners.load(settings), kind="warehouse_locked"), exc.exit_code)
    except embed.BudgetExceededError as exc:
        result.fail(findings.job_failure(name, exc, Owners.load(settings), kind="budget_exceeded"), exc.exit_code)
    except PipelineError as exc:
        result.fail(findings.job_failure(name, exc, Owners.load(settings)), exc.exit_code)


def _ingest(settings: Settings, options: PipelineOptions, result: StepResult, summary) -> None:
    tracker = summary.freshness
    tracker.begin()
    try:
        ran = ingest.ingest(settings, full_refresh=options.full_refresh)
    except PipelineError as exc:
        tracker.ingest_failed(exc, attempted_changes(settings))
        raise
    print(ran.to_text())
    tracker.ingested(ran.run_id)


def _build(settings: Settings, options: PipelineOptions, result: StepResult, summary) -> None:
    """`dbt build` of what changed since the last successful build (python_jobs/transform/build_state.py):
    nothing, the landed sources and everything downstream (the ops marts aside: the report refreshes them),
    or everything."""
    plan = summary.build_plan = build_state.plan_build(settings)
    if plan.action == "skip":
        result.detail = f"skipped: {plan.reason} (docs/freshness.md)"
        print(f"dbt build {result.detail}")
        last = plan.state.get(build_state.BUILD)
        summary.freshness.built(last[2] if last and last[2] else datetime.now(UTC))
        return
    result.detail = plan.describe()
    captured = _dbt_step("build", plan.dbt_args() if plan.action == "select" else ["build"], settings, options, result)
    if result.status == "failed":
        alert = result.alerts[0]
        if alert.kind in ("dbt_test_failed", "dbt_model_error"):
            summary.freshness.blocked(f"dbt build: {alert.summary}")
        else:
            summary.freshness.failed(f"dbt build: {alert.summary}")
        return
    invocation_id = captured.invocation["invocation_id"] if captured else None
    if invocation_id:
        build_state.record_build(settings, plan, invocation_id)
        summary.build_plan = dataclasses.replace(plan, last_build=invocation_id, embed_due=True)
    summary.freshness.built(datetime.now(UTC))


def _freshness(settings: Settings, options: PipelineOptions, result: StepResult, summary) -> None:
    _dbt_step("freshness", ["source", "freshness"], settings, options, result)


def _dbt_step(step: str, args: list[str], settings: Settings, options: PipelineOptions, result: StepResult):
    ran = run_dbt(settings, args, output=options.output or sys.stdout)
    captured = ran.captured
    invocation_id = captured.invocation["invocation_id"] if captured else None
    if captured and captured.failures:
        result.fail(findings.step_alert(step, captured.failures, invocation_id), ran.exit_code)
    elif ran.exit_code != 0:  # no node failed: dbt itself did (a compile error, a crash)
        error = PipelineError(
            f"dbt {' '.join(args)} exited {ran.exit_code} with no failing node recorded; "
            f"its log is {settings.dbt_log_dir / 'dbt.log'}"
        )
        result.fail(findings.job_failure(step, error, Owners.load(settings)), ran.exit_code)
    stale = [row for row in (captured.freshness if captured else []) if row["status"] == "warn"]
    if stale:
        result.alerts.append(findings.step_alert(step, stale, invocation_id, level="warn"))
    return captured


def _embed(settings: Settings, options: PipelineOptions, result: StepResult, summary) -> None:
    tracker = summary.freshness
    started = datetime.now(UTC)
    try:
        ran = embed.embed(settings)
    except QualityGateError as exc:
        tracker.blocked(str(exc).strip().splitlines()[0])
        raise
    except PipelineError as exc:
        tracker.failed(str(exc).strip().splitlines()[0])
        raise
    print(ran.to_text())
    pointer = VectorIndex(settings.index_dir).live()
    busy = ran.plan_seconds + ran.embed_seconds + ran.write_seconds
    embedded_at, published_at = publish_times(started, datetime.now(UTC), busy, pointer and pointer.published_at)
    if summary.build_plan is not None:
        build_state.record_published(settings, summary.build_plan.last_build)
    tracker.published(ran.index_version, embedded_at, published_at)


def _eval(settings: Settings, options: PipelineOptions, result: StepResult, summary) -> None:
    ran = evaluation.run_eval(settings)
    print(ran.to_text())
    if not ran.passed:
        result.fail(findings.eval_failure("eval", ran, ran.run_id, Owners.load(settings)), evaluation.GATE_FAILED_EXIT)


def _report(settings: Settings, options: PipelineOptions, result: StepResult, summary) -> None:
    ran = report.build_report(settings)
    summary.report_path = ran.path
    print(ran.to_text())
    found = [a for a in ran.findings if a.kind in REPORT_KINDS]
    errors = [a for a in found if a.level == "error"]
    result.alerts += [a for a in found if a.level != "error"]
    if errors:
        result.fail(errors[0], 1)
        result.alerts += errors[1:]


STEP_FUNCTIONS: dict[str, Callable[..., None]] = {
    "ingest": _ingest,
    "build": _build,
    "freshness": _freshness,
    "embed": _embed,
    "eval": _eval,
    "report": _report,
}


def _deliver(alert: Alert, settings: Settings, summary: PipelineSummary, out: TextIO) -> None:
    click.secho(alert.render(), fg="red" if alert.level == "error" else "yellow", err=True)
    for sink in send(alert, settings.alerts):
        if not sink.ok:
            summary.undelivered.append(f"{sink.sink}: {sink.detail}")
            click.secho(f"warning: alert not delivered to {sink.sink}: {sink.detail}", fg="yellow", err=True)


def render(summary: PipelineSummary) -> str:
    lines = ["", "Pipeline:"]
    for step in summary.steps:
        alerts = f", {len(step.alerts)} alert(s)" if step.alerts else ""
        timing = f"{step.seconds:6.1f} s" if step.status != "skipped" else "       "
        lines.append(f"  {step.step:<10} {step.status:<8} {timing}{alerts}")
    if summary.failed_step:
        lines.append(f"Stopped at {summary.failed_step}: see the alert above.")
    if summary.report_path:
        lines.append(f"Dashboard: {summary.report_path}")
    return "\n".join(lines)


def summary_json(summary: PipelineSummary) -> dict[str, Any]:
    return {
        "exit_code": summary.exit_code,
        "failed_step": summary.failed_step,
        "report_path": summary.report_path,
        "undelivered_alerts": summary.undelivered,
        "steps": [
            {
                "step": s.step,
                "status": s.status,
                "detail": s.detail,
                "exit_code": s.exit_code,
                "seconds": round(s.seconds, 3),
                "alerts": [a.to_json() for a in s.alerts],
            }
            for s in summary.steps
        ],
    }
