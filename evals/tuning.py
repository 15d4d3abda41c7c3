"""Reranker tuning on a train split: a grid search over fusion settings on first-stage candidate lists
(:mod:`evals.candidates`), after training the pseudo-query encoder (:mod:`evals.training`).

Everything here takes a :class:`~evals.collections.TrainSplitView`, so held-out qrels cannot be read.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from evals.candidates import CandidateList, first_stage_lists, rerank_run
from evals.collections import TrainSplitView
from evals.metrics import evaluate
from evals.training import TrainingConfig, train_pseudo_query_encoder
from retrieval.errors import InvalidArgumentError
from retrieval.rerank import EmbeddingReranker, RerankConfig
from retrieval.search import HybridRetriever
from retrieval.stack import RetrievalStack
from retrieval.wording import counted

log = logging.getLogger(__name__)
FEW_QUERIES = 10  # fewer queries to train or to tune on than this: the choice is noise (a warning says so)


@dataclass
class TuningResult:
    best: RerankConfig
    best_score: float
    baseline_score: float
    table: list[tuple[float, RerankConfig]]


def grid_search(
    view: TrainSplitView,
    lists: Sequence[CandidateList],
    reranker: EmbeddingReranker,
    grid: dict[str, Iterable],
    metric: str = "ndcg@10",
) -> TuningResult:
    """Try every combination of ``grid`` (RerankConfig fields) on the train split; keep the best.

    The first-stage ranking is the baseline: a configuration must beat it to be chosen, otherwise the
    returned config has ``weight=0`` (reranking then leaves the first-stage order unchanged).
    """
    qrels = view.qrels()
    baseline = evaluate(qrels, rerank_run(lists, None)).mean[metric]
    keys = list(grid)
    table = []
    for values in itertools.product(*(list(grid[k]) for k in keys)):
        config = replace(reranker.config, **dict(zip(keys, values, strict=True)))
        candidate = EmbeddingReranker(reranker.dense, config, query_encoder=reranker.query_encoder)
        table.append((evaluate(qrels, rerank_run(lists, candidate)).mean[metric], config))
    table.sort(key=lambda row: -row[0])
    best_score, best = table[0]
    if best_score <= baseline:
        best, best_score = replace(reranker.config, weight=0.0), baseline
    return TuningResult(best=best, best_score=best_score, baseline_score=baseline, table=table)


def split_queries(view: TrainSplitView, dev_fraction: float = 0.25, seed: int = 7) -> tuple[list[str], list[str]]:
    """Train queries split into (fit, dev) ids: models learn on ``fit``, fusion weights are chosen on ``dev``."""
    qids = sorted(view.queries())
    random.Random(seed).shuffle(qids)
    cut = int(len(qids) * (1 - dev_fraction))
    return qids[:cut], qids[cut:]


def check_split(view: TrainSplitView, train: bool = True) -> tuple[list[str], list[str]]:
    """:func:`split_queries`, refused (:class:`~retrieval.errors.InvalidArgumentError`) when the split has no
    relevant judgement or leaves no query to train on (``train``) or to tune on; a warning when either part is
    smaller than :data:`FEW_QUERIES`."""
    qrels = view.qrels()
    relevant = sum(any(grade > 0 for grade in docs.values()) for docs in qrels.values())
    where = f"{view.name}/{view.split}"
    if not relevant:
        raise InvalidArgumentError(f"{where}: no relevant judgement (every grade is 0): nothing to train or tune on")
    fit, dev = split_queries(view)
    if not dev or (train and not fit):
        needed = 2 if train else 1
        raise InvalidArgumentError(
            f"{where}: {counted(len(qrels), 'judged query')}, too few to split into queries to train on and "
            f"queries to tune on (three quarters and a quarter): at least {needed} needed"
        )
    parts = (len(fit), len(dev)) if train else (len(dev),)
    if min(parts) < FEW_QUERIES:
        trained = f"{len(fit):,} to train on and " if train else ""
        log.warning(
            f"{where}: only {trained}{counted(len(dev), 'query')} to tune on (of {len(qrels):,}; {relevant:,} with a "
            f"relevant document): the settings chosen are little better than a guess"
        )
    return fit, dev


DEFAULT_GRID = {"weight": [0.2, 0.35, 0.5, 0.65, 0.8], "feedback_k": [0, 2, 5], "beta": [0.5, 1.0]}


@dataclass
class RerankerProfile:
    """What tuning chose for one collection, as ``HYBRID_RAG_*`` settings, and how it scored on dev queries."""

    config: RerankConfig
    query_model: str | None
    dev_baseline: float
    dev_first_stage: float
    dev_reranked: float
    fit_queries: int
    dev_queries: int

    def env(self) -> dict[str, str]:
        c = self.config
        values = {
            "HYBRID_RAG_RERANK": "true" if c.weight > 0 else "false",
            "HYBRID_RAG_RERANK_MODE": c.mode.value,
            "HYBRID_RAG_RERANK_WEIGHT": repr(c.weight),
            "HYBRID_RAG_RERANK_FEEDBACK_K": str(c.feedback_k),
            "HYBRID_RAG_RERANK_FEEDBACK_BETA": repr(c.beta),
        }
        if self.query_model:
            values["HYBRID_RAG_QUERY_MODEL"] = self.query_model
        return values

    def write_env(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            f"# tuned on the train split; dev nDCG@10: hybrid {self.dev_baseline:.4f}, with the trained query "
            f"encoder {self.dev_first_stage:.4f}, reranked {self.dev_reranked:.4f}"
        ]
        lines += [f"{k}={v}" for k, v in self.env().items()]
        path.write_text("\n".join(lines) + "\n")
        return path


def tune_reranker(
    view: TrainSplitView,
    retriever: HybridRetriever,
    out_dir: str | Path,
    *,
    train: bool = True,
    epochs: int = 4,
    learning_rate: float = 3e-5,
    grid: dict[str, Iterable] | None = None,
) -> RerankerProfile:
    """Train the query encoder on part of the train split (the fit queries), then pick the reranker's fusion
    settings on the rest (the dev queries). The test split is never read."""
    fit, dev = check_split(view, train)
    queries = view.queries()
    dev_queries = {q: queries[q] for q in dev}
    dev_qrels = _Subset(view, set(dev))
    dev_baseline = evaluate(dev_qrels.qrels(), rerank_run(first_stage_lists(retriever, dev_queries), None))
    tuned = retriever
    query_model = None
    if train:
        model_dir = (Path(out_dir) / "query-encoder").resolve()
        fit_lists = first_stage_lists(retriever, {q: queries[q] for q in fit})
        config = TrainingConfig(mode=retriever.reranker.config.mode, epochs=epochs, learning_rate=learning_rate)
        train_pseudo_query_encoder(
            view,
            fit_lists,
            retriever.dense.model_name,
            model_dir,
            config,
            device=retriever.settings.dense_device,
            query_prompt=retriever.dense.query_prompt,
        )
        query_model = str(model_dir)
        stack = RetrievalStack(
            retriever.settings, dense=retriever.dense, sparse=retriever.sparse, store=retriever.store
        )
        tuned = stack.retriever(query_model=query_model)
    dev_lists = first_stage_lists(tuned, dev_queries)
    result = grid_search(dev_qrels, dev_lists, tuned.reranker, grid or DEFAULT_GRID)
    return RerankerProfile(
        config=result.best,
        query_model=query_model,
        dev_baseline=dev_baseline.mean["ndcg@10"],
        dev_first_stage=result.baseline_score,
        dev_reranked=result.best_score,
        fit_queries=len(fit),
        dev_queries=len(dev),
    )


class _Subset:
    """The qrels of some train queries (the dev part), still only from the train split."""

    def __init__(self, view: TrainSplitView, qids: set[str]):
        self._qrels = {q: v for q, v in view.qrels().items() if q in qids}

    def qrels(self) -> dict[str, dict[str, int]]:
        return self._qrels
