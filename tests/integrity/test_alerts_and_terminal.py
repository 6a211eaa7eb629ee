"""Promises about what leaves the platform for people: alerts, the dashboard and the terminal.

- 4: the failing rows of a sensitive test (`no_pii`, or any test with `meta: {sensitive: true}`) are
  masked in every copy made of them: the ops ledger and marts, alerts.jsonl, the webhook body, the
  dashboard and the command's own output.
- 9: a webhook that answers a byte at a time cannot hold a delivery past its deadline, and a webhook
  URL that cannot work is a configuration error naming the setting.
- 10: text from documents and query results reaches the terminal as the text it is: never parsed as
  markup, emoji codes or control sequences, and `--json` does not go through the text renderer.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import ENV_ALERT_WEBHOOK_URL, ENV_VARS, Settings, workspace_env
from python_jobs.observe.alerts import Alert, send
from python_jobs.transform import results as dbt_results
from tests.conftest import NO_GATES
from tests.integrity import test_index_integrity as index_promises
from tests.worlds import Webhook, Workspace

# The world item 10 reads is item 11's: the search world plus a confidential note hostile to a terminal.
hostile_search_world = index_promises.hostile_search_world
HOSTILE_DOC_ID, HOSTILE_QUERY = index_promises.HOSTILE_DOC_ID, index_promises.HOSTILE_QUERY

# --- 4: PII in failing rows ---------------------------------------------------------------------

PII_EMAIL = "jane.doe.refunds@example.com"
PII_PHONE = "555-867-5309"
PII_DOC_ID = "faq-refund-contact"
PII_DOC = f"""---
doc_id: {PII_DOC_ID}
title: "Refunds: who to contact"
doc_type: faq
owner: customer-support
access_level: public
updated_at: 2026-10-01T09:00:00Z
---
# Refunds: who to contact

## Who handles my refund?

Write to {PII_EMAIL} or call {PII_PHONE} and ask for the refunds desk.
"""


def test_pii_in_the_failing_rows_of_a_sensitive_test_is_masked_in_every_copy(ops_world: Workspace, tmp_path):
    # From the green pipeline's world: the same vars, its build state recorded, so this run builds the
    # document chain only (fts only and no gates: the pipeline stops at the build anyway).
    world = ops_world.copy(tmp_path / "ws")
    (world.landing / "docs" / "faq" / f"{PII_DOC_ID}.md").write_text(PII_DOC, encoding="utf-8")
    hook = Webhook()
    try:
        ran = world.job("pipeline", "--json", RP_VARS=NO_GATES, RP_ALERT_WEBHOOK_URL=hook.url)
    finally:
        hook.server.shutdown()

    summary = json.loads(ran.stdout)
    assert ran.returncode == 1 and summary["failed_step"] == "build", ran.stderr
    alerts = [alert for step in summary["steps"] for alert in step["alerts"]]
    failures = [{"subject": a["subject"], **a["where"]} for a in alerts] + [d for a in alerts for d in a["details"]]
    matching = [f for f in failures if ".no_pii_document_chunks_text" in f["subject"]]
    assert len(matching) == 1, [f["subject"] for f in failures]
    pii = matching[0]
    # What lets the owner find the row stays readable; the row's text does not leave the warehouse.
    sample = pii["failing_rows_sample"]
    assert {row["pii_kind"] for row in sample} == {"email address", "phone number"}
    for row in sample:
        assert row["doc_id"] == PII_DOC_ID and row["chunk_id"].startswith(PII_DOC_ID)
        assert row["text"] == row["embedding_text"] == row["heading_path"] == dbt_results.MASK
    assert pii["failing_rows_table"].endswith('"test_failures"."no_pii_document_chunks_text"')

    copies = {
        "alerts.jsonl": (world.root / "alerts.jsonl").read_text(encoding="utf-8"),
        "webhook body": "\n".join(hook.bodies),
        "dashboard.html": (world.root / "reports" / "dashboard.html").read_text(encoding="utf-8"),
        "pipeline stdout": ran.stdout,
        "pipeline stderr": ran.stderr,
        "ops.dbt_node_results": repr(world.query("select failing_rows_sample from ops.dbt_node_results")),
        "ops_node_status": repr(world.query("select failing_rows_sample from observability.ops_node_status")),
    }
    assert hook.bodies and PII_DOC_ID in copies["dashboard.html"]  # each copy is there, and names the row
    for name, text in copies.items():
        for secret in (PII_EMAIL, PII_EMAIL.split("@")[0], PII_PHONE):
            assert secret not in text, f"{secret} copied into {name}"
    # The warehouse keeps the failing row itself, for whoever may read the warehouse.
    kept = world.query("select text from test_failures.no_pii_document_chunks_text")
    assert any(PII_EMAIL in text for (text,) in kept)


def test_a_test_marked_sensitive_in_its_meta_keeps_a_masked_sample(tmp_path: Path):
    """Any test, not only no_pii: `meta: {sensitive: true}` masks what dbt_results copies of its rows."""
    warehouse = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.execute("create schema test_failures")
        con.execute(f"create table test_failures.email_format as select 'C042' as customer_id, '{PII_EMAIL}' as email")
    target = tmp_path / "target"
    target.mkdir()
    uid = "test.retrieval_platform.expression_is_true_customers_email.1a2b3c"
    manifest = {
        "nodes": {
            uid: {
                "resource_type": "test",
                "name": "expression_is_true_customers_email",
                "config": {"severity": "warn", "store_failures": True, "meta": {"sensitive": True}},
                "test_metadata": {"name": "expression_is_true"},
                "depends_on": {"nodes": ["model.retrieval_platform.customers"]},
            }
        },
        "groups": {},
    }
    results = {
        "metadata": {"invocation_id": "inv-sensitive"},
        "results": [
            {
                "unique_id": uid,
                "status": "warn",
                "failures": 1,
                "relation_name": '"warehouse"."test_failures"."email_format"',
            }
        ],
    }
    (target / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (target / "run_results.json").write_text(json.dumps(results), encoding="utf-8")
    run = dbt_results.Invocation(["test"], 1, tmp_path / "dbt.log", 0, datetime.now(UTC))

    captured = dbt_results.capture(warehouse, "ops", target, run)

    (node,) = captured.nodes
    assert json.loads(node["failing_rows_sample"]) == [{"customer_id": dbt_results.MASK, "email": dbt_results.MASK}]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        (stored,) = con.execute("select failing_rows_sample from ops.dbt_node_results").fetchone()
    assert PII_EMAIL not in stored


# --- 9: the webhook -------------------------------------------------------------------------------


class TricklingServer:
    """Takes the POST, then answers one byte every 0.2 s: every read gets a byte before a per-read timeout."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/alerts"
        self.connections = 0
        self.hung_up = threading.Event()  # the client closed the connection
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
            while len(body) < length:
                body += conn.recv(65536)
            answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000
            for byte in answer:
                if self.stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    self.hung_up.set()
                    return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def trickler():
    server = TricklingServer()
    yield server
    server.close()


def an_alert() -> Alert:
    return Alert(level="error", kind="job_failed", step="embed", subject="make embed", summary="embed failed")


def test_a_trickling_webhook_cannot_hold_a_delivery_past_its_deadline(tmp_path: Path, trickler: TricklingServer):
    webhook = "{alerts: {webhook: {timeout_seconds: 1, retries: 2, backoff_seconds: 0, deadline_seconds: 2}}}"
    env = {**workspace_env(tmp_path), ENV_ALERT_WEBHOOK_URL: trickler.url, ENV_VARS: webhook}
    settings = Settings.load(env=env)

    started = time.monotonic()
    recorded, posted = send(an_alert(), settings.alerts)
    took = time.monotonic() - started

    assert recorded.ok and posted.sink == "webhook" and not posted.ok
    assert "deadline_seconds=2" in posted.detail, posted.detail
    assert took < 3.5, f"the delivery took {took:.1f} s with a 2 s deadline"
    assert trickler.hung_up.wait(3), "the connection was left open, trickling in the background"
    time.sleep(1.5)
    assert trickler.connections == 1  # no retry after the deadline


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999/alerts", "ftp://hooks.example.com/alerts", "http://hooks example.com/alerts"],
)
def test_a_webhook_url_that_cannot_work_is_a_config_error_naming_the_setting(tmp_path: Path, url: str):
    with pytest.raises(ConfigError, match=f"^{ENV_ALERT_WEBHOOK_URL} must be an http"):
        Settings.load(env={**workspace_env(tmp_path), ENV_ALERT_WEBHOOK_URL: url})
    with pytest.raises(ConfigError, match=r"^alerts\.webhook\.url must be an http.*\(from RP_VARS\)"):
        Settings.load(env={**workspace_env(tmp_path), ENV_VARS: json.dumps({"alerts": {"webhook": {"url": url}}})})


# --- 10: the terminal -----------------------------------------------------------------------------

MARKUP = ("[/]", "[red]reset[/red]", ":x:")


def test_document_text_reaches_the_terminal_as_text_never_as_markup(hostile_search_world: Workspace):
    ws = hostile_search_world
    shown = ws.rp("query", HOSTILE_QUERY, "--mode", "fts", "--access-level", "confidential", "-k", "3")
    assert shown.returncode == 0, shown.stderr
    assert HOSTILE_DOC_ID in shown.stdout
    for token in MARKUP:
        assert token in shown.stdout, token
    assert "\u274c" not in shown.stdout  # :x: stays three characters, not an emoji

    as_json = ws.rp("query", HOSTILE_QUERY, "--mode", "fts", "--access-level", "confidential", "-k", "3", "--json")
    assert as_json.returncode == 0, as_json.stderr
    (hit,) = [h for h in json.loads(as_json.stdout)["hits"] if h["doc_id"] == HOSTILE_DOC_ID]
    assert "Press [/] then [red]reset[/red] on the kettle base :x:" in hit["text"]

    rows = ws.rp("sql", f"select doc_id, text from knowledge.document_chunks where doc_id = '{HOSTILE_DOC_ID}'")
    assert rows.returncode == 0, rows.stderr
    for token in MARKUP:
        assert token in rows.stdout, token

    # Column names are data too, and so are control characters: an escape sequence must not reach a terminal.
    hostile = ws.rp("sql", "select chr(27) || '[2J' || 'cleared [bold]' as \"[red]column[/]\"")
    assert hostile.returncode == 0, hostile.stderr
    assert "[red]column[/]" in hostile.stdout and "cleared [bold]" in hostile.stdout
    assert "\x1b" not in hostile.stdout and "\\x1b[2J" in hostile.stdout
