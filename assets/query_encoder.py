"""The corpus-adapted query encoder: the query side of the dense model trained on pseudo-queries taken from the
corpus itself (titles, inverse-cloze sentences; no qrels) against the stored chunk vectors.

It is saved where searches pick it up (``RetrievalSettings.adapted_query_dir``) only when held-out
pseudo-queries say it does not hurt; otherwise any earlier adapted encoder of the corpus is removed and
searches use the dense model itself. See :mod:`evals.pseudo_queries`.
"""

import time

import dagster as dg
import pyarrow as pa
from pydantic import Field

from assets.ingest import GROUP
from assets.partitions import corpus_partitions
from assets.resources import CorporaResource, RetrievalResource
from assets.tables import stale_rows, table_model, table_to_dense, table_to_documents
from evals.pseudo_queries import AdaptConfig, adapt_query_encoder


class QueryEncoderConfig(dg.Config):
    max_queries: int = Field(default=AdaptConfig.max_queries, description="Pseudo-queries to train on")
    epochs: int = Field(default=AdaptConfig.epochs, description="Passes over the pseudo-queries")


@dg.asset(partitions_def=corpus_partitions, group_name=GROUP, kinds={"pytorch"})
def query_encoder(
    context: dg.AssetExecutionContext,
    config: QueryEncoderConfig,
    raw_documents: pa.Table,
    chunks: pa.Table,
    dense_vectors: pa.Table,
    corpora: CorporaResource,
    retrieval: RetrievalResource,
) -> dg.MaterializeResult:
    """Adapts the query encoder to the corpus without labels; used by searches only if held-out pseudo-queries
    score at least as well with it as with the dense model."""
    started = time.perf_counter()
    corpus = corpora.get(context.partition_key)
    settings = retrieval.settings(corpus.collection)
    if stale_rows(chunks, dense_vectors) or table_model(dense_vectors) not in (None, settings.dense_model):
        raise dg.Failure("dense_vectors is out of date with chunks or the dense model: materialize dense_vectors first")
    out = settings.adapted_query_dir()
    report = adapt_query_encoder(
        table_to_documents(raw_documents),
        chunks.column("doc_id").to_numpy(zero_copy_only=False),
        table_to_dense(dense_vectors),
        settings.dense_model,
        out,
        AdaptConfig(max_queries=config.max_queries, epochs=config.epochs),
    )
    verdict = "used" if report.used else "not used (held-out pseudo-queries scored lower); dense model kept"
    context.log.info(
        f"{corpus.name}: held-out pseudo-query nDCG@10 {report.base_ndcg:.4f} -> {report.adapted_ndcg:.4f}, {verdict}"
    )
    return dg.MaterializeResult(
        metadata={
            "used": report.used,
            "model_dir": dg.MetadataValue.path(str(out)) if report.used else "none",
            "base_model": settings.dense_model,
            "held_out_ndcg@10_base": dg.MetadataValue.float(round(report.base_ndcg, 4)),
            "held_out_ndcg@10_adapted": dg.MetadataValue.float(round(report.adapted_ndcg, 4)),
            "train_pseudo_queries": dg.MetadataValue.int(report.train_queries),
            "held_out_pseudo_queries": dg.MetadataValue.int(report.held_out_queries),
            "steps": dg.MetadataValue.int(report.steps),
            "final_loss": dg.MetadataValue.float(round(report.losses[-1], 4) if report.losses else 0.0),
            "duration_s": dg.MetadataValue.float(round(time.perf_counter() - started, 3)),
        }
    )
