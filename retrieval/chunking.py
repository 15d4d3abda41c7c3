"""Token-budgeted chunking with the dense model's own tokenizer, deterministic ids and content hashes."""

from __future__ import annotations

import bisect
import hashlib
import json
import unicodedata
import uuid
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import regex

from retrieval.documents import Document, short_repr
from retrieval.errors import InvalidArgumentError
from retrieval.wording import counted

POINT_NAMESPACE = uuid.UUID("6f1c1f0e-8d0a-4f43-9a57-1b2c3d4e5f60")
PAGE_STARTS = "page_starts"  # document metadata: where each page's text starts (a PDF's): chunks' page, last_page
MOSTLY_UNKNOWN = 0.5  # a chunk is mostly unknown to the dense model when this share of its tokens is [UNK]
_GRAPHEME = regex.compile(r"\X")  # an extended grapheme cluster: a user-perceived character


def point_id(doc_id: str, chunk_index: int) -> str:
    """Deterministic UUID for chunk ``chunk_index`` of document ``doc_id``."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}\x1f{chunk_index}"))


@dataclass(frozen=True)
class Chunk:
    """A piece of a document small enough for the dense model."""

    doc_id: str
    chunk_index: int
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    embed_title: str | None = None  # the head of a long title that is embedded; None: the whole title
    unknown: bool = field(default=False, compare=False)  # mostly [UNK] to the dense tokenizer (not stored)
    # where ``text`` lies in the document's text: ``doc.text[start:end] == text``; None when not known
    start: int | None = None
    end: int | None = None

    __repr__ = short_repr  # the text's head and length, not 256 tokens of it

    @property
    def id(self) -> str:
        """The point id: :func:`point_id` of the document id and chunk index."""
        return point_id(self.doc_id, self.chunk_index)

    @property
    def embed_text(self) -> str:
        """What the encoders see: the title (context for every chunk; only its head when long) and the text."""
        title = self.title if self.embed_title is None else self.embed_title
        return f"{title}\n{self.text}" if title else self.text

    @property
    def content_hash(self) -> str:
        """Changes whenever anything stored for this chunk changes."""
        meta = json.dumps(self.metadata, sort_keys=True, default=str)
        raw = "\x1f".join([self.title, self.text, meta])
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def payload(self) -> dict[str, Any]:
        """What the chunk's point stores besides its vectors: ids, text, title, metadata, hash, offsets."""
        return {
            "doc_id": self.doc_id,
            "chunk_index": self.chunk_index,
            "text": self.text,
            "title": self.title,
            "metadata": self.metadata,
            "content_hash": self.content_hash,
            "start": self.start,
            "end": self.end,
        }


def chunk_metadata(metadata: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    """The metadata of a chunk at ``start:end`` in its document's text: the document's, except that its
    :data:`PAGE_STARTS` (a list of the offsets where pages start, as the PDF reader gives it) becomes the chunk's
    ``page`` and ``last_page``, the numbers (from 1) of the pages its text starts and ends on: each chunk does not
    carry every page's offset."""
    starts = metadata.get(PAGE_STARTS)
    if not isinstance(starts, list) or not starts or not all(type(s) is int for s in starts):
        return metadata
    return {
        **{k: v for k, v in metadata.items() if k != PAGE_STARTS},
        "page": max(1, bisect.bisect_right(starts, start)),
        "last_page": max(1, bisect.bisect_right(starts, max(start, end - 1))),
    }


def window_overlap(overlap: int, budget: int) -> int:
    """The overlap of consecutive windows: the one asked for, at most half the ``budget``."""
    return min(overlap, budget // 2)


class Chunker:
    """Splits text into windows of at most ``max_tokens`` model tokens (title included) with overlap.

    Windows are cut on the tokenizer's character offsets, widened to whole characters (a letter with its
    combining marks, an emoji with its variation selector or joined parts: grapheme clusters), so chunk text is
    an exact slice of the document that never exceeds the model's max length once the title and special tokens
    are added. Windows start and end between words (never inside a run of letters, marks, digits and connector
    punctuation such as ``_``, nor between tokens sharing a character); with ``at_whitespace``, only at whitespace,
    never inside a whitespace-delimited run such as a URL, an e-mail address or ``JIRA-1234`` unless the run alone
    is longer than the budget. A single word longer than the whole budget is split, and such a window is tokenized
    again and shrunk until it fits (a word's pieces may not add up to the tokens of its parts).
    """

    def __init__(
        self, tokenizer, max_tokens: int, overlap: int = 32, reserved_tokens: int = 0, at_whitespace: bool = False
    ):
        special = tokenizer.num_special_tokens_to_add(pair=False)
        self.tokenizer = tokenizer
        self.budget = max_tokens - special - reserved_tokens
        if self.budget < 8:
            raise InvalidArgumentError(
                f"chunk budget of {counted(self.budget, 'token')} is too small (max_tokens={max_tokens}, of which "
                f"{special + reserved_tokens} special and prompt tokens): raise HYBRID_RAG_CHUNK_TOKENS"
            )
        self.overlap = window_overlap(overlap, self.budget)
        self.at_whitespace = at_whitespace

    def chunk(self, doc: Document) -> list[Chunk]:
        """``doc`` cut into windows, each with its offsets into ``doc.text`` (a title of None: no title)."""
        title, head = (doc.title or "").strip(), None
        title_tokens = self._count(title + "\n") if title else 0
        if title_tokens > self.budget // 2:  # a huge title would crowd out the text: embed only its head
            head = self._head(title, self.budget // 4)
            title_tokens = self._count(head + "\n")
        budget = self.budget - title_tokens
        encoding = self._encode(doc.text)
        offsets = encoding["offset_mapping"]
        unk = self.tokenizer.unk_token_id
        unknown = list(accumulate((i == unk for i in encoding["input_ids"]), initial=0))
        if not offsets:
            lead = len(doc.text) - len(doc.text.lstrip())
            end = len(doc.text.rstrip())
            metadata = chunk_metadata(doc.metadata, lead, end)
            return [Chunk(doc.id, 0, doc.text.strip(), title, metadata, head, start=lead, end=end)]
        cuts = _word_cuts(doc.text, offsets, budget if self.at_whitespace else 0)
        graphemes = _grapheme_starts(doc.text)
        chunks: list[Chunk] = []
        start, n = 0, len(offsets)
        while True:
            end = _last_cut(cuts, start + 1, min(start + budget, n)) or min(start + budget, n)
            while True:  # cut inside a word or character: the slice re-tokenized may hold more tokens than that
                lo, hi = _span(graphemes, offsets[start][0], offsets[end - 1][1])
                text = doc.text[lo:hi]
                if end - start == 1 or (cuts[start] and cuts[end]) or self._count(text) <= budget:
                    break
                end = _last_cut(cuts, start + 1, end - 1) or end - 1
            mostly_unknown = unknown[end] - unknown[start] >= MOSTLY_UNKNOWN * (end - start)
            metadata = chunk_metadata(doc.metadata, lo, hi)
            chunks.append(Chunk(doc.id, len(chunks), text, title, metadata, head, mostly_unknown, lo, hi))
            if end >= n:
                return chunks
            start = _last_cut(cuts, start + 1, end - self.overlap) or end

    def _encode(self, text: str):
        # verbose=False: text longer than the model's max length is expected here (it is what gets cut), so
        # the tokenizer's "Token indices sequence length is longer than ..." warning would be a false alarm.
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)

    def _count(self, text: str) -> int:
        return len(self._encode(text)["input_ids"])

    def _head(self, text: str, tokens: int) -> str:
        offsets = self._encode(text)["offset_mapping"]
        return _slice(text, _grapheme_starts(text), 0, offsets[min(tokens, len(offsets)) - 1][1]) if offsets else text


def _grapheme_starts(text: str) -> list[int] | None:
    """Where the grapheme clusters of ``text`` start (and its end); None for ASCII text, where every character
    is one (a CR LF pair is one cluster, but tokens never end inside it)."""
    if text.isascii():
        return None
    return [0, *(m.end() for m in _GRAPHEME.finditer(text))]


def _slice(text: str, graphemes: list[int] | None, start: int, end: int) -> str:
    """``text[start:end]`` widened to whole grapheme clusters."""
    lo, hi = _span(graphemes, start, end)
    return text[lo:hi]


def _span(graphemes: list[int] | None, start: int, end: int) -> tuple[int, int]:
    """``start``, ``end`` widened to whole grapheme clusters (``graphemes``: :func:`_grapheme_starts`)."""
    if graphemes is not None:
        start = graphemes[bisect.bisect_right(graphemes, start) - 1]
        end = graphemes[bisect.bisect_left(graphemes, end)]
    return start, end


def _is_word(char: str) -> bool:
    """A letter, digit, mark (a Devanagari vowel sign or virama, a combining accent) or connector punctuation (the
    ``_`` of a snake_case name); False for ``""``."""
    return char.isalnum() or unicodedata.category(char[:1] or " ") in ("Mn", "Mc", "Me", "Pc")


def _word_cuts(text: str, offsets: list[tuple[int, int]], budget: int) -> list[bool]:
    """``cuts[i]``: a window may start at token ``i`` / end before it: where whitespace separates the tokens, or
    between words (:func:`_is_word`) inside a whitespace-delimited run (a URL, an e-mail address, ``JIRA-1234``)
    of more than ``budget`` tokens, which no window could hold whole (``budget`` 0: between words everywhere)."""
    n = len(offsets)
    cuts = [True] * (n + 1)
    run = 0  # the token that starts the current whitespace-delimited run
    for i in range(1, n + 1):
        if i < n:
            prev_end, start = offsets[i - 1][1], offsets[i][0]
            if start < prev_end:  # tokens of one character (the jamo of a Hangul syllable share its offsets)
                cuts[i] = False
                continue
            # whitespace in the gap or at the tokens' edges ends the run (a space before the token: the common case)
            spaced = text[start - 1 : start] == " " or any(map(str.isspace, text[prev_end - 1 : start + 1]))
            if not spaced:  # a character the tokenizer drops (a combining mark) between two tokens still joins them
                cuts[i] = not (_is_word(text[start - 1 : start]) and _is_word(text[start : start + 1]))
                continue
        if i - run <= budget:  # a run a window can hold: no cut inside it
            cuts[run + 1 : i] = [False] * (i - run - 1)
        run = i
    return cuts


def _last_cut(cuts: list[bool], low: int, high: int) -> int | None:
    """The largest ``i`` in [low, high] where a cut is allowed, or None."""
    for i in range(high, low - 1, -1):
        if cuts[i]:
            return i
    return None
