"""Alerts: what failed, whose it is and where to look, recorded and sent where people see it.

A step that fails (a dbt test or model, a stale source, an eval gate, a job, a budget) builds an
`Alert` and calls `send(alert, settings.alerts)`. The alert is appended to a JSON-lines file first,
the record of truth that `read_alerts` reads back, and then POSTed as JSON to a webhook if one is
configured. A webhook that is down costs a warning in the result, never the alert.

Configure it under `vars.alerts` in dbt_project.yml (python_jobs/common/settings.py reads it):

    alerts:
      jsonl_path: data/alerts/alerts.jsonl  # RP_ALERTS_FILE overrides it
      webhook:
        url: ""               # RP_ALERT_WEBHOOK_URL overrides it; empty means no webhook
        timeout_seconds: 5    # per attempt
        retries: 3            # extra attempts on connection errors, timeouts, 429 and 5xx
        backoff_seconds: 0.5  # urllib3's backoff factor
        deadline_seconds: 30  # the whole delivery, every attempt and wait included
        headers: {}           # e.g. {Authorization: "Bearer ${RP_ALERT_TOKEN}"}, read from the environment
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError, ReadTimeoutError
from urllib3.util import Retry

from python_jobs.common.output import terminal_safe
from python_jobs.common.settings import AlertSettings, WebhookSettings

__all__ = ["Alert", "AlertSettings", "JsonlSink", "SinkResult", "WebhookSink", "read_alerts", "send"]

LEVELS = ("error", "warn")
RETRY_STATUSES = (429, 500, 502, 503, 504)
ERROR_LINES_SHOWN = 6  # render() shows the start of a long error; the JSON keeps all of it
DETAILS_NAMED = 5


@dataclass(frozen=True)
class Alert:
    level: str  # "error" or "warn"
    kind: str  # dbt_test_failed, dbt_model_error, source_stale, eval_gate_failed, eval_regression, ...
    step: str  # the pipeline step that raised it, e.g. "build"
    subject: str  # the failing node's unique id, or the metric, e.g. "hybrid ndcg@10"
    summary: str  # one line
    error: str = ""
    owner: str | None = None
    email: str | None = None
    where: Mapping[str, Any] = field(default_factory=dict)  # compiled_sql, failing_rows_table, question_ids, log
    runbook: str | None = None  # e.g. "docs/runbook.md#failing-data-test"
    run_id: str | None = None
    details: tuple[Mapping[str, Any], ...] = ()  # the step's other failures, with the same kind of keys
    raised_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    alert_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # lets a receiver drop a retried duplicate

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"Alert level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        object.__setattr__(self, "details", tuple(self.details))
        raised_at = self.raised_at if self.raised_at.tzinfo else self.raised_at.replace(tzinfo=UTC)
        object.__setattr__(self, "raised_at", raised_at.astimezone(UTC))

    def to_json(self) -> dict[str, Any]:
        """The alert as plain JSON types; paths and timestamps in `where` or `details` become strings."""
        record = asdict(self)
        return json.loads(json.dumps(record, default=_json_default))

    def render(self) -> str:
        """A compact block for a terminal: what failed, who owns it, the error and where to look. Values come
        from the data (failing rows, error messages), so control characters are shown as escapes."""
        owner = " ".join(part for part in (self.owner, f"<{self.email}>" if self.email else None) if part)
        lines = [f"ALERT [{self.level}] {self.step}: {self.summary}", _line("owner", owner or "(none set)")]
        if self.error.strip():
            first, *rest = self.error.strip().splitlines()
            lines.append(_line("error", first))
            lines += [" " * 11 + text for text in rest[: ERROR_LINES_SHOWN - 1]]
            if len(rest) >= ERROR_LINES_SHOWN:
                lines.append(" " * 11 + f"... ({len(rest) - ERROR_LINES_SHOWN + 1} more lines)")
        if self.where:
            lines.append(_line("look", "  ".join(f"{key}={_flat(value)}" for key, value in self.where.items())))
        if self.runbook:
            lines.append(_line("runbook", self.runbook))
        if self.run_id:
            lines.append(_line("run", self.run_id))
        if self.details:
            names = [str(d.get("subject") or d.get("summary") or "?") for d in self.details]
            named = ", ".join(names[:DETAILS_NAMED])
            if len(names) > DETAILS_NAMED:
                named += f", and {len(names) - DETAILS_NAMED} more"
            lines.append(f"  + {len(names)} more failure{'s' if len(names) > 1 else ''} in this step: {named}")
        return terminal_safe("\n".join(lines))


def _line(label: str, value: str) -> str:
    return f"  {label + ':':<8} {value}"


def _flat(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


@dataclass(frozen=True)
class SinkResult:
    sink: str  # "jsonl" or "webhook"
    ok: bool
    detail: str  # what happened, for the warning a caller prints when ok is False
    attempts: int | None = None  # None when no attempt could be counted


class JsonlSink:
    """Appends alerts to a JSON-lines file, one whole line per alert, flushed to disk before returning."""

    name = "jsonl"

    def __init__(self, path: Path):
        self.path = Path(path)

    def deliver(self, alert: Alert) -> SinkResult:
        line = json.dumps(alert.to_json()).encode("utf-8") + b"\n"  # ASCII: no character splits a line
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if _ends_mid_line(self.path):
                line = b"\n" + line  # an earlier writer crashed mid-line: start this alert on a line of its own
            with open(self.path, "ab") as file:
                # One write of a whole line in append mode: concurrent writers' lines do not interleave.
                file.write(line)
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            return SinkResult(self.name, False, f"could not append the alert to {self.path}: {exc}", 1)
        return SinkResult(self.name, True, f"appended to {self.path}", 1)


def _ends_mid_line(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            if file.seek(0, os.SEEK_END) == 0:
                return False
            file.seek(-1, os.SEEK_END)
            return file.read(1) != b"\n"
    except FileNotFoundError:
        return False


def read_alerts(path: Path) -> list[dict[str, Any]]:
    """Every alert in a JSON-lines file, oldest first ([] if there is none yet).

    A line that is not a whole JSON object (a writer crashed half way through it) is skipped
    with a warning naming the file and line, so one bad line never hides the others.
    """
    path = Path(path)
    if not path.exists():
        return []
    alerts = []
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                damage = "damaged line" if raw.endswith(b"\n") else "truncated last line"
                warnings.warn(f"{path}:{number}: skipped a {damage} that is not a whole alert", stacklevel=2)
                continue
            alerts.append(record)
    return alerts


class _CountingRetry(Retry):
    """urllib3's Retry, but the error it gives up with says how many attempts were made."""

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        try:
            return super().increment(*args, **kwargs)
        except MaxRetryError as exc:
            exc.attempts = len(self.history) + 1  # type: ignore[attr-defined]
            raise


class _Delivery:
    """The attempts of one delivery, run in a worker thread so that the caller stops waiting at the deadline.

    A timeout bounds each read from the socket, not an attempt: a server that sends a byte every second
    never hits a 5 s timeout. So at the deadline the connections this delivery opened are shut down, which
    ends a read in progress at once, and no further attempt (or backoff wait) is made.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.connections: list[Any] = []
        self.lock = threading.Lock()
        self.result: SinkResult | None = None

    def cancel(self) -> None:
        self.cancelled.set()
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            sock = getattr(connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def adapter(self, retry: Retry) -> HTTPAdapter:
        return _DeliveryAdapter(self, max_retries=retry)

    def pool_class(self, base: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
        """`base` with connections that register with this delivery, and refuse to open once it is over."""
        delivery = self

        class Connection(base.ConnectionCls):  # type: ignore[name-defined, misc]
            def connect(self) -> None:
                if delivery.cancelled.is_set():
                    raise ConnectionAbortedError("the delivery's deadline has passed")
                with delivery.lock:
                    delivery.connections.append(self)
                super().connect()

        return type(base.__name__, (base,), {"ConnectionCls": Connection})

    def retry_class(self) -> type[_CountingRetry]:
        cancelled = self.cancelled

        class DeliveryRetry(_CountingRetry):
            def increment(self, *args: Any, **kwargs: Any) -> Retry:
                retry = super().increment(*args, **kwargs)
                if cancelled.is_set():  # the deadline passed: no further attempt
                    error = MaxRetryError(kwargs.get("_pool"), str(kwargs.get("url") or ""), kwargs.get("error"))
                    error.attempts = len(retry.history)  # type: ignore[attr-defined]
                    raise error
                return retry

            def sleep(self, response: Any = None) -> None:
                cancelled.wait(self.get_backoff_time())  # a backoff wait ends at the deadline too

        return DeliveryRetry


class _DeliveryAdapter(HTTPAdapter):
    def __init__(self, delivery: _Delivery, **kwargs: Any):
        self._pools = {
            "http": delivery.pool_class(HTTPConnectionPool),
            "https": delivery.pool_class(HTTPSConnectionPool),
        }
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools


class WebhookSink:
    """POSTs an alert as JSON, retrying what a retry can fix, within a deadline for the whole delivery.
    It reports in its result; it never raises."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        headers: Mapping[str, str] | None = None,
        deadline: float = 30.0,
    ):
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.headers = dict(headers or {})
        self.deadline = deadline
        parts = urlsplit(url)
        self.host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)  # no path: it may be secret

    @classmethod
    def from_settings(cls, webhook: WebhookSettings) -> WebhookSink:
        return cls(
            webhook.url,
            webhook.timeout_seconds,
            webhook.retries,
            webhook.backoff_seconds,
            webhook.headers,
            webhook.deadline_seconds,
        )

    def deliver(self, alert: Alert) -> SinkResult:
        delivery = _Delivery()
        worker = threading.Thread(target=self._attempts, args=(alert, delivery), name="alert-webhook", daemon=True)
        worker.start()
        worker.join(self.deadline)
        if delivery.result is not None:
            return delivery.result
        delivery.cancel()
        worker.join(1.0)  # the shut-down connection ends its read at once; a daemon thread never holds up exit
        return SinkResult(
            self.name,
            False,
            f"not delivered to {self.host}: no complete answer within deadline_seconds={self.deadline:g} "
            "(a slow or stalled webhook; the alert is in the alerts file)",
        )

    def _attempts(self, alert: Alert, delivery: _Delivery) -> None:
        delivery.result = self._post(alert, delivery)

    def _post(self, alert: Alert, delivery: _Delivery) -> SinkResult:
        retry = delivery.retry_class()(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            status_forcelist=RETRY_STATUSES,
            # POST is not retried by default; a repeat is harmless here, the alert_id identifies it.
            allowed_methods=Retry.DEFAULT_ALLOWED_METHODS | {"POST"},
            backoff_factor=self.backoff,
            raise_on_status=False,  # hand back the last response, so the result can quote its status
            respect_retry_after_header=False,  # our backoff bounds the wait; a server cannot stall the pipeline
        )
        try:
            with requests.Session() as session:
                adapter = delivery.adapter(retry)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                response = session.post(
                    self.url, json=alert.to_json(), headers=self.headers, timeout=self.timeout, allow_redirects=False
                )
        except Exception as exc:  # an alert that cannot be sent must not become a second failure
            attempts = _attempts(exc)
            return SinkResult(
                self.name, False, f"not delivered to {self.host}{_tries(attempts)}: {self._why(exc)}", attempts
            )
        last_retry = getattr(response.raw, "retries", None)  # its history holds the attempts that failed
        attempts = len(last_retry.history) + 1 if last_retry is not None else 1
        status = f"HTTP {response.status_code} {response.reason or ''}".strip()
        if 200 <= response.status_code < 300:
            return SinkResult(self.name, True, f"delivered to {self.host}: {status}{_tries(attempts)}", attempts)
        detail = f"not delivered to {self.host}: {status}{_tries(attempts)}"
        if response.is_redirect:
            detail += " (redirects are not followed: set the webhook url to the final address)"
        body = " ".join(response.text.split())[:200]
        return SinkResult(self.name, False, f"{detail}: {body}" if body else detail, attempts)

    def _why(self, exc: Exception) -> str:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None  # what the last attempt hit
        if isinstance(reason, NewConnectionError):  # before timeouts: urllib3 makes it a ConnectTimeoutError
            return f"could not connect ({str(reason).rpartition(': ')[2]})"
        if isinstance(reason, ConnectTimeoutError | ReadTimeoutError):
            return f"no answer within timeout_seconds={self.timeout}"
        return f"{type(exc).__name__}: {reason or exc}"


def _attempts(exc: Exception) -> int | None:
    reason = exc.args[0] if exc.args else None
    return getattr(reason, "attempts", None)


def _tries(attempts: int | None) -> str:
    return f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""


def send(alert: Alert, settings: AlertSettings) -> list[SinkResult]:
    """Record the alert in the JSON-lines file (the record of truth), then POST it to the webhook if set.

    Never raises: each sink reports in its result, and the caller prints a warning for any that is not ok.
    """
    results = [JsonlSink(settings.jsonl_path).deliver(alert)]
    if settings.webhook.url:
        results.append(WebhookSink.from_settings(settings.webhook).deliver(alert))
    return results
