"""The parts one indexer or retriever works with, as :class:`retrieval.RetrievalStack` hands them out."""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.adapted import AdaptedQueryEncoder
from retrieval.embedding_cache import EmbeddingCache
from retrieval.encoders import DenseEncoder
from retrieval.encoders.sparse import Bm25Encoder, SpladeEncoder
from retrieval.settings import RetrievalSettings
from retrieval.store import EdgeStore, QdrantStore


@dataclass(frozen=True)
class Parts:
    """Settings, the store of one collection, the encoders (each with its own ``lock``) and the embedding cache.

    ``query_encoder``: the encoder of ``settings.query_model`` (trained against the stored document vectors), which
    serves the dense channel and the reranker's pseudo-queries; the collection's adapted one, followed on every
    search (:class:`~retrieval.adapted.AdaptedQueryEncoder`); None: the dense encoder.
    """

    settings: RetrievalSettings
    store: QdrantStore
    dense: DenseEncoder
    sparse: Bm25Encoder | SpladeEncoder
    query_encoder: DenseEncoder | AdaptedQueryEncoder | None = None
    cache: EmbeddingCache | None = None


def describe(kind: str, store: QdrantStore) -> str:
    """``kind(collection='x', at='data/index')``, the repr of what works on ``store``: the embedded engine's folder or
    the server's URL (without its password), and a pinned version."""
    where = str(store.root) if isinstance(store, EdgeStore) else store.location  # location: redacted, read no files
    pinned = "" if store.version is None else f", version={store.version}"
    return f"{kind}(collection={store.collection!r}, at={where!r}{pinned})"
