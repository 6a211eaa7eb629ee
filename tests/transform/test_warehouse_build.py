"""The dbt project on real data: sample build, freshness, lineage and offline docs."""

from __future__ import annotations

import json
import re
import sys

from tests.dbt_artifacts import results_by_status
from tests.worlds import SAMPLE_LANDING, Workspace, warehouse_locked_by_another_process


def test_sample_data_builds_green_and_is_fresh_after_ingest(tmp_path):
    ws = Workspace(tmp_path / "sample")
    ws.landing.parent.mkdir(parents=True)
    ws.landing.symlink_to(SAMPLE_LANDING, target_is_directory=True)

    ws.ingest(check=True)
    build = ws.dbt("build")
    freshness = ws.dbt("source", "freshness")

    assert build.returncode == 0, build.stdout[-3000:]
    statuses = results_by_status(ws.root / "target")
    assert not statuses.get("fail") and not statuses.get("error")
    assert {
        "test_customer_lifetime_spend_counts_completed_orders_only",
        "test_transaction_amounts_and_labels_are_parsed",
        "test_customer_contact_fields_are_normalized",
    } <= statuses["pass"]
    assert freshness.returncode == 0, freshness.stdout[-3000:]
    assert "PASS freshness of shop.customers" in freshness.stdout
    counts = ws.query(
        "select (select count(*) from core.customers), (select count(*) from core.products), "
        "(select count(*) from core.transactions), (select count(*) from staging.stg_docs__documents)"
    )[0]
    assert counts[:3] == (200, 100, 5200)
    assert counts[3] >= 80


def test_marts_publish_cleaned_values(built_world):
    emails = built_world.query("select email from core.customers")
    assert all(e == e.strip().lower() for (e,) in emails)
    (bad_amounts,) = built_world.query(
        "select count(*) from core.transactions where amount is null or unit_price is null"
    )[0]
    assert bad_amounts == 0
    assert built_world.query("select distinct currency from core.transactions") == [("USD",)]
    categories = {c for (c,) in built_world.query("select distinct category_name from core.products")}
    assert categories == {
        "Kitchen",
        "Smart Home",
        "Cleaning",
        "Climate",
        "Outdoor",
        "Audio",
        "Networking",
        "Laundry and Care",
    }


def test_marts_carry_descriptions_into_the_warehouse(built_world):
    comments = dict(
        built_world.query(
            "select column_name, comment from duckdb_columns() where schema_name = 'core' and table_name = 'customers'"
        )
    )
    assert comments["lifetime_spend"] == "Sum of completed order amounts, in USD."


def test_docs_show_lineage_from_sources_to_marts_and_load_nothing_from_the_internet(world):
    # In a copy: `docs generate` rewrites run_results.json, which other tests read from the built world.
    world.dbt("docs", "generate", check=True)
    target = world.root / "target"

    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    children = manifest["child_map"]
    assert "model.retrieval_platform.stg_shop__customers" in children["source.retrieval_platform.shop.customers"]
    assert "model.retrieval_platform.customers" in children["model.retrieval_platform.stg_shop__customers"]
    assert "model.retrieval_platform.customers" in children["model.retrieval_platform.transactions"]
    for node in manifest["nodes"].values():
        if node["resource_type"] == "model":
            assert node["description"], f"{node['name']} has no description"
            assert all(c["description"] for c in node["columns"].values()), f"{node['name']} has undescribed columns"
    html = (target / "index.html").read_text(encoding="utf-8")
    external = re.findall(r"""<(?:script|link|img)[^>]+(?:src|href)=["']https?://[^"']+""", html)
    assert external == []
    assert manifest["metadata"]["send_anonymous_usage_stats"] is False


def test_every_model_has_an_owner_and_marts_are_public(built_world):
    manifest = json.loads((built_world.root / "target" / "manifest.json").read_text(encoding="utf-8"))
    groups = {g["name"]: g["owner"] for g in manifest["groups"].values()}
    for node in manifest["nodes"].values():
        if node["resource_type"] != "model":
            continue
        assert node["group"] in groups and groups[node["group"]]["email"], node["name"]
        expected = "public" if "/marts/" in node["original_file_path"] else "private"
        assert node["access"] == expected, node["name"]


def test_dbt_through_the_wrapper_passes_results_and_exit_codes_through(world):
    paths = ("--target-path", str(world.root / "target"), "--log-path", str(world.root / "logs"))
    ok = world.run(sys.executable, "-m", "python_jobs", "dbt", "build", "--select", "stg_shop__products", *paths)
    failing = world.run(sys.executable, "-m", "python_jobs", "dbt", "build", "--select", "no_such_model+", *paths)
    bad_flag = world.run(sys.executable, "-m", "python_jobs", "dbt", "build", "--no-such-flag")

    assert ok.returncode == 0, ok.stdout[-2000:]
    assert "Completed successfully" in ok.stdout
    assert failing.returncode == 0 and "does not match any enabled nodes" in failing.stdout
    assert bad_flag.returncode == 2


def test_dbt_on_a_locked_warehouse_says_so_without_a_traceback(world):
    with warehouse_locked_by_another_process(world.warehouse) as pid:
        result = world.run(sys.executable, "-m", "python_jobs", "dbt", "build")

    assert result.returncode == 75
    assert "Traceback" not in result.stdout + result.stderr
    assert f"is locked by process {pid}" in result.stderr
