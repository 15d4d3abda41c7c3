"""A long-lived stack follows the collection's adapted query encoder: one that ``adapt`` saves while it searches is
used by its next search (retrievers already handed out included), a removed one falls back to the dense model,
with no restart; an explicit choice (``adapted_query_model=False``) is not followed. Real models, real embedded
Qdrant; the encoder is installed by the code path ``adapt`` uses (:func:`evals.pseudo_queries.install_adapted`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from evals.pseudo_queries import install_adapted
from retrieval import RetrievalSettings, RetrievalStack
from retrieval.encoders.dense import resolve_model_path
from retrieval.settings import ADAPTED_MARKER
from retrieval.stack import shared_stack
from tests.conftest import SEMANTIC_QUERY


def _save_encoder(base_model: str, out: Path, seed: int) -> Path:
    """A query encoder that ranks like ``base_model`` with other scores (seeded noise on its word embeddings),
    saved as ``adapt`` saves one: the model, then its marker."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model_path(base_model), device="cpu")
    weights = model[0].auto_model.embeddings.word_embeddings.weight
    with torch.no_grad():
        weights.add_(0.02 * torch.randn(weights.shape, generator=torch.Generator().manual_seed(seed)))
    model.save(str(out))
    (out / ADAPTED_MARKER).write_text(json.dumps({"base_model": base_model}))
    return out


def test_a_searching_stack_follows_the_adapted_encoder_saved_and_removed(indexed_stack, tmp_path) -> None:
    stack = indexed_stack("edge", collection="follow", models_dir=tmp_path / "models", rerank=False)
    settings, out = stack.settings, stack.settings.adapted_query_dir()
    retriever = stack.retriever()  # handed out before anything was adapted, kept searching

    def scores(r) -> list[tuple[str, float]]:
        return [(h.doc_id, round(h.dense_score, 6)) for h in r.search(SEMANTIC_QUERY[0], k=3, variant="dense")]

    base = scores(retriever)
    assert retriever.query_encoder is stack.dense and stack.query_encoder is stack.dense

    out.parent.mkdir(parents=True)
    install_adapted(_save_encoder(settings.dense_model, tmp_path / "first", seed=1), out)
    first = scores(retriever)
    assert first != base  # the next search uses the new encoder
    assert retriever.query_encoder.model_name == stack.query_encoder.model_name == str(out)
    fresh = RetrievalStack(settings, dense=stack.dense, sparse=stack.sparse)  # what a new process gets
    try:
        assert scores(fresh.retriever()) == first == scores(stack.retriever())
    finally:
        fresh.close()
    assert scores(stack.retriever(adapted_query_model=False)) == base  # explicitly without: not followed

    install_adapted(_save_encoder(settings.dense_model, tmp_path / "second", seed=2), out)  # adapt run again
    second = scores(retriever)
    assert second not in (base, first)

    install_adapted(None, out)  # removed (adapt's gate refused a new one, or the user deleted it)
    assert scores(retriever) == base and retriever.query_encoder is stack.dense
    assert not out.exists() and not out.with_name(out.name + ".old").exists()


def test_shared_stacks_load_the_models_once_and_follow_each_collections_encoder(tmp_path) -> None:
    """Dagster's long-lived stacks (``shared_stack``): one dense model for every collection, each collection's own
    adapted encoder (its model loads on first use, so a marker and a folder are enough here)."""
    one, two = (
        shared_stack(RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection=c))
        for c in ("one", "two")
    )
    try:
        assert one.dense is two.dense and one.sparse is two.sparse
        out = one.settings.adapted_query_dir()
        out.mkdir(parents=True)
        (out / ADAPTED_MARKER).write_text(json.dumps({"base_model": one.settings.dense_model}))
        assert one.query_encoder.model_name == str(out) and two.query_encoder is two.dense
        again = shared_stack(one.settings)
        assert again.query_encoder is one.query_encoder and again.dense is one.dense
        again.close()
    finally:
        one.close()
        two.close()


def test_an_adapted_encoder_is_used_under_either_name_of_its_base_model(tmp_path) -> None:
    """The adapted encoder's base model and the settings' dense model compare as one model under either name of
    the bundled one (it was silently ignored under the other name)."""
    settings = RetrievalSettings(models_dir=tmp_path, collection="c")
    folder = settings.adapted_query_dir()
    folder.mkdir(parents=True)
    for base, dense in [("all-MiniLM-L6-v2", settings.dense_model), (settings.dense_model, "all-MiniLM-L6-v2")]:
        (folder / ADAPTED_MARKER).write_text(json.dumps({"base_model": base}))
        assert settings.model_copy(update={"dense_model": dense}).resolved_query_model() == str(folder)
    (folder / ADAPTED_MARKER).write_text(json.dumps({"base_model": "some-org/another-model"}))
    assert settings.resolved_query_model() is None
