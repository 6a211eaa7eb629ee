"""Markdown bodies: normalize the text, then cut it into sections by its heading tree.

Sections are found with markdown-it (CommonMark), not with a regex, so a `#` inside a
code block, a quote or a list item is content, and setext headings count as headings.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.common.utils import mdTrim

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad"))  # zero-width and soft-hyphen marks
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK_RUNS = re.compile(r"\n{3,}")
_LINE_END = re.compile(r"\r\n?|\n")
# Only block structure matters here; skipping inline parsing halves the cost.
_PARSER = MarkdownIt("commonmark").disable("inline")
# Lines that can make a heading's line not a heading, or make a heading of other lines: indented lines
# (code, or inside a list item), fences, HTML blocks, link definitions (their titles span lines), and
# lines of `-`, `=`, `*` or `_` alone (setext underlines, rules). A body without any (and without \r,
# a line end these patterns do not see) has its headings exactly on the lines that open with 1-6 `#`
# then a space or the line's end: in CommonMark such a line interrupts a paragraph, is no lazy
# continuation of a list item or a quote, and nothing else can hold it. Such a body is not parsed: the
# parser was ~30% of chunking's time. Both patterns come in two: for the first line, and for the lines
# after a \n (a literal the regex engine scans for quickly, where `^` is tried at every character).
_NOT_PLAIN = r"(?:[ \t]+\S|[`~<\[]|[ \t]*[-=*_](?:[ \t]*[-=*_])*[ \t]*$)"
_NOT_PLAIN_FIRST, _NOT_PLAIN_NEXT = re.compile(_NOT_PLAIN, re.MULTILINE), re.compile("\n" + _NOT_PLAIN, re.MULTILINE)
_ATX = r"(#{1,6})((?:[ \t].*)?)$"
_ATX_FIRST, _ATX_NEXT = re.compile(_ATX, re.MULTILINE), re.compile("\n" + _ATX, re.MULTILINE)


def normalize_markdown(text: str) -> str:
    """NFC unicode, LF line ends, one space between words, at most one blank line in a row.

    Indentation and spacing inside fenced code blocks are kept: there they carry meaning.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text.translate(_INVISIBLE))
    lines: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        marker = _FENCE.match(line)
        if fence is None and marker:
            fence = marker.group(1)[0] * len(marker.group(1))
        elif fence is not None and marker and marker.group(1).startswith(fence):
            fence = None
        elif fence is not None:
            lines.append(line.rstrip())
            continue
        indent = len(line) - len(line.lstrip(" "))
        # Keep a short indent: it nests list items. Everything else collapses to one space.
        lines.append(" " * min(indent, 4) + _SPACES.sub(" ", line.strip()))
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


@dataclass(frozen=True)
class Section:
    """The text under one heading, up to the next heading of any level."""

    headings: tuple[str, ...]  # heading texts from the top of the document, without the title
    occurrence: int  # counts earlier sections with the same headings, keeps identity unique
    text: str  # the section's own body, heading line excluded
    start: int  # character offset of `text` in the document body

    @property
    def key(self) -> str:
        return " > ".join(self.headings)


def split_sections(body: str, title: str = "") -> list[Section]:
    """Cut a markdown body at its top-level headings, in document order.

    Text before the first heading forms a section of its own with no headings. A level-1
    heading that repeats the document title is the title, not a section. Sections with no
    text are left out: their headings still appear in the paths of the sections below.
    """
    # Lines as markdown-it numbers them: \r\n, \r and \n all end one.
    line_breaks = list(_LINE_END.finditer(body))
    line_starts = [0, *(line_break.end() for line_break in line_breaks)]
    line_ends = [*(line_break.start() for line_break in line_breaks), len(body)]
    lines = len(line_starts)

    plain = "\r" not in body and not (_NOT_PLAIN_FIRST.match(body) or _NOT_PLAIN_NEXT.search(body))
    cuts = _plain_headings(body, line_starts) if plain else _parsed_headings(body)

    sections: list[Section] = []
    seen: dict[tuple[str, ...], int] = {}
    stack: list[tuple[int, str]] = []

    def add(headings: tuple[str, ...], first_line: int, end_line: int) -> None:
        start = line_starts[first_line] if first_line < lines else len(body)
        end = max(start, line_ends[min(end_line, lines) - 1]) if end_line else start
        if not body[start:end].strip():
            return  # a heading with nothing under it: its text lives on in its children's paths
        occurrence = seen.get(headings, 0)
        seen[headings] = occurrence + 1
        sections.append(Section(headings, occurrence, body[start:end], start))

    add((), 0, cuts[0][0] if cuts else lines)
    for n, (_, after_heading, level, text) in enumerate(cuts):
        while stack and stack[-1][0] >= level:
            stack.pop()
        is_title = level == 1 and not stack and _same_words(text, title)
        if not is_title:
            stack.append((level, text))
        next_start = cuts[n + 1][0] if n + 1 < len(cuts) else lines
        add(tuple(heading for _, heading in stack), after_heading, next_start)
    return sections


def _parsed_headings(body: str) -> list[tuple[int, int, int, str]]:
    """The top-level headings, as (first line, line after it, level, text), by markdown-it."""
    cuts = []
    tokens = _PARSER.parse(body)
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.level == 0 and token.map:
            cuts.append((token.map[0], token.map[1], int(token.tag[1]), tokens[i + 1].content.strip()))
    return cuts


def _plain_headings(body: str, line_starts: list[int]) -> list[tuple[int, int, int, str]]:
    """The headings of a body with no line `_NOT_PLAIN`, as markdown-it reads them: every line opening
    with 1-6 `#` and a space or its end, its text without a closing run of `#`."""
    cuts = []
    first = _ATX_FIRST.match(body)
    for match in [first, *_ATX_NEXT.finditer(body)] if first else _ATX_NEXT.finditer(body):
        line = bisect_right(line_starts, match.start(1)) - 1
        text = match.group(2).rstrip(" \t")
        unclosed = text.rstrip("#")
        if len(unclosed) < len(text) and unclosed[-1:] in (" ", "\t"):
            text = unclosed
        cuts.append((line, line + 1, len(match.group(1)), mdTrim(text).replace("\0", "\ufffd").strip()))
    return cuts


def _same_words(a: str, b: str) -> bool:
    return a.casefold().split() == b.casefold().split()
