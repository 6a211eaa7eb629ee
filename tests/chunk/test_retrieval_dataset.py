"""documents and document_chunks built by real dbt on a small world: tests, increments, settings."""

from __future__ import annotations

import json
import shutil

import yaml

from tests.dbt_artifacts import results_by_status
from tests.worlds import PROJECT_DIR, SAMPLE_LANDING, Workspace

CHUNK_COLUMNS = "chunk_id, doc_id, chunk_index, heading_path, text, embedding_text, token_count, content_hash"
DEFAULT_RETRIEVAL_VARS = {
    "embedding_model": "all-MiniLM-L6-v2",
    "chunk_target_tokens": 192,
    "chunk_overlap_tokens": 24,
    "shared_section_headings": ["Legal notice"],
}


def chunks(ws: Workspace, where: str = "true") -> list[tuple]:
    return ws.query(f"select {CHUNK_COLUMNS} from knowledge.document_chunks where {where} order by chunk_id")


def write_document(ws: Workspace, name: str, front: dict, body: str) -> None:
    path = ws.landing / "docs" / "faq" / name
    front_matter = "\n".join(f"{key}: {value}" for key, value in front.items())
    path.write_text(f"---\n{front_matter}\n---\n{body}\n", encoding="utf-8")


def faq(doc_id: str, access_level: str = "public") -> dict:
    return {
        "doc_id": doc_id,
        "title": f"FAQ {doc_id}",
        "doc_type": "faq",
        "owner": "customer-support",
        "access_level": access_level,
        "updated_at": "2026-11-01T10:00:00Z",
    }


def test_documents_and_chunks_are_built_and_pass_their_tests(built_world):
    statuses = results_by_status(built_world.root / "target")
    assert {"documents", "document_chunks", "chunking_settings", "int_documents_normalized"} <= statuses["success"]
    assert {
        "every_document_has_a_chunk",
        "unique_document_chunks_chunk_id",
        "not_blank_document_chunks_text",
    } <= statuses["pass"]
    assert any(name.startswith("no_pii_document_chunks_text") for name in statuses["pass"])
    assert any(name.startswith("at_most_document_chunks_token_count") for name in statuses["pass"])

    kettle = built_world.query(
        "select product_name, category, word_count, token_count from knowledge.documents "
        "where doc_id = 'faq-brightwater-variable-temp-kettle'"
    )[0]
    assert kettle[0] and kettle[1] == "Kitchen" and 0 < kettle[2] < kettle[3]
    rows = built_world.query(
        "select heading_path, token_count, doc_type, access_level, source_updated_at from knowledge.document_chunks"
    )
    assert all(path.startswith(("Brightwater", "Price")) for path, *_ in rows), rows[:3]
    assert all(
        0 < tokens <= 256 and doc_type == "faq" and access and updated for _, tokens, doc_type, access, updated in rows
    )


def test_incremental_chunks_equal_a_full_refresh_after_edits_additions_and_deletions(world):
    kettle = world.landing / "docs" / "faq" / "faq-brightwater-variable-temp-kettle.md"
    price_match = "doc_id = 'faq-price-match'"
    untouched_before = chunks(world, price_match)
    kettle_before = chunks(world, "doc_id = 'faq-brightwater-variable-temp-kettle'")

    # Add a question to the kettle FAQ, add a document, then delete that document after one build.
    text = kettle.read_text(encoding="utf-8")
    kettle.write_text(text.replace("\n## ", "\n## Is the lid dishwasher safe?\n\nNo: rinse it by hand.\n\n## ", 1))
    shutil.copy(SAMPLE_LANDING / "docs" / "faq" / "faq-brightwater-rewards.md", world.landing / "docs" / "faq")
    world.ingest(check=True)
    world.dbt("build", "-s", "+document_chunks", check=True)

    assert chunks(world, price_match) == untouched_before
    kettle_after = chunks(world, "doc_id = 'faq-brightwater-variable-temp-kettle'")
    added = [row for row in kettle_after if row[3].endswith("Is the lid dishwasher safe?")]
    assert [row[4] for row in added] == ["No: rinse it by hand."]
    # The new section is the only change: every chunk of the other sections kept its id and hash.
    assert {(row[0], row[7]) for row in kettle_before} == {(row[0], row[7]) for row in kettle_after} - {
        (row[0], row[7]) for row in added
    }
    assert chunks(world, "doc_id = 'faq-brightwater-rewards'")

    (world.landing / "docs" / "faq" / "faq-brightwater-rewards.md").unlink()
    world.ingest(check=True)
    world.dbt("build", "-s", "+document_chunks", check=True)
    incremental = chunks(world)
    documents = world.query("select * from knowledge.documents order by doc_id")
    assert not chunks(world, "doc_id = 'faq-brightwater-rewards'")
    assert [row[0] for row in documents] == ["faq-brightwater-variable-temp-kettle", "faq-price-match"]

    world.dbt("build", "-s", "+document_chunks", "--full-refresh", check=True)
    assert chunks(world) == incremental
    assert world.query("select * from knowledge.documents order by doc_id") == documents


def test_pii_in_a_public_chunk_fails_the_build_but_confidential_documents_are_exempt(world):
    # A long number inside a link is an identifier: only the email address is a finding.
    write_document(
        world,
        "faq-leak.md",
        faq("faq-leak"),
        "## Contact\n\nWrite to jane.doe@example.com any time. Slides: http://example.org/vs/5309904231178427.",
    )
    write_document(
        world,
        "faq-escalation.md",
        faq("faq-escalation", access_level="confidential"),
        "## Escalation\n\nCall the duty manager on (555) 123-4567 or card 4111 1111 1111 1111 for refunds.",
    )
    world.ingest(check=True)
    build = world.dbt("build", "-s", "+document_chunks+")

    assert build.returncode != 0
    failing = results_by_status(world.root / "target")["fail"]
    [pii_test] = [name for name in failing if name.startswith("no_pii_document_chunks_text")]
    stored = world.query(f"select doc_id, pii_kind from test_failures.{pii_test}")
    assert stored == [("faq-leak", "email address")]


def test_changing_chunk_size_recuts_every_document_but_keeps_hashes_of_unchanged_text(world):
    before = {row[5]: row[7] for row in chunks(world)}  # embedding_text -> content_hash
    smaller = {**DEFAULT_RETRIEVAL_VARS, "chunk_target_tokens": 96, "chunk_overlap_tokens": 8}
    world.dbt("build", "-s", "chunking_settings+", "--vars", json.dumps({"retrieval": smaller}), check=True)

    after = {row[5]: row[7] for row in chunks(world)}
    config_hashes = world.query("select distinct chunking_config_hash from knowledge.document_chunks")
    assert config_hashes == world.query("select chunking_config_hash from knowledge.chunking_settings")
    assert len(after) > len(before)  # smaller chunks, more of them
    same_text = before.keys() & after.keys()
    assert same_text, "short answers fit both sizes and should keep their text"
    assert all(before[text] == after[text] for text in same_text)
    # The target is what the cuts aim at, not a cap (python_jobs/chunk/layout.py): where a section is cut
    # into several chunks, they average under it; only the model's limit bounds a chunk.
    [(mean, largest)] = world.query(
        "select avg(token_count), max(token_count) from knowledge.document_chunks where section_id in "
        "(select section_id from knowledge.document_chunks group by section_id having count(*) > 1)"
    )
    assert mean <= 96 and largest <= 256, (mean, largest)


def test_lineage_runs_from_landed_documents_to_chunks_with_settings_in_the_docs(built_world):
    manifest = json.loads((built_world.root / "target" / "manifest.json").read_text(encoding="utf-8"))
    nodes = manifest["nodes"]

    def parents(name: str) -> set[str]:
        return {p.split(".")[-1] for p in nodes[f"model.retrieval_platform.{name}"]["depends_on"]["nodes"]}

    assert parents("document_chunks") == {"documents", "chunking_settings", "document_sections", "boilerplate_sections"}
    assert {"int_documents_normalized", "stg_docs__documents", "products"} <= parents("documents")
    assert "documents" in manifest["sources"]["source.retrieval_platform.docs.documents"]["unique_id"]
    assert parents("stg_docs__documents") == {"documents"}
    settings_config = nodes["model.retrieval_platform.chunking_settings"]["config"]
    assert settings_config["chunk_target_tokens"] == 192
    assert settings_config["embedding_model"] == "all-MiniLM-L6-v2"
    assert nodes["model.retrieval_platform.documents"]["contract"]["enforced"] is True


def test_an_impossible_chunk_size_fails_the_build_naming_the_setting_and_keeps_the_chunks(world):
    before = chunks(world)
    too_big = {**DEFAULT_RETRIEVAL_VARS, "chunk_target_tokens": 1000}
    build = world.dbt("build", "-s", "chunking_settings+", "--vars", json.dumps({"retrieval": too_big}))

    assert build.returncode != 0
    assert "vars.retrieval.chunk_target_tokens=1000 must be between 8 and the model's max sequence length (256)" in (
        build.stdout
    )
    assert chunks(world) == before


PYTHON_MODELS = {
    "int_documents_normalized": "models/intermediate/_intermediate__models.yml",
    "chunking_settings": "models/marts/retrieval/_retrieval__models.yml",
    "document_chunks": "models/marts/retrieval/_retrieval__models.yml",
    "prompt_versions": "models/marts/ops/_serving__models.yml",
}


def test_the_python_models_yaml_declares_the_types_they_build(built_world):
    """dbt enforces no contract on Python models: the declared data_type is held to what they really build."""
    for model, path in PYTHON_MODELS.items():
        models = yaml.safe_load((PROJECT_DIR / path).read_text(encoding="utf-8"))["models"]
        (entry,) = [m for m in models if m["name"] == model]
        declared = {column["name"]: column.get("data_type") for column in entry["columns"]}
        built = built_world.query(
            "select column_name, lower(data_type) from information_schema.columns "
            f"where table_name = '{model}' order by ordinal_position"
        )
        assert declared == dict(built), model
