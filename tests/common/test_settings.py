"""One configuration, read from dbt_project.yml, overridable by the environment, checked key by key."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pydantic import BaseModel

from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import (
    PROJECT_DIR,
    REFERENCE_PAGE,
    EmbeddingSettings,
    ProjectVars,
    RetrievalSettings,
    Settings,
    configuration_reference,
)

TYPO = "{embedding: {batch_sise: 16}}"
TYPO_MESSAGE = "embedding.batch_sise: unknown setting; did you mean embedding.batch_size?"


def project_with(tmp_path, old: str, new: str):
    """A project dir holding only a copy of the real dbt_project.yml, with `old` replaced by `new`."""
    text = (PROJECT_DIR / "dbt_project.yml").read_text(encoding="utf-8")
    assert old in text
    (tmp_path / "dbt_project.yml").write_text(text.replace(old, new, 1), encoding="utf-8")
    return tmp_path


def load_error(**load) -> str:
    with pytest.raises(ConfigError) as raised:
        Settings.load(**load)
    assert raised.value.exit_code == 2
    return str(raised.value)


def test_defaults_come_from_the_dbt_project_vars():
    settings = Settings.load(env={})
    assert settings.landing_dir == PROJECT_DIR / "data" / "raw"
    assert settings.warehouse_path == PROJECT_DIR / "data" / "warehouse" / "retrieval.duckdb"
    assert settings.index_dir == PROJECT_DIR / "data" / "index"
    assert settings.report_path == PROJECT_DIR / "data" / "reports" / "dashboard.html"
    assert settings.ingest.max_document_bytes == 5_000_000
    assert (settings.raw_schema, settings.ops_schema) == ("raw", "ops")


def test_environment_overrides_paths(tmp_path):
    env = {
        "RP_LANDING_DIR": str(tmp_path / "in"),
        "RP_DUCKDB_PATH": "rel/w.duckdb",
        "RP_INDEX_DIR": str(tmp_path / "index"),
        "RP_REPORT_PATH": str(tmp_path / "report.html"),
        "DBT_TARGET_PATH": str(tmp_path / "target"),
    }
    settings = Settings.load(env=env)
    assert settings.landing_dir == tmp_path / "in"
    assert settings.warehouse_path == PROJECT_DIR / "rel" / "w.duckdb"
    assert settings.dbt_env()["RP_DUCKDB_PATH"] == str(PROJECT_DIR / "rel" / "w.duckdb")
    assert (settings.index_dir, settings.report_path) == (tmp_path / "index", tmp_path / "report.html")
    assert settings.dbt_log_dir == tmp_path / "logs"  # beside the target dir, unless DBT_LOG_PATH says otherwise
    assert Settings.load(env={**env, "DBT_LOG_PATH": str(tmp_path / "l")}).dbt_log_dir == tmp_path / "l"


def test_missing_project_file_says_where_to_run_from(tmp_path):
    with pytest.raises(ConfigError, match="run the jobs from the repository root"):
        Settings.load(project_dir=tmp_path, env={})


def test_a_typo_in_rp_vars_names_the_closest_setting():
    assert load_error(env={"RP_VARS": TYPO}) == f"{TYPO_MESSAGE} (from RP_VARS)"


def test_a_typo_in_the_project_vars_names_the_closest_setting(tmp_path):
    project = project_with(tmp_path, "batch_size: 8", "batch_sise: 8")
    assert load_error(project_dir=project, env={}) == f"{TYPO_MESSAGE} (in dbt_project.yml vars)"


def test_a_nested_typo_names_the_full_key_path():
    message = load_error(env={"RP_VARS": "{alerts: {webhook: {timout_seconds: 5}}}"})
    assert message == (
        "alerts.webhook.timout_seconds: unknown setting; did you mean alerts.webhook.timeout_seconds? (from RP_VARS)"
    )


def test_a_key_in_the_wrong_section_names_the_right_one():
    message = load_error(env={"RP_VARS": "{index_dir: data/other}"})
    assert message.startswith("index_dir: unknown setting; did you mean embedding.index_dir?")


def test_a_wrong_type_names_the_setting_the_value_and_what_it_must_be(tmp_path):
    project = project_with(tmp_path, "max_document_bytes: 5000000", "max_document_bytes: lots")
    assert load_error(project_dir=project, env={}) == (
        "ingest.max_document_bytes must be a whole number, 1 or more, got 'lots' (in dbt_project.yml vars)"
    )
    # YAML gives typed values: a flag is not a count, and text is not a flag.
    assert "embedding.batch_size must be a whole number, 1 or more, got True" in load_error(
        env={"RP_VARS": "{embedding: {batch_size: true}}"}
    )
    assert "embedding.normalize must be true or false, got 'no thanks'" in load_error(
        env={"RP_VARS": "{embedding: {normalize: 'no thanks'}}"}
    )


def test_an_out_of_range_value_names_the_range(tmp_path):
    project = tmp_path / "dbt_project.yml"
    project.write_text("vars:\n  embedding:\n    commit_rows: 0\n")
    assert load_error(project_dir=tmp_path, env={}) == (
        "embedding.commit_rows must be a whole number, 1 or more, got 0 (in dbt_project.yml vars)"
    )
    assert "row_count_max_drop_pct must be a number from 0 to 100, got 150" in load_error(
        env={"RP_VARS": "{row_count_max_drop_pct: 150}"}
    )


def test_a_webhook_port_out_of_range_is_rejected_at_load():
    message = load_error(env={"RP_VARS": "{alerts: {webhook: {url: 'https://hooks.example:99999/alerts'}}}"})
    assert message.startswith("alerts.webhook.url must be an http:// or https:// URL with a host name and a valid port")
    assert message.endswith("got 'https://hooks.example:99999/alerts' (from RP_VARS)")
    from_env = load_error(env={"RP_ALERT_WEBHOOK_URL": "https://hooks.example:99999/alerts"})
    assert from_env.startswith("RP_ALERT_WEBHOOK_URL must be an http:// or https:// URL")


def test_prices_and_budgets_must_be_finite():
    assert load_error(env={"RP_VARS": "{embedding: {price_per_million_tokens: .inf}}"}) == (
        "embedding.price_per_million_tokens must be a number, 0 or more, got inf (from RP_VARS)"
    )
    assert "ops.weekly_budget_usd must be a number, 0 or more, got nan" in load_error(
        env={"RP_VARS": "{ops: {weekly_budget_usd: .nan}}"}
    )


def test_several_problems_are_listed_one_per_line():
    message = load_error(env={"RP_VARS": "{embedding: {batch_sise: 16, backend: tensorflow}, ops: {report: x}}"})
    assert message.splitlines() == [
        "3 settings are invalid:",
        "  embedding.backend must be one of torch, onnx, onnx-int8, got 'tensorflow' (from RP_VARS)",
        f"  {TYPO_MESSAGE} (from RP_VARS)",
        "  ops.report: unknown setting; did you mean ops.report_path? (from RP_VARS)",
    ]


def test_an_empty_section_means_its_defaults(tmp_path):
    (tmp_path / "dbt_project.yml").write_text("vars:\n  alerts:\n    webhook:\n  eval:\n    gates:\n")
    settings = Settings.load(project_dir=tmp_path, env={})
    assert settings.alerts.webhook.url == "" and settings.alerts.jsonl_path == tmp_path / "data/alerts/alerts.jsonl"
    assert settings.eval.thresholds == {}


def test_retrieval_settings_come_from_the_same_vars_dbt_reads(tmp_path):
    settings = Settings.load(env={})
    assert settings.retrieval.embedding_model == "all-MiniLM-L6-v2"
    assert settings.retrieval.shared_section_headings == ("Legal notice",)

    project = tmp_path / "dbt_project.yml"
    project.write_text("vars:\n  retrieval:\n    chunk_target_tokens: lots\n")
    with pytest.raises(ConfigError, match=r"^retrieval\.chunk_target_tokens must be a whole number, 1 or more"):
        Settings.load(project_dir=tmp_path, env={})


def test_retrieval_settings_read_a_chunking_settings_row():
    # What the dbt Python models pass: more columns than settings, and the headings as JSON.
    row = {
        "embedding_model": "all-MiniLM-L6-v2",
        "tokenizer_hash": "abc",
        "chunk_target_tokens": 96,
        "chunk_overlap_tokens": 8,
        "shared_section_headings": '["Legal notice"]',
        "chunking_config_hash": "def",
    }
    assert RetrievalSettings.from_vars(row) == RetrievalSettings(
        chunk_target_tokens=96, chunk_overlap_tokens=8, shared_section_headings=("Legal notice",)
    )
    with pytest.raises(ConfigError, match=r"^retrieval\.chunk_overlap_tokens must be a whole number, 0 or more"):
        RetrievalSettings.from_vars({**row, "chunk_overlap_tokens": -1})


def test_embedding_backend_must_be_one_the_index_knows(tmp_path):
    (tmp_path / "dbt_project.yml").write_text("vars:\n  embedding:\n    backend: tensorflow\n")
    assert load_error(project_dir=tmp_path, env={}) == (
        "embedding.backend must be one of torch, onnx, onnx-int8, got 'tensorflow' (in dbt_project.yml vars)"
    )
    assert EmbeddingSettings.BACKENDS == ("torch", "onnx", "onnx-int8")


def test_eval_gates_are_parsed_and_bad_ones_name_the_entry():
    settings = Settings.load(env={})
    assert settings.eval.thresholds["hybrid"]["ndcg@10"] == 0.90  # from dbt_project.yml vars.eval.gates
    assert settings.eval.ks == (1, 3, 5, 10)
    gates = Settings.load(env={"RP_VARS": "{eval: {gates: ['fts mrr@3 >= 0.5']}}"}).eval.thresholds
    assert gates == {"fts": {"mrr@3": 0.5}}  # a list replaces the project's, it is not merged
    bad = {
        "{eval: {gates: ['hybrid ndcg@10 > 0.5']}}": "eval.gates[0] must read '<mode> <metric>@<k> >= <floor>'",
        "{eval: {gates: ['hybrid ndcg@10 >= .inf']}}": "eval.gates[0] must read '<mode> <metric>@<k> >= <floor>'",
        "{eval: {gates: ['hybrid ndcg@20 >= 0.5']}}": "eval.gates[0] names 'ndcg@20', which is not a metric this",
        "{eval: {gates: ['semantic ndcg@10 >= 0.5']}}": "eval.gates[0] has mode 'semantic', which is unknown",
        "{eval: {regression_metrics: [hits@5]}}": "eval.regression_metrics[0] names 'hits@5', which is not a metric",
        "{eval: {modes: [vector, semantic]}}": "eval.modes must be a list of vector, fts, hybrid, got",
        "{eval: {k: [5, 0]}}": "eval.k must be a list of whole numbers, 1 or more, got [5, 0]",
    }
    for override, message in bad.items():
        assert load_error(env={"RP_VARS": override}).startswith(message), override


def test_rp_vars_override_dbt_vars_key_by_key():
    settings = Settings.load(env={"RP_VARS": "{embedding: {commit_rows: 8}}"})
    assert settings.embedding.commit_rows == 8
    assert settings.embedding.batch_size == 8  # the rest of vars.embedding still comes from dbt_project.yml
    assert settings.dbt_vars() is not None and '"batch_size": 8' in settings.dbt_vars()
    with pytest.raises(ConfigError, match="RP_VARS must be a mapping"):
        Settings.load(env={"RP_VARS": "[1, 2]"})


def test_every_var_dbt_reads_is_a_checked_setting():
    keys = {".".join(loc) for loc in _model_keys()}
    read = set()
    for path in [*(PROJECT_DIR / "models").rglob("*"), *(PROJECT_DIR / "macros").rglob("*")]:
        if path.suffix in (".sql", ".yml", ".py"):
            for name, key in re.findall(
                r"(?<!\w)var\(\s*'(\w+)'[^)]*\)(?:\['(\w+)'\])?", path.read_text(encoding="utf-8")
            ):
                read.add(f"{name}.{key}" if key else name)
    assert {"ops.weekly_budget_usd", "max_transaction_amount", "raw_schema"} <= read  # the pattern finds them
    assert read - keys == set()


def test_the_configuration_page_is_generated_from_the_settings_model():
    page = REFERENCE_PAGE.read_text(encoding="utf-8")
    assert page == configuration_reference(), "docs/configuration.md is stale: run `rp reference`"
    for loc in _model_keys():
        assert f"`{'.'.join(loc)}`" in page


def test_a_typo_stops_a_command_with_exit_code_2_and_no_traceback():
    # The command loads the settings before it touches the warehouse or the index.
    result = subprocess.run(
        [sys.executable, "-m", "python_jobs", "embed", "--dry-run"],
        cwd=PROJECT_DIR,
        env={**_clean_environ(), "RP_VARS": TYPO},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"error: {TYPO_MESSAGE} (from RP_VARS)" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_setting_that_changes_vectors_changes_the_model_fingerprint():
    from python_jobs.chunk.model_files import resolve_model
    from python_jobs.index.encoders import fingerprint

    model = resolve_model("all-MiniLM-L6-v2")
    base = EmbeddingSettings()
    ids = {
        fingerprint(model, settings).id
        for settings in (
            base,
            base.model_copy(update={"backend": "onnx-int8"}),
            base.model_copy(update={"normalize": False}),
        )
    }
    assert len(ids) == 3
    other_batches = base.model_copy(update={"batch_size": 8, "commit_rows": 7})
    assert fingerprint(model, other_batches).id == fingerprint(model, base).id
    assert fingerprint(model, base).dimension == 384


def _model_keys() -> list[tuple[str, ...]]:
    """Every key path of vars that is a setting (not a section)."""
    keys = []

    def walk(model, prefix):
        for name, info in model.model_fields.items():
            kind = info.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                walk(kind, (*prefix, name))
            else:
                keys.append((*prefix, name))

    walk(ProjectVars, ())
    return keys


def _clean_environ() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("RP_")}
