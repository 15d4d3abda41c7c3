"""SPLADE through sentence-transformers' SparseEncoder, with a small model built here (no hub download)."""

import pytest

from retrieval.encoders import SpladeEncoder, make_sparse_encoder
from tests.conftest import TINY_DOCS
from tests.tiny_models import tiny_splade


@pytest.fixture(scope="module")
def tiny_splade_dir(tmp_path_factory):
    """A 2-layer BERT masked-LM with MiniLM's vocabulary, saved as a SparseEncoder (MLM head + SPLADE pooling)."""
    return tiny_splade(tmp_path_factory.mktemp("splade") / "model")


def test_encoder_gives_sparse_nonnegative_vectors(tiny_splade_dir):
    encoder = make_sparse_encoder(tiny_splade_dir)
    assert isinstance(encoder, SpladeEncoder) and not encoder.uses_idf_modifier
    vec = encoder.encode_documents(["Honeybees dance to share where flowers are."])[0]
    assert 0 < len(vec) < 30522 and all(v > 0 for v in vec.values)
    assert vec.indices == sorted(set(vec.indices))
    again = encoder.encode_documents(["Honeybees dance to share where flowers are."])[0]
    assert again.indices == vec.indices  # deterministic term ids


def test_index_and_search_with_splade(tiny_splade_dir, indexed_stack):
    sparse = make_sparse_encoder(tiny_splade_dir)
    stack = indexed_stack("edge", [], collection="splade", sparse_model=tiny_splade_dir, sparse=sparse)
    report = stack.indexer().index(TINY_DOCS, progress=False)
    assert report.points == len(TINY_DOCS)
    schema = stack.store().schema()
    assert schema.sparse_model == tiny_splade_dir and schema.sparse_idf is False
    retriever = stack.retriever()
    hits = retriever.search("waggle dance of honeybees", k=3, variant="sparse")
    assert 1 <= len(hits) <= 3
    assert {h.doc_id for h in hits} <= {d.id for d in TINY_DOCS}
    assert retriever.search("waggle dance of honeybees", k=1, variant="dense")[0].doc_id == "bees"
    hybrid = retriever.search("waggle dance of honeybees", k=3)
    assert "bees" in {h.doc_id for h in hybrid}  # the untrained SPLADE ranks at random; fusion still finds it
    stack.close()


def test_splade_model_saved_in_place_is_another_model(tmp_path, dense_encoder):
    """A SPLADE folder saved again with other weights (e.g. fine-tuned) is another model: a write into the collection
    its old weights built is refused (two sparse encodings in one collection), naming it; --rebuild moves it."""
    from retrieval import RetrievalSettings, RetrievalStack
    from retrieval.store import SchemaMismatchError

    folder = tiny_splade(tmp_path / "splade")
    settings = RetrievalSettings(
        qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="resaved", sparse_model=folder
    )

    def stack() -> RetrievalStack:
        return RetrievalStack(settings, dense=dense_encoder, sparse=make_sparse_encoder(folder))

    with stack() as first:
        first.indexer().index(TINY_DOCS[:2], progress=False)
        built = first.store().schema().sparse_fingerprint
        old_key = first.sparse.cache_key
    assert built is not None and built.startswith("files:")
    tiny_splade(tmp_path / "splade", seed=1)  # saved in place: the same folder, other weights
    with stack() as second:
        assert second.sparse.fingerprint != built and second.sparse.cache_key != old_key  # Dagster's tables too
        with pytest.raises(SchemaMismatchError, match=r"other models \(sparse_fingerprint: collection has"):
            second.indexer().index(TINY_DOCS[2:3], progress=False)
        assert second.store().count() == 2  # nothing written
        second.indexer().rebuild(TINY_DOCS[:3], progress=False)
        assert second.store().schema().sparse_fingerprint == second.sparse.fingerprint
