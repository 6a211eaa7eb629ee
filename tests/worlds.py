"""What the tests build worlds from: a workspace (its own landing zone, warehouse, index and dbt target
dir), the small landing zone, the documents the embedding and search worlds add, and helpers to
run the real jobs and dbt in a workspace. The fixtures that build shared worlds are in conftest.py."""

from __future__ import annotations

import hashlib
import json
import os
import pprint
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
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
        # One dbt thread: the suite runs two workers on two cores, and a second thread only adds CPU time.
        test_env = {"DBT_PROFILES_DIR": str(PROJECT_DIR), "HF_HUB_OFFLINE": "1", "RP_DBT_THREADS": "1"}
        return {**os.environ, **self.paths, **test_env}

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
        """`rp ingest` in this process (the suite ingests often; a new interpreter each time costs a second).
        Tests of what the command does as a process of its own run it with `run`."""
        return self.rp("ingest", *args, check=check)

    def rp(self, *args: str, check: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
        """`rp ARGS` in this process, with this workspace's environment (plus `env`), as a finished process."""
        from click.testing import CliRunner

        from python_jobs.cli import cli

        result = CliRunner().invoke(cli, list(args), env={**self.paths, **env}, catch_exceptions=False)
        done = subprocess.CompletedProcess(["rp", *args], result.exit_code, result.stdout, result.stderr)
        if check and done.returncode != 0:
            raise AssertionError(f"rp {args} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def dbt(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        dbt = str(Path(sys.executable).with_name("dbt"))
        # No debug log file: nothing reads it here (runs through `rp dbt` keep theirs), and writing it costs
        # a sixth of a build's CPU time.
        logs = ("--log-path", str(self.root / "logs"), "--log-level-file", "none")
        return self.run(dbt, *args, "--target-path", str(self.target), *logs, check=check)

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


# The ops marts (a third of a build) read the jobs' ledgers, not the landed data: a test about the data
# leaves them out. The pipeline and observability tests build them.
SKIP_OPS = ("--exclude", "tag:ops")
# The landed documents and everything built from them (what `make chunks` builds), ops marts aside.
DOCUMENT_CHAIN = ("--select", "stg_docs__documents+", *SKIP_OPS)


def rebuild(ws: Workspace) -> None:
    """Land the changed documents and build the document chain (what `make chunks` builds), ops marts aside."""
    ws.ingest(check=True)
    ws.dbt("build", *DOCUMENT_CHAIN, check=True)


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


class Webhook:
    """A local receiver on 127.0.0.1 that keeps every alert body POSTed to it (`bodies`, as text;
    `received`, parsed)."""

    def __init__(self) -> None:
        bodies: list[str] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def received(self) -> list:
        return [json.loads(body) for body in self.bodies]
