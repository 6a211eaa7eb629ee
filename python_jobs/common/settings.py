"""One configuration object for every job, read from one place, checked key by key.

The dbt project's `vars:` in dbt_project.yml are the single source of settings, so a change shows up
in dbt's lineage docs and in every Python job alike. `RP_VARS` (YAML) is merged over them key by key,
and a few environment variables (the same ones profiles.yml reads) override paths, so a test or a
benchmark can point the whole pipeline at its own landing zone and warehouse.

`ProjectVars` is the schema of `vars:`: every key dbt or a job reads, with its type, range, default
and description. Every section forbids unknown keys, so a typo such as `batch_sise` stops the job with
exit code 2 and the closest valid key instead of running on the default. docs/configuration.md is
generated from it (`configuration_reference`).
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import difflib
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

import annotated_types
import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from python_jobs.common.errors import ConfigError
from python_jobs.common.locations import (
    FrozenOptions,
    IndexLocation,
    index_uri_problem,
    parse_index_location,
    secret_option,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]

# Environment variables, shared with profiles.yml and the Makefile.
ENV_LANDING_DIR = "RP_LANDING_DIR"
ENV_DUCKDB_PATH = "RP_DUCKDB_PATH"
ENV_INDEX_DIR = "RP_INDEX_DIR"
ENV_INDEX_SCRATCH_DIR = "RP_INDEX_SCRATCH_DIR"  # local scratch of an index on object storage (docs/object-storage.md)
ENV_DBT_TARGET_PATH = "DBT_TARGET_PATH"  # dbt's own: where it writes its artifacts
ENV_DBT_LOG_PATH = "DBT_LOG_PATH"  # dbt's own: where it writes dbt.log
ENV_DBT_TARGET = "DBT_TARGET"  # dbt's own: the profiles.yml target (dev, s3, motherduck); `make ... TARGET=s3`
ENV_WAREHOUSE_URI = "RP_WAREHOUSE_URI"  # the `s3` target's external_root: where its marts are written as Parquet
ENV_VARS = "RP_VARS"  # YAML mapping merged over vars, like `dbt --vars`, for the Python jobs
ENV_ALERTS_FILE = "RP_ALERTS_FILE"
ENV_ALERT_WEBHOOK_URL = "RP_ALERT_WEBHOOK_URL"
ENV_REPORT_PATH = "RP_REPORT_PATH"
ENV_SERVE_LOG_DIR = "RP_SERVE_LOG_DIR"  # the service's query log and feedback (Parquet); dbt reads it too
ENV_KEYS_PATH = "RP_KEYS_PATH"  # the service's API key store (hashes only)
DEFAULT_DUCKDB_PATH = "data/warehouse/retrieval.duckdb"
DEFAULT_ALERTS_FILE = "data/alerts/alerts.jsonl"
DEFAULT_REPORT_PATH = "data/reports/dashboard.html"
DEFAULT_SERVE_LOG_DIR = "data/serve_log"
DEFAULT_KEYS_PATH = "data/keys/keys.json"

REFERENCE_PAGE = PROJECT_DIR / "docs" / "configuration.md"
REFERENCE_MARKER = "<!-- Generated below this line from python_jobs/common/settings.py by `rp reference`. -->"


def workspace_env(root: Path) -> dict[str, str]:
    """The environment that points every job and dbt at one self-contained workspace under `root`: its
    landing zone, warehouse, index, dbt target dir, alerts file and dashboard (for benchmarks and tests)."""
    return {
        ENV_LANDING_DIR: str(root / "landing"),
        ENV_DUCKDB_PATH: str(root / "warehouse.duckdb"),
        ENV_INDEX_DIR: str(root / "index"),
        ENV_INDEX_SCRATCH_DIR: str(root / "index_scratch"),
        ENV_DBT_TARGET_PATH: str(root / "target"),
        ENV_ALERTS_FILE: str(root / "alerts.jsonl"),
        ENV_REPORT_PATH: str(root / "reports" / "dashboard.html"),
        ENV_SERVE_LOG_DIR: str(root / "serve_log"),
        ENV_KEYS_PATH: str(root / "keys" / "keys.json"),
    }


# --- value types ------------------------------------------------------------------------------
# YAML already gives typed values, so numbers and flags are strict: `true` is not a count and "16" is
# not a batch size. Every number must be finite: a price of .inf would pass any budget.


@dataclass(frozen=True)
class _Expect:
    """What a setting must be, in words, where its type alone does not say it (errors and docs use it)."""

    text: str


Whole = Annotated[int, Strict()]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Flag = Annotated[bool, Strict()]
Identifier = Annotated[str, _Expect("a schema name (letters, digits and _, not starting with a digit)")]
RelativePath = Annotated[str, _Expect("a path, relative to the project directory")]
IndexDir = Annotated[str, _Expect("a directory (relative to the project directory) or an s3://bucket/prefix URI")]
StorageOptions = Annotated[dict[str, str], _Expect("a mapping of object-store option names to values (no secrets)")]
Mode = Literal["vector", "fts", "hybrid"]
Backend = Literal["torch", "onnx", "onnx-int8"]
_GATE_FORMAT = "'<mode> <metric>@<k> >= <floor>'"


def _invalid(reason: str, *at: str | int) -> PydanticCustomError:
    """A failed check whose message is `reason`, about the setting `at` below the one being validated."""
    return PydanticCustomError("invalid_setting", "{reason}", {"reason": reason, "at": at})


# --- the sections of vars ---------------------------------------------------------------------


class IngestSettings(BaseModel):
    """How landing files are read: `vars.ingest`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_document_bytes: Whole = Field(5_000_000, ge=1, description="Larger documents are quarantined, not loaded.")
    max_quarantine_share: Number = Field(
        0.5,
        ge=0,
        le=1,
        description="An ingest run that would quarantine more than this share of a source's records fails and "
        "loads nothing (a broken export or a wrong setting, not bad luck); 1 turns the guard off.",
    )
    encoding: Annotated[str, _Expect("an encoding Python knows, such as utf-8 or latin-1")] = Field(
        "utf-8", description="Encoding of the landing files (`rp ingest --encoding` overrides it for one run)."
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("unknown encoding") from None
        return value


PiiAction = Literal["block", "redact", "allow"]
AccessLevel = Literal["public", "internal", "confidential"]
_PII_RULE = "{doc_type: faq, access_level: public, action: redact}"


class PiiRule(BaseModel):
    """One rule of `vars.retrieval.pii_policy`: documents of this type and access level (either left out:
    any) get this action."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    doc_type: Annotated[str, Strict(), Field(min_length=1)] | None = None
    access_level: AccessLevel | None = None
    action: PiiAction

    def matches(self, doc_type: str | None, access_level: str | None) -> bool:
        return self.doc_type in (None, doc_type) and self.access_level in (None, access_level)


def pii_action(policy: tuple[PiiRule, ...], doc_type: str | None, access_level: str | None) -> PiiAction:
    """What the policy does with personal data in a document: its first matching rule's action, else block."""
    return next((rule.action for rule in policy if rule.matches(doc_type, access_level)), "block")


class RetrievalSettings(BaseModel):
    """How documents become chunks, and which model embeds them: `vars.retrieval`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_model: Annotated[str, _Expect("a sentence-transformers model name or a model directory")] = Field(
        "all-MiniLM-L6-v2",
        min_length=1,
        description="Embedding model; chunks are counted with its tokenizer and bounded by its max sequence length.",
    )
    chunk_target_tokens: Whole = Field(
        192, ge=1, description="Chunk size the splitter aims for, heading prefix and special tokens included."
    )
    chunk_overlap_tokens: Whole = Field(
        24, ge=0, description="Tokens shared by consecutive chunks of one section (less than half the target)."
    )
    # Boilerplate sections (a legal footer) are embedded without the document title, so identical
    # text in many documents is one embedding.
    shared_section_headings: Annotated[tuple[str, ...], _Expect("a list of headings")] = Field(
        (), description="Sections under these headings are embedded without the document title, so they embed once."
    )
    # The same, found by counting (python_jobs/chunk/boilerplate.py): no list of headings to keep up to date.
    boilerplate_min_docs: Whole = Field(
        5,
        ge=0,
        description="A section (under a heading) whose text appears in at least this many documents is boilerplate: "
        "embedded under its own headings without the document title, once for all of them. 0 turns it off.",
    )
    # The tokenizer is not a bound on length: a "word" longer than 100 characters is one unknown token.
    max_chunk_characters: Whole = Field(
        4000,
        ge=200,
        description="Most characters of a chunk's embedding text (heading prefix included): text the tokenizer "
        "counts as few tokens, such as one long unbroken string, is split further.",
    )
    pii_policy: Annotated[
        tuple[PiiRule, ...], _Expect(f"a list of rules like {_PII_RULE}, action one of block, redact, allow")
    ] = Field(
        (PiiRule(access_level="confidential", action="allow"),),
        description="Personal data (e-mail addresses, phone numbers, card-like numbers) in chunks: the first rule "
        "whose doc_type and access_level match a document (a rule without one matches any) decides; a document no "
        "rule matches is blocked. `block`: the no_pii test fails the build; `redact`: each match becomes [EMAIL], "
        "[PHONE] or [CARD] in the chunk before it is hashed and embedded; `allow`: kept.",
    )

    def pii_action(self, doc_type: str | None, access_level: str | None) -> PiiAction:
        return pii_action(self.pii_policy, doc_type, access_level)

    @field_validator("boilerplate_min_docs")
    @classmethod
    def _shared_by_two_at_least(cls, value: int) -> int:
        if value == 1:
            raise _invalid("must be 0 (off) or at least 2: a text in one document is not shared")
        return value

    @field_validator("pii_policy", mode="before")
    @classmethod
    def _rules_read_as_rules(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value  # reported as not a list of rules
        keys = tuple(PiiRule.model_fields)
        for position, rule in enumerate(value):
            if isinstance(rule, PiiRule):
                continue
            if not isinstance(rule, Mapping):
                raise _invalid(f"must be a rule like {_PII_RULE}, got {rule!r}", position)
            if unknown := sorted(str(key) for key in rule if key not in keys):
                raise _invalid(f"has {unknown[0]!r}, which is not a key of a rule: use {', '.join(keys)}", position)
            if rule.get("action") not in get_args(PiiAction):
                given = f"has action {rule['action']!r}" if "action" in rule else "needs an action"
                raise _invalid(f"{given}: use {', '.join(get_args(PiiAction))}", position)
            if rule.get("access_level") not in (None, *get_args(AccessLevel)):
                raise _invalid(
                    f"has access_level {rule['access_level']!r}: use {', '.join(get_args(AccessLevel))}", position
                )
            if not (rule.get("doc_type") is None or (isinstance(rule["doc_type"], str) and rule["doc_type"])):
                raise _invalid(f"has doc_type {rule['doc_type']!r}: use a document type such as faq", position)
        return value

    @classmethod
    def from_vars(cls, values: Mapping[str, Any]) -> RetrievalSettings:
        """From `vars.retrieval` as the dbt Python models get it, or from a `chunking_settings` row (which
        has more columns, and keeps the headings and the PII policy as JSON). The jobs check vars whole in
        `Settings.load`."""
        data = {name: values[name] for name in cls.model_fields if values.get(name) not in (None, "")}
        for name in ("shared_section_headings", "pii_policy"):
            if isinstance(data.get(name), str):
                with contextlib.suppress(ValueError):  # if it is not JSON, it is reported as not a list
                    data[name] = json.loads(data[name])
        return _validate(cls, data, ("retrieval",))


class RaySettings(BaseModel):
    """The actor pool that embeds on Ray when `vars.embedding.executor` is `ray` (python_jobs/index/ray_executor.py):
    `vars.embedding.ray`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: Annotated[str, _Expect("empty, or a Ray cluster address: host:port, ray://host:port or auto")] = Field(
        "",
        description="The Ray cluster to join; empty starts a local Ray for the run (on this machine's CPUs) and "
        "stops it at the end. Env override: `RP_RAY_ADDRESS`.",
    )
    actors: Whole = Field(
        0,
        ge=0,
        description="Model replicas in the pool, each loading the model once; 0: as many as the cluster's CPUs "
        "allow (CPUs / threads_per_actor; GPUs / num_gpus when num_gpus is set).",
    )
    threads_per_actor: Whole = Field(
        1, ge=1, description="CPUs each actor reserves, and the threads its model computes with."
    )
    num_gpus: Number = Field(
        0.0, ge=0, description="GPUs each actor reserves (0.5: two actors share one); 0 runs the model on CPU."
    )
    retries: Whole = Field(
        3,
        ge=0,
        description="Times a dead actor is restarted and its batch retried before the run fails (the batch was "
        "not committed: it is embedded again, never twice in the index).",
    )
    timeout_seconds: Number = Field(
        120.0,
        gt=0,
        description="Longest wait to join or start the cluster and for the pool's actors to start (model loaded); "
        "past it the run stops with an error naming the setting.",
    )


class EmbeddingSettings(BaseModel):
    """How chunks become vectors in the LanceDB index: `vars.embedding`.

    The model itself is `vars.retrieval.embedding_model`, shared with chunking: chunks are cut for
    the model that embeds them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    BACKENDS: ClassVar[tuple[str, ...]] = get_args(Backend)

    index_dir: IndexDir = Field(
        "data/index",
        min_length=1,
        description="LanceDB directory, or `s3://bucket/prefix` for S3-compatible object storage (credentials from "
        "the environment: docs/object-storage.md). Env override: `RP_INDEX_DIR`.",
    )
    storage_options: StorageOptions = Field(
        default_factory=FrozenOptions,
        description="Object-store options for an `s3://` index_dir (LanceDB's names: `region`, `endpoint`, "
        "`allow_http`, `virtual_hosted_style_request`, `connect_timeout`, `timeout`, ...); no secrets: keys and "
        "tokens come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).",
    )
    scratch_dir: RelativePath = Field(
        "data/index_scratch",
        min_length=1,
        description="Local scratch of an index on object storage (staged rows, ONNX exports), in "
        "`<scratch_dir>/<scheme>/<bucket>/<prefix>`; a local index keeps them in index_dir. Env override: "
        "`RP_INDEX_SCRATCH_DIR`.",
    )
    backend: Backend = Field(
        "torch",
        description="torch (sentence-transformers), or onnx / onnx-int8 (ONNX Runtime, faster); part of the model "
        "fingerprint: switching builds a new index.",
    )
    batch_size: Whole = Field(
        8, ge=1, description="Texts per model call: on CPU, small batches run faster; raise it on a GPU."
    )
    commit_rows: Whole = Field(512, ge=1, description="Rows per index commit: the most work a killed run redoes.")
    normalize: Flag = Field(True, description="Unit-length vectors, so dot product is cosine; part of the fingerprint.")
    price_per_million_tokens: Number = Field(
        0.02, ge=0, description="USD per million tokens, for the cost estimates of the plan and the run ledger."
    )
    max_tokens_per_run: Whole = Field(
        5_000_000,
        ge=0,
        description="A run that would embed more tokens stops before embedding any (`--max-tokens` overrides it).",
    )
    max_delete_share: Number = Field(
        0.2,
        ge=0,
        le=1,
        description="A run that would delete more than this share of the published index refuses (exit 3) unless "
        "`--allow-mass-delete` is given.",
    )
    ann_min_rows: Whole = Field(
        100_000, ge=0, description="Build an ANN index from this many rows; below it, search is exact and fast enough."
    )
    keep_versions_days: Number = Field(
        7.0, ge=0, description="Index versions older than this are cleaned up, except pinned ones (`live`, `eval`)."
    )
    keep_previous_indexes: Whole = Field(
        1, ge=0, description="Index tables of earlier models kept after a swap, for rollback."
    )
    executor: Literal["local", "ray"] = Field(
        "local",
        description="Where the model runs: `local` (in the embedding job) or `ray` (an actor pool on a Ray cluster, "
        "docs/embedding.md); the plan, the vector cache, the commits and the publish stay in the job either way.",
    )
    ray: RaySettings = Field(default_factory=RaySettings, description="The Ray actor pool (with executor: ray).")

    @field_validator("index_dir")
    @classmethod
    def _usable_location(cls, value: str) -> str:
        problem = index_uri_problem(value.strip())
        if problem:
            raise _invalid(problem)
        return value.strip()

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options_without_secrets(cls, value: Any) -> Any:
        """Secrets are refused before anything else is checked, so no error message ever shows one."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _invalid("must be a mapping of object-store option names to values, like {region: eu-west-1}")
        options = {}
        for name, option in value.items():
            if secret_option(str(name)):
                raise _invalid(
                    "is a secret: set it in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                    "AWS_SESSION_TOKEN), never in vars, which `rp config`, dbt's docs and logs show",
                    str(name),
                )
            if isinstance(option, bool):
                option = "true" if option else "false"
            if not isinstance(option, str | int | float):
                raise _invalid(f"must be a text value, got {option!r}", str(name))
            options[str(name)] = str(option)
        return options

    @field_validator("storage_options")
    @classmethod
    def _hashable_options(cls, value: dict[str, str]) -> dict[str, str]:
        return FrozenOptions(value)


class EvalSettings(BaseModel):
    """How retrieval is measured and what a release must reach: `vars.eval`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    MODES: ClassVar[tuple[str, ...]] = get_args(Mode)
    METRICS: ClassVar[tuple[str, ...]] = ("precision", "recall", "hit_rate", "mrr", "ndcg", "map")

    modes: Annotated[tuple[Mode, ...], _Expect(f"a list of {', '.join(get_args(Mode))}")] = Field(
        get_args(Mode), min_length=1, description="Retrieval modes `rp eval` measures."
    )
    k: Annotated[tuple[Annotated[Whole, Field(ge=1)], ...], _Expect("a list of whole numbers, 1 or more")] = Field(
        (1, 3, 5, 10), min_length=1, description="Cut-offs every metric is computed at (`<metric>@<k>`)."
    )
    min_relevance: Whole = Field(1, ge=0, description="Judgments graded below this are not relevant.")
    gates: Annotated[tuple[str, ...], _Expect(f"a list of {_GATE_FORMAT} entries")] = Field(
        (), description="Release gates: `rp eval` exits non-zero when one fails on the seeded questions."
    )
    regression_tolerance: Number = Field(
        0.02, ge=0, description="Largest drop (absolute) of a regression metric against the last passing run."
    )
    regression_metrics: Annotated[tuple[str, ...], _Expect("a list of '<metric>@<k>' keys")] = Field(
        ("hit_rate@5", "ndcg@10", "mrr@10", "recall@10"),
        description="Metrics checked for a regression against the last passing run.",
    )
    feedback_judgments_path: RelativePath = Field(
        "seeds/eval_feedback_judgments.csv",
        min_length=1,
        description="Judgments promoted from users' feedback (`rp eval promote-feedback`); `rp eval` asks their "
        "questions too, under the category `feedback`. A missing file adds none.",
    )

    @property
    def ks(self) -> tuple[int, ...]:
        """`k`, sorted, each once."""
        return self.k

    @property
    def thresholds(self) -> dict[str, dict[str, float]]:
        """The gates as mode -> metric key -> floor: "hybrid ndcg@10 >= 0.9" is {"hybrid": {"ndcg@10": 0.9}}."""
        thresholds: dict[str, dict[str, float]] = {}
        for gate in self.gates:
            mode, key, floor = _gate(gate)
            thresholds.setdefault(mode, {})[key] = floor
        return thresholds

    def check_metric_key(self, key: str, where: str) -> None:
        problem = self._metric_key_problem(key)
        if problem:
            raise ConfigError(f"{where}: {key!r} {problem}")

    def _metric_key_problem(self, key: str) -> str | None:
        metric, _, k = key.partition("@")
        if metric in self.METRICS and k.isdigit() and int(k) in self.k:
            return None
        return (
            f"is not a metric this evaluation computes: use <metric>@<k> with metric one of "
            f"{', '.join(self.METRICS)} and k one of {list(self.k)} (eval.k)"
        )

    @field_validator("k")
    @classmethod
    def _sorted_once(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(set(value)))

    @field_validator("gates")
    @classmethod
    def _gates_read_as_gates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for position, gate in enumerate(value):
            if _gate(gate) is None:
                raise _invalid(f"must read {_GATE_FORMAT}, e.g. 'hybrid ndcg@10 >= 0.9', got {gate!r}", position)
        return value

    @model_validator(mode="after")
    def _gates_and_metrics_are_measured(self) -> EvalSettings:
        for position, gate in enumerate(self.gates):
            mode, key, _ = _gate(gate) or ("", "", 0.0)
            if mode not in self.MODES:
                raise _invalid(
                    f"has mode {mode!r}, which is unknown: use one of {', '.join(self.MODES)}", "gates", position
                )
            if problem := self._metric_key_problem(key):
                raise _invalid(f"names {key!r}, which {problem}", "gates", position)
        for position, key in enumerate(self.regression_metrics):
            if problem := self._metric_key_problem(key):
                raise _invalid(f"names {key!r}, which {problem}", "regression_metrics", position)
        return self


def _gate(entry: str) -> tuple[str, str, float] | None:
    """ "hybrid ndcg@10 >= 0.9" -> ("hybrid", "ndcg@10", 0.9); None when it does not read as a gate."""
    parts = str(entry).split()
    if len(parts) != 4 or parts[2] != ">=":
        return None
    try:
        floor = float(parts[3])
    except ValueError:
        return None
    return (parts[0], parts[1], floor) if math.isfinite(floor) else None


class WebhookSettings(BaseModel):
    """Where alerts are POSTed: `vars.alerts.webhook`. An empty url means no webhook."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, _Expect("an http:// or https:// URL with a host name and a valid port, or empty")] = Field(
        "",
        description="Webhook the alerts are POSTed to as JSON; empty means none. Env override: `RP_ALERT_WEBHOOK_URL`.",
    )
    timeout_seconds: Number = Field(5.0, gt=0, description="Timeout of one attempt, in seconds.")
    retries: Whole = Field(
        3, ge=0, description="Extra attempts after the first, on connection errors, timeouts, 429 and 5xx."
    )
    backoff_seconds: Number = Field(
        0.5, ge=0, description="urllib3's backoff factor: with 3 retries it waits 0, 1 and 2 seconds."
    )
    deadline_seconds: Number = Field(
        30.0,
        gt=0,
        description="Longest one alert's delivery may take, every attempt and wait included; a webhook that "
        "answers slowly (even a byte at a time) is given up on then, and the pipeline goes on.",
    )
    # May carry a token: kept out of reprs and logs.
    headers: Annotated[Mapping[str, str], _Expect("a mapping of header names to values")] = Field(
        default_factory=dict,
        repr=False,
        description="Extra headers; `${NAME}` in a value is read from the environment (keep tokens out of git).",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _http_url(cls, value: Any) -> str:
        url = "" if value is None else value
        if not isinstance(url, str):
            raise ValueError("not a URL")
        url = url.strip()
        if url and not _is_http_url(url):
            raise ValueError("not an http(s) URL with a host name and a valid port")
        return url

    @field_validator("headers", mode="before")
    @classmethod
    def _headers_from_env(cls, value: Any, info: ValidationInfo) -> dict[str, str]:
        """Headers with ${NAME} read from the environment; unused without a url, so a header naming an unset
        variable only matters with one."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _invalid(f"must be a mapping of header names to values, got {value!r}")
        env = (info.context or {}).get("env", os.environ)
        headers = {}
        for name, text in value.items():
            if not isinstance(text, str | int | float) or isinstance(text, bool):
                raise _invalid(f"must be a text value, got {text!r}", str(name))
            text = str(text)
            if info.data.get("url"):
                missing = [ref for ref in re.findall(r"\$\{(\w+)\}", text) if ref not in env]
                if missing:
                    raise _invalid(f"uses ${{{missing[0]}}}, which is not set in the environment", str(name))
                text = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], text)
            if "\n" in text or "\r" in text:
                raise _invalid("must be one line", str(name))
            headers[str(name)] = text
        return headers if info.data.get("url") else {}


def _is_http_url(url: str) -> bool:
    """An http or https URL with a valid host name or IP address, a port in 1-65535 if it names one, and no
    whitespace or control characters."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError:  # also a malformed IPv6 address
        return False
    return parts.scheme in ("http", "https") and _is_host(parts.hostname or "") and port != 0


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _is_host(host: str) -> bool:
    """An IP address, or a DNS name (internationalized names in their IDNA form) of valid labels."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    try:
        name = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return bool(name) and all(_HOST_LABEL.fullmatch(label) for label in name.removesuffix(".").split("."))


class AlertSettings(BaseModel):
    """Where alerts go (python_jobs/observe/alerts.py): `vars.alerts`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jsonl_path: Annotated[Path, _Expect("a file path, relative to the project directory")] = Field(
        Path(DEFAULT_ALERTS_FILE),
        validate_default=True,
        description="The alerts file, appended to first: the record of truth. Env override: `RP_ALERTS_FILE`.",
    )
    webhook: WebhookSettings = Field(default_factory=WebhookSettings, description="Where alerts are POSTed.")

    @field_validator("jsonl_path", mode="before")
    @classmethod
    def _path_text(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty")
        return value

    @field_validator("jsonl_path")
    @classmethod
    def _in_project(cls, value: Path, info: ValidationInfo) -> Path:
        resolve = (info.context or {}).get("resolve") or _resolver(PROJECT_DIR)
        return resolve(str(value))

    @classmethod
    def from_vars(
        cls, values: Mapping[str, Any], resolve: Callable[[str], Path], env: Mapping[str, str]
    ) -> AlertSettings:
        """From `vars.alerts`; RP_ALERTS_FILE and RP_ALERT_WEBHOOK_URL override the file and the url."""
        data = _alerts_with_env(_with_empty_sections(values, cls), env)
        context = {"resolve": resolve, "env": env}
        return _validate(cls, data, ("alerts",), _Origin(env=env).of, context)


class OpsSettings(BaseModel):
    """The ops marts (models/marts/ops) and the dashboard: `vars.ops`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    test_history_runs: Whole = Field(
        20, ge=1, description="Runs per test that its fail rate and flakiness are measured over (`ops_test_history`)."
    )
    flaky_min_status_changes: Whole = Field(
        2, ge=1, description="Status changes in that window (pass -> fail -> pass) that make a test flaky, not broken."
    )
    index_freshness_sla_hours: Number = Field(
        24, gt=0, description="Longest a landed change may wait to be indexed (`ops_index_freshness`)."
    )
    weekly_budget_usd: Number = Field(
        5.0, ge=0, description="Embedding spend per week, priced from seeds/embedding_cost_rates.csv, before a warning."
    )
    report_path: RelativePath = Field(
        DEFAULT_REPORT_PATH, min_length=1, description="Where `rp report` writes. Env override: `RP_REPORT_PATH`."
    )
    freshness_sla_seconds: Number = Field(
        300,
        gt=0,
        description="Longest an edit of a landing file may take to become searchable (`ops_freshness`): a change "
        "not searchable after this long is an error, an hour whose p95 is over it a warning.",
    )


class WatchSettings(BaseModel):
    """The watch mode (`rp watch`, python_jobs/watch/) and the skipping of dbt builds whose inputs did not
    change (`rp watch` and `make pipeline`, docs/freshness.md): `vars.watch`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    debounce_ms: Whole = Field(
        300,
        ge=10,
        description="Quiet time that ends a burst of landing-zone changes: changes closer together than this "
        "go into one cycle.",
    )
    max_delay_ms: Whole = Field(
        5000,
        ge=100,
        description="Longest a burst that goes on is grouped before its cycle starts (the changes after it "
        "go into the next cycle).",
    )
    skip_unchanged_builds: Flag = Field(
        True,
        description="Skip a dbt build whose inputs (landed files, project files, vars, package versions) are "
        "those of the last successful build.",
    )
    rebuild_after_hours: Number = Field(
        24,
        gt=0,
        description="Build anyway when the last successful build is older than this: tests that read the "
        "clock (`recency`) are checked again.",
    )

    @model_validator(mode="after")
    def _delay_covers_debounce(self) -> WatchSettings:
        if self.max_delay_ms < self.debounce_ms:
            raise _invalid(
                f"({self.max_delay_ms}) must be at least watch.debounce_ms ({self.debounce_ms})", "max_delay_ms"
            )
        return self


class ServeSettings(BaseModel):
    """The retrieval service (`rp serve`, python_jobs/serve/): where it listens, its request limits, its
    query log and how fast it sees new keys and index versions: `vars.serve`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: Annotated[str, _Expect("a host name or IP address")] = Field(
        "127.0.0.1",
        min_length=1,
        description="Address `rp serve` binds (`--host` overrides it); loopback only by default.",
    )
    port: Whole = Field(8000, ge=1, le=65535, description="Port `rp serve` listens on (`--port` overrides it).")
    max_query_chars: Whole = Field(2000, ge=1, description="Longest query text accepted, in characters (longer: 422).")
    max_k: Whole = Field(100, ge=1, description="Most results one search may ask for (`k`; more: 422).")
    max_context_tokens: Whole = Field(
        8000, ge=1, description="Largest `max_tokens` one /v1/context request may ask for (more: 422)."
    )
    max_body_bytes: Whole = Field(65536, ge=1024, description="Largest request body accepted, in bytes (larger: 413).")
    log_queue_size: Whole = Field(
        10000,
        ge=1,
        description="Query log and feedback rows waiting to be written; when full, rows are dropped (counted).",
    )
    log_flush_seconds: Number = Field(
        1.0, gt=0, description="How often the log writer flushes waiting rows to a Parquet file."
    )
    recent_queries: Whole = Field(
        10000,
        ge=1,
        description="Queries kept in memory for feedback checks; older ones are looked up in the query log.",
    )
    index_poll_seconds: Number = Field(
        1.0, gt=0, description="How often the service checks live.json (and the prompt files) for a new version."
    )
    keys_poll_seconds: Number = Field(
        1.0, gt=0, description="How often the service checks the key file for new and revoked keys."
    )
    default_rate_per_second: Number = Field(
        20.0, gt=0, description="Requests per second a key may make when it was created without `--rate`."
    )
    default_daily_tokens: Whole = Field(
        1_000_000, ge=1, description="Context tokens per key per UTC day when it was created without `--daily-tokens`."
    )
    tokenizer: Annotated[str, _Expect("empty, a model name or directory, or a tokenizer.json file")] = Field(
        "",
        description="Tokenizer that counts context tokens; empty means the embedding model's "
        "(vars.retrieval.embedding_model).",
    )
    prompts_dir: RelativePath = Field(
        "prompts", min_length=1, description="Prompt templates (`<name>/<version>.yml`) and their labels.yml."
    )
    log_dir: RelativePath = Field(
        DEFAULT_SERVE_LOG_DIR,
        min_length=1,
        description="Where the service writes its query log and feedback (Parquet). Env override: `RP_SERVE_LOG_DIR`.",
    )
    keys_path: RelativePath = Field(
        DEFAULT_KEYS_PATH,
        min_length=1,
        description="The API key store `rp keys` writes and the service reads. Env override: `RP_KEYS_PATH`.",
    )


class ProjectVars(BaseModel):
    """Every key of `vars:` in dbt_project.yml (and of RP_VARS): what dbt's models and the jobs read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    landing_dir: RelativePath = Field(
        "data/raw", min_length=1, description="Landing zone the ingest job reads. Env override: `RP_LANDING_DIR`."
    )
    raw_schema: Identifier = Field(
        "raw", pattern=r"^[A-Za-z_]\w*$", description="Schema the ingest job writes and the dbt sources read."
    )
    ops_schema: Identifier = Field(
        "ops", pattern=r"^[A-Za-z_]\w*$", description="Schema of the jobs' run ledgers, declared as dbt sources."
    )
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="How landing files are read.")
    max_transaction_amount: Number = Field(
        25000, gt=0, description="Largest amount a transaction line may have (a test on the shop staging model)."
    )
    max_transaction_quantity: Whole = Field(
        50, ge=1, description="Largest quantity a transaction line may have (a test on the shop staging model)."
    )
    row_count_max_drop_pct: Number = Field(
        20,
        ge=0,
        le=100,
        description="A core mart's row count dropping by more than this percentage between builds warns.",
    )
    quarantine_error_threshold: Whole = Field(
        1000, ge=0, description="Quarantined landing records: any warns, more than this fails the build."
    )
    retrieval: RetrievalSettings = Field(
        default_factory=RetrievalSettings, description="How documents become chunks, and which model embeds them."
    )
    embedding: EmbeddingSettings = Field(
        default_factory=EmbeddingSettings, description="How chunks become vectors in the LanceDB index."
    )
    eval: EvalSettings = Field(
        default_factory=EvalSettings, description="How retrieval is measured and what a release must reach."
    )
    alerts: AlertSettings = Field(
        default_factory=AlertSettings, description="Where failures are reported: the alerts file, then the webhook."
    )
    ops: OpsSettings = Field(default_factory=OpsSettings, description="The ops marts and the dashboard.")
    serve: ServeSettings = Field(
        default_factory=ServeSettings, description="The retrieval service: limits, query log, keys and prompts."
    )
    watch: WatchSettings = Field(
        default_factory=WatchSettings,
        description="The watch mode, and skipping dbt builds whose inputs did not change.",
    )


# --- checking vars, and saying what is wrong --------------------------------------------------

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)
_MISSING = object()


def _settings_fields(model: type[BaseModel] = ProjectVars, prefix: Loc = ()) -> Iterator[tuple[Loc, FieldInfo]]:
    """Every setting below `model`, sections included, as (key path, field), in declaration order."""
    for name, info in model.model_fields.items():
        yield (*prefix, name), info
        if _section(info) is not None:
            yield from _settings_fields(_section(info), (*prefix, name))


def _section(info: FieldInfo) -> type[BaseModel] | None:
    kind = info.annotation
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _path(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _lookup(data: Any, loc: Loc) -> Any:
    for part in loc:
        in_list = isinstance(data, list | tuple) and isinstance(part, int) and part < len(data)
        if in_list or (isinstance(data, Mapping) and part in data):
            data = data[part]
        else:
            return _MISSING
    return data


@dataclass(frozen=True)
class _Origin:
    """Where a setting's value came from, for the error message: an environment variable, RP_VARS or
    dbt_project.yml; `project` None means the caller cannot tell (a section checked on its own)."""

    env: Mapping[str, str] = field(default_factory=dict)
    project: Mapping[str, Any] | None = None
    override: Mapping[str, Any] = field(default_factory=dict)

    def of(self, loc: Loc) -> tuple[str, str]:
        """(the name to show for the setting at `loc`, where it came from)."""
        for name, key in (
            (ENV_ALERT_WEBHOOK_URL, ("alerts", "webhook", "url")),
            (ENV_ALERTS_FILE, ("alerts", "jsonl_path")),
        ):
            if self.env.get(name) and loc[: len(key)] == key:
                return name, ""
        if self.override and _lookup(self.override, loc) is not _MISSING:
            return _path(loc), f" (from {ENV_VARS})"
        if self.project is None:
            return _path(loc), ""
        if _lookup(self.project, loc) is not _MISSING or not self.override:
            return _path(loc), " (in dbt_project.yml vars)"
        return _path(loc), f" (in dbt_project.yml vars or {ENV_VARS})"


def _validate(
    model: type[M],
    data: Any,
    prefix: Loc,
    origin: Callable[[Loc], tuple[str, str]] | None = None,
    context: dict[str, Any] | None = None,
) -> M:
    """`model` from `data` (the settings at key path `prefix`), or a ConfigError naming every problem."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, data, prefix, origin or (lambda loc: (_path(loc), "")))) from None


def _problems(exc: ValidationError, data: Any, prefix: Loc, origin: Callable[[Loc], tuple[str, str]]) -> str:
    fields = dict(_settings_fields())
    lines: list[str] = []
    for error in exc.errors():
        loc = (*prefix, *error["loc"])
        if error["type"] == "extra_forbidden":
            name, source = origin(loc)
            line = f"{name}: unknown setting; {_suggestion(loc[:-1], loc[-1], fields)}{source}"
        elif error["type"] == "invalid_setting":
            loc = (*loc, *error["ctx"]["at"])
            name, source = origin(loc)
            line = f"{name} {error['ctx']['reason']}{source}"
        else:
            while loc and loc not in fields:  # an item of a list: name the list, show all of it
                loc = loc[:-1]
            name, source = origin(loc)
            value = _lookup(data, loc[len(prefix) :])
            value = error["input"] if value is _MISSING else value
            expected = _describe(fields[loc]) if loc in fields else "a mapping of settings"
            line = f"{name} must be {expected}, got {value!r}{source}"
        if line not in lines:
            lines.append(line)
    if len(lines) == 1:
        return lines[0]
    return f"{len(lines)} settings are invalid:\n" + "\n".join(f"  {line}" for line in lines)


def _suggestion(parent: Loc, key: str | int, fields: Mapping[Loc, FieldInfo]) -> str:
    """'did you mean <the closest valid key>?', or the valid keys when none is close."""
    # The right key in the wrong section first: `index_dir` at the top level is embedding.index_dir.
    elsewhere = {str(loc[-1]): loc for loc in fields}
    if str(key) in elsewhere:
        return f"did you mean {_path(elsewhere[str(key)])}?"
    siblings = [str(loc[-1]) for loc in fields if loc[:-1] == parent]
    close = difflib.get_close_matches(str(key), siblings, n=1)
    if close:
        return f"did you mean {_path((*parent, close[0]))}?"
    close = difflib.get_close_matches(str(key), list(elsewhere), n=1, cutoff=0.8)
    if close:
        return f"did you mean {_path(elsewhere[close[0]])}?"
    return f"the settings {'in ' + _path(parent) if parent else 'at the top level'} are {', '.join(siblings)}"


def _describe(info: FieldInfo) -> str:
    """What a setting must be, in words: 'a whole number, 1 or more', 'one of torch, onnx, onnx-int8'."""
    for item in info.metadata:
        if isinstance(item, _Expect):
            return item.text
    if get_origin(info.annotation) is Literal:
        return f"one of {', '.join(str(choice) for choice in get_args(info.annotation))}"
    if _section(info) is not None:
        return "a mapping of settings"
    bounds = {
        name: getattr(item, name)
        for item in info.metadata
        for name in ("ge", "gt", "le")
        if isinstance(item, annotated_types.BaseMetadata) and hasattr(item, name)
    }
    if info.annotation is bool:
        return "true or false"
    if info.annotation in (int, float):
        noun = "a whole number" if info.annotation is int else "a number"
        if "ge" in bounds and "le" in bounds:
            return f"{noun} from {bounds['ge']} to {bounds['le']}"
        if bounds.get("gt") == 0:
            return f"a positive {noun.removeprefix('a ')}"
        if "ge" in bounds:
            return f"{noun}, {bounds['ge']} or more"
        return noun
    return "text"


def _resolver(project_dir: Path) -> Callable[[str], Path]:
    def resolve(path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else project_dir / candidate

    return resolve


def _alerts_with_env(values: Any, env: Mapping[str, str]) -> Any:
    """`vars.alerts` with RP_ALERTS_FILE and RP_ALERT_WEBHOOK_URL applied, as the model checks them."""
    if not isinstance(values, Mapping):
        return values
    alerts = dict(values)
    if env.get(ENV_ALERTS_FILE):
        alerts["jsonl_path"] = env[ENV_ALERTS_FILE]
    if env.get(ENV_ALERT_WEBHOOK_URL):
        webhook = alerts.get("webhook") or {}
        if isinstance(webhook, Mapping):
            alerts["webhook"] = {**webhook, "url": env[ENV_ALERT_WEBHOOK_URL]}
    return alerts


def _with_empty_sections(data: Any, model: type[BaseModel]) -> Any:
    """A copy of `data` in which a section left empty in YAML (`webhook:` with nothing under it) or absent
    is an empty mapping, so the model checks it (and resolves its paths) like any other."""
    if not isinstance(data, Mapping):
        return data
    data = dict(data)
    for name, info in model.model_fields.items():
        section = _section(info)
        if section is not None:
            data[name] = _with_empty_sections({} if data.get(name) is None else data[name], section)
        elif (
            name in data
            and data[name] is None
            and isinstance(info.get_default(call_default_factory=True), tuple | dict)
        ):
            del data[name]  # `gates:` or `headers:` with nothing under it: none
    return data


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


# --- the settings the jobs get ----------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What every job gets: the checked sections of vars, and the paths resolved against the project
    directory and the environment."""

    project_dir: Path
    landing_dir: Path
    warehouse_path: Path
    index_dir: IndexLocation  # a local directory or an s3:// prefix (python_jobs/common/locations.py)
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
    serve: ServeSettings = field(default_factory=ServeSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    serve_log_dir: Path = Path(DEFAULT_SERVE_LOG_DIR)
    keys_path: Path = Path(DEFAULT_KEYS_PATH)
    vars: Mapping[str, Any] = field(default_factory=dict)  # as merged from dbt_project.yml and RP_VARS, unchecked

    @classmethod
    def load(cls, project_dir: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """dbt_project.yml vars, RP_VARS merged over them, checked against `ProjectVars`, then the
        environment's path overrides. Raises ConfigError naming every unknown or invalid key."""
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
        if not isinstance(project_vars, Mapping):
            raise ConfigError(f"vars in {project_file} must be a mapping of settings, got {project_vars!r}")
        override = _vars_override(env.get(ENV_VARS))
        merged = _merged(project_vars, override)

        resolve = _resolver(project_dir)
        data = _with_empty_sections(copy.deepcopy(merged), ProjectVars)
        data["alerts"] = _alerts_with_env(data["alerts"], env)
        origin = _Origin(env=env, project=project_vars, override=override)
        checked = _validate(ProjectVars, data, (), origin.of, {"resolve": resolve, "env": env})

        # dbt writes run_results.json here; the embedding job's quality gate reads it.
        target_dir = env.get(ENV_DBT_TARGET_PATH) or str(project.get("target-path", "target"))
        return cls(
            project_dir=project_dir,
            landing_dir=resolve(env.get(ENV_LANDING_DIR) or checked.landing_dir),
            warehouse_path=resolve(env.get(ENV_DUCKDB_PATH) or DEFAULT_DUCKDB_PATH),
            index_dir=parse_index_location(
                env.get(ENV_INDEX_DIR) or checked.embedding.index_dir,
                project_dir,
                env.get(ENV_INDEX_SCRATCH_DIR) or checked.embedding.scratch_dir,
                checked.embedding.storage_options,
                setting=ENV_INDEX_DIR if env.get(ENV_INDEX_DIR) else "embedding.index_dir",
            ),
            dbt_target_dir=resolve(target_dir),
            # Beside the target dir (the project's logs/ by default), so each workspace has its own.
            dbt_log_dir=resolve(env.get(ENV_DBT_LOG_PATH) or str(Path(target_dir).parent / "logs")),
            vars_override=env.get(ENV_VARS) or None,
            report_path=resolve(env.get(ENV_REPORT_PATH) or checked.ops.report_path),
            raw_schema=checked.raw_schema,
            ops_schema=checked.ops_schema,
            ingest=checked.ingest,
            retrieval=checked.retrieval,
            embedding=checked.embedding,
            eval=checked.eval,
            alerts=checked.alerts,
            serve=checked.serve,
            watch=checked.watch,
            serve_log_dir=resolve(env.get(ENV_SERVE_LOG_DIR) or checked.serve.log_dir),
            keys_path=resolve(env.get(ENV_KEYS_PATH) or checked.serve.keys_path),
            vars=merged,
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
            ENV_SERVE_LOG_DIR: str(self.serve_log_dir),
            ENV_KEYS_PATH: str(self.keys_path),
            "DBT_PROFILES_DIR": os.environ.get("DBT_PROFILES_DIR", str(self.project_dir)),
        }


# --- the reference page -----------------------------------------------------------------------


def configuration_reference(page: Path = REFERENCE_PAGE) -> str:
    """docs/configuration.md as it should read: its hand-written introduction (kept from `page`, above
    REFERENCE_MARKER), then every setting of `ProjectVars` with its key path, type, default and description.
    Write it with `page.write_text(configuration_reference(page))`."""
    text = page.read_text(encoding="utf-8") if page.is_file() else "# Configuration\n"
    intro, marker, _ = text.partition(REFERENCE_MARKER)
    lines = [(intro if marker else text.rstrip() + "\n\n").rstrip() + "\n", REFERENCE_MARKER, ""]
    fields = list(_settings_fields())
    top = [(loc, info) for loc, info in fields if len(loc) == 1 and _section(info) is None]
    lines += ["### Top level", "", *_table(top)]
    for loc, info in fields:
        if len(loc) == 1 and _section(info) is not None:
            below = [(key, f) for key, f in fields if key[: len(loc)] == loc and len(key) > 1 and _section(f) is None]
            lines += [f"### {loc[0]}", "", _cell(str(info.description)), "", *_table(below)]
    return "\n".join(lines)


def _table(rows: list[tuple[Loc, FieldInfo]]) -> list[str]:
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for loc, info in rows:
        kind = _cell(_describe(info).removeprefix("a ").removeprefix("an "))
        default = _yaml(info.get_default(call_default_factory=True))
        lines.append(f"| `{_path(loc)}` | {kind} | `{default}` | {_cell(str(info.description))} |")
    return [*lines, ""]


def _cell(text: str) -> str:
    """Text for a Markdown table cell: outside `code`, <mode> would read as an HTML tag."""
    parts = text.replace("|", "\\|").split("`")
    parts[::2] = [part.replace("<", "&lt;").replace(">", "&gt;") for part in parts[::2]]
    return "`".join(parts)


def _yaml(value: Any) -> str:
    """A default as it would be written in dbt_project.yml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {_yaml(item)}" for key, item in value.items()) + "}"
    if isinstance(value, BaseModel):
        return _yaml(value.model_dump(exclude_none=True))
    return str(value)
