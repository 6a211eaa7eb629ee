"""Structure-aware, token-bounded, edit-stable chunking of markdown documents.

A document is cut at its heading tree first (markdown_text.split_sections); only then is
each section split, by semantic-text-splitter, into pieces that fit the embedding
model's token budget. Because no chunk crosses a section boundary and chunk ids come
from the section's identity plus the position inside it, an edit in one section
leaves every other section's chunks (text, hash and id) exactly as they were.

What the model sees (`embedding_text`) is the heading path, a blank line, then the
chunk text; the bound on tokens covers that whole string including the model's
special tokens, so nothing is ever truncated by the model. A bound on characters covers
it too: the tokenizer reads a "word" longer than 100 characters as one unknown token, so
tokens alone would let a megabyte of unbroken text through as one chunk.

Personal data is handled per document by `vars.retrieval.pii_policy`: a document whose
action is `redact` has every match (python_jobs/chunk/pii.py) in its chunks' heading paths
and texts replaced by a placeholder before the chunks are counted and hashed.
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
from python_jobs.chunk.pii import Redacted, clip, count_in, find_pii, redact
from python_jobs.chunk.schema import CHUNK_SCHEMA, DOCUMENT_COLUMNS, FINGERPRINT_COLUMNS
from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import PiiAction, PiiRule, RetrievalSettings, pii_action

# Bump when the algorithm changes in a way that moves chunk boundaries.
CHUNKER_VERSION = "1"
HEADING_SEPARATOR = " > "
# Character capacity is aimed a little under the token target, so that few pieces of text
# denser than their section's average overshoot it.
CHARACTER_CAPACITY_MARGIN = 0.9
# A heading path may use at most this share of the token and character budgets; the rest is for text.
MAX_PREFIX_SHARE = 0.5
DEFAULT_MAX_CHARACTERS = RetrievalSettings.model_fields["max_chunk_characters"].default
DEFAULT_PII_POLICY: tuple[PiiRule, ...] = RetrievalSettings.model_fields["pii_policy"].default
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ChunkingConfig:
    """Chunk size settings; `max_tokens` is the model's hard limit, special tokens included, and
    `max_characters` the most characters of a chunk's embedding text."""

    max_tokens: int
    target_tokens: int
    overlap_tokens: int
    max_characters: int = DEFAULT_MAX_CHARACTERS

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
        if self.max_characters < 200:
            raise ConfigError(f"vars.retrieval.max_chunk_characters={self.max_characters} must be 200 or more")


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
    start: int  # character span of `text` in the document body (redacted: where it was cut from)
    end: int
    pii_redactions: int = 0  # matches of personal data replaced in heading_path and text


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
    path_redactions: int = 0  # matches of personal data replaced in heading_path
    max_characters: int = DEFAULT_MAX_CHARACTERS  # of the embedding text

    @property
    def characters(self) -> int:
        """Characters left for the text: the bound on the embedding text, less the prefix."""
        return self.max_characters - len(self.prefix)


class Chunker:
    """Chunks documents for one tokenizer and one configuration."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        config: ChunkingConfig,
        shared_section_headings: Iterable[str] = (),
        pii_policy: tuple[PiiRule, ...] = DEFAULT_PII_POLICY,
    ):
        self.tokenizer = tokenizer
        self.config = config
        self.shared_headings = frozenset(h.casefold().strip() for h in shared_section_headings)
        self.pii_policy = pii_policy

    def pii_action(self, doc_type: str | None, access_level: str | None) -> PiiAction:
        """What `vars.retrieval.pii_policy` does with personal data in a document of this type and level."""
        return pii_action(self.pii_policy, doc_type, access_level)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens the model spends on each text, special tokens included."""
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch_fast(texts)]

    def chunk(self, doc_id: str, title: str, body: str, redact_pii: bool = False) -> list[Chunk]:
        """The document's chunks. With `redact_pii`, each match of personal data in a heading path or a
        text becomes a placeholder ([EMAIL], ...) before the chunk is counted, bounded and hashed; the
        sections, and so the chunk ids, are those of the document as written."""
        # A body of headings alone still gets a chunk, so every document can be found.
        sections = split_sections(body, title) or [Section((), 0, body, 0)]
        plans = [self._plan(doc_id, title, section, redact_pii) for section in sections]
        # Tokenize in batches, a document at a time: one call per step instead of one per section.
        whole_counts = self.count_tokens([plan.prefix + plan.section.text.strip() for plan in plans])
        pieces = [self._pieces(plan, whole) for plan, whole in zip(plans, whole_counts, strict=True)]
        flat = [
            (plan, offset, text)
            for plan, section_pieces in zip(plans, pieces, strict=True)
            for offset, text in section_pieces
        ]
        if redact_pii:
            # Matches are found in the whole body, so one a cut split in two is replaced in both pieces.
            matches = find_pii(body)
            texts = [
                redact(text, clip(matches, plan.section.start + offset, plan.section.start + offset + len(text)))
                for plan, offset, text in flat
            ]
        else:
            texts = [Redacted(text, 0) for _, _, text in flat]
        counts = self.count_tokens([plan.prefix + text.text for (plan, _, _), text in zip(flat, texts, strict=True)])

        chunks: list[Chunk] = []
        positions: dict[str, int] = {}
        for (plan, offset, _), text, tokens in zip(flat, texts, counts, strict=True):
            for inner, piece, piece_tokens in self._fit(plan, text.text, tokens):
                position = positions.get(plan.section_id, 0)
                positions[plan.section_id] = position + 1
                embedding_text = plan.prefix + piece
                start = plan.section.start + offset + inner
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
                        start=start,
                        end=start + len(piece),
                        pii_redactions=plan.path_redactions + count_in(text.placeholders, inner, inner + len(piece)),
                    )
                )
        return chunks

    def _fit(self, plan: _SectionPlan, text: str, tokens: int) -> list[tuple[int, str, int]]:
        """`text` (of `tokens` tokens with the prefix) in pieces within both bounds, as (offset in `text`,
        piece, tokens). Almost always the text as it is; over the model's limit, it is split finer by
        tokens, counted exactly; over the character bound (text the tokenizer reads as few tokens), cut
        by characters, each cut counted and split by tokens in turn if need be."""
        if tokens <= self.config.max_tokens and len(text) <= plan.characters:
            return [(0, text, tokens)]
        if tokens > self.config.max_tokens:
            excess = tokens - self.config.max_tokens
            parts = list(self._split_by_tokens(text, plan.prefix, plan.budget - excess))
        else:
            cuts = _cut_by_characters(text, plan.characters)
            counts = self.count_tokens([plan.prefix + cut for _, cut in cuts])
            parts = [(offset, cut, n) for (offset, cut), n in zip(cuts, counts, strict=True)]
        return [
            (offset + inner, piece, n)
            for offset, part, tokens in parts
            for inner, piece, n in self._fit(plan, part, tokens)
        ]

    def _plan(self, doc_id: str, title: str, section: Section, redact_pii: bool = False) -> _SectionPlan:
        heading_path = HEADING_SEPARATOR.join((title, *section.headings)) if title else section.key
        shared = bool(section.headings) and section.headings[-1].casefold().strip() in self.shared_headings
        seen_path = section.key if shared else heading_path
        path_redactions = 0
        if redact_pii:
            redacted = redact(heading_path)
            heading_path, path_redactions = redacted.text, redacted.count
            seen_path = redact(seen_path).text
        if len(heading_path) > self.config.max_characters:  # a reader's path is bounded like the model's
            heading_path = heading_path[: self.config.max_characters - 2].rstrip() + " …"
        prefix, prefix_tokens = self._prefix(seen_path)
        # The target covers the prefix too, but a long heading path never squeezes the text
        # below half the target; the model's limit is the only hard bound.
        budget = max(self.config.target_tokens - prefix_tokens, self.config.target_tokens // 2)
        budget = min(budget, self.config.max_tokens - prefix_tokens)
        sid = section_id(doc_id, section.headings, section.occurrence)
        return _SectionPlan(
            section, heading_path, prefix, prefix_tokens, budget, sid, path_redactions, self.config.max_characters
        )

    def _prefix(self, heading_path: str) -> tuple[str, int]:
        """The heading path as the model sees it, and its tokens; cut short if it would crowd out the text."""
        if not heading_path:
            return "", 0
        limit = int(self.config.max_tokens * MAX_PREFIX_SHARE)
        character_limit = int(self.config.max_characters * MAX_PREFIX_SHARE)
        path = heading_path if len(heading_path) + 2 <= character_limit else heading_path[: character_limit - 4]
        encoding = self.tokenizer.encode(path + "\n\n", add_special_tokens=False)
        if path == heading_path and len(encoding.ids) <= limit:
            return heading_path + "\n\n", len(encoding.ids)
        if len(encoding.ids) > limit:
            path = path[: encoding.offsets[limit - 2][1]]
        prefix = path.rstrip() + " …\n\n"
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


def _cut_by_characters(text: str, limit: int) -> list[tuple[int, str]]:
    """`text` in pieces of at most `limit` characters, with their offsets: each cut at the last space or
    line break in the second half of its window, or mid-word where there is none (never between a
    character and its combining marks). Whitespace at the cuts is dropped.

    Only text the tokenizer reads as few tokens for its length gets here (a long unbroken string), and
    it may be megabytes: semantic-text-splitter, by characters, takes minutes on such text.
    """
    pieces: list[tuple[int, str]] = []
    position, length = 0, len(text)
    while True:
        while position < length and text[position].isspace():
            position += 1
        if position >= length:
            return pieces
        end = position + limit
        if end >= length:
            cut = length
        else:
            window = text[position:end]
            found = max(window.rfind(separator, limit // 2) for separator in ("\n", " "))
            cut = position + found if found > 0 else end
            while found <= 0 and cut > position + 1 and _joined(text, cut):
                cut -= 1
        pieces.append((position, text[position:cut].rstrip()))
        position = cut


def _joined(text: str, index: int) -> bool:
    """Whether text[index] belongs with the character before it (a combining mark, or a joiner)."""
    return unicodedata.category(text[index]).startswith("M") or "\u200d" in text[index - 1 : index + 1]


def _model_and_config(retrieval: RetrievalSettings) -> tuple[ModelFiles, ChunkingConfig]:
    model = resolve_model(retrieval.embedding_model)
    return model, ChunkingConfig(
        model.max_seq_length,
        retrieval.chunk_target_tokens,
        retrieval.chunk_overlap_tokens,
        retrieval.max_chunk_characters,
    )


def build_chunker(retrieval: RetrievalSettings) -> Chunker:
    """The chunker for these settings; raises ConfigError naming a bad setting."""
    model, config = _model_and_config(retrieval)
    return Chunker(model.tokenizer(), config, retrieval.shared_section_headings, retrieval.pii_policy)


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
        "max_chunk_characters": config.max_characters,
        "pii_policy": json.dumps([rule.model_dump(exclude_none=True) for rule in retrieval.pii_policy]),
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
        action = chunker.pii_action(document.get("doc_type"), document.get("access_level"))
        title = redact(document["title"]).text if action == "redact" else document["title"]
        chunks = chunker.chunk(document["doc_id"], document["title"], document["body"], action == "redact")
        for index, chunk in enumerate(chunks):
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
                "doc_title": title,
                **metadata,
                "source_updated_at": document.get("updated_at"),
                "document_fingerprint": fingerprint,
                "chunking_config_hash": config_hash,
                "pii_action": action,
                "pii_redactions": chunk.pii_redactions,
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
