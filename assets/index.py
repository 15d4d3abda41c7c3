"""The Qdrant index asset: the corpus' collection synced to the chunks and their precomputed vectors."""

import dagster as dg
import pyarrow as pa
from pydantic import Field

from assets.ingest import GROUP
from assets.meta import rate
from assets.partitions import corpus_partitions
from assets.tables import stale_rows, table_model, table_to_chunks, table_to_dense, table_to_sparse
from orchestration.resources import CorporaResource, RetrievalResource

POINT_COUNT_CHECK = "index_point_count"


class IndexConfig(dg.Config):
    rebuild_on_model_change: bool = Field(
        default=True, description="Drop and rebuild the collection when it was built with other models (else fail)"
    )
    allow_delete: bool = Field(
        default=False,
        description="Allow a sync that deletes more than half of the collection (or all of it, from an empty corpus)",
    )


@dg.asset(
    partitions_def=corpus_partitions,
    group_name=GROUP,
    kinds={"qdrant"},
    check_specs=[
        dg.AssetCheckSpec(
            POINT_COUNT_CHECK,
            asset="qdrant_index",
            blocking=True,
            description="The collection holds exactly one point per chunk of the `chunks` asset.",
        )
    ],
)
def qdrant_index(
    context: dg.AssetExecutionContext,
    config: IndexConfig,
    chunks: pa.Table,
    dense_vectors: pa.Table,
    sparse_vectors: pa.Table,
    corpora: CorporaResource,
    retrieval: RetrievalResource,
) -> dg.MaterializeResult:
    """Writes new and changed chunks (by content hash), deletes stale points; nothing is re-embedded here."""
    corpus = corpora.get(context.partition_key)
    for name, table in (("dense_vectors", dense_vectors), ("sparse_vectors", sparse_vectors)):
        stale = stale_rows(chunks, table)
        if stale:
            raise dg.Failure(f"{name} is out of date with chunks ({stale} rows differ): materialize {name} first")
    chunk_list = table_to_chunks(chunks)
    rebuilt = "no"
    with retrieval.indexer(corpus.collection) as indexer:
        for name, table, expected in (
            ("dense_vectors", dense_vectors, indexer.dense.model_name),
            ("sparse_vectors", sparse_vectors, indexer.sparse.name),
        ):
            if table_model(table) != expected:
                raise dg.Failure(
                    f"{name} was made with {table_model(table)!r} but settings say {expected!r}: "
                    f"materialize {name} again"
                )
        existing = indexer.store.schema()
        problems = indexer.schema().differences(existing) if existing else []
        if problems:
            if not config.rebuild_on_model_change:
                raise dg.Failure(f"collection {corpus.collection!r} was built with other models: {'; '.join(problems)}")
            context.log.warning(f"rebuilding {corpus.collection!r} as a new version: {'; '.join(problems)}")
            rebuilt = "; ".join(problems)
        vectors = (table_to_dense(dense_vectors), table_to_sparse(sparse_vectors))
        report = indexer.sync(
            chunk_list,
            vectors=vectors,
            prune=True,
            allow_delete=config.allow_delete,
            progress=False,
            rebuild=bool(problems),
        )
        points = indexer.store.count()
        location = indexer.store.location
        schema = indexer.schema()
    context.log.info(
        f"{corpus.collection}: {report.embedded} written, {report.unchanged} unchanged, {report.deleted} deleted, "
        f"{points} points"
    )
    check = dg.AssetCheckResult(
        check_name=POINT_COUNT_CHECK,
        passed=points == len(chunk_list),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"points": points, "chunks": len(chunk_list), "collection": corpus.collection},
    )
    return dg.MaterializeResult(
        metadata={
            "collection": corpus.collection,
            "location": location,
            "documents": dg.MetadataValue.int(report.documents),
            "chunks": dg.MetadataValue.int(report.chunks),
            "written": dg.MetadataValue.int(report.embedded),
            "unchanged": dg.MetadataValue.int(report.unchanged),
            "deleted": dg.MetadataValue.int(report.deleted),
            "points": dg.MetadataValue.int(points),
            "dense_model": schema.dense_model,
            "dense_dimension": dg.MetadataValue.int(schema.dense_dim),
            "sparse_model": schema.sparse_model,
            "rebuilt": rebuilt,
            "written_per_s": dg.MetadataValue.float(rate(report.embedded, report.seconds)),
            "duration_s": dg.MetadataValue.float(round(report.seconds, 3)),
        },
        check_results=[check],
    )
