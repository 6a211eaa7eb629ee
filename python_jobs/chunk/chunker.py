"""Structure-aware, token-bounded, edit-stable chunking of markdown documents.

A document is cut at its heading tree first (markdown_text.split_sections); only then is
each section split, by semantic-text-splitter, into pieces that fit the embedding
model's token budget. Because no chunk crosses a section boundary and chunk ids come
from the section's identity plus the position inside it, an edit in one section
leaves every other section's chunks (text, hash and id) exactly as they were.

What the model sees (`embedding_text`) is the heading path, a blank line, then the
chunk text; the bound on tokens covers that whole string including the model's
special tokens, so nothing is ever truncated by the model.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache, lru_cache

import pyarrow as pa
from semantic_text_splitter import MarkdownSplitter
from tokenizers import Tokenizer

from python_jobs.chunk.markdown import Section, split_sections
from python_jobs.chunk.model_files import ModelFiles, resolve_model
from python_jobs.chunk.schema import CHUNK_SCHEMA, DOCUMENT_COLUMNS, FINGERPRINT_COLUMNS
from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import RetrievalSettings

# Bump when the algorithm changes in a way that moves chunk boundaries.
CHUNKER_VERSION = "1"
HEADING_SEPARATOR = " > "
# Character capacity is aimed a little under the token target, so that few pieces of text
# denser than their section's average overshoot it.
CHARACTER_CAPACITY_MARGIN = 0.9
# A heading path may use at most this share of the token budget; the rest is for text.
MAX_PREFIX_SHARE = 0.5
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ChunkingConfig:
    """Chunk size settings; `max_tokens` is the model's hard limit, special tokens included."""

    max_tokens: int
    target_tokens: int
    overlap_tokens: int

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ConfigError(f"the model's max sequence length ({self.max_tokens}) is too small to chunk for")
        if not 8 <= self.target_tokens <= self.max_tokens:
            raise ConfigError(
                f"vars.retrieval.chunk_target_tokens={self.target_tokens} must be between 8 and the model's "
                f"max sequence length ({self.max_tokens})"
            )
        if not 0 <= self.overlap_tokens < self.target_tokens // 2:
            raise ConfigError(
                f"vars.retrieval.chunk_overlap_tokens={self.overlap_tokens} must be at least 0 and less than "
                f"half of chunk_target_tokens ({self.target_tokens})"
            )


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    section_id: str
    position: int  # position inside the section
    heading_path: str
    text: str
    embedding_text: str
    token_count: int  # tokens of embedding_text as the model counts them, special tokens included
    content_hash: str
    start: int  # character span of `text` in the document body
    end: int


def content_hash(embedding_text: str) -> str:
    """Hash of the text the model sees, blind to unicode form and whitespace runs."""
    normalized = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", embedding_text)).strip()
    return hashlib.md5(normalized.encode("utf-8")).hexdigest()


def section_id(doc_id: str, headings: tuple[str, ...], occurrence: int) -> str:
    identity = "\x1f".join((doc_id, *headings, str(occurrence)))
    return hashlib.md5(identity.encode("utf-8")).hexdigest()[:10]


@dataclass(frozen=True)
class _SectionPlan:
    section: Section
    heading_path: str  # what a reader sees: the full path
    prefix: str  # what the model sees before the text: the path, maybe shortened
    prefix_tokens: int
    budget: int  # tokens for the text, special tokens included
    section_id: str


class Chunker:
    """Chunks documents for one tokenizer and one configuration."""

    def __init__(self, tokenizer: Tokenizer, config: ChunkingConfig, shared_section_headings: Iterable[str] = ()):
        self.tokenizer = tokenizer
        self.config = config
        self.shared_headings = frozenset(h.casefold().strip() for h in shared_section_headings)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens the model spends on each text, special tokens included."""
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch_fast(texts)]

    def chunk(self, doc_id: str, title: str, body: str) -> list[Chunk]:
        # A body of headings alone still gets a chunk, so every document can be found.
        sections = split_sections(body, title) or [Section((), 0, body, 0)]
        plans = [self._plan(doc_id, title, section) for section in sections]
        # Tokenize in batches, a document at a time: one call per step instead of one per section.
        whole_counts = self.count_tokens([plan.prefix + plan.section.text.strip() for plan in plans])
        pieces = [self._pieces(plan, whole) for plan, whole in zip(plans, whole_counts, strict=True)]
        flat = [
            (plan, offset, text)
            for plan, section_pieces in zip(plans, pieces, strict=True)
            for offset, text in section_pieces
        ]
        counts = self.count_tokens([plan.prefix + text for plan, _, text in flat])

        chunks: list[Chunk] = []
        positions: dict[str, int] = {}
        for (plan, offset, text), tokens in zip(flat, counts, strict=True):
            if tokens <= self.config.max_tokens:
                fitted = [(offset, text, tokens)]
            else:  # over the model's limit (rare): split this piece finer, counting tokens exactly
                excess = tokens - self.config.max_tokens
                fitted = [
                    (offset + inner, part, n)
                    for inner, part, n in self._split_by_tokens(text, plan.prefix, plan.budget - excess)
                ]
            for start, piece, piece_tokens in fitted:
                position = positions.get(plan.section_id, 0)
                positions[plan.section_id] = position + 1
                embedding_text = plan.prefix + piece
                chunks.append(
                    Chunk(
                        chunk_id=f"{doc_id}:{plan.section_id}:{position:03d}",
                        section_id=plan.section_id,
                        position=position,
                        heading_path=plan.heading_path,
                        text=piece,
                        embedding_text=embedding_text,
                        token_count=piece_tokens,
                        content_hash=content_hash(embedding_text),
                        start=plan.section.start + start,
                        end=plan.section.start + start + len(piece),
                    )
                )
        return chunks

    def _plan(self, doc_id: str, title: str, section: Section) -> _SectionPlan:
        heading_path = HEADING_SEPARATOR.join((title, *section.headings)) if title else section.key
        shared = bool(section.headings) and section.headings[-1].casefold().strip() in self.shared_headings
        prefix, prefix_tokens = self._prefix(section.key if shared else heading_path)
        # The target covers the prefix too, but a long heading path never squeezes the text
        # below half the target; the model's limit is the only hard bound.
        budget = max(self.config.target_tokens - prefix_tokens, self.config.target_tokens // 2)
        budget = min(budget, self.config.max_tokens - prefix_tokens)
        sid = section_id(doc_id, section.headings, section.occurrence)
        return _SectionPlan(section, heading_path, prefix, prefix_tokens, budget, sid)

    def _prefix(self, heading_path: str) -> tuple[str, int]:
        """The heading path as the model sees it, and its tokens; cut short if it would crowd out the text."""
        if not heading_path:
            return "", 0
        limit = int(self.config.max_tokens * MAX_PREFIX_SHARE)
        encoding = self.tokenizer.encode(heading_path + "\n\n", add_special_tokens=False)
        if len(encoding.ids) <= limit:
            return heading_path + "\n\n", len(encoding.ids)
        prefix = heading_path[: encoding.offsets[limit - 2][1]].rstrip() + " …\n\n"
        return prefix, len(self.tokenizer.encode(prefix, add_special_tokens=False).ids)

    def _pieces(self, plan: _SectionPlan, whole_tokens: int) -> list[tuple[int, str]]:
        """The section's text cut into pieces of about the target size, with their offsets.

        semantic-text-splitter sized by the tokenizer re-tokenizes candidate chunks over and
        over (measured ~150x slower than sizing by characters), so the section is split by
        characters at this section's own characters-per-token rate; the caller then counts
        every piece exactly and re-splits by tokens the rare piece over the model's limit.
        """
        text = plan.section.text
        stripped = text.strip()
        if not stripped:
            return []
        if whole_tokens <= plan.prefix_tokens + plan.budget:
            return [(len(text) - len(text.lstrip()), stripped)]
        chars_per_token = len(stripped) / max(1, whole_tokens - plan.prefix_tokens)
        capacity = max(1, int(plan.budget * chars_per_token * CHARACTER_CAPACITY_MARGIN))
        overlap = int(self._overlap(plan.budget) * chars_per_token * CHARACTER_CAPACITY_MARGIN)
        return _character_splitter(capacity, overlap).chunk_indices(text)

    def _split_by_tokens(self, text: str, prefix: str, budget: int) -> Iterator[tuple[int, str, int]]:
        pieces = _token_splitter(self.tokenizer, max(1, budget), self._overlap(budget)).chunk_indices(text)
        counts = self.count_tokens([prefix + piece for _, piece in pieces])
        for (offset, piece), tokens in zip(pieces, counts, strict=True):
            if tokens <= self.config.max_tokens:
                yield offset, piece, tokens
            else:  # tokens do not always add up across the join
                for inner, part, n in self._split_by_tokens(piece, prefix, budget - (tokens - self.config.max_tokens)):
                    yield offset + inner, part, n

    def _overlap(self, budget: int) -> int:
        return min(self.config.overlap_tokens, max(0, budget // 2 - 1))


@cache
def _token_splitter(tokenizer: Tokenizer, capacity: int, overlap: int) -> MarkdownSplitter:
    return MarkdownSplitter.from_huggingface_tokenizer(tokenizer, capacity, overlap=overlap)


@lru_cache(maxsize=4096)
def _character_splitter(capacity: int, overlap: int) -> MarkdownSplitter:
    return MarkdownSplitter(capacity, overlap=overlap)


def _model_and_config(retrieval: RetrievalSettings) -> tuple[ModelFiles, ChunkingConfig]:
    model = resolve_model(retrieval.embedding_model)
    return model, ChunkingConfig(model.max_seq_length, retrieval.chunk_target_tokens, retrieval.chunk_overlap_tokens)


def build_chunker(retrieval: RetrievalSettings) -> Chunker:
    """The chunker for these settings; raises ConfigError naming a bad setting."""
    model, config = _model_and_config(retrieval)
    return Chunker(model.tokenizer(), config, retrieval.shared_section_headings)


def chunking_settings(retrieval: RetrievalSettings) -> dict:
    """The settings row that identifies what a chunker with these settings produces."""
    model, config = _model_and_config(retrieval)
    settings = {
        "embedding_model": retrieval.embedding_model,
        "tokenizer_hash": model.tokenizer_hash,
        "model_max_tokens": config.max_tokens,
        "chunk_target_tokens": config.target_tokens,
        "chunk_overlap_tokens": config.overlap_tokens,
        "shared_section_headings": json.dumps(sorted(retrieval.shared_section_headings)),
        "chunker_version": CHUNKER_VERSION,
    }
    settings["chunking_config_hash"] = hashlib.md5(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return settings


def document_fingerprint(document: dict) -> str:
    """Changes when anything copied onto the document's chunks changes."""
    values = [str(document.get(column)) for column in FINGERPRINT_COLUMNS]
    return hashlib.md5(json.dumps(values).encode("utf-8")).hexdigest()


def chunk_documents(chunker: Chunker, documents: Iterable[dict], config_hash: str) -> Iterator[dict]:
    """Chunk rows (CHUNK_SCHEMA) for documents given as dicts of `documents` mart columns."""
    for document in documents:
        fingerprint = document_fingerprint(document)
        metadata = {name: document.get(name) for name in DOCUMENT_COLUMNS}
        for index, chunk in enumerate(chunker.chunk(document["doc_id"], document["title"], document["body"])):
            yield {
                "chunk_id": chunk.chunk_id,
                "doc_id": document["doc_id"],
                "chunk_index": index,
                "section_id": chunk.section_id,
                "heading_path": chunk.heading_path,
                "text": chunk.text,
                "embedding_text": chunk.embedding_text,
                "token_count": chunk.token_count,
                "content_hash": chunk.content_hash,
                "doc_title": document["title"],
                **metadata,
                "source_updated_at": document.get("updated_at"),
                "document_fingerprint": fingerprint,
                "chunking_config_hash": config_hash,
            }


def chunk_table(
    retrieval: RetrievalSettings,
    documents: list[dict],
    config_hash: str,
    workers: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> pa.Table:
    """The chunk table, as Arrow, for documents given as dicts of `documents` mart columns.

    Large inputs (or any, given `workers`) are chunked by a pool of worker processes, one
    per core, in batches whose order is kept, so the table is the same as a single process
    would make. `progress` is called with the number of documents of each finished batch.
    """
    if workers is None:
        workers = (os.cpu_count() or 1) if len(documents) >= PARALLEL_MIN_DOCUMENTS else 1
    batches = [documents[i : i + DOCUMENTS_PER_TASK] for i in range(0, len(documents), DOCUMENTS_PER_TASK)]
    if workers <= 1 or len(batches) <= 1:
        chunker = build_chunker(retrieval)
        outputs: Iterable[pa.RecordBatch] = (_chunk_batch(batch, config_hash, chunker) for batch in batches)
        results = _with_progress(outputs, batches, progress)
    else:
        # spawn, not fork: dbt runs models in threads, and forking a threaded process is unsafe.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(retrieval,)) as pool:
            outputs = pool.map(_chunk_batch, batches, itertools.repeat(config_hash))
            results = _with_progress(outputs, batches, progress)
    return pa.Table.from_batches(results, schema=CHUNK_SCHEMA) if results else CHUNK_SCHEMA.empty_table()


def _with_progress(
    outputs: Iterable[pa.RecordBatch], batches: list[list[dict]], progress: Callable[[int], object] | None
) -> list[pa.RecordBatch]:
    results = []
    for batch, output in zip(batches, outputs, strict=True):
        results.append(output)
        if progress:
            progress(len(batch))
    return results


# Below this many documents a worker pool costs more to start than it saves.
PARALLEL_MIN_DOCUMENTS = 2_000
DOCUMENTS_PER_TASK = 200
_worker_chunker: Chunker | None = None


def _start_worker(retrieval: RetrievalSettings) -> None:
    global _worker_chunker
    # One process per core already: the tokenizer's own thread pool would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_chunker = build_chunker(retrieval)


def _chunk_batch(documents: list[dict], config_hash: str, chunker: Chunker | None = None) -> pa.RecordBatch:
    rows = list(chunk_documents(chunker or _worker_chunker, documents, config_hash))
    return pa.RecordBatch.from_pylist(rows, schema=CHUNK_SCHEMA)
