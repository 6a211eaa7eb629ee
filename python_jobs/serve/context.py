"""A token-budgeted context for an application's prompt: the best chunks, deduplicated, with citations.

The chunks come from a search, in rank order. A chunk whose text is the same as one already taken
(boilerplate such as a shared legal footer, in many documents) is skipped. Each chunk becomes a
numbered citation block,

    [1] <heading path> (<doc_id>)
    <chunk text>

and blocks are separated by a blank line. Blocks are added whole while they fit in `max_tokens`; the
first one that does not fit is cut at a token boundary to fill what is left (when at least
MIN_PARTIAL_TOKENS are, or any for the first chunk), and the context ends there. Tokens are counted
with one named tokenizer (`vars.serve.tokenizer`, by default the embedding model's, read with the `tokenizers` library:
offline, no model runtime), without special tokens, and the count of the final text is checked
against the budget, so `context_tokens <= max_tokens` holds exactly for that tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from python_jobs.chunk.model_files import load_tokenizer, resolve_model
from python_jobs.common.errors import ConfigError
from python_jobs.search.retriever import Hit

SEPARATOR = "\n\n"
# A cut chunk shorter than this is noise, not context: stop instead.
MIN_PARTIAL_TOKENS = 16


class TokenCounter:
    """Counts and cuts text with one tokenizer, named in every response."""

    def __init__(self, name: str, tokenizer: Tokenizer):
        self.name = name
        self._tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids) if text else 0

    def cut(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` (at a token boundary) that counts at most `max_tokens`."""
        if max_tokens <= 0:
            return ""
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        if len(offsets) <= max_tokens:
            return text
        keep = max_tokens
        while keep > 0:
            prefix = text[: offsets[keep - 1][1]].rstrip()
            if self.count(prefix) <= max_tokens:  # a cut word can re-tokenize into more pieces
                return prefix
            keep -= 1
        return ""


def load_token_counter(setting: str, embedding_model: str) -> TokenCounter:
    """`vars.serve.tokenizer`: empty for the embedding model's tokenizer, a model name or directory, or a
    tokenizer.json file."""
    name = setting.strip() or embedding_model
    path = Path(name).expanduser()
    if path.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises its own exception types
            raise ConfigError(
                f"vars.serve.tokenizer={setting!r}: {path} is not a tokenizer.json file ({exc})"
            ) from None
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return TokenCounter(path.name, tokenizer)
    try:
        model = resolve_model(name)
    except ConfigError as exc:
        raise ConfigError(f"vars.serve.tokenizer={setting!r}: {exc}") from None
    return TokenCounter(model.name, load_tokenizer(model.path))


@dataclass
class Citation:
    n: int
    rank: int
    score: float
    doc_id: str
    chunk_id: str
    doc_title: str
    heading_path: str
    text: str
    tokens: int
    truncated: bool = False


@dataclass
class Context:
    text: str
    tokens: int
    max_tokens: int
    citations: list[Citation] = field(default_factory=list)
    candidates: int = 0
    duplicates_skipped: int = 0


def block(n: int, heading_path: str, doc_id: str, text: str) -> str:
    return f"[{n}] {heading_path} ({doc_id})\n{text}"


def build_context(hits: list[Hit], max_tokens: int, counter: TokenCounter) -> Context:
    citations: list[Citation] = []
    blocks: list[str] = []
    seen_texts: set[str] = set()
    duplicates = 0
    used = 0
    for hit in hits:
        normalized = " ".join(hit.text.split())
        if normalized in seen_texts:
            duplicates += 1
            continue
        seen_texts.add(normalized)
        n = len(blocks) + 1
        separator = counter.count(SEPARATOR) if blocks else 0
        whole = block(n, hit.heading_path, hit.doc_id, hit.text)
        tokens = counter.count(whole)
        room = max_tokens - used - separator
        text, truncated = hit.text, False
        if tokens > room:
            header_tokens = counter.count(block(n, hit.heading_path, hit.doc_id, ""))
            if room - header_tokens < (MIN_PARTIAL_TOKENS if blocks else 1):  # the first may be short
                break
            text, truncated = counter.cut(hit.text, room - header_tokens), True
            whole = block(n, hit.heading_path, hit.doc_id, text)
            tokens = counter.count(whole)
        blocks.append(whole)
        used += separator + tokens
        citations.append(
            Citation(
                n,
                hit.rank,
                hit.score,
                hit.doc_id,
                hit.chunk_id,
                hit.doc_title,
                hit.heading_path,
                text,
                tokens,
                truncated,
            )
        )
        if truncated:
            break
    text = SEPARATOR.join(blocks)
    total = counter.count(text)
    # The sum of the parts is the count of the whole for word-piece tokenizers; for one where joining
    # changes the count (byte-level BPE), drop blocks from the end until the whole fits.
    while total > max_tokens and blocks:
        blocks.pop()
        citations.pop()
        text = SEPARATOR.join(blocks)
        total = counter.count(text)
    return Context(text, total, max_tokens, citations, len(hits), duplicates)
