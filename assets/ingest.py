"""Ingestion assets: the corpus' documents and their chunks."""

import time

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from assets.corpora import CorpusUnavailableError, UnknownCorpusError
from assets.failures import fails_clearly
from assets.meta import listing, preview, rate
from assets.partitions import corpus_partitions
from assets.resources import CorporaResource, RetrievalResource
from assets.tables import (
    chunks_to_table,
    documents_to_table,
    release_read_buffers,
    table_skipped,
    table_to_documents,
)
from retrieval import BadInputError, read_documents

GROUP = "retrieval"


@dg.asset(partitions_def=corpus_partitions, group_name=GROUP, kinds={"python", "parquet"})
@fails_clearly
def raw_documents(
    context: dg.AssetExecutionContext, corpora: CorporaResource, retrieval: RetrievalResource
) -> dg.Output[pa.Table]:
    """The corpus' documents as read from its source; unreadable records are skipped or fail the run by policy."""
    started = time.perf_counter()
    try:
        corpus = corpora.get(context.partition_key)
        source = corpus.require_source()
    except (UnknownCorpusError, CorpusUnavailableError) as exc:
        raise dg.Failure(description=str(exc)) from exc
    policy = corpus.on_bad_input or retrieval.settings().bad_input_policy
    try:
        docs, report = read_documents(source, corpus.format, policy)
    except BadInputError as exc:
        raise dg.Failure(
            description=f"corpus {corpus.name!r}: bad input ({exc}); fix the record or set on_bad_input: skip",
            metadata={"source": str(source), "policy": policy.value},
        ) from exc
    table = documents_to_table(docs, report.skipped)  # qdrant_index keeps what is stored for them
    seconds = time.perf_counter() - started
    for problem in report.skipped:
        context.log.warning(f"skipped {problem}")
    context.log.info(f"{corpus.name}: {len(docs)} documents read from {source}, {report.skipped_count} skipped")
    return dg.Output(
        table,
        metadata={
            "corpus": corpus.name,
            "source": dg.MetadataValue.path(str(source)),
            "format": corpus.format.value,
            "documents": dg.MetadataValue.int(len(docs)),
            "skipped": dg.MetadataValue.int(report.skipped_count),
            "skipped_reasons": listing([str(p) for p in report.skipped]),
            "bad_input_policy": policy.value,
            "text_chars": dg.MetadataValue.int(sum(len(d.text) for d in docs)),
            "duration_s": dg.MetadataValue.float(round(seconds, 3)),
            "preview": preview(table, ["doc_id", "title", "text"]),
        },
    )


@dg.asset(partitions_def=corpus_partitions, group_name=GROUP, kinds={"python", "parquet"})
@fails_clearly
def chunks(
    context: dg.AssetExecutionContext,
    raw_documents: pq.ParquetFile,
    corpora: CorporaResource,
    retrieval: RetrievalResource,
) -> dg.Output[pa.Table]:
    """Token-budgeted chunks cut with the dense model's tokenizer (deterministic ids, content hashes); the
    documents are read a batch at a time."""
    started = time.perf_counter()
    corpus = corpora.get(context.partition_key)
    docs = table_to_documents(raw_documents)
    release_read_buffers()
    with retrieval.indexer(corpus.collection) as indexer:
        chunker = indexer.chunker
        chunk_list = indexer.chunk(docs)
        tokenizer_model = indexer.dense.model_name
    table = chunks_to_table(chunk_list, table_skipped(raw_documents))
    seconds = time.perf_counter() - started
    per_doc = len(chunk_list) / len(docs) if docs else 0.0
    context.log.info(f"{corpus.name}: {len(docs)} documents -> {len(chunk_list)} chunks")
    return dg.Output(
        table,
        metadata={
            "documents": dg.MetadataValue.int(len(docs)),
            "chunks": dg.MetadataValue.int(len(chunk_list)),
            "chunks_per_document": dg.MetadataValue.float(round(per_doc, 3)),
            "max_chunk_chars": dg.MetadataValue.int(max((len(c.text) for c in chunk_list), default=0)),
            "token_budget": dg.MetadataValue.int(chunker.budget),
            "overlap_tokens": dg.MetadataValue.int(chunker.overlap),
            "tokenizer": tokenizer_model,
            "chunks_per_s": dg.MetadataValue.float(rate(len(chunk_list), seconds)),
            "duration_s": dg.MetadataValue.float(round(seconds, 3)),
            "preview": preview(table, ["chunk_id", "doc_id", "chunk_index", "text"]),
        },
    )
