"""Other warehouses: the `s3` target (curated marts as Parquet on object storage, through the
s3_filesystem plugin), and the SQL that only DuckDB runs kept behind dispatched macros.

The second adapter's `dbt parse` (Postgres) is a `make lint` step, not a test: see docs/warehouses.md.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import ENV_DBT_TARGET, ENV_WAREHOUSE_URI, PROJECT_DIR, Settings
from python_jobs.transform.build_state import project_fingerprint
from python_jobs.transform.s3_filesystem import s3_filesystem

CURATED_MARTS = {"core": ("customers", "products", "transactions"), "knowledge": ("documents",)}


def test_s3_target_writes_the_curated_marts_to_object_storage_and_the_chunks_still_flow(world, s3_server):
    prefix = s3_server.uri("warehouse-target")
    counts = {
        name: world.query(f"select count(*) from {schema}.{name}")[0][0]
        for schema, names in CURATED_MARTS.items()
        for name in names
    }
    chunks = world.query("select chunk_id, content_hash from knowledge.document_chunks order by chunk_id")
    env = {**s3_server.env, ENV_DBT_TARGET: "s3", ENV_WAREHOUSE_URI: prefix}
    dbt = str(Path(sys.executable).with_name("dbt"))
    logs = ("--log-path", str(world.root / "logs"), "--log-level-file", "none")

    # The chunks are cut again from `documents` as the s3 target leaves it: a view over its Parquet file.
    run = world.run(
        dbt,
        "run",
        "--select",
        "marts.core",
        "documents",
        "document_chunks",
        "--full-refresh",
        "--target-path",
        str(world.target),
        *logs,
        env=env,
    )

    assert run.returncode == 0, run.stdout[-3000:]
    assert "4 external models" in run.stdout
    client = s3_server.client()  # read back with another S3 client than the one that wrote
    for name, rows in counts.items():
        body = client.get_object(Bucket=s3_server.bucket, Key=f"warehouse-target/{name}.parquet")["Body"].read()
        assert pq.read_metadata(io.BytesIO(body)).num_rows == rows, name
    kinds = dict(
        world.query(
            "select table_schema || '.' || table_name, table_type from information_schema.tables "
            "where table_schema in ('core', 'knowledge')"
        )
    )
    assert {kinds[f"{schema}.{name}"] for schema, names in CURATED_MARTS.items() for name in names} == {"VIEW"}
    assert kinds["knowledge.document_chunks"] == "BASE TABLE"  # the index reads it from the DuckDB file
    assert world.query("select chunk_id, content_hash from knowledge.document_chunks order by chunk_id") == chunks

    # The embedding job plans from those chunks as on the default target (forced: `dbt run` tested nothing).
    plan = world.job("embed", "--dry-run", "--force", "--json", **env)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert f'"texts_embedded": {len(chunks)}' in plan.stdout


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"endpoint_url": "localhost:9000"}, "endpoint_url must be http(s)://host[:port], got 'localhost:9000'"),
        ({"endpoint": "http://127.0.0.1:9000"}, "does not know endpoint (known: connect_timeout, endpoint_url"),
    ],
)
def test_s3_filesystem_plugin_names_a_bad_setting(config, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        s3_filesystem(config)


# --- SQL only DuckDB runs ------------------------------------------------------------------------

# Functions and syntax of DuckDB that other engines lack or spell differently (the ops layer aside, see below).
DUCKDB_ONLY = re.compile(
    r"::|\b(?:try_cast|regexp_matches|arg_max|arg_min|any_value|epoch|quantile_cont|from_json|json_array_length|"
    r"string_agg|glob|read_parquet|list_\w+|to_seconds)\s*\(|\bqualify\b|,\s*'g'\s*\)",
    re.IGNORECASE,
)
# The ops layer reads the ledgers the jobs write into the DuckDB file and the service's Parquet logs: it is
# DuckDB's by design (docs/warehouses.md). Everything else must run on any engine dbt supports.
DUCKDB_BOUND_MODELS = ("models/marts/ops", "models/staging/ops", "models/staging/serve")
# An adapter's own version of a dispatched macro (`duckdb__x`, `postgres__x`) may use its engine's SQL.
ENGINE_VARIANT = re.compile(r"(?:duckdb|postgres|snowflake|bigquery|databricks|spark|redshift)__\w+")
MACRO = re.compile(r"{%-?\s*(macro|test)\s+(\w+)\s*\((.*?){%-?\s*end(?:macro|test)\s*-?%}", re.DOTALL)
COMMENT = re.compile(r"{#.*?#}", re.DOTALL)


def macros() -> dict[str, str]:
    found = {}
    for path in sorted((PROJECT_DIR / "macros").rglob("*.sql")):
        for _, name, body in MACRO.findall(COMMENT.sub("", path.read_text(encoding="utf-8"))):
            found[name] = body
    return found


def test_every_duckdb_only_macro_dispatches_with_a_default():
    defined = macros()
    duckdb_variants = sorted(name.removeprefix("duckdb__") for name in defined if name.startswith("duckdb__"))

    assert duckdb_variants, "no duckdb__ macros found: the pattern no longer reads macros/"
    for name in duckdb_variants:
        assert f"default__{name}" in defined, f"duckdb__{name} has no default__{name} for other engines"
        assert f"adapter.dispatch('{name}')" in defined.get(name, ""), f"{name} does not dispatch"
    for name, body in defined.items():
        if not ENGINE_VARIANT.fullmatch(name):
            found = DUCKDB_ONLY.search(body)
            assert found is None, f"macro {name} uses DuckDB-only {found.group(0)!r}: move it into duckdb__{name}"


def test_models_outside_the_ops_layer_use_no_duckdb_only_sql():
    models = sorted(
        path
        for path in (PROJECT_DIR / "models").rglob("*.sql")
        if not path.relative_to(PROJECT_DIR).as_posix().startswith(DUCKDB_BOUND_MODELS)
    )

    assert {"customers.sql", "transactions.sql", "documents.sql", "stg_shop__products.sql"} <= {p.name for p in models}
    for path in models:
        sql = re.sub(r"--[^\n]*", "", COMMENT.sub("", path.read_text(encoding="utf-8")))
        found = DUCKDB_ONLY.search(sql)
        assert found is None, (
            f"{path.relative_to(PROJECT_DIR)} uses DuckDB-only {found.group(0)!r}: use a dispatched macro"
        )


def test_the_pattern_finds_what_it_looks_for():
    """The two scans above would pass on anything if the pattern matched nothing."""
    for sql in ("x::varchar", "arg_max(a, b)", "regexp_replace(a, 'b', '', 'g')", "qualify row_number()", "GLOB('x')"):
        assert DUCKDB_ONLY.search(sql), sql
    for sql in ("cast(x as varchar)", "regexp_replace(a, 'b', '')", "max(amount)", "trim(glob_id)", "list_price"):
        assert DUCKDB_ONLY.search(sql) is None, sql


def test_the_gate_fingerprints_the_chunks_as_the_duckdb_certificate_does():
    """The embed gate (python_jobs/index/gate.py) repeats duckdb__chunk_fingerprint_sql in Python."""
    from python_jobs.index.gate import FINGERPRINT_SQL

    body = macros()["duckdb__chunk_fingerprint_sql"]
    assert "".join(re.findall(r'"([^"]*)"', body)) == FINGERPRINT_SQL.format(relation="")


def test_switching_the_target_is_a_project_change_so_the_next_build_is_not_skipped(monkeypatch):
    settings = Settings.load()
    monkeypatch.delenv(ENV_DBT_TARGET, raising=False)
    monkeypatch.delenv(ENV_WAREHOUSE_URI, raising=False)
    dev = project_fingerprint(settings)
    monkeypatch.setenv(ENV_DBT_TARGET, "s3")
    s3 = project_fingerprint(settings)
    monkeypatch.setenv(ENV_WAREHOUSE_URI, "s3://another-bucket/marts")

    assert len({dev, s3, project_fingerprint(settings)}) == 3
