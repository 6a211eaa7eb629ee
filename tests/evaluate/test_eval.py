"""The evaluation: metrics per mode, history in the warehouse, gates, and BEIR datasets end to end."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from python_jobs.evaluate import datasets as eval_set
from python_jobs.evaluate.metrics import METRICS, evaluate
from python_jobs.evaluate.run import EVAL_TAG, run_eval
from python_jobs.index.store import VectorIndex
from tests.worlds import PROJECT_DIR, SECRET_DOC_ID, SECRET_QUERY, Workspace

NO_GATES = "{eval: {gates: []}}"  # the project's gates are for the sample corpus, not these worlds
BEIR_FIXTURE = PROJECT_DIR / "tests" / "fixtures" / "beir-tiny"
KETTLE = "faq-brightwater-variable-temp-kettle"
PRICE_MATCH = "faq-price-match"
STAFF_PRICE_MATCH = "faq-staff-price-match-at-register"
QUESTIONS = [
    # question_id, question, category, asker_access_level, filter_doc_type, filter_product_sku
    ("q1", "how do I get the chalky scale out of my kettle", "how-to", "public", "", ""),
    ("q2", "will you match a lower price I found at another shop", "policy", "public", "", ""),
    ("q3", "customer wants a price match at the till, what do I check", "policy", "internal", "", ""),
    ("q4", SECRET_QUERY, "how-to", "public", "", ""),
    ("q5", "goodwill program free base for descaling returns", "troubleshooting", "confidential", "", ""),
    ("q6", "do you sell lawn mowers", "product facts", "public", "faq", ""),
]
JUDGMENTS = [
    ("q1", KETTLE, 2),
    ("q2", PRICE_MATCH, 2),
    ("q3", STAFF_PRICE_MATCH, 2),
    ("q3", PRICE_MATCH, 1),
    ("q4", KETTLE, 2),  # the public asker cannot read the confidential note, so it is not judged for them
    ("q5", SECRET_DOC_ID, 2),
]


def write_eval_set(directory: Path, questions=QUESTIONS, judgments=JUDGMENTS) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    questions_path, judgments_path = directory / "questions.csv", directory / "judgments.csv"
    with questions_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question_id", "question", "category", "asker_access_level", "filter_doc_type"])
        writer.writerows(row[:5] for row in questions)
    with judgments_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question_id", "doc_id", "relevance"])
        writer.writerows(judgments)
    return questions_path, judgments_path


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory) -> tuple[Path, Path]:
    return write_eval_set(tmp_path_factory.mktemp("evalset"))


@pytest.fixture(scope="module")
def evaluated(search_world: Workspace, eval_files, tmp_path_factory):
    """One evaluation of the search world (in a copy, since it records runs), with its summary."""
    ws = search_world.copy(tmp_path_factory.mktemp("evaluated") / "ws")
    summary = run_eval(ws.settings(vars=NO_GATES), eval_set.from_csv(*eval_files, name="search-world"))
    return ws, summary


def test_every_mode_is_scored_per_question_category_and_overall(evaluated):
    _, summary = evaluated
    assert summary.modes == ["vector", "fts", "hybrid"] and summary.ks == [1, 3, 5, 10]
    assert summary.questions == 6 and summary.questions_evaluated == 5
    assert summary.skipped_questions == ["q6"]  # nothing answers it: left out of the means
    keys = {f"{metric}@{k}" for metric in METRICS for k in (1, 3, 5, 10)}
    for mode in summary.modes:
        assert set(summary.aggregate[mode]) == keys
        assert set(summary.by_category[mode]) == {"how-to", "policy", "troubleshooting"}
        assert summary.per_question[mode]["q1"]["hit_rate@1"] == 1.0
        assert summary.per_question[mode]["q5"]["mrr@10"] == 1.0  # a confidential asker finds the note
    assert summary.status == "passed"  # no gates configured and no earlier run


def test_the_run_is_recorded_with_index_model_chunking_and_commit(evaluated):
    ws, summary = evaluated
    [run] = ws.query(
        "select status, dataset, index_version, model_fingerprint, chunking_config_hash, git_commit, questions, "
        "questions_evaluated from ops.eval_runs"
    )
    live = VectorIndex(ws.index).live()
    [(chunking_hash,)] = ws.query("select distinct chunking_config_hash from knowledge.document_chunks")
    assert run[:5] == ("passed", "search-world", live.version, live.model["id"], chunking_hash)
    assert re.fullmatch(r"[0-9a-f]{40}", run[5]) and run[6:] == (6, 5)
    [(metric_rows,)] = ws.query("select count(*) from ops.eval_metrics")
    assert metric_rows == 3 * (1 + 3) * len(METRICS) * 4  # modes x (all + categories) x metrics x ks
    [(stored,)] = ws.query(
        "select value from ops.eval_metrics where mode = 'hybrid' and category = 'all' and metric = 'ndcg' and k = 10"
    )
    assert stored == pytest.approx(summary.aggregate["hybrid"]["ndcg@10"])


def test_stored_rankings_reproduce_the_stored_metrics(evaluated):
    """What each question retrieved is kept; scoring it again gives the recorded values."""
    ws, _ = evaluated
    qrels = {q: {d: r for q2, d, r in JUDGMENTS if q2 == q} for q, *_ in QUESTIONS}
    for mode in ("vector", "fts", "hybrid"):
        rows = ws.query(f"select question_id, retrieved_doc_ids from ops.eval_question_results where mode = '{mode}'")
        run = {q: [(d, 0.0) for d in json.loads(ids)] for q, ids in rows}
        expected = evaluate(run, {q: j for q, j in qrels.items() if j}).per_query
        stored = ws.query(f"select question_id, metric, k, value from ops.eval_question_metrics where mode = '{mode}'")
        assert len(stored) == 5 * len(METRICS) * 4
        for question_id, metric, k, value in stored:
            assert value == pytest.approx(expected[question_id][f"{metric}@{k}"], abs=1e-12)


def test_askers_only_ever_retrieve_what_they_may_read(evaluated):
    ws, _ = evaluated
    rows = ws.query("select mode, retrieved_doc_ids from ops.eval_question_results where question_id = 'q4'")
    assert len(rows) == 3
    for mode, ids in rows:
        assert SECRET_DOC_ID not in json.loads(ids), mode
        assert json.loads(ids)[0] == KETTLE, mode


def test_the_evaluated_version_is_pinned_against_cleanup(evaluated):
    ws, summary = evaluated
    table = VectorIndex(ws.index).open(summary.index_table)
    assert table.tags.list()[EVAL_TAG]["version"] == summary.index_version


def test_a_threshold_failure_exits_non_zero_naming_the_metric_values_and_questions(search_world, eval_files, tmp_path):
    ws = search_world.copy(tmp_path / "ws")
    # Full-text mode only: no model to load, the gates work the same in every mode.
    floors = '{eval: {gates: ["fts precision@10 >= 0.5", "fts hit_rate@5 >= 0.5"]}}'
    files = ("--questions", str(eval_files[0]), "--judgments", str(eval_files[1]))
    result = ws.job("eval", *files, "--mode", "fts", RP_VARS=floors)
    assert result.returncode == 6, result.stderr
    assert "fts" in result.stdout and "nDCG" in result.stdout  # the table comes first
    assert re.search(r"fts precision@10 = 0\.\d{4}, below the threshold 0\.5000; lowest: q\d", result.stderr)
    assert "fts hit_rate@5" not in result.stderr  # that gate passed
    assert ws.query("select status, gates_checked, gate_failures from ops.eval_runs") == [("failed_gates", 2, 1)]


def test_a_regression_against_the_last_passing_run_names_the_questions_that_got_worse(
    search_world, eval_files, tmp_path
):
    ws = search_world.copy(tmp_path / "ws")
    args = ("--questions", str(eval_files[0]), "--judgments", str(eval_files[1]), "--mode", "fts", "--json")
    baseline = json.loads(ws.job("eval", *args, check=True, RP_VARS=NO_GATES).stdout)
    assert baseline["status"] == "passed"

    (ws.landing / "docs" / "faq" / "faq-price-match.md").unlink()  # q2's only relevant document
    ws.ingest(check=True)
    ws.dbt("build", "--select", "stg_docs__documents+", check=True)
    # A deletion (no model call) of a quarter of this small index: past the mass-delete guard on purpose.
    ws.job("embed", "--allow-mass-delete", check=True)
    result = ws.job("eval", *args, RP_VARS=NO_GATES)
    assert result.returncode == 6
    summary = json.loads(result.stdout)
    failures = {f["metric"]: f for f in summary["gate_failures"] if f["kind"] == "regression"}
    assert "ndcg@10" in failures and summary["baseline_run_id"] == baseline["run_id"]
    worse = failures["ndcg@10"]["worse_questions"]
    assert worse[0]["question_id"] == "q2" and worse[0]["before"] > 0.5 and worse[0]["after"] == 0.0
    assert "fts ndcg@10 fell from" in result.stderr and re.search(r"q2 \d\.\d\d->0\.00", result.stderr)

    tolerant = ws.job("eval", *args, RP_VARS="{eval: {gates: [], regression_tolerance: 1.0}}")
    assert tolerant.returncode == 0 and json.loads(tolerant.stdout)["baseline_run_id"] == baseline["run_id"]


def test_the_default_set_is_the_seeds_dbt_built(search_world, tmp_path):
    ws = search_world.copy(tmp_path / "ws")
    result = ws.job("eval", "--no-gates", "--mode", "fts", "--json", check=True)
    summary = json.loads(result.stdout)
    with (PROJECT_DIR / "seeds" / "eval_questions.csv").open(encoding="utf-8") as handle:
        seeded = sum(1 for _ in csv.DictReader(handle))
    assert summary["dataset"] == "sample" and summary["questions"] == seeded and summary["status"] == "measured"
    assert "warehouse seeds" in summary["source"]


def test_bad_eval_set_rows_are_named(search_world, tmp_path):
    cases = [
        ([*QUESTIONS, QUESTIONS[0]], JUDGMENTS, r"questions\.csv row 8: question_id 'q1' appears twice"),
        ([("q1", "x", "how-to", "root", "", "")], [("q1", KETTLE, 1)], r"row 2 \(q1\): access level 'root' is unknown"),
        (QUESTIONS, [("q1", KETTLE, "high")], r"judgments\.csv row 2: a judgment needs .* integer relevance"),
    ]
    for i, (questions, judgments, message) in enumerate(cases):
        paths = write_eval_set(tmp_path / str(i), questions, judgments)
        result = search_world.job("eval", "--questions", str(paths[0]), "--judgments", str(paths[1]))
        assert result.returncode == 2, result.stderr
        assert re.search(message, result.stderr), result.stderr
        assert "Traceback" not in result.stderr


# --- BEIR ------------------------------------------------------------------------------------


def eval_beir(data: Path, workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`rp eval-beir DATA --workspace WORKSPACE ...`, its command line run in this process,
    which has the model loaded already; the pipeline steps (ingest, dbt, embed) still run as jobs of their own."""
    from click.testing import CliRunner

    from python_jobs.cli import cli

    argv = ["eval-beir", str(data), "--workspace", str(workspace), *args]
    result = CliRunner().invoke(cli, argv, env=Workspace(workspace).env, catch_exceptions=False)
    return subprocess.CompletedProcess(argv, result.exit_code, result.stdout, result.stderr)


def test_a_beir_dataset_goes_through_the_pipeline_and_a_rerun_is_incremental(tmp_path):
    data = tmp_path / "beir-tiny"
    shutil.copytree(BEIR_FIXTURE, data)
    # Public abstracts carry their authors' addresses: redacted by default, where no_pii would block the build.
    corpus = data / "corpus.jsonl"
    corpus.write_text(corpus.read_text().replace("was not.", "was not. Contact: a.author@univ.example.edu."))
    workspace = tmp_path / "workspace"
    first = eval_beir(data, workspace, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["pii"] == {"action": "redact", "redactions": 1, "chunks": 1, "documents": 1}
    assert "personal data: redact: 1 match redacted in 1 chunk of 1 document" in first.stderr
    assert report["documents"] == 20 and report["queries"] == 7  # Q8 is not judged
    assert report["landing"]["untitled"] == 1
    assert set(report["table"]) == {"vector", "fts", "hybrid"}
    for values in report["table"].values():
        assert set(values) == {"ndcg@10", "recall@100", "map@100", "precision@10", "mrr@10"}
        assert all(0 <= v <= 1 for v in values.values())
    assert report["table"]["hybrid"]["ndcg@10"] > 0.8

    corpus.write_text("".join(line for line in corpus.open() if '"D10"' not in line), encoding="utf-8")
    second = eval_beir(data, workspace, "--json", "--mode", "fts")  # nothing to embed, no model to load
    assert second.returncode == 0, second.stderr
    landing = json.loads(second.stdout)["landing"]
    assert (landing["written"], landing["unchanged"], landing["removed"]) == (0, 19, 1)
    ws = Workspace(workspace)
    last_embed = ws.query("select texts_embedded, chunks_deleted from ops.embed_runs order by started_at desc limit 1")
    assert last_embed == [(0, 1)]
    assert VectorIndex(workspace / "index").open_live().count_rows() == 19
    assert ws.query("select count(*), count(distinct run_id) from ops.eval_runs where dataset = 'beir-tiny'") == [
        (2, 2)
    ]


def test_a_bad_beir_dataset_fails_before_anything_is_written(tmp_path):
    data = tmp_path / "broken"
    shutil.copytree(BEIR_FIXTURE, data)
    with (data / "queries.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    result = eval_beir(data, tmp_path / "ws")
    assert result.returncode == 2 and "queries.jsonl:9: not valid JSON" in result.stderr
    assert not (tmp_path / "ws").exists()

    (data / "queries.jsonl").write_text('{"_id": "Q1", "text": "coffee"}\n', encoding="utf-8")
    result = eval_beir(data, tmp_path / "ws")
    assert result.returncode == 2 and "judged queries are not in" in result.stderr
