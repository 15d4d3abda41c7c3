"""hybrid-rag retrieval library: documents, chunking, encoders, Qdrant stores, hybrid search, reranking.

It never imports Dagster; the orchestration layer builds on it.
"""

from retrieval.chunking import Chunk, Chunker, point_id
from retrieval.documents import BadInputError, BadInputPolicy, Document, SourceFormat, read_documents
from retrieval.indexer import DeleteReport, Indexer, IndexReport
from retrieval.rerank import EmbeddingReranker, RerankConfig
from retrieval.search import Hit, HybridRetriever, Variant
from retrieval.settings import RetrievalSettings
from retrieval.stack import RetrievalStack

__all__ = [
    "BadInputError",
    "BadInputPolicy",
    "Chunk",
    "Chunker",
    "DeleteReport",
    "Document",
    "EmbeddingReranker",
    "Hit",
    "HybridRetriever",
    "IndexReport",
    "Indexer",
    "RerankConfig",
    "RetrievalSettings",
    "RetrievalStack",
    "SourceFormat",
    "Variant",
    "point_id",
    "read_documents",
]
