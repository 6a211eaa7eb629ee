"""The dbt project as the code location reads it: its manifest, its sources and their SLAs, its owners.

The manifest is dbt's own (`dbt parse`, written to the configured target dir, where every build
writes it again); the code location parses the project when the manifest is missing or older than a
project file, so the asset graph follows the models. Nothing comes from the dbt hub: there are no
packages to install.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings

from python_jobs.common.errors import PipelineError
from python_jobs.common.settings import Settings
from python_jobs.land.zone import SOURCES
from python_jobs.observe.findings import PLATFORM_GROUP, Owners
from python_jobs.orchestrate.keys import EVALUATION, INDEX
from python_jobs.transform.results import PERIOD_SECONDS

# What a parse reads: a change in any of these makes the saved manifest stale.
PROJECT_PATHS = ("dbt_project.yml", "models", "macros", "seeds", "data-tests", "snapshots", "analyses")
PROJECT_SUFFIXES = frozenset({".yml", ".yaml", ".sql", ".py", ".csv", ".md"})
# The tables the ingest job writes, beside one per landing source (python_jobs/land/ingest.py).
INGEST_BOOKKEEPING = ("_landing_files", "_quarantine", "_ingest_runs")
OPS_TAG = "ops"


def ensure_manifest(settings: Settings) -> Path:
    """dbt's manifest.json in the configured target dir, parsed first if missing or older than the project."""
    manifest = settings.dbt_target_dir / "manifest.json"
    if manifest.is_file() and not _newer_project_files(settings.project_dir, manifest.stat().st_mtime):
        return manifest
    dbt = Path(sys.executable).with_name("dbt")
    args = [str(dbt), "parse", "--quiet", "--target-path", str(settings.dbt_target_dir)]
    args += ["--log-path", str(settings.dbt_log_dir)]
    if settings.dbt_vars():
        args += ["--vars", settings.dbt_vars()]
    ran = subprocess.run(
        args, cwd=settings.project_dir, env=settings.dbt_env(), capture_output=True, text=True, timeout=600
    )
    if ran.returncode != 0 or not manifest.is_file():
        raise PipelineError(
            f"`dbt parse` exited {ran.returncode} and wrote no manifest to {manifest}: the code location cannot "
            f"list the dbt assets. Fix the project (`rp dbt parse` shows the same error):\n{ran.stdout}{ran.stderr}"
        )
    return manifest


def _newer_project_files(project_dir: Path, than: float) -> bool:
    for name in PROJECT_PATHS:
        path = project_dir / name
        files: Iterator[Path] = path.rglob("*") if path.is_dir() else iter([path] if path.is_file() else [])
        for file in files:
            with contextlib.suppress(OSError):  # a file removed while we look is a change dbt will see too
                if file.suffix in PROJECT_SUFFIXES and file.stat().st_mtime > than:
                    return True
    return False


# The run ledgers dbt reads as sources, by the asset that writes them.
LEDGER_WRITERS = {
    "embed_runs": INDEX,
    "indexed_chunks": INDEX,  # the index snapshot, rewritten by each embedding run that publishes
    "eval_runs": EVALUATION,
    "eval_metrics": EVALUATION,
    "eval_question_metrics": EVALUATION,
    "eval_question_results": EVALUATION,
}


class Translator(DagsterDbtTranslator):
    """dagster-dbt's defaults (a model's key is its schema and name, its group and owner its dbt group's),
    with the sources mapped onto the assets that write them."""

    def __init__(self, settings: Settings):
        super().__init__(
            DagsterDbtTranslatorSettings(
                enable_asset_checks=True,
                enable_source_tests_as_checks=True,  # tests on a source a model reads: checks of raw/<table>
                enable_duplicate_source_asset_keys=True,  # several ledgers are written by one asset
            )
        )
        self.raw_schema, self.ops_schema = settings.raw_schema, settings.ops_schema

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return source_key(dbt_resource_props, self.raw_schema, self.ops_schema)
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "source":  # sources cannot join a dbt group: meta.group
            meta = dbt_resource_props.get("config", {}).get("meta") or dbt_resource_props.get("meta") or {}
            return meta.get("group") or PLATFORM_GROUP
        return super().get_group_name(dbt_resource_props)


def source_key(source: Mapping[str, Any], raw_schema: str, ops_schema: str) -> dg.AssetKey:
    if source.get("schema") == raw_schema:
        return raw_key(source["identifier"], raw_schema)
    if source.get("schema") == ops_schema and source["name"] in LEDGER_WRITERS:
        return LEDGER_WRITERS[source["name"]]
    return dg.AssetKey([source["source_name"], source["name"]])


def raw_key(table: str, raw_schema: str) -> dg.AssetKey:
    return dg.AssetKey([raw_schema, table])


@dataclass(frozen=True)
class SourceSla:
    """A dbt source's freshness SLA, as its YAML declares it."""

    unique_id: str
    name: str  # source.table, as dbt names it
    warn_after_hours: float | None
    error_after_hours: float | None
    defined_in: str


@dataclass
class Project:
    """The settings and the dbt manifest one code location is built from."""

    settings: Settings
    manifest: Mapping[str, Any]
    owners: Owners = field(init=False)
    translator: Translator = field(init=False)

    def __post_init__(self) -> None:
        self.owners = Owners.load(self.settings)  # the owners every alert names
        self.translator = Translator(self.settings)

    @classmethod
    def load(cls, settings: Settings) -> Project:
        path = ensure_manifest(settings)
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PipelineError(f"cannot read the dbt manifest {path}: {exc}; delete it to parse again") from None
        return cls(settings, manifest)

    def owner_emails(self, group: str) -> list[str]:
        email = self.owners.of(group)["email"]
        return [email] if email else []

    @cached_property
    def raw_sources(self) -> dict[str, Mapping[str, Any]]:
        """The dbt sources over the tables the ingest job writes, by table."""
        return {
            s["identifier"]: s
            for s in self.manifest.get("sources", {}).values()
            if s.get("schema") == self.settings.raw_schema
        }

    @property
    def raw_tables(self) -> list[str]:
        return [s.table for s in SOURCES] + list(INGEST_BOOKKEEPING)

    def raw_group(self, table: str) -> str:
        source = self.raw_sources.get(table, {})
        return (source.get("config", {}).get("meta") or source.get("meta") or {}).get("group") or PLATFORM_GROUP

    def raw_description(self, table: str) -> str:
        source = self.raw_sources.get(table)
        if source is None:
            return f"{self.settings.raw_schema}.{table}, written by the ingest job (python_jobs/land/ingest.py)."
        return (
            f"{source.get('description') or table} Landed by `rp ingest` into {self.settings.raw_schema}.{table}; "
            f"dbt source `{source['source_name']}.{source['name']}` ({source['original_file_path']})."
        )

    @cached_property
    def source_slas(self) -> dict[str, SourceSla]:
        """Every raw table whose dbt source declares a freshness SLA, by table."""
        slas = {}
        for table, source in self.raw_sources.items():
            freshness = source.get("freshness") or source.get("config", {}).get("freshness") or {}
            warn, error = _hours(freshness.get("warn_after")), _hours(freshness.get("error_after"))
            if warn is None and error is None:
                continue
            name = f"{source['source_name']}.{source['name']}"
            slas[table] = SourceSla(source["unique_id"], name, warn, error, source["original_file_path"])
        return slas

    def model_keys(self, tag: str) -> list[dg.AssetKey]:
        """The dbt models and seeds carrying `tag`, by their asset keys."""
        return [
            self.translator.get_asset_key(node)
            for node in self.manifest.get("nodes", {}).values()
            if node.get("resource_type") in ("model", "seed") and tag in node.get("config", {}).get("tags", [])
        ]

    def node_key(self, name: str) -> dg.AssetKey:
        """The asset key of the dbt model or seed `name`."""
        for node in self.manifest.get("nodes", {}).values():
            if node.get("resource_type") in ("model", "seed") and node.get("name") == name:
                return self.translator.get_asset_key(node)
        raise PipelineError(f"{name} is not in the dbt manifest: the asset graph cannot place what reads it")


def _hours(threshold: Mapping[str, Any] | None) -> float | None:
    if not threshold or not threshold.get("count") or not threshold.get("period"):
        return None
    return threshold["count"] * PERIOD_SECONDS[threshold["period"]] / 3600
