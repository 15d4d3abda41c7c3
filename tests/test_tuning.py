"""Reranker tuning and query-encoder training read the train split only, and produce usable settings."""

import shutil

import pytest

from evals.collections import EvalCollection, sample_collection
from evals.training import trainable_lists
from evals.tuning import tune_reranker
from retrieval import RetrievalSettings, read_documents


@pytest.fixture
def sample_without_test_qrels(tmp_path):
    """A copy of the sample whose test qrels are unreadable garbage: tuning must never notice."""
    root = tmp_path / "sample"
    shutil.copytree(sample_collection().root, root)
    (root / "qrels" / "test.tsv").write_text("this is not a qrels file\n")
    return EvalCollection("sample", root)


@pytest.mark.slow
def test_tuning_and_training_use_the_train_split_only(sample_without_test_qrels, indexed_stack, tmp_path):
    coll = sample_without_test_qrels
    docs, _ = read_documents(coll.corpus_path, "jsonl")
    stack = indexed_stack("edge", docs, collection="tune")
    profile = tune_reranker(coll.train_view(), stack.retriever(), tmp_path / "out", epochs=1)
    stack.close()

    assert profile.fit_queries + profile.dev_queries == len(coll.train_view().queries())
    assert (tmp_path / "out" / "query-encoder" / "config.json").exists()
    env = profile.write_env(tmp_path / "out" / "reranker.env").read_text()
    assert f"HYBRID_RAG_QUERY_MODEL={profile.query_model}" in env
    loaded = RetrievalSettings(_env_file=tmp_path / "out" / "reranker.env")
    assert loaded.query_model == profile.query_model and loaded.rerank_weight == profile.config.weight
    assert 0.0 <= profile.dev_baseline <= 1.0 and profile.dev_reranked >= profile.dev_first_stage


def test_training_refuses_anything_but_a_train_view():
    coll = sample_collection()
    with pytest.raises(TypeError, match="TrainSplitView"):
        trainable_lists(coll, [])
    with pytest.raises(PermissionError):
        coll.train_view().qrels("test")
