"""Reindexing with Dagster while another process searches the same embedded collection, and the evaluation gate
refusing a worse version. Real runs of the ``reindex`` job on copies of the sample corpus, the real engine."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.event_api import PartitionKeyFilter  # the check history per partition (no public export)
from typer.testing import CliRunner

from assets import ALL_ASSETS, NDCG_CHECK
from assets.resources import CorporaResource, RetrievalResource
from evals.collections import sample_collection
from evals.history import EvalHistory
from evals.report import markdown_table
from orchestration.cli import app
from orchestration.main_job import MainJobError, run_main_job
from retrieval import RetrievalSettings, RetrievalStack
from retrieval.store import EdgeStore
from tests.test_dagster_pipeline import Sandbox

REPO = Path(__file__).resolve().parents[1]
PARTITION = "sample"  # a partition of the shipped corpora file; its corpus is redirected to a copy below
ADDED = {"_id": "new-01", "title": "Turbine coatings", "text": "The ZQ-7781 turbine blade coating resists corrosion."}
CHANGED, CHANGED_TOKEN = "sport-05", "The KV-5521 treadmill protocol measures it in the lab."
REMOVED = "bio-03"  # Tardigrades; judged by no query, so the gate passes
FAST = {"ops": {"retrieval_evaluation": {"config": {"variants": ["hybrid"]}}}}  # the gate's variant only
STEPS = ("raw_documents", "chunks", "dense_vectors", "sparse_vectors", "qdrant_index")  # up to a staged version
SANDBOX_ENV = "HYBRID_RAG_TEST_SANDBOX"
READERS = 2  # an application and, say, `hybrid-rag search`: the second one reads through a private view
QUERIES = ["ZQ-7781 turbine blade coating", "KV-5521 treadmill protocol", "tardigrades water bears survive", "mars"]

READER = """
import json, sys, time
from pathlib import Path
from retrieval import RetrievalSettings, RetrievalStack

root, collection, stop, out, queries = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
retriever = RetrievalStack(RetrievalSettings(qdrant_path=root, collection=collection, rerank=False)).retriever()
with open(out, "w") as log:
    i = 0
    while not stop.exists():
        start = time.time()
        try:
            ids = [h.doc_id for h in retriever.search(queries[i % len(queries)], k=5)]
            record = {"q": i % len(queries), "ids": ids}
        except Exception as exc:
            record = {"q": i % len(queries), "error": f"{type(exc).__name__}: {exc}"}
        log.write(json.dumps({**record, "start": start, "end": time.time()}) + "\\n")
        log.flush()
        i += 1
retriever.close()
"""


def corpus_copy(root: Path, collection: str) -> tuple[Path, Path]:
    """A copy of the sample collection under ``root`` and a corpora file pointing the partition at it."""
    data = root / "corpus"
    shutil.copytree(sample_collection().root, data)
    corpora = root / "corpora.yaml"
    corpora.write_text(
        f"corpora:\n  {PARTITION}:\n    source: {data}\n    format: beir\n    qrels: {data}\n"
        f"    collection: {collection}\n"
    )
    return data, corpora


def gated_sandbox(root: Path, collection: str) -> tuple[Sandbox, dict, Path]:
    """A sandbox under ``root`` whose partition indexes its own copy of the sample into ``collection``: the
    sandbox, its resources and the corpus folder (to change the corpus between runs)."""
    sandbox = Sandbox(root)
    data, corpora = corpus_copy(root, collection)
    return sandbox, sandbox.resources(corpora=CorporaResource(path=str(corpora))), data


def read_docs(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines() if line.strip()]


def write_docs(data: Path, docs: list[dict]) -> None:
    (data / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))


def degrade(data: Path) -> None:
    """Every document gets another one's title and text: hybrid nDCG@10 collapses."""
    docs = read_docs(data)
    contents = [(d["title"], d["text"]) for d in docs]
    random.Random(7).shuffle(contents)
    write_docs(data, [{**d, "title": title, "text": text} for d, (title, text) in zip(docs, contents, strict=True)])


def materialize(sandbox: Sandbox, resources: dict, *assets: str) -> tuple[dg.ExecuteInProcessResult, str]:
    """One run materializing ``assets`` of the partition (as the UI's Materialize does), and its failure text."""
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        result = dg.materialize(
            ALL_ASSETS,
            selection=list(assets),
            partition_key=PARTITION,
            resources=resources,
            instance=instance,
            run_config=FAST if "retrieval_evaluation" in assets else None,
            raise_on_error=False,
        )
    failures = [
        e.step_failure_data.user_failure_data.description
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE" and e.step_failure_data.user_failure_data
    ]
    return result, " ".join(f or "" for f in failures)


def accept_the_drop(sandbox: Sandbox, resources: dict) -> dg.ExecuteInProcessResult:
    """The operator accepts a refused version on purpose: evaluation (hybrid only) and publish with a tolerance of 1."""
    accept = {"ops": {"retrieval_evaluation": {"config": {"variants": ["hybrid"], "ndcg_drop_tolerance": 1.0}}}}
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        return dg.materialize(
            ALL_ASSETS,
            selection=["retrieval_evaluation", "published_index"],
            partition_key=PARTITION,
            resources=resources,
            instance=instance,
            run_config=accept,
        )


def published_version(tmp_path: Path, collection: str) -> int | None:
    store = EdgeStore(tmp_path / "index", collection)
    try:
        return store.current_version()
    finally:
        store.close()


def gate_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == NDCG_CHECK]
    return check


def materialized_at(sandbox: Sandbox, asset: str) -> tuple[float, str]:
    """Timestamp and run id of the latest materialization of ``asset`` in the partition."""
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[PARTITION]), limit=1
        ).records
    return record.timestamp, record.run_id


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def searches(log: Path) -> list[dict]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


@pytest.mark.slow
def test_reindex_run_while_other_processes_search(tmp_path: Path) -> None:
    sandbox, resources, data = gated_sandbox(tmp_path, "live")
    first = run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources)
    assert first["published"] == 1

    stop, logs = tmp_path / "stop", [tmp_path / f"searches{i}.jsonl" for i in range(READERS)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYBRID_RAG_CACHE_DIR": str(tmp_path / "cache"), "TQDM_DISABLE": "1"}
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(tmp_path / "index"), "live", str(stop), str(log), json.dumps(QUERIES)],
            cwd=REPO,
            env=env,
        )
        for log in logs
    ]
    try:
        for reader, log in zip(readers, logs, strict=True):
            wait_for(lambda r=reader, f=log: len(searches(f)) >= 20 or r.poll() is not None, 120, "first searches")
            assert reader.poll() is None, "a reader process died"
        docs = [d for d in read_docs(data) if d["_id"] != REMOVED]
        for doc in docs:
            if doc["_id"] == CHANGED:
                doc["text"] += " " + CHANGED_TOKEN
        write_docs(data, [*docs, ADDED])
        run_started = time.time()
        second = run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources)
        run_ended = time.time()
        staged_at, _ = materialized_at(sandbox, "qdrant_index")
        published_at, run_id = materialized_at(sandbox, "published_index")
        assert run_id == second["run_id"] and second["published"] == 2

        def searched_every_query_after_the_new_version(log: Path) -> bool:
            done = searches(log)
            seen = [s["end"] for s in done if s.get("ids", [None])[:1] == [ADDED["_id"]] and s["start"] > published_at]
            return bool(seen) and sum(s["start"] > min(seen) for s in done) >= 2 * len(QUERIES)

        for log in logs:
            wait_for(
                lambda f=log: searched_every_query_after_the_new_version(f), 30, "the readers to see the new version"
            )
            wait_for(lambda f=log: len(searches(f)) >= 200, 120, "200 searches")
    finally:
        stop.touch()
        for reader in readers:
            reader.wait(timeout=60)
    assert [reader.returncode for reader in readers] == [0] * READERS
    for log in logs:
        check_reader(searches(log), run_started, run_ended, staged_at, published_at)
    # The old version is deleted once the readers let go of it; the write lock and the pointer remain.
    names = sorted(p.name for p in (tmp_path / "index").iterdir() if p.name.startswith("live"))
    assert names == ["live.current.json", "live.write.lock", "live__v2"]


def check_reader(done: list[dict], run_started: float, run_ended: float, staged_at: float, published_at: float):
    """What one reader saw: no failure, no empty result, the old version until publishing, then the new one."""
    failed = [s for s in done if "error" in s]
    empty = [s for s in done if "error" not in s and not s["ids"]]
    assert not failed and not empty, (failed + empty)[:3]
    during_run = [s for s in done if run_started <= s["start"] and s["end"] <= run_ended]
    assert len(during_run) >= 50, f"only {len(during_run)} searches while the run was going"
    # The staged version is never seen before it is published (the evaluation scored it meanwhile) ...
    before = [s for s in done if s["end"] < published_at - 0.5]
    assert sum(s["start"] > staged_at for s in before) >= 5
    assert not any(ADDED["_id"] in s["ids"] for s in before)
    # ... and is seen within a few seconds after: the new document, the changed one, not the removed one.
    first_new = min(s["end"] for s in done if s["ids"][:1] == [ADDED["_id"]])
    assert first_new - published_at < 5.0, f"the reader followed {first_new - published_at:.1f}s after publishing"
    after = [s for s in done if s["start"] > first_new]
    by_query = {q: [s["ids"] for s in after if s["q"] == q] for q in range(len(QUERIES))}
    assert all(ids[0] == ADDED["_id"] for ids in by_query[0]) and by_query[0]
    assert all(ids[0] == CHANGED for ids in by_query[1]) and by_query[1]
    assert not any(REMOVED in ids for s_ids in by_query.values() for ids in s_ids)
    assert any(REMOVED in s["ids"] for s in before if s["q"] == 2)  # it was there before


@pytest.mark.slow
def test_gate_refuses_a_worse_version_and_readers_keep_the_published_one(tmp_path: Path) -> None:
    sandbox, resources, data = gated_sandbox(tmp_path, "gated")
    first = run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources)
    published_ndcg = first["metrics"]["hybrid"]["ndcg@10"]
    settings = RetrievalSettings(
        qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="gated", rerank=False
    )
    with RetrievalResource(cache_dir=str(tmp_path / "cache")).stack() as shared:  # the encoders runs use
        dense, sparse = shared.dense, shared.sparse
    reader = RetrievalStack(
        settings, store=EdgeStore(tmp_path / "index", "gated"), dense=dense, sparse=sparse
    ).retriever()
    queries = sample_collection().split_queries("test")
    expected = {q: [h.chunk_id for h in reader.search(text, k=5)] for q, text in list(queries.items())[:5]}

    docs = read_docs(data)
    original = (data / "corpus.jsonl").read_text()  # degrade on purpose: every document gets another one's text
    contents = [(d["title"], d["text"]) for d in docs]
    random.Random(7).shuffle(contents)
    write_docs(data, [{**d, "title": title, "text": text} for d, (title, text) in zip(docs, contents, strict=True)])
    with pytest.raises(MainJobError, match=rf"check {NDCG_CHECK} failed: hybrid ndcg@10: version 2 0\.\d+ vs "):
        run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources)

    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        [check] = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("retrieval_evaluation"), NDCG_CHECK),
            limit=1,
            partition_filter=PartitionKeyFilter(key=PARTITION),
        )
    evaluation = check.event.dagster_event.event_specific_data
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR  # failed, in the UI too
    assert (meta["evaluated_version"], meta["published_version"]) == (2, 1)
    assert meta["published"] == pytest.approx(published_ndcg) and meta["current"] < published_ndcg - 0.2
    assert "refused" in evaluation.description and meta["published_from"] == "scored in this run"
    table = markdown_table(EvalHistory(sandbox.history).records(collection=PARTITION))  # what eval-report shows
    hybrid = [row.split(" | ") for row in table.splitlines() if " | hybrid | " in row]
    assert [(row[3], row[4]) for row in hybrid] == [("1", "published"), ("2", "refused")], table
    assert float(hybrid[0][6]) == pytest.approx(published_ndcg, abs=1e-4)  # the served figure, not the refused
    _, run_id = materialized_at(sandbox, "published_index")
    assert run_id == first["run_id"]  # published_index did not run
    assert EdgeStore(tmp_path / "index", "gated").current_version() == 1
    assert {q: [h.chunk_id for h in reader.search(queries[q], k=5)] for q in expected} == expected

    (data / "corpus.jsonl").write_text(original)  # fixed, and one unrelated document more: a change to publish
    extra = {"_id": "misc-99", "title": "Warehouse", "text": "Shelf 12 holds crates of spare bolts and hinges."}
    write_docs(data, [*read_docs(data), extra])  # (the original alone equals version 1: nothing would be staged)
    assert run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources)["published"] == 3
    assert {q: [h.chunk_id for h in reader.search(queries[q], k=5)] for q in expected} == expected
    assert reader.store.current_version() == 3
    assert sorted(p.name for p in (tmp_path / "index").iterdir() if p.is_dir()) == ["gated__v3"]
    reader.close()


@pytest.mark.slow
def test_a_refused_publish_names_both_ways_out_and_run_can_accept_the_drop(tmp_path: Path, monkeypatch) -> None:
    """hybrid-rag run refused by the gate: the one line says to fix the source or accept the drop, with the
    option and value that accept it (and the Dagster config key); that rerun publishes."""
    sandbox, resources, data = gated_sandbox(tmp_path, "accept")
    assert run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)["published"] == 1
    degrade(data)
    monkeypatch.setattr("orchestration.main_job.default_resources", lambda: resources)
    monkeypatch.setenv("DAGSTER_HOME", str(sandbox.home))
    refused = CliRunner().invoke(app, ["run", "--corpus", PARTITION])
    reason = " ".join(refused.stderr.split())
    assert refused.exit_code == 1 and "refused: readers stay on the published version" in reason, refused.output
    accept = re.search(rf"accept it: hybrid-rag run --corpus {PARTITION} --ndcg-drop-tolerance (0\.\d+) ", reason)
    assert accept and "if the source is wrong, fix it and run again" in reason, reason
    assert f"retrieval_evaluation config ndcg_drop_tolerance: {accept.group(1)}" in reason
    assert published_version(tmp_path, "accept") == 1
    bad = CliRunner().invoke(app, ["run", "--corpus", PARTITION, "--ndcg-drop-tolerance", "nan"])
    assert bad.exit_code == 2 and "ndcg_drop_tolerance: Input should be a finite number" in bad.stderr, bad.output
    _, refusing_run = materialized_at(sandbox, "retrieval_evaluation")
    accepted = CliRunner().invoke(app, ["run", "--corpus", PARTITION, "--ndcg-drop-tolerance", accept.group(1)])
    assert accepted.exit_code == 0, accepted.output
    index = sandbox.metadata("qdrant_index")  # the refused run's complete version, judged again: not written again
    assert (index["version"], index["written"], index["reused_version"]) == (2, 0, 2)
    assert published_version(tmp_path, "accept") == 2
    # Nor evaluated again: the same points, queries and settings; the refused run's figures, judged again, and its
    # history rows (the one evaluation of version 2) are what readers now get.
    evaluation = sandbox.metadata("retrieval_evaluation")
    assert evaluation["reused_evaluation"].endswith(f" UTC by run {refusing_run}"), evaluation
    _, accepting_run = materialized_at(sandbox, "retrieval_evaluation")
    assert any("not evaluated again, reused evaluation" in m for m in sandbox.messages(accepting_run))
    rows = EvalHistory(sandbox.history).records(collection=PARTITION, variant="hybrid")
    rows = rows[rows["metric"] == "ndcg@10"]
    assert [(c["version"], c["published"], c["dagster_run_id"]) for c in rows["context"]][1:] == [
        (2, True, refusing_run)
    ]


@pytest.mark.slow
def test_published_index_alone_does_not_publish_a_refused_version(tmp_path: Path, monkeypatch) -> None:
    """Nor does the evaluate job score it, whatever run config it was launched with."""
    sandbox, resources, data = gated_sandbox(tmp_path, "refused")
    assert run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)["published"] == 1
    degrade(data)
    with pytest.raises(MainJobError, match=f"check {NDCG_CHECK} failed: .* refused"):
        run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)

    result, failure = materialize(sandbox, resources, "published_index")  # the UI: select it, Materialize
    assert not result.success
    assert "version 2 of 'refused' (staged by run " in failure and f"was refused by {NDCG_CHECK} (hybrid" in failure
    assert published_version(tmp_path, "refused") == 1

    from orchestration.jobs import evaluate_job  # the evaluate job (and its schedule): the version readers use

    defs = dg.Definitions(assets=ALL_ASSETS, jobs=[evaluate_job], resources=resources, executor=dg.in_process_executor)
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        result = defs.resolve_job_def(evaluate_job.name).execute_in_process(partition_key=PARTITION, instance=instance)
    [evaluation] = result.asset_materializations_for_node("retrieval_evaluation")
    assert result.success and evaluation.metadata["evaluated_version"].value == "published version 1"
    assert evaluation.metadata["hybrid/ndcg@10"].value > 0.5 and gate_check(result).passed

    # Launched with a run config of its own (`dagster job execute`, GraphQL, the UI's launchpad), or re-executed
    # with the config earlier releases saved with every evaluate run (`version: published`): the same version.
    monkeypatch.setenv(SANDBOX_ENV, str(tmp_path))
    saved_by_earlier_releases = {"ops": {"retrieval_evaluation": {"config": {"version": "published"}}}}
    recorded: dict[str, list[float]] = {}
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        for run_config in ({}, FAST, saved_by_earlier_releases):
            with dg.execute_job(
                dg.reconstructable(evaluate_in_sandbox),
                instance,
                run_config=run_config,
                tags={"dagster/partition": PARTITION},
                raise_on_error=False,
            ) as result:
                [evaluation] = result.asset_materializations_for_node("retrieval_evaluation")
                assert evaluation.metadata["evaluated_version"].value == "published version 1", run_config
                assert result.success and gate_check(result).passed, run_config
                assert evaluation.metadata["hybrid/ndcg@10"].value > 0.5, run_config  # not version 2's 0.07
                rows = EvalHistory(sandbox.history).records(collection=PARTITION, variant="hybrid")
                mine = rows[[c["dagster_run_id"] == result.run_id for c in rows["context"]]]
                recorded[json.dumps(run_config)] = mine[mine["metric"] == "ndcg@10"]["value"].tolist()
    # The run without a config is the evaluate job's run again: nothing changed, nothing evaluated or recorded; the
    # other configs (other variants, the last evaluation's) evaluate version 1 again: no 0.07 of version 2 recorded.
    assert recorded.pop("{}") == [] and all(len(v) == 1 and v[0] > 0.5 for v in recorded.values()), recorded
    assert published_version(tmp_path, "refused") == 1


@pytest.mark.slow
def test_a_refused_version_accepted_on_purpose_is_recorded_as_published(tmp_path: Path) -> None:
    """The operator accepts the drop (a larger tolerance): the evaluation is unchanged, so no row is added; the
    refused rows of that version then say published, with the verdict and tolerance that let it through."""
    sandbox, resources, data = gated_sandbox(tmp_path, "accepted")
    assert run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)["published"] == 1
    degrade(data)
    with pytest.raises(MainJobError, match=f"check {NDCG_CHECK} failed: .* refused"):
        run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)
    result = accept_the_drop(sandbox, resources)
    assert result.success and gate_check(result).passed and published_version(tmp_path, "accepted") == 2
    rows = EvalHistory(sandbox.history).records(collection=PARTITION, variant="hybrid")
    rows = rows[rows["metric"] == "ndcg@10"]
    [accepted] = [c for c in rows["context"] if c["version"] == 2]  # the refusing run's evaluation, not repeated
    assert (accepted["published"], accepted["gate"], accepted.get("gate_tolerance")) == (True, "passed", 1.0)
    table = markdown_table(EvalHistory(sandbox.history).records(collection=PARTITION))  # what eval-report shows
    hybrid = [row.split(" | ") for row in table.splitlines() if " | hybrid | " in row]
    assert [(row[3], row[4]) for row in hybrid] == [("2", "published")], table  # the figure readers now get


def evaluate_in_sandbox() -> dg.JobDefinition:
    """The ``evaluate`` job on the sandbox under ``$SANDBOX_ENV``, loadable by reference as the dagster CLI does."""
    from orchestration.jobs import evaluate_job

    root = Path(os.environ[SANDBOX_ENV])
    resources = Sandbox(root).resources(corpora=CorporaResource(path=str(root / "corpora.yaml")))
    defs = dg.Definitions(assets=ALL_ASSETS, jobs=[evaluate_job], resources=resources, executor=dg.in_process_executor)
    return defs.resolve_job_def(evaluate_job.name)


def reindex_in_sandbox() -> dg.JobDefinition:
    """The ``reindex`` job on the sandbox under ``$SANDBOX_ENV`` (a re-execution loads the job by name)."""
    from orchestration.jobs import reindex_job

    root = os.environ[SANDBOX_ENV]
    resources = Sandbox(Path(root)).resources(corpora=CorporaResource(path=str(Path(root) / "corpora.yaml")))
    defs = dg.Definitions(assets=ALL_ASSETS, jobs=[reindex_job], resources=resources, executor=dg.in_process_executor)
    return defs.resolve_job_def(reindex_job.name)


@pytest.mark.slow
def test_reexecuting_a_refused_run_from_failure_refuses_again(tmp_path: Path, monkeypatch) -> None:
    sandbox, resources, data = gated_sandbox(tmp_path, "reexec")
    assert run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)["published"] == 1
    degrade(data)
    with pytest.raises(MainJobError, match=f"check {NDCG_CHECK} failed"):
        run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        [failed, _] = instance.get_runs()
        monkeypatch.setenv(SANDBOX_ENV, str(tmp_path))
        job = dg.reconstructable(reindex_in_sandbox)  # as the UI's "Re-execute from failure" does
        options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
        with dg.execute_job(
            job, instance, tags=failed.tags, reexecution_options=options, raise_on_error=False
        ) as result:
            gate = gate_check(result)
            assert not result.success and not gate.passed and "version 2" in gate.description
    assert published_version(tmp_path, "reexec") == 1


@pytest.mark.slow
def test_assets_one_at_a_time_publish_only_after_the_gate_evaluated_the_staged_version(tmp_path: Path) -> None:
    sandbox, resources, data = gated_sandbox(tmp_path, "steps")
    run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)
    original = (data / "corpus.jsonl").read_text()
    degrade(data)
    for asset in STEPS:  # each in its own run, as a user clicking through the graph
        assert materialize(sandbox, resources, asset)[0].success, asset
    result, _ = materialize(sandbox, resources, "qdrant_index")  # again, as after a run stopped before publishing
    [index] = result.asset_materializations_for_node("qdrant_index")
    meta = {k: v.value for k, v in index.metadata.items()}
    assert (meta["version"], meta["written"], meta.get("reused_version")) == (2, 0, 2), meta  # nothing written again
    assert meta["staged_by_run"] == result.run_id and meta["points"] == meta["chunks"]
    result, failure = materialize(sandbox, resources, "published_index")
    assert not result.success and "version 2 of 'steps'" in failure and "never evaluated" in failure
    result, _ = materialize(sandbox, resources, "retrieval_evaluation")
    gate = gate_check(result)  # the staged version, not the published one
    assert not gate.passed and gate.metadata["evaluated_version"].value == 2 and "refused" in gate.description
    result, failure = materialize(sandbox, resources, "published_index")
    assert not result.success and f"refused by {NDCG_CHECK}" in failure
    assert published_version(tmp_path, "steps") == 1

    extra = {"_id": "misc-99", "title": "Warehouse", "text": "Shelf 12 holds crates of spare bolts and hinges."}
    (data / "corpus.jsonl").write_text(original)  # repaired, and one document more: a version worth publishing
    write_docs(data, [*read_docs(data), extra])
    for asset in STEPS:
        assert materialize(sandbox, resources, asset)[0].success, asset
    result, _ = materialize(sandbox, resources, "retrieval_evaluation")
    gate = gate_check(result)
    meta = {k: v.value for k, v in gate.metadata.items()}
    assert gate.passed and (meta["evaluated_version"], meta["published_version"]) == (3, 1)
    assert meta["published_from"] == "scored in this run"
    result, _ = materialize(sandbox, resources, "published_index")
    assert result.success and published_version(tmp_path, "steps") == 3


@pytest.mark.slow
def test_gate_scores_a_published_version_it_has_no_evaluation_of(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from orchestration.cli import app

    sandbox, resources, data = gated_sandbox(tmp_path, "cli")
    assert run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)["published"] == 1
    extra = {"_id": "misc-99", "title": "Warehouse", "text": "Shelf 12 holds crates of spare bolts and hinges."}
    write_docs(data, [*read_docs(data), extra])
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    cli = CliRunner().invoke(app, ["index", str(data), "--format", "beir", "-c", "cli", "--sync"])
    assert cli.exit_code == 0, cli.output
    assert published_version(tmp_path, "cli") == 2  # published outside Dagster: no evaluation of it recorded

    degrade(data)
    with pytest.raises(MainJobError, match=rf"check {NDCG_CHECK} failed: hybrid ndcg@10: version 3 0\.\d+ vs "):
        run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        [check] = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("retrieval_evaluation"), NDCG_CHECK),
            limit=1,
            partition_filter=PartitionKeyFilter(key=PARTITION),
        )
    meta = {k: v.value for k, v in check.event.dagster_event.event_specific_data.metadata.items()}
    assert (meta["evaluated_version"], meta["published_version"]) == (3, 2)
    assert meta["published_from"] == "scored in this run" and meta["published"] > 0.5
    assert published_version(tmp_path, "cli") == 2


@pytest.mark.slow
def test_gate_scores_the_published_version_after_the_index_folder_was_reset(tmp_path: Path, monkeypatch) -> None:
    """A recorded evaluation of "version 1" belongs to an index that no longer exists: the gate scores the one
    readers use instead of reusing it."""
    from typer.testing import CliRunner

    from orchestration.cli import app

    sandbox, resources, data = gated_sandbox(tmp_path, "reset")
    original = (data / "corpus.jsonl").read_text()
    degrade(data)
    assert run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)["published"] == 1
    shutil.rmtree(tmp_path / "index")  # the index folder is reset; the Dagster instance keeps its records
    (data / "corpus.jsonl").write_text(original)
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    cli = CliRunner().invoke(app, ["index", str(data), "--format", "beir", "-c", "reset"])
    assert cli.exit_code == 0 and published_version(tmp_path, "reset") == 1, cli.output  # a good version 1
    degrade(data)
    with pytest.raises(MainJobError, match=rf"check {NDCG_CHECK} failed: .* refused"):
        run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)
    assert published_version(tmp_path, "reset") == 1


@pytest.mark.slow
def test_two_cli_runs_of_one_corpus_take_turns_and_each_publishes_its_own_version(tmp_path: Path) -> None:
    _, corpora = corpus_copy(tmp_path, "twice")
    home = tmp_path / "data" / "dagster_home"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HYBRID_RAG_CORPORA_FILE": str(corpora),
        "HYBRID_RAG_QDRANT_PATH": str(tmp_path / "index"),
        "HYBRID_RAG_CACHE_DIR": str(tmp_path / "cache"),
        "HYBRID_RAG_ASSETS_DIR": str(tmp_path / "assets"),
        "HYBRID_RAG_HISTORY_PATH": str(tmp_path / "history.sqlite"),
        "DAGSTER_HOME": str(home),
        "TQDM_DISABLE": "1",
    }
    command = [sys.executable, "-m", "orchestration.cli", "run", "--corpus", PARTITION]
    runs = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert not any("Traceback" in out for out in outputs), outputs
    published = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        finished = instance.get_runs()
        assert len(finished) == 2 and all(r.is_success for r in finished)
        for run in finished:  # each run evaluated and published the version it staged, not the other run's
            records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            events = [r.event_log_entry.asset_materialization for r in records.records]
            versions = {
                e.asset_key.to_user_string(): e.metadata["version"].value for e in events if "version" in e.metadata
            }
            staged = versions["qdrant_index"]
            assert versions["retrieval_evaluation"] == versions["published_index"] == staged, versions
            published.append(staged)
    assert published_version(tmp_path, "twice") == max(published)


@pytest.mark.slow
def test_qdrant_index_records_the_version_published_while_it_waited_for_the_write_lock(tmp_path: Path) -> None:
    """Another writer holds the collection's write lock and publishes a version while ``qdrant_index`` waits for
    it: the materialization names that version as the published one (the one its staged version was copied from)."""
    import logging
    import threading

    from retrieval import Document

    sandbox, resources, data = gated_sandbox(tmp_path, "waited")
    assert run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)["published"] == 1
    write_docs(data, [*read_docs(data), ADDED])  # a change: the run stages a new version
    for asset in STEPS[:-1]:
        assert materialize(sandbox, resources, asset)[0].success, asset

    waiting, holding = threading.Event(), threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for it to finish" in record.getMessage():
                waiting.set()

    def other_writer() -> None:  # e.g. `hybrid-rag index`: publishes version 2 while the run waits
        settings = RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="waited")
        with RetrievalStack(settings) as stack:
            store = stack.indexer().store
            with store.write_lock():
                holding.set()
                assert waiting.wait(120), "qdrant_index never waited for the write lock"
                stack.indexer().index([Document("other-01", "Written by another writer meanwhile.")])

    handler, logger = Waiting(), logging.getLogger("retrieval.store.edge")
    logger.addHandler(handler)
    writer = threading.Thread(target=other_writer)
    try:
        writer.start()
        assert holding.wait(120)
        result, failure = materialize(sandbox, resources, "qdrant_index")
    finally:
        writer.join(120)
        logger.removeHandler(handler)
    assert result.success, failure
    [index] = result.asset_materializations_for_node("qdrant_index")
    assert (index.metadata["published_version"].value, index.metadata["version"].value) == (2, 3)


@pytest.mark.slow  # three runs of the main job
def test_an_unchanged_run_after_a_refused_staging_names_the_run_that_staged_the_version(tmp_path: Path) -> None:
    """Version 1 published by the first run, version 2 staged by the second and refused, then the source fixed:
    the third run finds version 1 unchanged and names the first run as its stager (the partition's latest
    qdrant_index materialization names version 2, so the lookup goes further back in its history)."""
    sandbox, resources, data = gated_sandbox(tmp_path, "lookback")
    original = (data / "corpus.jsonl").read_text()
    first = run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)
    assert first["published"] == 1
    degrade(data)
    with pytest.raises(MainJobError, match=f"check {NDCG_CHECK} failed: .* refused"):
        run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)
    assert sandbox.metadata("qdrant_index")["version"] == 2
    (data / "corpus.jsonl").write_text(original)
    run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)
    index = sandbox.metadata("qdrant_index")
    assert (index["version"], index["written"]) == (1, 0)  # nothing staged: the published version holds it all
    assert index["staged_by_run"] == first["run_id"]
    assert sandbox.metadata("published_index")["staged_by_run"] == first["run_id"]
    assert published_version(tmp_path, "lookback") == 1


@pytest.mark.slow  # two runs of the main job and one of the evaluation and publishing
def test_every_evaluation_of_a_version_accepted_later_shows_it_published(tmp_path: Path) -> None:
    """Version 2 refused by an evaluation of hybrid and dense, then accepted on purpose by another one (hybrid only,
    another evaluation key: evaluated again): eval-report shows version 2 published in every row, the dense row of
    the refusing evaluation too (it stayed 'refused' though readers get version 2); that evaluation keeps its own
    verdict in its rows."""
    sandbox, resources, data = gated_sandbox(tmp_path, "reaccepted")
    assert run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=FAST)["published"] == 1
    degrade(data)
    both = {"ops": {"retrieval_evaluation": {"config": {"variants": ["hybrid", "dense"]}}}}
    with pytest.raises(MainJobError, match=f"check {NDCG_CHECK} failed: .* refused"):
        run_main_job(PARTITION, dagster_home=sandbox.home, resources=resources, run_config=both)
    result = accept_the_drop(sandbox, resources)
    assert result.success and published_version(tmp_path, "reaccepted") == 2
    rows = EvalHistory(sandbox.history).records(collection=PARTITION)
    table = markdown_table(rows)  # what eval-report shows
    shown = [row.split(" | ")[2:5] for row in table.splitlines() if " | hybrid | " in row or " | dense | " in row]
    assert sorted(shown) == [["dense", "2", "published"], ["hybrid", "2", "published"]], table
    refusing = [c for c in rows["context"] if c["version"] == 2 and c.get("gate_tolerance") != 1.0]
    assert refusing and all((c["published"], c["gate"]) == (True, "refused") for c in refusing)
