"""The published index: readers switch to the version ``qdrant_index`` staged, once its checks passed.

It runs after the blocking checks: ``index_point_count`` always, and the evaluation gate ``ndcg_not_dropped``
for corpora with qrels. A failed check skips this step, so readers stay on the published version.
"""

import dagster as dg

from assets.evaluation import retrieval_evaluation
from assets.failures import fails_clearly
from assets.index import latest_staged, qdrant_index
from assets.ingest import GROUP
from assets.partitions import corpus_partitions
from assets.resources import CorporaResource, RetrievalResource
from retrieval.store import StoreError


@dg.asset(
    partitions_def=corpus_partitions,
    group_name=GROUP,
    deps=[qdrant_index, retrieval_evaluation],
    kinds={"qdrant"},
)
@fails_clearly
def published_index(
    context: dg.AssetExecutionContext, corpora: CorporaResource, retrieval: RetrievalResource
) -> dg.MaterializeResult:
    """Switches readers (pointer file or alias) to the staged version, then deletes versions no one holds."""
    corpus = corpora.get(context.partition_key)
    staged = latest_staged(context)
    if staged is None:
        raise dg.Failure(f"nothing staged for {corpus.collection!r}: materialize qdrant_index first")
    version = staged[0]
    with retrieval.store(corpus.collection) as store:
        previous = store.current_version()
        target = store.pinned(version)
        try:
            with store.write_lock():
                store.publish(target)
        except StoreError as exc:
            raise dg.Failure(f"cannot publish version {version} of {corpus.collection!r}: {exc}") from exc
        finally:
            target.close()  # this process lets go of it at once: readers in other processes open it next
    context.log.info(f"{corpus.collection}: readers switched from version {previous} to {version}")
    return dg.MaterializeResult(
        metadata={
            "collection": corpus.collection,
            "version": dg.MetadataValue.int(version),
            "previous_version": previous if previous is not None else "none",
        }
    )
