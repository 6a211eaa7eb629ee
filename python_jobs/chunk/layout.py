"""Where a section is cut, chosen from the content around each cut, and what each piece costs in tokens.

A section's text is read as a row of units: sentences, lines (list items, table rows, code lines) and
paragraphs, with the gap after each unit ranked by its strength (a blank line outranks a line break,
which outranks a sentence's end) and, within a strength, by a hash of the unit before it. A gap is a
chunk boundary when it outranks every other gap less than `spacing` tokens away on either side and
lies at least `spacing` tokens from both ends of the section (a local maximum, as in the "local
maximum" content-defined chunking of Bjørner, Blass and Gurevich). That decision reads only the text
within `spacing` tokens of the gap, and two boundaries are never closer than `spacing`, so an edit
moves at most the one boundary on each side of it that lies within reach: it changes the chunks that
hold the edited text and at most one neighbour on each side, and the chunks before and after keep
their text. A greedy packer, by contrast, decides every cut from the section's start, so one
inserted sentence moves every later cut.

Local maxima are at least `spacing` apart but have no upper bound, and the model has one: a stretch
between two boundaries that is over the token or character bound is cut again, inside, at its
highest-ranked gap at least `spacing` from both ends (or anywhere, if none is), until every piece
fits. Such a forced cut depends on the whole stretch, so the locality above holds stretch by
stretch: an edit beside an over-long stretch can change all of that stretch's pieces (about 1% of
chunks start at a forced cut at the default sizes; docs/chunking.md has the figures).

Units bigger than a chunk can be (a sentence of 300 tokens, a megabyte without a space) are split
into words, and words into pieces cut at token boundaries, each counted exactly.

Counting: for the BERT family of tokenizers (BertNormalizer, BertPreTokenizer, WordPiece: the
default all-MiniLM-L6-v2 among them) the tokens of a text are the sum of the tokens of its
whitespace-separated words, so `TokenCounter` tokenizes each distinct word once per process and
counts a text by splitting it and adding cached counts: the same numbers as encoding it, without
the tokenizer's per-character bookkeeping (measured at ~1.5 MB/s per core here, below what the
chunker needs). A tokenizer not of that family, or failing the self-check at start, is counted by
encoding every text.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from tokenizers import Tokenizer

# Gap strengths, weakest first. The rank of a gap is its strength's bonus plus a 32-bit hash, so a
# paragraph break usually, not always, outranks the sentence ends around it.
WORD, SENTENCE, LINE, PARAGRAPH = 0, 1, 2, 3
_BONUS = {WORD: 0, SENTENCE: 0, LINE: int(0.3 * 2**32), PARAGRAPH: int(0.6 * 2**32)}
# A boundary is at least this share of the text target away from the next; local maxima then average
# about 1.7x that apart, two-thirds of the target, as the greedy splitter's pieces did.
SPACING_SHARE = 0.4
# Gaps between units: line breaks (with blank lines and indentation after them), the spaces after a
# sentence's end, and nothing after a CJK full stop (which takes no space). Every match starts with one
# of a few characters, which the regex engine can scan for: ~5x faster than lookbehinds alone.
_GAP = re.compile(r"[\n.!?…。！？](?:(?<=\n)(\s*)|[\"'”’)\]*_」』）]?([ \t]+)|(?<=[。！？])[」』）]?()(?=\S))")
# Characters the BERT normalizer deletes (controls) that str.split() and \\s read as spaces: a word
# goes on across them, as it does for the tokenizer.
_WORD = re.compile(r"(?:\S|[\x0b\x0c\x1c-\x1f\x85])+")
_DELETED_SPACES = re.compile("[\x0b\x0c\x1c-\x1f\x85]")
_DELETE = dict.fromkeys(map(ord, "\x0b\x0c\x1c\x1d\x1e\x1f\x85"))
# Kept in the word cache: longer words are counted each time (the tokenizer reads a word of more than
# 100 characters as one unknown token anyway). The cache is emptied when it holds this many words.
_CACHED_WORD_LENGTH = 100
_CACHE_LIMIT = 500_000
# Texts the additive count is checked against at start: controls, combining marks, joiners, CJK, emoji.
_SELF_CHECK = (
    "Descale the kettle monthly: citric acid, then rinse twice.",
    "Café crème brûlée, naïve Grüße e\u0301 x\u0301\u0301 ﬁ İstanbul ΣΑΣ ς",
    "東京のエスプレッソ。咖啡机！кофеварка قهوة",
    "👩🏽\u200d🍳 ☕️ 🇺🇸 a\u200bb c\u00add \ufeffe\u2060f",
    "tab\there\x0bvt\x0cff\x1cfs\x1fus\x85nel\u2028ls\u3000ideo\xa0nbsp",
    "x" * 150 + " " + "y.z" * 60 + " KIT-ESP-120 1,650W https://brightwater.example/help",
)


class TokenCounter:
    """Counts tokens as `tokenizer` makes them, special tokens apart."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.special_tokens = len(tokenizer.encode("").ids)
        self._cache: dict[str, int] = {}
        self.additive = _splits_words_first(tokenizer) and all(
            self._sum_of_words(text) == self.encoded(text) for text in _SELF_CHECK
        )

    def encoded(self, text: str) -> int:
        """Tokens of `text` without special tokens, by encoding it."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def count(self, text: str) -> int:
        """Tokens of `text` without special tokens, exactly as encoding it would give."""
        return self._sum_of_words(text) if self.additive else self.encoded(text)

    def counter_for(self, text: str) -> Callable[[str], int]:
        """`count` for the parts of `text`, with what can be decided once for all of them decided."""
        if not self.additive:
            return self.encoded
        if _DELETED_SPACES.search(text):
            return self._sum_of_words
        cached, learn = self._cache.__getitem__, self._learn

        def count(part: str) -> int:
            words = part.split()
            try:
                return sum(map(cached, words))
            except KeyError:
                return learn(words)

        return count

    def _sum_of_words(self, text: str) -> int:
        if _DELETED_SPACES.search(text):
            text = text.translate(_DELETE)
        words = text.split()
        try:
            return sum(map(self._cache.__getitem__, words))
        except KeyError:
            return self._learn(words)

    def _learn(self, words: list[str]) -> int:
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        new = sorted({word for word in words if word not in cache})
        counts = dict(
            zip(new, (len(e.ids) for e in self.tokenizer.encode_batch_fast(new, add_special_tokens=False)), strict=True)
        )
        cache.update((word, n) for word, n in counts.items() if len(word) <= _CACHED_WORD_LENGTH)
        return sum(cache[word] if word in cache else counts[word] for word in words)


def _splits_words_first(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer's pieces never cross a space, so counts add up word by word: BERT's
    normalizer with its control-character cleaning, BERT's pre-tokenizer and WordPiece."""
    spec = json.loads(tokenizer.to_str())
    normalizer, pre_tokenizer = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    return (
        normalizer.get("type") == "BertNormalizer"
        and normalizer.get("clean_text") is True
        and pre_tokenizer.get("type") == "BertPreTokenizer"
        and (spec.get("model") or {}).get("type") == "WordPiece"
    )


@dataclass(frozen=True)
class Bounds:
    """The limits of one section's chunks: tokens of the text alone (special tokens and the heading
    prefix taken off), characters of the text alone, the spacing of boundaries, and the overlap."""

    tokens: int
    characters: int
    spacing: int
    overlap: int = 0


@dataclass(frozen=True)
class Piece:
    """A chunk's text as a span of the section: `start` includes the overlap taken from the chunk before
    (none when the chunk starts a paragraph: the context breaks there already, and text carried over a
    paragraph break would make an inserted paragraph change the chunk after it too)."""

    start: int
    end: int
    tokens: int  # of text[start:end], without special tokens
    forced: bool = False  # its first cut was forced by the size bound, not chosen from the content


class _Units:
    """A section's units as parallel lists (many per document: no object each): where each is, its
    tokens, the rank of the gap after it, and the token position of every unit boundary."""

    __slots__ = ("end", "positions", "rank", "start", "tokens")

    def __init__(self) -> None:
        self.start: list[int] = []
        self.end: list[int] = []
        self.tokens: list[int] = []
        self.rank: list[int] = []
        self.positions: list[int] = [0]  # positions[i]: tokens before unit i, once all are added

    def add(self, start: int, end: int, tokens: int, rank: int) -> None:
        self.start.append(start)
        self.end.append(end)
        self.tokens.append(tokens)
        self.rank.append(rank)


def spacing_for(text_target: int, text_limit: int) -> int:
    """How far apart boundaries are at least, for a text target and limit in tokens."""
    return max(1, min(round(text_target * SPACING_SHARE), text_limit // 3))


def layout(text: str, bounds: Bounds, counter: TokenCounter) -> list[Piece]:
    """`text` (a section) in pieces within `bounds`, cut at content-chosen gaps; whitespace at the cuts
    is left out, and every other character is in a piece."""
    count = counter.counter_for(text)
    units = _units(text, bounds, counter, count)
    if not units.start:
        return []
    cuts = _local_maxima(units, bounds.spacing)
    ranges: list[tuple[int, int, bool]] = []
    for first, last in zip([0, *cuts], [*cuts, len(units.start)], strict=True):
        _fit(units, first, last, bounds, False, ranges)
    pieces = []
    positions = units.positions
    for n, (first, last, forced) in enumerate(ranges):
        start, tokens = units.start[first], positions[last] - positions[first]
        if n and bounds.overlap and text.count("\n", units.end[first - 1], start) < 2:
            start, tokens = _with_overlap(text, units, ranges[n - 1][0], first, last, bounds, count)
        pieces.append(Piece(start, units.end[last - 1], tokens, forced))
    return pieces


def _units(text: str, bounds: Bounds, counter: TokenCounter, count: Callable[[str], int]) -> _Units:
    """Sentences, lines and paragraphs of `text`, ranked by the gap after each; those over the bounds
    come in words, and words over them in pieces cut at token boundaries. `count` counts parts of it."""
    units = _Units()
    spans: list[list[int]] = []  # [start, end, strength of the gap after]
    position = len(text) - len(text.lstrip())
    for gap in _GAP.finditer(text):
        if gap.lastindex == 1:  # a line break: the gap starts at it
            start, end, strength = gap.start(), gap.end(), LINE if gap.group().count("\n") == 1 else PARAGRAPH
        else:
            start, end, strength = *gap.span(gap.lastindex), SENTENCE
        if start > position:
            spans.append([position, start, strength])
        elif spans:  # a gap right after another (spaces, then a line break): one gap, the stronger
            spans[-1][2] = max(spans[-1][2], strength)
        position = max(position, end)
    end = len(text.rstrip())
    if end > position:
        spans.append([position, end, PARAGRAPH])
    # The loop below runs for every sentence of every document: names bound once.
    add_start, add_end = units.start.append, units.end.append
    add_tokens, add_rank = units.tokens.append, units.rank.append
    crc32, max_tokens, max_characters = zlib.crc32, bounds.tokens, bounds.characters
    for start, end, strength in spans:
        unit = text[start:end]
        if unit[-1].isspace():  # spaces before a line break
            unit = unit.rstrip()
            end = start + len(unit)
        tokens = count(unit)
        if tokens <= max_tokens and end - start <= max_characters:
            add_start(start)
            add_end(end)
            add_tokens(tokens)
            add_rank(_BONUS[strength] + crc32(unit.encode("utf-8", "surrogatepass")))
        else:
            _add_words(units, text, start, end, strength, bounds, counter)
    units.positions = list(itertools.accumulate(units.tokens, initial=0))
    return units


def _add_words(
    units: _Units, text: str, start: int, end: int, strength: int, bounds: Bounds, counter: TokenCounter
) -> None:
    """text[start:end], a unit over the bounds, as units of its words (the last keeps the unit's gap);
    a word over the bounds in pieces cut at token boundaries."""
    words = list(_WORD.finditer(text, start, end))
    for n, word in enumerate(words):
        word_strength = strength if n == len(words) - 1 else WORD
        tokens = counter.count(word.group())
        if tokens <= bounds.tokens and word.end() - word.start() <= bounds.characters:
            units.add(word.start(), word.end(), tokens, _rank(word.group(), word_strength))
            continue
        cuts = _cut_word(word.group(), bounds, counter)
        for m, (a, b, n_tokens) in enumerate(cuts):
            cut_strength = word_strength if m == len(cuts) - 1 else WORD
            units.add(word.start() + a, word.start() + b, n_tokens, _rank(word.group()[a:b], cut_strength))


def _rank(unit: str, strength: int) -> int:
    return _BONUS[strength] + zlib.crc32(unit.encode("utf-8", "surrogatepass"))


def _local_maxima(units: _Units, spacing: int) -> list[int]:
    """Indices of the units that start a chunk: the gap before each outranks every gap less than
    `spacing` tokens away and is at least `spacing` from both ends."""
    positions, ranks = units.positions, units.rank
    total, last_gap = positions[-1], len(ranks) - 1
    cuts = []
    for gap in range(last_gap):  # the gap after unit `gap`, at positions[gap + 1]
        here = positions[gap + 1]
        if here < spacing or total - here < spacing:
            continue
        rank = ranks[gap]
        other = gap - 1
        while other >= 0 and here - positions[other + 1] < spacing and ranks[other] < rank:
            other -= 1
        if other >= 0 and here - positions[other + 1] < spacing:
            continue
        other = gap + 1
        while other < last_gap and positions[other + 1] - here < spacing and ranks[other] < rank:
            other += 1
        if other < last_gap and positions[other + 1] - here < spacing:
            continue
        cuts.append(gap + 1)
    return cuts


def _fit(units: _Units, first: int, last: int, bounds: Bounds, forced: bool, out: list[tuple[int, int, bool]]) -> None:
    """Units first..last-1 as ranges within the bounds, appended to `out`: whole if they fit, else cut at
    the highest-ranked gap at least `spacing` from both ends (any gap, if none is), and so on."""
    positions = units.positions
    tokens = positions[last] - positions[first]
    characters = units.end[last - 1] - units.start[first]
    if last - first == 1 or (tokens <= bounds.tokens and characters <= bounds.characters):
        out.append((first, last, forced))
        return
    low, high = positions[first] + bounds.spacing, positions[last] - bounds.spacing
    inner = [gap for gap in range(first, last - 1) if low <= positions[gap + 1] <= high]
    best = max(inner or range(first, last - 1), key=lambda gap: (units.rank[gap], -gap))
    _fit(units, first, best + 1, bounds, forced, out)
    _fit(units, best + 1, last, bounds, True, out)


def _with_overlap(
    text: str, units: _Units, previous: int, first: int, last: int, bounds: Bounds, count: Callable[[str], int]
) -> tuple[int, int]:
    """The start and tokens of units first..last-1 with the end of the chunk before (from unit
    `previous`) in front: its last whole units within `overlap` tokens, else its last words, as far as
    both bounds allow."""
    tokens = units.positions[last] - units.positions[first]
    allowance = min(bounds.overlap, bounds.tokens - tokens)
    end, start = units.end[last - 1], units.start[first]
    taken = 0
    unit = first - 1
    while unit >= previous and taken + units.tokens[unit] <= allowance:
        if end - units.start[unit] > bounds.characters:
            break
        taken += units.tokens[unit]
        start = units.start[unit]
        unit -= 1
    if taken or unit < previous:
        return start, tokens + taken
    # Not even the last unit fits: its last words (whole words, so their counts add up).
    words = list(_WORD.finditer(text, units.start[unit], units.end[unit]))
    for word in reversed(words[1:]):
        n = count(word.group())
        if taken + n > allowance or end - word.start() > bounds.characters:
            break
        taken += n
        start = word.start()
    return start, tokens + taken


def _cut_word(word: str, bounds: Bounds, counter: TokenCounter) -> list[tuple[int, int, int]]:
    """A word over the bounds in pieces (offset, end, tokens) within them: cut at token boundaries,
    between words of the tokenizer where it can, never between a character and its combining marks;
    each piece counted exactly (a cut can change how the tokenizer reads its ends)."""
    encoding = counter.tokenizer.encode(word, add_special_tokens=False)
    pieces: list[tuple[int, int, int]] = []
    position = 0
    while position < len(word):
        limit, characters = bounds.tokens, bounds.characters
        while True:
            cut = _cut_point(word, position, encoding.offsets, encoding.word_ids, limit, characters)
            tokens = counter.encoded(word[position:cut])
            if tokens <= bounds.tokens or cut - position <= 1:
                break
            if limit > 1:  # the cut ends read as more tokens than the whole did: try fewer
                limit = max(1, limit - (tokens - bounds.tokens))
            else:
                characters = max(1, (cut - position) // 2)
        pieces.append((position, cut, tokens))
        position = cut
    return pieces


def _cut_point(
    word: str, position: int, offsets: list[tuple[int, int]], word_ids: list, limit: int, characters: int
) -> int:
    """The furthest token end after `position` with at most `limit` tokens and `characters` characters
    from it, preferring one where the tokenizer starts a new word."""
    first = next((i for i, (start, _) in enumerate(offsets) if start >= position), len(offsets))
    best = clean = None
    for i in range(first, min(len(offsets), first + limit)):
        end = offsets[i][1]
        if end - position > characters:
            break
        best = end
        if i + 1 == len(offsets) or word_ids[i + 1] != word_ids[i]:
            clean = end
    cut = clean or best
    if cut is None or cut <= position:  # one token longer than the character bound: cut by characters
        cut = min(len(word), position + characters)
    while position + 1 < cut < len(word) and _joined(word, cut):
        cut -= 1
    return cut


def _joined(text: str, index: int) -> bool:
    """Whether text[index] belongs with the character before it (a combining mark, or a joiner)."""
    return unicodedata.category(text[index]).startswith("M") or "\u200d" in text[index - 1 : index + 1]
