"""One configuration object for every job, read from one place.

The dbt project's `vars:` in dbt_project.yml are the single source of settings, so a
change shows up in dbt's lineage docs and in every Python job alike. Paths can be
overridden by environment variables (the same ones profiles.yml reads), so a test or a
benchmark can point the whole pipeline at its own landing zone and warehouse.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from python_jobs.common.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parents[2]

# Environment variables, shared with profiles.yml and the Makefile.
ENV_LANDING_DIR = "RP_LANDING_DIR"
ENV_DUCKDB_PATH = "RP_DUCKDB_PATH"
ENV_INDEX_DIR = "RP_INDEX_DIR"
ENV_DBT_TARGET_PATH = "DBT_TARGET_PATH"  # dbt's own: where it writes its artifacts
ENV_VARS = "RP_VARS"  # YAML mapping merged over vars, like `dbt --vars`, for the Python jobs
ENV_ALERTS_FILE = "RP_ALERTS_FILE"
ENV_ALERT_WEBHOOK_URL = "RP_ALERT_WEBHOOK_URL"
ENV_REPORT_PATH = "RP_REPORT_PATH"
DEFAULT_DUCKDB_PATH = "data/warehouse/retrieval.duckdb"
DEFAULT_ALERTS_FILE = "data/alerts/alerts.jsonl"
DEFAULT_REPORT_PATH = "data/reports/dashboard.html"


def workspace_env(root: Path) -> dict[str, str]:
    """The environment that points every job and dbt at one self-contained workspace under `root`: its
    landing zone, warehouse, index, dbt target dir, alerts file and dashboard (for benchmarks and tests)."""
    return {
        ENV_LANDING_DIR: str(root / "landing"),
        ENV_DUCKDB_PATH: str(root / "warehouse.duckdb"),
        ENV_INDEX_DIR: str(root / "index"),
        ENV_DBT_TARGET_PATH: str(root / "target"),
        ENV_ALERTS_FILE: str(root / "alerts.jsonl"),
        ENV_REPORT_PATH: str(root / "reports" / "dashboard.html"),
    }


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
class EmbeddingSettings:
    """How chunks become vectors in the LanceDB index: `vars.embedding` in dbt_project.yml.

    The model itself is `vars.retrieval.embedding_model`, shared with chunking: chunks are
    cut for the model that embeds them.
    """

    backend: str = "torch"  # torch | onnx | onnx-int8
    batch_size: int = 32  # texts per model call
    commit_rows: int = 512  # rows per index commit: the most work a killed run can lose
    normalize: bool = True
    price_per_million_tokens: float = 0.02
    max_tokens_per_run: int = 5_000_000
    ann_min_rows: int = 100_000  # below this, exact search is fast enough and exact
    keep_versions_days: float = 7.0
    keep_previous_indexes: int = 1  # indexes of earlier models kept for rollback

    BACKENDS = ("torch", "onnx", "onnx-int8")

    @classmethod
    def from_vars(cls, values: Mapping[str, Any]) -> EmbeddingSettings:
        defaults = cls()
        try:
            settings = cls(
                backend=str(values.get("backend", defaults.backend)),
                batch_size=int(values.get("batch_size", defaults.batch_size)),
                commit_rows=int(values.get("commit_rows", defaults.commit_rows)),
                normalize=_boolean(values.get("normalize", defaults.normalize)),
                price_per_million_tokens=float(
                    values.get("price_per_million_tokens", defaults.price_per_million_tokens)
                ),
                max_tokens_per_run=int(values.get("max_tokens_per_run", defaults.max_tokens_per_run)),
                ann_min_rows=int(values.get("ann_min_rows", defaults.ann_min_rows)),
                keep_versions_days=float(values.get("keep_versions_days", defaults.keep_versions_days)),
                keep_previous_indexes=int(values.get("keep_previous_indexes", defaults.keep_previous_indexes)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"vars.embedding is invalid: {exc}") from None
        if settings.backend not in cls.BACKENDS:
            raise ConfigError(f"vars.embedding.backend={settings.backend!r} must be one of {', '.join(cls.BACKENDS)}")
        for name in ("batch_size", "commit_rows"):
            if getattr(settings, name) < 1:
                raise ConfigError(f"vars.embedding.{name}={getattr(settings, name)} must be at least 1")
        for name in ("price_per_million_tokens", "max_tokens_per_run", "keep_versions_days", "keep_previous_indexes"):
            if getattr(settings, name) < 0:
                raise ConfigError(f"vars.embedding.{name}={getattr(settings, name)} must not be negative")
        return settings


@dataclass(frozen=True)
class EvalSettings:
    """How retrieval is measured and what a release must reach: `vars.eval` in dbt_project.yml."""

    modes: tuple[str, ...] = ("vector", "fts", "hybrid")
    ks: tuple[int, ...] = (1, 3, 5, 10)
    min_relevance: int = 1  # judgments graded below this are not relevant
    # Release gates, from `vars.eval.gates` entries "<mode> <metric>@<k> >= <floor>": mode -> key -> floor.
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # A drop of more than this (absolute) against the last passing run fails, for these metrics.
    regression_tolerance: float = 0.02
    regression_metrics: tuple[str, ...] = ("hit_rate@5", "ndcg@10", "mrr@10", "recall@10")

    MODES = ("vector", "fts", "hybrid")
    METRICS = ("precision", "recall", "hit_rate", "mrr", "ndcg", "map")

    @classmethod
    def from_vars(cls, values: Mapping[str, Any]) -> EvalSettings:
        defaults = cls()
        try:
            modes = tuple(str(m) for m in values.get("modes", defaults.modes))
            ks = tuple(sorted({int(k) for k in values.get("k", defaults.ks)}))
            thresholds: dict[str, dict[str, float]] = {}
            for gate in values.get("gates") or ():
                mode, key, floor = _gate(gate)
                thresholds.setdefault(mode, {})[key] = floor
            settings = cls(
                modes=modes,
                ks=ks,
                min_relevance=int(values.get("min_relevance", defaults.min_relevance)),
                thresholds=thresholds,
                regression_tolerance=float(values.get("regression_tolerance", defaults.regression_tolerance)),
                regression_metrics=tuple(str(m) for m in values.get("regression_metrics", defaults.regression_metrics)),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"vars.eval is invalid: {exc}") from None
        for mode in (*settings.modes, *settings.thresholds):
            if mode not in cls.MODES:
                raise ConfigError(f"vars.eval: mode {mode!r} is unknown, use one of {', '.join(cls.MODES)}")
        if not settings.modes or not settings.ks or min(settings.ks) < 1:
            raise ConfigError("vars.eval: modes and k must be non-empty, and every k at least 1")
        named = [key for floors in settings.thresholds.values() for key in floors] + list(settings.regression_metrics)
        for key in named:
            settings.check_metric_key(key, "vars.eval")
        if settings.regression_tolerance < 0:
            raise ConfigError("vars.eval.regression_tolerance must not be negative")
        return settings

    def check_metric_key(self, key: str, where: str) -> None:
        metric, _, k = key.partition("@")
        if metric not in self.METRICS or not k.isdigit() or int(k) not in self.ks:
            raise ConfigError(
                f"{where}: {key!r} is not a metric this evaluation computes: use <metric>@<k> with metric one of "
                f"{', '.join(self.METRICS)} and k one of {list(self.ks)} (vars.eval.k)"
            )


def _gate(entry: Any) -> tuple[str, str, float]:
    """ "hybrid ndcg@10 >= 0.9" -> ("hybrid", "ndcg@10", 0.9)."""
    parts = str(entry).split()
    try:
        mode, key, operator, floor = parts
        if operator != ">=":
            raise ValueError
        return mode, key, float(floor)
    except ValueError:
        raise ConfigError(
            f"vars.eval.gates: {entry!r} must read '<mode> <metric>@<k> >= <value>', e.g. 'hybrid ndcg@10 >= 0.9'"
        ) from None


@dataclass(frozen=True)
class WebhookSettings:
    """Where alerts are POSTed: `vars.alerts.webhook`. An empty url means no webhook."""

    url: str = ""
    timeout_seconds: float = 5.0  # per attempt
    retries: int = 3  # extra attempts after the first, on connection errors, timeouts, 429 and 5xx
    backoff_seconds: float = 0.5  # urllib3's backoff factor
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may carry a token: kept out of logs

    KEYS = ("url", "timeout_seconds", "retries", "backoff_seconds", "headers")


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go (python_jobs/observe/alerts.py): `vars.alerts` in dbt_project.yml."""

    jsonl_path: Path = PROJECT_DIR / DEFAULT_ALERTS_FILE
    webhook: WebhookSettings = field(default_factory=WebhookSettings)

    KEYS = ("jsonl_path", "webhook")

    @classmethod
    def from_vars(
        cls, values: Mapping[str, Any], resolve: Callable[[str], Path], env: Mapping[str, str]
    ) -> AlertSettings:
        """From `vars.alerts`; RP_ALERTS_FILE and RP_ALERT_WEBHOOK_URL override the file and the url."""
        _check_keys(values, cls.KEYS, "vars.alerts")
        path = env.get(ENV_ALERTS_FILE) or values.get("jsonl_path") or DEFAULT_ALERTS_FILE
        if not isinstance(path, str):
            raise ConfigError(f"vars.alerts.jsonl_path must be a file path, got {path!r}")
        hook = values.get("webhook") or {}
        _check_keys(hook, WebhookSettings.KEYS, "vars.alerts.webhook")
        url = str(env.get(ENV_ALERT_WEBHOOK_URL) or hook.get("url") or "").strip()
        parts = urlsplit(url)
        if url and (parts.scheme not in ("http", "https") or not parts.hostname):
            where = ENV_ALERT_WEBHOOK_URL if env.get(ENV_ALERT_WEBHOOK_URL) else "vars.alerts.webhook.url"
            raise ConfigError(f"{where} must be an http:// or https:// URL (or empty for no webhook), got {url!r}")
        defaults = WebhookSettings()
        webhook = WebhookSettings(
            url=url,
            timeout_seconds=_number(hook, "timeout_seconds", defaults.timeout_seconds, positive=True),
            retries=_number(hook, "retries", defaults.retries, whole=True),
            backoff_seconds=_number(hook, "backoff_seconds", defaults.backoff_seconds),
            # Unused without a url, so a header naming an unset variable only matters with one.
            headers=_headers(hook.get("headers") or {}, env) if url else {},
        )
        return cls(jsonl_path=resolve(path), webhook=webhook)


def _check_keys(values: Any, known: tuple[str, ...], where: str) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of settings, got {values!r}")
    unknown = [str(key) for key in values if key not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown setting {', '.join(unknown)}; known settings are {', '.join(known)}")


def _number(values: Mapping[str, Any], key: str, default: float, *, positive: bool = False, whole: bool = False):
    """A number from `vars.alerts.webhook`, checked by hand: YAML gives numbers, and a typo must not pass."""
    value = values.get(key, default)
    if whole:
        fits, wanted = isinstance(value, int) and value >= 0, "a whole number, 0 or more"
    else:
        fits = isinstance(value, int | float) and math.isfinite(value) and (value > 0 if positive else value >= 0)
        wanted = "a positive number" if positive else "a number, 0 or more"
    if isinstance(value, bool) or not fits:
        raise ConfigError(f"vars.alerts.webhook.{key} must be {wanted}, got {value!r}")
    return value


def _headers(values: Any, env: Mapping[str, str]) -> dict[str, str]:
    """Webhook headers, with ${NAME} read from the environment so a token stays out of the repository."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"vars.alerts.webhook.headers must be a mapping of header names to values, got {values!r}")
    headers = {}
    for name, value in values.items():
        where = f"vars.alerts.webhook.headers.{name}"
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a text value, got {value!r}")
        missing = [ref for ref in re.findall(r"\$\{(\w+)\}", str(value)) if ref not in env]
        if missing:
            raise ConfigError(f"{where} uses ${{{missing[0]}}}, which is not set in the environment")
        text = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], str(value))
        if "\n" in text or "\r" in text:
            raise ConfigError(f"{where} must be one line")
        headers[str(name)] = text
    return headers


def _vars_override(text: str | None) -> Mapping[str, Any]:
    if not text:
        return {}
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{ENV_VARS} is not valid YAML: {exc}") from None
    if not isinstance(values, Mapping):
        raise ConfigError(f"{ENV_VARS} must be a mapping like '{{embedding: {{batch_size: 16}}}}', got {text!r}")
    return values


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`, key by key inside nested mappings."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in {"true", "1", "yes"}:
        return True
    if str(value).lower() in {"false", "0", "no"}:
        return False
    raise ValueError(f"{value!r} is not a boolean")


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    landing_dir: Path
    warehouse_path: Path
    index_dir: Path
    dbt_target_dir: Path
    dbt_log_dir: Path
    report_path: Path = Path(DEFAULT_REPORT_PATH)
    vars_override: str | None = None  # RP_VARS as given: dbt gets it as --vars, so both read one config
    raw_schema: str = "raw"
    ops_schema: str = "ops"
    ingest: IngestSettings = field(default_factory=IngestSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
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
        project_vars = _merged(project.get("vars") or {}, _vars_override(env.get(ENV_VARS)))

        def resolve(path: str) -> Path:
            candidate = Path(path).expanduser()
            return candidate if candidate.is_absolute() else project_dir / candidate

        landing = env.get(ENV_LANDING_DIR) or project_vars.get("landing_dir", "data/raw")
        warehouse = env.get(ENV_DUCKDB_PATH) or DEFAULT_DUCKDB_PATH
        embedding_vars = project_vars.get("embedding") or {}
        index_dir = env.get(ENV_INDEX_DIR) or embedding_vars.get("index_dir", "data/index")
        # dbt writes run_results.json here; the embedding job's quality gate reads it.
        target_dir = env.get(ENV_DBT_TARGET_PATH) or project.get("target-path", "target")
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
            index_dir=resolve(str(index_dir)),
            dbt_target_dir=resolve(str(target_dir)),
            # Beside the target dir (the project's logs/ by default), so each workspace has its own.
            dbt_log_dir=resolve(env.get("DBT_LOG_PATH") or str(Path(str(target_dir)).parent / "logs")),
            vars_override=env.get(ENV_VARS) or None,
            report_path=resolve(
                str(
                    env.get(ENV_REPORT_PATH)
                    or (project_vars.get("ops") or {}).get("report_path")
                    or DEFAULT_REPORT_PATH
                )
            ),
            raw_schema=str(project_vars.get("raw_schema", "raw")),
            ops_schema=str(project_vars.get("ops_schema", "ops")),
            ingest=ingest,
            retrieval=RetrievalSettings.from_vars(project_vars.get("retrieval") or {}),
            embedding=EmbeddingSettings.from_vars(embedding_vars),
            eval=EvalSettings.from_vars(project_vars.get("eval") or {}),
            alerts=AlertSettings.from_vars(project_vars.get("alerts") or {}, resolve, env),
            vars=project_vars,
        )

    def dbt_vars(self) -> str | None:
        """RP_VARS for dbt's --vars: dbt replaces whole top-level vars, so pass them merged as the jobs see them."""
        if not self.vars_override:
            return None
        keys = _vars_override(self.vars_override).keys()
        return json.dumps({key: self.vars[key] for key in keys}, default=str)

    def dbt_env(self) -> dict[str, str]:
        """Environment for a dbt subprocess so it opens the same warehouse as the jobs."""
        return {
            **os.environ,
            ENV_DUCKDB_PATH: str(self.warehouse_path),
            ENV_LANDING_DIR: str(self.landing_dir),
            ENV_INDEX_DIR: str(self.index_dir),
            "DBT_PROFILES_DIR": os.environ.get("DBT_PROFILES_DIR", str(self.project_dir)),
        }
