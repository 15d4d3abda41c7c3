"""The Dagster code location: ``dagster dev -m orchestration.definitions`` (or ``dagster dev`` with workspace.yaml).

Runs execute in one process (``in_process_executor``, recording the process and its heartbeat for
``orphaned_runs_sensor``): the embedded Qdrant engine allows one handle per data
folder and process, and the encoders are loaded once per run instead of once per step.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from assets import ALL_ASSETS, CORPORA, query_encoder
from assets.resources import CorporaResource, EvalHistoryResource, RetrievalResource
from evals.history import DEFAULT_HISTORY, HISTORY_ENV
from orchestration.jobs import adapt_job, evaluate_job, reindex_job
from orchestration.orphaned_runs import in_process_heartbeat_executor, orphaned_runs_sensor
from orchestration.parquet_io import ASSETS_DIR_ENV, ParquetIOManager, assets_dir
from orchestration.schedules import daily_evaluation, nightly_reindex
from orchestration.sensors import build_drop_folder_sensor

__all__ = ["ASSETS_DIR_ENV", "default_resources", "defs"]


def _env_or(var: str, default: str) -> str | dg.EnvVar:
    return dg.EnvVar(var) if os.environ.get(var) else default


def default_resources(**overrides: Any) -> dict[str, Any]:
    """The resources of a run; paths and Qdrant settings come from the environment when set (the assets' folder
    made absolute now: a relative one means the folder under the working directory these resources are built in)."""
    resources: dict[str, Any] = {
        "retrieval": RetrievalResource.from_env(),
        "corpora": CorporaResource(),
        "eval_history": EvalHistoryResource(path=_env_or(HISTORY_ENV, DEFAULT_HISTORY)),
        "io_manager": ParquetIOManager(base_dir=str(assets_dir())),
    }
    return {**resources, **overrides}


defs = dg.Definitions(
    assets=[*ALL_ASSETS, query_encoder],
    jobs=[reindex_job, evaluate_job, adapt_job],
    schedules=[nightly_reindex, daily_evaluation],
    sensors=[
        *(
            build_drop_folder_sensor(c.source, c.name, minimum_interval_seconds=c.watch_interval)
            for c in CORPORA.watched()
        ),
        orphaned_runs_sensor,
    ],
    resources=default_resources(),
    executor=in_process_heartbeat_executor,  # in_process_executor, with the run's process and heartbeat as tags
)
