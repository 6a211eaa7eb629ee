"""Alerts: recorded in a JSON-lines file, then POSTed to a real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import PROJECT_DIR, Settings
from python_jobs.observe.alerts import Alert, AlertSettings, JsonlSink, WebhookSink, read_alerts, send


class Receiver:
    """A webhook endpoint that records every request and answers with the next planned status."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.statuses: list[int] = []  # answered in order; 200 once they run out
        self.always: int | None = None
        self.delay = 0.0
        self.release = threading.Event()  # set at teardown, so a sleeping handler returns at once
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if receiver.delay:
                    receiver.release.wait(receiver.delay)
                status = receiver.always or (receiver.statuses.pop(0) if receiver.statuses else 200)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def settings_for(tmp_path, url: str, env: dict[str, str] | None = None, **webhook) -> AlertSettings:
    values = {"jsonl_path": "alerts/alerts.jsonl", "webhook": {"url": url, "backoff_seconds": 0, **webhook}}
    return AlertSettings.from_vars(values, lambda path: tmp_path / path, env or {})


def failing_test_alert(**overrides) -> Alert:
    values = {
        "level": "error",
        "kind": "dbt_test_failed",
        "step": "build",
        "subject": "test.retrieval_platform.not_null_customers_customer_id.5c1f2a3b4d",
        "summary": "test not_null_customers_customer_id failed (3 rows)",
        "error": "Got 3 results, configured to fail if != 0",
        "owner": "Commerce Data Team",
        "email": "commerce-data@brightwater.example",
        "where": {
            "compiled_sql": "target/compiled/retrieval_platform/models/marts/core/not_null_customers_customer_id.sql",
            "failing_rows_table": "test_failures.not_null_customers_customer_id",
        },
        "runbook": "docs/runbook.md#failing-data-test",
        "run_id": "inv-123",
        "details": (
            {"subject": "test.retrieval_platform.unique_orders_order_id", "error": "Got 1 result"},
            {"subject": "model.retrieval_platform.customers", "error": "Binder Error"},
        ),
    }
    return Alert(**{**values, **overrides})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_webhook_receives_the_alert_json_with_configured_headers(tmp_path, receiver):
    settings = settings_for(
        tmp_path, receiver.url, env={"HOOK_TOKEN": "s3cret"}, headers={"Authorization": "Bearer ${HOOK_TOKEN}"}
    )
    alert = failing_test_alert()

    jsonl, webhook = send(alert, settings)

    assert jsonl.ok and webhook.ok and webhook.attempts == 1, webhook.detail
    (request,) = receiver.requests
    assert request["path"] == "/hooks/alerts"
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    assert request["headers"]["Content-Type"] == "application/json"
    payload = json.loads(request["body"])
    assert payload == alert.to_json()
    assert payload["alert_id"] == alert.alert_id and len(payload["alert_id"]) == 32
    assert payload["kind"] == "dbt_test_failed" and payload["subject"] == alert.subject
    assert payload["where"]["failing_rows_table"] == "test_failures.not_null_customers_customer_id"
    assert [d["subject"] for d in payload["details"]][1] == "model.retrieval_platform.customers"
    assert datetime.fromisoformat(payload["raised_at"]) == alert.raised_at
    assert "s3cret" not in repr(settings)  # the token stays out of logs that print settings


def test_webhook_retries_server_errors_until_delivered(tmp_path, receiver):
    receiver.statuses = [503, 503]
    result = WebhookSink(receiver.url, timeout=2, retries=3, backoff=0.01).deliver(failing_test_alert())
    assert result.ok, result.detail
    assert result.attempts == 3 and len(receiver.requests) == 3
    assert "after 3 attempts" in result.detail


def test_webhook_that_always_fails_is_reported_and_the_alert_is_still_recorded(tmp_path, receiver):
    receiver.always = 500
    settings = settings_for(tmp_path, receiver.url, retries=2)
    alert = failing_test_alert()

    jsonl, webhook = send(alert, settings)

    assert jsonl.ok
    assert not webhook.ok and webhook.attempts == 3 and len(receiver.requests) == 3
    assert "HTTP 500" in webhook.detail and "after 3 attempts" in webhook.detail
    assert [a["alert_id"] for a in read_alerts(settings.jsonl_path)] == [alert.alert_id]


def test_client_errors_are_not_retried(receiver):
    receiver.always = 401
    result = WebhookSink(receiver.url, timeout=2, retries=3, backoff=0).deliver(failing_test_alert())
    assert not result.ok and result.attempts == 1 and "HTTP 401" in result.detail


def test_slow_webhook_gives_up_within_the_timeout_of_each_attempt(receiver):
    receiver.delay = 10
    timeout, retries = 0.3, 1
    started = time.monotonic()
    result = WebhookSink(receiver.url, timeout=timeout, retries=retries, backoff=0).deliver(failing_test_alert())
    elapsed = time.monotonic() - started

    assert not result.ok and result.attempts == retries + 1
    assert "no answer within timeout_seconds=0.3" in result.detail
    assert elapsed < timeout * (retries + 1) + 2


def test_webhook_with_nothing_listening_is_reported_not_raised(tmp_path):
    port = closed_port()
    settings = settings_for(tmp_path, f"http://127.0.0.1:{port}/hook", retries=1)

    jsonl, webhook = send(failing_test_alert(), settings)

    assert jsonl.ok and not webhook.ok and webhook.attempts == 2
    assert webhook.detail.startswith(f"not delivered to 127.0.0.1:{port} after 2 attempts: could not connect")
    assert "refused" in webhook.detail.lower()


def test_without_a_webhook_only_the_file_is_written(tmp_path):
    (jsonl,) = send(failing_test_alert(), settings_for(tmp_path, ""))
    assert jsonl.sink == "jsonl" and jsonl.ok and len(read_alerts(tmp_path / "alerts" / "alerts.jsonl")) == 1


def test_jsonl_appends_one_line_per_alert_and_reads_them_back(tmp_path):
    path = tmp_path / "new" / "dir" / "alerts.jsonl"
    first = failing_test_alert(where={"question_ids": ["q1", "q2"], "log": tmp_path / "dbt.log"})
    second = failing_test_alert(level="warn", kind="source_stale", error="line one\nline two")

    assert JsonlSink(path).deliver(first).ok and JsonlSink(path).deliver(second).ok

    assert len(path.read_text().splitlines()) == 2
    back = read_alerts(path)
    assert back == [first.to_json(), second.to_json()]
    assert back[0]["where"] == {"question_ids": ["q1", "q2"], "log": str(tmp_path / "dbt.log")}
    assert back[1]["error"] == "line one\nline two"


def test_truncated_last_line_is_skipped_and_the_next_alert_starts_a_fresh_line(tmp_path):
    path = tmp_path / "alerts.jsonl"
    kept = failing_test_alert()
    JsonlSink(path).deliver(kept)
    with open(path, "ab") as file:
        file.write(b'{"alert_id": "half-writ')  # a writer killed mid-line

    with pytest.warns(UserWarning, match=r"alerts\.jsonl:2: skipped a truncated last line"):
        assert [a["alert_id"] for a in read_alerts(path)] == [kept.alert_id]

    after = failing_test_alert()
    JsonlSink(path).deliver(after)
    with pytest.warns(UserWarning, match=r"alerts\.jsonl:2: skipped a damaged line"):
        assert [a["alert_id"] for a in read_alerts(path)] == [kept.alert_id, after.alert_id]


def test_render_shows_owner_error_where_to_look_and_runbook():
    text = failing_test_alert().render()
    lines = text.splitlines()
    assert lines[0] == "ALERT [error] build: test not_null_customers_customer_id failed (3 rows)"
    assert "  owner:   Commerce Data Team <commerce-data@brightwater.example>" in lines
    assert "error:   Got 3 results, configured to fail if != 0" in text
    assert "compiled_sql=target/compiled/retrieval_platform/" in text
    assert "failing_rows_table=test_failures.not_null_customers_customer_id" in text
    assert "runbook: docs/runbook.md#failing-data-test" in text
    assert lines[-1] == (
        "  + 2 more failures in this step: test.retrieval_platform.unique_orders_order_id, "
        "model.retrieval_platform.customers"
    )
    bare = Alert("warn", "index_stale", "embed", "index", "index is 3 days old").render()
    assert bare.splitlines() == ["ALERT [warn] embed: index is 3 days old", "  owner:   (none set)"]


def test_alert_level_must_be_error_or_warn():
    with pytest.raises(ValueError, match="level must be one of error, warn"):
        failing_test_alert(level="critical")


def test_alert_settings_come_from_the_dbt_project_and_the_environment(tmp_path):
    defaults = Settings.load(env={}).alerts
    assert defaults.jsonl_path == PROJECT_DIR / "data" / "alerts" / "alerts.jsonl"
    assert defaults.webhook.url == "" and defaults.webhook.retries == 3 and defaults.webhook.timeout_seconds == 5

    env = {"RP_ALERT_WEBHOOK_URL": "https://hooks.example/alerts", "RP_ALERTS_FILE": "elsewhere/a.jsonl"}
    overridden = Settings.load(env=env).alerts
    assert overridden.webhook.url == "https://hooks.example/alerts"
    assert overridden.jsonl_path == PROJECT_DIR / "elsewhere" / "a.jsonl"
    assert Settings.load(env={"RP_ALERTS_FILE": str(tmp_path / "a.jsonl")}).alerts.jsonl_path == tmp_path / "a.jsonl"


@pytest.mark.parametrize(
    ("webhook", "message"),
    [
        ({"timeout_seconds": -1}, r"alerts\.webhook\.timeout_seconds must be a positive number, got -1$"),
        ({"timeout_seconds": 0}, r"alerts\.webhook\.timeout_seconds must be a positive number, got 0$"),
        ({"timeout_seconds": "soon"}, r"alerts\.webhook\.timeout_seconds must be a positive number, got 'soon'"),
        ({"retries": -1}, r"alerts\.webhook\.retries must be a whole number, 0 or more, got -1$"),
        ({"retries": 1.5}, r"alerts\.webhook\.retries must be a whole number, 0 or more, got 1\.5"),
        ({"retries": True}, r"alerts\.webhook\.retries must be a whole number, 0 or more, got True"),
        ({"backoff_seconds": -0.5}, r"alerts\.webhook\.backoff_seconds must be a number, 0 or more, got -0\.5"),
        ({"url": "ftp://hooks.example/x"}, r"alerts\.webhook\.url must be an http:// or https:// URL"),
        ({"url": "hooks.example/x"}, r"alerts\.webhook\.url must be an http:// or https:// URL"),
        (
            {"timout_seconds": 5},
            r"alerts\.webhook\.timout_seconds: unknown setting; did you mean alerts\.webhook\.timeout_seconds\?",
        ),
        ({"url": "https://h.example", "headers": ["x"]}, r"alerts\.webhook\.headers must be a mapping"),
        (
            {"url": "https://h.example", "headers": {"Authorization": "Bearer ${NO_SUCH_TOKEN}"}},
            r"alerts\.webhook\.headers\.Authorization uses \$\{NO_SUCH_TOKEN\}, which is not set",
        ),
    ],
)
def test_invalid_webhook_settings_name_the_setting(webhook, message):
    with pytest.raises(ConfigError, match=message):
        AlertSettings.from_vars({"webhook": webhook}, lambda path: PROJECT_DIR / path, {})


def test_invalid_alert_settings_in_the_project_name_the_setting():
    with pytest.raises(ConfigError, match=r"alerts\.jsonl: unknown setting; did you mean alerts\.jsonl_path\?"):
        Settings.load(env={"RP_VARS": "{alerts: {jsonl: x.jsonl}}"})
    with pytest.raises(ConfigError, match=r"alerts\.webhook\.retries must be a whole number, 0 or more, got -1"):
        Settings.load(env={"RP_VARS": "{alerts: {webhook: {retries: -1}}}"})
    with pytest.raises(ConfigError, match=r"RP_ALERT_WEBHOOK_URL must be an http:// or https:// URL"):
        Settings.load(env={"RP_ALERT_WEBHOOK_URL": "hooks.example/x"})


def test_headers_naming_an_unset_variable_are_fine_without_a_webhook():
    settings = AlertSettings.from_vars(
        {"webhook": {"headers": {"Authorization": "Bearer ${NO_SUCH_TOKEN}"}}}, lambda path: PROJECT_DIR / path, {}
    )
    assert settings.webhook.url == "" and settings.webhook.headers == {}
