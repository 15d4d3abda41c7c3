"""Dense encoder backends (torch, ONNX fp32/int8, OpenVINO), device selection and the multi-process pool."""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from retrieval.encoders import DenseEncoder, multi_process, onnx_export, select_device
from retrieval.encoders.runtime import fork_guard
from retrieval.errors import ModelLoadError
from retrieval.settings import DenseBackend, RetrievalSettings

SENTENCES = [
    "The mitochondria is the powerhouse of the cell.",
    "Aspirin lowers the risk of a second heart attack.",
    "How do I keep pasta from sticking together?",
    "ZX-4471",
    " ".join(["a long text about proteins, membranes and the transport of ions"] * 30),
]

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="optional dependency missing: onnxruntime and onnx (pip install onnxruntime onnx)",
)
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="optional dependency missing: openvino (pip install openvino)"
)


@cache
def onnx_cache_dir() -> Path:
    """One temporary cache directory holding the ONNX export, shared by every test of this process."""
    path = Path(tempfile.mkdtemp(prefix="hybrid-rag-onnx-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def torch_vectors(dense_encoder) -> np.ndarray:
    return dense_encoder.encode_documents(SENTENCES)


@pytest.mark.slow  # the first use exports the model to ONNX
@needs_onnxruntime
def test_onnx_backend_matches_torch(torch_vectors):
    encoder = DenseEncoder(backend="onnx", cache_dir=onnx_cache_dir())
    vectors = encoder.encode_documents(SENTENCES)
    assert vectors.shape == torch_vectors.shape and vectors.dtype == np.float32
    assert cosines(vectors, torch_vectors).min() > 0.99
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    exports = list((onnx_cache_dir() / "models").iterdir())
    assert len(exports) == 1 and (exports[0] / "model.onnx").is_file()
    assert encoder.runs_on == "cpu (onnxruntime fp32)"


@pytest.mark.slow  # the first use exports the model to ONNX
@needs_onnxruntime
def test_onnx_int8_backend_stays_close_to_torch(torch_vectors):
    encoder = DenseEncoder(backend="onnx-int8", cache_dir=onnx_cache_dir())
    assert cosines(encoder.encode_documents(SENTENCES), torch_vectors).min() > 0.97
    query = encoder.encode_query(SENTENCES[0])
    assert query.shape == (encoder.dimension,)


@needs_openvino
@pytest.mark.slow  # the first use exports the model to ONNX
@needs_onnxruntime
def test_openvino_backend_matches_torch(torch_vectors):
    encoder = DenseEncoder(backend="openvino", cache_dir=onnx_cache_dir())
    assert cosines(encoder.encode_documents(SENTENCES), torch_vectors).min() > 0.99


@pytest.mark.slow  # the first use exports the model to ONNX
@needs_onnxruntime
def test_onnx_backend_has_the_torch_tokenizer_and_limits(dense_encoder):
    encoder = DenseEncoder(backend="onnx", cache_dir=onnx_cache_dir())
    assert encoder.max_tokens == dense_encoder.max_tokens
    assert encoder.dimension == dense_encoder.dimension
    text = "Chunking cuts on the tokenizer's character offsets."
    ours = encoder.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    theirs = dense_encoder.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert list(map(tuple, ours)) == list(map(tuple, theirs))
    assert encoder.encode_documents([]).shape == (0, encoder.dimension)


@pytest.mark.slow  # the first use exports the model to ONNX
@needs_onnxruntime
def test_export_happens_once_per_cache_dir(monkeypatch):
    DenseEncoder(backend="onnx", cache_dir=onnx_cache_dir()).encode_query("first use exports")

    def no_second_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_onnx", no_second_export)
    assert DenseEncoder(backend="onnx-int8", cache_dir=onnx_cache_dir()).encode_query("reused").shape == (384,)


@pytest.mark.slow  # the first use exports the model to ONNX
@needs_onnxruntime
def test_cache_key_differs_per_backend(dense_encoder):
    keys = {dense_encoder.cache_key}
    for backend in ("onnx", "onnx-int8"):
        keys.add(DenseEncoder(backend=backend, cache_dir=onnx_cache_dir()).cache_key)
    assert len(keys) == 3


def test_torch_cache_key_is_unchanged(dense_encoder):
    """Existing embedding caches stay valid: the torch key is computed as before the backend options."""
    import hashlib

    raw = f"{dense_encoder.model_name}|torch|{dense_encoder.document_prompt}|{dense_encoder.max_tokens}"
    assert dense_encoder.cache_key == hashlib.sha256(raw.encode()).hexdigest()[:16]


def test_backend_names_are_checked():
    assert DenseEncoder(backend="ONNX").backend is DenseBackend.ONNX
    assert DenseEncoder(backend="onnx-int8").backend is DenseBackend.ONNX_INT8
    assert DenseEncoder(backend=" OpenVINO ").backend is DenseBackend.OPENVINO
    assert RetrievalSettings(dense_backend="ONNX-int8").dense_backend is DenseBackend.ONNX_INT8  # the same parse
    with pytest.raises(ValueError, match="unknown dense backend"):
        DenseEncoder(backend="tensorrt")


def test_small_inputs_use_one_thread_and_restore_the_setting(dense_encoder):
    import torch

    if not dense_encoder.device.startswith("cpu"):
        pytest.skip(f"the dense model runs on {dense_encoder.device}: torch's CPU threads do not encode")
    before = torch.get_num_threads()
    seen = []
    model = dense_encoder.model
    original = model.encode

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    model.encode = spy
    try:
        dense_encoder.encode_query("one short query")
        dense_encoder.encode_documents(SENTENCES * 2)
    finally:
        del model.encode
    assert seen == [1, before]
    assert torch.get_num_threads() == before


# -- devices ---------------------------------------------------------------------------------------------
TORCH_CUDA_FORK_ERROR = (  # torch's own words, as a child met them on the H200 (README, Performance)
    "Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you must use the 'spawn' "
    "start method"
)


def test_a_gpu_model_in_a_forked_child_is_one_error_saying_what_to_do():
    """Stand-in for a GPU (none here): torch's error for a model its parent ran on CUDA becomes a ModelLoadError
    naming the remedies; any other RuntimeError passes unchanged. The real fork runs below where there is a GPU."""
    remedies = "CUDA does not survive a fork.*without --preload.*'spawn'"
    with pytest.raises(ModelLoadError, match=remedies), fork_guard("cuda"):
        raise RuntimeError(TORCH_CUDA_FORK_ERROR)
    with pytest.raises(RuntimeError, match="^shape mismatch$"), fork_guard("cuda"):
        raise RuntimeError("shape mismatch")


def test_a_forked_child_of_a_gpu_parent_gets_the_error_not_a_traceback(dense_encoder):
    import os

    if not dense_encoder.device.startswith("cuda"):
        pytest.skip("needs the dense model on a GPU")
    dense_encoder.encode_query("warm up on the GPU")
    pid = os.fork()
    if pid == 0:
        try:
            dense_encoder.encode_query("in the child")
            os._exit(1)
        except ModelLoadError:
            os._exit(0)
        except BaseException:
            os._exit(2)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_select_device_is_cpu_here():
    import torch

    if torch.cuda.is_available() or (torch.backends.mps.is_available()):
        pytest.skip("this machine has an accelerator")
    assert select_device() == "cpu"
    assert select_device(None) == "cpu"
    assert DenseEncoder().device == "cpu"


def test_explicit_device_is_honored():
    assert select_device("cuda:1") == "cuda:1"
    assert select_device("cpu") == "cpu"
    assert DenseEncoder(device="cpu").device == "cpu"
    assert DenseEncoder(device="cuda:3").device == "cuda:3"  # not loaded: the model is created lazily


def test_several_cuda_devices_make_a_pool(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert multi_process.pool_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert multi_process.pool_devices("cuda:1") == []  # an explicit device means that one only
    assert multi_process.pool_devices("cpu") == []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert multi_process.pool_devices("cuda") == []
    encoder = DenseEncoder(device="cuda", batch_size=32)
    assert encoder.devices == [] and encoder.pool_min_texts == 32


@pytest.mark.slow
def test_multi_process_pool_matches_single_process():
    """The multi-GPU code path, run with two CPU worker processes."""
    encoder = DenseEncoder(device="cpu", devices=["cpu", "cpu"], pool_min_texts=2)
    try:
        assert encoder.runs_on.startswith("cpu x2 processes")
        pooled = encoder.encode_documents(SENTENCES)
        assert encoder._pool is not None and len(encoder._pool["processes"]) == 2
        in_process = DenseEncoder(device="cpu").encode_documents(SENTENCES)  # the fixture's may run on a GPU
        assert np.allclose(pooled, in_process, atol=1e-5)
        single = encoder.encode_query(SENTENCES[0])  # below pool_min_texts: in this process
        assert np.allclose(single, pooled[0], atol=1e-5)
    finally:
        encoder.close()
    assert encoder._pool is None
