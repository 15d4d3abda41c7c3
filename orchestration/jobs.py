"""Asset jobs: the whole graph for one corpus (``reindex``) and the evaluation alone (``evaluate``)."""

from __future__ import annotations

import dagster as dg

from assets import ALL_ASSETS, corpus_partitions, retrieval_evaluation

reindex_job = dg.define_asset_job(
    "reindex",
    selection=dg.AssetSelection.assets(*ALL_ASSETS),
    partitions_def=corpus_partitions,
    description="Read, chunk, embed, index and evaluate one corpus (partition); unchanged chunks are reused.",
)

evaluate_job = dg.define_asset_job(
    "evaluate",
    selection=dg.AssetSelection.assets(retrieval_evaluation),
    partitions_def=corpus_partitions,
    description="Evaluate every retrieval variant on one corpus' existing index.",
)
