"""The query encoder (``HYBRID_RAG_QUERY_MODEL``, or the collection's adapted one): one whose dimension is not the
collection's is refused when the retriever is made, naming the setting and both dimensions; it runs on the dense
encoder's backend (``HYBRID_RAG_DENSE_BACKEND``), from an ONNX export of its own. Tiny random BERT encoders are
built here; real engine, real ONNX export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evals.pseudo_queries import install_adapted
from retrieval import RetrievalSettings, RetrievalStack
from retrieval.encoders import DenseEncoder
from retrieval.encoders.onnx_export import export_dir
from retrieval.settings import ADAPTED_MARKER, DenseBackend
from retrieval.store import SchemaMismatchError
from tests.conftest import SEMANTIC_QUERY, TINY_DOCS
from tests.tiny_models import tiny_dense

QUERIES = ["mars red planet", "how do vaccines work", "qdrant sparse vectors"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_encoders")
    build = {"hidden": 64, "max_seq_length": 128}
    return {"dense": tiny_dense(root / "dense", seed=0, **build), "query": tiny_dense(root / "query", seed=1, **build)}


def adapted_copy(model: str, base_model: str, root: Path, out: Path) -> None:
    """``model`` installed as the adapted query encoder at ``out`` (as ``adapt`` installs one), trained from
    ``base_model`` by its marker."""
    candidate = root / "candidate"
    shutil.copytree(model, candidate)
    (candidate / ADAPTED_MARKER).write_text(json.dumps({"base_model": base_model}))
    out.parent.mkdir(parents=True, exist_ok=True)
    install_adapted(candidate, out)


def test_a_query_encoder_of_another_dimension_is_refused_naming_the_setting(indexed_stack, tiny, tmp_path) -> None:
    stack = indexed_stack("edge", collection="qdim", models_dir=tmp_path / "models", rerank=False)
    with pytest.raises(SchemaMismatchError) as refused:
        stack.retriever(query_model=tiny["query"])
    message = str(refused.value)
    assert message.startswith(f"HYBRID_RAG_QUERY_MODEL: query model {tiny['query']!r} gives 64-dimensional vectors")
    assert "collection 'qdim'" in message and "384-dimensional" in message and "\n" not in message

    adapted_copy(tiny["query"], stack.settings.dense_model, tmp_path, stack.settings.adapted_query_dir())
    with pytest.raises(SchemaMismatchError, match=r"^HYBRID_RAG_ADAPTED_QUERY_MODEL.* 64-dimensional .* 384-dim"):
        stack.retriever()
    assert stack.retriever(adapted_query_model=False).search(SEMANTIC_QUERY[0], k=1)  # the dense model's own: fine


def test_the_query_encoder_runs_on_the_dense_backend(tiny, tmp_path) -> None:
    settings = RetrievalSettings(
        qdrant_path=tmp_path / "index",
        collection="onnxq",
        models_dir=tmp_path / "models",
        cache_dir=tmp_path / "cache",
        dense_model=tiny["dense"],
        dense_backend="onnx",
        rerank=False,
    )
    torch_vectors = DenseEncoder(tiny["query"], device="cpu").encode_queries(QUERIES)
    with RetrievalStack(settings.model_copy(update={"query_model": tiny["query"]})) as stack:
        query = stack.query_encoder
        assert (query.model_name, query.backend) == (tiny["query"], DenseBackend.ONNX)
        vectors = query.encode_queries(QUERIES)
        assert "onnxruntime" in query.runs_on
        assert export_dir(tiny["query"], tmp_path / "cache").is_dir()  # its own export, beside the dense model's
        assert export_dir(tiny["dense"], tmp_path / "cache") != export_dir(tiny["query"], tmp_path / "cache")
        np.testing.assert_allclose(vectors, torch_vectors, atol=1e-4)  # the same model, another runtime
        assert not np.allclose(vectors, stack.dense.encode_queries(QUERIES), atol=1e-2)  # not the dense model

    adapted_copy(tiny["query"], tiny["dense"], tmp_path, settings.adapted_query_dir())
    with RetrievalStack(settings) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
        retriever = stack.retriever()
        assert retriever.search(SEMANTIC_QUERY[0], k=3, variant="dense")
        adapted = retriever.query_encoder
        assert adapted.model_name == str(settings.adapted_query_dir()) and adapted.backend == DenseBackend.ONNX
        np.testing.assert_allclose(adapted.encode_queries(QUERIES), torch_vectors, atol=1e-4)
