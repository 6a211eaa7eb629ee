"""`rp watch`: keep the index up to date with the landing zone, a cycle per burst of changes.

A thread watches the landing zone (watchfiles: inotify on Linux) and notes when each file was first named
by an event; the main thread waits until the burst is over (no event for vars.watch.debounce_ms, or
vars.watch.max_delay_ms since its first event) and runs one cycle (python_jobs/watch/cycle.py) over
everything that changed. Events that arrive during a cycle go into the next one, so a burst of 1,000 files
is one cycle (or two, when it goes on past the first cycle's start), never 1,000.

What is expensive to start is started once: dbt runs in this process with its parsed project kept, and the
embedding model stays loaded (it is loaded right after the first cycle, so the first edit does not wait for
it). Between cycles nothing holds the warehouse: `rp ingest`, `rp build` or `rp report` run beside it.

One watcher per workspace: a lock file beside the warehouse (python_jobs/land/freshness.py); a second
watcher, or `rp pipeline`, exits 75 naming the one that holds it. SIGTERM or Ctrl-C: the cycle in progress
stops after its current step (a second signal stops it at once; every step is safe to kill) and the
watcher exits 0. Whatever it left, the next start picks up: it begins with a cycle over the whole zone.

Example:
    rp watch                 # until stopped; a line per cycle
    rp watch --json          # a JSON object per cycle, for logs
    rp watch --once          # one cycle and exit (cron, tests)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click

from python_jobs.common.errors import PipelineError, WarehouseLockedError
from python_jobs.common.output import Summary, terminal_safe
from python_jobs.common.settings import Settings
from python_jobs.index.encoders import Embedder
from python_jobs.land.freshness import tracking_lock
from python_jobs.observe import findings
from python_jobs.watch.cycle import Busy, CycleContext, CycleSummary, deliver, run_cycle

LANDING_SUFFIXES = (".md", ".csv", ".jsonl")
IGNORED_SUFFIXES = ("~", ".swp", ".swx", ".tmp", ".part", ".crdownload")
BUSY_RETRY_SECONDS = 2.0
SLA_CHECK_SECONDS = 30.0
DEFAULT_SLA_SECONDS = 300.0  # vars.ops.freshness_sla_seconds' default


@dataclass
class WatchOptions:
    once: bool = False
    as_json: bool = False
    progress: bool | None = None
    output: TextIO | None = None  # where lines go (stdout)
    embedder: Embedder | None = None  # a stand-in instead of the configured model (the benchmark's)
    reload: Callable[[], Settings] | None = None  # read the settings again each cycle
    warm_up: bool = True  # load the model before the first edit needs it (long-running mode)


@dataclass
class WatchSummary(Summary):
    """What a watcher did, for its last line (or the only one, with --once)."""

    cycles: list[CycleSummary] = field(default_factory=list)
    stopped_by: str | None = None

    @property
    def exit_code(self) -> int:
        last = self.cycles[-1].status if self.cycles else "no-op"
        return 1 if self.stopped_by is None and last in ("blocked", "failed") else 0

    def to_json(self) -> dict[str, Any]:
        if len(self.cycles) == 1 and self.stopped_by is None:
            return self.cycles[0].to_json()
        statuses: dict[str, int] = {}
        for cycle in self.cycles:
            statuses[cycle.status] = statuses.get(cycle.status, 0) + 1
        return {"event": "stopped", "cycles": len(self.cycles), "statuses": statuses, "stopped_by": self.stopped_by}

    def to_text(self) -> str:
        if len(self.cycles) == 1 and self.stopped_by is None:
            return self.cycles[0].to_text()
        statuses = ", ".join(f"{n} {status}" for status, n in sorted(self.to_json()["statuses"].items()))
        return f"watch stopped ({self.stopped_by or 'done'}) after {len(self.cycles)} cycle(s): {statuses or 'none'}"


class PendingFiles:
    """Paths named by file events since the last cycle took them, with when each was first named."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first: dict[str, datetime] = {}
        self.first_event = 0.0  # monotonic time of the burst's first and last events
        self.last_event = 0.0
        self.wake = threading.Event()

    def add(self, paths: list[str]) -> None:
        now, clock = datetime.now(UTC), time.monotonic()
        with self._lock:
            if not self._first:
                self.first_event = clock
            for path in paths:
                self._first.setdefault(path, now)
            self.last_event = clock
        self.wake.set()

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._first)

    def take(self) -> dict[str, datetime]:
        with self._lock:
            taken, self._first = self._first, {}
            return taken

    def put_back(self, seen: dict[str, datetime]) -> None:
        with self._lock:
            for path, when in seen.items():
                self._first[path] = min(when, self._first.get(path, when))
            self.first_event = self.last_event = time.monotonic()


def relevant(landing_dir: Path, path: str) -> str | None:
    """The landing-relative path of a file event worth a cycle (a landing file or a folder), else None."""
    try:
        rel = Path(path).relative_to(landing_dir)
    except ValueError:
        return None
    if any(part.startswith(".") for part in rel.parts) or rel.name.endswith(IGNORED_SUFFIXES):
        return None
    if rel.suffix and rel.suffix not in LANDING_SUFFIXES:
        return None
    return rel.as_posix()


def _watch_thread(landing_dir: Path, pending: PendingFiles, stop: threading.Event, ready: threading.Event) -> None:
    import watchfiles

    root = landing_dir.resolve()
    # Short steps: each event's time is known to ~50 ms; the debounce itself is the main thread's.
    for changes in watchfiles.watch(
        root, debounce=200, step=20, stop_event=stop, rust_timeout=500, yield_on_timeout=True, raise_interrupt=False
    ):
        ready.set()
        paths = [rel for _, path in changes if (rel := relevant(root, path)) is not None]
        if paths:
            pending.add(paths)


def watch(settings: Settings, options: WatchOptions | None = None) -> WatchSummary:
    """Watch the landing zone and keep the index current until stopped (or one cycle with `once`)."""
    options = options or WatchOptions()
    out = options.output or sys.stdout
    summary = WatchSummary()
    with tracking_lock(settings, "rp watch"):
        state = _StopState()
        ctx = CycleContext(
            settings=settings,
            output=sys.stderr if options.as_json else out,
            progress=options.progress,
            reload=options.reload,
            embedder=options.embedder,
            stop_requested=lambda: state.stopping,
        )
        if options.once:
            try:
                summary.cycles.append(run_cycle(ctx))
            except Busy as exc:
                raise WarehouseLockedError(str(exc)) from None
            return summary
        return _run(ctx, options, out, summary, state)


class _StopState:
    def __init__(self) -> None:
        self.stopping = False
        self.signal_name: str | None = None
        self.stop_event = threading.Event()


def _run(ctx: CycleContext, options: WatchOptions, out: TextIO, summary: WatchSummary, state: _StopState):
    settings = ctx.settings
    pending = PendingFiles()
    ready = threading.Event()

    def on_signal(signum, frame) -> None:
        if state.stopping:
            raise KeyboardInterrupt  # a second signal: stop now (every step is safe to kill)
        state.stopping, state.signal_name = True, signal.Signals(signum).name
        state.stop_event.set()
        pending.wake.set()
        _say(out, options, {"event": "stopping", "signal": state.signal_name}, f"{state.signal_name}: stopping")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    thread = threading.Thread(
        target=_watch_thread, args=(settings.landing_dir, pending, state.stop_event, ready), daemon=True
    )
    thread.start()
    ready.wait(10)
    try:
        _say(
            out,
            options,
            {"event": "watching", "landing_dir": str(settings.landing_dir), "pid": os.getpid()},
            f"watching {settings.landing_dir} (pid {os.getpid()}); SIGTERM or Ctrl-C stops",
        )
        alerted_sla: set[str] = set()
        _cycle(ctx, {}, pending, summary, options, out)  # whatever changed while no watcher ran
        if options.warm_up and not state.stopping:
            _warm_up(ctx, options, out)
        while not state.stopping:
            pending.wake.wait(SLA_CHECK_SECONDS)
            pending.wake.clear()
            if state.stopping:
                break
            if not pending:
                _check_sla(ctx, alerted_sla, out)
                continue
            _settle(pending, settings, state)
            if state.stopping:
                break
            _cycle(ctx, pending.take(), pending, summary, options, out)
            _check_sla(ctx, alerted_sla, out)
    finally:
        state.stop_event.set()
        thread.join(5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    summary.stopped_by = state.signal_name
    return summary


def _settle(pending: PendingFiles, settings: Settings, state: _StopState) -> None:
    """Wait until the burst is over: no event for debounce_ms, or max_delay_ms since its first one."""
    quiet, longest = settings.watch.debounce_ms / 1000, settings.watch.max_delay_ms / 1000
    while not state.stopping:
        now = time.monotonic()
        deadline = min(pending.last_event + quiet, pending.first_event + longest)
        if now >= deadline:
            return
        state.stop_event.wait(deadline - now)


def _cycle(ctx: CycleContext, seen, pending: PendingFiles, summary: WatchSummary, options, out: TextIO) -> None:
    try:
        cycle = run_cycle(ctx, seen)
    except Busy as exc:
        pending.put_back(seen)
        _say(
            out,
            options,
            {"event": "busy", "detail": str(exc)},
            f"busy: {exc} Retrying in {BUSY_RETRY_SECONDS:.0f} s.",
        )
        threading.Timer(BUSY_RETRY_SECONDS, pending.wake.set).start()
        return
    except Exception as exc:  # a bug or a broken environment: say so, and keep watching; the changes stay open
        alert = findings.job_failure("watch", exc, findings.Owners.load(ctx.settings))
        deliver(alert, ctx.settings, out)
        _say(out, options, {"event": "error", "detail": alert.summary}, f"cycle failed: {alert.summary}")
        return
    summary.cycles.append(cycle)
    _say(out, options, cycle.to_json(), cycle.to_text())


def _warm_up(ctx: CycleContext, options: WatchOptions, out: TextIO) -> None:
    """Load the model and parse the dbt project now, so the first edit waits for neither."""
    clock = time.perf_counter()
    if ctx.session is not None:
        try:
            ctx.session.parse()
        except PipelineError as exc:  # the next build says it again, with its alert
            click.echo(terminal_safe(f"warning: {exc}"), file=sys.stderr)
    model = ctx.model()
    model.encode(["warm up"])
    seconds = time.perf_counter() - clock
    _say(out, options, {"event": "model_loaded", "seconds": round(seconds, 3)}, f"model loaded in {seconds:.1f} s")


def _check_sla(ctx: CycleContext, alerted: set[str], out: TextIO) -> None:
    """An alert when changes have waited longer than vars.ops.freshness_sla_seconds (once per change). The
    watcher holds the workspace, so the open changes its last cycle left are all there are: no warehouse read."""
    settings = ctx.settings
    sla = float(settings.vars.get("ops", {}).get("freshness_sla_seconds", DEFAULT_SLA_SECONDS))
    now = datetime.now(UTC)
    overdue = [
        change | {"waiting_seconds": (now - change["changed_at"]).total_seconds()}
        for change in ctx.open_changes
        if str(change["event_id"]) not in alerted and (now - change["changed_at"]).total_seconds() > sla
    ]
    if overdue:
        overdue.sort(key=lambda change: -change["waiting_seconds"])
        alert = findings.open_changes_alert(overdue, sla, findings.Owners.load(settings))
        alerted.update(str(change["event_id"]) for change in overdue)
        deliver(alert, settings, out)


def _say(out: TextIO, options: WatchOptions, record: dict[str, Any], text: str) -> None:
    if options.as_json:
        out.write(json.dumps(record, default=str, sort_keys=True) + "\n")
    else:
        click.echo(terminal_safe(text), file=out)
    out.flush()
