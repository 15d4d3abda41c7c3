"""Ingestion assets: the corpus' documents and their chunks."""

import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from assets.corpora import CorpusUnavailableError, UnknownCorpusError
from assets.failures import fails_clearly
from assets.meta import listing, preview, rate
from assets.partitions import corpus_partitions
from assets.resources import CorporaResource, RetrievalResource
from assets.tables import (
    chunks_to_table,
    documents_to_table,
    in_document_order,
    release_read_buffers,
    rows_of_documents,
    table_model,
    table_skipped,
    table_to_documents,
    unchanged_documents,
)
from retrieval import BadInputError, read_documents
from retrieval.documents import detect_format, validate_documents
from retrieval.encoders import DenseEncoder
from retrieval.indexer import unknown_text_warning
from retrieval.wording import counted

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
        fmt = corpus.format or detect_format(source)  # as the CLI's index detects it
        docs, report = read_documents(source, fmt, policy)
    except BadInputError as exc:
        if exc.skippable:  # a record: the fail policy stopped at it
            advice = "bad input ({}); fix the record or set on_bad_input: skip"
        else:  # the source itself: no policy reads it
            advice = "cannot read its source ({}); fix the source, or its entry in the corpora file (source, format)"
        raise dg.Failure(
            description=f"corpus {corpus.name!r}: " + advice.format(exc) + corpus.detected_format_note(),
            metadata={"source": str(source), "policy": policy.value},
        ) from exc
    table = documents_to_table(docs, report.skipped)  # qdrant_index keeps what is stored for them
    seconds = time.perf_counter() - started
    for problem in report.skipped:
        context.log.warning(f"skipped {problem}")
    detected = "" if corpus.format else " (detected: the entry sets no format)"
    context.log.info(
        f"{corpus.name}: {counted(len(docs), 'document')} read from {source} as format {fmt.value!r}{detected}, "
        f"{report.skipped_count:,} skipped"
    )
    return dg.Output(
        table,
        metadata={
            "corpus": corpus.name,
            "source": dg.MetadataValue.path(str(source)),
            "format": fmt.value,
            "format_detected": corpus.format is None,
            "documents": dg.MetadataValue.int(len(docs)),
            "skipped": dg.MetadataValue.int(report.skipped_count),
            "skipped_reasons": listing([str(p) for p in report.skipped]),
            "bad_input_policy": policy.value,
            "text_chars": dg.MetadataValue.int(sum(len(d.text) for d in docs)),
            "duration_s": dg.MetadataValue.float(round(seconds, 3)),
            "preview": preview(table, ["doc_id", "title", "text"], shown=corpus.previews),
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
    """Token-budgeted chunks cut with the dense model's tokenizer (deterministic ids, content hashes), each
    carrying its document's fingerprint and chunk count. A document unchanged since the previous materialization
    (same fingerprint: text, title, metadata, chunk budget and overlap; same tokenizer) is not chunked again: its
    rows are taken from the previous table. The table is the one chunking every document gives, row for row."""
    started = time.perf_counter()
    corpus = corpora.get(context.partition_key)
    docs = validate_documents(table_to_documents(raw_documents))  # as chunking sees them (fingerprinted so)
    release_read_buffers()
    with retrieval.indexer(corpus.collection) as indexer:
        chunker = indexer.chunker
        tokenizer_model = tokenizer_of(indexer.dense)
        reused, kept = set(), None
        previous = previous_chunks(context, tokenizer_model)
        if previous is not None:
            try:
                reused = unchanged_documents(previous, {d.id: indexer.fingerprint(d) for d in docs})
                kept = rows_of_documents(previous, reused) if reused else None
            except (OSError, pa.ArrowException) as exc:
                context.log.warning(f"chunking every document: the previous chunks table is unreadable ({exc})")
                reused, kept = set(), None
            finally:
                previous.close()
        chunk_list = indexer.chunk([d for d in docs if d.id not in reused])
        if unknown := unknown_text_warning(chunk_list, indexer.dense.model_name):
            context.log.warning(unknown)
    table = chunks_to_table(chunk_list, table_skipped(raw_documents), tokenizer_model)
    if kept is not None:
        table = in_document_order(pa.concat_tables([table, kept]), [d.id for d in docs])
    seconds = time.perf_counter() - started
    rows = table.num_rows
    per_doc = rows / len(docs) if docs else 0.0
    longest = pc.max(pc.utf8_length(table.column("text"))).as_py() or 0
    context.log.info(
        f"{corpus.name}: {counted(len(docs), 'document')} -> {counted(rows, 'chunk')} "
        f"({counted(len(docs) - len(reused), 'document')} chunked, {len(reused):,} unchanged since the previous "
        "materialization)"
    )
    return dg.Output(
        table,
        metadata={
            "documents": dg.MetadataValue.int(len(docs)),
            "chunks": dg.MetadataValue.int(rows),
            "chunked_documents": dg.MetadataValue.int(len(docs) - len(reused)),
            "reused_documents": dg.MetadataValue.int(len(reused)),
            "chunks_per_document": dg.MetadataValue.float(round(per_doc, 3)),
            "max_chunk_chars": dg.MetadataValue.int(longest),
            "mostly_unknown_chunks": dg.MetadataValue.int(sum(c.unknown for c in chunk_list)),
            "token_budget": dg.MetadataValue.int(chunker.budget),
            "overlap_tokens": dg.MetadataValue.int(chunker.overlap),
            "tokenizer": tokenizer_model,
            "chunks_per_s": dg.MetadataValue.float(rate(rows, seconds)),
            "duration_s": dg.MetadataValue.float(round(seconds, 3)),
            "preview": preview(table, ["chunk_id", "doc_id", "chunk_index", "text"], shown=corpus.previews),
        },
    )


def tokenizer_of(dense: DenseEncoder) -> str:
    """What cut a chunks table: the dense model's name and content fingerprint (a model folder saved in place may
    carry another tokenizer), recorded in the table and compared with the previous table's."""
    return f"{dense.model_name} ({dense.fingerprint})"


def previous_chunks(context: dg.AssetExecutionContext, tokenizer_model: str) -> pq.ParquetFile | None:
    """The table the previous materialization of this partition wrote (the IO manager's ``path`` metadata), opened
    lazily; None when there is none, it is unreadable, or it was cut with another tokenizer (or by an earlier
    release, which did not record it): then every document is chunked."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[context.partition_key]), limit=1
    ).records
    path = records[0].asset_materialization.metadata.get("path") if records else None
    if path is None or not Path(str(path.value)).is_file():
        return None
    try:
        previous = pq.ParquetFile(str(path.value))
    except (OSError, pa.ArrowException) as exc:
        context.log.warning(f"chunking every document: the previous chunks table {path.value} is unreadable ({exc})")
        return None
    model = table_model(previous)
    if model != tokenizer_model:
        why = f"were cut with the tokenizer of {model!r}" if model else "do not say their tokenizer (earlier release)"
        context.log.info(f"chunking every document: the previous chunks {why}")
        previous.close()
        return None
    return previous
