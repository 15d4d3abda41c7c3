"""Dagster assets of the retrieval pipeline, partitioned by corpus.

raw_documents -> chunks -> dense_vectors, sparse_vectors -> qdrant_index (staged version)
    -> retrieval_evaluation (gate) -> published_index (readers switch)
published_index (reads it), chunks, dense_vectors (checked, lazily) -> query_encoder (corpus adaptation; its own job)
"""

from assets.embeddings import dense_vectors, sparse_vectors
from assets.evaluation import CHANNELS_CHECK, NDCG_CHECK, RERANK_CHECK, retrieval_evaluation
from assets.index import POINT_COUNT_CHECK, qdrant_index
from assets.ingest import chunks, raw_documents
from assets.partitions import CORPORA, corpus_partitions
from assets.publish import published_index
from assets.query_encoder import query_encoder

ALL_ASSETS = [
    raw_documents,
    chunks,
    dense_vectors,
    sparse_vectors,
    qdrant_index,
    retrieval_evaluation,
    published_index,
]

__all__ = [
    "ALL_ASSETS",
    "CORPORA",
    "CHANNELS_CHECK",
    "NDCG_CHECK",
    "RERANK_CHECK",
    "POINT_COUNT_CHECK",
    "chunks",
    "corpus_partitions",
    "dense_vectors",
    "published_index",
    "qdrant_index",
    "query_encoder",
    "raw_documents",
    "retrieval_evaluation",
    "sparse_vectors",
]
