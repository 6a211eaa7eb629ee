"""The query log and the feedback: every request logged with the contract's schema, off the hot path;
feedback on older queries checked against the log files; budgets that survive a restart; and a log that
cannot be written (or a locked warehouse) never failing a request."""

from __future__ import annotations

import json
import os
import re
import shutil

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from python_jobs.serve.querylog import FEEDBACK, FEEDBACK_SCHEMA, QUERY_LOG, QUERY_LOG_SCHEMA, LogWriter
from tests.serve.conftest import FAST, Server, add_keys, running, serve_settings
from tests.worlds import Workspace, warehouse_locked_by_another_process

# One recent query in memory: feedback on any older one must be checked against the log files.
LOG_VARS = "{serve: {index_poll_seconds: 0.2, keys_poll_seconds: 0.2, log_flush_seconds: 0.2, recent_queries: 1}}"


@pytest.fixture(scope="module")
def logged(search_world: Workspace, tmp_path_factory: pytest.TempPathFactory):
    with running(serve_settings(search_world.index, tmp_path_factory.mktemp("logged"), LOG_VARS)) as server:
        add_keys(server)
        yield server


def read(server: Server, table: str) -> pa.Table:
    server.flush_log()
    files = sorted((server.settings.serve_log_dir / table).glob("*"))
    assert files and all(re.fullmatch(r"part-\d{8}T\d{12}-[0-9a-f]{8}\.parquet", f.name) for f in files), files
    return ds.dataset([str(f) for f in files], format="parquet").to_table()


def test_every_request_answered_or_refused_is_logged_with_the_contract_schema(logged):
    searched = logged.post("/v1/search", {"query": "how do I descale the kettle", "mode": "vector", "k": 4}).json()
    cited = logged.post(
        "/v1/context", {"query": "price match", "max_tokens": 300, "prompt": "answer_with_citations:staging"}
    ).json()
    unauthenticated = logged.post("/v1/search", {"query": "kettle"}, key="rp_not-a-key").json()
    invalid = logged.post("/v1/search", {"query": "kettle", "k": 1000}).json()
    rows = read(logged, QUERY_LOG)
    assert rows.schema == QUERY_LOG_SCHEMA
    by_id = {row["query_id"]: row for row in rows.to_pylist()}
    index = logged.get("/readyz").json()["index"]

    row = by_id[searched["query_id"]]
    assert (row["caller"], row["access_level"], row["route"], row["status"], row["error"]) == (
        "internal",
        "internal",
        "/v1/search",
        200,
        None,
    )
    assert (row["mode"], row["k"], row["query"], row["per_document"]) == (
        "vector",
        4,
        "how do I descale the kettle",
        False,
    )
    assert (row["index_table"], row["index_version"]) == (index["table"], index["version"])
    assert json.loads(row["filters"]) == {} and row["prompt_name"] is None and row["context_tokens"] is None
    logged_results = json.loads(row["results"])
    assert [(r["rank"], r["chunk_id"], r["doc_id"]) for r in logged_results] == [
        (r["rank"], r["chunk_id"], r["doc_id"]) for r in searched["results"]
    ]
    assert row["embed_ms"] > 0 and row["search_ms"] > 0 and row["total_ms"] >= row["search_ms"]

    row = by_id[cited["query_id"]]
    assert (row["route"], row["prompt_name"], row["prompt_version"]) == ("/v1/context", "answer_with_citations", "v2")
    assert row["context_tokens"] == cited["context_tokens"] and row["status"] == 200
    assert [r["chunk_id"] for r in json.loads(row["results"])] == [c["chunk_id"] for c in cited["citations"]]

    row = by_id[unauthenticated["query_id"]]
    assert (row["status"], row["caller"], row["error"]) == (401, None, "unknown or revoked API key")
    row = by_id[invalid["query_id"]]
    assert (row["status"], row["caller"], row["k"], row["query"]) == (422, "internal", 1000, "kettle")
    assert "body.k" in row["error"]
    assert not list(logged.settings.serve_log_dir.rglob("*.tmp")), "a finished log file is renamed, never left .tmp"


def test_feedback_on_an_older_query_is_checked_against_the_query_log(logged):
    older = logged.post("/v1/search", {"query": "price match", "k": 3}).json()
    logged.post("/v1/search", {"query": "kettle", "k": 3})  # pushes `older` out of memory
    assert logged.service.recent.get(older["query_id"]) is None
    logged.flush_log()
    chunk = older["results"][1]
    response = logged.post(
        "/v1/feedback", {"query_id": older["query_id"], "chunk_id": chunk["chunk_id"], "label": "click"}
    )
    assert response.status_code == 202, response.text
    not_returned = {"query_id": older["query_id"], "doc_id": "faq-not-returned", "label": "relevant"}
    assert logged.post("/v1/feedback", not_returned).status_code == 422
    other = logged.post("/v1/feedback", {**not_returned, "doc_id": chunk["doc_id"]}, key="public")
    assert other.status_code == 403
    rows = read(logged, FEEDBACK)
    assert rows.schema == FEEDBACK_SCHEMA
    row = next(r for r in rows.to_pylist() if r["feedback_id"] == response.json()["feedback_id"])
    assert (row["query_id"], row["caller"], row["doc_id"], row["chunk_id"], row["label"], row["comment"]) == (
        older["query_id"],
        "internal",
        chunk["doc_id"],  # implied by the chunk
        chunk["chunk_id"],
        "click",
        None,
    )


def test_keys_never_reach_the_logs_the_query_log_or_error_messages(logged, caplog):
    wrong = "rp_wrong" + "x" * 30
    bodies = [logged.post("/v1/search", {"query": "kettle"}, key=wrong).text]
    bodies.append(logged.post("/v1/search", {"query": "kettle", "mode": "bm25"}).text)
    bodies.append(logged.post("/v1/context", {"query": "kettle", "max_tokens": 50, "prompt": "nope"}).text)
    bodies.append(logged.post("/v1/feedback", {"query_id": "f" * 32, "doc_id": "x", "label": "click"}).text)
    logged.flush_log()
    secrets = [*logged.keys.values(), wrong]
    written = b"".join(p.read_bytes() for p in logged.settings.serve_log_dir.rglob("*") if p.is_file())
    stored = logged.settings.keys_path.read_text(encoding="utf-8")
    for secret in secrets:
        assert secret.encode() not in written
        assert secret not in caplog.text and all(secret not in body for body in bodies)
        assert secret not in stored, "the key file keeps hashes only"


def test_the_daily_token_budget_survives_a_restart(logged):
    logged.add_key("budgeted", "public", daily_tokens=80)
    used = logged.post("/v1/context", {"query": "descale the kettle", "max_tokens": 80}, key="budgeted").json()
    assert used["context_tokens"] > 70
    logged.flush_log()
    with running(logged.settings) as restarted:  # a second process reading the same log and key file
        restarted.keys = logged.keys
        again = restarted.post("/v1/context", {"query": "descale the kettle", "max_tokens": 80}, key="budgeted")
        assert again.status_code == 429 and "budget of 80 tokens" in again.json()["detail"]


def test_an_unwritable_log_directory_drops_rows_but_never_fails_a_request(search_world, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")  # root can write anywhere, but not under a file
    settings = serve_settings(search_world.index, tmp_path / "root", FAST, log_dir=blocker / "serve_log")
    with running(settings) as server:
        server.add_key("internal", "internal")
        statuses = [server.post("/v1/search", {"query": f"kettle {i}", "mode": "fts"}).status_code for i in range(5)]
        asked = server.post("/v1/context", {"query": "descale the kettle", "max_tokens": 100})
        statuses.append(asked.status_code)
        feedback = {
            "query_id": asked.json()["query_id"],
            "doc_id": asked.json()["citations"][0]["doc_id"],
            "label": "click",
        }
        statuses.append(server.post("/v1/feedback", feedback).status_code)
        assert statuses == [200] * 6 + [202]
        server.flush_log()
        assert server.metric("rp_serve_log_rows_dropped_total", table="query_log", reason="write_failed") >= 6
        assert server.metric("rp_serve_log_rows_dropped_total", table="feedback", reason="write_failed") >= 1
        assert server.get("/readyz").json()["log"]["rows_dropped"]["query_log"] >= 6
    assert "dropped" in caplog.text and "cannot write" in caplog.text


def test_a_locked_warehouse_does_not_touch_the_service(search_world, tmp_path):
    """The service never opens the warehouse: a writer holding its lock changes nothing."""
    warehouse = tmp_path / "warehouse.duckdb"
    shutil.copy(search_world.warehouse, warehouse)
    settings = serve_settings(search_world.index, tmp_path / "root", FAST, RP_DUCKDB_PATH=str(warehouse))
    assert settings.warehouse_path == warehouse
    with warehouse_locked_by_another_process(warehouse), running(settings) as server:
        server.add_key("internal", "internal")
        for mode in ("vector", "fts", "hybrid"):
            assert server.post("/v1/search", {"query": "kettle", "mode": mode}).status_code == 200
        assert len(read(server, QUERY_LOG)) == 3
        assert str(warehouse) not in open_files(), "the service must never open the warehouse"


def open_files() -> set[str]:
    files = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            files.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return files


def test_a_full_log_queue_drops_and_counts_instead_of_blocking(tmp_path):
    dropped: list[tuple[str, str, int]] = []
    writer = LogWriter(tmp_path, queue_size=2, flush_seconds=60, on_dropped=lambda *a: dropped.append(a))
    row = dict.fromkeys(QUERY_LOG_SCHEMA.names) | {"query_id": "a" * 32, "status": 200}
    assert [writer.log(QUERY_LOG, row) for _ in range(5)] == [True, True, False, False, False]
    assert dropped == [(QUERY_LOG, "queue_full", 1)] * 3 and writer.dropped[QUERY_LOG] == 3
    writer.stop()  # drains what was queued
    assert writer.written[QUERY_LOG] == 2
    assert ds.dataset(str(tmp_path / QUERY_LOG), format="parquet").count_rows() == 2
