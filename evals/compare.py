"""Paired comparison of two systems on one metric: win/loss/tie counts, mean difference, significance.

Significance comes from a two-sided paired randomization (sign-flip permutation) test with a fixed seed,
the usual test for IR runs (Smucker et al., CIKM 2007), run by ``scipy.stats.permutation_test``, with the
paired t-test p-value (``scipy.stats.ttest_rel``) beside it, and a 95% bootstrap confidence interval of the
mean difference (``scipy.stats.bootstrap``, BCa, the same seed): how small a difference the query set can resolve.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy import stats

from evals.metrics import DEFAULT_K_VALUES, Qrels, RunLike, evaluate, relevant_documents
from retrieval.wording import counted


@runtime_checkable
class HasPerQuery(Protocol):
    """What holds per-query values: an :class:`EvalResult`, or a report's ``VariantResult``
    (``report.variants["hybrid"]``)."""

    @property
    def per_query(self) -> Mapping[str, Mapping[str, float]]: ...


PerQuery = HasPerQuery | Mapping[str, Mapping[str, float]] | Mapping[str, float]
TIE_TOLERANCE = 1e-12
_CHUNK = 1_000_000  # sign draws per batch, bounds memory for large query sets
ALPHA = 0.05  # the significance level of LossCheck


@dataclass(frozen=True)
class Comparison:
    """``candidate`` against ``baseline``; wins are queries where the candidate scores higher."""

    metric: str
    baseline: str
    candidate: str
    n_queries: int
    mean_baseline: float
    mean_candidate: float
    mean_diff: float
    wins: int
    losses: int
    ties: int
    p_randomization: float
    p_ttest: float
    ci_low: float  # 95% bootstrap confidence interval of mean_diff
    ci_high: float
    n_resamples: int
    seed: int

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_randomization < alpha


def paired_randomization_test(
    baseline: Iterable[float], candidate: Iterable[float], n_resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided p-value of the mean paired difference under random sign flips.

    ``p = (1 + #{|mean(flipped)| >= |mean(observed)|}) / (1 + n_resamples)``, or the exact p-value when the
    ``2**n`` sign patterns are no more than ``n_resamples``: never 0, and exactly 1 when every difference is 0.
    """
    diffs = np.asarray(list(candidate), dtype=float) - np.asarray(list(baseline), dtype=float)
    if diffs.size == 0:
        raise ValueError("no paired values to test")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    if diffs.size == 1 or np.all(np.abs(diffs) <= TIE_TOLERANCE):
        return 1.0  # one difference: both its signs have the same |mean|, so the exact p-value is 2/2
    result = stats.permutation_test(
        (diffs,),
        lambda d, axis: np.abs(np.mean(d, axis=axis)),
        permutation_type="samples",  # one sample: each difference keeps or flips its sign
        vectorized=True,
        n_resamples=n_resamples,
        batch=max(1, _CHUNK // diffs.size),
        alternative="greater",
        random_state=seed,
    )
    return float(result.pvalue)


def compare_per_query(
    baseline: PerQuery,
    candidate: PerQuery,
    metric: str = "ndcg@10",
    *,
    names: tuple[str, str] = ("baseline", "candidate"),
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """Compare per-query values (an :class:`EvalResult`, a report's ``VariantResult``, ``{qid: {metric: v}}`` or
    ``{qid: v}``). One query is never significant (p = 1: its two sign flips tie).

    Both sides must cover the same queries; evaluate both with :func:`evals.metrics.evaluate` on the same
    qrels to get that (queries without hits then score 0 on both sides).
    """
    a, b = _values(baseline, metric), _values(candidate, metric)
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(
            f"{metric}: the two sides cover different queries (only in {names[0]}: {only_a[:5]}, "
            f"only in {names[1]}: {only_b[:5]})"
        )
    if not a:
        raise ValueError(f"{metric}: no queries to compare (both sides are empty)")
    qids = sorted(a)
    x = np.array([a[q] for q in qids], dtype=float)
    y = np.array([b[q] for q in qids], dtype=float)
    diffs = y - x
    return Comparison(
        metric=metric,
        baseline=names[0],
        candidate=names[1],
        n_queries=len(qids),
        mean_baseline=float(x.mean()),
        mean_candidate=float(y.mean()),
        mean_diff=float(diffs.mean()),
        wins=int(np.count_nonzero(diffs > TIE_TOLERANCE)),
        losses=int(np.count_nonzero(diffs < -TIE_TOLERANCE)),
        ties=int(np.count_nonzero(np.abs(diffs) <= TIE_TOLERANCE)),
        p_randomization=paired_randomization_test(x, y, n_resamples, seed),
        p_ttest=_ttest(x, y),
        **_bootstrap_ci(diffs, n_resamples, seed),
        n_resamples=n_resamples,
        seed=seed,
    )


@dataclass(frozen=True)
class LossCheck:
    """Whether ``candidate`` scores below the better of some ``baselines`` by more than ``tolerance`` and
    significantly: the 95% bootstrap interval of the difference lies below 0 *and* the randomization p-value is
    below ``ALPHA`` (the bootstrap interval alone is too narrow on a few queries). ``comparison`` is None when a
    variant was not evaluated (``missing``); such a check cannot pass."""

    candidate: str
    baselines: tuple[str, ...]
    tolerance: float
    comparison: Comparison | None
    missing: tuple[str, ...] = ()

    @property
    def within_tolerance(self) -> bool:
        return self.comparison is not None and self.comparison.mean_diff >= -self.tolerance - 1e-12

    @property
    def significant(self) -> bool:
        c = self.comparison
        return c is not None and c.ci_high < 0 and c.significant(ALPHA)

    @property
    def passed(self) -> bool:
        return self.comparison is not None and (self.within_tolerance or not self.significant)

    @property
    def description(self) -> str:
        c = self.comparison
        if c is None:
            return f"cannot decide: {', '.join(self.missing)} not evaluated"
        verdict = (
            "ok" if self.within_tolerance else "lower, but not significantly" if self.passed else "significantly lower"
        )
        differing = c.wins + c.losses
        smallest = 2 / 2**differing  # the exact sign-flip test's smallest two-sided p-value
        too_few = (
            f"; too few queries to conclude: with {differing} that differ, p cannot go below {smallest:.4f}"
            if smallest >= ALPHA and not self.within_tolerance
            else ""
        )
        return (
            f"{c.candidate} {c.metric} {c.mean_candidate:.4f} vs {c.baseline} {c.mean_baseline:.4f} "
            f"(diff {c.mean_diff:+.4f}, 95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p = {c.p_randomization:.4g}, "
            f"{counted(c.n_queries, 'query')}{too_few}): {verdict}"
        )


def loss_check(
    per_variant: Mapping[str, PerQuery],
    baselines: tuple[str, ...],
    candidate: str,
    metric: str = "ndcg@10",
    tolerance: float = 0.005,
) -> LossCheck:
    """:class:`LossCheck` of ``candidate`` against the best (highest mean ``metric``) of ``baselines``."""
    missing = tuple(v for v in (*baselines, candidate) if v not in per_variant)
    if missing:
        return LossCheck(candidate, baselines, tolerance, None, missing)
    means = {v: float(np.mean(list(_values(per_variant[v], metric).values()))) for v in baselines}
    best = max(baselines, key=means.__getitem__)
    comparison = compare_per_query(per_variant[best], per_variant[candidate], metric, names=(best, candidate))
    return LossCheck(candidate, baselines, tolerance, comparison)


def compare_runs(
    qrels: Qrels,
    baseline: RunLike,
    candidate: RunLike,
    metric: str = "ndcg@10",
    *,
    ignore_identical_ids: bool = True,
    **options: Any,
) -> Comparison:
    """Evaluate two runs on ``qrels`` and compare them on ``metric`` (e.g. ``"ndcg@10"``); ``options``
    (``names``, ``n_resamples``, ``seed``) go to :func:`compare_per_query`, ``ignore_identical_ids`` to
    :func:`evals.metrics.evaluate`."""
    _, at, cutoff = metric.rpartition("@")
    if not (at and cutoff.isdigit()):
        raise ValueError(f"metric {metric!r} has no '@k' cutoff (e.g. 'ndcg@10')")
    k_values = {*DEFAULT_K_VALUES, int(cutoff)}
    base, cand = (
        evaluate(qrels, run, k_values, ignore_identical_ids=ignore_identical_ids) for run in (baseline, candidate)
    )
    return compare_per_query(base, cand, metric, **options)


def corpus_warnings(runs: Mapping[str, RunLike], doc_ids: set[str], corpus: str, most: float = 0.5) -> list[str]:
    """A warning for each of ``runs`` (by label) whose retrieved documents are mostly (over ``most``) not in the
    corpus' ``doc_ids``: a run of another collection scores near 0. None of them in the corpus raises
    :class:`~retrieval.errors.InvalidArgumentError`."""
    from retrieval.errors import InvalidArgumentError

    out = []
    for label, run in runs.items():
        retrieved = {doc for hits in run.values() for doc in hits}
        outside = len(retrieved - doc_ids) / len(retrieved) if retrieved else 0.0
        if retrieved and outside == 1.0:
            raise InvalidArgumentError(
                f"{label} retrieves none of the {counted(len(doc_ids), 'document')} of {corpus}'s corpus: it is a "
                "run of another collection; nothing compared"
            )
        if outside > most:
            out.append(
                f"{outside:.1%} of the documents {label} retrieves are not in {corpus}'s corpus: a run of another "
                "collection? They score 0"
            )
    return out


def judged_not_in_corpus_warning(qrels: Qrels, doc_ids: set[str], corpus: str) -> str | None:
    """A warning when documents judged relevant in ``qrels`` are not in the corpus' ``doc_ids`` (NFC): no run can
    retrieve them, so every run's scores are capped; None when all are there."""
    relevant = relevant_documents(qrels)
    missing = sorted(relevant - doc_ids)
    if not missing:
        return None
    return (
        f"{len(missing) / len(relevant):.1%} of the documents judged relevant (grade >= 1) are not in {corpus}'s "
        f"corpus file, e.g. {missing[:5]}: no run can retrieve them, so both runs' scores are capped"
    )


def context_differences(
    names: tuple[str, str], contexts: tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]
) -> str | None:
    """What differs between the ``contexts`` of two runs labelled ``names`` (each what produced its run:
    :func:`evals.runs.read_run_context`), as ``key (A vs B)`` items; None when they agree or one is not known."""
    a, b = contexts
    if a is None or b is None:
        return None
    differ = [f"{k} ({a.get(k, '?')} vs {b.get(k, '?')})" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return f"the runs come from other contexts ({names[0]} vs {names[1]}): {'; '.join(differ)}" if differ else None


def format_comparison(comparisons: Comparison | Iterable[Comparison]) -> str:
    """A markdown table, one row per comparison."""
    rows = [comparisons] if isinstance(comparisons, Comparison) else list(comparisons)
    lines = [
        "| metric | baseline | candidate | mean base | mean cand | diff | 95% CI | W/L/T | p (rand.) | p (t-test) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        lines.append(
            f"| {c.metric} | {c.baseline} | {c.candidate} | {c.mean_baseline:.4f} | {c.mean_candidate:.4f} "
            f"| {c.mean_diff:+.4f} | [{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {c.wins}/{c.losses}/{c.ties} "
            f"| {c.p_randomization:.4f} "
            f"| {c.p_ttest:.4f} |"
        )
    return "\n".join(lines)


def _values(side: PerQuery, metric: str) -> dict[str, float]:
    per_query = side.per_query if isinstance(side, HasPerQuery) else side
    if not isinstance(per_query, Mapping):
        raise TypeError(
            f"per-query values are an EvalResult, a report's variant (report.variants['hybrid']) or a mapping "
            f"{{query id: value}}, not {type(side).__name__}"
        )
    out: dict[str, float] = {}
    for qid, value in per_query.items():
        if isinstance(value, Mapping):
            if metric not in value:
                raise KeyError(f"query {qid!r} has no {metric!r} value (has {sorted(value)})")
            value = value[metric]
        out[str(qid)] = float(value)
    return out


def _ttest(x: np.ndarray, y: np.ndarray) -> float:
    diffs = y - x
    if np.all(np.abs(diffs) <= TIE_TOLERANCE):
        return 1.0
    if diffs.size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(y, x).pvalue)


def _bootstrap_ci(diffs: np.ndarray, n_resamples: int, seed: int) -> dict[str, float]:
    """95% BCa bootstrap interval of the mean paired difference (the mean itself when all differences are equal)."""
    if diffs.size < 2 or np.ptp(diffs) <= TIE_TOLERANCE:
        return {"ci_low": float(diffs.mean()), "ci_high": float(diffs.mean())}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = stats.bootstrap((diffs,), np.mean, n_resamples=n_resamples, random_state=seed).confidence_interval
    return {"ci_low": float(ci.low), "ci_high": float(ci.high)}
