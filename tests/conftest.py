"""Shared test worlds: a temp landing zone, a temp DuckDB file, real jobs and real dbt."""

from __future__ import annotations

import hashlib
import os
import pprint
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import duckdb
import pytest
import yaml

from python_jobs.common.settings import (
    ENV_DBT_TARGET_PATH,
    ENV_DUCKDB_PATH,
    ENV_INDEX_DIR,
    ENV_LANDING_DIR,
    ENV_VARS,
    PROJECT_DIR,
    Settings,
    workspace_env,
)

sys.path.insert(0, str(PROJECT_DIR / "bench"))
import generate_data

SAMPLE_LANDING = PROJECT_DIR / "data" / "raw"
# A handful of real sample documents keeps the small world's corpus realistic.
SMALL_WORLD_DOCS = (
    "faq/faq-brightwater-variable-temp-kettle.md",
    "faq/faq-price-match.md",
)


@dataclass
class Workspace:
    """One isolated pipeline: its own landing zone, warehouse and dbt target dir."""

    root: Path

    @property
    def landing(self) -> Path:
        return Path(self.paths[ENV_LANDING_DIR])

    @property
    def warehouse(self) -> Path:
        return Path(self.paths[ENV_DUCKDB_PATH])

    @property
    def index(self) -> Path:
        return Path(self.paths[ENV_INDEX_DIR])

    @property
    def target(self) -> Path:
        return Path(self.paths[ENV_DBT_TARGET_PATH])

    @property
    def paths(self) -> dict[str, str]:
        """Where this workspace's jobs and dbt read and write."""
        return workspace_env(self.root)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.paths, "DBT_PROFILES_DIR": str(PROJECT_DIR), "HF_HUB_OFFLINE": "1"}

    def settings(self, vars: str | None = None) -> Settings:
        """The jobs' settings for this workspace; `vars` (YAML) overrides dbt_project.yml vars."""
        return Settings.load(env={**self.paths, **({ENV_VARS: vars} if vars else {})})

    def run(
        self, *args: str, check: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(args), cwd=PROJECT_DIR, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=600
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def ingest(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "python_jobs", "ingest", *args, check=check)

    def dbt(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        dbt = str(Path(sys.executable).with_name("dbt"))
        logs = str(self.root / "logs")
        return self.run(dbt, *args, "--target-path", str(self.target), "--log-path", logs, check=check)

    def job(self, command: str, *args: str, check: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `rp <command>` (as `python -m python_jobs`) in this workspace; keyword arguments are extra env vars."""
        return self.run(sys.executable, "-m", "python_jobs", command, *args, check=check, env=env)

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            return con.execute(sql).fetchall()

    def execute(self, sql: str) -> None:
        with duckdb.connect(str(self.warehouse)) as con:
            con.execute(sql)

    def copy(self, destination: Path) -> Workspace:
        """A clone of this workspace (landing zone and warehouse) to break without side effects."""
        shutil.copytree(self.root, destination, ignore=shutil.ignore_patterns("logs"))
        clone = Workspace(destination)
        keep_partial_parse(self, clone)
        return clone


PARTIAL_PARSE_FILE = "partial_parse.msgpack"


@cache
def dbt_profile_hash(warehouse: Path) -> str | None:
    """The checksum dbt keeps of the connection settings (profiles.yml's target, with this warehouse as its
    path) to decide whether its saved parse of the project is still valid; None if it cannot be worked out."""
    try:
        from dbt.adapters.duckdb.credentials import DuckDBCredentials

        profile = yaml.safe_load((PROJECT_DIR / "profiles.yml").read_text(encoding="utf-8"))["retrieval_platform"]
        fields = {k: v for k, v in profile["outputs"][profile["target"]].items() if k not in ("type", "threads")}
        credentials = DuckDBCredentials.from_dict({**fields, "path": str(warehouse)})
    except Exception:
        return None
    return hashlib.sha256(pprint.pformat(sorted(credentials.connection_info())).encode("utf-8")).hexdigest()


def keep_partial_parse(source: Workspace, clone: Workspace) -> None:
    """Let dbt in the clone reuse the source's parse of the project instead of parsing it all again (~6 s).

    The clone has the same project files, vars and profile; only the warehouse path differs, and dbt counts
    the path among the connection settings whose change forces a full parse. So the saved parse is re-keyed
    to the clone's path. If the saved key is not the one expected for the source (the profile has another
    shape, or dbt keys it differently), the file is left alone and dbt parses in full, as before.
    """
    saved = clone.target / PARTIAL_PARSE_FILE
    old, new = dbt_profile_hash(source.warehouse), dbt_profile_hash(clone.warehouse)
    if not (saved.is_file() and old and new):
        return
    data = saved.read_bytes()
    if data.count(old.encode("ascii")) == 1:
        saved.write_bytes(data.replace(old.encode("ascii"), new.encode("ascii")))


def write_small_landing(landing: Path, seed: int = 7) -> None:
    """30 customers, the 100 catalog products, 400 transactions and two real documents."""
    rng = random.Random(seed)
    products = generate_data.build_products(rng, 100)
    customers = generate_data.build_customers(rng, 30)
    transactions = generate_data.build_transactions(rng, 400, customers, products)
    shop = landing / "shop"
    generate_data.write_jsonl(shop / "products.jsonl", products)
    generate_data.write_csv(shop / "customers.csv", generate_data.CUSTOMER_COLUMNS, customers)
    generate_data.write_transactions(shop, transactions)
    for doc in SMALL_WORLD_DOCS:
        target = landing / "docs" / doc
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_LANDING / "docs" / doc, target)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the indexed world run first, tests on the search world last, the others in between in their
    usual order. pytest-xdist's `--dist worksteal` (see pyproject.toml) hands each worker one run of
    consecutive tests, and an idle worker takes over the end of a busy one's, so each of these two worlds
    (a dbt build and an embedding with the real model) is built by one worker instead of by both."""

    def place(item: pytest.Item) -> int:
        if "indexed_world" in item.fixturenames:
            return 0
        return 2 if "search_world" in item.fixturenames else 1

    items.sort(key=place)  # stable: within each part, the collection order


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """An empty workspace with a small landing zone written, nothing ingested yet."""
    ws = Workspace(tmp_path / "ws")
    write_small_landing(ws.landing)
    return ws


@pytest.fixture(scope="session")
def built_world(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A small world ingested and built once with dbt; tests clone it before changing it."""
    ws = Workspace(tmp_path_factory.mktemp("built") / "ws")
    write_small_landing(ws.landing)
    ws.ingest(check=True)
    ws.dbt("build", check=True)
    return ws


@pytest.fixture
def world(built_world: Workspace, tmp_path: Path) -> Workspace:
    """A private copy of the built world."""
    return built_world.copy(tmp_path / "world")


@contextmanager
def warehouse_locked_by_another_process(warehouse: Path) -> Iterator[int]:
    """Hold a DuckDB write lock on the file from a separate process; yields its pid."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(120)",
            str(warehouse),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


# --- embedding worlds -----------------------------------------------------------------------

KETTLE = "faq/faq-brightwater-variable-temp-kettle.md"
EDITED_SECTION = "Does this kettle connect to the Brightwater app?"
TO_DELETE = "faq/faq-store-pickup.md"
TO_ADD = "faq/faq-tidewell-presspro-steam-iron.md"
SMALL_COMMITS = "{embedding: {commit_rows: 4}}"


def add_sample_doc(ws: Workspace, doc: str) -> Path:
    target = ws.landing / "docs" / doc
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_LANDING / "docs" / doc, target)
    return target


def edit_section(path: Path, heading: str, new_text: str) -> None:
    """Replace the body of one `## heading` section, leaving every other section as it was."""
    lines = path.read_text(encoding="utf-8").split("\n")
    start = lines.index(f"## {heading}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    path.write_text("\n".join([*lines[:start], "", new_text, "", *lines[end:]]), encoding="utf-8")


def rebuild(ws: Workspace) -> None:
    ws.ingest(check=True)
    ws.dbt("build", check=True)


@pytest.fixture(scope="session")
def indexed_world(built_world: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The built world plus one more document, embedded with the real model into a real LanceDB index."""
    from python_jobs.index.embed import embed

    ws = built_world.copy(tmp_path_factory.mktemp("indexed") / "ws")
    add_sample_doc(ws, TO_DELETE)
    rebuild(ws)
    embed(ws.settings())
    return ws


@pytest.fixture(scope="session")
def pending_world(indexed_world: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The indexed world after a round of changes that dbt has built but nothing has embedded yet:
    one section of the kettle FAQ edited, the price-match FAQ's owner changed (metadata only), the
    store-pickup FAQ deleted, a copy of the original kettle FAQ under a new id, and a new FAQ."""
    ws = indexed_world.copy(tmp_path_factory.mktemp("pending") / "ws")
    original_kettle = (ws.landing / "docs" / KETTLE).read_text(encoding="utf-8")
    copy = ws.landing / "docs" / "faq" / "faq-kettle-copy.md"
    copy.write_text(original_kettle.replace("doc_id: faq-brightwater-variable-temp-kettle", "doc_id: faq-kettle-copy"))
    edit_section(
        ws.landing / "docs" / KETTLE,
        EDITED_SECTION,
        "Yes. Since the November firmware update the kettle pairs with the Brightwater app over Bluetooth, "
        "so you can start it from bed and get a notification when the water is ready.",
    )
    price_match = ws.landing / "docs" / "faq" / "faq-price-match.md"
    price_match.write_text(
        price_match.read_text(encoding="utf-8").replace("owner: customer-support", "owner: pricing-team")
    )
    (ws.landing / "docs" / TO_DELETE).unlink()
    add_sample_doc(ws, TO_ADD)
    rebuild(ws)
    return ws


# --- a search world: public, internal and confidential documents, indexed -------------------

INTERNAL_DOC = "faq/faq-staff-price-match-at-register.md"
KETTLE_SKU = "KIT-KTL-110"
SECRET_DOC_ID = "conf-kettle-descaling-repair-note"
# The confidential note is written to be the best match for this question, in every mode.
SECRET_QUERY = "descale the Brightwater kettle with citric acid"
SECRET_DOC = f"""---
doc_id: {SECRET_DOC_ID}
title: "Descaling the Brightwater kettle with citric acid: repair desk note"
doc_type: troubleshooting
product_sku: {KETTLE_SKU}
owner: repair-desk
access_level: confidential
updated_at: 2026-10-01T09:00:00Z
---

## Descale the Brightwater kettle with citric acid

To descale the Brightwater kettle with citric acid, dissolve two tablespoons of citric acid in
one litre of water, heat it to 175F, and let the descaling solution soak for twenty minutes.
Repair desk only: kettles returned for descaling under the goodwill program get a free base.
"""


@pytest.fixture(scope="session")
def search_world(built_world: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The built world plus an internal FAQ and a confidential note that matches SECRET_QUERY best, indexed."""
    from python_jobs.index.embed import embed

    ws = built_world.copy(tmp_path_factory.mktemp("search") / "ws")
    add_sample_doc(ws, INTERNAL_DOC)
    secret = ws.landing / "docs" / "troubleshooting" / f"{SECRET_DOC_ID}.md"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(SECRET_DOC, encoding="utf-8")
    rebuild(ws)
    embed(ws.settings())
    return ws
