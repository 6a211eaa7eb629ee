"""Markdown bodies: normalize the text, then cut it into sections by its heading tree.

Sections are found with markdown-it (CommonMark), not with a regex, so a `#` inside a
code block, a quote or a list item is content, and setext headings count as headings.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from markdown_it import MarkdownIt

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad"))  # zero-width and soft-hyphen marks
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK_RUNS = re.compile(r"\n{3,}")
# Only block structure matters here; skipping inline parsing halves the cost.
_PARSER = MarkdownIt("commonmark").disable("inline")


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
    lines = body.split("\n")
    line_starts = [0]
    for line in lines:
        line_starts.append(line_starts[-1] + len(line) + 1)

    cuts: list[tuple[int, int, int, str]] = []  # (first line, line after heading, level, text)
    tokens = _PARSER.parse(body)
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.level == 0 and token.map:
            cuts.append((token.map[0], token.map[1], int(token.tag[1]), tokens[i + 1].content.strip()))

    sections: list[Section] = []
    seen: dict[tuple[str, ...], int] = {}
    stack: list[tuple[int, str]] = []

    def add(headings: tuple[str, ...], first_line: int, end_line: int) -> None:
        start = line_starts[min(first_line, len(lines))]
        end = max(start, line_starts[min(end_line, len(lines))] - 1)
        if not body[start:end].strip():
            return  # a heading with nothing under it: its text lives on in its children's paths
        occurrence = seen.get(headings, 0)
        seen[headings] = occurrence + 1
        sections.append(Section(headings, occurrence, body[start:end], start))

    add((), 0, cuts[0][0] if cuts else len(lines))
    for n, (_, after_heading, level, text) in enumerate(cuts):
        while stack and stack[-1][0] >= level:
            stack.pop()
        is_title = level == 1 and not stack and _same_words(text, title)
        if not is_title:
            stack.append((level, text))
        next_start = cuts[n + 1][0] if n + 1 < len(cuts) else len(lines)
        add(tuple(heading for _, heading in stack), after_heading, next_start)
    return sections


def _same_words(a: str, b: str) -> bool:
    return a.casefold().split() == b.casefold().split()
