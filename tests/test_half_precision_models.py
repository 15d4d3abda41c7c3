"""Models whose checkpoint is saved in fp16 (as many hub models are): transformers loads them in that dtype, so
without care they encode in half precision on a CPU and cannot be trained against the stored float32 vectors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from safetensors import safe_open

from evals.collections import sample_collection
from evals.pseudo_queries import AdaptConfig, adapt_query_encoder
from retrieval import read_documents
from retrieval.encoders import DenseEncoder
from retrieval.encoders.runtime import trainable_model
from retrieval.encoders.sparse import SpladeEncoder
from tests.tiny_models import tiny_dense, tiny_splade


def _saved_in_half(model_cls, source: str, path) -> str:
    model = model_cls(source, device="cpu").half()
    model.save(str(path))
    weights = next(path.rglob("model.safetensors"))
    with safe_open(str(weights), "pt") as f:  # the copy really is an fp16 checkpoint
        assert {str(f.get_tensor(name).dtype) for name in f.keys()} == {"torch.float16"}  # noqa: SIM118
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from sentence_transformers import SentenceTransformer, SparseEncoder

    root = tmp_path_factory.mktemp("half")
    dense = tiny_dense(root / "dense")
    splade = tiny_splade(root / "splade")
    return {
        "dense": dense,
        "dense-fp16": _saved_in_half(SentenceTransformer, dense, root / "dense-fp16"),
        "splade-fp16": _saved_in_half(SparseEncoder, splade, root / "splade-fp16"),
    }


def _dtypes(model) -> set[str]:
    return {str(p.dtype) for p in model.parameters()}


def test_an_fp16_checkpoint_encodes_in_float32_on_the_cpu(models, caplog) -> None:
    half = DenseEncoder(models["dense-fp16"], device="cpu")
    with caplog.at_level(logging.WARNING):
        assert _dtypes(half.model) == {"torch.float32"}
    assert "float16" not in caplog.text  # loaded in float32, not loaded in fp16 then converted (and warned about)
    texts = ["a short sentence about boiling pasta", "the moon orbits the earth"]
    vectors = half.encode_documents(texts)
    reference = DenseEncoder(models["dense"], device="cpu").encode_documents(texts)
    assert vectors.dtype == np.float32 and np.allclose(vectors, reference, atol=2e-3)  # fp16 rounding of weights
    assert _dtypes(SpladeEncoder(models["splade-fp16"], device="cpu").model) == {"torch.float32"}


def test_training_loads_an_fp16_checkpoint_in_float32_on_the_device_asked(models) -> None:
    model = trainable_model(models["dense-fp16"], "cpu")
    assert _dtypes(model) == {"torch.float32"} and str(model.device) == "cpu"


def test_adapting_an_fp16_checkpoint_trains(models, tmp_path) -> None:
    """It failed with 'expected m1 and m2 to have the same dtype' (the fp16 model against float32 vectors)."""
    docs, _ = read_documents(sample_collection().corpus_path, "jsonl")
    encoder = DenseEncoder(models["dense-fp16"], device="cpu")
    vectors = encoder.encode_documents([d.text for d in docs])
    owners = np.array([d.id for d in docs], dtype=object)
    config = AdaptConfig(max_queries=40, max_holdout=10, epochs=1)
    report = adapt_query_encoder(docs, owners, vectors, models["dense-fp16"], tmp_path / "out", config, device="cpu")
    assert report.train_queries > 0 and report.held_out_queries > 0 and 0 < report.base_ndcg <= 1
