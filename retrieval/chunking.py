"""Token-budgeted chunking with the dense model's own tokenizer, deterministic ids and content hashes."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from retrieval.documents import Document
from retrieval.errors import InvalidArgumentError

POINT_NAMESPACE = uuid.UUID("6f1c1f0e-8d0a-4f43-9a57-1b2c3d4e5f60")


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

    @property
    def id(self) -> str:
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
        return {
            "doc_id": self.doc_id,
            "chunk_index": self.chunk_index,
            "text": self.text,
            "title": self.title,
            "metadata": self.metadata,
            "content_hash": self.content_hash,
        }


class Chunker:
    """Splits text into windows of at most ``max_tokens`` model tokens (title included) with overlap.

    Windows are cut on the tokenizer's character offsets, so chunk text is an exact slice of the document
    and never exceeds the model's max length once the title and special tokens are added. Windows start and
    end between words (never inside a run of letters and digits); only a single word longer than the whole
    budget is split.
    """

    def __init__(self, tokenizer, max_tokens: int, overlap: int = 32, reserved_tokens: int = 0):
        special = tokenizer.num_special_tokens_to_add(pair=False)
        self.tokenizer = tokenizer
        self.budget = max_tokens - special - reserved_tokens
        if self.budget < 8:
            raise InvalidArgumentError(
                f"chunk budget of {self.budget} tokens is too small (max_tokens={max_tokens}, of which "
                f"{special + reserved_tokens} special and prompt tokens): raise HYBRID_RAG_CHUNK_TOKENS"
            )
        self.overlap = min(overlap, self.budget // 2)

    def chunk(self, doc: Document) -> list[Chunk]:
        title, head = doc.title.strip(), None
        title_tokens = self._count(title + "\n") if title else 0
        if title_tokens > self.budget // 2:  # a huge title would crowd out the text: embed only its head
            head = self._head(title, self.budget // 4)
            title_tokens = self._count(head + "\n")
        budget = self.budget - title_tokens
        offsets = self._offsets(doc.text)
        if not offsets:
            return [Chunk(doc.id, 0, doc.text.strip(), title, doc.metadata, head)]
        cuts = _word_cuts(doc.text, offsets)
        chunks: list[Chunk] = []
        start, n = 0, len(offsets)
        while True:
            end = _last_cut(cuts, start + 1, min(start + budget, n)) or min(start + budget, n)
            text = doc.text[offsets[start][0] : offsets[end - 1][1]]
            chunks.append(Chunk(doc.id, len(chunks), text, title, doc.metadata, head))
            if end >= n:
                return chunks
            start = _last_cut(cuts, start + 1, end - self.overlap) or end

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        # verbose=False: text longer than the model's max length is expected here (it is what gets cut), so
        # the tokenizer's "Token indices sequence length is longer than ..." warning would be a false alarm.
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
            "offset_mapping"
        ]

    def _count(self, text: str) -> int:
        return len(self._offsets(text))

    def _head(self, text: str, tokens: int) -> str:
        offsets = self._offsets(text)
        return text[: offsets[min(tokens, len(offsets)) - 1][1]] if offsets else text


def _word_cuts(text: str, offsets: list[tuple[int, int]]) -> list[bool]:
    """``cuts[i]``: a window may start at token ``i`` / end before it without splitting a word."""
    cuts = [True] * (len(offsets) + 1)
    for i in range(1, len(offsets)):
        prev_end, start = offsets[i - 1][1], offsets[i][0]
        cuts[i] = not (prev_end == start and text[start - 1 : start].isalnum() and text[start : start + 1].isalnum())
    return cuts


def _last_cut(cuts: list[bool], low: int, high: int) -> int | None:
    """The largest ``i`` in [low, high] where a cut is allowed, or None."""
    for i in range(high, low - 1, -1):
        if cuts[i]:
            return i
    return None
