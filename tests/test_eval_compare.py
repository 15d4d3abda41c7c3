"""Paired comparison: win/loss/tie counts and significance on constructed cases."""

import numpy as np
import pytest

from evals.compare import (
    compare_per_query,
    compare_runs,
    format_comparison,
    paired_randomization_test,
)
from evals.metrics import evaluate

QIDS = [f"q{i:02d}" for i in range(30)]


def _per_query(values):
    return {qid: {"ndcg@10": float(v)} for qid, v in zip(QIDS, values, strict=True)}


def test_clearly_better_run_is_significant():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.5, size=30)
    better = base + 0.2 + rng.uniform(-0.05, 0.05, size=30)
    c = compare_per_query(_per_query(base), _per_query(better), names=("bm25", "hybrid"))
    assert (c.wins, c.losses, c.ties) == (30, 0, 0)
    assert c.mean_diff == pytest.approx(float(np.mean(better - base)))
    assert c.p_randomization < 0.01
    assert c.p_ttest < 0.01
    assert 0.15 < c.ci_low < c.mean_diff < c.ci_high < 0.25  # the interval excludes 0 and holds the mean
    assert c.significant()
    assert (c.baseline, c.candidate, c.n_queries, c.n_resamples) == ("bm25", "hybrid", 30, 10_000)


def test_identical_runs_give_p_one_and_no_wins():
    values = _per_query(np.linspace(0, 1, 30))
    c = compare_per_query(values, values)
    assert (c.wins, c.losses, c.ties) == (0, 0, 30)
    assert c.mean_diff == 0.0
    assert c.p_randomization == 1.0
    assert c.p_ttest == 1.0
    assert c.ci_low == c.ci_high == 0.0
    assert not c.significant()


def test_tiny_noisy_difference_is_not_significant():
    base = np.linspace(0.2, 0.8, 30)
    # +-0.2 alternating, plus 0.005 everywhere: mean difference 0.005 against a spread of 0.2
    noisy = base + np.where(np.arange(30) % 2 == 0, 0.2, -0.2) + 0.005
    c = compare_per_query(_per_query(base), _per_query(noisy))
    assert (c.wins, c.losses) == (15, 15)
    assert c.mean_diff == pytest.approx(0.005)
    assert c.ci_low < -0.05 and c.ci_high > 0.05  # 30 queries this noisy cannot resolve a 0.005 difference
    assert c.p_randomization > 0.05
    assert c.p_ttest > 0.05


def test_randomization_p_matches_exact_enumeration():
    # differences 1..5: |sum| >= 15 only for all-plus and all-minus signs, 2 of 2^5 patterns
    p = paired_randomization_test([0.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], n_resamples=20_000, seed=7)
    assert p == pytest.approx(2 / 32)  # 32 patterns <= 20,000 resamples: enumerated exactly
    sampled = paired_randomization_test([0.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], n_resamples=20, seed=7)
    assert sampled == paired_randomization_test([0.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], n_resamples=20, seed=7)
    assert 1 / 21 <= sampled <= 1  # (1 + hits) / (1 + n_resamples), never 0


def test_compare_runs_evaluates_both_sides():
    qrels = {q: {f"{q}-rel": 1} for q in QIDS}
    good = {q: {f"{q}-rel": 2.0, "noise": 1.0} for q in QIDS}
    bad = {q: {"noise": 2.0, f"{q}-rel": 1.0} for q in QIDS[:20]}  # 10 queries missing: they score 0
    c = compare_runs(qrels, bad, good, metric="mrr@10")
    assert c.mean_candidate == pytest.approx(1.0)
    assert c.mean_baseline == pytest.approx(20 * 0.5 / 30)
    assert (c.wins, c.losses, c.ties) == (30, 0, 0)
    assert c.p_randomization < 0.01
    same = compare_per_query(evaluate(qrels, good), evaluate(qrels, good), metric="ndcg@10")
    assert same.p_randomization == 1.0


def test_mismatched_queries_are_rejected():
    with pytest.raises(ValueError, match="different queries"):
        compare_per_query({"q1": 0.5, "q2": 0.1}, {"q1": 0.6})
    with pytest.raises(KeyError, match="recall@100"):
        compare_per_query(_per_query(range(30)), _per_query(range(30)), metric="recall@100")


def test_format_comparison_is_a_markdown_table():
    c = compare_per_query({"q1": 0.5, "q2": 0.25}, {"q1": 0.75, "q2": 0.25}, names=("dense", "hybrid"))
    table = format_comparison([c, c])
    lines = table.splitlines()
    assert lines[0].startswith("| metric |") and len(lines) == 4
    assert "| ndcg@10 | dense | hybrid | 0.3750 | 0.5000 | +0.1250 | [+0.0000, +0.2500] | 1/0/1 |" in table


def test_one_query_is_compared_and_never_significant():
    # one judged query whose two runs differ: scipy's permutation test needs two observations and raised a bare
    # ValueError (a traceback from `hybrid-rag compare`); the exact test has two sign flips with the same |mean|
    qrels = {"q1": {"d1": 1}}
    c = compare_runs(qrels, {"q1": {"d1": 2.0, "d2": 1.0}}, {"q1": {"d2": 2.0, "d1": 1.0}}, metric="mrr@10")
    assert (c.n_queries, c.wins, c.losses) == (1, 0, 1)
    assert c.mean_diff == pytest.approx(-0.5)
    assert c.p_randomization == 1.0 and not c.significant()
    assert paired_randomization_test([0.2], [0.9]) == 1.0


def test_no_queries_is_one_clear_error():
    with pytest.raises(ValueError, match="no queries to compare"):
        compare_per_query({}, {})


def test_a_reports_variant_results_compare_directly():
    # a notebook passes report.variants["hybrid"] (a VariantResult), which raised AttributeError: 'items'
    from evals.runner import VariantResult

    qrels = {q: {f"{q}-rel": 1} for q in QIDS}
    good = evaluate(qrels, {q: {f"{q}-rel": 2.0, "x": 1.0} for q in QIDS})
    worse = evaluate(qrels, {q: {"x": 2.0, f"{q}-rel": 1.0} for q in QIDS})
    a = VariantResult("hybrid", dict(worse.mean), per_query=worse.per_query)
    b = VariantResult("hybrid+rerank", dict(good.mean), per_query=good.per_query)
    c = compare_per_query(a, b, metric="mrr@10")
    assert (
        c
        == compare_per_query(worse, good, metric="mrr@10")
        == compare_per_query(worse.per_query, good.per_query, metric="mrr@10")
    )
    assert c.wins == 30
    with pytest.raises(TypeError, match="not list"):
        compare_per_query([0.5], [0.6])
