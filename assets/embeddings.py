"""Embedding assets: dense and sparse vectors of the chunks, separate so a model swap redoes only its side."""

import time

import dagster as dg
import numpy as np
import pyarrow as pa

from assets.failures import fails_clearly
from assets.ingest import GROUP
from assets.meta import rate
from assets.partitions import corpus_partitions
from assets.resources import CorporaResource, RetrievalResource
from assets.tables import dense_to_table, sparse_to_table, table_to_chunks


@dg.asset(partitions_def=corpus_partitions, group_name=GROUP, kinds={"pytorch", "parquet"})
@fails_clearly
def dense_vectors(
    context: dg.AssetExecutionContext, chunks: pa.Table, corpora: CorporaResource, retrieval: RetrievalResource
) -> dg.Output[pa.Table]:
    """Normalized dense embeddings, through the on-disk embedding cache (unchanged chunks are not re-encoded)."""
    started = time.perf_counter()
    collection = corpora.get(context.partition_key).collection
    chunk_list = table_to_chunks(chunks)
    with retrieval.indexer(collection) as indexer:
        dense = indexer.dense
        if chunk_list:
            matrix, reused = indexer.encode_dense(chunk_list)
        else:
            matrix, reused = np.zeros((0, dense.dimension), dtype=np.float32), 0
        cache = str(indexer.cache.path) if indexer.cache else "disabled"
    seconds = time.perf_counter() - started
    embedded = len(chunk_list) - reused
    context.log.info(f"dense {dense.model_name}: {embedded} chunks embedded, {reused} reused from the cache")
    return dg.Output(
        dense_to_table(chunks, matrix, dense.model_name),
        metadata={
            "model": dense.model_name,
            "dimension": dg.MetadataValue.int(dense.dimension),
            "device": dense.device,
            "backend": dense.backend.value,
            "chunks": dg.MetadataValue.int(len(chunk_list)),
            "embedded": dg.MetadataValue.int(embedded),
            "reused_from_cache": dg.MetadataValue.int(reused),
            "embedding_cache": cache,
            "chunks_per_s": dg.MetadataValue.float(rate(len(chunk_list), seconds)),
            "duration_s": dg.MetadataValue.float(round(seconds, 3)),
        },
    )


@dg.asset(partitions_def=corpus_partitions, group_name=GROUP, kinds={"python", "parquet"})
@fails_clearly
def sparse_vectors(chunks: pa.Table, retrieval: RetrievalResource) -> dg.Output[pa.Table]:
    """Sparse term weights of the chunks (BM25 with Qdrant's IDF modifier, or SPLADE)."""
    started = time.perf_counter()
    chunk_list = table_to_chunks(chunks)
    with retrieval.stack() as stack:
        sparse = stack.sparse
        with sparse.lock:
            vectors = sparse.encode_documents([c.embed_text for c in chunk_list])
    seconds = time.perf_counter() - started
    nnz = [len(v) for v in vectors]
    return dg.Output(
        sparse_to_table(chunks, vectors, sparse.name),
        metadata={
            "model": sparse.name,
            "idf_modifier": sparse.uses_idf_modifier,
            "chunks": dg.MetadataValue.int(len(chunk_list)),
            "embedded": dg.MetadataValue.int(len(chunk_list)),
            "mean_nonzeros": dg.MetadataValue.float(round(float(np.mean(nnz)) if nnz else 0.0, 2)),
            "max_nonzeros": dg.MetadataValue.int(max(nnz, default=0)),
            "chunks_per_s": dg.MetadataValue.float(rate(len(chunk_list), seconds)),
            "duration_s": dg.MetadataValue.float(round(seconds, 3)),
        },
    )
