"""One configuration, read from dbt_project.yml, overridable by the environment."""

from __future__ import annotations

import shutil

import pytest

from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import PROJECT_DIR, Settings


def test_defaults_come_from_the_dbt_project_vars():
    settings = Settings.load(env={})
    assert settings.landing_dir == PROJECT_DIR / "data" / "raw"
    assert settings.warehouse_path == PROJECT_DIR / "data" / "warehouse" / "retrieval.duckdb"
    assert settings.ingest.max_document_bytes == 5_000_000


def test_environment_overrides_paths(tmp_path):
    settings = Settings.load(env={"RP_LANDING_DIR": str(tmp_path / "in"), "RP_DUCKDB_PATH": "rel/w.duckdb"})
    assert settings.landing_dir == tmp_path / "in"
    assert settings.warehouse_path == PROJECT_DIR / "rel" / "w.duckdb"
    assert settings.dbt_env()["RP_DUCKDB_PATH"] == str(PROJECT_DIR / "rel" / "w.duckdb")


def test_invalid_setting_is_named(tmp_path):
    shutil.copy(PROJECT_DIR / "dbt_project.yml", tmp_path / "dbt_project.yml")
    text = (tmp_path / "dbt_project.yml").read_text(encoding="utf-8")
    (tmp_path / "dbt_project.yml").write_text(
        text.replace("max_document_bytes: 5000000", "max_document_bytes: lots"), encoding="utf-8"
    )

    with pytest.raises(ConfigError, match=r"vars.ingest in .*dbt_project.yml is invalid"):
        Settings.load(project_dir=tmp_path, env={})


def test_missing_project_file_says_where_to_run_from(tmp_path):
    with pytest.raises(ConfigError, match="run the jobs from the repository root"):
        Settings.load(project_dir=tmp_path, env={})


def test_retrieval_settings_come_from_the_same_vars_dbt_reads(tmp_path):
    settings = Settings.load()
    assert settings.retrieval.embedding_model == "all-MiniLM-L6-v2"
    assert settings.retrieval.shared_section_headings == ("Legal notice",)

    project = tmp_path / "dbt_project.yml"
    project.write_text("vars:\n  retrieval:\n    chunk_target_tokens: lots\n")
    with pytest.raises(ConfigError, match=r"vars\.retrieval is invalid"):
        Settings.load(project_dir=tmp_path)


def test_embedding_settings_are_validated_and_name_the_setting(tmp_path):
    project = tmp_path / "dbt_project.yml"
    project.write_text("vars:\n  embedding:\n    backend: tensorflow\n")
    with pytest.raises(ConfigError, match=r"vars\.embedding\.backend='tensorflow' must be one of torch, onnx"):
        Settings.load(project_dir=tmp_path, env={})
    project.write_text("vars:\n  embedding:\n    commit_rows: 0\n")
    with pytest.raises(ConfigError, match=r"vars\.embedding\.commit_rows=0 must be at least 1"):
        Settings.load(project_dir=tmp_path, env={})


def test_eval_gates_are_parsed_and_bad_ones_name_the_entry():
    settings = Settings.load()
    assert settings.eval.thresholds["hybrid"]["ndcg@10"] == 0.90  # from dbt_project.yml vars.eval.gates
    gates = Settings.load(env={"RP_VARS": "{eval: {gates: ['fts mrr@3 >= 0.5']}}"}).eval.thresholds
    assert gates == {"fts": {"mrr@3": 0.5}}  # a list replaces the project's, it is not merged
    bad = {
        "{eval: {gates: ['hybrid ndcg@10 > 0.5']}}": r"'hybrid ndcg@10 > 0.5' must read '<mode> <metric>@<k> >=",
        "{eval: {gates: ['hybrid ndcg@20 >= 0.5']}}": r"'ndcg@20' is not a metric this evaluation computes",
        "{eval: {gates: ['semantic ndcg@10 >= 0.5']}}": r"mode 'semantic' is unknown",
        "{eval: {regression_metrics: [hits@5]}}": r"'hits@5' is not a metric",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            Settings.load(env={"RP_VARS": override})


def test_rp_vars_override_dbt_vars_key_by_key():
    settings = Settings.load(env={"RP_VARS": "{embedding: {commit_rows: 8}}"})
    assert settings.embedding.commit_rows == 8
    assert settings.embedding.batch_size == 32  # the rest of vars.embedding still comes from dbt_project.yml
    with pytest.raises(ConfigError, match="RP_VARS must be a mapping"):
        Settings.load(env={"RP_VARS": "[1, 2]"})


def test_every_setting_that_changes_vectors_changes_the_model_fingerprint():
    from dataclasses import replace

    from python_jobs.chunk.model_files import resolve_model
    from python_jobs.common.settings import EmbeddingSettings
    from python_jobs.index.encoders import fingerprint

    model = resolve_model("all-MiniLM-L6-v2")
    base = EmbeddingSettings()
    ids = {
        fingerprint(model, settings).id
        for settings in (base, replace(base, backend="onnx-int8"), replace(base, normalize=False))
    }
    assert len(ids) == 3
    assert fingerprint(model, replace(base, batch_size=8, commit_rows=7)).id == fingerprint(model, base).id
    assert fingerprint(model, base).dimension == 384
