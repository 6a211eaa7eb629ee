"""Bad landing data is stopped before the marts: a failing dbt test names it, and the
marts published before stay exactly as they were."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from tests.dbt_artifacts import names_starting_with, results_by_status
from tests.worlds import SKIP_OPS, Workspace


def append_csv_row(path, row: dict) -> None:
    with path.open(newline="", encoding="utf-8") as handle:
        columns = next(csv.reader(handle))
    with path.open("a", newline="", encoding="utf-8") as handle:
        csv.DictWriter(handle, fieldnames=columns).writerow(row)


def transaction(**overrides) -> dict:
    row = {
        "transaction_id": "T900000001",
        "customer_id": "C0000001",
        "product_sku": "KIT-KTL-110",
        "quantity": "1",
        "unit_price": "79.00",
        "discount": "0.00",
        "amount": "79.00",
        "currency": "USD",
        "status": "completed",
        "channel": "web",
        "ordered_at": "2026-11-01 10:00:00",
        "updated_at": "2026-11-01 10:00:00",
    }
    return {**row, **overrides}


def duplicate_customer(landing):
    path = landing / "shop" / "customers.csv"
    first = next(csv.DictReader(path.open(encoding="utf-8")))
    append_csv_row(path, {**first, "email": "someone.else@example.com"})


def null_product_key(landing):
    path = landing / "shop" / "products.jsonl"
    product = {
        "sku": None,
        "name": "Mystery Box",
        "brand": "Brightwater",
        "category": "Kitchen",
        "subcategory": "Gadgets",
        "list_price": "$10.00",
        "currency": "USD",
        "status": "active",
        "launched_on": "2025-01-01",
        "updated_at": "2025-01-01 00:00:00",
    }
    path.write_text(path.read_text(encoding="utf-8") + json.dumps(product) + "\n", encoding="utf-8")


def unknown_customer(landing):
    month = sorted((landing / "shop" / "transactions").glob("*.csv"))[-1]
    append_csv_row(month, transaction(customer_id="C9999999"))


def out_of_range_amount(landing):
    month = sorted((landing / "shop" / "transactions").glob("*.csv"))[-1]
    append_csv_row(month, transaction(quantity="1", unit_price="$99,999.00", amount="$99,999.00"))


MART_ORDER = {"customers": "customer_id", "products": "product_sku", "transactions": "transaction_id"}


def published_marts(ws: Workspace) -> dict[str, list[tuple]]:
    return {mart: ws.query(f"select * from core.{mart} order by {key}") for mart, key in MART_ORDER.items()}


@pytest.fixture(scope="module")
def broken_build(built_world: Workspace, tmp_path_factory: pytest.TempPathFactory):
    """`broken_build(break_landing)`: a copy of the built world with that bad landing data ingested and built,
    the build, and the marts as published before. Each breakage is built once for the tests that inspect it."""
    builds: dict[Callable, tuple[Workspace, subprocess.CompletedProcess[str], dict[str, list[tuple]]]] = {}

    def build(break_landing: Callable) -> tuple[Workspace, subprocess.CompletedProcess[str], dict[str, list[tuple]]]:
        if break_landing not in builds:
            ws = built_world.copy(tmp_path_factory.mktemp("broken") / "ws")
            published = published_marts(ws)
            break_landing(ws.landing)
            ws.ingest(check=True)
            builds[break_landing] = (ws, ws.dbt("build", *SKIP_OPS), published)
        return builds[break_landing]

    return build


@pytest.mark.parametrize(
    ("break_landing", "failing_test", "protected_mart"),
    [
        (duplicate_customer, "unique_stg_shop__customers_customer_id", "customers"),
        (null_product_key, "not_null_stg_shop__products_product_sku", "products"),
        (unknown_customer, "relationships_stg_shop__transactions_customer_id", "transactions"),
        (out_of_range_amount, "accepted_range_stg_shop__transactions_amount", "transactions"),
    ],
    ids=["duplicate customer id", "null product key", "unknown customer", "out-of-range amount"],
)
def test_bad_key_or_value_fails_the_build_and_keeps_published_marts(
    broken_build, break_landing, failing_test, protected_mart
):
    world, build, published = broken_build(break_landing)

    assert build.returncode == 1
    statuses = results_by_status(world.root / "target")
    assert names_starting_with(statuses.get("fail", set()), failing_test), statuses.get("fail")
    assert failing_test in build.stdout
    assert protected_mart in statuses.get("skipped", set())
    assert published_marts(world)[protected_mart] == published[protected_mart]


def test_failing_rows_are_kept_for_inspection(broken_build):
    world, _, _ = broken_build(duplicate_customer)  # the duplicate-customer case's build, not another one

    (duplicated,) = world.query("select unique_field from test_failures.unique_stg_shop__customers_customer_id")[0]
    assert duplicated == "C0000001"


def test_quarantined_record_surfaces_as_a_warning_in_the_build(world):
    month = sorted((world.landing / "shop" / "transactions").glob("*.csv"))[-1]
    month.write_text(month.read_text(encoding="utf-8") + "T1,C1,too,few\n", encoding="utf-8")
    world.ingest(check=True)

    build = world.dbt("build", *SKIP_OPS)

    assert build.returncode == 0
    warned = results_by_status(world.root / "target").get("warn", set())
    assert names_starting_with(warned, "source_row_count_is_zero_ingest_quarantine")


def test_stale_source_fails_freshness_and_names_the_source(world):
    assert world.dbt("source", "freshness").returncode == 0
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    world.execute(f"update raw.shop_customers set _loaded_at = '{three_days_ago}'")

    freshness = world.dbt("source", "freshness")

    assert freshness.returncode == 1
    assert "ERROR STALE freshness of shop.customers" in freshness.stdout
    assert "PASS freshness of shop.transactions" in freshness.stdout


def test_large_row_count_drop_fails_the_row_count_change_test(world):
    customers_csv = world.landing / "shop" / "customers.csv"
    rows = list(csv.DictReader(customers_csv.open(encoding="utf-8")))
    kept = rows[: len(rows) // 3]
    kept_ids = sorted(r["customer_id"] for r in kept)
    with customers_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    for month in (world.landing / "shop" / "transactions").glob("*.csv"):
        month_rows = list(csv.DictReader(month.open(encoding="utf-8")))
        with month.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(month_rows[0]))
            writer.writeheader()
            # Orders move to kept customers, so only the customers mart shrinks.
            writer.writerows({**r, "customer_id": kept_ids[i % len(kept_ids)]} for i, r in enumerate(month_rows))
    world.ingest(check=True)

    build = world.dbt("build", *SKIP_OPS)

    assert build.returncode == 1
    statuses = results_by_status(world.root / "target")
    assert "customers_row_count_drop_errors" in statuses["fail"]
    assert "customers_row_count_drop_warns" in statuses["warn"]


def test_a_flood_of_quarantined_records_fails_the_build(world):
    month = sorted((world.landing / "shop" / "transactions").glob("*.csv"))[-1]
    month.write_text(month.read_text(encoding="utf-8") + "T1,C1,too,few\n" * 3, encoding="utf-8")
    world.ingest(check=True)

    build = world.dbt("build", *SKIP_OPS, "--vars", "{quarantine_error_threshold: 2}")

    assert build.returncode == 1
    failed = results_by_status(world.root / "target").get("fail", set())
    assert names_starting_with(failed, "source_row_count_is_zero_ingest_quarantine")
