"""The quality warnings of the evaluation asset decide on per-query figures: a loss counts only when it is larger
than the tolerance and significant (its 95% bootstrap interval lies below 0)."""

import numpy as np
import pytest

from assets.evaluation import CHANNELS_CHECK, _no_significant_loss
from evals.runner import EvalReport, VariantResult

QIDS = [f"q{i}" for i in range(40)]


def _report(**per_variant: np.ndarray) -> EvalReport:
    variants = {
        name: VariantResult(
            name,
            {"ndcg@10": float(values.mean())},
            {q: {"ndcg@10": float(v)} for q, v in zip(QIDS, values, strict=True)},
        )
        for name, values in per_variant.items()
    }
    return EvalReport("c", "test", "c", 1, len(QIDS), variants)


BASE = np.linspace(0.2, 0.9, 40)


@pytest.mark.parametrize(
    ("hybrid", "passed"),
    [
        (BASE - 0.1, False),  # every query loses 0.1: significant and beyond the tolerance
        (BASE + np.where(np.arange(40) % 2 == 0, 0.3, -0.32), True),  # -0.01 on average, but noise: not significant
        (BASE - 0.004, True),  # significant, but within the tolerance
        (BASE + 0.05, True),
    ],
)
def test_a_loss_warns_only_when_larger_than_the_tolerance_and_significant(hybrid, passed) -> None:
    report = _report(dense=BASE, sparse=BASE - 0.2, hybrid=np.clip(hybrid, 0, 1))
    result = _no_significant_loss(CHANNELS_CHECK, report, ("dense", "sparse"), "hybrid", tolerance=0.005)
    assert result.passed is passed
    meta = {k: getattr(v, "value", v) for k, v in result.metadata.items()}
    assert meta["baseline"] == "dense"  # the better channel
    assert meta["ci_low"] <= meta["diff"] <= meta["ci_high"]


def test_a_missing_variant_cannot_pass() -> None:
    result = _no_significant_loss(
        CHANNELS_CHECK, _report(dense=BASE, hybrid=BASE), ("dense", "sparse"), "hybrid", 0.005
    )
    assert not result.passed and "sparse not evaluated" in result.description
