"""The ingest job on real landing files and a real DuckDB file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import duckdb
import pytest

from python_jobs.common.errors import LandingFileError
from python_jobs.common.settings import PROJECT_DIR
from python_jobs.land.ingest import ingest
from tests.worlds import warehouse_locked_by_another_process

RAW_TABLES = ("shop_customers", "shop_products", "shop_transactions", "docs_documents")


def raw_counts(ws) -> dict[str, int]:
    return {t: ws.query(f"select count(*) from raw.{t}")[0][0] for t in RAW_TABLES}


def test_first_load_lands_every_row_with_load_metadata(workspace):
    summary = ingest(workspace.settings(), quiet=True)

    assert summary.status == "success"
    assert raw_counts(workspace) == {
        "shop_customers": 30,
        "shop_products": 100,
        "shop_transactions": 400,
        "docs_documents": 2,
    }
    files, lines, hashes, loaded = workspace.query(
        "select count(distinct _source_file), min(_source_line), count(distinct _record_hash), "
        "count(_loaded_at) from raw.shop_customers"
    )[0]
    assert (files, lines, hashes, loaded) == (1, 2, 30, 30)  # line 1 is the header
    assert workspace.query("select count(*) from raw._landing_files")[0][0] == summary.files_new


def test_second_run_reads_nothing_and_changes_nothing(workspace):
    ingest(workspace.settings(), quiet=True)
    before = workspace.query("select _record_hash, _loaded_at from raw.shop_transactions order by all")

    again = ingest(workspace.settings(), quiet=True)

    assert (again.files_new, again.files_changed, again.rows_loaded, again.rows_deleted) == (0, 0, 0, 0)
    assert workspace.query("select _record_hash, _loaded_at from raw.shop_transactions order by all") == before


def test_changed_file_is_reloaded_alone_and_replaces_its_rows(workspace):
    ingest(workspace.settings(), quiet=True)
    customers = workspace.landing / "shop" / "customers.csv"
    lines = customers.read_text(encoding="utf-8").splitlines()
    lines = lines[:-1]  # the export no longer has the last customer
    lines[1] = lines[1].replace("@", "+vip@", 1)
    customers.write_text("\n".join(lines) + "\n", encoding="utf-8")

    summary = ingest(workspace.settings(), quiet=True)

    assert (summary.files_changed, summary.files_new) == (1, 0)
    assert summary.per_table == {"shop_customers": {"loaded": 29, "deleted": 30, "quarantined": 0}}
    assert workspace.query("select count(*) from raw.shop_customers")[0][0] == 29
    assert workspace.query("select count(*) from raw.shop_customers where email like '%+vip@%'")[0][0] == 1


def test_touched_file_with_same_bytes_is_not_reloaded(workspace):
    ingest(workspace.settings(), quiet=True)
    customers = workspace.landing / "shop" / "customers.csv"
    os.utime(customers, ns=(customers.stat().st_atime_ns, customers.stat().st_mtime_ns + 10**9))

    summary = ingest(workspace.settings(), quiet=True)

    assert (summary.files_changed, summary.rows_loaded) == (0, 0)
    assert ingest(workspace.settings(), quiet=True).files_changed == 0  # new mtime remembered


def test_deleted_file_takes_its_rows_with_it(workspace):
    ingest(workspace.settings(), quiet=True)
    month = sorted((workspace.landing / "shop" / "transactions").glob("*.csv"))[0]
    month_rows = workspace.query(
        f"select count(*) from raw.shop_transactions where _source_file = 'shop/transactions/{month.name}'"
    )[0][0]
    month.unlink()

    summary = ingest(workspace.settings(), quiet=True)

    assert summary.files_removed == 1
    assert summary.rows_deleted == month_rows > 0
    assert workspace.query("select count(*) from raw.shop_transactions")[0][0] == 400 - month_rows


def test_vanished_source_is_refused_instead_of_emptied(workspace):
    ingest(workspace.settings(), quiet=True)
    (workspace.landing / "shop" / "customers.csv").unlink()

    result = workspace.ingest()

    assert result.returncode == 1
    assert "every landing file of shop_customers is gone" in result.stderr
    assert "--allow-source-removal" in result.stderr
    assert workspace.query("select count(*) from raw.shop_customers")[0][0] == 30
    assert workspace.ingest("--allow-source-removal").returncode == 0
    assert workspace.query("select count(*) from raw.shop_customers")[0][0] == 0


def test_malformed_csv_line_is_quarantined_with_file_line_and_reason(workspace):
    month = sorted((workspace.landing / "shop" / "transactions").glob("*.csv"))[0]
    lines = month.read_text(encoding="utf-8").splitlines()
    lines.insert(3, 'T999999999,C0000001,KIT-KTL-110,1,"$39.00,0.00')  # unbalanced quote, short row
    month.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = workspace.ingest("--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows_quarantined"] >= 1
    file, line, reason = workspace.query("select source_file, line, reason from raw._quarantine")[0]
    assert (file, line) == (f"shop/transactions/{month.name}", 4)
    assert "fields" in reason or "CSV" in reason
    assert any(f"{month.name}:4: quarantined" in w for w in summary["warnings"])


def test_bad_json_line_and_front_matter_problems_are_quarantined(workspace):
    products = workspace.landing / "shop" / "products.jsonl"
    products.write_text(products.read_text(encoding="utf-8") + '{"sku": "BROKEN", \n[1, 2]\n', encoding="utf-8")
    docs = workspace.landing / "docs" / "faq"
    (docs / "no-front-matter.md").write_text("# Just a title\n\nBody.\n", encoding="utf-8")
    (docs / "bad-yaml.md").write_text("---\ndoc_id: [unclosed\n---\n# T\n\nBody\n", encoding="utf-8")
    (docs / "missing-keys.md").write_text("---\ndoc_id: x\n---\n# T\n\nBody\n", encoding="utf-8")
    (docs / "empty.md").write_text("", encoding="utf-8")
    (docs / "no-body.md").write_text(
        "---\ndoc_id: nb\ntitle: T\ndoc_type: faq\naccess_level: public\nupdated_at: 2026-01-01\n---\n\n",
        encoding="utf-8",
    )

    # Five bad documents beside two good ones: most of the source, which the mass-quarantine guard
    # (tests/integrity) would refuse; here each reason is the point.
    ingest(workspace.settings(vars="{ingest: {max_quarantine_share: 1}}"), quiet=True)

    reasons = dict(workspace.query("select source_file || ':' || line, reason from raw._quarantine"))
    assert reasons["shop/products.jsonl:101"].startswith("invalid JSON")
    assert reasons["shop/products.jsonl:102"] == "expected a JSON object, found list"
    assert reasons["docs/faq/no-front-matter.md:1"].startswith("no front matter")
    assert reasons["docs/faq/bad-yaml.md:3"].startswith("front matter is not valid YAML")
    assert "title, doc_type, access_level, updated_at" in reasons["docs/faq/missing-keys.md:2"]
    assert reasons["docs/faq/empty.md:1"] == "empty document"
    assert "no body text" in reasons["docs/faq/no-body.md:8"]
    assert workspace.query("select count(*) from raw.docs_documents")[0][0] == 2


def test_huge_document_is_quarantined_not_loaded(workspace):
    huge = workspace.landing / "docs" / "manual" / "huge.md"
    huge.parent.mkdir(parents=True, exist_ok=True)
    front = "---\ndoc_id: huge\ntitle: Huge\ndoc_type: manual\naccess_level: public\nupdated_at: 2026-01-01\n---\n"
    huge.write_text(front + "# Huge\n\n" + ("word " * 1_100_000), encoding="utf-8")

    ingest(workspace.settings(), quiet=True)

    (reason,) = workspace.query("select reason from raw._quarantine where source_file = 'docs/manual/huge.md'")[0]
    assert "above the 5,000,000-byte limit (vars.ingest.max_document_bytes)" in reason


def test_fixing_a_file_clears_its_quarantine(workspace):
    products = workspace.landing / "shop" / "products.jsonl"
    good = products.read_text(encoding="utf-8")
    products.write_text(good + "not json\n", encoding="utf-8")
    ingest(workspace.settings(), quiet=True)
    assert workspace.query("select count(*) from raw._quarantine")[0][0] == 1

    products.write_text(good, encoding="utf-8")
    ingest(workspace.settings(), quiet=True)

    assert workspace.query("select count(*) from raw._quarantine")[0][0] == 0


def test_unreadable_files_fail_the_run_and_keep_the_last_good_load(workspace):
    ingest(workspace.settings(), quiet=True)
    before = raw_counts(workspace)
    (workspace.landing / "shop" / "customers.csv").write_bytes(
        "customer_id,first_name\nC1,Ren\xe9e\n".encode("latin-1")
    )
    (workspace.landing / "shop" / "transactions" / "transactions_2027_01.csv").write_bytes(b"")

    result = workspace.ingest()

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "2 landing file(s) cannot be read; nothing was loaded" in result.stderr
    assert "shop/customers.csv: not valid utf-8 (byte 0xe9 at offset 29, line 2)" in result.stderr
    assert "--encoding latin-1" in result.stderr
    assert "shop/transactions/transactions_2027_01.csv: the file is empty" in result.stderr
    assert raw_counts(workspace) == before
    status, rows_loaded, error = workspace.query(
        "select status, rows_loaded, error from raw._ingest_runs order by started_at desc limit 1"
    )[0]
    assert (status, rows_loaded) == ("error", 0)
    assert "cannot be read" in error


def test_header_missing_a_column_fails_naming_the_column(workspace):
    customers = workspace.landing / "shop" / "customers.csv"
    text = customers.read_text(encoding="utf-8").replace("customer_id,", "id,", 1)
    customers.write_text(text, encoding="utf-8")

    result = workspace.ingest()

    assert result.returncode == 1
    assert "shop/customers.csv: header lacks column(s) customer_id" in result.stderr


def test_other_encoding_loads_when_asked_for(workspace):
    customers = workspace.landing / "shop" / "customers.csv"
    text = customers.read_text(encoding="utf-8")
    customers.write_bytes(text.replace("Olivia", "Renée").encode("latin-1"))
    for path in workspace.landing.rglob("*"):  # every file must then be latin-1 compatible
        if path.is_file() and path != customers:
            path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1", errors="replace"))

    result = workspace.ingest("--encoding", "latin-1")

    assert result.returncode == 0, result.stderr


def test_locked_warehouse_gives_a_clear_message_not_a_traceback(workspace):
    ingest(workspace.settings(), quiet=True)
    with warehouse_locked_by_another_process(workspace.warehouse) as pid:
        result = workspace.ingest()

    assert result.returncode == 75
    assert "Traceback" not in result.stderr
    assert f"warehouse {workspace.warehouse} is locked by process {pid}" in result.stderr
    assert "wait for it to finish" in result.stderr


def test_missing_landing_directory_is_named(workspace, tmp_path):
    env_landing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "python_jobs", "ingest"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        env={**workspace.env, "RP_LANDING_DIR": str(env_landing)},
    )
    assert result.returncode == 1
    assert f"landing directory {env_landing} does not exist" in result.stderr


def test_json_summary_is_machine_readable(workspace):
    result = workspace.ingest("--json", check=True)
    summary = json.loads(result.stdout)
    assert summary["status"] == "success"
    assert summary["files_new"] == len(list(workspace.landing.rglob("*.*")))
    assert summary["per_table"]["shop_transactions"]["loaded"] == 400
    with duckdb.connect(str(workspace.warehouse), read_only=True) as con:
        assert con.execute("select count(*) from raw._ingest_runs where status = 'success'").fetchone()[0] == 1


def test_bad_file_in_a_late_batch_rolls_back_the_batches_before_it(workspace):
    ingest(workspace.settings(), quiet=True)
    before = workspace.query("select _record_hash from raw.shop_transactions order by all")
    months = sorted((workspace.landing / "shop" / "transactions").glob("*.csv"))
    for month in months[:-1]:  # change every month file, so each lands in its own batch...
        month.write_text(month.read_text(encoding="utf-8").replace("web", "store"), encoding="utf-8")
    months[-1].write_bytes(b"\xff\xfe broken")  # ...and the last one cannot be read

    with pytest.raises(LandingFileError, match=months[-1].name):
        ingest(workspace.settings(), quiet=True, batch_files=1)

    assert workspace.query("select _record_hash from raw.shop_transactions order by all") == before
    (ledger,) = workspace.query("select rows_loaded from raw._ingest_runs where status = 'error'")
    assert ledger == (0,)  # the batches loaded before the failure were rolled back


def test_reloaded_file_keeps_its_first_load_time(workspace):
    ingest(workspace.settings(), quiet=True)
    first = workspace.query("select first_loaded_at from raw._landing_files where source_file = 'shop/customers.csv'")
    customers = workspace.landing / "shop" / "customers.csv"
    new_customer = "C0000999,Ada,Byron,ada@example.com,5550100,Boston,MA,US,consumer,2024-01-01,2025-01-01 00:00:00\n"
    customers.write_text(customers.read_text(encoding="utf-8") + new_customer, encoding="utf-8")

    assert ingest(workspace.settings(), quiet=True).files_changed == 1
    first_again, loaded = workspace.query(
        "select first_loaded_at, loaded_at from raw._landing_files where source_file = 'shop/customers.csv'"
    )[0]
    assert first_again == first[0][0] < loaded
