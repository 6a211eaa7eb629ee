"""Edit locality and the chunker's bounds on arbitrary sections and arbitrary edits (hypothesis).

The locality promise (python_jobs/chunk/layout.py): an insertion, deletion or replacement inside a
section changes the chunks that hold the changed text (or touch it: only whitespace between) and at
most one neighbour on each side; every chunk before and after keeps its text, its place and its id.
Where the size bound forced a cut near the edit, the promise holds for the stretches between the
content-chosen boundaries instead of single chunks.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from python_jobs.chunk.chunker import Chunk, Chunker, ChunkingConfig, build_chunker
from python_jobs.chunk.markdown import split_sections
from python_jobs.chunk.model_files import resolve_model
from python_jobs.common.settings import RetrievalSettings

MODEL = resolve_model("all-MiniLM-L6-v2")
TOKENIZER = MODEL.tokenizer()
DEFAULT = build_chunker(RetrievalSettings())  # target 192, overlap 24, limit 256
SMALL = Chunker(TOKENIZER, ChunkingConfig(MODEL.max_seq_length, target_tokens=64, overlap_tokens=8))
NO_OVERLAP = Chunker(TOKENIZER, ChunkingConfig(MODEL.max_seq_length, target_tokens=128, overlap_tokens=0))
CHUNKERS = st.sampled_from([DEFAULT, SMALL, NO_OVERLAP])
TITLE = "Aurea Barista Pro: Owner's Manual"
QUICK = [HealthCheck.too_slow, HealthCheck.data_too_large]


def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=QUICK)


# ---------------------------------------------------------------- sections

WORDS = st.sampled_from(
    [
        *("the", "kettle", "boils", "water", "quickly", "descale", "monthly", "with", "citric", "acid"),
        *("warranty", "covers", "two", "years", "café", "crème", "brûlée", "naïve", "Grüße", "straße"),
        *("кофеварка", "قهوة", "x²", "½", "120V", "1,650W", "KIT-ESP-120", "東京", "🙂", "☕️", "👩🏽\u200d🍳"),
        "e\u0301",  # a combining accent
        *("https://brightwater.example/help", "jane.doe@example.com", "(555) 123-4567"),
        "a\x1fb",  # a control character the tokenizer deletes, joining the letters around it
    ]
)
sentence = st.tuples(st.lists(WORDS, min_size=1, max_size=20), st.sampled_from(".!?")).map(
    lambda s: " ".join(s[0]).capitalize() + s[1]
)
paragraph = st.lists(sentence, min_size=1, max_size=6).map(" ".join)
# Long blocks repeat a few drawn sentences (cheap to generate): they make sections of many chunks.
long_paragraph = st.tuples(st.lists(sentence, min_size=3, max_size=6), st.integers(3, 12)).map(
    lambda s: " ".join(s[0][n % len(s[0])] + ("" if n % 5 else f" {n}.") for n in range(len(s[0]) * s[1]))
)
bullets = st.lists(sentence, min_size=1, max_size=8).map(lambda items: "\n".join(f"- {i}" for i in items))
numbered = st.lists(sentence, min_size=1, max_size=8).map(
    lambda items: "\n".join(f"{n}. {i}" for n, i in enumerate(items, 1))
)
code = st.lists(st.lists(WORDS, min_size=1, max_size=8).map(" ".join), min_size=1, max_size=20).map(
    lambda lines: "```python\n" + "\n".join(f"    {line}" for line in lines) + "\n```"
)
table = st.lists(st.tuples(WORDS, WORDS, WORDS), min_size=1, max_size=20).map(
    lambda rows: "| a | b | c |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
)
CJK = ("東京の天気は晴れです", "咖啡机需要清洗", "エスプレッソを淹れる")
cjk = st.integers(1, 40).map(lambda n: "。".join(CJK[i % 3] for i in range(n)) + "。")  # no spaces at all
unbroken = st.integers(min_value=150, max_value=3_000).map(lambda n: "ab1" * n)
block = st.one_of(paragraph, paragraph, long_paragraph, long_paragraph, bullets, numbered, code, table, cjk, unbroken)
section = st.lists(block, min_size=1, max_size=8).map("\n\n".join)


@st.composite
def edits(draw, text: str) -> tuple[int, int, str]:
    """(start, end, inserted): text[start:end] becomes `inserted`, at any point (mid-word too)."""
    start = draw(st.integers(0, len(text)))
    kind = draw(st.sampled_from(["insert", "delete", "replace"]))
    end = start if kind == "insert" else min(len(text), start + draw(st.integers(1, 400)))
    new_text = st.one_of(paragraph.map(lambda p: f"\n\n{p}\n\n"), block, sentence, WORDS)
    inserted = "" if kind == "delete" else draw(new_text)
    return start, end, inserted


def chunks_of(chunker: Chunker, body: str, redact: bool) -> list[Chunk]:
    return chunker.chunk("doc-1", TITLE, body, redact_pii=redact)


def one_section(body: str) -> bool:
    """Whether the body is one section (an edit can make a heading, e.g. a line of dashes under text)."""
    return len(split_sections(body, TITLE)) <= 1


# ---------------------------------------------------------------- the locality check


def widen(text: str, start: int, end: int) -> tuple[int, int]:
    """The edit with the whitespace around it: a chunk that ends or starts there touches the edit."""
    while start > 0 and text[start - 1].isspace():
        start -= 1
    while end < len(text) and text[end].isspace():
        end += 1
    return start, end


def keys(chunks: list[Chunk], repeated: set[str], shift: int = 0) -> list[tuple]:
    """What must survive of a chunk: its text, its place, and its id (unless its text is `repeated`, in
    the section before or after the edit: its id then carries an occurrence number, which an identical
    text made or removed earlier can change)."""
    return [(c.text, c.start + shift, None if c.text in repeated else c.chunk_id) for c in chunks]


def lost(before: list[Chunk], after: list[Chunk], span: tuple[int, int], shift: int, groups) -> list[Chunk]:
    """Chunks of `before` outside `span` (its edit, widened) that `after` lacks, beyond one group (a
    chunk, or a stretch of chunks between content-chosen cuts) on each side of the edit. `shift` moves
    offsets past the edit from `before` to `after`."""
    start, end = span
    counts = Counter(c.text for c in before) | Counter(c.text for c in after)
    repeated = {text for text, n in counts.items() if n > 1}
    kept_before = set(keys([c for c in after if c.end < start], repeated))
    kept_after = set(keys([c for c in after if c.start > end + shift], repeated))
    left = [g for g in groups(before) if g[-1].end < start]
    right = [g for g in groups(before) if g[0].start > end]
    missing = [c for g in left[:-1] for c, k in zip(g, keys(g, repeated), strict=True) if k not in kept_before]
    missing += [c for g in right[1:] for c, k in zip(g, keys(g, repeated, shift), strict=True) if k not in kept_after]
    return missing


def singles(chunks: list[Chunk]) -> list[list[Chunk]]:
    return [[c] for c in chunks]


def stretches(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Runs of chunks from one content-chosen cut to the next (forced cuts inside)."""
    runs: list[list[Chunk]] = []
    for chunk in chunks:
        if chunk.forced_cut and runs:
            runs[-1].append(chunk)
        else:
            runs.append([chunk])
    return runs


@examples(100)
@given(CHUNKERS, section, st.data(), st.booleans())
def test_an_edit_changes_its_chunks_and_at_most_one_neighbour_on_each_side(chunker, text, data, redact):
    start, end, inserted = data.draw(edits(text), label="edit")
    edited = text[:start] + inserted + text[end:]
    if not (one_section(text) and one_section(edited)):
        event("the edit made a heading: not one section")
        return
    before, after = chunks_of(chunker, text, redact), chunks_of(chunker, edited, redact)
    shift = len(inserted) - (end - start)
    old_span, new_span = widen(text, start, end), widen(edited, start, start + len(inserted))
    forced = any(c.forced_cut for c in before + after)
    event(f"forced cuts in the section: {forced}")
    event(f"chunks: {'1' if len(before) < 2 else '2-5' if len(before) < 6 else '6-19' if len(before) < 20 else '20+'}")
    # Stretch by stretch, always; chunk by chunk where no cut was forced by the size bound.
    for groups in (stretches,) if forced else (stretches, singles):
        assert not lost(before, after, old_span, shift, groups), f"old chunks lost ({groups.__name__})"
        assert not lost(after, before, new_span, -shift, groups), f"new chunks made ({groups.__name__})"


# ---------------------------------------------------------------- bounds, coverage, determinism


@examples(40)
@given(CHUNKERS, section, st.booleans())
def test_every_chunk_is_within_the_model_limit_counted_exactly_and_nothing_is_lost(chunker, text, redact):
    chunks = chunks_of(chunker, text, redact)
    for chunk in chunks:
        assert chunk.token_count == len(TOKENIZER.encode(chunk.embedding_text).ids) <= MODEL.max_seq_length
        assert len(chunk.embedding_text) <= chunker.config.max_characters
        assert chunk.embedding_text.endswith(chunk.text)
        if not redact:
            assert text[chunk.start : chunk.end] == chunk.text
    covered = {i for c in chunks for i in range(c.start, c.end)}
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace()), "text lost between chunks"
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    assert len({c.chunk_id for c in chunks}) == len(chunks)


@examples(20)
@given(section, st.booleans())
def test_chunks_are_the_same_every_time(text, redact):
    assert chunks_of(DEFAULT, text, redact) == chunks_of(DEFAULT, text, redact)


@examples(25)
@given(section)
def test_redaction_keeps_the_cuts_and_the_ids_of_the_text_as_written(text):
    written, redacted = chunks_of(DEFAULT, text, False), chunks_of(DEFAULT, text, True)
    if any(c.forced_cut for c in redacted) and len(redacted) != len(written):
        return  # a redacted text grew past the bound and was cut again: its own pieces, its own ids
    assert [(c.chunk_id, c.start) for c in redacted] == [(c.chunk_id, c.start) for c in written]
    assert not any("jane.doe@example.com" in c.text for c in redacted)
