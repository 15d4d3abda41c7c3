"""Runs an ONNX export (:mod:`retrieval.encoders.onnx_export`) with onnxruntime or OpenVINO on the CPU."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.encoders.onnx_export import EXPORT_META, FP32_FILE, INT8_FILE


class OnnxSentenceModel:
    """The subset of ``SentenceTransformer`` the encoder uses, over an ONNX export run by onnxruntime or
    OpenVINO: ``tokenizer``, ``max_seq_length``, ``get_embedding_dimension()`` and ``encode()``."""

    def __init__(self, export: str | Path, file: str = FP32_FILE, runtime: str = "onnxruntime"):
        from transformers import AutoTokenizer

        self.export = Path(export)
        meta = json.loads((self.export / EXPORT_META).read_text())
        self.meta = meta
        self.max_seq_length = int(meta["max_seq_length"])
        self.pooling = meta["pooling"]
        self.inputs = list(meta["inputs"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.export))
        self.runtime = runtime
        model_file = str(self.export / file)
        if runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
            self._run = lambda feed: session.run(None, feed)[0]
            self.precision = "int8" if file == INT8_FILE else "fp32"
        elif runtime == "openvino":
            import openvino as ov

            compiled = ov.Core().compile_model(model_file, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
            self._run = lambda feed: compiled(feed)[0]
            # OpenVINO computes in bf16 on CPUs that have it (AVX512-BF16, AMX) unless told otherwise
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        else:
            raise ValueError(f"unknown ONNX runtime {runtime!r}")

    def get_embedding_dimension(self) -> int:
        return int(self.meta["dimension"])

    def encode(
        self,
        sentences: Sequence[str],
        prompt: str | None = None,
        batch_size: int = 64,
        normalize_embeddings: bool = True,
        show_progress_bar: bool = False,
        **_: Any,
    ) -> np.ndarray:
        texts = [f"{prompt}{t}" if prompt else t for t in sentences]
        out = np.zeros((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._embed([texts[i] for i in rows])
        if normalize_embeddings:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms == 0, 1.0, norms)
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np"
        )
        hidden = self._run({name: np.asarray(batch[name], dtype=np.int64) for name in self.inputs})
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = np.asarray(batch["attention_mask"], dtype=np.float32)[..., None]
        return (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
