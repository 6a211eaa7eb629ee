"""Boilerplate found by counting: sections whose text many documents share.

A legal footer, a standard disclaimer or a "Contact us" block says the same in every document that
carries it. Embedded under each document's title it would be a different text, and so a model call and
a vector, per document; embedded under its own heading alone it is one text, embedded once, whose
vector every document shares (the vector cache is keyed by the hash of the embedded text).

The dbt models find it without configuration:

    document_sections      (this module, incremental) the hash of each section's text, per document
    boilerplate_sections   (SQL) the texts found in at least `vars.retrieval.boilerplate_min_docs`
                           documents
    document_chunks        a document's fingerprint includes the boilerplate texts among its own
                           sections, so a text that becomes boilerplate, or stops being it,
                           re-chunks the documents that carry it and no other

Only sections under a heading count: the text before a document's first heading is its own lead,
and a document without headings is one section that its title alone tells apart from a copy.
`vars.retrieval.shared_section_headings` still names headings whose sections are always embedded
without the title, however few documents share them.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

import pyarrow as pa

from python_jobs.chunk.markdown import split_sections

SECTION_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("section_key", pa.string()),  # the heading path without the title; null: no section under a heading
        ("text_hash", pa.string()),
        ("source_content_hash", pa.string()),  # the document's content_hash these sections were cut from
        ("chunking_config_hash", pa.string()),
    ]
)
# Below this many documents a worker pool costs more to start than it saves.
PARALLEL_MIN_DOCUMENTS = 2_000
DOCUMENTS_PER_TASK = 1_000


def section_text_hash(text: str) -> str:
    """What identifies a section's text across documents. Bodies are normalized upstream (unicode form,
    whitespace runs: python_jobs/chunk/markdown.normalize_markdown), so the text as cut is compared."""
    return hashlib.md5(text.strip().encode("utf-8")).hexdigest()


def document_section_hashes(title: str, body: str) -> list[tuple[str, str]]:
    """(heading path, text hash) of each section under a heading, as the chunker cuts the document."""
    return [
        (section.key, section_text_hash(section.text))
        for section in split_sections(body, title)
        if section.headings and section.text.strip()
    ]


def section_table(documents: list[dict], config_hash: str, workers: int | None = None) -> pa.Table:
    """document_sections rows (SECTION_SCHEMA) for documents given as dicts with doc_id, title, body and
    content_hash: a row per section under a heading, or one row of nulls for a document without any (so an
    incremental build knows it was read). Large inputs are cut by a pool of worker processes."""
    if workers is None:
        workers = (os.cpu_count() or 1) if len(documents) >= PARALLEL_MIN_DOCUMENTS else 1
    batches = [documents[i : i + DOCUMENTS_PER_TASK] for i in range(0, len(documents), DOCUMENTS_PER_TASK)]
    if workers <= 1 or len(batches) <= 1:
        results: Iterable[pa.RecordBatch] = [_section_batch(batch, config_hash) for batch in batches]
    else:
        # spawn, not fork: dbt runs models in threads, and forking a threaded process is unsafe.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(_section_batch, batches, itertools.repeat(config_hash)))
    results = list(results)
    return pa.Table.from_batches(results, schema=SECTION_SCHEMA) if results else SECTION_SCHEMA.empty_table()


def _section_batch(documents: list[dict], config_hash: str) -> pa.RecordBatch:
    columns: dict[str, list] = {name: [] for name in SECTION_SCHEMA.names}
    for document in documents:
        sections = document_section_hashes(document["title"], document["body"]) or [(None, None)]
        for key, text_hash in sections:
            columns["doc_id"].append(document["doc_id"])
            columns["section_key"].append(key)
            columns["text_hash"].append(text_hash)
            columns["source_content_hash"].append(document["content_hash"])
            columns["chunking_config_hash"].append(config_hash)
    return pa.RecordBatch.from_pydict(columns, schema=SECTION_SCHEMA)
