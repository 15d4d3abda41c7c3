"""Stacks on the same models share their encoders within a process (a second stack, a notebook cell run again,
a service's second collection loads nothing again), weakly, and never across a model that differs."""

import gc
import shutil
import threading

from retrieval import RetrievalSettings, RetrievalStack
from retrieval.encoders import shared
from retrieval.encoders.dense import resolve_model_path
from retrieval.encoders.shared import clear_shared_encoders
from retrieval.settings import DEFAULT_DENSE_MODEL
from tests.conftest import SEMANTIC_QUERY, TINY_DOCS


def _settings(tmp_path, collection: str, **values) -> RetrievalSettings:
    return RetrievalSettings(
        qdrant_path=tmp_path / collection, cache_dir=tmp_path / "cache", collection=collection, **values
    )


def test_a_second_stack_on_the_same_model_loads_nothing_and_finds_the_same(tmp_path):
    first = RetrievalStack(_settings(tmp_path, "one", rerank=False, embedding_cache=False))
    first.indexer().index(TINY_DOCS, progress=False)
    hits = first.retriever().search(SEMANTIC_QUERY[0])
    second = RetrievalStack(_settings(tmp_path, "two", rerank=False, embedding_cache=False))
    assert second.dense is first.dense and second.dense.loads == 1
    second.indexer().index(TINY_DOCS, progress=False)
    assert second.retriever().search(SEMANTIC_QUERY[0]) == hits and second.dense.loads == 1
    first.close()
    second.close()


def test_encoders_differ_where_the_model_or_its_arguments_do(tmp_path):
    base = RetrievalStack(_settings(tmp_path, "a"))
    assert RetrievalStack(_settings(tmp_path, "b")).dense is base.dense
    assert RetrievalStack(_settings(tmp_path, "c", dense_batch_size=7)).dense is not base.dense
    assert RetrievalStack(_settings(tmp_path, "d", dense_backend="onnx")).dense is not base.dense
    assert RetrievalStack(_settings(tmp_path, "e", dense_document_prompt="doc: ")).dense is not base.dense
    folder = tmp_path / "minilm"
    shutil.copytree(resolve_model_path(DEFAULT_DENSE_MODEL), folder)
    copy = RetrievalStack(_settings(tmp_path, "f", dense_model=str(folder)))
    assert copy.dense is not base.dense and RetrievalStack(_settings(tmp_path, "g", dense_model=str(folder))).dense is (
        copy.dense
    )
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")  # the folder saved in place
    assert RetrievalStack(_settings(tmp_path, "h", dense_model=str(folder))).dense is not copy.dense


def test_shared_encoders_are_freed_with_their_last_holder_or_forgotten_when_cleared(tmp_path):
    stack = RetrievalStack(_settings(tmp_path, "a"))
    clear_shared_encoders()
    assert RetrievalStack(_settings(tmp_path, "b")).dense is not stack.dense  # forgotten: loaded anew
    del stack
    gc.collect()
    assert len(shared._encoders) == 0  # no holder left: nothing kept


def test_stacks_built_at_once_in_threads_share_one_encoder(tmp_path):
    clear_shared_encoders()
    stacks: list[RetrievalStack] = []
    threads = [
        threading.Thread(target=lambda i=i: stacks.append(RetrievalStack(_settings(tmp_path, f"c{i}"))))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(s.dense) for s in stacks}) == 1
