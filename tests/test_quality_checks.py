"""Does fusion, and does reranking, pay off? A loss counts only when it is larger than the tolerance and
significant (its 95% bootstrap interval lies below 0 and the randomization p-value is below 0.05): the evaluation
asset's warnings and `hybrid-rag eval`."""

import numpy as np
import pytest

from assets.evaluation import CHANNELS_CHECK, RERANK_CHECK, _quality_check
from evals.compare import loss_check
from evals.runner import EvalReport, VariantResult

QIDS = [f"q{i}" for i in range(40)]
BASE = np.linspace(0.2, 0.9, 40)


def _per_query(values: np.ndarray) -> dict[str, dict[str, float]]:
    return {q: {"ndcg@10": float(v)} for q, v in zip(QIDS, values, strict=True)}


@pytest.mark.parametrize(
    ("hybrid", "passed"),
    [
        (BASE - 0.1, False),  # every query loses 0.1: significant and beyond the tolerance
        (BASE + np.where(np.arange(40) % 2 == 0, 0.25, -0.27), True),  # -0.01 on average, but noise
        (BASE - 0.004, True),  # significant, but within the tolerance
        (BASE + 0.05, True),
    ],
)
def test_a_loss_fails_only_when_larger_than_the_tolerance_and_significant(hybrid, passed) -> None:
    per_variant = {"dense": _per_query(BASE), "sparse": _per_query(BASE - 0.2), "hybrid": _per_query(hybrid)}
    check = loss_check(per_variant, ("dense", "sparse"), "hybrid", tolerance=0.005)
    assert check.passed is passed
    c = check.comparison
    assert c.baseline == "dense" and c.mean_diff == pytest.approx(float(np.mean(hybrid - BASE)))  # the better one
    assert c.ci_low <= c.mean_diff <= c.ci_high
    assert check.description.endswith("ok" if c.mean_diff >= -0.005 else "not significantly" if passed else "lower")


def test_a_missing_variant_cannot_pass() -> None:
    check = loss_check({"dense": _per_query(BASE), "hybrid": _per_query(BASE)}, ("dense", "sparse"), "hybrid")
    assert not check.passed and check.description == "cannot decide: sparse not evaluated"


def test_the_asset_check_that_cannot_decide_passes_saying_it_was_not_run() -> None:
    """variants: [hybrid] in the run config: the warning checks compare variants that were not evaluated. The UI
    must not show that as a quality warning (they fail only on a significant loss)."""
    check = loss_check({"hybrid": _per_query(BASE)}, ("dense", "sparse"), "hybrid")
    result = _quality_check(CHANNELS_CHECK, check)
    assert result.passed and result.severity.value == "WARN"
    assert result.description == "not run: dense, sparse not evaluated (the run config's variants), nothing compared"
    assert result.metadata["not_evaluated"].value == "dense, sparse"
    lower = loss_check(
        {"dense": _per_query(BASE), "sparse": _per_query(BASE), "hybrid": _per_query(BASE - 0.1)},
        ("dense", "sparse"),
        "hybrid",
    )
    assert not _quality_check(CHANNELS_CHECK, lower).passed  # a real, significant loss still warns


def test_the_report_checks_fusion_against_the_better_channel_and_reranking_against_hybrid() -> None:
    values = {"dense": BASE - 0.2, "sparse": BASE, "hybrid": BASE - 0.1, "hybrid+rerank": BASE - 0.05}
    variants = {name: VariantResult(name, {"ndcg@10": float(v.mean())}, _per_query(v)) for name, v in values.items()}
    checks = EvalReport("c", "test", "c", 1, len(QIDS), variants).quality_checks()
    assert list(checks) == [CHANNELS_CHECK, RERANK_CHECK]
    assert checks[CHANNELS_CHECK].comparison.baseline == "sparse" and not checks[CHANNELS_CHECK].passed
    assert checks[RERANK_CHECK].comparison.baseline == "hybrid" and checks[RERANK_CHECK].passed


def test_five_queries_are_too_few_for_a_significant_loss() -> None:
    """Every one of 5 queries loses: the bootstrap interval lies below 0, but the exact randomization test cannot
    go below 2/2**5 = 0.0625, so no loss is called significant, and the description says the set is too small."""
    qids = [f"q{i}" for i in range(5)]
    dense = {q: {"ndcg@10": v} for q, v in zip(qids, [0.9, 0.8, 0.7, 0.6, 0.5], strict=True)}
    hybrid = {q: {"ndcg@10": v} for q, v in zip(qids, [0.5, 0.6, 0.6, 0.3, 0.45], strict=True)}
    check = loss_check({"dense": dense, "sparse": dense, "hybrid": hybrid}, ("dense", "sparse"), "hybrid")
    c = check.comparison
    assert c.ci_high < 0 and c.p_randomization == pytest.approx(0.0625)
    assert check.passed
    assert "p = 0.0625" in check.description and "too few queries" in check.description
    assert check.description.endswith("lower, but not significantly")


def test_a_loss_the_randomization_test_does_not_confirm_is_not_significant() -> None:
    """40 queries, 36 ties and 4 large losses: the bootstrap interval lies below 0 but the sign-flip test gives
    p = 2/2**4 = 0.125: the check trusts neither alone."""
    hybrid = BASE.copy()
    hybrid[:4] -= 0.3
    per_variant = {"dense": _per_query(BASE), "sparse": _per_query(BASE), "hybrid": _per_query(hybrid)}
    check = loss_check(per_variant, ("dense", "sparse"), "hybrid")
    assert check.comparison.ci_high < 0 and check.comparison.p_randomization == pytest.approx(0.125, abs=0.02)
    assert check.passed and "too few queries" in check.description
