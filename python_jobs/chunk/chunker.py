"""Structure-aware, token-bounded, edit-stable chunking of markdown documents.

A document is cut at its heading tree first (markdown.split_sections); only then is each
section cut into pieces that fit the embedding model's token budget, at gaps chosen from
the text around each one (layout.py), so an edit inside a section changes the chunks that
hold it and at most one neighbour on each side. No chunk crosses a section boundary, and a
chunk's id is its section's identity plus a hash of its text (an occurrence number for a
text repeated in the section), not its position: chunks after an insertion keep their ids,
and an edit in one section leaves every other section's chunks exactly as they were.

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
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property

import pyarrow as pa
from tokenizers import Tokenizer

from python_jobs.chunk.boilerplate import section_text_hash
from python_jobs.chunk.layout import Bounds, Piece, TokenCounter, layout, spacing_for
from python_jobs.chunk.markdown import Section, split_sections
from python_jobs.chunk.model_files import ModelFiles, resolve_model
from python_jobs.chunk.pii import clip, count_in, find_pii, redact
from python_jobs.chunk.schema import CHUNK_SCHEMA, DOCUMENT_COLUMNS, FINGERPRINT_COLUMNS
from python_jobs.common.errors import ConfigError, PipelineError
from python_jobs.common.settings import PiiAction, PiiRule, RetrievalSettings, pii_action

# Bump when the algorithm changes in a way that moves chunk boundaries or changes chunk ids.
CHUNKER_VERSION = "2"
HEADING_SEPARATOR = " > "
# Hex digits of the hash of a chunk's text in its id.
ID_DIGEST_LENGTH = 12
# Counted sums this close to the model's limit are checked by encoding the text.
EXACT_COUNT_MARGIN = 4
# A heading path may use at most this share of the token and character budgets; the rest is for text.
MAX_PREFIX_SHARE = 0.5
DEFAULT_MAX_CHARACTERS = RetrievalSettings.model_fields["max_chunk_characters"].default
DEFAULT_PII_POLICY: tuple[PiiRule, ...] = RetrievalSettings.model_fields["pii_policy"].default


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
    start: int  # character span of `text` in the document body (redacted: of the text it was made from)
    end: int
    pii_redactions: int = 0  # matches of personal data replaced in heading_path and text
    forced_cut: bool = False  # it starts where the size bound forced a cut, not where the content chose one


def content_hash(embedding_text: str) -> str:
    """Hash of the text the model sees, blind to unicode form and whitespace runs."""
    text = embedding_text if embedding_text.isascii() else unicodedata.normalize("NFC", embedding_text)
    normalized = " ".join(text.split())
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
        boilerplate: Iterable[str] = (),
    ):
        self.tokenizer = tokenizer
        self.config = config
        self.shared_headings = frozenset(h.casefold().strip() for h in shared_section_headings)
        self.pii_policy = pii_policy
        # Text hashes (python_jobs.chunk.boilerplate.section_text_hash) of sections found in many documents.
        self.boilerplate = frozenset(boilerplate)

    def pii_action(self, doc_type: str | None, access_level: str | None) -> PiiAction:
        """What `vars.retrieval.pii_policy` does with personal data in a document of this type and level."""
        return pii_action(self.pii_policy, doc_type, access_level)

    @cached_property
    def counter(self) -> TokenCounter:
        """Counts tokens as the model's tokenizer does, each distinct word tokenized once (layout.py)."""
        return TokenCounter(self.tokenizer)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens the model spends on each text, special tokens included, by encoding it."""
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch_fast(texts)]

    def chunk(self, doc_id: str, title: str, body: str, redact_pii: bool = False) -> list[Chunk]:
        """The document's chunks. With `redact_pii`, each match of personal data in a heading path or a
        text becomes a placeholder ([EMAIL], ...) before the chunk is counted, bounded and hashed; the
        sections and the cuts, and so the chunk ids, are those of the document as written."""
        # A body of headings alone still gets a chunk, so every document can be found.
        sections = split_sections(body, title) or [Section((), 0, body, 0)]
        # Matches are found in the whole body, so one a cut splits in two is replaced on both sides.
        matches = find_pii(body) if redact_pii else None
        chunks: list[Chunk] = []
        for section in sections:
            chunks.extend(self._section_chunks(doc_id, self._plan(doc_id, title, section, redact_pii), matches))
        return chunks

    def _section_chunks(self, doc_id: str, plan: _SectionPlan, matches: list | None) -> list[Chunk]:
        """One section's chunks: cut where its content says (layout.py), each verified within both bounds."""
        text, bounds = plan.section.text, self._bounds(plan)
        chunks: list[Chunk] = []
        occurrences: dict[str, int] = {}
        # Counted sums are exact for the tokenizers the counter adds up; near the limit, they are checked.
        trusted = self.counter.special_tokens + plan.prefix_tokens if self.counter.additive else None
        for piece in layout(text, bounds, self.counter):
            written = text[piece.start : piece.end]
            placeholders: tuple[tuple[int, int], ...] = ()
            if matches is not None:
                offset = plan.section.start + piece.start
                redacted = redact(written, clip(matches, offset, offset + len(written)))
                parts = self._within_bounds(plan, bounds, redacted.text, self.counter.count(redacted.text))
                placeholders = redacted.placeholders
            elif trusted is not None and trusted + piece.tokens <= self.config.max_tokens - EXACT_COUNT_MARGIN:
                parts = [(0, written, trusted + piece.tokens)]  # within both bounds by construction
            else:
                parts = self._within_bounds(plan, bounds, written, piece.tokens)
            for inner, part, tokens in parts:
                # The id is the section's and the text's as written, so it survives edits elsewhere (and a
                # redacted chunk has the id it has unredacted).
                if matches is None:
                    key = written[inner : inner + len(part)]
                else:
                    key = written if len(parts) == 1 else f"{written}\x1f{inner}"
                digest = hashlib.md5(key.encode("utf-8", "surrogatepass")).hexdigest()[:ID_DIGEST_LENGTH]
                seen = occurrences.get(digest, 0)
                occurrences[digest] = seen + 1
                embedding_text = plan.prefix + part
                start = plan.section.start + piece.start + min(inner, len(written))
                # A redacted piece spans the text it was redacted from; a part of one, about where it was.
                end = plan.section.start + piece.end if len(parts) == 1 else start + len(part)
                redactions = count_in(placeholders, inner, inner + len(part)) if placeholders else 0
                chunks.append(
                    Chunk(
                        chunk_id=f"{doc_id}:{plan.section_id}:{digest}" + (f".{seen}" if seen else ""),
                        section_id=plan.section_id,
                        position=len(chunks),
                        heading_path=plan.heading_path,
                        text=part,
                        embedding_text=embedding_text,
                        token_count=tokens,
                        content_hash=content_hash(embedding_text),
                        start=start,
                        end=end,
                        pii_redactions=plan.path_redactions + redactions,
                        forced_cut=piece.forced or inner > 0,
                    )
                )
        return chunks

    def _bounds(self, plan: _SectionPlan) -> Bounds:
        """The section's limits for its text alone: the model's limit less special tokens and prefix, the
        character bound less the prefix, the boundary spacing from the target, and the overlap."""
        specials = self.counter.special_tokens
        limit = self.config.max_tokens - specials - plan.prefix_tokens
        target = max(1, plan.budget - specials)
        overlap = min(self.config.overlap_tokens, max(0, target // 2 - 1))
        return Bounds(limit, plan.characters, spacing_for(target, limit), overlap)

    def _within_bounds(self, plan: _SectionPlan, bounds: Bounds, text: str, tokens: int) -> list[tuple[int, str, int]]:
        """`text` (`tokens` without special tokens and prefix, as counted) as (offset, part, exact tokens with
        both) parts within the model's limit and the character bound. Counted sums are exact for the
        tokenizers the counter adds up; near the limit, or for any other tokenizer, the count is made by
        encoding. Over a bound (a redacted text grew, another tokenizer's words did not add up), the text
        is cut again with bounds tightened by the excess."""
        limit = self.config.max_tokens
        total = self.counter.special_tokens + plan.prefix_tokens + tokens
        if not self.counter.additive or total > limit - EXACT_COUNT_MARGIN:
            total = len(self.tokenizer.encode(plan.prefix + text).ids)
        if total <= limit and len(text) <= bounds.characters:
            return [(0, text, total)]
        tighter, pieces = bounds, [Piece(0, len(text), tokens)]
        while len(pieces) == 1:  # tighten by the excess until the text comes apart (once, as a rule)
            if tighter.tokens <= 1:
                raise PipelineError(f"cannot cut {text[:60]!r} into pieces of at most {limit} tokens")
            excess = max(1, total - limit)
            tighter = replace(tighter, tokens=max(1, min(tighter.tokens, pieces[0].tokens) - excess), overlap=0)
            pieces = layout(text, tighter, self.counter)
        return [
            (piece.start + inner, part, n)
            for piece in pieces
            for inner, part, n in self._within_bounds(plan, tighter, text[piece.start : piece.end], piece.tokens)
        ]

    def _plan(self, doc_id: str, title: str, section: Section, redact_pii: bool = False) -> _SectionPlan:
        heading_path = HEADING_SEPARATOR.join((title, *section.headings)) if title else section.key
        # Boilerplate (a heading in shared_section_headings, or a text found in many documents) is embedded
        # under its own headings only: the same text in every document is then one text, embedded once.
        shared = bool(section.headings) and (
            section.headings[-1].casefold().strip() in self.shared_headings
            or (bool(self.boilerplate) and section_text_hash(section.text) in self.boilerplate)
        )
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
        if path == heading_path and (tokens := self.counter.count(path + "\n\n")) <= limit:
            return heading_path + "\n\n", tokens  # as a rule: counted from cached words, not encoded
        encoding = self.tokenizer.encode(path + "\n\n", add_special_tokens=False)
        if path == heading_path and len(encoding.ids) <= limit:
            return heading_path + "\n\n", len(encoding.ids)
        if len(encoding.ids) > limit:
            path = path[: encoding.offsets[limit - 2][1]]
        prefix = path.rstrip() + " …\n\n"
        return prefix, len(self.tokenizer.encode(prefix, add_special_tokens=False).ids)


def _model_and_config(retrieval: RetrievalSettings) -> tuple[ModelFiles, ChunkingConfig]:
    model = resolve_model(retrieval.embedding_model)
    return model, ChunkingConfig(
        model.max_seq_length,
        retrieval.chunk_target_tokens,
        retrieval.chunk_overlap_tokens,
        retrieval.max_chunk_characters,
    )


def build_chunker(retrieval: RetrievalSettings, boilerplate: Iterable[str] = ()) -> Chunker:
    """The chunker for these settings and these boilerplate text hashes (the `boilerplate_sections` model);
    raises ConfigError naming a bad setting."""
    model, config = _model_and_config(retrieval)
    return Chunker(model.tokenizer(), config, retrieval.shared_section_headings, retrieval.pii_policy, boilerplate)


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
    # Not in the hash: a change re-chunks only the documents whose boilerplate sections it changes (their
    # fingerprints say so), not every document.
    settings["boilerplate_min_docs"] = retrieval.boilerplate_min_docs
    return settings


def document_fingerprint(document: dict) -> str:
    """Changes when anything copied onto the document's chunks changes, or the set of its sections that are
    boilerplate (`boilerplate_sections`: text hashes, python_jobs/chunk/boilerplate.py) does."""
    values: list = [str(document.get(column)) for column in FINGERPRINT_COLUMNS]
    if boilerplate := document.get("boilerplate_sections"):
        values.append(sorted(boilerplate))
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
                "first_chunk": index == 0,
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
    boilerplate: Iterable[str] = (),
) -> pa.Table:
    """The chunk table, as Arrow, for documents given as dicts of `documents` mart columns (and their
    `boilerplate_sections`), with the corpus's `boilerplate` text hashes.

    Large inputs (or any, given `workers`) are chunked by a pool of worker processes, one
    per core, in batches whose order is kept, so the table is the same as a single process
    would make. `progress` is called with the number of documents of each finished batch.
    """
    if workers is None:
        workers = (os.cpu_count() or 1) if len(documents) >= PARALLEL_MIN_DOCUMENTS else 1
    batches = [documents[i : i + DOCUMENTS_PER_TASK] for i in range(0, len(documents), DOCUMENTS_PER_TASK)]
    if workers <= 1 or len(batches) <= 1:
        chunker = build_chunker(retrieval, boilerplate)
        outputs: Iterable[pa.RecordBatch] = (_chunk_batch(batch, config_hash, chunker) for batch in batches)
        results = _with_progress(outputs, batches, progress)
    else:
        # spawn, not fork: dbt runs models in threads, and forking a threaded process is unsafe.
        context = multiprocessing.get_context("spawn")
        start = {"initializer": _start_worker, "initargs": (retrieval, frozenset(boilerplate))}
        with ProcessPoolExecutor(workers, mp_context=context, **start) as pool:
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


def _start_worker(retrieval: RetrievalSettings, boilerplate: frozenset[str] = frozenset()) -> None:
    global _worker_chunker
    # One process per core already: the tokenizer's own thread pool would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_chunker = build_chunker(retrieval, boilerplate)


def _chunk_batch(documents: list[dict], config_hash: str, chunker: Chunker | None = None) -> pa.RecordBatch:
    rows = list(chunk_documents(chunker or _worker_chunker, documents, config_hash))
    return pa.RecordBatch.from_pylist(rows, schema=CHUNK_SCHEMA)
