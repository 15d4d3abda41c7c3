"""First-stage fusion of the dense and sparse channel lists, done here rather than in Qdrant.

Qdrant returns each channel's list (ids, scores and the ``doc_id`` payload field only) in one batched request;
fusing them here gives every hit its per-channel rank and raw score without extra queries. RRF over chunk ranks,
``sum(w / (k + rank))``, and DBSF (scores normalized by mean +- 3 sd) are Qdrant's own formulas; the third is
z-score fusion (CombSUM of each channel's z-scores over its list; a chunk missing from a channel's list gets 0
from it, the list's mean). Z-scores are DBSF without its clipping at +-3 sd, so a channel that is far more
confident about its top hits than about the rest keeps that advantage (long queries need it; README, Quality).
:func:`top_z` tells how far a list's best hit stands out.
Fusing per document instead (a document's rank in each channel from its best chunk) was measured and lost
on SciFact (see README, Quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from retrieval.settings import FusionMethod
from retrieval.store import StoredHit


@dataclass
class Fused:
    """One candidate chunk after fusion: its fused score and, per channel, its rank and raw score."""

    id: str
    doc_id: str
    score: float
    ranks: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


def fuse(
    channels: dict[str, Sequence[StoredHit]],
    *,
    method: FusionMethod | str = FusionMethod.RRF,
    rrf_k: int = 60,
    weights: dict[str, float] | None = None,
    depth: int | None = None,
) -> list[Fused]:
    """Fuse per-channel lists (best first) into one list, best first (ties by best rank, then id).

    A single channel keeps its own order and scores. ``depth``: how many hits each channel was asked for, capped
    by what it could return (z-score fusion pads a shorter list with zeros to it; None: no padding).
    """
    method, weights = FusionMethod(method), weights or {}
    fused: dict[str, Fused] = {}
    for name, hits in channels.items():
        for rank, hit in enumerate(hits, start=1):
            f = fused.setdefault(hit.id, Fused(hit.id, str(hit.payload.get("doc_id", "")), 0.0))
            if name not in f.ranks:
                f.ranks[name], f.scores[name] = rank, hit.score
    if len(channels) == 1:
        for f in fused.values():
            f.score = next(iter(f.scores.values()))
        return list(fused.values())
    if method is FusionMethod.RRF:
        for f in fused.values():
            f.score = sum(weights.get(name, 1.0) / (rrf_k + rank) for name, rank in f.ranks.items())
    else:
        normalized = {
            name: (_dbsf_normalized(hits), 0.0) if method is FusionMethod.DBSF else _z_scores(hits, depth)
            for name, hits in channels.items()
        }
        for f in fused.values():
            f.score = sum(
                weights.get(name, 1.0) * values.get(f.id, missing) for name, (values, missing) in normalized.items()
            )
    return sorted(fused.values(), key=lambda f: (-f.score, min(f.ranks.values()), f.id))


def _dbsf_normalized(hits: Sequence[StoredHit]) -> dict[str, float]:
    """Distribution-based score fusion's normalization: (s - (mean - 3 sd)) / 6 sd, clipped to [0, 1]."""
    if not hits:
        return {}
    scores = np.array([h.score for h in hits], dtype=float)
    low, span = scores.mean() - 3 * scores.std(), 6 * scores.std()
    values = np.clip((scores - low) / span, 0.0, 1.0) if span > 0 else np.ones_like(scores)
    return {h.id: float(v) for h, v in zip(hits, values, strict=True)}


def _z_scores(hits: Sequence[StoredHit], depth: int | None = None) -> tuple[dict[str, float], float]:
    """(s - mean) / sd over one channel's list, padded with zeros to ``depth`` when shorter (0 for a list whose
    scores are all equal); and the z-score of a chunk missing from the list: 0 (the mean) for a full list, that
    of a score of 0 for a padded one."""
    if not hits:
        return {}, 0.0
    scores = np.array([h.score for h in hits], dtype=float)
    padding = max((depth or 0) - len(scores), 0)
    padded = np.concatenate([scores, np.zeros(padding)])
    mean, sd = padded.mean(), padded.std()
    if sd == 0:
        return {h.id: 0.0 for h in hits}, 0.0
    values = (scores - mean) / sd
    return {h.id: float(v) for h, v in zip(hits, values, strict=True)}, float(-mean / sd) if padding else 0.0


def top_z(hits: Sequence[StoredHit], depth: int | None = None) -> float:
    """How many standard deviations a list's best score lies above the list's mean (the list padded with zeros
    to ``depth`` when shorter; 0 for fewer than 2 entries)."""
    return max(_z_scores(hits, depth)[0].values(), default=0.0) if max(len(hits), depth or 0) > 1 else 0.0
