"""`hybrid-rag adapt` and `hybrid-rag tune-reranker` train and judge the query encoder on the texts searches encode:
each query with the dense model's query prompt, exactly once (not without it, and not a second time from the
model's ``default_prompt_name``). A tiny real model, saved with query/document prompts and a default prompt in its
``config_sentence_transformers.json``, indexes the 60-document sample; sentence-transformers' Transformer module
records every text it tokenizes (prompt included) and calls through."""

from __future__ import annotations

import os
from typing import Any

import pytest
from sentence_transformers.models import Transformer
from typer.testing import CliRunner

from evals.collections import sample_collection
from orchestration.cli import app
from tests.tiny_models import tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow  # indexes the sample and trains a tiny model a few steps
QUERY, DOCUMENT = "query: ", "passage: "


@pytest.fixture
def tokenized(monkeypatch) -> list[str]:
    """The texts sentence-transformers' Transformer module tokenizes from now on, each with its prompt."""
    seen: list[str] = []
    preprocess = Transformer.preprocess

    def recording(self, inputs: Any, prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        seen.extend((prompt or "") + t for t in inputs if isinstance(t, str))
        return preprocess(self, inputs, prompt=prompt, **kwargs)

    monkeypatch.setattr(Transformer, "preprocess", recording)
    return seen


@pytest.fixture(scope="module")
def prompted_index(tmp_path_factory):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling

    root = tmp_path_factory.mktemp("prompted")
    bert = tiny_bert(root / "bert")
    model = SentenceTransformer(
        modules=[Transformer(str(bert)), Pooling(32, "mean"), Normalize()],
        prompts={"query": QUERY, "document": DOCUMENT},
        default_prompt_name="query",  # would prepend "query: " a second time where no prompt= is given
        device="cpu",
    )
    model.save(str(root / "model"))
    env = {
        "HYBRID_RAG_QDRANT_PATH": str(root / "data" / "index"),
        "HYBRID_RAG_CACHE_DIR": str(root / "cache"),
        "HYBRID_RAG_DENSE_MODEL": str(root / "model"),
    }
    result = CliRunner().invoke(app, ["index", str(sample_collection().corpus_path), "-c", "sample"], env=env)
    assert result.exit_code == 0, result.output
    return env


def _run(args: list[str], env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output


def _prompted_once(texts: list[str]) -> bool:
    return all(t.startswith(QUERY) and not t[len(QUERY) :].startswith(QUERY) for t in texts)


def test_adapt_trains_and_judges_queries_with_the_query_prompt_once(prompted_index, tokenized) -> None:
    _run(["adapt", "-c", "sample", "--max-queries", "40"], prompted_index)
    texts = tokenized
    assert len(texts) > 40  # the pseudo-queries trained on and those held out to judge
    assert _prompted_once(texts), [t for t in texts if not _prompted_once([t])][:3]


def test_tune_reranker_trains_queries_with_the_query_prompt_once(prompted_index, tokenized, tmp_path) -> None:
    _run(["tune-reranker", "sample", "-c", "sample", "--epochs", "1", "--out", str(tmp_path)], prompted_index)
    texts = tokenized
    assert texts
    assert _prompted_once(texts), [t for t in texts if not _prompted_once([t])][:3]
