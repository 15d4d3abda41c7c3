"""retrieval_evaluation's run config: a value out of range fails the step in one line before anything is scored;
a mistyped ``version`` is refused when the run is launched; the launchpad lists the allowed values."""

import math

import dagster as dg
import pytest

from assets.evaluation import EvaluationConfig
from orchestration.definitions import defs


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"variants": []}, "variants: List should have at least 1 item"),
        ({"variants": ["bogus"]}, "variants: unknown 'bogus': choose from dense, sparse, hybrid, hybrid+rerank"),
        ({"variants": ["hybrid", "hybrid"]}, "names a variant twice"),
        ({"ndcg_drop_tolerance": math.nan}, "ndcg_drop_tolerance: Input should be a finite number"),
        ({"ndcg_drop_tolerance": 2.0}, "ndcg_drop_tolerance: Input should be less than or equal to 1"),
        ({"sample_queries": -1}, "sample_queries: Input should be greater than or equal to 0"),
        ({"quality_tolerance": -5.0}, "quality_tolerance: Input should be greater than or equal to 0"),
    ],
)
def test_a_bad_value_fails_the_step_in_one_line_before_the_asset_runs(config: dict, reason: str) -> None:
    """A real Dagster step with EvaluationConfig: Dagster makes the config when the step starts."""
    ran = []

    @dg.asset
    def probe(config: EvaluationConfig) -> None:
        ran.append(config)

    result = dg.materialize([probe], run_config={"ops": {"probe": {"config": config}}}, raise_on_error=False)
    assert not result.success and ran == []
    [failure] = [e.step_failure_data for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    description = failure.user_failure_data.description
    assert description.startswith("invalid retrieval_evaluation config: ") and reason in description
    assert "\n" not in description


def test_the_defaults_and_good_values_pass() -> None:
    assert EvaluationConfig().variants == ["dense", "sparse", "hybrid", "hybrid+rerank"]
    good = EvaluationConfig(variants=["hybrid"], ndcg_drop_tolerance=1.0, sample_queries=0, quality_tolerance=0.0)
    assert (good.ndcg_drop_tolerance, good.sample_queries, good.version) == (1.0, 0, "staged")


def test_a_mistyped_version_is_refused_at_launch_naming_the_allowed_values() -> None:
    job = defs.resolve_job_def("reindex")
    bad = {"ops": {"retrieval_evaluation": {"config": {"version": "publishd"}}}}
    allowed = r"version not in enum type Literal\['staged', 'published'\]"
    with pytest.raises(dg.DagsterInvalidConfigError, match=allowed):
        dg.validate_run_config(job, bad)
    dg.validate_run_config(job, {"ops": {"retrieval_evaluation": {"config": {"version": "published"}}}})
    fields = job.graph.node_named("retrieval_evaluation").definition.config_schema.config_type.fields
    assert "dense, sparse, hybrid, hybrid+rerank" in fields["variants"].description  # what the launchpad shows
