"""One watch cycle: land what changed, build what it affects, embed and publish, and record every change.

    ingest    the ingest job (incremental by its manifest: only new, changed and removed files are read)
    build     `plan_build` (python_jobs/transform/build_state.py) decides: nothing, the affected sources
              and everything downstream with their tests (`source:docs.documents+`), or everything; the
              build runs in this process (DbtSession: parsed once, the DuckDB file released after it)
    embed     the embedding job with the model this process keeps loaded; its quality gate checks the
              chunks the build certified, and it publishes the new index version (live.json)

An error-level failure stops the cycle there: a failing test (or a refused quality gate) blocks the batch,
an alert goes to the sinks of vars.alerts with owner and runbook, and the index keeps serving the last good
version; the next cycle builds the same sources again, so the edit that fixes them goes through. A busy
warehouse or index is retried by the next cycle. Between steps the cycle checks whether it was asked to
stop: it then leaves the rest for the next run, its changes still open in ops.freshness_events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import click

from python_jobs.common.errors import ExitCode, PipelineError
from python_jobs.common.failpoints import failpoint
from python_jobs.common.output import Summary, terminal_safe
from python_jobs.common.settings import Settings
from python_jobs.index import embed as embedding
from python_jobs.index.encoders import Embedder, load_embedder
from python_jobs.index.gate import QualityGateError
from python_jobs.index.store import MODEL_CACHE_DIR, VectorIndex
from python_jobs.land.freshness import FreshnessTracker, attempted_changes, publish_times
from python_jobs.land.ingest import ingest
from python_jobs.observe import findings
from python_jobs.observe.alerts import Alert, send
from python_jobs.transform import build_state
from python_jobs.transform.dbt import DbtSession


class Busy(Exception):
    """The warehouse or the index is held by another process: the cycle is tried again shortly."""


@dataclass
class CycleContext:
    """What a watcher keeps between cycles: the settings, dbt in this process, the loaded model."""

    settings: Settings
    output: TextIO
    progress: bool | None = False
    reload: Callable[[], Settings] | None = None  # settings read again each cycle (the CLI's); None: fixed
    embedder: Embedder | None = None  # the model, loaded once; a stand-in for benchmarks
    stop_requested: Callable[[], bool] = lambda: False
    session: DbtSession | None = None
    open_changes: list[dict] = field(default_factory=list)  # not yet searchable after the last cycle
    _embedder_key: tuple | None = None
    cycles: int = 0

    def refresh(self) -> Settings:
        if self.reload is not None:
            self.settings = self.reload()
        if self.session is None:
            self.session = DbtSession(self.settings, self.output)
        self.session.settings = self.settings
        return self.settings

    def model(self) -> Embedder:
        """The embedding model, loaded once and kept while its settings stay the same."""
        settings = self.settings
        key = (settings.retrieval.embedding_model, settings.embedding)
        if self.embedder is None or (self._embedder_key is not None and key != self._embedder_key):
            cache = settings.index_dir.scratch / MODEL_CACHE_DIR
            self.embedder = load_embedder(settings.retrieval.embedding_model, settings.embedding, cache)
            self._embedder_key = key
        return self.embedder


@dataclass
class CycleSummary(Summary):
    cycle_id: str
    started_at: datetime
    status: str = "running"  # published, no-op, blocked, failed, busy, abandoned
    files_seen: int = 0  # landing-zone events that triggered it
    changes: dict[str, int] = field(default_factory=dict)  # added, changed, removed, quarantined
    build: str = ""  # what plan_build decided
    nodes: int = 0  # dbt nodes the build ran
    index_version: int | None = None
    texts_embedded: int = 0
    chunks_changed: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    seconds: float = 0.0
    detail: str = ""
    alerts: list[Alert] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "cycle",
            "cycle_id": self.cycle_id,
            "started_at": self.started_at.isoformat(),
            "status": self.status,
            "files_seen": self.files_seen,
            "changes": self.changes,
            "build": self.build,
            "nodes": self.nodes,
            "index_version": self.index_version,
            "texts_embedded": self.texts_embedded,
            "chunks_changed": self.chunks_changed,
            "timings": {step: round(seconds, 3) for step, seconds in self.timings.items()},
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
            "alerts": [alert.to_json() for alert in self.alerts],
        }

    def to_text(self) -> str:
        changed = ", ".join(f"{n} {kind}" for kind, n in self.changes.items() if n) or "no changes"
        steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in self.timings.items())
        where = f" -> index version {self.index_version}" if self.status == "published" else ""
        embedded = f", {self.texts_embedded} texts embedded" if self.texts_embedded else ""
        line = (
            f"[{self.started_at.astimezone():%H:%M:%S}] cycle {self.cycle_id}: {self.status}{where} in "
            f"{self.seconds:.1f} s ({changed}; {steps}{embedded})"
        )
        details = [f"  build: {self.build}"] if self.build and self.status != "no-op" else []
        if self.detail:
            details.append(f"  {self.detail}")
        return "\n".join([line, *details])


def run_cycle(ctx: CycleContext, seen: Mapping[str, datetime] | None = None) -> CycleSummary:
    """One cycle over whatever the landing zone holds now; `seen` maps paths to when a file event named them.

    Raises Busy when the warehouse or the index is held by another process (nothing is lost: the changes
    stay open and the next cycle picks them up)."""
    started = datetime.now(UTC)
    clock = time.perf_counter()
    summary = CycleSummary(f"watch-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", started, files_seen=len(seen or {}))
    try:
        settings = ctx.refresh()
    except PipelineError as exc:  # a setting broke while watching: say so, keep watching
        _stop(ctx, summary, "failed", findings.job_failure("watch", exc, _owners(ctx.settings)))
        return _finish(summary, clock)
    ctx.cycles += 1
    tracker = FreshnessTracker(settings, "watch", summary.cycle_id, started)
    try:
        with _busy_is_retried():
            tracker.begin()
            _ingest(ctx, summary, tracker, seen or {})
            if summary.status != "running" or _abandoned(ctx, summary):
                return _finish(summary, clock)
            failpoint("watch_after_ingest")
            plan = _build(ctx, summary, tracker)
            if summary.status != "running" or _abandoned(ctx, summary):
                return _finish(summary, clock)
            failpoint("watch_after_build")
            _embed(ctx, summary, tracker, plan)
    except Busy:
        summary.status, summary.detail = "busy", "the warehouse or the index is busy: tried again shortly"
        raise
    finally:
        summary.seconds = time.perf_counter() - clock
        ctx.open_changes = tracker.open_changes()
    return _finish(summary, clock)


def _ingest(ctx: CycleContext, summary: CycleSummary, tracker: FreshnessTracker, seen) -> None:
    settings = ctx.settings
    step = time.perf_counter()
    try:
        ran = ingest(settings, quiet=True)
    except PipelineError as exc:
        if exc.exit_code == ExitCode.BUSY:
            raise
        attempted = attempted_changes(settings)
        tracker.ingest_failed(exc, attempted)
        summary.changes = {"failed": len(attempted)}
        _stop(ctx, summary, "failed", findings.job_failure("ingest", exc, _owners(settings)))
        return
    changes = tracker.ingested(ran.run_id, seen)
    summary.timings["ingest"] = time.perf_counter() - step
    counts = {"added": 0, "changed": 0, "removed": 0, "quarantined": 0}
    for event in changes:
        counts["quarantined" if event["outcome"] == "quarantined" else event["change"]] += 1
    summary.changes = counts
    for warning in ran.warnings[:5]:
        click.echo(terminal_safe(f"  ingest warning: {warning}"), file=ctx.output)


def _build(ctx: CycleContext, summary: CycleSummary, tracker: FreshnessTracker) -> build_state.BuildPlan:
    settings = ctx.settings
    step = time.perf_counter()
    plan = build_state.plan_build(settings)
    summary.build = plan.describe()
    if plan.action == "skip":
        last = plan.state.get(build_state.BUILD)
        tracker.built(last[2] if last and last[2] else datetime.now(UTC))
        summary.timings["plan"] = time.perf_counter() - step
        return plan
    assert ctx.session is not None
    ran = ctx.session.invoke(plan.dbt_args())
    summary.timings["build"] = time.perf_counter() - step
    captured = ran.captured
    summary.nodes = len(captured.nodes) if captured else 0
    invocation_id = captured.invocation["invocation_id"] if captured else None
    if captured and captured.failures:
        alert = findings.step_alert("build", captured.failures, invocation_id)
        tracker.blocked(f"dbt build {invocation_id}: {alert.summary}")
        _stop(ctx, summary, "blocked", alert)
    elif ran.exit_code != 0 or invocation_id is None:
        error = PipelineError(
            f"dbt {' '.join(plan.dbt_args())} exited {ran.exit_code} with no failing node recorded; "
            f"its log is {settings.dbt_log_dir / 'dbt.log'}"
        )
        tracker.failed(str(error))
        _stop(ctx, summary, "failed", findings.job_failure("build", error, _owners(settings)))
    else:
        build_state.record_build(settings, plan, invocation_id)
        tracker.built(datetime.now(UTC))
        plan = dataclasses.replace(plan, last_build=invocation_id, embed_due=True)
    return plan


def _embed(ctx: CycleContext, summary: CycleSummary, tracker: FreshnessTracker, plan) -> None:
    settings = ctx.settings
    live = VectorIndex(settings.index_dir).live()
    if not plan.embed_due and not tracker.pending and live is not None:
        summary.status, summary.index_version = "no-op", live.version
        return
    step = time.perf_counter()
    started = datetime.now(UTC)
    try:
        ran = embedding.embed(settings, embedding.EmbedOptions(progress=ctx.progress), embedder=ctx.model())
    except QualityGateError as exc:
        tracker.blocked(_first_line(exc))
        _stop(ctx, summary, "blocked", findings.job_failure("embed", exc, _owners(settings)))
        return
    except embedding.BudgetExceededError as exc:
        tracker.failed(_first_line(exc))
        alert = findings.job_failure("embed", exc, _owners(settings), kind="budget_exceeded")
        _stop(ctx, summary, "failed", alert)
        return
    except PipelineError as exc:
        if exc.exit_code == ExitCode.BUSY:
            raise
        tracker.failed(_first_line(exc))
        _stop(ctx, summary, "failed", findings.job_failure("embed", exc, _owners(settings)))
        return
    summary.timings["embed"] = time.perf_counter() - step
    pointer = VectorIndex(settings.index_dir).live()
    busy = ran.plan_seconds + ran.embed_seconds + ran.write_seconds
    embedded_at, published_at = publish_times(started, datetime.now(UTC), busy, pointer and pointer.published_at)
    build_state.record_published(settings, plan.last_build)
    tracker.published(ran.index_version, embedded_at, published_at)
    summary.status, summary.index_version = "published", ran.index_version
    summary.texts_embedded = ran.texts_embedded
    summary.chunks_changed = sum(ran.counts.get(kind, 0) for kind in ("new", "text_changed", "metadata_changed"))
    summary.chunks_changed += ran.counts.get("deleted", 0)
    if not any(summary.changes.values()) and not summary.chunks_changed and not plan.embed_due:
        summary.status = "no-op"


def _stop(ctx: CycleContext, summary: CycleSummary, status: str, alert: Alert) -> CycleSummary:
    summary.status, summary.detail = status, alert.summary
    summary.alerts.append(alert)
    deliver(alert, ctx.settings, ctx.output)
    return summary


def deliver(alert: Alert, settings: Settings, output: TextIO) -> None:
    """The alert on the terminal and to the sinks of vars.alerts (the JSON-lines file, the webhook)."""
    click.secho(terminal_safe(alert.render()), fg="red" if alert.level == "error" else "yellow", err=True)
    for sink in send(alert, settings.alerts):
        if not sink.ok:
            click.secho(f"warning: alert not delivered to {sink.sink}: {sink.detail}", fg="yellow", err=True)


def _abandoned(ctx: CycleContext, summary: CycleSummary) -> bool:
    if ctx.stop_requested():
        summary.status = "abandoned"
        summary.detail = "stopped between steps: the next run picks the changes up where this one left them"
        return True
    return False


def _finish(summary: CycleSummary, clock: float) -> CycleSummary:
    if summary.status == "running":
        summary.status = "no-op"
    summary.seconds = time.perf_counter() - clock
    return summary


@contextlib.contextmanager
def _busy_is_retried():
    try:
        yield
    except PipelineError as exc:
        if exc.exit_code == ExitCode.BUSY:
            raise Busy(str(exc)) from None
        raise


def _owners(settings: Settings) -> findings.Owners:
    return findings.Owners.load(settings)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
