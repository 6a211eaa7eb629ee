"""The chunker's promises, checked with the default model's real tokenizer on generated text."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from python_jobs.chunk import markdown
from python_jobs.chunk.chunker import Chunker, ChunkingConfig, build_chunker, chunk_table, chunking_settings
from python_jobs.chunk.layout import TokenCounter
from python_jobs.chunk.markdown import normalize_markdown, split_sections
from python_jobs.chunk.model_files import resolve_model
from python_jobs.common.errors import ConfigError
from python_jobs.common.settings import PROJECT_DIR, RetrievalSettings

MODEL = resolve_model("all-MiniLM-L6-v2")
TOKENIZER = MODEL.tokenizer()
SMALL = Chunker(TOKENIZER, ChunkingConfig(max_tokens=MODEL.max_seq_length, target_tokens=64, overlap_tokens=8))
DEFAULT = build_chunker(RetrievalSettings())
MANUAL = PROJECT_DIR / "data/raw/docs/manual/man-aurea-barista-pro.md"
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- text generators

WORDS = st.sampled_from(
    [
        "the",
        "kettle",
        "boils",
        "water",
        "quickly",
        "descale",
        "monthly",
        "with",
        "citric",
        "acid",
        "warranty",
        "covers",
        "two",
        "years",
        "café",
        "crème",
        "brûlée",
        "naïve",
        "Grüße",
        "straße",
        "東京",
        "エスプレッソ",
        "咖啡机",
        "кофеварка",
        "قهوة",
        "🙂",
        "☕️",
        "🇺🇸",
        "👩🏽\u200d🍳",
        "x²",
        "½",
        "120V",
        "1,650W",
        "KIT-ESP-120",
        "https://brightwater.example/help",
    ]
)
sentence = st.lists(WORDS, min_size=1, max_size=25).map(lambda w: " ".join(w).capitalize() + ".")
paragraph = st.lists(sentence, min_size=1, max_size=8).map(" ".join)
# 120-300 sentences, numbered so no two are alike; drawn as a few sentences repeated (cheap to generate).
giant_paragraph = st.tuples(st.lists(sentence, min_size=4, max_size=10), st.integers(120, 300)).map(
    lambda s: " ".join(f"{s[0][n % len(s[0])][:-1]} {n}." for n in range(s[1]))
)
unbroken_run = st.integers(min_value=300, max_value=2_000).map(lambda n: "ab1" * n)  # no spaces at all
code_block = st.lists(paragraph, min_size=1, max_size=30).map(lambda lines: "```python\n" + "\n".join(lines) + "\n```")
table = st.lists(st.tuples(WORDS, WORDS, WORDS), min_size=1, max_size=80).map(
    lambda rows: "| a | b | c |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
)
bullet_list = st.lists(sentence, min_size=1, max_size=12).map(lambda items: "\n".join(f"- {i}" for i in items))
block = st.one_of(paragraph, paragraph, bullet_list, code_block, table, giant_paragraph, unbroken_run)
heading_text = st.lists(WORDS, min_size=1, max_size=6).map(" ".join)


@st.composite
def documents(draw, min_sections: int = 1, max_sections: int = 6) -> tuple[str, list[tuple[int, str, str]]]:
    """A markdown body: a preamble, then sections (level, heading, content)."""
    sections = [  # numbered headings: each section is identifiable in the output
        (
            draw(st.integers(2, 4)),
            f"{draw(heading_text)} {n}",
            "\n\n".join(draw(st.lists(block, min_size=1, max_size=3))),
        )
        for n in range(draw(st.integers(min_sections, max_sections)))
    ]
    preamble = draw(paragraph)
    return preamble, sections


def render(preamble: str, sections: list[tuple[int, str, str]]) -> str:
    parts = [preamble] + [f"{'#' * level} {heading}\n\n{content}" for level, heading, content in sections]
    return normalize_markdown("\n\n".join(parts))


def heading_lines(body: str) -> set[int]:
    """Character offsets covered by heading lines (they live in heading_path, not in text)."""
    covered: set[int] = set()
    for match in re.finditer(r"^#{1,6} .*$", body, flags=re.MULTILINE):
        covered.update(range(match.start(), match.end()))
    return covered


# ---------------------------------------------------------------- properties


@PROPERTY
@given(documents())
def test_chunks_cover_the_whole_body_in_order(doc):
    body = render(*doc)
    chunks = SMALL.chunk("doc-1", "A title", body)

    covered = heading_lines(body)
    previous_start = -1
    for chunk in chunks:
        assert body[chunk.start : chunk.end] == chunk.text  # text is a verbatim span of the body
        assert chunk.start >= previous_start  # in document order
        previous_start = chunk.start
        covered.update(range(chunk.start, chunk.end))
    lost = [i for i, ch in enumerate(body) if not ch.isspace() and i not in covered]
    assert not lost, f"text lost between chunks: {body[lost[0] : lost[0] + 40]!r}"


@PROPERTY
@given(documents(), st.sampled_from([(64, 8), (192, 24), (256, 0)]))
def test_no_chunk_exceeds_the_model_limit_including_prefix_and_special_tokens(doc, size):
    chunker = Chunker(TOKENIZER, ChunkingConfig(MODEL.max_seq_length, *size))
    for chunk in chunker.chunk("doc-1", "Aurea Barista Pro: Owner's Manual", render(*doc)):
        actual = len(TOKENIZER.encode(chunk.embedding_text).ids)  # special tokens included
        assert chunk.token_count == actual
        assert actual <= MODEL.max_seq_length
        assert chunk.embedding_text.endswith(chunk.text)


@PROPERTY
@given(giant_paragraph)
def test_a_giant_paragraph_is_split_never_truncated(text):
    chunks = DEFAULT.chunk("doc-1", "Title", text)
    room = MODEL.max_seq_length - len(TOKENIZER.encode("Title\n\n").ids)  # special tokens and the prefix off
    assert len(chunks) >= -(-len(TOKENIZER.encode(text).ids) // room)  # as many pieces as it takes, at least
    assert all(c.token_count <= MODEL.max_seq_length for c in chunks)
    assert chunks[-1].end == len(text)  # the tail made it into a chunk


@PROPERTY
@given(documents(min_sections=3), st.data())
def test_an_edit_inside_one_section_changes_no_chunk_outside_it(doc, data):
    preamble, sections = doc
    k = data.draw(st.integers(0, len(sections) - 1), label="edited section")
    level, heading, content = sections[k]
    edited = [*sections]
    edited[k] = (level, heading, content + "\n\n" + data.draw(paragraph, label="added paragraph"))

    before = DEFAULT.chunk("doc-1", "Title", render(preamble, sections))
    after = DEFAULT.chunk("doc-1", "Title", render(preamble, edited))

    def outside(chunks):
        return [(c.chunk_id, c.content_hash, c.text) for c in chunks if not c.heading_path.endswith(f" > {heading}")]

    assert outside(before) == outside(after)
    assert len(outside(after)) < len(after)  # the edited section is really there


@PROPERTY
@given(documents(min_sections=2), paragraph)
def test_a_paragraph_inserted_at_the_top_leaves_later_sections_alone(doc, inserted):
    preamble, sections = doc
    before = DEFAULT.chunk("doc-1", "Title", render(preamble, sections))
    after = DEFAULT.chunk("doc-1", "Title", render(inserted + "\n\n" + preamble, sections))

    def later(chunks):
        return [(c.chunk_id, c.content_hash, c.text) for c in chunks if c.heading_path != "Title"]

    assert later(before) == later(after)


@PROPERTY
@given(documents())
def test_chunking_is_deterministic(doc):
    body = render(*doc)
    assert DEFAULT.chunk("doc-1", "Title", body) == DEFAULT.chunk("doc-1", "Title", body)


def test_ids_come_from_the_text_so_chunks_after_an_insertion_keep_theirs():
    body = normalize_markdown(
        (PROJECT_DIR / "data/raw/docs/manual/man-aurea-barista-pro.md").read_text().split("---\n", 2)[2]
    )
    before = DEFAULT.chunk("man-1", "Aurea Barista Pro", body)
    section = max(split_sections(body, "Aurea Barista Pro"), key=lambda s: len(s.text))  # the longest section
    top = section.start + len(section.text) - len(section.text.lstrip())
    inserted = "A new first paragraph: descale the machine every month with citric acid, then rinse it twice."
    after = DEFAULT.chunk("man-1", "Aurea Barista Pro", body[:top] + inserted + "\n\n" + body[top:])

    old_ids = [c.chunk_id for c in before]
    new = [c for c in after if c.chunk_id not in old_ids]
    assert len([c for c in before if c.start >= top]) > 3  # there are later chunks to keep
    assert new and new[0].text.startswith(inserted) and len(new) <= 2  # its chunk, and one neighbour at most
    assert len(after) - len(new) >= len(before) - 2
    assert all(c.chunk_id.startswith(f"man-1:{c.section_id}:") for c in after)


def test_overlap_carries_context_inside_a_paragraph_but_not_across_a_paragraph_break():
    sentences = [
        f"Step {n} of the descaling cycle runs the pump for {n * 7} seconds at low pressure." for n in range(40)
    ]
    one_paragraph = " ".join(sentences)
    paragraphs = "\n\n".join(" ".join(sentences[n : n + 4]) for n in range(0, 40, 4))

    inside = SMALL.chunk("d", "T", one_paragraph)
    assert len(inside) > 3
    assert all(before.text[-20:] in after.text for before, after in itertools.pairwise(inside))  # overlapped

    across = SMALL.chunk("d", "T", paragraphs)
    starts = [c for c in across[1:] if paragraphs[: c.start].endswith("\n\n")]
    assert starts  # some chunks start a paragraph: they begin with it, nothing carried over
    assert all(c.text.startswith("Step ") and paragraphs[c.start - 2 : c.start] == "\n\n" for c in starts)

    # so a paragraph inserted before such a chunk changes no other chunk than its own
    cut = starts[0].start
    edited = paragraphs[:cut] + "A new paragraph: rinse the tank twice before the first cycle.\n\n" + paragraphs[cut:]
    old_texts = {c.text for c in across}
    changed = [c.text for c in SMALL.chunk("d", "T", edited) if c.text not in old_texts]
    assert len(changed) == 1 and "A new paragraph" in changed[0]


def test_chunk_ids_and_hashes_are_the_same_in_another_process():
    """Nothing may depend on process state such as Python's per-process hash seed."""
    body = (PROJECT_DIR / "data/raw/docs/manual/man-aurea-barista-pro.md").read_text().split("---\n", 2)[2]
    script = """if True:
        import sys
        from python_jobs.chunk.chunker import build_chunker
        from python_jobs.common.settings import RetrievalSettings
        from python_jobs.chunk.markdown import normalize_markdown
        chunker = build_chunker(RetrievalSettings())
        for chunk in chunker.chunk("d", "T", normalize_markdown(sys.stdin.read())):
            print(chunk.chunk_id, chunk.content_hash)
    """
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], input=body, capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin"}, cwd=PROJECT_DIR,
        ).stdout
        for seed in ("1", "2")
    ]  # fmt: skip
    local = "\n".join(f"{x.chunk_id} {x.content_hash}" for x in DEFAULT.chunk("d", "T", normalize_markdown(body)))
    assert runs[0] == runs[1] == local + "\n"
    assert len(runs[0].splitlines()) > 20


# ---------------------------------------------------------------- structure


def test_sections_follow_the_heading_tree_and_ignore_hashes_in_code():
    body = normalize_markdown(
        "# Kettle Manual\n\nIntro.\n\n## Setup\n\nFill it.\n\n### Filling\n\nUse the gauge.\n\n"
        "```bash\n# not a heading\n```\n\n## Care\n\nDescale.\n\nSetext heading\n--------------\n\nMore."
    )
    sections = split_sections(body, "Kettle Manual")
    assert [s.headings for s in sections] == [
        (),
        ("Setup",),
        ("Setup", "Filling"),
        ("Care",),
        ("Setext heading",),
    ]
    assert "# not a heading" in sections[2].text


PLAIN_LINES = (  # lines that leave the body plain (no parser), with lists and quotes that cannot hide headings
    *("", "   ", "Plain text line.", "Aurea Barista Pro", "# Aurea Barista Pro", "# Head", "## Head two ##"),
    *("### x ###y", "#", "# #", "## ##", "####### seven", "#nohash", "# tab\there", "#\ttab", "#  spaced  ##  "),
    *("- item", "* item", "+ item", "1. one", "2) two", "1234567890. big", "- # nested", "> quote", "> # quoted"),
    *("- ```", "> ```", "- <div>", "- > q", "-dash", "=eq", "| a | b |", "|---|---|", "**bold**", "*emph*"),
    *("text # not", "\\# escaped", "## Heading\x00null"),
)
OTHER_LINES = ("<div>", "* * *", "---", "===", "- - -", "___", "[foo]: /url", "[foo]: /url 'title", "end'")
OTHER_LINES += ("    code", "\tcode", "  two", "```", "~~~", "<!-- c -->")
LINES = st.one_of(st.sampled_from(PLAIN_LINES), st.sampled_from(PLAIN_LINES + OTHER_LINES))


@settings(max_examples=300, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=14).map("\n".join))
def test_headings_found_without_the_parser_are_those_the_parser_finds(body):
    """Bodies of plain lines skip markdown-it (markdown.py): the headings must be exactly the parser's."""
    if markdown._NOT_PLAIN_FIRST.match(body) or markdown._NOT_PLAIN_NEXT.search(body):
        return  # parsed anyway
    starts = [0] + [m.end() for m in markdown._LINE_END.finditer(body)]
    assert markdown._plain_headings(body, starts) == markdown._parsed_headings(body)


# Controls the tokenizer deletes, marks, joiners, CJK, emoji, letters that change when lowercased.
TRICKY = st.text(
    st.sampled_from(
        list("ab é\u0301\u200d\u200b\u00ad\x1c\x1f\x00\ufffd\t\n\r\x0b\x0c\x85\xa0\u2028\u3000東。?.,'🙂İΣς\u0345ﬁ")
    )
)


@settings(max_examples=300, deadline=None)
@given(st.lists(TRICKY, max_size=8).map(" ".join))
def test_the_word_counter_counts_exactly_what_the_tokenizer_makes(text):
    assert DEFAULT.counter.additive
    assert DEFAULT.counter.count(text) == len(TOKENIZER.encode(text, add_special_tokens=False).ids)


def test_a_tokenizer_whose_counts_do_not_add_up_by_word_is_counted_by_encoding():
    spec = json.loads(TOKENIZER.to_str())
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}
    other = Tokenizer.from_str(json.dumps(spec))
    assert not TokenCounter(other).additive
    chunker = Chunker(other, ChunkingConfig(MODEL.max_seq_length, target_tokens=64, overlap_tokens=8))
    body = normalize_markdown(MANUAL.read_text())
    chunks = chunker.chunk("man-1", "Aurea Barista Pro", body)
    assert len(chunks) > 20
    assert all(c.token_count == len(other.encode(c.embedding_text).ids) <= MODEL.max_seq_length for c in chunks)


def test_heading_path_reads_title_then_sections():
    chunks = DEFAULT.chunk("man-1", "Kettle Manual", "# Kettle Manual\n\n## Care\n\n### Descaling\n\nUse citric acid.")
    assert [c.heading_path for c in chunks] == ["Kettle Manual > Care > Descaling"]
    assert chunks[0].embedding_text == "Kettle Manual > Care > Descaling\n\nUse citric acid."


def test_a_heading_path_too_long_for_the_budget_is_shortened_in_the_embedding_text_only():
    heading = " ".join(["Very long heading words"] * 80)
    [chunk] = DEFAULT.chunk("doc-1", "Title", f"## {heading}\n\nThe actual content of the section.")
    assert chunk.heading_path == f"Title > {heading}"
    assert chunk.embedding_text.endswith("…\n\nThe actual content of the section.")
    assert chunk.token_count <= MODEL.max_seq_length


def test_shared_boilerplate_sections_get_one_hash_across_documents():
    footer = "## Legal notice\n\nThis policy is provided for general information only."
    chunker = build_chunker(RetrievalSettings(shared_section_headings=("Legal notice",)))
    a = chunker.chunk("pol-a", "Returns Policy", f"Returns within 30 days.\n\n{footer}")[-1]
    b = chunker.chunk("pol-b", "Privacy Policy", f"We keep data safe.\n\n{footer}")[-1]
    assert a.content_hash == b.content_hash
    assert a.chunk_id != b.chunk_id
    assert a.heading_path == "Returns Policy > Legal notice"


def test_a_document_of_headings_alone_still_gets_a_chunk():
    chunks = DEFAULT.chunk("doc-1", "Title", "# Title\n\n## Coming soon")
    assert [c.text for c in chunks] == ["# Title\n\n## Coming soon"]


def test_normalization_collapses_whitespace_but_keeps_code_indentation():
    raw = "Cafe\u0301  costs\u00a0$5.\r\n\r\n\r\n\r\nNext\u200b line.  \n\n```\n    indented   code\n```"
    assert normalize_markdown(raw) == "Café costs $5.\n\nNext line.\n\n```\n    indented   code\n```"


@PROPERTY
@given(documents())
def test_normalization_is_idempotent(doc):
    once = render(*doc)
    assert normalize_markdown(once) == once


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        (RetrievalSettings(chunk_target_tokens=1000), "chunk_target_tokens=1000"),
        (RetrievalSettings(chunk_overlap_tokens=150), "chunk_overlap_tokens=150"),
        (RetrievalSettings(embedding_model="no-such-model-anywhere"), "embedding_model='no-such-model-anywhere'"),
    ],
)
def test_bad_chunking_settings_name_the_setting(settings_, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_chunker(settings_)


def test_a_model_directory_works_as_the_model_setting():
    by_name = chunking_settings(RetrievalSettings())
    by_path = chunking_settings(RetrievalSettings(embedding_model=str(MODEL.path)))
    assert by_path["model_max_tokens"] == by_name["model_max_tokens"] == 256
    assert by_path["tokenizer_hash"] == by_name["tokenizer_hash"]
    assert by_path["chunking_config_hash"] != by_name["chunking_config_hash"]


def test_a_worker_pool_makes_the_same_chunk_table_as_one_process():
    body = (PROJECT_DIR / "data/raw/docs/faq/faq-price-match.md").read_text().split("---\n", 2)[2]
    documents = [
        {"doc_id": f"faq-{n}", "title": f"FAQ {n}", "body": normalize_markdown(body), "doc_type": "faq"}
        for n in range(450)  # three batches
    ]
    serial = chunk_table(RetrievalSettings(), documents, "config-1", workers=1)
    pooled = chunk_table(RetrievalSettings(), documents, "config-1", workers=2)
    assert pooled.equals(serial)
    assert serial.num_rows >= 450
