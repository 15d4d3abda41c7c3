"""Diverse results by maximal marginal relevance (MMR; Carbonell and Goldstein, 1998), after fusion and reranking.

The hits are picked one at a time: each next one maximizes ``(1 - diversity) * relevance - diversity * similarity``,
its similarity being its highest cosine with a hit already picked (from the dense vectors stored for the chunks: no
document is encoded again). ``relevance`` is the search's own ``score`` min-max scaled over the candidates (the best
1, the last 0), so ``diversity`` weighs the same whatever the score's scale (a cosine, BM25, rank fusion, reranked
ranks) and a small one keeps the hybrid or reranked order rather than the dense channel's.
"""

from __future__ import annotations

import numpy as np


def mmr_order(scores: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> list[int]:
    """The rows of the ``k`` candidates MMR picks, in the order picked; ``scores``: the candidates' relevance (any
    scale, higher is better), ``vectors``: their dense vectors (one row each), ``diversity``: from 0 (relevance
    only: the candidates by score, the first of a tie first) to 1 (the best one, then the least similar)."""
    n = len(scores)
    scores = np.asarray(scores, dtype=float)
    span = scores.max() - scores.min() if n else 0.0
    relevance = (scores - scores.min()) / span if span > 0 else np.ones(n)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    closest = np.zeros(n)  # each candidate's highest cosine with a picked one (none picked: 0)
    picked: list[int] = []
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        marginal = np.where(available, (1 - diversity) * relevance - diversity * closest, -np.inf)
        best = int(np.argmax(marginal))
        picked.append(best)
        available[best] = False
        closest = similarity[best] if len(picked) == 1 else np.maximum(closest, similarity[best])
    return picked
