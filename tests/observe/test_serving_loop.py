"""The loop back from serving to evaluation, on real files, real dbt, a real index and the real CLI.

The service's log writer (python_jobs/serve/querylog.py) writes a day of traffic as Parquet files
beside a half-written `.tmp` file, `rp keys` code writes the key store; then one dbt build (the one
`rp eval promote-feedback` runs) turns them into the serving marts, the promotion writes the judged
set, `rp eval` measures on it, and the dashboard shows the serving section. One world, built once per
module (`loop_world`); each test reads it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from python_jobs.evaluate import datasets
from python_jobs.serve.keys import create_key, revoke_key
from python_jobs.serve.querylog import FEEDBACK, QUERY_LOG, LogWriter
from tests.worlds import PROJECT_DIR, Workspace

KETTLE_DOC = "faq-brightwater-variable-temp-kettle"
PRICE_DOC = "faq-price-match"
PICKUP_DOC = "faq-store-pickup"
KETTLE_QUESTION = "How do I descale the kettle?"
PRICE_QUESTION = "price match policy"
ORDER_QUESTION = "where is my order"
# fts only: no model load; the small world answers few seeded questions, so no release gates.
EVAL_VARS = "{{eval: {{modes: [fts], gates: [], feedback_judgments_path: {path}}}}}"


@dataclass
class Traffic:
    """What was logged, to check the marts against."""

    start: datetime
    hour: datetime
    latency_ms: dict[str, list[float]]  # mode -> total_ms of the successful requests in `hour`
    requests: dict[str, int]  # mode -> requests in `hour`, whatever their outcome
    errors: dict[str, int]
    refused: dict[str, int]
    feedback: int
    key_hash: str


def request(query_id: str, at: datetime, caller: str, level: str, mode: str, query: str, docs: list[str], **extra):
    row = {
        "query_id": query_id,
        "logged_at": at,
        "caller": caller,
        "access_level": level,
        "route": "/v1/search",
        "status": 200,
        "mode": mode,
        "k": 5,
        "query": query,
        "filters": "{}",
        "per_document": False,
        "index_table": "chunks_test",
        "index_version": 7,
        "results": json.dumps(
            [
                {"rank": rank, "chunk_id": f"{doc}:0:000", "doc_id": doc, "score": 1.0 / rank}
                for rank, doc in enumerate(docs, start=1)
            ]
        ),
        "embed_ms": 2.0,
        "search_ms": 3.0,
        "total_ms": 10.0,
    }
    return {**row, **extra}


def log_traffic(ws: Workspace) -> Traffic:
    """Keys made by `rp keys`' code, then a minute of traffic: search in every mode, context with the staging
    prompt, refused and failed requests, and feedback, written by the service's own log writer."""
    settings = ws.settings()
    bot = create_key(settings.keys_path, "support-bot", "public", rate_per_second=5.0)
    create_key(settings.keys_path, "staff-app", "internal", daily_tokens=100_000)
    create_key(settings.keys_path, "retired", "confidential")
    revoke_key(settings.keys_path, "retired")
    # Requests a second apart from now on, all in one clock hour (the next one if this one ends within 2 min).
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    if (start + timedelta(minutes=2)).hour != start.hour:
        start = (start + timedelta(minutes=2)).replace(minute=0, second=0)
    hour = start.replace(minute=0, second=0)
    at = iter(start + timedelta(seconds=i) for i in range(100))
    rows, feedback = [], []
    latency: dict[str, list[float]] = {"hybrid": [], "fts": [], "vector": []}
    kettle = [KETTLE_DOC, PRICE_DOC]
    for i in range(20):  # the kettle question, typed several ways
        wording = KETTLE_QUESTION if i % 2 else "  how do I DESCALE the   kettle? "
        total = 10.0 + i * 1.5
        rows.append(request(f"h{i}", next(at), "support-bot", "public", "hybrid", wording, kettle, total_ms=total))
        latency["hybrid"].append(total)
    for i in range(3):  # context, rendered with the prompt under trial
        rows.append(
            request(
                f"c{i}",
                next(at),
                "support-bot",
                "public",
                "hybrid",
                KETTLE_QUESTION,
                kettle,
                route="/v1/context",
                prompt_name="answer_with_citations",
                prompt_version="v2",
                context_tokens=300,
                total_ms=40.0 + i,
            )
        )
        latency["hybrid"].append(40.0 + i)
    rows.append(
        request(
            "boom",
            next(at),
            "support-bot",
            "public",
            "hybrid",
            KETTLE_QUESTION,
            [],
            status=500,
            error="index unavailable",
            results="[]",
            total_ms=1.0,
        )
    )
    for i in range(2):
        rows.append(
            request(
                f"slow{i}",
                next(at),
                "support-bot",
                "public",
                "hybrid",
                KETTLE_QUESTION,
                [],
                status=429,
                error="rate limit: 5 requests/s",
                results=None,
                total_ms=0.1,
            )
        )
    for i in range(10):
        total = 1.0 + i
        rows.append(
            request(f"f{i}", next(at), "staff-app", "internal", "fts", PRICE_QUESTION, [PRICE_DOC], total_ms=total)
        )
        latency["fts"].append(total)
    for i in range(4):
        rows.append(
            request(
                f"v{i}", next(at), "staff-app", "internal", "vector", ORDER_QUESTION, [PICKUP_DOC], total_ms=20.0 + i
            )
        )
        latency["vector"].append(20.0 + i)
    # an hour earlier, asked again: the question is top of "no relevant feedback", the latency has two hours
    rows.append(
        request(
            "early",
            hour - timedelta(minutes=30),
            "staff-app",
            "internal",
            "vector",
            ORDER_QUESTION,
            [PICKUP_DOC],
            total_ms=99.0,
        )
    )

    def label(feedback_id: str, query_id: str, doc: str, value: str, seconds: int, caller: str = "support-bot"):
        given_at = start + timedelta(seconds=seconds)
        feedback.append(
            {
                "feedback_id": feedback_id,
                "query_id": query_id,
                "logged_at": given_at,
                "caller": caller,
                "doc_id": doc,
                "chunk_id": None,
                "label": value,
                "comment": None,
            }
        )

    label("fb1", "h0", KETTLE_DOC, "not_relevant", 60)  # changed its mind: the later label counts
    label("fb2", "h0", KETTLE_DOC, "relevant", 61)
    label("fb3", "h1", KETTLE_DOC, "relevant", 62)
    label("fb4", "c0", KETTLE_DOC, "relevant", 63)
    label("fb5", "h2", KETTLE_DOC, "click", 64)  # a click is not a vote
    label("fb6", "h1", PRICE_DOC, "not_relevant", 65)
    label("fb7", "f0", PRICE_DOC, "relevant", 66, "staff-app")  # disputed: one for, one against
    label("fb8", "f1", PRICE_DOC, "not_relevant", 67, "staff-app")

    writer = LogWriter(settings.serve_log_dir, queue_size=1000, flush_seconds=60)
    for row in rows:
        assert writer.log(QUERY_LOG, row)
    for row in feedback:
        assert writer.log(FEEDBACK, row)
    writer.flush()
    # a file the writer is still writing: never matched by the sources' glob
    (settings.serve_log_dir / QUERY_LOG / "part-20991231T000000000000-0000000f.parquet.tmp").write_bytes(b"PAR1 half")

    in_hour = [r for r in rows if r["logged_at"] >= hour]
    return Traffic(
        start=start,
        hour=hour,
        latency_ms=latency,
        requests={m: sum(r["mode"] == m for r in in_hour) for m in latency},
        errors={m: sum(r["mode"] == m and r["status"] >= 500 for r in in_hour) for m in latency},
        refused={m: sum(r["mode"] == m and 400 <= r["status"] < 500 for r in in_hour) for m in latency},
        feedback=len(feedback),
        key_hash=bot.key.key_hash,
    )


@pytest.fixture(scope="module")
def loop_world(indexed_world: Workspace, tmp_path_factory: pytest.TempPathFactory):
    """The indexed world after a day of traffic, `rp eval promote-feedback` (its one dbt build),
    `rp eval` and `rp report --no-refresh`."""
    ws = indexed_world.copy(tmp_path_factory.mktemp("loop") / "ws")
    html_before = ws.root / "dashboard-before.html"
    before = ws.rp("report", "--no-refresh", "--out", str(html_before), "--json")
    assert before.returncode == 0, before.stderr
    traffic = log_traffic(ws)
    promoted_file = ws.root / "eval_feedback_judgments.csv"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RP_VARS", EVAL_VARS.format(path=promoted_file))
        promoted = ws.rp("eval", "promote-feedback", "--min-votes", "2", "--json", check=True)
        again = ws.rp("eval", "promote-feedback", "--min-votes", "2", "--no-refresh", "--json", check=True)
        evaluated = ws.rp("eval", "--json", check=True)
        report = ws.rp("report", "--no-refresh", "--json", check=True)
    return {
        "ws": ws,
        "traffic": traffic,
        "promoted_file": promoted_file,
        "promoted": json.loads(promoted.stdout),
        "again": json.loads(again.stdout),
        "eval": json.loads(evaluated.stdout),
        "report": json.loads(report.stdout),
        "html_before": html_before.read_text(encoding="utf-8"),
    }


def rows(ws: Workspace, sql: str) -> list[dict]:
    import duckdb

    with duckdb.connect(str(ws.warehouse), read_only=True) as con:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# --- the marts ------------------------------------------------------------------------------------


def test_latency_mart_has_percentiles_and_error_rates_per_hour_and_mode(loop_world):
    ws, traffic = loop_world["ws"], loop_world["traffic"]
    latency = {
        r["search_mode"]: r
        for r in rows(
            ws,
            "select * from observability.ops_query_latency where request_hour = "
            f"'{traffic.hour.isoformat()}'::timestamptz",
        )
    }
    assert set(latency) == {"hybrid", "fts", "vector"}
    for mode, values in traffic.latency_ms.items():
        row = latency[mode]
        assert row["requests"] == traffic.requests[mode]
        assert (row["error_requests"], row["refused_requests"]) == (traffic.errors[mode], traffic.refused[mode])
        assert row["error_rate"] == pytest.approx(traffic.errors[mode] / traffic.requests[mode])
        # refused and failed requests leave the percentiles alone: numpy's linear interpolation, on the ok ones
        for p in (50, 95, 99):
            assert row[f"latency_p{p}_ms"] == pytest.approx(np.percentile(values, p)), (mode, p)
    assert latency["hybrid"]["context_requests"] == 3 and latency["hybrid"]["error_rate"] == pytest.approx(1 / 26)
    earlier = rows(
        ws,
        "select requests from observability.ops_query_latency where request_hour < "
        f"'{traffic.hour.isoformat()}'::timestamptz",
    )
    assert earlier == [{"requests": 1}]


def test_queries_carry_the_prompt_version_that_served_them(loop_world):
    ws = loop_world["ws"]
    versions = {r["prompt_version"]: r for r in rows(ws, "select * from observability.prompt_versions")}
    assert versions["v1"]["is_production"] and versions["v2"]["prompt_labels"] == "staging"
    served = rows(
        ws,
        "select prompt_version, prompt_labels, is_unknown_prompt_version, count(*) as n from observability.ops_queries "
        "where route = '/v1/context' group by all",
    )
    assert served == [{"prompt_version": "v2", "prompt_labels": "staging", "is_unknown_prompt_version": False, "n": 3}]
    manifest = json.loads((ws.target / "manifest.json").read_text(encoding="utf-8"))
    assert "model.retrieval_platform.ops_queries" in manifest["child_map"]["model.retrieval_platform.prompt_versions"]


def test_feedback_mart_joins_each_label_to_its_request(loop_world):
    ws, traffic = loop_world["ws"], loop_world["traffic"]
    feedback = {r["feedback_id"]: r for r in rows(ws, "select * from observability.ops_feedback")}
    assert len(feedback) == traffic.feedback
    assert all(r["is_logged_query"] for r in feedback.values())
    assert (feedback["fb2"]["doc_rank"], feedback["fb6"]["doc_rank"]) == (1, 2)
    assert feedback["fb4"]["prompt_version"] == "v2" and feedback["fb4"]["route"] == "/v1/context"


def test_feedback_becomes_candidate_judgments_one_vote_per_request(loop_world):
    ws = loop_world["ws"]
    candidates = {
        (r["question"], r["doc_id"]): r for r in rows(ws, "select * from observability.eval_feedback_candidates")
    }
    kettle = candidates[(KETTLE_QUESTION, KETTLE_DOC)]  # every wording of the question is one candidate
    assert (kettle["votes_for"], kettle["votes_against"], kettle["clicks"]) == (3, 0, 1)
    assert kettle["proposed_relevance"] == 2 and kettle["asker_access_level"] == "public"
    assert kettle["times_asked"] == 23 and kettle["prompt_versions"] == "answer_with_citations@v2"
    price = candidates[(PRICE_QUESTION, PRICE_DOC)]
    assert (price["votes_for"], price["votes_against"], price["proposed_relevance"]) == (1, 1, 0)
    assert price["asker_access_level"] == "internal"
    assert candidates[(KETTLE_QUESTION, PRICE_DOC)]["proposed_relevance"] == 0
    assert len(candidates) == 3


def test_key_store_reaches_the_warehouse_without_any_hash(loop_world):
    ws, traffic = loop_world["ws"], loop_world["traffic"]
    keys = {r["key_name"]: r for r in rows(ws, "select * from observability.ops_api_keys")}
    assert set(keys) == {"support-bot", "staff-app", "retired"}
    assert keys["support-bot"]["access_level"] == "public" and keys["support-bot"]["rate_per_second"] == 5.0
    assert keys["staff-app"]["daily_tokens"] == 100_000
    assert not keys["retired"]["is_active"] and keys["retired"]["revoked_at"] is not None
    assert keys["support-bot"]["requests"] == 26 and keys["support-bot"]["refused_requests"] == 2
    assert keys["support-bot"]["context_tokens"] == 900
    columns = rows(
        ws,
        "select table_schema, table_name, column_name from information_schema.columns "
        "where column_name in ('key_hash', 'key_prefix')",
    )
    assert columns == []
    dumped = json.dumps(rows(ws, "select * from staging.stg_serve__api_keys"), default=str)
    assert traffic.key_hash not in dumped and "support-bot" in dumped


def test_serve_source_columns_match_what_the_service_writes():
    """The staging models read the files by their declared columns: a column the service adds must be declared."""
    import pyarrow as pa
    import yaml

    from python_jobs.serve.keys import ApiKey
    from python_jobs.serve.querylog import FEEDBACK_SCHEMA, QUERY_LOG_SCHEMA

    duckdb_types = {
        pa.string(): "varchar",
        pa.timestamp("us", tz="UTC"): "timestamptz",
        pa.int32(): "integer",
        pa.int64(): "bigint",
        pa.float64(): "double",
        pa.bool_(): "boolean",
    }
    sources = yaml.safe_load((PROJECT_DIR / "models/staging/serve/_serve__sources.yml").read_text(encoding="utf-8"))
    declared = {t["name"]: {c["name"]: c["data_type"] for c in t["columns"]} for t in sources["sources"][0]["tables"]}
    for table, schema in (("query_log", QUERY_LOG_SCHEMA), ("feedback", FEEDBACK_SCHEMA)):
        assert declared[table] == {f.name: duckdb_types[f.type] for f in schema}, table
    stored = [name for name in ApiKey.__dataclass_fields__ if name not in ("key_hash", "key_prefix")]
    assert list(declared["api_keys"]) == stored  # everything but the secret's traces


# --- promotion and evaluation -------------------------------------------------------------------


def test_promote_feedback_writes_the_voted_candidates_with_their_provenance(loop_world):
    promoted, path = loop_world["promoted"], loop_world["promoted_file"]
    assert promoted["refreshed"] and promoted["candidates"] == 3 and promoted["not_relevant"] == 2
    with path.open(encoding="utf-8", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["question"] == KETTLE_QUESTION and row["doc_id"] == KETTLE_DOC and row["relevance"] == "2"
    assert (row["source"], row["votes_for"], row["votes_against"], row["clicks"]) == ("feedback", "3", "0", "1")
    assert row["asker_access_level"] == "public" and row["question_id"].startswith("fb-")
    first, last = datetime.fromisoformat(row["first_seen_at"]), datetime.fromisoformat(row["last_seen_at"])
    start = loop_world["traffic"].start
    assert (first, last) == (start + timedelta(seconds=60), start + timedelta(seconds=64))
    assert datetime.now(UTC) - datetime.fromisoformat(row["promoted_at"]) < timedelta(minutes=10)
    # the second run finds it promoted and leaves the file alone
    again = loop_world["again"]
    assert again["already_promoted"] == 1 and again["promoted"] == [] and not again["refreshed"]


def test_the_next_eval_measures_the_promoted_question(loop_world):
    ws, summary, path = loop_world["ws"], loop_world["eval"], loop_world["promoted_file"]
    with path.open(encoding="utf-8", newline="") as handle:
        question_id = next(csv.DictReader(handle))["question_id"]
    with (PROJECT_DIR / "seeds" / "eval_questions.csv").open(encoding="utf-8") as handle:
        seeded = sum(1 for _ in csv.DictReader(handle))
    assert summary["questions"] == seeded + 1 and "promoted feedback judgments" in summary["source"]
    assert summary["per_question"]["fts"][question_id]["hit_rate@5"] == 1.0
    assert "feedback" in summary["by_category"]["fts"]
    (recorded,) = rows(
        ws,
        "select category, question, evaluated, relevant_doc_ids, first_relevant_rank from ops.eval_question_results "
        f"where question_id = '{question_id}'",
    )
    assert recorded["category"] == "feedback" and recorded["question"] == KETTLE_QUESTION and recorded["evaluated"]
    assert json.loads(recorded["relevant_doc_ids"]) == [KETTLE_DOC] and recorded["first_relevant_rank"] == 1


def test_a_promoted_question_that_reads_two_ways_is_named(tmp_path):
    path = tmp_path / "promoted.csv"
    path.write_text(
        "question_id,question,asker_access_level,doc_id,relevance\n"
        "fb-1,descale the kettle,public,a,2\n"
        "fb-1,clean the kettle,public,b,1\n",
        encoding="utf-8",
    )
    seeded = datasets.EvalSet("sample", "seeds", [datasets.Question("q1", "x")], {"q1": {"a": 1}})
    with pytest.raises(datasets.EvalSetError, match=r"promoted\.csv row 3: fb-1 reads differently on row 2"):
        datasets.with_feedback(seeded, path)
    path.write_text("question_id,question,asker_access_level,doc_id,relevance\nq1,x,public,a,2\n", encoding="utf-8")
    with pytest.raises(datasets.EvalSetError, match="'q1' is also a seeded question"):
        datasets.with_feedback(seeded, path)
    assert datasets.with_feedback(seeded, tmp_path / "absent.csv") is seeded


def test_promote_refuses_a_judged_set_with_other_columns_before_building_anything(tmp_path):
    ws = Workspace(tmp_path / "ws")
    promoted = tmp_path / "promoted.csv"
    promoted.write_text("question_id,question,doc_id,relevance\nfb-1,x,a,2\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RP_VARS", EVAL_VARS.format(path=promoted))
        result = ws.rp("eval", "promote-feedback")
    assert result.returncode == 2, result.stdout
    assert f"{promoted}: the header lacks column(s) asker_access_level, source" in result.stderr
    assert not ws.warehouse.exists()  # refused before dbt or the warehouse were touched


# --- the dashboard --------------------------------------------------------------------------------


def test_dashboard_serving_section_shows_latency_errors_feedback_and_unanswered_questions(loop_world):
    report = loop_world["report"]
    assert {"serving-latency", "serving-requests", "feedback-volume"} <= set(report["charts"])
    html = Path(report["path"]).read_text(encoding="utf-8")
    serving = html[html.index('<section id="serving">') : html.index('<section id="tests">')]
    assert 'id="chart-serving-latency"' in serving and 'id="chart-feedback-volume"' in serving
    unanswered = serving[serving.index('id="unanswered"') :]
    assert ORDER_QUESTION in unanswered  # asked five times, never labelled relevant
    assert KETTLE_QUESTION not in unanswered and PRICE_QUESTION not in unanswered
    assert "candidate judgments: 1" in serving  # the kettle's; the other two have no majority for


def test_dashboard_says_when_nothing_was_served_yet(loop_world):
    html = loop_world["html_before"]
    serving = html[html.index('<section id="serving">') : html.index('<section id="tests">')]
    assert "No requests logged yet" in serving and "No feedback received yet" in serving
