"""Nothing untested or mistaken reaches the index, and bad landing records are never lost silently.

Each test is one promise from the adversarial review (issue 13), items 1, 2, 3, 5, 6 and 12,
checked through the real jobs, dbt and index. Each failed on the code before the fix.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess

import pytest

from python_jobs.common.errors import ConfigError
from python_jobs.index.embed import EmbedOptions, MassDeleteError, embed
from python_jobs.index.gate import QualityGateError
from python_jobs.search.filters import FilterError, Filters
from python_jobs.search.retriever import Retriever
from tests.worlds import DOCUMENT_CHAIN, SKIP_OPS, Workspace

PII = "\n## Contact\n\nWrite to jane.doe@example.com or call 555-123-4567 for help.\n"


def gate_refusal(ws: Workspace) -> str:
    with pytest.raises(QualityGateError) as refused:
        embed(ws.settings())
    assert refused.value.exit_code == 3
    return str(refused.value)


def test_gate_binds_to_the_tested_state_of_the_chunks(indexed_world, tmp_path):
    """Item 1: the gate reads evidence bound to the table, not the newest artifacts, so no later
    partial build, `dbt show` or half-finished build can let a chunk that failed no_pii through."""
    ws = indexed_world.copy(tmp_path / "ws")
    price_match = ws.landing / "docs" / "faq" / "faq-price-match.md"
    clean = price_match.read_text()
    price_match.write_text(clean + PII)
    ws.ingest(check=True)
    assert ws.dbt("build", *DOCUMENT_CHAIN).returncode == 1  # no_pii fails at error level

    # The runbook's diagnosis command and a dbt show leave green artifacts of their own.
    ws.dbt("build", "--select", "stg_shop__customers", check=True)
    ws.dbt("show", "--inline", "select 1", check=True)
    refused = gate_refusal(ws)
    assert "no_pii_document_chunks_text" in refused and "--force" in refused

    # A state no run tested: a build killed between materialising the chunks and testing them.
    ws.execute(
        "insert into knowledge.document_chunks select * replace ('injected-' || chunk_id as chunk_id) "
        "from knowledge.document_chunks limit 1"
    )
    assert "no dbt run has tested the current state" in gate_refusal(ws)

    # A run that rebuilt the chunks but left their tests out.
    price_match.write_text(clean)
    ws.ingest(check=True)
    ws.dbt("run", "--select", "+document_chunks", check=True)
    assert "has executed the tests of document_chunks" in gate_refusal(ws)

    # `make chunks` tests that state: now it goes through, and the summary says which run certified it.
    ws.dbt("build", "--select", "+document_chunks+", *SKIP_OPS, check=True)
    summary = embed(ws.settings())
    assert summary.status == "success" and summary.quality_gate.startswith("passed")
    assert not ws.query("select count(*) from knowledge.document_chunks where text like '%jane.doe%'")[0][0]


def test_a_setting_that_quarantines_the_corpus_fails_the_ingest_and_keeps_the_last_load(indexed_world, tmp_path):
    """Item 2, first layer: quarantining most of a source is an error, and nothing is loaded."""
    ws = indexed_world.copy(tmp_path / "ws")
    before = ws.query("select count(*) from raw.docs_documents")[0][0]

    result = ws.rp("ingest", "--full-refresh", RP_VARS="{ingest: {max_document_bytes: 100}}")

    assert result.returncode == 1, result.stdout
    assert "docs_documents" in result.stderr and "vars.ingest.max_quarantine_share" in result.stderr
    assert "Traceback" not in result.stderr
    assert ws.query("select count(*) from raw.docs_documents")[0][0] == before
    status, error = ws.query("select status, error from raw._ingest_runs order by started_at desc limit 1")[0]
    assert status == "error" and "max_quarantine_share" in error


def test_a_run_that_would_gut_the_index_refuses_unless_allowed(indexed_world, tmp_path):
    """Item 2, the other layers: documents and document_chunks fail a row-count drop test, and
    embed refuses to delete most of the index (even when the gate is forced past) unless told to."""
    ws = indexed_world.copy(tmp_path / "ws")
    docs = sorted((ws.landing / "docs").rglob("*.md"))
    for path in docs[1:]:
        path.unlink()
    ws.ingest(check=True)
    build = ws.dbt("build", "--select", "+document_chunks+", *SKIP_OPS)
    assert build.returncode == 1
    assert "documents_row_count_drop_errors" in build.stdout
    # The failed test held the chunks back; a `dbt run` (no tests) does not, and the gate is forced past.
    ws.dbt("run", "--select", "+document_chunks", check=True)
    live_before = json.loads((ws.index / "live.json").read_text())

    with pytest.raises(MassDeleteError) as refused:
        embed(ws.settings(), EmbedOptions(force=True))
    assert refused.value.exit_code == 3 and "max_delete_share" in str(refused.value)
    assert json.loads((ws.index / "live.json").read_text()) == live_before  # still serving the old version

    summary = embed(ws.settings(), EmbedOptions(force=True, allow_mass_delete=True))
    assert summary.status == "success" and any("allowed by --allow-mass-delete" in w for w in summary.warnings)


def test_a_repeated_key_quarantines_the_record_instead_of_picking_one(workspace):
    """Item 3: a second access_level, a repeated JSON key or CSV header column is ambiguous."""
    doc = workspace.landing / "docs" / "faq" / "faq-two-levels.md"
    doc.write_text(
        "---\ndoc_id: faq-two-levels\ntitle: Two levels\ndoc_type: faq\naccess_level: confidential\n"
        "access_level: public\nupdated_at: 2026-01-01\n---\n\nThe body.\n"
    )
    customers = workspace.landing / "shop" / "customers.csv"
    lines = customers.read_text().splitlines()
    customers.write_text("\n".join([lines[0] + ",email", *(line + ",wrong@example.com" for line in lines[1:])]) + "\n")
    products = workspace.landing / "shop" / "products.jsonl"
    first = json.loads(products.read_text().splitlines()[0])
    products.write_text(products.read_text() + json.dumps(first | {"sku": "DUP-1"})[:-1] + ', "sku": "DUP-2"}\n')

    workspace.rp("ingest", check=True, RP_VARS="{ingest: {max_quarantine_share: 1}}")  # one file is all customers

    reasons = dict(
        workspace.query("select source_file || ':' || line, reason from raw._quarantine order by source_file, line")
    )
    assert "appears twice" in reasons["docs/faq/faq-two-levels.md:6"]
    assert not workspace.query("select * from raw.docs_documents where doc_id = 'faq-two-levels'")
    assert sum("repeats column(s) email (fields 4 and 12)" in r for r in reasons.values()) == len(lines) - 1
    assert any("'sku' appears twice" in r for r in reasons.values())
    assert not workspace.query("select * from raw.shop_products where sku like 'DUP-%'")


def test_prices_with_an_exponent_are_parsed_as_numbers_or_fail_their_tests(world):
    """Item 5: 1.2e3 is 1200.00, and 1e21 fails a test instead of becoming 121.00."""
    products = world.landing / "shop" / "products.jsonl"
    rows = [json.loads(line) for line in products.read_text().splitlines()]
    rows[0]["list_price"], rows[1]["list_price"] = "1.2e3", 1e21
    products.write_text("".join(json.dumps(row) + "\n" for row in rows))
    world.ingest(check=True)

    build = world.dbt("build", "--select", "stg_shop__products")

    prices = dict(world.query("select product_sku, list_price from staging.stg_shop__products"))
    assert prices[rows[0]["sku"].upper()] == 1200
    assert prices[rows[1]["sku"].upper()] is None
    assert build.returncode == 1 and "not_null_stg_shop__products_list_price" in build.stdout


def test_a_stray_quote_costs_one_line_not_the_lines_behind_it(workspace):
    """Item 6: every line of a file is loaded or quarantined with its line number."""
    path = next((workspace.landing / "shop" / "transactions").glob("*.csv"))
    lines = path.read_text().splitlines()
    target = next(i for i, line in enumerate(lines[1:], start=1) if "," in line)
    fields = lines[target].split(",")
    fields[-3] = '"' + fields[-3]  # an unbalanced quote in the middle of the record
    lines[target] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")

    summary = json.loads(workspace.ingest("--json", check=True).stdout)

    loaded = workspace.query(f"select count(*) from raw.shop_transactions where _source_file like '%{path.name}'")
    quarantined = workspace.query(f"select line from raw._quarantine where source_file like '%{path.name}'")
    assert loaded[0][0] + len(quarantined) == len(lines) - 1
    assert quarantined == [(target + 1,)]
    assert summary["rows_quarantined"] == 1


# --- item 12: smaller defects, each a clear error and a recorded run -------------------------


def test_a_symlink_out_of_the_landing_zone_is_refused_and_nothing_of_its_target_kept(workspace, tmp_path):
    secret = tmp_path / "secret.md"
    secret.write_text("---\ndoc_id: s\n---\nroot password: hunter2\n" + "x" * 600)
    (workspace.landing / "docs" / "faq" / "link.md").symlink_to(secret)

    result = workspace.ingest()

    assert result.returncode == 1 and "leave the landing zone" in result.stderr and "link.md" in result.stderr
    assert not workspace.query("select * from raw._quarantine where raw_record like '%hunter2%'")
    assert workspace.query("select status from raw._ingest_runs")[0][0] == "error"


def test_a_landing_file_that_cannot_be_read_is_named_and_the_failed_run_recorded(workspace, monkeypatch):
    unreadable = workspace.landing / "shop" / "customers.csv"
    real_read = pathlib.Path.read_bytes

    def read_bytes(path):  # the OS refusing one file (as root, chmod cannot)
        if path == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    result = workspace.ingest()

    assert result.returncode == 1 and "customers.csv: cannot be read (Permission denied)" in result.stderr
    (status, error), *_ = workspace.query("select status, error from raw._ingest_runs")
    assert status == "error" and "customers.csv" in error


def test_a_path_setting_that_is_not_a_directory_is_named_not_a_traceback(indexed_world, tmp_path):
    not_a_dir = tmp_path / "index-file"
    not_a_dir.write_text("")
    result = indexed_world.job("embed", RP_INDEX_DIR=str(not_a_dir))
    assert result.returncode == 1 and str(not_a_dir) in result.stderr and "Traceback" not in result.stderr


def test_queries_and_filters_at_the_edges_get_answers_or_clear_errors(indexed_world):
    retriever = Retriever(indexed_world.settings())
    everything = retriever.search("kettle", mode="fts", k=3, filters=Filters.of(updated_from="0001-01-01"))
    assert everything.hits
    with pytest.raises(FilterError, match="not valid UTF-8"):
        retriever.search("kettle \udcff", mode="fts")


def test_infinite_or_nan_numbers_in_settings_are_refused(indexed_world):
    for vars_yaml in ("{embedding: {max_tokens_per_run: .inf}}", "{embedding: {price_per_million_tokens: .nan}}"):
        with pytest.raises(ConfigError):
            indexed_world.settings(vars=vars_yaml)


def test_a_header_only_judgments_file_is_a_usage_error_before_any_run(indexed_world, tmp_path):
    questions = tmp_path / "questions.csv"
    questions.write_text(
        "question_id,question,category,asker_access_level\nq1,how do I descale the kettle,howto,public\n"
    )
    judgments = tmp_path / "judgments.csv"
    judgments.write_text("question_id,doc_id,relevance\n")
    runs_before = (
        indexed_world.query("select count(*) from ops.eval_runs")[0][0] if _has_eval_runs(indexed_world) else 0
    )

    result = indexed_world.rp("eval", "--questions", str(questions), "--judgments", str(judgments))

    assert result.returncode == 2 and "has no judgments" in result.stderr
    runs_after = indexed_world.query("select count(*) from ops.eval_runs")[0][0] if _has_eval_runs(indexed_world) else 0
    assert runs_after == runs_before


def _has_eval_runs(ws: Workspace) -> bool:
    return bool(ws.query("select 1 from information_schema.tables where table_schema='ops' and table_name='eval_runs'"))


def test_a_killed_embed_run_records_the_tokens_it_committed(pending_world, tmp_path):
    ws = pending_world.copy(tmp_path / "ws")
    killed = ws.job("embed", RP_FAILPOINT="after_index_commit", RP_VARS="{embedding: {commit_rows: 4}}")
    assert killed.returncode == -signal.SIGKILL

    ws.job("embed", check=True)

    status, tokens = ws.query(
        "select status, tokens_embedded from ops.embed_runs order by started_at limit 1 offset 1"
    )[0]
    assert status == "interrupted" and tokens > 0


def test_make_passes_the_question_through_the_environment_not_the_shell(indexed_world):
    result = subprocess.run(
        ["make", "-s", "query", 'Q="; echo PWNED; #', "ARGS=--mode fts -k 1"],
        cwd=pathlib.Path(__file__).resolve().parents[2],
        env={**indexed_world.env, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "PWNED" not in result.stdout.splitlines()  # what `echo PWNED` would print, had a shell run it
    assert result.returncode == 0, result.stderr
