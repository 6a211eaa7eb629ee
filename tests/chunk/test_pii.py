"""The PII patterns, declared once (python_jobs/chunk/pii.py): the redactor, its parity with the SQL test
(DuckDB), the policy, and the chunker's character bound."""

from __future__ import annotations

import re
import time

import duckdb
import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from python_jobs.chunk.chunker import Chunker, ChunkingConfig, build_chunker, content_hash
from python_jobs.chunk.markdown import split_sections
from python_jobs.chunk.model_files import resolve_model
from python_jobs.chunk.pii import LINK, PATTERNS_MACRO, PII_KINDS, clip, find_pii, has_pii, pii_patterns_macro, redact
from python_jobs.common.settings import PROJECT_DIR, PiiRule, RetrievalSettings

MODEL = resolve_model("all-MiniLM-L6-v2")
TOKENIZER = MODEL.tokenizer()
DEFAULT = build_chunker(RetrievalSettings())
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONTACT = "Write to jane.doe@example.com, call (555) 123-4567 or pay with 4111 1111 1111 1111."
SAMPLES = [
    CONTACT,
    "Slides: http://example.org/vs/5309904231178427 and https://x.org/a@b.com?tel=555-123-4567",
    "+1 555.123.4567, 555-123-4567x, 1555-123-4567, 555 1234567",
    "x4111111111111111 4111-1111-1111-1111 41111111111111111111 4111 1111 1111",
    "Zoë@exämple.com é5551234567 ٥٥٥-١٢٣-٤٥٦٧ tel:555-123-4567",
    "a@b.cd a@b.c first.last+tag@sub.domain.co.uk @handle mail@localhost",
]

# Text made of the characters the patterns care about, to compare the two engines on.
pii_like = st.text(alphabet=st.sampled_from(list("0123456789 -.()+@_abAZé:/htps\n")), max_size=60)


def duckdb_matches(con: duckdb.DuckDBPyConnection, text: str, pattern: str) -> list[str]:
    masked = con.execute("select regexp_replace(?, ?, ' ', 'g')", [text, LINK]).fetchone()[0]
    return con.execute("select regexp_extract_all(?, ?)", [masked, pattern]).fetchone()[0]


def redactor_matches(text: str, pattern: str) -> list[str]:
    """What the redactor's engine (RE2, google-re2) matches, as the SQL test reads the text."""
    masked = re2.sub(LINK, " ", text)
    return [m.group() for m in re2.finditer(pattern, masked)]


@pytest.fixture(scope="module")
def con():
    with duckdb.connect() as connection:
        yield connection


@pytest.mark.parametrize("text", SAMPLES)
def test_the_redactor_and_duckdb_read_every_pattern_alike(con, text):
    for kind in PII_KINDS:
        assert redactor_matches(text, kind.pattern) == duckdb_matches(con, text, kind.pattern), kind.name


@PROPERTY
@given(pii_like)
def test_the_redactor_and_duckdb_read_every_pattern_alike_on_generated_text(con, text):
    for kind in PII_KINDS:
        assert redactor_matches(text, kind.pattern) == duckdb_matches(con, text, kind.pattern), kind.name


def test_the_sql_macro_is_generated_from_the_python_declaration():
    assert (PROJECT_DIR / PATTERNS_MACRO).read_text(encoding="utf-8") == pii_patterns_macro(), "run `rp reference`"


def test_each_match_becomes_its_typed_placeholder_and_links_are_left_alone():
    redacted = redact(CONTACT + " See https://example.org/u/4111111111111111.")
    assert redacted.text == (
        "Write to [EMAIL], call [PHONE] or pay with [CARD]. See https://example.org/u/4111111111111111."
    )
    assert redacted.count == 3
    assert [redacted.text[a:b] for a, b in redacted.placeholders] == ["[EMAIL]", "[PHONE]", "[CARD]"]
    assert redact("Nothing personal here.").count == 0


@PROPERTY
@given(pii_like)
def test_what_the_redactor_leaves_has_nothing_the_test_would_find(con, text):
    redacted = redact(text).text
    assert not has_pii(redacted)
    assert all(not duckdb_matches(con, redacted, kind.pattern) for kind in PII_KINDS)


def test_redacting_a_long_unbroken_text_takes_linear_time():
    # A backtracking engine tries the e-mail pattern from every letter of the run: minutes, not milliseconds.
    text = "Mail x@y.org. " + "abcdefghij" * 50_000 + " 555-123-4567"
    started = time.perf_counter()
    redacted = redact(text)
    assert time.perf_counter() - started < 2
    assert redacted.count == 2 and redacted.text.endswith(" [PHONE]")


def test_a_match_cut_in_two_is_redacted_on_both_sides_of_the_cut():
    body = "Call (555) 123-4567 today."
    matches = find_pii(body)
    left, right = body[:10], body[10:]  # "Call (555)" | " 123-4567 today."
    assert not has_pii(left) and not has_pii(right)  # neither half alone is a phone number
    assert redact(left, clip(matches, 0, 10)).text == "Call [PHONE]"
    assert redact(right, clip(matches, 10, len(body))).text == "[PHONE] today."


def test_the_first_matching_rule_decides_and_no_rule_means_block():
    settings_ = RetrievalSettings(
        pii_policy=(
            PiiRule(access_level="confidential", action="allow"),
            PiiRule(doc_type="article", action="redact"),
            PiiRule(doc_type="faq", access_level="internal", action="allow"),
        )
    )
    assert settings_.pii_action("article", "confidential") == "allow"
    assert settings_.pii_action("article", "public") == "redact"
    assert settings_.pii_action("faq", "internal") == "allow"
    assert settings_.pii_action("faq", "public") == "block"
    assert RetrievalSettings().pii_action("manual", "public") == "block"  # the sample data's products


def test_a_redacted_chunk_is_counted_and_hashed_as_the_model_sees_it():
    body = f"## Contact jane.doe@example.com\n\n{CONTACT}\n\n## Hours\n\nOpen 9 to 5."
    contact, hours = DEFAULT.chunk("faq-1", "FAQ", body, redact_pii=True)
    assert contact.heading_path == "FAQ > Contact [EMAIL]"
    assert contact.text == "Write to [EMAIL], call [PHONE] or pay with [CARD]."
    assert contact.embedding_text == "FAQ > Contact [EMAIL]\n\n" + contact.text
    assert contact.content_hash == content_hash(contact.embedding_text)
    assert contact.token_count == len(TOKENIZER.encode(contact.embedding_text).ids)
    assert (contact.pii_redactions, hours.pii_redactions) == (4, 0)
    # The ids are those of the document as written: the same as without redaction.
    assert [c.chunk_id for c in DEFAULT.chunk("faq-1", "FAQ", body)] == [contact.chunk_id, hours.chunk_id]


def test_sections_that_differ_only_in_personal_data_keep_distinct_ids():
    body = "## Contact a@example.com\n\nMornings.\n\n## Contact b@example.com\n\nEvenings."
    chunks = DEFAULT.chunk("faq-1", "FAQ", body, redact_pii=True)
    assert [c.heading_path for c in chunks] == ["FAQ > Contact [EMAIL]"] * 2
    assert len({c.chunk_id for c in chunks}) == 2


# ---------------------------------------------------------------- the character bound


def test_one_long_word_is_cut_by_characters_though_it_is_one_token():
    word = "abcdefghij" * 100_000  # 1 MB: the tokenizer reads it as one unknown token
    assert len(TOKENIZER.encode(word).ids) == 3
    chunks = DEFAULT.chunk("blob", "Blob", f"Before.\n\n{word}\n\nAfter.")
    assert max(len(c.embedding_text) for c in chunks) <= DEFAULT.config.max_characters == 4000
    assert re.sub(r"\s", "", "".join(c.text for c in chunks)) == f"Before.{word}After."  # none lost or repeated
    assert all(c.token_count == len(TOKENIZER.encode(c.embedding_text).ids) for c in chunks)


def test_a_long_heading_is_bounded_in_the_path_and_in_the_prefix():
    heading = "x" * 50_000
    [chunk] = DEFAULT.chunk("doc-1", "Title", f"## {heading}\n\nThe content.")
    assert len(chunk.heading_path) <= 4000 and chunk.heading_path.endswith("…")
    assert len(chunk.embedding_text) <= 2000 + len("The content.")
    assert chunk.embedding_text.endswith("…\n\nThe content.")


words = st.one_of(
    st.sampled_from(["the", "kettle", "café", "東京", "👩🏽\u200d🍳", "e\u0301"]), st.text(min_size=90, max_size=400)
)


@PROPERTY
@given(st.lists(words, min_size=1, max_size=60), st.sampled_from([200, 450]))
def test_no_chunk_exceeds_either_bound_and_none_loses_text(parts, limit):
    chunker = Chunker(TOKENIZER, ChunkingConfig(MODEL.max_seq_length, 64, 8, max_characters=limit))
    body = " ".join(part.strip() or "x" for part in parts)
    chunks = chunker.chunk("doc-1", "A title", body)
    for chunk in chunks:
        assert len(chunk.embedding_text) <= limit
        assert chunk.token_count == len(TOKENIZER.encode(chunk.embedding_text).ids) <= MODEL.max_seq_length
        assert body[chunk.start : chunk.end] == chunk.text
    covered = {i for c in chunks for i in range(c.start, c.end)}
    # Generated text can hold a heading (a line of "=" under another): its line is in heading paths only.
    sections = [(s.start, s.start + len(s.text)) for s in split_sections(body, "A title")] or [(0, len(body))]
    assert all(i in covered for start, end in sections for i in range(start, end) if not body[i].isspace())
