"""Embedding assets: dense and sparse vectors of the chunks, separate so a model swap redoes only its side."""

import time

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from assets.failures import fails_clearly
from assets.ingest import GROUP
from assets.meta import rate
from assets.partitions import corpus_partitions
from assets.resources import CorporaResource, RetrievalResource
from assets.tables import batch_to_chunks, batches, dense_to_table, ids_and_hashes, nonzeros, sparse_to_table
from retrieval.wording import counted


@dg.asset(partitions_def=corpus_partitions, group_name=GROUP, kinds={"pytorch", "parquet"})
@fails_clearly
def dense_vectors(
    context: dg.AssetExecutionContext, chunks: pq.ParquetFile, corpora: CorporaResource, retrieval: RetrievalResource
) -> dg.Output[pa.Table]:
    """Normalized dense embeddings, through the on-disk embedding cache (unchanged chunks are not re-encoded).
    The chunks are read and encoded a batch at a time, into one matrix."""
    started = time.perf_counter()
    collection = corpora.get(context.partition_key).collection
    count = chunks.metadata.num_rows
    with retrieval.indexer(collection) as indexer:
        dense = indexer.dense
        matrix, reused, row = np.zeros((count, dense.dimension), dtype=np.float32), 0, 0
        for batch in batches(chunks):
            part, part_reused = indexer.encode_dense(batch_to_chunks(batch))
            matrix[row : row + len(part)], reused, row = part, reused + part_reused, row + len(part)
        cache = str(indexer.cache.path) if indexer.cache else "disabled"
    seconds = time.perf_counter() - started
    embedded = count - reused
    context.log.info(
        f"dense {dense.model_name}: {counted(embedded, 'chunk')} embedded, {reused:,} reused from the cache"
    )
    return dg.Output(
        dense_to_table(ids_and_hashes(chunks), matrix, dense.model_name, dense.cache_key, dense.cache_details),
        metadata={
            "model": dense.model_name,
            "dimension": dg.MetadataValue.int(dense.dimension),
            "device": dense.device,
            "backend": dense.backend.value,
            "chunks": dg.MetadataValue.int(count),
            "embedded": dg.MetadataValue.int(embedded),
            "reused_from_cache": dg.MetadataValue.int(reused),
            "embedding_cache": cache,
            "chunks_per_s": dg.MetadataValue.float(rate(count, seconds)),
            "duration_s": dg.MetadataValue.float(round(seconds, 3)),
        },
    )


@dg.asset(partitions_def=corpus_partitions, group_name=GROUP, kinds={"python", "parquet"})
@fails_clearly
def sparse_vectors(chunks: pq.ParquetFile, retrieval: RetrievalResource) -> dg.Output[pa.Table]:
    """Sparse term weights of the chunks (BM25 with Qdrant's IDF modifier, or SPLADE), encoded a batch at a time
    into Arrow arrays (the corpus' vectors never exist as Python lists all at once)."""
    started = time.perf_counter()
    count = chunks.metadata.num_rows
    with retrieval.stack() as stack:
        sparse = stack.sparse

        def encoded():
            for batch in batches(chunks):
                with sparse.lock:
                    yield sparse.encode_documents([c.embed_text for c in batch_to_chunks(batch)])

        table = sparse_to_table(ids_and_hashes(chunks), encoded(), sparse.name, sparse.cache_key)
    seconds = time.perf_counter() - started
    nnz = nonzeros(table)
    return dg.Output(
        table,
        metadata={
            "model": sparse.name,
            "idf_modifier": sparse.uses_idf_modifier,
            "chunks": dg.MetadataValue.int(count),
            "embedded": dg.MetadataValue.int(count),
            "mean_nonzeros": dg.MetadataValue.float(round(float(np.mean(nnz)) if len(nnz) else 0.0, 2)),
            "max_nonzeros": dg.MetadataValue.int(int(nnz.max()) if len(nnz) else 0),
            "chunks_per_s": dg.MetadataValue.float(rate(count, seconds)),
            "duration_s": dg.MetadataValue.float(round(seconds, 3)),
        },
    )
