"""One configuration object for every job, read from one place.

The dbt project's `vars:` in dbt_project.yml are the single source of settings, so a
change shows up in dbt's lineage docs and in every Python job alike. Paths can be
overridden by environment variables (the same ones profiles.yml reads), so a test or a
benchmark can point the whole pipeline at its own landing zone and warehouse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from python_jobs.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Environment variables, shared with profiles.yml and the Makefile.
ENV_LANDING_DIR = "RP_LANDING_DIR"
ENV_DUCKDB_PATH = "RP_DUCKDB_PATH"
DEFAULT_DUCKDB_PATH = "data/warehouse/retrieval.duckdb"


@dataclass(frozen=True)
class IngestSettings:
    max_document_bytes: int = 5_000_000
    encoding: str = "utf-8"


@dataclass(frozen=True)
class RetrievalSettings:
    """How documents become chunks and vectors: `vars.retrieval` in dbt_project.yml."""

    embedding_model: str = "all-MiniLM-L6-v2"
    chunk_target_tokens: int = 192
    chunk_overlap_tokens: int = 24
    # Boilerplate sections (a legal footer) are embedded without the document title, so
    # identical text in many documents is one embedding.
    shared_section_headings: tuple[str, ...] = ()

    @classmethod
    def from_vars(cls, values: Mapping[str, Any]) -> RetrievalSettings:
        """From `vars.retrieval`, or from a `chunking_settings` row (which keeps the list as JSON)."""
        try:
            headings = values.get("shared_section_headings") or ()
            if isinstance(headings, str):
                headings = json.loads(headings)
            return cls(
                embedding_model=str(values.get("embedding_model") or cls.embedding_model),
                chunk_target_tokens=int(values.get("chunk_target_tokens", cls.chunk_target_tokens)),
                chunk_overlap_tokens=int(values.get("chunk_overlap_tokens", cls.chunk_overlap_tokens)),
                shared_section_headings=tuple(str(h) for h in headings),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"vars.retrieval is invalid: {exc}") from None


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    landing_dir: Path
    warehouse_path: Path
    raw_schema: str = "raw"
    ingest: IngestSettings = field(default_factory=IngestSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    vars: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, project_dir: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Read dbt_project.yml vars, then apply environment overrides."""
        project_dir = Path(project_dir or PROJECT_DIR).resolve()
        env = os.environ if env is None else env
        project_file = project_dir / "dbt_project.yml"
        try:
            project = yaml.safe_load(project_file.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{project_file} not found: run the jobs from the repository root") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{project_file} is not valid YAML: {exc}") from None
        project_vars = project.get("vars") or {}

        def resolve(path: str) -> Path:
            candidate = Path(path).expanduser()
            return candidate if candidate.is_absolute() else project_dir / candidate

        landing = env.get(ENV_LANDING_DIR) or project_vars.get("landing_dir", "data/raw")
        warehouse = env.get(ENV_DUCKDB_PATH) or DEFAULT_DUCKDB_PATH
        ingest_vars = project_vars.get("ingest") or {}
        try:
            ingest = IngestSettings(
                max_document_bytes=int(ingest_vars.get("max_document_bytes", IngestSettings.max_document_bytes)),
                encoding=str(ingest_vars.get("encoding", IngestSettings.encoding)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"vars.ingest in {project_file} is invalid: {exc}") from None
        return cls(
            project_dir=project_dir,
            landing_dir=resolve(str(landing)),
            warehouse_path=resolve(str(warehouse)),
            raw_schema=str(project_vars.get("raw_schema", "raw")),
            ingest=ingest,
            retrieval=RetrievalSettings.from_vars(project_vars.get("retrieval") or {}),
            vars=project_vars,
        )

    def dbt_env(self) -> dict[str, str]:
        """Environment for a dbt subprocess so it opens the same warehouse as the jobs."""
        return {
            **os.environ,
            ENV_DUCKDB_PATH: str(self.warehouse_path),
            ENV_LANDING_DIR: str(self.landing_dir),
            "DBT_PROFILES_DIR": os.environ.get("DBT_PROFILES_DIR", str(self.project_dir)),
        }
