"""Evaluation library: BEIR collections, trec_eval metrics, run files, significance tests, history, reports.

Independent of the orchestrator: nothing in this package imports dagster. Names are exported lazily, so
``import evals.metrics`` does not pay for importing scipy, pandas and matplotlib (about 2 s).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "BEIR_URL": "collections",
    "CollectionFormatError": "collections",
    "EvalCollection": "collections",
    "TrainSplitView": "collections",
    "download_beir": "collections",
    "load_collection": "collections",
    "read_qrels": "collections",
    "sample_collection": "collections",
    "Comparison": "compare",
    "compare_per_query": "compare",
    "compare_runs": "compare",
    "format_comparison": "compare",
    "paired_randomization_test": "compare",
    "EvalHistory": "history",
    "EvalReport": "runner",
    "evaluate_collection": "runner",
    "HEADLINE_METRICS": "metrics",
    "EvalResult": "metrics",
    "evaluate": "metrics",
    "markdown_table": "report",
    "metrics_table": "report",
    "plot_history": "report",
    "RunFormatError": "runs",
    "best_chunk_per_document": "runs",
    "rank_hits": "runs",
    "read_run": "runs",
    "write_run": "runs",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'evals' has no attribute {name!r}")
    value = getattr(import_module(f"evals.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
