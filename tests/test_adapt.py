"""Corpus adaptation without qrels (issue 9): pseudo-queries from the corpus, the `query_encoder` asset, the
`hybrid-rag adapt` command, and the rule that an adapted encoder is used only when held-out pseudo-queries
do not score lower with it. Real model, real embedded Qdrant, real Dagster runs on the 60-document sample."""

from __future__ import annotations

import os

import dagster as dg
import pytest
from typer.testing import CliRunner

from assets import chunks, dense_vectors, raw_documents
from assets.query_encoder import query_encoder
from assets.resources import CorporaResource, RetrievalResource
from evals.collections import sample_collection
from evals.pseudo_queries import AdaptConfig, adapt_query_encoder, pseudo_queries, split_held_out, stored_corpus
from orchestration.cli import app
from orchestration.definitions import defs
from orchestration.parquet_io import ParquetIOManager
from retrieval import RetrievalSettings, RetrievalStack, read_documents
from retrieval.settings import ADAPTED_MARKER

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow  # trains (a few steps, on the 60-document sample)
SAMPLE = sample_collection()


def test_pseudo_queries_come_from_the_documents_and_hold_out_whole_documents() -> None:
    docs, _ = read_documents(SAMPLE.corpus_path, "jsonl")
    queries = pseudo_queries(docs)
    by_id = {d.id: d for d in docs}
    assert {q.kind for q in queries} == {"title", "sentence"}
    for q in queries:
        assert q.text in (by_id[q.doc_id].title if q.kind == "title" else by_id[q.doc_id].text)
    config = AdaptConfig(holdout=0.3)
    train, held = split_held_out(queries, config)
    assert train and held and not {q.doc_id for q in train} & {q.doc_id for q in held}
    assert split_held_out(queries, config) == (train, held)  # a re-run holds out the same documents


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    env = {"HYBRID_RAG_QDRANT_PATH": str(root / "data" / "index"), "HYBRID_RAG_CACHE_DIR": str(root / "cache")}
    result = CliRunner().invoke(app, ["index", str(SAMPLE.corpus_path), "-c", "sample"], env=env)
    assert result.exit_code == 0, result.output
    return root, env


def test_cli_adapt_saves_an_encoder_that_searches_then_use(sample_index) -> None:
    root, env = sample_index
    result = CliRunner().invoke(app, ["adapt", "-c", "sample"], env=env)
    assert result.exit_code == 0, result.output
    settings = RetrievalSettings(qdrant_path=root / "data" / "index", cache_dir=root / "cache", collection="sample")
    out = settings.adapted_query_dir()
    assert out == root / "data" / "models" / "sample" / "query_encoder"
    if "not used" in result.output:
        assert not out.exists() and settings.resolved_query_model() is None
        return
    assert (out / ADAPTED_MARKER).is_file() and settings.resolved_query_model() == str(out)
    with RetrievalStack(settings) as stack:
        retriever = stack.retriever()
        assert retriever.query_encoder.model_name == str(out)
        assert retriever.search("valve gasket", k=3)  # the adapted encoder answers queries
    other_model = settings.model_copy(update={"dense_model": "another-model"})
    assert other_model.resolved_query_model() is None  # trained against other vectors: ignored


def test_an_adaptation_that_hurts_is_not_used_and_removes_an_earlier_one(sample_index, tmp_path) -> None:
    root, _ = sample_index
    settings = RetrievalSettings(qdrant_path=root / "data" / "index", collection="sample")
    from retrieval.store import open_store

    store = open_store(settings)
    try:
        docs, owners, vectors = stored_corpus(store)
    finally:
        store.close()
    out = tmp_path / "query_encoder"
    out.mkdir()
    (out / ADAPTED_MARKER).write_text("{}")  # an earlier adapted encoder
    # A learning rate this large wrecks the model: the held-out pseudo-queries must catch it.
    report = adapt_query_encoder(
        docs, owners, vectors, settings.dense_model, out, AdaptConfig(learning_rate=0.05, holdout=0.3)
    )
    assert report.adapted_ndcg < report.base_ndcg and not report.used
    assert not out.exists()


def test_query_encoder_asset_on_the_sample_partition(tmp_path) -> None:
    assert defs.resolve_job_def("adapt").name == "adapt"
    retrieval = RetrievalResource(qdrant_path=str(tmp_path / "data" / "index"), cache_dir=str(tmp_path / "cache"))
    result = dg.materialize(
        [raw_documents, chunks, dense_vectors, query_encoder],
        partition_key="sample",
        resources={
            "retrieval": retrieval,
            "corpora": CorporaResource(),
            "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
        },
    )
    assert result.success
    meta = {
        k: getattr(v, "value", v)
        for k, v in result.asset_materializations_for_node("query_encoder")[0].metadata.items()
    }
    assert meta["train_pseudo_queries"] > 0 and meta["held_out_pseudo_queries"] > 0 and meta["steps"] > 0
    assert meta["used"] == (meta["held_out_ndcg@10_adapted"] >= meta["held_out_ndcg@10_base"])
    out = retrieval.settings("sample").adapted_query_dir()
    assert (out / ADAPTED_MARKER).is_file() == meta["used"]
