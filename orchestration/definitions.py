"""The Dagster code location: ``dagster dev -m orchestration.definitions`` (or ``dagster dev`` with workspace.yaml).

Runs execute in one process (``in_process_executor``): the embedded Qdrant engine allows one handle per data
folder and process, and the encoders are loaded once per run instead of once per step.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from assets import ALL_ASSETS, CORPORA, corpus_partitions
from assets.query_encoder import query_encoder
from orchestration.jobs import evaluate_job, reindex_job
from orchestration.parquet_io import ParquetIOManager
from orchestration.resources import (
    DEFAULT_ASSETS_DIR,
    DEFAULT_HISTORY,
    CorporaResource,
    EvalHistoryResource,
    RetrievalResource,
)
from orchestration.schedules import daily_evaluation, nightly_reindex
from orchestration.sensors import build_drop_folder_sensor

ASSETS_DIR_ENV = "HYBRID_RAG_ASSETS_DIR"
HISTORY_ENV = "HYBRID_RAG_HISTORY_PATH"


def _env_or(var: str, default: str) -> str | dg.EnvVar:
    return dg.EnvVar(var) if os.environ.get(var) else default


def default_resources(**overrides: Any) -> dict[str, Any]:
    """The resources of a run; paths and Qdrant settings come from the environment when set."""
    resources: dict[str, Any] = {
        "retrieval": RetrievalResource.from_env(),
        "corpora": CorporaResource(),
        "eval_history": EvalHistoryResource(path=_env_or(HISTORY_ENV, DEFAULT_HISTORY)),
        "io_manager": ParquetIOManager(base_dir=_env_or(ASSETS_DIR_ENV, DEFAULT_ASSETS_DIR)),
    }
    return {**resources, **overrides}


# Corpus adaptation (issue 9) is its own job: it trains for minutes, so the reindex job does not include it.
adapt_job = dg.define_asset_job("adapt", selection=[query_encoder], partitions_def=corpus_partitions)

defs = dg.Definitions(
    assets=[*ALL_ASSETS, query_encoder],
    jobs=[reindex_job, evaluate_job, adapt_job],
    schedules=[nightly_reindex, daily_evaluation],
    sensors=[build_drop_folder_sensor(c.source, c.name) for c in CORPORA.watched()],
    resources=default_resources(),
    executor=dg.in_process_executor,
)
