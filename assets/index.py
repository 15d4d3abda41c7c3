"""The Qdrant index asset: a new version of the corpus' collection, synced to the chunks and their vectors.

The version is staged, not published: readers keep the published one until ``published_index`` switches them,
after the point-count check (and, for corpora with qrels, the evaluation gate) passed.
"""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
from pydantic import Field

from assets.failures import fails_clearly
from assets.ingest import GROUP
from assets.meta import listing, rate
from assets.partitions import corpus_check, corpus_partitions
from assets.resources import CorporaResource, RetrievalResource
from assets.tables import (
    SparseRows,
    ids_and_hashes,
    read_dense,
    release_read_buffers,
    same_rows,
    stale_rows,
    table_encoder,
    table_encoder_details,
    table_model,
    table_skipped,
    table_to_chunks,
)
from retrieval.documents import (
    BadInputError,
    InputProblem,
    SourceFormat,
    all_skipped,
    covered_by,
    nothing_to_index,
)
from retrieval.errors import UnsafeDeleteError
from retrieval.indexer import named
from retrieval.store import QdrantStore, SchemaMismatchError
from retrieval.wording import counted

POINT_COUNT_CHECK = "index_point_count"
STAGED_VERSION = "version"  # metadata key: the staged version this materialization wrote (or found unchanged)
STAGED_BY = "staged_by_run"  # metadata key: the run that staged that version ("none": not known)
REUSED_VERSION = "reused_version"  # metadata key: the staged version reused as an earlier attempt left it ("no": none)
INDEX_KEY = dg.AssetKey("qdrant_index")
STAGER_LOOKBACK = 100  # qdrant_index materializations read back to find the run that staged an unchanged version
# What a vector table's encoder identity (its cache_key, recorded in the table) covers besides the model's name
DENSE_SETTINGS = "the dense model's content, DENSE_BACKEND, DENSE_DOCUMENT_PROMPT or its token limit"
DENSE_DETAILS = (  # the encoder's cache_details key, what it is, whether its values mean something to a user
    ("backend", "DENSE_BACKEND", True),
    ("prompt", "DENSE_DOCUMENT_PROMPT", True),
    ("max_tokens", "the dense model's token limit", True),
    ("fingerprint", "the dense model's content changed", False),
)
SPARSE_SETTINGS = (
    "BM25_K1, BM25_B, BM25_AVG_LEN or the BM25 analyzer (BM25_TOKENIZER, BM25_STOPWORDS, BM25_LANGUAGE), or the "
    "SPLADE model's content"
)


class IndexConfig(dg.Config):
    rebuild_on_model_change: bool = Field(
        default=True, description="Rebuild the collection when it was built with other models or settings (else fail)"
    )
    allow_delete: bool = Field(
        default=False,
        description=(
            "Allow a sync that deletes more than half of the collection's documents or points (or any, from an empty "
            "corpus)"
        ),
    )


@dg.asset(
    partitions_def=corpus_partitions,
    group_name=GROUP,
    kinds={"qdrant"},
    check_specs=[
        corpus_check(
            POINT_COUNT_CHECK,
            "qdrant_index",
            blocking=True,
            description="The staged version holds exactly the chunks of the `chunks` asset, plus the stored chunks "
            "kept for documents skipped as bad input.",
        )
    ],
)
@fails_clearly
def qdrant_index(
    context: dg.AssetExecutionContext,
    config: IndexConfig,
    chunks: pq.ParquetFile,
    dense_vectors: pq.ParquetFile,
    sparse_vectors: pq.ParquetFile,
    corpora: CorporaResource,
    retrieval: RetrievalResource,
) -> dg.MaterializeResult:
    """Stages a new version: a copy of the published one with new and changed chunks written (by content hash)
    and stale points deleted; nothing is re-embedded here. Vector tables made with other settings than the run's
    (their encoder's ``cache_key``) are refused. Readers keep the published version. The tables are
    read a batch at a time (the columns each needs), into the chunks and vectors the write takes. A complete
    version an earlier attempt of the same write staged and no one published (a run stopped before publishing) is
    reused (``reused_version``), not written again."""
    corpus = corpora.get(context.partition_key)
    for name, table in (("dense_vectors", dense_vectors), ("sparse_vectors", sparse_vectors)):
        if not same_rows(chunks, table):
            stale = stale_rows(ids_and_hashes(chunks), ids_and_hashes(table))
            raise dg.Failure(
                f"{name} is out of date with chunks ({counted(stale, 'row')} {'differs' if stale == 1 else 'differ'}): "
                f"materialize {name} first"
            )
    chunk_list = table_to_chunks(chunks)
    skipped = table_skipped(chunks)
    rebuilt = "no"
    with retrieval.indexer(corpus.collection) as indexer:
        if not chunk_list and indexer.store.current_version() is None:  # a first build of nothing
            raise dg.Failure(_nothing_to_publish(corpus.name, corpus.collection, corpus.source, corpus.format, skipped))
        for name, table, model, encoder, settings in (
            ("dense_vectors", dense_vectors, indexer.dense.model_name, indexer.dense, DENSE_SETTINGS),
            ("sparse_vectors", sparse_vectors, indexer.sparse.name, indexer.sparse, SPARSE_SETTINGS),
        ):
            remake = (
                f"materialize {name} again, then qdrant_index, or the whole job: hybrid-rag run --corpus {corpus.name}"
            )
            if table_model(table) != model:
                raise dg.Failure(f"{name} was made with {table_model(table)!r} but settings say {model!r}: {remake}")
            made = table_encoder(table)
            if made != encoder.cache_key:  # its vectors would be stored under settings they were not made with
                why = (
                    _changed(table_encoder_details(table), getattr(encoder, "cache_details", None))
                    or f"encoder {made}, this run's {encoder.cache_key}: {settings} differ"
                    if made
                    else "written by an earlier release, which did not record them"
                )
                raise dg.Failure(f"{name} was made with other settings than this run's ({why}): {remake}")
        try:
            indexer.store.check_schema(indexer.schema(), missing_ok=True, write=True)
        except SchemaMismatchError as exc:
            if not config.rebuild_on_model_change:
                raise dg.Failure(str(exc)) from exc
            rebuilt = "; ".join(exc.differences)
            context.log.warning(  # not the error's advice to rebuild: this is the rebuild
                f"rebuilding {corpus.collection!r} at {indexer.store.location} as a new version with the current "
                f"settings, every chunk written again (readers keep the published version until it is published): "
                f"the collection was built with other models or index-time settings ({rebuilt})"
            )
        vectors = (read_dense(dense_vectors), SparseRows(sparse_vectors))  # sparse lists made as written
        release_read_buffers()
        published = indexer.store.current_version()
        kept_points = _kept_points(indexer.store, chunk_list, skipped) if skipped and published is not None else 0
        try:
            report = indexer.sync(
                chunk_list,
                vectors=vectors,
                prune=True,
                allow_delete=config.allow_delete,
                skipped=skipped,
                progress=False,
                rebuild=rebuilt != "no",
                publish=False,
            )
        except UnsafeDeleteError as exc:  # fails the step with its message (fails_clearly), and the format's
            raise UnsafeDeleteError(f"{exc}{corpus.detected_format_note()}") from exc
        points = report.points
        published = report.published_before  # read under the write lock: another writer may have published meanwhile
        location = indexer.store.pinned(report.version or 0).location
        schema = indexer.schema()
    staged_by = context.run_id if report.changed else _stager(context, report.version)
    staged = f"staged version {report.version}" if report.changed else f"nothing changed: version {report.version}"
    before = "none yet" if published is None else published  # a first build
    if report.reused_staged:
        staged = (
            f"reused staged version {report.version}, complete and unpublished: an earlier attempt of this write "
            "(same chunks, models and settings, same published version) staged it"
        )
    context.log.info(
        f"{corpus.collection}: {staged} (published: {before}): {report.written} written, "
        f"{report.unchanged:,} unchanged, {report.deleted:,} deleted, {counted(points, 'point')}"
        + (f"; deleted documents: {named(report.deleted_documents)}" if report.deleted_documents else "")
    )
    check = point_count_check(corpus.collection, report.version or 0, points, len(chunk_list), kept_points)
    return dg.MaterializeResult(
        metadata={
            "collection": corpus.collection,
            "location": location,
            STAGED_VERSION: dg.MetadataValue.int(report.version or 0),
            STAGED_BY: staged_by or "none",
            REUSED_VERSION: dg.MetadataValue.int(report.version or 0) if report.reused_staged else "no",
            "published_version": published if published is not None else "none",
            "documents": dg.MetadataValue.int(report.documents),
            "chunks": dg.MetadataValue.int(report.chunks),
            "written": dg.MetadataValue.int(report.written),
            "unchanged": dg.MetadataValue.int(report.unchanged),
            "deleted": dg.MetadataValue.int(report.deleted),
            "deleted_documents": listing(report.deleted_documents),
            "deleted_document_count": dg.MetadataValue.int(len(report.deleted_documents)),
            "kept_documents": dg.MetadataValue.int(report.kept),
            "skipped_records": dg.MetadataValue.int(len(skipped)),
            "points": dg.MetadataValue.int(points),
            "dense_model": schema.dense_model,
            "dense_dimension": dg.MetadataValue.int(schema.dense_dim),
            "sparse_model": schema.sparse_model,
            "rebuilt": rebuilt,
            "written_per_s": dg.MetadataValue.float(rate(report.written, report.seconds)),
            "duration_s": dg.MetadataValue.float(round(report.seconds, 3)),
        },
        check_results=[check],
    )


def _changed(made: dict | None, now: dict | None) -> str | None:
    """The dense settings a vector table was made with that differ from this run's (None: not recorded, or none of
    them differs, e.g. the ONNX export recipe did). A backend's vectors are its own (torch and onnx agree within
    2e-7, not bit for bit): the embedding cache keeps them apart, and so does ``qdrant_index``."""
    if not made or not now:
        return None
    changed = [
        f"{label} {made.get(key)!r}, this run's {now.get(key)!r}" if shown else label
        for key, label, shown in DENSE_DETAILS
        if made.get(key) != now.get(key)
    ]
    return "; ".join(changed) or None


def point_count_check(collection: str, version: int, points: int, chunks: int, kept: int) -> dg.AssetCheckResult:
    """The blocking ``index_point_count`` check: the staged version holds exactly ``chunks`` (this run's) plus
    ``kept`` (the stored chunks of documents skipped as bad input) points; else publishing is blocked."""
    expected = chunks + kept
    passed = points == expected
    description = (
        f"version {version} of {collection!r} holds {counted(points, 'point')}: {counted(chunks, 'chunk')} + "
        f"{kept:,} kept for skipped input"
        if passed
        else f"version {version} of {collection!r} holds {counted(points, 'point')}, expected {expected:,} "
        f"({counted(chunks, 'chunk')} + {kept:,} kept for skipped input): points were lost or added while it was "
        "written, so it is not published (readers stay on the published version); run again"
    )
    return dg.AssetCheckResult(
        check_name=POINT_COUNT_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "points": dg.MetadataValue.int(points),
            "chunks": dg.MetadataValue.int(chunks),
            "kept_points": dg.MetadataValue.int(kept),
            "collection": collection,
            "version": dg.MetadataValue.int(version),
        },
    )


def _nothing_to_publish(
    name: str, collection: str, source: Path, fmt: SourceFormat | None, skipped: list[InputProblem]
) -> str:
    """Why the first build of corpus ``name`` from ``source`` stops: it read no document (``skipped``: the records
    it left out), and an empty collection would be published."""
    try:
        why = nothing_to_index(source, fmt, skipped)
    except BadInputError:  # the source is gone meanwhile
        why = None
    said = str(why or (all_skipped(source, skipped) if skipped else f"{source}: no document read"))
    return f"corpus {name!r}: {said}; collection {collection!r} not created (an empty one would be published)"


def _kept_points(published: QdrantStore, chunks: list, skipped: list[InputProblem]) -> int:
    """The published points a sync must keep for skipped documents: those of documents absent from ``chunks``
    that were skipped as bad input (of every absent document when a skipped record had no readable id)."""
    present = {c.doc_id for c in chunks}
    any_absent = any(p.doc_id is None for p in skipped)
    stored = [doc_id for doc_id, _ in published.stored_hashes().values()]
    covered = covered_by(skipped)
    return sum(doc_id not in present and (any_absent or covered(doc_id)) for doc_id in stored)


def _stager(context: dg.AssetExecutionContext, version: int | None) -> str | None:
    """The run that staged ``version``, which this run found unchanged: the one the latest of the partition's last
    ``STAGER_LOOKBACK`` ``qdrant_index`` materializations that recorded ``version`` names (a refused staging of
    another version may lie in between); None: none recorded it, or that one names no run (the CLI published it)."""
    records = context.instance.fetch_materializations(  # this run's materialization is not recorded yet
        dg.AssetRecordsFilter(asset_key=INDEX_KEY, asset_partitions=[context.partition_key]), limit=STAGER_LOOKBACK
    ).records
    for record in records:  # newest first
        staged = _staged(record.asset_materialization, record.run_id, context.partition_key)
        if staged is not None and staged[0] == version:
            return staged[1]
    return None


@dataclass(frozen=True)
class StagedVersion:
    """A version a ``qdrant_index`` materialization recorded: its number, the run that staged it (None: not known,
    e.g. a version the CLI published that a run found unchanged), whether that materialization is this run's
    (``own``) and whether it reused the complete version an earlier attempt of the same write staged (``reused``:
    the same points, so an evaluation of them holds)."""

    version: int
    run_id: str | None
    own: bool
    reused: bool = False


def staged_version(context: dg.AssetExecutionContext) -> StagedVersion | None:
    """The version ``qdrant_index`` staged in this run, else (it did not run here) the latest one of the partition,
    whichever run staged it; None when it never ran for this partition."""
    for record in reversed(
        context.instance.get_records_for_run(context.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    ):
        materialization = record.event_log_entry.asset_materialization
        staged = _staged(materialization, context.run_id, context.partition_key)
        if staged and materialization is not None:
            reused = materialization.metadata.get(REUSED_VERSION)
            return StagedVersion(*staged, own=True, reused=reused is not None and reused.value == staged[0])
    return latest_staged(context)


def latest_staged(context: dg.AssetExecutionContext) -> StagedVersion | None:
    """The version the latest ``qdrant_index`` materialization of this partition staged, and the run that did it."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=INDEX_KEY, asset_partitions=[context.partition_key]), limit=1
    ).records
    if not records:
        return None
    staged = _staged(records[0].asset_materialization, records[0].run_id, context.partition_key)
    return StagedVersion(*staged, own=records[0].run_id == context.run_id) if staged else None


def point_count_result(context: dg.AssetExecutionContext, staged: StagedVersion) -> dg.AssetCheckEvaluation | None:
    """The ``index_point_count`` result of the run that staged ``staged`` (None: the check did not run there, or
    no run is known to have staged it)."""
    if staged.run_id is None:
        return None
    records = context.instance.get_records_for_run(
        staged.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    for record in reversed(records):
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if (
            evaluation.asset_key == INDEX_KEY
            and evaluation.check_name == POINT_COUNT_CHECK
            and evaluation.partition in (None, context.partition_key)
        ):
            return evaluation
    return None


def replaced(context: dg.AssetExecutionContext, collection: str, staged: StagedVersion, published: int | None) -> str:
    """Why ``staged`` is gone: another writer staged over it (that writer evaluates and publishes its own)."""
    name = f"version {staged.version} of {collection!r}"
    latest = latest_staged(context)
    if latest is not None and latest.run_id not in (None, staged.run_id) and latest.version > staged.version:
        return f"{name} was replaced by version {latest.version} staged by another run ({latest.run_id})"
    if published is not None and published > staged.version:
        return f"{name} was replaced: version {published} was published after it"
    return f"{name} was replaced by a newer version another writer (a run or the CLI) is staging"


def _staged(
    materialization: dg.AssetMaterialization | None, run_id: str, partition: str
) -> tuple[int, str | None] | None:
    """The version a ``qdrant_index`` materialization of ``partition`` (made by run ``run_id``) recorded and the
    run that staged it (None: not known; a materialization of an earlier release names none: its own run); None:
    another asset or partition."""
    if materialization is None or materialization.asset_key != INDEX_KEY or materialization.partition != partition:
        return None
    value = materialization.metadata.get(STAGED_VERSION)
    if value is None:
        return None
    by = materialization.metadata.get(STAGED_BY)
    stager = run_id if by is None else str(by.value)
    return int(value.value), None if stager == "none" else stager
