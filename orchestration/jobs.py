"""Asset jobs: the whole graph for one corpus (``reindex``), the evaluation alone (``evaluate``) and the corpus
adaptation of the query encoder (``adapt``: it trains for minutes, so ``reindex`` leaves it out)."""

from __future__ import annotations

import dagster as dg

from assets import ALL_ASSETS, query_encoder, retrieval_evaluation
from assets.evaluation import EVALUATE_TAG, PUBLISHED

reindex_job = dg.define_asset_job(
    "reindex",
    selection=dg.AssetSelection.assets(*ALL_ASSETS),
    description="Read, chunk, embed, index and evaluate one corpus (partition); unchanged chunks are reused.",
)

evaluate_job = dg.define_asset_job(
    "evaluate",
    selection=dg.AssetSelection.assets(retrieval_evaluation),
    tags={EVALUATE_TAG: PUBLISHED},  # merged into every run's tags, whatever run config it was launched with
    description="Evaluate every retrieval variant on the version of one corpus' index that readers use.",
)

adapt_job = dg.define_asset_job(
    "adapt",
    selection=dg.AssetSelection.assets(query_encoder),
    description="Train the query encoder on pseudo-queries from the corpus (no qrels); used only if it does not hurt.",
)
