"""First-stage fusion of the dense and sparse channel lists, done here rather than in Qdrant.

Qdrant returns each channel's list (ids, scores and the ``doc_id`` payload field only); fusing them here gives
every hit its per-channel rank and raw score without extra queries, and lets fusion work on documents:

A channel's rank of a chunk counts the *documents* ranked above it, not their chunks (plus the chunk's own
siblings above it). Chunk-level RRF lets a document split into several chunks push others down in one channel
while counting once in the other, which lost to both channels on long queries; per-document ranks are what
the reference RRF of document-level BM25 and dense rankings does. A chunk missing from a channel's list
still gets its document's rank there when a sibling is in it, so a document found by its abstract in one
channel and by its conclusion in the other is fused as one document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from retrieval.settings import FusionMethod
from retrieval.store import StoredHit

CHANNELS = ("dense", "sparse")


@dataclass
class Fused:
    """One candidate chunk after fusion: its fused score and, per channel, its rank and raw score."""

    id: str
    doc_id: str
    score: float
    ranks: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


def document_ranks(hits: Sequence[StoredHit]) -> tuple[dict[str, int], dict[str, int]]:
    """(chunk id -> rank, doc id -> rank of its best chunk) for one channel's list, best first.

    Ranks count distinct documents above a chunk plus its own siblings above it: the best chunk of the
    third document has rank 3 however many chunks the first two documents have in the list.
    """
    chunk_rank: dict[str, int] = {}
    doc_rank: dict[str, int] = {}
    siblings: dict[str, int] = {}
    for hit in hits:
        doc = str(hit.payload.get("doc_id", hit.id))
        if doc not in doc_rank:
            doc_rank[doc] = len(doc_rank) + 1
        siblings[doc] = siblings.get(doc, -1) + 1
        chunk_rank.setdefault(hit.id, doc_rank[doc] + siblings[doc])
    return chunk_rank, doc_rank


def fuse(
    channels: dict[str, Sequence[StoredHit]],
    *,
    method: FusionMethod = FusionMethod.RRF,
    rrf_k: int = 60,
    weights: dict[str, float] | None = None,
) -> list[Fused]:
    """Fuse per-channel lists (best first) into one list, best first (ties by id, so the order is stable).

    A single channel keeps its own order and scores.
    """
    weights = weights or {}
    fused: dict[str, Fused] = {}
    ranks: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    for name, hits in channels.items():
        ranks[name] = document_ranks(hits)
        for hit in hits:
            f = fused.setdefault(hit.id, Fused(hit.id, str(hit.payload.get("doc_id", hit.id)), 0.0))
            f.ranks.setdefault(name, ranks[name][0][hit.id])
            f.scores.setdefault(name, hit.score)
    if len(channels) == 1:
        for f in fused.values():
            f.score = next(iter(f.scores.values()))
        return list(fused.values())
    if method is FusionMethod.DBSF:
        normalized = {name: _dbsf_normalized(hits) for name, hits in channels.items()}
    for f in fused.values():
        for name in channels:
            w = weights.get(name, 1.0)
            if method is FusionMethod.RRF:
                rank = f.ranks.get(name) or ranks[name][1].get(f.doc_id)
                f.score += w / (rrf_k + rank) if rank else 0.0
            else:
                f.score += w * normalized[name].get(f.id, 0.0)
    return sorted(fused.values(), key=lambda f: (-f.score, min(f.ranks.values()), f.id))


def _dbsf_normalized(hits: Sequence[StoredHit]) -> dict[str, float]:
    """Distribution-based score fusion's normalization: (s - (mean - 3 sd)) / 6 sd, clipped to [0, 1]."""
    if not hits:
        return {}
    scores = np.array([h.score for h in hits], dtype=float)
    low, span = scores.mean() - 3 * scores.std(), 6 * scores.std()
    values = np.clip((scores - low) / span, 0.0, 1.0) if span > 0 else np.ones_like(scores)
    return {h.id: float(v) for h, v in zip(hits, values, strict=True)}
