"""Personal data in chunks: what counts as it, declared once, and the redactor.

`PII_KINDS` and `LINK` are the one declaration. The chunker redacts with them (documents whose
`vars.retrieval.pii_policy` action is `redact`), and the `no_pii` dbt test checks with them:
`rp reference` writes macros/pii_patterns.sql from this module (`pii_patterns_macro`), and
`rp reference --check` (in `make lint`) fails when that file is stale. The patterns are RE2 syntax,
and the redactor runs them with RE2 (google-re2), the engine of DuckDB's regexp functions (and
BigQuery's), so both read them alike (tests/chunk/test_pii.py compares them on the same text) and
in time linear in the text: Python's backtracking `re` takes minutes to find no e-mail address in a
few hundred kilobytes of letters.

Links are left out before matching, in both places: a number in a URL (an article id, a tracking
code) is an identifier, not a card or a phone number.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

import re2


@dataclass(frozen=True)
class PiiKind:
    name: str  # as the no_pii test reports it
    placeholder: str  # what replaces a match when a document is redacted
    pattern: str


PII_KINDS: tuple[PiiKind, ...] = (
    PiiKind("email address", "[EMAIL]", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    PiiKind("phone number", "[PHONE]", r"(\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"),
    PiiKind("card-like number", "[CARD]", r"\b\d{4}([ -]?\d{4}){2}[ -]?\d{1,7}\b"),
)
LINK = r"https?://[^ \t\n\r\f\v]+"

_LINK = re2.compile(LINK)
_KINDS = tuple((kind, re2.compile(kind.pattern)) for kind in PII_KINDS)


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    kind: PiiKind


@dataclass(frozen=True)
class Redacted:
    text: str
    count: int  # matches replaced
    placeholders: tuple[tuple[int, int], ...] = ()  # where the placeholders are in `text`


def find_pii(text: str) -> list[Match]:
    """The matches in `text`, outside links, in order and not overlapping (where matches of two kinds
    overlap, the one that starts first, or the longer one, stands for both)."""
    masked = _LINK.sub(lambda link: " " * len(link.group()), text)  # same length: offsets stay
    return _merge([Match(m.start(), m.end(), kind) for kind, pattern in _KINDS for m in pattern.finditer(masked)])


def has_pii(text: str) -> bool:
    return bool(find_pii(text))


def redact(text: str, matches: Iterable[Match] | None = None) -> Redacted:
    """`text` with each match replaced by its kind's placeholder ([EMAIL], [PHONE], [CARD]).

    `matches` (sorted, not overlapping, clipped to `text`) are those found in a larger text this one
    was cut from, so a match the cut split in two is still replaced; matches of `text` itself are
    added to them, so a cut that made a new one (a number whose neighbour was cut off) is too.
    """
    spans = _merge([*(matches or ()), *find_pii(text)])
    if not spans:
        return Redacted(text, 0)
    parts: list[str] = []
    placeholders: list[tuple[int, int]] = []
    position = length = 0
    for match in spans:
        parts.append(text[position : match.start])
        length += match.start - position
        parts.append(match.kind.placeholder)
        placeholders.append((length, length + len(match.kind.placeholder)))
        length += len(match.kind.placeholder)
        position = match.end
    parts.append(text[position:])
    return Redacted("".join(parts), len(spans), tuple(placeholders))


def clip(matches: list[Match], start: int, end: int) -> list[Match]:
    """The matches (sorted, not overlapping) that overlap text[start:end], in that piece's offsets."""
    first = bisect_left([m.end for m in matches], start + 1)
    clipped = []
    for match in matches[first:]:
        if match.start >= end:
            break
        clipped.append(Match(max(match.start, start) - start, min(match.end, end) - start, match.kind))
    return clipped


def count_in(placeholders: Iterable[tuple[int, int]], start: int, end: int) -> int:
    """How many placeholders overlap text[start:end]."""
    return sum(1 for p_start, p_end in placeholders if p_start < end and p_end > start)


def _merge(matches: list[Match]) -> list[Match]:
    merged: list[Match] = []
    for match in sorted(matches, key=lambda m: (m.start, -m.end)):
        if merged and match.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = Match(last.start, max(last.end, match.end), last.kind)
        else:
            merged.append(match)
    return merged


# --- the SQL side -----------------------------------------------------------------------------

PATTERNS_MACRO = "macros/pii_patterns.sql"


def pii_patterns_macro() -> str:
    """macros/pii_patterns.sql as it should read: the patterns as SQL string literals, for `no_pii`."""

    def literal(pattern: str) -> str:
        # A Jinja string literal holding an SQL one: Jinja reads \\ as \, SQL reads '' as '.
        return "'" + pattern.replace("'", "''").replace("\\", "\\\\").replace("'", "\\'") + "'"

    kinds = ",\n".join(f"        {literal(kind.name)}: {literal(kind.pattern)}" for kind in PII_KINDS)
    return (
        "{#\n"
        "    Generated from python_jobs/chunk/pii.py by `rp reference`: do not edit; `make lint` checks it is\n"
        "    current. The patterns of personal data the chunker redacts and the no_pii test checks, one\n"
        "    declaration for both, as SQL string literals (RE2 syntax, which Python reads alike).\n"
        "#}\n"
        "{% macro pii_patterns() %}\n"
        "    {{ return({\n"
        f"{kinds}\n"
        "    }) }}\n"
        "{% endmacro %}\n"
        "\n"
        "{% macro pii_link_pattern() %}\n"
        f"    {{{{ return({literal(LINK)}) }}}}\n"
        "{% endmacro %}\n"
    )
