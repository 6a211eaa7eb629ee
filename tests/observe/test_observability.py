"""Observability end to end: dbt results in the ops tables, the ops marts, `make pipeline` with its
alerts, and the dashboard, on real dbt, DuckDB, LanceDB and a local webhook server.

One green pipeline run on a copy of the indexed world is shared (`ops_world`); each failure
test copies it and breaks one thing on purpose: a bad key, a stale load, an eval gate, a
killed dbt.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from python_jobs.evaluate import ledger as eval_ledger
from python_jobs.evaluate import run as evaluation
from python_jobs.index import runs
from python_jobs.index import snapshot as index_snapshot
from python_jobs.index.store import VectorIndex
from python_jobs.observe.alerts import read_alerts
from python_jobs.transform import results as dbt_results
from tests.conftest import pipeline
from tests.worlds import PROJECT_DIR, Webhook, Workspace

DUPLICATED_TEST = "unique_stg_shop__customers_customer_id"


def steps(summary: dict) -> dict[str, str]:
    return {step["step"]: step["status"] for step in summary["steps"]}


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.server.shutdown()


# --- the green run ----------------------------------------------------------------------------


def test_green_pipeline_runs_every_step_and_writes_the_dashboard(ops_world):
    summary = ops_world.summary
    assert steps(summary) == dict.fromkeys(("ingest", "build", "freshness", "embed", "eval", "report"), "ok")
    assert summary["exit_code"] == 0 and summary["failed_step"] is None
    page = Path(summary["report_path"])
    assert page == ops_world.root / "reports" / "dashboard.html"
    html = page.read_text(encoding="utf-8")
    assert 'id="all-clear"' in html
    assert "<script src=" not in html and "<link" not in html  # self-contained: nothing to fetch


def test_every_dbt_run_is_recorded_with_owners_and_where_to_look(ops_world):
    commands = dict(ops_world.query("select command, count(*) from ops.dbt_invocations group by command"))
    assert commands == {"build": 2, "source freshness": 1}  # the pipeline's build and the report's refresh
    (build_id,) = ops_world.query(
        "select invocation_id from ops.dbt_invocations where command = 'build' and args not like '%tag:ops%'"
    )[0]
    nodes = {
        row[0]: row[1:]
        for row in ops_world.query(
            "select node_name, resource_type, status, owner_name, owner_email, compiled_path, tested_node "
            f"from ops.dbt_node_results where invocation_id = '{build_id}'"
        )
    }
    assert nodes["customers"][:4] == ("model", "success", "Commerce Data Team", "commerce-data@brightwater.example")
    assert nodes["document_chunks"][2] == "Knowledge and Retrieval Team"
    test = nodes[DUPLICATED_TEST]
    assert test[:3] == ("test", "pass", "Commerce Data Team")  # a test belongs to its model's owner
    assert test[5] == "model.retrieval_platform.stg_shop__customers"
    assert (ops_world.root / test[4]).is_file(), test[4]
    freshness = dict(
        ops_world.query("select source_name || '.' || table_name, owner_name from ops.dbt_source_freshness")
    )
    assert freshness["shop.customers"] == "Commerce Data Team"
    assert freshness["docs.documents"] == "Knowledge and Retrieval Team"


def test_ops_marts_show_a_current_index_and_the_runs(ops_world):
    (total, current, pending, p50, breached) = ops_world.query(
        "select chunks_total, chunks_current, chunks_pending, lag_p50_hours, is_sla_breached "
        "from observability.ops_index_freshness"
    )[0]
    (chunks,) = ops_world.query("select count(*) from knowledge.document_chunks")[0]
    assert total == current == chunks > 0 and pending == 0 and p50 > 0 and not breached
    statuses = dict(ops_world.query("select status, count(*) from observability.ops_node_status group by status"))
    assert "fail" not in statuses and "error" not in statuses and statuses["pass"] > 50
    eval_rows = ops_world.query(
        "select count(*) from observability.ops_eval_trend where mode = 'fts' and metric_key = 'ndcg@10'"
    )[0][0]
    assert eval_rows == 1
    ((runs,),) = ops_world.query("select count(*) from observability.ops_embedding_cost")
    assert runs >= 2  # the indexed world's embed and the pipeline's no-op run


def test_index_snapshot_is_rewritten_only_when_the_published_version_moves(ops_world, tmp_path):
    ws = ops_world.copy(tmp_path / "ws")
    settings = ws.settings()
    before = ws.query("select max(index_version), count(*) from ops.indexed_chunks")[0]
    assert not index_snapshot.refresh(settings.warehouse_path, settings.ops_schema, VectorIndex(ws.index))
    ws.execute("delete from ops.indexed_chunks where chunk_id in (select chunk_id from ops.indexed_chunks limit 1)")
    ws.execute("update ops.indexed_chunks set index_version = index_version - 1")
    assert index_snapshot.refresh(settings.warehouse_path, settings.ops_schema, VectorIndex(ws.index))
    assert ws.query("select max(index_version), count(*) from ops.indexed_chunks")[0] == before


def test_ops_source_columns_match_what_the_jobs_write():
    """The staging models read the ledgers by their declared columns: a column added in Python must be declared."""
    sources = yaml.safe_load((PROJECT_DIR / "models/staging/ops/_ops__sources.yml").read_text(encoding="utf-8"))
    declared = {
        table["name"]: {c["name"]: c["data_type"] for c in table.get("columns", []) if "data_type" in c}
        for table in sources["sources"][0]["tables"]
    }
    written = {
        "embed_runs": runs.EMBED_RUNS,
        "eval_runs": eval_ledger.EVAL_RUNS,
        "eval_metrics": eval_ledger.EVAL_METRICS,
        "eval_question_metrics": eval_ledger.EVAL_QUESTION_METRICS,
        "eval_question_results": eval_ledger.EVAL_QUESTION_RESULTS,
        "dbt_invocations": dbt_results.INVOCATIONS,
        "dbt_node_results": dbt_results.NODE_RESULTS,
        "dbt_source_freshness": dbt_results.SOURCE_FRESHNESS,
        "indexed_chunks": index_snapshot.INDEXED_CHUNKS,
    }
    for table, columns in written.items():
        assert declared[table] == dict(columns), table


def test_ops_marts_build_empty_on_a_fresh_warehouse(workspace):
    """No job has run: the ledgers do not exist, and the ops marts still build and pass their tests."""
    workspace.ingest(check=True)
    built = workspace.job("dbt", "build")
    assert built.returncode == 0, built.stdout
    assert workspace.query("select count(*) from observability.ops_eval_trend") == [(0,)]
    assert workspace.query("select chunks_not_indexed > 0 from observability.ops_index_freshness") == [(True,)]
    report = workspace.job("report", "--no-refresh", "--json")
    assert report.returncode == 0, report.stderr
    html = Path(json.loads(report.stdout)["path"]).read_text(encoding="utf-8")
    assert "No eval runs recorded yet" in html and "not indexed yet" in html


# --- breaking it on purpose ---------------------------------------------------------------------


def duplicate_a_customer(landing: Path) -> str:
    path = landing / "shop" / "customers.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        first = next(csv.DictReader(handle))
    with path.open("a", encoding="utf-8", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(first)).writerow({**first, "email": "someone.else@example.com"})
    return first["customer_id"]


@pytest.fixture(scope="module")
def bad_key_world(ops_world: Workspace, tmp_path_factory: pytest.TempPathFactory):
    """The ops world after a delivery with a duplicated customer id, through the pipeline and a webhook."""
    ws = ops_world.copy(tmp_path_factory.mktemp("bad-key") / "ws")
    customer = duplicate_a_customer(ws.landing)
    hook = Webhook()
    try:
        code, summary, stderr = pipeline(ws, RP_ALERT_WEBHOOK_URL=hook.url)
    finally:
        hook.server.shutdown()
    return ws, customer, code, summary, stderr, hook.received


def test_bad_key_stops_the_pipeline_at_build_with_one_alert(bad_key_world):
    ws, customer, code, summary, stderr, _ = bad_key_world
    assert code == 1
    assert summary["failed_step"] == "build"
    assert steps(summary) == {
        "ingest": "ok",
        "build": "failed",
        "freshness": "skipped",
        "embed": "skipped",
        "eval": "skipped",
        "report": "ok",
    }
    (alert,) = [a for s in summary["steps"] for a in s["alerts"]]
    assert alert["level"] == "error" and alert["kind"] == "dbt_test_failed"
    assert alert["subject"].startswith(f"test.retrieval_platform.{DUPLICATED_TEST}")
    assert (alert["owner"], alert["email"]) == ("Commerce Data Team", "commerce-data@brightwater.example")
    assert "1 results" in alert["error"] or "Got 1 result" in alert["error"]
    where = alert["where"]
    assert (ws.root / where["compiled_sql"]).is_file(), where["compiled_sql"]
    assert where["failing_rows_table"].endswith(f'"test_failures"."{DUPLICATED_TEST}"')
    assert where["failing_rows_sample"][0]["unique_field"] == customer
    assert alert["runbook"] == "docs/runbook.md#failing-data-test"
    # printed once, for people
    assert stderr.count("ALERT [error] build") == 1
    assert f"test {DUPLICATED_TEST} failed" in stderr and "commerce-data@brightwater.example" in stderr


def test_bad_key_alert_reaches_the_jsonl_file_and_the_webhook(bad_key_world):
    ws, _, _, summary, _, received = bad_key_world
    (recorded,) = read_alerts(ws.root / "alerts.jsonl")[-1:]
    (alert,) = summary["steps"][1]["alerts"]
    assert recorded["alert_id"] == alert["alert_id"]
    assert [r["alert_id"] for r in received] == [alert["alert_id"]]


def test_bad_key_shows_first_on_the_dashboard(bad_key_world):
    ws, customer, *_ = bad_key_world
    html = (ws.root / "reports" / "dashboard.html").read_text(encoding="utf-8")
    attention = html[html.index('id="attention"') : html.index('id="alerts"')]
    assert f"test {DUPLICATED_TEST} failed" in attention and "Commerce Data Team" in attention
    assert customer in attention  # the failing row itself
    status = ws.query(
        f"select status, status_rank from observability.ops_node_status where node_name = '{DUPLICATED_TEST}'"
    )
    assert status == [("fail", 0)]


def test_stale_load_fails_the_freshness_step_and_names_the_source(ops_world, tmp_path):
    ws = ops_world.copy(tmp_path / "ws")
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    ws.execute(f"update raw.shop_customers set _loaded_at = '{three_days_ago}'")

    code, summary, _ = pipeline(ws)

    assert code == 1 and summary["failed_step"] == "freshness"
    assert steps(summary)["embed"] == "skipped" and steps(summary)["report"] == "ok"
    (alert,) = summary["steps"][2]["alerts"]
    assert alert["kind"] == "source_stale" and alert["subject"] == "source.retrieval_platform.shop.customers"
    assert alert["owner"] == "Commerce Data Team"
    assert "source shop.customers is stale: loaded 72" in alert["summary"] and "SLA 48.0 h" in alert["summary"]
    assert alert["runbook"] == "docs/runbook.md#stale-source"
    (state,) = ws.query(
        "select sla_state from observability.ops_source_freshness where is_latest and source_table = 'shop.customers'"
    )
    assert state == ("past_error_sla",)
    html = Path(summary["report_path"]).read_text(encoding="utf-8")
    assert "source shop.customers is stale" in html[: html.index('id="alerts"')]


def test_failed_eval_gate_alerts_with_the_question_ids(ops_world, tmp_path):
    ws = ops_world.copy(tmp_path / "ws")

    code, summary, _ = pipeline(ws, vars='{eval: {modes: [fts], gates: ["fts ndcg@10 >= 0.999"]}}')

    assert code == evaluation.GATE_FAILED_EXIT and summary["failed_step"] == "eval"
    (alert,) = summary["steps"][4]["alerts"]
    assert alert["kind"] == "eval_gate_failed" and alert["subject"] == "fts ndcg@10"
    assert alert["owner"] == "Knowledge and Retrieval Team"
    assert alert["where"]["question_ids"], alert
    (failed,) = ws.query("select count(*) from ops.eval_runs where status = 'failed_gates'")[0]
    assert failed == 1


def test_a_killed_dbt_build_keeps_the_results_of_the_nodes_that_finished(ops_world, tmp_path):
    ws = ops_world.copy(tmp_path / "ws")
    ran = ws.job("dbt", "build", RP_FAILPOINT="dbt_document_chunks")
    assert ran.returncode == 128 + signal.SIGKILL, ran.stdout

    status, results_from, exit_code = ws.query(
        "select status, results_from, exit_code from ops.dbt_invocations order by started_at desc limit 1"
    )[0]
    assert (status, results_from) == ("crashed", "dbt.log") and exit_code != 0
    finished = dict(
        ws.query(
            "select node_name, status from ops.dbt_node_results where invocation_id = "
            "(select invocation_id from ops.dbt_invocations order by started_at desc limit 1)"
        )
    )
    # The nodes document_chunks waits for had finished (what else ran before it is dbt's choice).
    assert finished["documents"] == finished["boilerplate_sections"] == "success"
    assert "document_chunks" not in finished


@pytest.mark.parametrize("earlier_runs", [0, 3], ids=["log started by this run", "log of earlier runs"])
def test_a_log_rotated_during_the_run_keeps_the_lines_written_before_the_rotation(tmp_path, earlier_runs):
    """dbt rotates dbt.log at 10 MB, also during a build: a killed build's lines are then in dbt.log.1 (and
    .2 ...) and dbt.log, wherever the log ended when it started."""
    started = datetime.now(UTC) - timedelta(seconds=5)

    def line(pid: int, node: str, seconds: int = 1) -> str:
        ts = (started + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return json.dumps({"info": {"pid": pid, "name": "NodeFinished", "ts": ts}, "data": {"node": node}}) + "\n"

    earlier = line(7, "an earlier process of the same pid", seconds=-60) * earlier_runs
    (tmp_path / "dbt.log.2").write_text(earlier + line(7, "first"))
    (tmp_path / "dbt.log.1").write_text(line(1, "another process") + line(7, "second"))
    (tmp_path / "dbt.log").write_text(line(7, "third"))
    old = tmp_path / "dbt.log.3"  # rotated before this run started: not read
    old.write_text(line(7, "an earlier run's", seconds=-60))
    os.utime(old, (started.timestamp() - 60, started.timestamp() - 60))
    events = list(dbt_results._log_events(tmp_path / "dbt.log", len(earlier), 7, started))
    assert [event["data"]["node"] for event in events] == ["first", "second", "third"]


def test_every_sql_diagnosis_in_the_runbook_runs(bad_key_world):
    from python_jobs.observe import sql
    from tests.test_docs import sql_diagnoses

    ws = bad_key_world[0]
    for query in sql_diagnoses():
        columns = sql.query(ws.settings(), query).columns  # raises with DuckDB's message on a bad column
        assert columns, query


# --- the dashboard in a real browser -------------------------------------------------------------

CHROMIUM = Path(os.environ.get("RP_CHROMIUM", "/usr/bin/chromium"))
SECTIONS = ("attention", "alerts", "freshness", "quality", "serving", "tests", "volume", "cost")


def test_dashboard_renders_in_headless_chromium_with_the_failure_first(bad_key_world, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: run `make setup-browser` (Debian's chromium), or set RP_CHROMIUM")
    from playwright.sync_api import sync_playwright

    ws = bad_key_world[0]
    page_file = ws.root / "reports" / "dashboard.html"
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            # As root in a sandbox with a closed network: no sandbox, no GPU, no background calls home.
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_file.as_uri())
            page.wait_for_selector("#chart-test-pass-rate .main-svg", timeout=30_000)

            ids = page.eval_on_selector_all("main > section", "sections => sections.map(s => s.id)")
            assert ids == list(SECTIONS)  # what needs attention comes first
            first_alert = page.locator("#attention .alert.error").first
            assert f"test {DUPLICATED_TEST} failed" in first_alert.inner_text()
            assert page.locator("#attention table.failing-rows td").count() > 0
            assert page.locator("#error-count").inner_text().startswith("1 error")
            drawn = page.locator(".js-plotly-plot .main-svg").count()
            assert drawn >= 6, drawn
            assert page.locator("#chart-test-pass-rate .scatterlayer .trace").count() == 1
            assert page.locator("#chart-eval-trend .scatterlayer .trace").count() >= 4  # fts in four panels
            screenshot = tmp_path / "dashboard.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 50_000
    assert errors == []
    assert {url.split(":", 1)[0] for url in requests} <= {"file", "data", "blob"}, requests


def test_unreadable_landing_file_stops_the_pipeline_at_ingest(ops_world, tmp_path):
    ws = ops_world.copy(tmp_path / "ws")
    (ws.landing / "shop" / "customers_extra.csv").write_bytes(b"customer_id,email\nC9\xff\xfe,broken\n")

    code, summary, _ = pipeline(ws)

    assert code != 0 and summary["failed_step"] == "ingest"
    assert steps(summary)["build"] == "skipped" and steps(summary)["report"] == "ok"
    (alert,) = summary["steps"][0]["alerts"]
    assert alert["kind"] == "job_failed" and "customers_extra.csv" in alert["error"]
    assert alert["owner"] == "Data Platform Operations"
