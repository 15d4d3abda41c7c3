"""Damaged model files (a truncated weights file, a broken ``adapted.json``): one error naming the file and the
remedy, never a traceback; a damaged adapted query encoder does not block indexing, which does not use it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval.encoders import DenseEncoder
from retrieval.encoders.dense import resolve_model_path
from retrieval.errors import ModelLoadError
from retrieval.settings import ADAPTED_MARKER, DEFAULT_DENSE_MODEL
from tests.conftest import TINY_DOCS

REMEDY = "HYBRID_RAG_ADAPTED_QUERY_MODEL=false"


def model_copy(dest: Path, *, truncate_weights: bool = False) -> Path:
    """A copy of the bundled default model; its ``model.safetensors`` cut to 1,000 bytes if asked."""
    shutil.copytree(resolve_model_path(DEFAULT_DENSE_MODEL), dest)
    if truncate_weights:
        with (dest / "model.safetensors").open("r+b") as weights:
            weights.truncate(1000)
    return dest


def adapted(models_dir: Path, collection: str = "qe", *, marker: str | None = None, **damage) -> Path:
    """An adapted query encoder of ``collection`` as ``hybrid-rag adapt`` saves it (a copy of the base model)."""
    folder = model_copy(models_dir / collection / "query_encoder", **damage)
    text = json.dumps({"base_model": DEFAULT_DENSE_MODEL}) if marker is None else marker
    (folder / ADAPTED_MARKER).write_text(text)
    return folder


def test_a_truncated_weights_file_is_one_error_naming_it(tmp_path):
    folder = model_copy(tmp_path / "broken_model", truncate_weights=True)
    with pytest.raises(ModelLoadError) as err:
        _ = DenseEncoder(str(folder), device="cpu").model
    message = str(err.value)
    assert "\n" not in message and str(folder / "model.safetensors") in message and "damaged" in message
    assert "HYBRID_RAG_DENSE_MODEL" in message


def test_a_damaged_adapted_encoder_names_its_remedy(indexed_stack, tmp_path):
    """Its weights truncated: searching fails with one error naming the weights file, the setting it came
    from (not HYBRID_RAG_DENSE_MODEL) and the remedy; without it (the remedy) search works."""
    folder = adapted(tmp_path / "models", truncate_weights=True)
    stack = indexed_stack("edge", TINY_DOCS, collection="qe", models_dir=tmp_path / "models")
    with pytest.raises(ModelLoadError) as err:
        stack.retriever().search("valve gasket", k=3)
    message = str(err.value)
    assert str(folder / "model.safetensors") in message and REMEDY in message and "adapt -c qe" in message
    assert "HYBRID_RAG_DENSE_MODEL" not in message
    assert stack.retriever(adapted_query_model=False).search("valve gasket", k=3)[0].doc_id == "valve"


@pytest.mark.parametrize("marker", ['{"base_mo', "[1, 2]", "\udcff"])
def test_a_broken_adapted_marker_fails_search_but_not_indexing(indexed_stack, tmp_path, marker):
    """A broken ``adapted.json`` (cut short, not an object, not UTF-8): indexing goes on (documents are embedded
    with the dense model); a retriever is one error naming the file and the remedy."""
    folder = adapted(tmp_path / "models", marker="")
    (folder / ADAPTED_MARKER).write_bytes(marker.encode("utf-8", "surrogateescape"))
    stack = indexed_stack("edge", [], collection="qe", models_dir=tmp_path / "models")
    report = stack.indexer().index(TINY_DOCS, progress=False)
    assert report.points == len(TINY_DOCS)
    with pytest.raises(ModelLoadError) as err:
        stack.retriever()
    message = str(err.value)
    assert "\n" not in message and str(folder / ADAPTED_MARKER) in message and REMEDY in message
    assert stack.retriever(adapted_query_model=False).search("valve gasket", k=3)[0].doc_id == "valve"


def test_cli_index_and_search_with_a_broken_adapted_marker(cli_env, monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_MODELS_DIR", str(cli_env / "models"))
    folder = adapted(cli_env / "models", marker='{"base_mo')
    docs = cli_env / "docs.jsonl"
    docs.write_text('{"_id": "mars", "text": "The reddish hue of Mars comes from iron oxide."}\n')
    index = CliRunner().invoke(app, ["index", str(docs), "-c", "qe"])
    assert index.exit_code == 0, index.output
    search = CliRunner().invoke(app, ["search", "red planet", "-c", "qe"])
    assert search.exit_code == 2 and "Traceback" not in search.output
    assert str(folder / ADAPTED_MARKER) in search.output and REMEDY in search.output
