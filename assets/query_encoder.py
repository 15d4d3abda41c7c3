"""The corpus-adapted query encoder: the query side of the dense model trained on pseudo-queries taken from the
corpus itself (titles, inverse-cloze sentences; no qrels) against the stored chunk vectors.

It is saved where searches pick it up (``RetrievalSettings.adapted_query_dir``) only when it does not hurt:
judged by the corpus' qrels where they have a dev or train split (never test, nor the corpus' evaluation split),
searched with the default search (hybrid + rerank) on the published index, else by held-out pseudo-queries;
otherwise any earlier adapted encoder of the corpus is removed and searches use the dense model itself.
See :mod:`evals.pseudo_queries`.
"""

import shutil
import time

import dagster as dg
import pyarrow.parquet as pq
from pydantic import Field

from assets.failures import fails_clearly
from assets.ingest import GROUP
from assets.partitions import corpus_partitions
from assets.publish import published_index
from assets.resources import CorporaResource, RetrievalResource
from assets.tables import same_rows, table_model
from evals.collections import EvalCollection
from evals.pseudo_queries import (
    AdaptConfig,
    adapt_query_encoder,
    judged_queries,
    pseudo_queries,
    split_held_out,
    stored_corpus,
)
from retrieval.wording import counted


class QueryEncoderConfig(dg.Config):
    max_queries: int = Field(default=AdaptConfig.max_queries, description="Pseudo-queries to train on")
    epochs: int = Field(default=AdaptConfig.epochs, description="Passes over the pseudo-queries")
    max_negatives: int = Field(
        default=AdaptConfig.max_negatives, ge=1, description="Other chunks the softmax ranks (a uniform sample)"
    )


@dg.asset(partitions_def=corpus_partitions, group_name=GROUP, kinds={"pytorch"}, deps=[published_index])
@fails_clearly
def query_encoder(
    context: dg.AssetExecutionContext,
    config: QueryEncoderConfig,
    chunks: pq.ParquetFile,
    dense_vectors: pq.ParquetFile,
    corpora: CorporaResource,
    retrieval: RetrievalResource,
) -> dg.MaterializeResult:
    """Adapts the query encoder to the corpus without labels; used by searches only if it scores at least as well
    as the dense model on the corpus' dev/train qrels where they exist, else on held-out pseudo-queries.
    A corpus too small to draw both training and held-out pseudo-queries from is skipped (``used: false``).

    Reads what it needs as ``hybrid-rag adapt`` does, from the published index (:func:`stored_corpus`: the
    sampled documents' texts, the pool's vectors): memory is bounded by the config, not by the corpus. ``chunks``
    and ``dense_vectors`` are opened lazily, only to check that the vectors are up to date (a batch at a time)."""
    started = time.perf_counter()
    corpus = corpora.get(context.partition_key)
    settings = retrieval.settings(corpus.collection)
    model = table_model(dense_vectors.schema_arrow)
    if not same_rows(chunks, dense_vectors) or model not in (None, settings.dense_model):
        raise dg.Failure("dense_vectors is out of date with chunks or the dense model: materialize dense_vectors first")
    out = settings.adapted_query_dir()
    adapt = AdaptConfig(max_queries=config.max_queries, epochs=config.epochs, max_negatives=config.max_negatives)
    judged = None
    if corpus.qrels is not None:
        judged = judged_queries(EvalCollection(corpus.name, corpus.qrels), evaluated=corpus.split)
        if judged is None:
            context.log.warning(f"{corpus.name}: no dev or train qrels in {corpus.qrels}; pseudo-queries decide")
    with retrieval.stack(corpus.collection) as stack:
        schema = stack.check_schema(missing_ok=True)
        if schema is None:
            readers = f"adaptation and the {judged.gate} judge read" if judged else "adaptation reads"
            raise dg.Failure(
                f"{corpus.name}: {readers} the published index of {corpus.collection!r}, which does not exist yet: "
                "run the reindex job first"
            )
        docs, owners, vectors = stored_corpus(stack.store(), adapt)
        train, held = split_held_out(pseudo_queries(docs, adapt), adapt)
        if not train or not held:
            reason = (
                f"too few documents ({len(docs)}: {counted(len(train), 'pseudo-query')} to train, {len(held)} held out)"
            )
            context.log.warning(f"{corpus.name}: not adapted: {reason}; searches use the dense model itself")
            shutil.rmtree(out, ignore_errors=True)  # an encoder adapted to an earlier state of the corpus
            return dg.MaterializeResult(
                metadata={"used": False, "reason": reason, "model_dir": "none", "base_model": schema.dense_model}
            )
        report = adapt_query_encoder(
            docs,
            owners,
            vectors,
            schema.dense_model,
            out,
            adapt,
            query_prompt=stack.dense.query_prompt,  # as searches encode queries
            judged=judged,
            stack=stack,
            device=settings.dense_device,
        )
    verdict = "used" if report.used else f"not used ({report.gate} scored lower); dense model kept"
    judged_line = f", {report.gate} {report.judged_base_ndcg:.4f} -> {report.judged_adapted_ndcg:.4f}" if judged else ""
    context.log.info(
        f"{corpus.name}: held-out pseudo-query nDCG@10 {report.base_ndcg:.4f} -> {report.adapted_ndcg:.4f}"
        f"{judged_line}; {report.gate} decided: {verdict}"
    )
    judged_meta = {}
    if judged:
        judged_meta = {
            "judged_split": judged.split,
            "judged_queries": dg.MetadataValue.int(len(judged.qrels)),
            "judged_ndcg@10_base": dg.MetadataValue.float(round(report.judged_base_ndcg, 4)),
            "judged_ndcg@10_adapted": dg.MetadataValue.float(round(report.judged_adapted_ndcg, 4)),
        }
    return dg.MaterializeResult(
        metadata={
            "used": report.used,
            "gate": report.gate,
            **judged_meta,
            "model_dir": dg.MetadataValue.path(str(out)) if report.used else "none",
            "base_model": schema.dense_model,
            "chunks_ranked": dg.MetadataValue.int(len(owners)),
            "held_out_ndcg@10_base": dg.MetadataValue.float(round(report.base_ndcg, 4)),
            "held_out_ndcg@10_adapted": dg.MetadataValue.float(round(report.adapted_ndcg, 4)),
            "train_pseudo_queries": dg.MetadataValue.int(report.train_queries),
            "held_out_pseudo_queries": dg.MetadataValue.int(report.held_out_queries),
            "steps": dg.MetadataValue.int(report.steps),
            "final_loss": dg.MetadataValue.float(round(report.losses[-1], 4) if report.losses else 0.0),
            "duration_s": dg.MetadataValue.float(round(time.perf_counter() - started, 3)),
        }
    )
