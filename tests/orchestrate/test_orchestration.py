"""The pipeline on Dagster, in process, with real dbt and the real LanceDB index: the code location loads
with every stage and check in one graph, one run takes the landing zone to the dashboard, and each gate
(a dbt test, the index's quality gate, an eval gate, a source SLA) fails its check where it should; the
landing sensor and the failure sensor act on the real landing zone and alert sinks; `dagster dev` shows
the graph in Chromium.

One shared run (`orchestrated_world`, tests/orchestrate/conftest.py); every test that breaks something
runs only the part of the graph it needs, on a copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from python_jobs.observe.alerts import read_alerts
from python_jobs.orchestrate.alerts import RETRY, step_failures
from python_jobs.orchestrate.definitions import build_definitions
from python_jobs.orchestrate.keys import DASHBOARD, EVALUATION, INDEX
from python_jobs.orchestrate.schedules import REPORT_JOB
from tests.orchestrate.conftest import dagster_home, environment, run_env, run_record, run_selection
from tests.worlds import KETTLE, PROJECT_DIR, Webhook, Workspace, add_sample_doc

CHUNKS = dg.AssetKey(["knowledge", "document_chunks"])
STG_DOCS = dg.AssetKey(["staging", "stg_docs__documents"])
CUSTOMERS = dg.AssetKey(["raw", "shop_customers"])
DOCS = dg.AssetKey(["raw", "docs_documents"])
DUPLICATED_DOC_TEST = "unique_stg_docs__documents_doc_id"
NEW_DOC = "faq/faq-recycling-and-trade-in.md"


@pytest.fixture(scope="module")
def defs(orchestrated_world: Workspace) -> dg.Definitions:
    """The code location, loaded once: its steps and sensors read the settings of the environment they
    run in (as `rp` does), so every copy of the world runs with the same definitions."""
    with environment(orchestrated_world):
        return build_definitions()


# --- the code location ---------------------------------------------------------------------------


def test_definitions_load_every_stage_and_check_into_one_graph(defs, orchestrated_world):
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.materializable_asset_keys}
    assert {"raw/shop_customers", "raw/docs_documents", "staging/stg_shop__customers", "core/customers"} <= keys
    assert {"knowledge/document_chunks", "vector_index", "evaluation", "observability/ops_index_freshness"} <= keys
    manifest = json.loads((orchestrated_world.target / "manifest.json").read_text(encoding="utf-8"))
    dbt_nodes = [n for n in manifest["nodes"].values() if n["resource_type"] in ("model", "seed")]
    assert "dashboard" in keys and len(keys) == len(dbt_nodes) + 7 + 3  # dbt, landed tables, Python stages

    def parents(key: dg.AssetKey) -> set[str]:
        return {parent.to_user_string() for parent in graph.get(key).parent_keys}

    assert "raw/shop_customers" in parents(dg.AssetKey(["staging", "stg_shop__customers"]))  # landing -> dbt
    assert parents(INDEX) == {"knowledge/document_chunks"}
    assert {"vector_index", "eval_questions", "eval_judgments"} <= parents(EVALUATION)
    assert "vector_index" in parents(dg.AssetKey(["staging", "stg_ops__embed_runs"]))  # ledgers -> ops marts
    assert "evaluation" in parents(dg.AssetKey(["staging", "stg_ops__eval_runs"]))
    assert "observability/ops_index_freshness" in parents(DASHBOARD)

    # owners and groups from the dbt groups, for dbt and Python assets alike
    assert graph.get(CHUNKS).group_name == graph.get(INDEX).group_name == "knowledge"
    assert graph.get(CHUNKS).owners == graph.get(INDEX).owners == ["retrieval@brightwater.example"]
    assert graph.get(CUSTOMERS).owners == ["commerce-data@brightwater.example"]

    checks = {(key.asset_key.to_user_string(), key.name): graph.get_check_spec(key) for key in graph.asset_check_keys}
    dbt_tests = [name for (_, name) in checks if name.startswith(("unique_", "not_null_", "relationships_"))]
    assert len(dbt_tests) > 50 and checks[("staging/stg_docs__documents", DUPLICATED_DOC_TEST)].blocking
    for name in ("quality_gate", "token_budget", "verify_clean"):
        assert checks[("vector_index", name)].blocking
    assert checks[("evaluation", "gates")].blocking and checks[("evaluation", "no_regression")].blocking
    assert checks[("raw/shop_customers", "freshness")].metadata["error_after_hours"] == 48  # its sources YAML
    assert ("vector_index", "index_freshness") in checks

    assert {s.name for s in defs.sensors} == {"landing_zone", "alert_on_failure"}
    (schedule,) = defs.schedules
    assert schedule.cron_schedule == "0 5 * * *" and schedule.job_name == "pipeline"
    print(f"\n{len(keys)} assets, {len(checks)} checks ({len(dbt_tests)} of them dbt tests named unique/not_null/...)")


def test_busy_warehouse_is_left_to_the_retry_policy_and_other_errors_are_not_retried(tmp_path):
    from python_jobs.common.errors import PipelineError, WarehouseLockedError

    settings = Workspace(tmp_path).settings()
    with pytest.raises(WarehouseLockedError), step_failures("ingest", settings):
        raise WarehouseLockedError("warehouse is locked by process 1")
    with pytest.raises(dg.Failure) as failure, step_failures("ingest", settings):
        raise PipelineError("a landing file cannot be read")
    assert failure.value.allow_retries is False
    assert failure.value.metadata["runbook"].value == "docs/runbook.md#job-failed"
    assert RETRY.max_retries == 3 and RETRY.backoff == dg.Backoff.EXPONENTIAL


# --- one run, landing files to the dashboard ------------------------------------------------------


def test_pipeline_job_runs_from_the_landing_zone_to_the_dashboard(defs, orchestrated_world):
    ws = orchestrated_world
    run = ws.summary
    assert run["success"] and set(run["steps"].values()) == {"success"}, run["steps"]
    done, checks = run["assets"], run["checks"]
    graph = defs.resolve_asset_graph()
    assert set(done) == {key.to_user_string() for key in graph.materializable_asset_keys}  # every asset
    assert set(checks) == {f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys}

    landed = done["raw/docs_documents"]
    assert landed["rows_loaded"] == 1 and landed["run_files_changed"] == 1  # the delivered document, and only it
    index = done["vector_index"]
    assert index["chunks_metadata_changed"] > 0 and index["texts_embedded"] == 0  # its chunks' new owner
    assert index["quality_gate"].startswith("passed (dbt run ") and index["published"] is True
    ours = ("quality_gate", "token_budget", "verify_clean", "index_freshness")
    assert all(checks[f"vector_index:{name}"]["passed"] for name in ours)
    assert checks["vector_index:quality_gate"]["description"] == index["quality_gate"]  # the gate's own verdict
    evaluation = done["evaluation"]
    assert evaluation["index_version"] == index["index_version"] and evaluation["status"] == "passed"
    assert "fts ndcg@10" in evaluation
    assert checks["evaluation:gates"]["passed"] and checks["evaluation:no_regression"]["passed"]
    assert all(checks[f"raw/{t}:freshness"]["passed"] for t in ("shop_customers", "docs_documents"))
    failed = [key for key, check in checks.items() if not check["passed"]]
    assert all(checks[key]["severity"] == "WARN" for key in failed), failed  # warn-level dbt tests only

    page = Path(done["dashboard"]["path"])
    assert page == ws.root / "reports" / "dashboard.html" and 'id="all-clear"' in page.read_text(encoding="utf-8")
    # no second truth: the run is in the ledgers the CLI writes, so the dashboard shows it
    commands = [row[0] for row in ws.query("select args from ops.dbt_invocations order by started_at")]
    assert sum("--select tag:ops" in args for args in commands[-3:]) == 1
    assert [c.split()[0] for c in commands[-3:]].count("build") == 2
    (status,) = ws.query("select status from ops.embed_runs order by started_at desc limit 1")[0]
    assert status == "success"
    print(f"\nfull materialization: {ws.summary['seconds']} s")


# --- gates ---------------------------------------------------------------------------------------


def test_failing_dbt_test_fails_its_check_blocks_the_index_and_alerts_its_owner(defs, orchestrated_world, tmp_path):
    ws = orchestrated_world.copy(tmp_path / "ws")
    twin = ws.landing / "docs" / "faq" / "faq-kettle-twin.md"
    twin.write_text((ws.landing / "docs" / KETTLE).read_text(encoding="utf-8"), encoding="utf-8")  # same doc_id
    hook = Webhook()
    try:
        with environment(ws, RP_ALERT_WEBHOOK_URL=hook.url):
            instance = dg.DagsterInstance.ephemeral()
            landed = dg.AssetSelection.assets(DOCS).required_multi_asset_neighbors().without_checks()
            chain = dg.AssetSelection.assets(STG_DOCS).downstream() & dg.AssetSelection.assets(INDEX).upstream()
            result = run_selection(defs, landed | chain, instance)  # landing -> stg_docs -> ... -> the index

            run = instance.get_run_by_id(result.run_id)
            (failure,) = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
            sensor = defs.resolve_sensor_def("alert_on_failure")
            context = dg.build_run_status_sensor_context(
                sensor_name=sensor.name,
                dagster_event=failure.event_log_entry.dagster_event,
                dagster_instance=instance,
                dagster_run=run,
            ).for_run_failure()
            requests = list(sensor(context) or [])
    finally:
        hook.server.shutdown()

    record = run_record(result)
    assert not record["success"] and record["steps"]["warehouse"] == "failure"
    assert record["steps"].get("vector_index", "skipped") == "skipped" and "vector_index" not in record["assets"]
    failed_test = record["checks"][f"staging/stg_docs__documents:{DUPLICATED_DOC_TEST}"]
    assert not failed_test["passed"] and failed_test["severity"] == "ERROR"

    (alert,) = read_alerts(ws.root / "alerts.jsonl")
    assert alert["kind"] == "dbt_test_failed" and alert["step"] == "build"
    assert alert["subject"].startswith(f"test.retrieval_platform.{DUPLICATED_DOC_TEST}")
    assert (alert["owner"], alert["email"]) == ("Knowledge and Retrieval Team", "retrieval@brightwater.example")
    assert alert["runbook"] == "docs/runbook.md#failing-data-test"
    assert alert["where"]["dagster_run"] == result.run_id and alert["where"]["failing_rows_table"]
    assert [a["alert_id"] for a in hook.received] == [alert["alert_id"]]
    # as the pipeline still writes the dashboard after a failure, a report run is requested
    (request,) = requests
    assert request.run_key == f"report-after-{result.run_id}" and sensor.job_name == REPORT_JOB


def test_index_refused_by_its_quality_gate_fails_the_check_and_is_not_materialized(defs, orchestrated_world, tmp_path):
    ws = orchestrated_world.copy(tmp_path / "ws")
    # A state of the chunks no dbt run tested (changed by hand): the gate's certificates do not match it.
    ws.execute(
        "delete from knowledge.document_chunks where chunk_id = (select min(chunk_id) from knowledge.document_chunks)"
    )
    with environment(ws):
        result = run_selection(defs, dg.AssetSelection.assets(INDEX), dg.DagsterInstance.ephemeral())

    record = run_record(result)
    assert record["steps"]["vector_index"] == "failure" and "vector_index" not in record["assets"]
    gate = record["checks"]["vector_index:quality_gate"]
    assert not gate["passed"] and "no dbt run has tested the current state of document_chunks" in gate["description"]
    (status,) = ws.query("select status from ops.embed_runs order by started_at desc limit 1")[0]
    assert status == "refused_quality_gate"  # the embedding job's own ledger says why


def test_failed_eval_gate_fails_its_blocking_check_with_the_question_ids(defs, orchestrated_world, tmp_path):
    ws = orchestrated_world.copy(tmp_path / "ws")
    strict = '{eval: {modes: [fts], gates: ["fts ndcg@10 >= 0.999"]}}'
    with environment(ws, vars=strict):
        instance = dg.DagsterInstance.ephemeral()
        result = run_selection(defs, dg.AssetSelection.assets(EVALUATION), instance)

    record = run_record(result)
    assert not record["success"] and record["steps"] == {"evaluation": "failure"}
    gates = record["checks"]["evaluation:gates"]
    assert not gates["passed"] and gates["severity"] == "ERROR"
    assert "fts ndcg@10" in gates["description"] and gates["metadata"]["question_ids"]
    assert record["checks"]["evaluation:no_regression"]["passed"]
    assert record["assets"]["evaluation"]["status"] == "failed_gates"  # recorded, gates failed
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    carried = failure.step_failure_data.user_failure_data.metadata
    assert carried["kind"].value == "eval_gate_failed" and carried["runbook"].value == "docs/runbook.md#eval-regression"
    (failed,) = ws.query("select count(*) from ops.eval_runs where status = 'failed_gates'")[0]
    assert failed == 1


def test_freshness_check_fails_on_a_stale_source_at_its_sla(defs, orchestrated_world, tmp_path):
    ws = orchestrated_world.copy(tmp_path / "ws")
    ws.execute(f"update raw.shop_customers set _loaded_at = '{(datetime.now(UTC) - timedelta(days=3)).isoformat()}'")
    with environment(ws):
        instance = dg.DagsterInstance.ephemeral()
        result = run_selection(defs, dg.AssetSelection.checks_for_assets(CUSTOMERS, DOCS), instance)

    checks = run_record(result)["checks"]
    stale = checks["raw/shop_customers:freshness"]
    assert not stale["passed"] and stale["severity"] == "ERROR"
    assert stale["metadata"]["error_after_hours"] == 48 and 71 < stale["metadata"]["lag_hours"] < 73
    assert checks["raw/docs_documents:freshness"]["passed"]  # the other selected source, in the same dbt run
    assert set(checks) == {"raw/shop_customers:freshness", "raw/docs_documents:freshness"}
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    carried = failure.step_failure_data.user_failure_data.metadata
    assert carried["kind"].value == "source_stale" and "Commerce Data Team" in carried["owner"].value


# --- the landing-zone sensor -----------------------------------------------------------------------


def test_landing_sensor_requests_a_run_for_a_new_file_and_none_for_an_unchanged_zone(
    defs, orchestrated_world, tmp_path
):
    ws = orchestrated_world.copy(tmp_path / "ws")
    with environment(ws):
        sensor = defs.resolve_sensor_def("landing_zone")
        instance = dg.DagsterInstance.ephemeral()

        def tick(cursor: str | None):
            result = sensor(dg.build_sensor_context(cursor=cursor, instance=instance))
            if isinstance(result, dg.SkipReason):
                return [], cursor, result.skip_message
            skip = result.skip_reason.skip_message if result.skip_reason else None
            return result.run_requests or [], result.cursor, skip

        requests, cursor, why = tick(None)  # everything landed by the orchestrated run
        assert requests == [] and why == "no new, changed or removed landing files"
        requests, cursor, why = tick(cursor)
        assert requests == [] and "is as it was" in why  # the warehouse is not opened at all

        kettle = ws.landing / "docs" / KETTLE
        os.utime(kettle, ns=(kettle.stat().st_atime_ns, kettle.stat().st_mtime_ns + 10**9))
        requests, cursor, why = tick(cursor)  # touched, same bytes: the ingest would not load it
        assert requests == [] and why == "no new, changed or removed landing files"

        add_sample_doc(ws, NEW_DOC)
        (request,), cursor, _ = tick(cursor)
        assert request.tags["landing_changes"] == "1 new, 0 changed, 0 removed landing file(s)"
        again, _, _ = tick(None)  # the same change seen afresh: the same run key, so Dagster runs it once
        assert again[0].run_key == request.run_key


# --- the UI ---------------------------------------------------------------------------------------

CHROMIUM = Path(os.environ.get("RP_CHROMIUM", "/usr/bin/chromium"))
LOCATION = "python_jobs.orchestrate.definitions"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dagster_dev_shows_the_index_and_the_evaluation_in_the_asset_graph(orchestrated_world, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: run `make setup-browser` (Debian's chromium), or set RP_CHROMIUM")
    from playwright.sync_api import sync_playwright

    ws = orchestrated_world.copy(tmp_path / "ws")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dagster = Path(sys.executable).with_name("dagster")
    log = (tmp_path / "dagster-dev.log").open("w")
    server = subprocess.Popen(
        [str(dagster), "dev", "-m", LOCATION, "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_DIR,
        env={**os.environ, **run_env(ws), "DAGSTER_HOME": str(dagster_home(ws))},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its webserver, daemon and code servers are stopped with it
        preexec_fn=_default_interrupt,
    )
    try:
        wait_for(f"{url}/server_info", server, tmp_path / "dagster-dev.log")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            )
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                requests = []
                page.on("request", lambda request: requests.append(request.url))
                page.goto(f"{url}/locations/{LOCATION}/asset-groups/knowledge")
                index = page.get_by_text("vector_index", exact=True).first
                index.wait_for(timeout=120_000)
                page.get_by_text("evaluation", exact=True).first.wait_for(timeout=30_000)
                for upstream in ("document_chunks", "documents", "docs_documents"):  # the lineage from landing
                    assert page.get_by_text(upstream, exact=True).count() >= 1, upstream
                page.screenshot(path=str(tmp_path / "knowledge-graph.png"))
                index.click()  # its description and checks, in the side panel
                page.get_by_text("The LanceDB index of document_chunks").first.wait_for(timeout=30_000)
                # The panel's automation section (the sensor that starts the asset) loads after its description.
                page.get_by_text("landing_zone", exact=True).first.wait_for(timeout=30_000)
                panel = page.inner_text("body")
                page.screenshot(path=str(tmp_path / "vector-index.png"))
            finally:
                browser.close()
    finally:
        stop(server)
        log.close()
    assert "The LanceDB index of document_chunks" in panel  # the asset's docstring
    assert all(name in panel for name in ("quality_gate", "token_budget", "verify_clean", "index_freshness"))
    assert "landing_zone" in panel  # the sensor that starts it
    assert {u.split("/")[2] for u in requests} == {f"127.0.0.1:{port}"}  # nothing from the internet


def _default_interrupt() -> None:
    """Ctrl-C stops dagster dev even when this process was started with SIGINT ignored (in the background)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"dagster dev exited {server.returncode}:\n{log.read_text(encoding='utf-8')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"dagster dev did not answer {url} within {timeout} s:\n{log.read_text(encoding='utf-8')[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """Ctrl-C for dagster dev (it stops its webserver, daemon and code servers), then its whole group."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # whatever of its group is left
    server.wait()
