"""What a change costs the index: a chunk that only moved costs nothing, and boilerplate (a section text in
enough documents) is one text for all of them, found by counting. Real dbt builds, the embedding job's own
plan, the real index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from python_jobs.chunk.boilerplate import section_text_hash
from python_jobs.chunk.chunker import build_chunker
from python_jobs.common.settings import RetrievalSettings
from python_jobs.index.embed import EmbedOptions, embed
from python_jobs.search.filters import Filters
from python_jobs.search.retriever import Retriever
from tests.worlds import KETTLE, SKIP_OPS, Workspace

MIN_DOCS = 3
RETRIEVAL_VARS = {
    "embedding_model": "all-MiniLM-L6-v2",
    "chunk_target_tokens": 192,
    "chunk_overlap_tokens": 24,
    "shared_section_headings": ["Legal notice"],
    "boilerplate_min_docs": MIN_DOCS,
}
FOOTER = (
    "Brightwater Home answers these questions for general guidance only. Prices, availability and "
    "warranty terms can change without notice; the terms printed on your receipt apply."
)
TOPICS = ("descaling", "storage", "gift wrapping")
NEW_SECTION = "## Is the kettle free of BPA?\n\nYes. Every part that touches water is stainless steel or BPA-free.\n\n"


def footer_doc(ws: Workspace, n: int, topic: str) -> Path:
    path = ws.landing / "docs" / "faq" / f"faq-footer-{n}.md"
    path.write_text(
        f"---\ndoc_id: faq-footer-{n}\ntitle: Questions about {topic}\ndoc_type: faq\nowner: customer-support\n"
        f"access_level: public\nupdated_at: 2026-11-01T10:00:00Z\n---\n\n## What should I know about {topic}?\n\n"
        f"Our {topic} guide answers it step by step, with pictures.\n\n## Legal\n\n{FOOTER}\n",
        encoding="utf-8",
    )
    return path


def build(ws: Workspace) -> None:
    ws.ingest(check=True)
    vars_ = json.dumps({"retrieval": RETRIEVAL_VARS})
    # chunking_settings too: it reads the vars, and is upstream of the documents rather than downstream.
    ws.dbt("build", "--select", "stg_docs__documents+", "chunking_settings", *SKIP_OPS, "--vars", vars_, check=True)


def chunk_rows(ws: Workspace, where: str = "true") -> dict[str, tuple]:
    rows = ws.query(
        "select chunk_id, doc_id, chunk_index, content_hash, embedding_text, document_fingerprint "
        f"from knowledge.document_chunks where {where}"
    )
    return {row[0]: row[1:] for row in rows}


@pytest.fixture(scope="module")
def edited(indexed_world: Workspace, tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict]:
    """The indexed world, then built (not embedded) after two changes: a new section at the top of the kettle
    FAQ, and three new FAQs that end with the same legal footer."""
    ws = indexed_world.copy(tmp_path_factory.mktemp("edited") / "ws")
    before = chunk_rows(ws)
    kettle = ws.landing / "docs" / KETTLE
    kettle.write_text(kettle.read_text(encoding="utf-8").replace("\n## ", "\n" + NEW_SECTION + "## ", 1))
    for n, topic in enumerate(TOPICS):
        footer_doc(ws, n, topic)
    build(ws)
    return ws, before


def test_a_chunk_that_only_moved_costs_no_model_call_and_no_row_rewrite(edited):
    ws, before = edited
    after = chunk_rows(ws, "doc_id = 'faq-brightwater-variable-temp-kettle'")
    moved = [c for c, row in after.items() if c in before and row[1] != before[c][1]]
    assert moved, "the new section moves the kettle FAQ's later chunks"
    assert all(after[c][2] == before[c][2] for c in moved)  # same id, same text, another position

    plan = embed(ws.settings(), EmbedOptions(dry_run=True))
    kettle_new = [c for c in after if c not in before]
    footer_docs = chunk_rows(ws, "doc_id like 'faq-footer-%'")
    assert plan.counts["new"] == len(kettle_new) + len(footer_docs)
    # Nothing already indexed is rewritten: not the moved chunks, not the rest of the corpus.
    assert plan.counts["text_changed"] == plan.counts["metadata_changed"] == plan.counts["deleted"] == 0
    distinct = {row[2] for row in footer_docs.values()}
    assert plan.texts_embedded == len(kettle_new) + len(distinct)


def test_a_footer_in_enough_documents_is_one_text_without_the_title(edited):
    ws, _ = edited
    footers = [row for row in chunk_rows(ws, "heading_path like '%> Legal'").values()]
    assert len(footers) == len(TOPICS)
    assert len({row[2] for row in footers}) == 1  # one content hash: one model call, one vector for all three
    assert all(row[3] == f"Legal\n\n{FOOTER}" for row in footers)
    assert ws.query("select document_count, section_key from knowledge.boilerplate_sections") == [(3, "Legal")]
    questions = [row for row in chunk_rows(ws, "doc_id like 'faq-footer-%' and heading_path not like '%Legal'")]
    assert len(questions) == len(TOPICS)  # their own sections keep the title: three texts


def test_a_footer_that_drops_below_the_threshold_rechunks_only_its_documents(edited, tmp_path):
    ws = edited[0].copy(tmp_path / "ws")
    before = {row[0]: row[4] for row in chunk_rows(ws).values()}
    (ws.landing / "docs" / "faq" / "faq-footer-0.md").unlink()
    build(ws)

    footers = {row[0]: row[3] for row in chunk_rows(ws, "heading_path like '%> Legal'").values()}
    assert footers == {
        f"faq-footer-{n}": f"Questions about {topic} > Legal\n\n{FOOTER}" for n, topic in enumerate(TOPICS) if n
    }
    assert ws.query("select count(*) from knowledge.boilerplate_sections") == [(0,)]
    after = {row[0]: row[4] for row in chunk_rows(ws).values()}
    refingerprinted = {doc_id for doc_id, fingerprint in after.items() if before.get(doc_id) != fingerprint}
    assert refingerprinted == {"faq-footer-1", "faq-footer-2"}  # and no other document is chunked again


def test_shared_section_headings_still_drop_the_title_without_detection():
    body = "## Why?\n\nBecause it is.\n\n## Legal\n\nAll rights reserved by the kettle makers."
    footer = "All rights reserved by the kettle makers."

    def legal(chunker) -> str:
        (chunk,) = [c for c in chunker.chunk("doc", "A title", body) if c.heading_path.endswith("Legal")]
        return chunk.embedding_text

    configured = build_chunker(RetrievalSettings(shared_section_headings=("Legal",), boilerplate_min_docs=0))
    found = build_chunker(RetrievalSettings(), boilerplate={section_text_hash(footer)})
    neither = build_chunker(RetrievalSettings(), boilerplate={section_text_hash("another text")})
    assert legal(configured) == legal(found) == f"Legal\n\n{footer}"
    assert legal(neither) == f"A title > Legal\n\n{footer}"


def test_the_first_chunk_filter_reads_the_indexed_flag(indexed_world):
    first = set(indexed_world.query("select doc_id, chunk_id from knowledge.document_chunks where chunk_index = 0"))
    retriever = Retriever(indexed_world.settings())
    hits = retriever.search("kettle", "fts", k=50, filters=Filters(first_chunk_only=True)).hits
    assert hits and {(h.doc_id, h.chunk_id) for h in hits} <= first
