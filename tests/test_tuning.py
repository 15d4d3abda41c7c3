"""Reranker tuning and query-encoder training read the train split only, and produce usable settings."""

import shutil

import pytest
from typer.testing import CliRunner

from evals.collections import EvalCollection, sample_collection
from evals.training import trainable_lists
from evals.tuning import check_split, tune_reranker
from orchestration.cli import app
from retrieval import RetrievalSettings, read_documents
from retrieval.errors import InvalidArgumentError


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


def _train_split(root, grades: list[int]) -> EvalCollection:
    """A BEIR folder whose train split judges one query per grade (query i: document d{i})."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(f'{{"_id": "d{i}", "text": "text {i}"}}\n' for i in range(len(grades))))
    (root / "queries.jsonl").write_text(
        "".join(f'{{"_id": "q{i}", "text": "query {i}"}}\n' for i in range(len(grades)))
    )
    (root / "qrels" / "train.tsv").write_text("".join(f"q{i}\td{i}\t{g}\n" for i, g in enumerate(grades)))
    return EvalCollection(root.name, root)


@pytest.mark.parametrize(
    ("grades", "message"),
    [
        ([0, 0, 0, 0], "no relevant judgement"),
        ([2], "1 judged query, too few to split .* at least 2 needed"),
    ],
)
def test_tuning_refuses_a_split_it_cannot_train_and_tune_on(tmp_path, grades, message) -> None:
    view = _train_split(tmp_path / "t", grades).train_view()
    with pytest.raises(InvalidArgumentError, match=message):
        check_split(view)


def test_tuning_warns_when_it_trains_or_tunes_on_a_handful_of_queries(tmp_path, caplog) -> None:
    fit, dev = check_split(_train_split(tmp_path / "t", [1, 2]).train_view())
    assert (len(fit), len(dev)) == (1, 1)
    assert "only 1 to train on and 1 query to tune on" in caplog.text


def test_tune_reranker_on_the_test_split_is_one_error_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
    result = CliRunner().invoke(app, ["tune-reranker", str(sample_collection().root), "--split", "test"])
    assert result.exit_code == 2 and "'test' split is held out" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
