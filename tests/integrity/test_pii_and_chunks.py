"""Chunks are bounded, personal data follows a policy, and a bad BEIR corpus writes nothing.

Each test is one promise from the adversarial review (issue 13): item 7, the PII policy, and item 12's
BEIR corpus, checked through the real ingest, dbt and CLI. Each failed on the code before the fix. The
first two share one dbt build of a world with a document of one long "word" and documents under each
action of a policy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from python_jobs.chunk.chunker import content_hash
from tests.dbt_artifacts import results_by_status
from tests.worlds import PROJECT_DIR, SKIP_OPS, Workspace

BLOB = "abcdefghij" * 30_000  # 300,000 characters the tokenizer reads as one unknown token
POLICY = """{retrieval: {pii_policy: [
  {access_level: confidential, action: allow},
  {doc_type: guide, action: redact},
  {doc_type: faq, access_level: internal, action: allow}]}}"""
CONTACT = "Write to jane.doe@example.com, call (555) 123-4567 or pay with 4111 1111 1111 1111."


def write_doc(ws: Workspace, doc_id: str, doc_type: str, access_level: str, body: str) -> None:
    path = ws.landing / "docs" / doc_type / f"{doc_id}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    front = (
        f"doc_id: {doc_id}\ntitle: {doc_id.replace('-', ' ').title()}\ndoc_type: {doc_type}\nowner: support\n"
        f"access_level: {access_level}\nupdated_at: 2026-11-01T10:00:00Z"
    )
    path.write_text(f"---\n{front}\n---\n\n{body}\n", encoding="utf-8")


@pytest.fixture(scope="module")
def policy_world(built_world: Workspace, tmp_path_factory: pytest.TempPathFactory):
    ws = built_world.copy(tmp_path_factory.mktemp("pii") / "ws")
    before = ws.query("select chunk_id, content_hash from knowledge.document_chunks order by chunk_id")
    write_doc(ws, "guide-blob", "guide", "public", f"## Firmware dump\n\n{BLOB}\n\n## After\n\nRestart it.")
    write_doc(ws, "faq-leak", "faq", "public", f"## Contact\n\n{CONTACT}")  # no rule: block
    write_doc(ws, "guide-contact", "guide", "public", f"## Contact jane.doe@example.com\n\n{CONTACT}")  # redact
    write_doc(ws, "faq-staff-line", "faq", "internal", "## Staff line\n\nCall (555) 987-6543 for stock.")  # allow
    ws.ingest(check=True)
    selection = ("--select", "chunking_settings+", "stg_docs__documents+", *SKIP_OPS)
    build = ws.dbt("build", *selection, "--vars", ws.settings(POLICY).dbt_vars())
    return ws, build, before


def test_a_document_of_one_long_word_is_cut_into_chunks_bounded_by_characters(policy_world):
    """Item 7: 300,000 characters that count as a few tokens are not one chunk; other chunks do not change."""
    ws, _, before = policy_world
    statuses = results_by_status(ws.target)
    assert "document_chunks_embedding_text_length_at_most_max_chunk_characters" in statuses["pass"]

    blob = ws.query(
        "select length(embedding_text), token_count, text from knowledge.document_chunks "
        "where doc_id = 'guide-blob' and heading_path like '%Firmware dump' order by chunk_index"
    )
    assert len(blob) >= 300_000 // 4000
    assert max(length for length, _, _ in blob) <= 4000
    assert "".join(text for _, _, text in blob) == BLOB  # nothing lost, nothing repeated
    assert all(tokens < 16 for _, tokens, _ in blob)  # the heading path, [UNK] and two special tokens

    # The documents that were there keep every chunk id and content hash.
    old_ids = ", ".join(f"'{chunk_id}'" for chunk_id, _ in before)
    after = ws.query(
        f"select chunk_id, content_hash from knowledge.document_chunks where chunk_id in ({old_ids}) order by chunk_id"
    )
    assert after == before


def test_the_pii_policy_blocks_redacts_or_allows_per_document_type_and_access_level(policy_world):
    """The PII policy: block fails no_pii (today's behaviour), redact replaces each match before hashing and
    counts it, allow keeps it; no_pii checks what the policy leaves."""
    ws, build, _ = policy_world
    assert build.returncode == 1  # the blocked FAQ
    failing = results_by_status(ws.target)["fail"]
    assert {name for name in failing if name.startswith("no_pii")} == {
        name for name in failing if name.startswith("no_pii_document_chunks_text")
    }
    [pii_test] = [name for name in failing if name.startswith("no_pii")]
    assert ws.query(f"select doc_id, pii_action, pii_kind from test_failures.{pii_test} order by pii_kind") == [
        ("faq-leak", "block", "card-like number"),
        ("faq-leak", "block", "email address"),
        ("faq-leak", "block", "phone number"),
    ]

    [(heading_path, text, embedding_text, hashed, redactions)] = ws.query(
        "select heading_path, text, embedding_text, content_hash, pii_redactions "
        "from knowledge.document_chunks where doc_id = 'guide-contact' and pii_action = 'redact'"
    )
    assert heading_path == "Guide Contact > Contact [EMAIL]"
    assert text == "Write to [EMAIL], call [PHONE] or pay with [CARD]."
    assert embedding_text == f"{heading_path}\n\n{text}" and hashed == content_hash(embedding_text)
    assert redactions == 4

    assert ws.query(
        "select pii_action, pii_redactions, text from knowledge.document_chunks where doc_id = 'faq-staff-line'"
    ) == [("allow", 0, "Call (555) 987-6543 for stock.")]
    assert ws.query(
        "select distinct pii_action, pii_redactions from knowledge.document_chunks "
        "where doc_id in ('faq-brightwater-variable-temp-kettle', 'faq-price-match')"
    ) == [("block", 0)]  # the sample's public FAQs: no rule matches them, so personal data would fail the build

    # The settings row records the policy dbt used, as the jobs read it; changing it re-cuts every document.
    [(policy, characters)] = ws.query("select pii_policy, max_chunk_characters from knowledge.chunking_settings")
    assert json.loads(policy) == [
        rule.model_dump(exclude_none=True) for rule in ws.settings(POLICY).retrieval.pii_policy
    ]
    assert characters == 4000


BEIR_FIXTURE = PROJECT_DIR / "tests" / "fixtures" / "beir-tiny"


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"_id": "D99", "title": "Broken", "text": "cut off\n', "corpus.jsonl:21: not valid JSON"),
        ('{"_id": "D01", "title": "Again", "text": "A second D01."}\n', "corpus.jsonl:21: document id 'D01' appears"),
    ],
)
def test_a_beir_corpus_with_a_bad_line_or_a_duplicate_id_writes_nothing(tmp_path: Path, bad_line: str, message: str):
    """Item 12: the corpus is checked whole, as the queries and qrels are, before a landing file is written."""
    from click.testing import CliRunner

    from python_jobs.cli import cli

    data = tmp_path / "beir-broken"
    shutil.copytree(BEIR_FIXTURE, data)
    with (data / "corpus.jsonl").open("a", encoding="utf-8") as corpus:
        corpus.write(bad_line)
    workspace = tmp_path / "workspace"
    argv = ["eval-beir", str(data), "--workspace", str(workspace)]
    result = CliRunner().invoke(cli, argv, env=Workspace(workspace).env, catch_exceptions=False)
    done = subprocess.CompletedProcess(argv, result.exit_code, result.stdout, result.stderr)

    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not workspace.exists()
