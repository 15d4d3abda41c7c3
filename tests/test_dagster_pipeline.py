"""The whole asset graph on the shipped sample corpus: real encoders, embedded Qdrant, a persistent Dagster
instance, all under a temporary folder. The expensive materializations run once per session."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._core.event_api import PartitionKeyFilter  # the check history per partition (no public export)

from assets import CHANNELS_CHECK, NDCG_CHECK, POINT_COUNT_CHECK, RERANK_CHECK, corpus_partitions, raw_documents
from assets.corpora import UnknownCorpusError
from assets.evaluation import GATE, GATE_NOT_RUN
from assets.resources import CorporaResource, EvalHistoryResource, RetrievalResource
from evals.collections import sample_collection
from evals.history import EvalHistory
from evals.runner import EvalReport
from orchestration.definitions import default_resources
from orchestration.main_job import MainJobError, print_results, run_main_job
from orchestration.parquet_io import ParquetIOManager
from retrieval.store import EdgeStore

pytestmark = pytest.mark.slow  # Dagster runs of the main job

CORPUS = "sample"
VARIANTS = ("dense", "sparse", "hybrid", "hybrid+rerank")
HEADLINE = ("ndcg@10", "recall@100", "mrr@10", "map@100")
SAMPLE_DOCS = sum(1 for line in sample_collection().corpus_path.read_text().splitlines() if line.strip())

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Sandbox:
    """Every path a run writes to, under one temporary folder."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "dagster_home"
        self.assets = root / "assets"
        self.history = root / "history" / "evals.sqlite"
        self.retrieval = RetrievalResource(qdrant_path=str(root / "index"), cache_dir=str(root / "cache"))

    def resources(self, **overrides) -> dict:
        return default_resources(
            **{
                "retrieval": self.retrieval,
                "eval_history": EvalHistoryResource(path=str(self.history)),
                "io_manager": ParquetIOManager(base_dir=str(self.assets)),
                **overrides,
            }
        )

    def metadata(self, asset: str) -> dict:
        """The latest materialization metadata of ``asset`` for the sample partition, as plain values."""
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[CORPUS]), limit=1
            ).records
        assert records, f"no materialization of {asset}"
        return {k: getattr(v, "value", v) for k, v in records[0].asset_materialization.metadata.items()}

    def messages(self, run_id: str) -> list[str]:
        """The log messages of a run, as the Dagster UI and ``hybrid-rag run`` show them."""
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            return [entry.user_message for entry in instance.all_logs(run_id)]

    def evaluate(self, config: dict) -> dg.ExecuteInProcessResult:
        """Materialize only the sample partition's ``retrieval_evaluation`` with this op ``config``; it must succeed."""
        from assets import retrieval_evaluation

        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            result = dg.materialize(
                [retrieval_evaluation],
                partition_key=CORPUS,
                resources=self.resources(),
                instance=instance,
                run_config={"ops": {"retrieval_evaluation": {"config": config}}},
                raise_on_error=False,
            )
        assert result.success
        return result


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    return Sandbox(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="session")
def first_run(sandbox: Sandbox) -> dict:
    summary = run_main_job(CORPUS, dagster_home=sandbox.home, resources=sandbox.resources())
    return {"summary": summary, **{a: sandbox.metadata(a) for a in _ASSETS}}


@pytest.fixture(scope="session")
def second_run(sandbox: Sandbox, first_run: dict) -> dict:
    summary = run_main_job(CORPUS, dagster_home=sandbox.home, resources=sandbox.resources())
    return {"summary": summary, **{a: sandbox.metadata(a) for a in _ASSETS}}


_ASSETS = (
    "raw_documents",
    "chunks",
    "dense_vectors",
    "sparse_vectors",
    "qdrant_index",
    "retrieval_evaluation",
    "published_index",
)


def test_first_run_records_counts_and_models(first_run: dict, sandbox: Sandbox) -> None:
    docs, chunks = first_run["raw_documents"], first_run["chunks"]
    assert docs["documents"] == SAMPLE_DOCS and docs["skipped"] == 0
    assert chunks["documents"] == SAMPLE_DOCS and chunks["chunks"] >= SAMPLE_DOCS
    n_chunks = chunks["chunks"]
    dense, sparse = first_run["dense_vectors"], first_run["sparse_vectors"]
    assert dense["model"] == "sentence-transformers/all-MiniLM-L6-v2" and dense["dimension"] == 384
    assert dense["chunks"] == n_chunks and dense["embedded"] + dense["reused_from_cache"] == n_chunks
    assert dense["embedded"] == n_chunks  # a fresh cache
    assert sparse["model"] == "bm25" and sparse["chunks"] == n_chunks and sparse["mean_nonzeros"] > 0
    for meta in (docs, chunks, dense, sparse):
        assert meta["duration_s"] >= 0 and "dagster/row_count" in meta
    index = first_run["qdrant_index"]
    assert index["collection"] == CORPUS
    assert index["written"] == n_chunks and index["unchanged"] == 0 and index["deleted"] == 0
    assert index["points"] == n_chunks
    assert index["dense_model"] == dense["model"] and index["sparse_model"] == "bm25"
    said = sandbox.messages(first_run["summary"]["run_id"])  # was "readers switched from version None to 1"
    assert f"{CORPUS}: readers now use version 1 (its first version)" in said
    assert [m for m in said if m.startswith(f"{CORPUS}: staged version 1 (published: none yet): ")], said
    assert not [m for m in said if re.search(r"\bNone\b", m)]


def sandbox_reports(run: dict) -> Path:
    return Path(run["retrieval_evaluation"]["history"]).parent / "reports"


def test_first_run_evaluates_every_variant(first_run: dict) -> None:
    meta = first_run["retrieval_evaluation"]
    assert meta["version"] == 1 and meta["evaluated_version"] == "staged version 1"
    assert meta["split"] == "test" and meta["queries"] > 0
    for variant in VARIANTS:
        for metric in HEADLINE:
            assert 0.0 <= meta[f"{variant}/{metric}"] <= 1.0
        p50, p95 = meta[f"{variant}/latency_p50_ms"], meta[f"{variant}/latency_p95_ms"]  # the UI plots floats
        assert isinstance(p50, float) and isinstance(p95, float) and 0 < p50 <= p95
    assert meta["hybrid/ndcg@10"] > 0.5  # the sample is easy; a broken pipeline scores near 0
    assert "| hybrid |" in meta["metrics"]
    rows = [line for line in meta["sample_queries"].splitlines()[2:]]
    assert len(rows) == 3 * len(VARIANTS) and "✓" in meta["sample_queries"]  # 3 queries x variants, hits judged
    plot = Path(meta["ndcg@10_over_time"])  # a file beside the history, not a data URI in every materialization
    assert plot.read_bytes().startswith(b"\x89PNG") and plot.parent == sandbox_reports(first_run) / CORPUS
    summary = first_run["summary"]
    assert set(summary["metrics"]) == set(VARIANTS)
    assert summary["metrics"]["hybrid"]["ndcg@10"] == pytest.approx(meta["hybrid/ndcg@10"])
    report = EvalReport.from_summary(summary["report"])  # the typed report, as the asset produced it
    assert (report.collection, report.split, report.qdrant_collection, report.version) == (CORPUS, "test", CORPUS, 1)
    assert report.n_queries == meta["queries"] and report.settings["dense_model"] == meta["dense_model"]
    assert report.metrics() == summary["metrics"] and report.seconds > 0
    assert summary["checks"][POINT_COUNT_CHECK]["passed"] is True
    assert summary["checks"][NDCG_CHECK] == {
        "passed": True,
        "severity": "ERROR",
        "description": "nothing published to compare with",
        "run": True,
    }
    assert summary["version"] == summary["published"] == 1
    assert first_run["published_index"]["version"] == 1 and first_run["published_index"]["previous_version"] == "none"


def test_quality_warnings_compare_hybrid_with_its_better_channel_and_the_default_with_hybrid(first_run: dict) -> None:
    meta, checks = first_run["retrieval_evaluation"], first_run["summary"]["checks"]
    better = max(("dense", "sparse"), key=lambda v: meta[f"{v}/ndcg@10"])
    for name, baseline, candidate in ((CHANNELS_CHECK, better, "hybrid"), (RERANK_CHECK, "hybrid", "hybrid+rerank")):
        check = checks[name]
        assert check["severity"] == "WARN"  # never blocks publishing: the run succeeded and published version 1
        diff = meta[f"{candidate}/ndcg@10"] - meta[f"{baseline}/ndcg@10"]
        assert check["description"].startswith(f"{candidate} ndcg@10 {meta[f'{candidate}/ndcg@10']:.4f} vs {baseline} ")
        assert f"(diff {diff:+.4f}, 95% CI [" in check["description"]
        low, high = (float(x) for x in check["description"].split("95% CI [")[1].split("]")[0].split(", "))
        assert low <= diff + 1e-4 and diff - 1e-4 <= high
        p = float(check["description"].split(", p = ")[1].split(",")[0])  # the randomization test's
        assert check["passed"] == (diff >= -0.005 - 1e-4 or high >= 0 or p >= 0.05)


def test_parquet_assets_have_arrow_vector_types(sandbox: Sandbox, first_run: dict) -> None:
    n_chunks = first_run["chunks"]["chunks"]
    dense = pq.read_table(sandbox.assets / "dense_vectors" / f"{CORPUS}.parquet")
    assert dense.schema.field("vector").type == pa.list_(pa.float32(), 384)
    sparse = pq.read_table(sandbox.assets / "sparse_vectors" / f"{CORPUS}.parquet")
    assert sparse.schema.field("indices").type == pa.list_(pa.uint32())
    assert sparse.schema.field("values").type == pa.list_(pa.float32())
    chunks = pq.read_table(sandbox.assets / "chunks" / f"{CORPUS}.parquet")
    assert dense.num_rows == sparse.num_rows == chunks.num_rows == n_chunks
    assert dense["chunk_id"].to_pylist() == chunks["chunk_id"].to_pylist()
    assert not list(sandbox.assets.rglob("*.pkl")) and not list(sandbox.assets.rglob("*.tmp"))


def untied(hits: list) -> list[tuple[float, str]]:
    """(score, chunk id) of ``hits`` in a tie-free order, without the hits tied with the last one (which of those
    make the cut depends on the engine's insertion order)."""
    scored = sorted((-round(h.score, 5), h.chunk_id) for h in hits)
    return [(-score, chunk_id) for score, chunk_id in scored if score != scored[-1][0]]


def stored_points(stack, collection: str) -> dict[str, tuple[dict, list[float]]]:
    """point id -> (payload, document fingerprint included; dense vector) of every point in ``collection``."""
    store = stack.store(collection)
    ids = list(store.stored_chunks())
    points = store.points(ids, with_dense_vectors=True)
    return {id: (h.payload, h.dense_vector.tolist()) for id, h in points.items()}


def test_the_tables_and_the_index_equal_what_the_library_makes_in_one_go(sandbox: Sandbox, first_run: dict) -> None:
    """The assets read and write their tables a batch at a time; what they make is what the library makes from
    the whole corpus at once: the chunks table, the dense and sparse vectors, the stored points, and an index whose
    channels answer as one built by ``Indexer.index`` (the CLI's path) does. Hybrid results are not compared: RRF
    fuses ranks, and the rank among chunks tied in a channel is the engine's insertion order."""
    import numpy as np

    from assets.tables import chunks_to_table, read_dense
    from retrieval import read_documents

    docs, _ = read_documents(sample_collection().corpus_path)
    with sandbox.retrieval.stack("sample-library") as stack:
        indexer = stack.indexer()
        chunks = indexer.chunk(docs)
        stored = pq.read_table(sandbox.assets / "chunks" / f"{CORPUS}.parquet")
        assert stored.replace_schema_metadata(None).equals(chunks_to_table(chunks).replace_schema_metadata(None))
        dense = pq.read_table(sandbox.assets / "dense_vectors" / f"{CORPUS}.parquet")
        assert np.array_equal(read_dense(dense), indexer.encode_dense(chunks)[0])
        sparse = pq.read_table(sandbox.assets / "sparse_vectors" / f"{CORPUS}.parquet")
        expected = indexer.encode_sparse(chunks)
        assert sparse["indices"].to_pylist() == [v.indices for v in expected]
        assert sparse["values"].to_pylist() == [np.float32(v.values).tolist() for v in expected]
        indexer.index(docs, progress=False)
        assets_points, library_points = stored_points(stack, CORPUS), stored_points(stack, "sample-library")
        assert len(assets_points) == len(chunks) and assets_points == library_points
        library = stack.retriever("sample-library", rerank=False)
        assets = stack.retriever(CORPUS, rerank=False)
        for query in ("how do plants make energy", "ancient history of writing", "machine learning"):
            for variant in ("dense", "sparse"):
                got = untied(assets.search(query, k=10, variant=variant))
                want = untied(library.search(query, k=10, variant=variant))
                assert got == want, (query, variant)


def test_a_library_sync_of_the_assets_index_chunks_nothing(
    sandbox: Sandbox, first_run: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The points the assets wrote carry their document's fingerprint, as the library's do: a later `index --sync`
    (``Indexer.index(prune=True)``) of the same corpus finds every document stored as it is, and cuts none."""
    from retrieval import read_documents
    from retrieval.chunking import Chunker

    cut: list[str] = []
    chunk = Chunker.chunk
    monkeypatch.setattr(Chunker, "chunk", lambda self, doc: cut.append(doc.id) or chunk(self, doc))
    docs, _ = read_documents(sample_collection().corpus_path)
    with sandbox.retrieval.indexer(CORPUS) as indexer:
        report = indexer.index(docs, prune=True, progress=False)
    assert cut == [] and not report.changed and report.unchanged == first_run["chunks"]["chunks"]


def test_rematerializing_unchanged_corpus_reuses_everything(first_run: dict, second_run: dict) -> None:
    n_chunks = first_run["chunks"]["chunks"]
    dense = second_run["dense_vectors"]
    assert dense["embedded"] == 0 and dense["reused_from_cache"] == n_chunks
    index = second_run["qdrant_index"]
    assert index["written"] == 0 and index["unchanged"] == n_chunks and index["deleted"] == 0
    assert index["points"] == first_run["qdrant_index"]["points"] == n_chunks
    assert (index["version"], index["published_version"]) == (1, 1)  # nothing changed: nothing staged
    assert second_run["published_index"]["version"] == 1 and second_run["published_index"]["previous_version"] == 1
    assert second_run["summary"]["checks"][POINT_COUNT_CHECK]["passed"] is True
    assert second_run["summary"]["checks"][NDCG_CHECK]["passed"] is True


def test_an_unchanged_run_names_the_run_that_staged_the_version(first_run: dict, second_run: dict) -> None:
    """The second run staged nothing: version 1 is the first run's, read back from its qdrant_index record."""
    first_id, second_id = first_run["summary"]["run_id"], second_run["summary"]["run_id"]
    assert first_id != second_id
    for asset in ("retrieval_evaluation", "published_index", "qdrant_index"):
        assert second_run[asset]["staged_by_run"] == first_run[asset]["staged_by_run"] == first_id, asset


def test_gate_passes_the_published_version_when_nothing_changed(
    sandbox: Sandbox, first_run: dict, second_run: dict
) -> None:
    """The second run staged nothing (the corpus is unchanged): it evaluated the published version itself. The
    comparison with the published version's figure is in test_dagster_versions (a refused worse version)."""
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        [check] = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("retrieval_evaluation"), NDCG_CHECK),
            limit=1,
            partition_filter=PartitionKeyFilter(key=CORPUS),
        )
        evaluation = check.event.dagster_event.event_specific_data
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert evaluation.passed and evaluation.partition == CORPUS and evaluation.description == "the published version"
    assert (meta["evaluated_version"], meta["published_version"]) == (1, 1)
    first, second = first_run["retrieval_evaluation"], second_run["retrieval_evaluation"]
    assert second["hybrid/ndcg@10"] == pytest.approx(first["hybrid/ndcg@10"])


def test_cli_run_is_a_run_of_the_reindex_job(sandbox: Sandbox, second_run: dict, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from orchestration.cli import app

    for name, value in {
        "HYBRID_RAG_QDRANT_PATH": tmp_path / "index",
        "HYBRID_RAG_CACHE_DIR": sandbox.root / "cache",  # the embeddings of the sandbox runs are reused
        "HYBRID_RAG_ASSETS_DIR": tmp_path / "assets",
        "HYBRID_RAG_HISTORY_PATH": tmp_path / "history.sqlite",
    }.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # else the run goes to $DAGSTER_HOME
    result = CliRunner().invoke(app, ["run", "--corpus", CORPUS])
    assert result.exit_code == 0, result.output
    store = EdgeStore(tmp_path / "index", CORPUS)
    try:
        assert store.current_version() == 1 and store.count() > 0  # the run published version 1
    finally:
        store.close()
    with dg.DagsterInstance.from_config(str(tmp_path / "data" / "dagster_home")) as instance:
        [run] = instance.get_runs()
    assert run.job_name == "reindex" and run.tags["dagster/partition"] == CORPUS  # re-executable from the UI
    yaml_text = (tmp_path / "data" / "dagster_home" / "dagster.yaml").read_text()
    assert "telemetry:\n  enabled: false" in yaml_text


def test_evaluations_are_appended_to_history(sandbox: Sandbox, first_run: dict, second_run: dict) -> None:
    df = EvalHistory(sandbox.history).records(collection=CORPUS)
    ndcg = df[(df["metric"] == "ndcg@10") & (df["variant"] == "hybrid")]
    assert len(ndcg) >= 1  # one row per evaluation (an unchanged run adds none: see the next test)
    assert set(VARIANTS) <= set(df["variant"])
    assert all("dagster_run_id" in c for c in df["context"])
    assert set(df["source"]) == {"dagster"}


def test_an_unchanged_run_reports_the_previous_figures_and_a_changed_qrels_file_is_evaluated_again(
    sandbox: Sandbox, first_run: dict, second_run: dict, tmp_path: Path
) -> None:
    """Nothing the figures depend on changed (version, queries, qrels, settings, models): the second run does not
    evaluate again nor append to the history, its checks judge the previous figures; a changed judgement does."""
    from assets import retrieval_evaluation

    first, second = first_run["retrieval_evaluation"], second_run["retrieval_evaluation"]
    history = EvalHistory(sandbox.history)
    runs = {c["dagster_run_id"] for c in history.records(collection=CORPUS)["context"]}
    assert first_run["summary"]["run_id"] in runs and second_run["summary"]["run_id"] not in runs
    assert second["unchanged"].startswith("unchanged since ") and ", version 1: " in second["unchanged"]
    assert "unchanged" not in first and second["report"] == first["report"]
    assert {k: second[k] for k in first if "/" in k} == {k: first[k] for k in first if "/" in k}
    checks = second_run["summary"]["checks"]
    assert {NDCG_CHECK, CHANNELS_CHECK, RERANK_CHECK} <= set(checks) and checks[NDCG_CHECK]["passed"]
    assert checks[RERANK_CHECK]["description"] == first_run["summary"]["checks"][RERANK_CHECK]["description"]
    # another (new, emptied) history beside it: it does not hold those figures, so they are evaluated again there
    other = EvalHistoryResource(path=str(Path(sandbox.history).with_name("other.sqlite")))
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        result = dg.materialize(
            [retrieval_evaluation],
            partition_key=CORPUS,
            resources=sandbox.resources(eval_history=other),
            instance=instance,
        )
    assert result.success and "unchanged" not in sandbox.metadata("retrieval_evaluation")
    assert set(EvalHistory(other.path).records(collection=CORPUS)["variant"]) == set(VARIANTS)
    # the same corpus with one judgement changed: evaluated again, recorded
    corpus = tmp_path / "sample"
    shutil.copytree(sample_collection().root, corpus)
    qrels = corpus / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    qrels.write_text("\n".join(lines[:-1]) + "\n")  # one judgement fewer
    corpora = tmp_path / "corpora.yaml"
    corpora.write_text(f"corpora:\n  {CORPUS}:\n    source: {corpus}\n    format: beir\n    qrels: {corpus}\n")
    keys = {first["evaluation_key"]}
    # then a changed retrieval setting: evaluated again too
    rrf_60 = RetrievalResource(
        qdrant_path=sandbox.retrieval.qdrant_path, cache_dir=sandbox.retrieval.cache_dir, rrf_k=60
    )
    for retrieval in (sandbox.retrieval, rrf_60):
        rows = len(history.records(collection=CORPUS))
        with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
            result = dg.materialize(
                [retrieval_evaluation],
                partition_key=CORPUS,
                resources=sandbox.resources(corpora=CorporaResource(path=str(corpora)), retrieval=retrieval),
                instance=instance,
            )
        assert result.success
        meta = sandbox.metadata("retrieval_evaluation")
        assert "unchanged" not in meta and meta["evaluation_key"] not in keys
        keys.add(meta["evaluation_key"])
        added = history.records(collection=CORPUS).iloc[rows:]
        assert set(added["variant"]) == set(VARIANTS)
        assert {c["dagster_run_id"] for c in added["context"]} == {result.run_id}


def test_an_unchanged_evaluation_follows_the_run_config_and_checks_of_variants_not_evaluated_pass(
    sandbox: Sandbox, first_run: dict
) -> None:
    """sample_queries changes what the evaluation shows: evaluated again, not the previous table. With variants:
    [hybrid] the warning checks have nothing to compare: they pass, saying so (they fail only on a loss)."""

    def evaluate(config: dict) -> tuple[dict, dict]:
        result = sandbox.evaluate(config)
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        return sandbox.metadata("retrieval_evaluation"), checks

    def shown(meta: dict) -> set[str]:
        return {row.split(" | ")[0] for row in meta["sample_queries"].splitlines()[2:]}

    evaluate({})
    before, _ = evaluate({})  # nothing changed since the evaluation above
    assert "unchanged" in before and len(shown(before)) == 3
    one, _ = evaluate({"sample_queries": 1})
    assert "unchanged" not in one and len(shown(one)) == 1
    _, checks = evaluate({"variants": ["hybrid"]})
    for name, missing in ((CHANNELS_CHECK, "dense, sparse"), (RERANK_CHECK, "hybrid+rerank")):
        assert checks[name].passed, checks[name].description
        assert checks[name].description.startswith(f"not run: {missing} not evaluated")
    assert checks[NDCG_CHECK].passed


def test_print_results(first_run: dict, second_run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    print_results(second_run["summary"], Console(width=120, force_terminal=False))
    out = capsys.readouterr().out
    assert "hybrid+rerank" in out and "nDCG@10" in out and f"check {POINT_COUNT_CHECK}: passed" in out
    name = second_run["summary"]["collection"]
    assert f"readers keep version 1 of {name!r} (nothing changed)" in out  # an unchanged corpus
    print_results(first_run["summary"], Console(width=120, force_terminal=False))
    assert f"readers now use version 1 of {first_run['summary']['collection']!r}" in capsys.readouterr().out
    json.dumps(second_run["summary"])  # plain data, for the CLI's --json or logs


def test_missing_corpus_source_fails_only_that_partition(tmp_path: Path, sandbox: Sandbox) -> None:
    partition = next(k for k in corpus_partitions.get_partition_keys() if k != CORPUS)
    corpora = tmp_path / "corpora.yaml"
    corpora.write_text(f"corpora:\n  {partition}:\n    source: does/not/exist\n    format: beir\n")
    result = dg.materialize(
        [raw_documents],
        partition_key=partition,
        resources=sandbox.resources(corpora=CorporaResource(path=str(corpora))),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "does not exist" in failure.step_failure_data.user_failure_data.description
    with pytest.raises(MainJobError, match="does not exist"):
        run_main_job(
            partition,
            dagster_home=tmp_path / "home",
            resources=sandbox.resources(corpora=CorporaResource(path=str(corpora))),
        )


def test_unknown_corpus_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnknownCorpusError, match="unknown corpus 'no-such-corpus'; configured in .*: sample"):
        run_main_job("no-such-corpus", dagster_home=tmp_path)


def test_skipped_inputs_are_counted_with_reasons(tmp_path: Path, sandbox: Sandbox) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "good.md").write_text("# Good\nReadable text.")
    (drop / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (drop / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    corpora = tmp_path / "corpora.yaml"
    corpora.write_text(f"corpora:\n  dropbox:\n    source: {drop}\n    format: dir\n    on_bad_input: skip\n")
    result = dg.materialize(
        [raw_documents],
        partition_key="dropbox",
        resources=sandbox.resources(corpora=CorporaResource(path=str(corpora))),
        instance=dg.DagsterInstance.ephemeral(),
    )
    [event] = result.get_asset_materialization_events()
    meta = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
    assert meta["documents"] == 1 and meta["skipped"] == 2 and meta["bad_input_policy"] == "skip"
    assert "unsupported file type '.png'" in meta["skipped_reasons"] and "not valid UTF-8" in meta["skipped_reasons"]


def _read_raw_documents(tmp_path: Path, sandbox: Sandbox, entry: str) -> dg.ExecuteInJobResult:
    """``raw_documents`` of the ``dropbox`` partition configured by ``entry`` (its YAML mapping, one line)."""
    corpora = tmp_path / "corpora.yaml"
    corpora.write_text(f"corpora:\n  dropbox: {entry}\n")
    return dg.materialize(
        [raw_documents],
        partition_key="dropbox",
        resources=sandbox.resources(corpora=CorporaResource(path=str(corpora))),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_an_entry_without_format_is_read_as_the_cli_detects_it(tmp_path: Path, sandbox: Sandbox) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(2):
        (notes / f"n{i}.md").write_text(f"# Note {i}\nThe QX-{i} pump needs a new seal.")
    (tmp_path / "faq.jsonl").write_text('{"_id": "q1", "text": "How often is the seal changed?"}\n')
    for source, fmt, count in ((notes, "dir", 2), (tmp_path / "faq.jsonl", "jsonl", 1)):
        result = _read_raw_documents(tmp_path, sandbox, f"{{source: {source}}}")
        assert result.success
        [event] = result.get_asset_materialization_events()
        meta = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
        assert (meta["format"], meta["documents"]) == (fmt, count)


def _failure(result: dg.ExecuteInJobResult) -> str:
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failure.step_failure_data.user_failure_data.description


def test_a_source_no_policy_reads_is_not_called_bad_input(tmp_path: Path, sandbox: Sandbox) -> None:
    """A wrong format is the entry's mistake: ``on_bad_input: skip`` cannot fix it, so it is not advised (and
    never where it is already set); a bad record under ``fail`` still names the policy that would skip it."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "n.md").write_text("# Note\nText.")
    for policy in ("fail", "skip"):
        text = _failure(
            _read_raw_documents(tmp_path, sandbox, f"{{source: {notes}, format: beir, on_bad_input: {policy}}}")
        )
        assert text == (
            f"corpus 'dropbox': cannot read its source ({notes / 'corpus.jsonl'}: cannot open file: No such file or "
            "directory); fix the source, or its entry in the corpora file (source, format)"
        )
    (tmp_path / "faq.jsonl").write_text('{"_id": "q1", "text": "ok"}\n{"_id": "q2"}\n')
    text = _failure(_read_raw_documents(tmp_path, sandbox, f"{{source: {tmp_path / 'faq.jsonl'}, on_bad_input: fail}}"))
    assert text.startswith(f"corpus 'dropbox': bad input ({tmp_path / 'faq.jsonl'}:2: ")
    advice, note = "; fix the record or set on_bad_input: skip", "; the entry sets no format: its source is detected as"
    assert advice + note in text and "format 'jsonl'" in text  # the entry sets no format: which one was read


def test_corpus_without_qrels_publishes_after_the_point_count_check_only(
    tmp_path: Path, sandbox: Sandbox, second_run: dict
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(3):
        (notes / f"note{i}.md").write_text(f"# Note {i}\nThe QX-{i} pump needs a new seal every {i + 2} years.")
    corpora = tmp_path / "corpora.yaml"
    corpora.write_text(f"corpora:\n  dropbox:\n    source: {notes}\n    format: dir\n    collection: notes\n")
    resources = sandbox.resources(corpora=CorporaResource(path=str(corpora)))
    summary = run_main_job("dropbox", dagster_home=sandbox.home, resources=resources)
    assert not summary["evaluated"] and "publishing is gated on the index point count only" in summary["note"]
    # The blocking gate reports (else Dagster warns on every run), marked as not run: no quality gate here.
    assert set(summary["checks"]) == {POINT_COUNT_CHECK, NDCG_CHECK}
    gate_result = summary["checks"][NDCG_CHECK]
    assert gate_result["passed"] and not gate_result["run"] and "has no qrels" in gate_result["description"]
    assert summary["published"] == 1
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        history = instance.event_log_storage.get_asset_check_execution_history
        gate = dg.AssetCheckKey(dg.AssetKey("retrieval_evaluation"), NDCG_CHECK)
        dropbox_gate = history(gate, limit=10, partition_filter=PartitionKeyFilter(key="dropbox"))
        sample_gate = history(gate, limit=10, partition_filter=PartitionKeyFilter(key=CORPUS))
        count = dg.AssetCheckKey(dg.AssetKey("qdrant_index"), POINT_COUNT_CHECK)
        [dropbox_count] = history(count, limit=10, partition_filter=PartitionKeyFilter(key="dropbox"))
    [dropbox_gate_result] = dropbox_gate
    metadata = dropbox_gate_result.event.dagster_event.event_specific_data.metadata
    assert dropbox_gate_result.status.value == "SUCCEEDED" and metadata[GATE].value == GATE_NOT_RUN
    assert len(sample_gate) >= 2 and {r.event.dagster_event.event_specific_data.partition for r in sample_gate} == {
        CORPUS
    }
    assert dropbox_count.status.value == "SUCCEEDED"
    sample_meta = sandbox.metadata("retrieval_evaluation")  # the sample partition keeps its own figures
    assert sample_meta["hybrid/ndcg@10"] > 0.5 and "qrels" not in sample_meta


def test_a_collection_dropped_and_rebuilt_from_other_documents_is_evaluated_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 1 of a collection dropped and built again from other documents (numbers start again at 1, in the same
    folder) is not the version 1 evaluated before: the asset evaluates it instead of reporting the earlier figures
    as unchanged, and the two history rows say what each searched."""
    from typer.testing import CliRunner

    from orchestration.cli import app
    from tests.conftest import TINY_DOCS

    sandbox = Sandbox(tmp_path)
    sandbox.home.mkdir()
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", sandbox.retrieval.qdrant_path)
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", sandbox.retrieval.cache_dir)
    distractors = "".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in TINY_DOCS)
    (tmp_path / "plus.jsonl").write_text(sample_collection().corpus_path.read_text() + distractors)

    def cli(*args: str) -> None:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output

    def evaluate() -> dict:
        sandbox.evaluate({"variants": ["hybrid"]})
        return sandbox.metadata("retrieval_evaluation")

    cli("index", str(sample_collection().corpus_path), "-c", CORPUS)
    first = evaluate()
    cli("drop", CORPUS, "--yes")
    cli("index", str(tmp_path / "plus.jsonl"), "-c", CORPUS)
    second = evaluate()
    assert first["version"] == second["version"] == 1 and first["location"] == second["location"]
    assert "unchanged" not in second and second["evaluation_key"] != first["evaluation_key"]
    rows = EvalHistory(sandbox.history).records(collection=CORPUS, variant="hybrid")
    searched = {c["index_fingerprint"] for c in rows[rows["metric"] == "ndcg@10"]["context"]}
    assert {f.split(":")[0] for f in searched} == {str(SAMPLE_DOCS), str(SAMPLE_DOCS + len(TINY_DOCS))}
