"""Embedding-based listwise reranking in the manner of E2Rank (arXiv 2510.22733).

The query and its top candidates become one pseudo-query embedding, and every candidate is re-scored by
cosine against the dense vector already stored for it (no document is re-encoded). Two ways to build the
pseudo-query:

* ``prompt``: the E2Rank listwise prompt (instruction, numbered top-K candidates, the query) embedded by
  the dense model with its own pooling (through the tokenizer's chat template when it has one);
* ``feedback``: vector pseudo-relevance feedback, the query vector plus ``beta`` times the mean of the
  top-K candidate vectors (Rocchio).

Re-ordering by the pseudo-query alone loses to the first stage on SciFact, so the final ranking fuses the
two rankings by weighted reciprocal rank: ``(1 - w) / (c + rank_first) + w / (c + rank_rerank)``.

Feedback is gated by the first stage's own agreement: only candidates that both channels rank within their
top ``agreement`` documents feed the pseudo-query (they are the likeliest relevant ones). When the channels do
not agree on the first stage's best hit, the first-stage order is kept: that hit came from one channel alone
(an exact identifier the dense model cannot see, a paraphrase BM25 cannot match), and a pseudo-query built from
other candidates would demote it. This is what makes reranking safe to run by default on a corpus without
labels (``agreement=0`` turns the gate off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.encoders.dense import DenseEncoder
from retrieval.settings import RerankMode, RetrievalSettings

INSTRUCTION = "Rank the numbered passages by how well they answer the search query."
PASSAGE_CHARS = 400


@dataclass(frozen=True)
class RerankConfig:
    mode: RerankMode = RerankMode.FEEDBACK
    feedback_k: int = 2
    beta: float = 1.0
    weight: float = 0.3
    depth: int = 100
    rank_constant: int = 10
    agreement: int = 5

    @classmethod
    def from_settings(cls, s: RetrievalSettings) -> RerankConfig:
        """The reranker configuration the ``RERANK_*`` settings (and ``RRF_K``) describe."""
        return cls(
            mode=s.rerank_mode,
            feedback_k=s.rerank_feedback_k,
            beta=s.rerank_feedback_beta,
            weight=s.rerank_weight,
            depth=s.rerank_depth,
            rank_constant=s.rrf_k,
            agreement=s.rerank_agreement,
        )


def listwise_prompt(query: str, passages: Sequence[str], tokenizer=None) -> str:
    """The E2Rank-style listwise prompt; the query comes first and last so truncation cannot drop it."""
    numbered = "\n".join(f"[{i}] {p[:PASSAGE_CHARS]}" for i, p in enumerate(passages, start=1))
    body = f"{INSTRUCTION}\nSearch query: {query}\n{numbered}\nSearch query: {query}"
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False)
    return body


class EmbeddingReranker:
    """Re-scores first-stage candidates with a pseudo-query embedding and fuses the two rankings."""

    def __init__(
        self, dense: DenseEncoder, config: RerankConfig | None = None, query_encoder: DenseEncoder | None = None
    ):
        self.dense = dense
        self.config = config or RerankConfig()
        # The pseudo-query encoder: the trained query encoder (evals.training) or the dense model itself.
        # Candidate vectors always come from the collection, so a trained encoder needs no re-indexing.
        self.query_encoder = query_encoder or dense

    def feedback_rows(self, ranks: Sequence[tuple[int | None, int | None]] | None) -> list[int]:
        """Which candidates (first-stage order) feed the pseudo-query: the first ``feedback_k`` among the top
        ``agreement`` that both channels rank within their top ``agreement``, none unless the first candidate is
        one of them (all of the first ``feedback_k`` when the gate is off or the ranks are unknown)."""
        c = self.config
        if not c.agreement or ranks is None:
            return list(range(min(c.feedback_k, len(ranks) if ranks is not None else c.feedback_k)))
        agreed = [
            i
            for i, (dense, sparse) in enumerate(ranks[: c.agreement])
            if dense is not None and sparse is not None and dense <= c.agreement and sparse <= c.agreement
        ]
        return agreed[: c.feedback_k] if agreed[:1] == [0] else []

    def pseudo_query(
        self, query: str, query_vector: np.ndarray, texts: Sequence[str], vectors: np.ndarray, rows: Sequence[int]
    ) -> np.ndarray:
        """``query_vector`` must come from :attr:`query_encoder` (the retriever's dense query vector)."""
        rows = [r for r in rows if r < len(vectors)]
        if self.config.mode is RerankMode.PROMPT:
            prompt = listwise_prompt(query, [texts[r] for r in rows], self.query_encoder.tokenizer)
            return self.query_encoder.encode_query(prompt)
        pseudo = query_vector + self.config.beta * vectors[rows].mean(axis=0) if rows else query_vector
        return pseudo / (np.linalg.norm(pseudo) or 1.0)

    def scores(
        self,
        query: str,
        query_vector: np.ndarray,
        texts: Sequence[str],
        vectors: np.ndarray,
        ranks: Sequence[tuple[int | None, int | None]] | None = None,
    ) -> np.ndarray | None:
        """Cosine of every candidate vector (rows of ``vectors``, first-stage order) with the pseudo-query;
        None when the agreement gate is closed (``ranks``: each candidate's (dense, sparse) rank)."""
        rows = self.feedback_rows(ranks)
        if self.config.agreement and ranks is not None and not rows:
            return None
        return vectors @ self.pseudo_query(query, query_vector, texts, vectors, rows)

    def fuse(self, rerank_scores: np.ndarray | None, n: int | None = None) -> np.ndarray:
        """Final scores for candidates given in first-stage order (the first-stage order when None)."""
        n = len(rerank_scores) if rerank_scores is not None else n
        c, w = self.config.rank_constant, self.config.weight
        first_rank = np.arange(1, n + 1)
        if rerank_scores is None:
            return 1.0 / (c + first_rank)
        rerank_rank = np.empty(n, dtype=int)
        rerank_rank[np.argsort(-rerank_scores, kind="stable")] = np.arange(1, n + 1)
        return (1 - w) / (c + first_rank) + w / (c + rerank_rank)
