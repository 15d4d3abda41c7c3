"""Configuration for the whole retrieval stack, read from ``HYBRID_RAG_*`` environment variables."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrieval.documents import BadInputPolicy

DEFAULT_DENSE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ADAPTED_MARKER = "adapted.json"  # written next to an adapted query encoder: its base model and held-out scores


class FusionMethod(StrEnum):
    RRF = "rrf"
    DBSF = "dbsf"
    ZSCORE = "zscore"


class RerankMode(StrEnum):
    FEEDBACK = "feedback"
    PROMPT = "prompt"


class DenseBackend(StrEnum):
    TORCH = "torch"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"
    OPENVINO = "openvino"

    @classmethod
    def _missing_(cls, value: object) -> DenseBackend | None:
        """Case and surrounding spaces do not matter (``ONNX``, `` onnx-int8``), in settings and arguments."""
        text = value.strip().lower() if isinstance(value, str) else None
        return next((member for member in cls if member.value == text), None)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "hybrid-rag"


class RetrievalSettings(BaseSettings):
    """Every knob of indexing and search. Environment: ``HYBRID_RAG_<FIELD>`` (e.g. HYBRID_RAG_QDRANT_URL)."""

    model_config = SettingsConfigDict(
        env_prefix="HYBRID_RAG_", env_file=".env", extra="ignore", env_parse_none_str="none"
    )

    # Qdrant: embedded engine under qdrant_path unless qdrant_url is set.
    qdrant_path: Path = Path("data/index")
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_timeout_s: float = 30.0
    qdrant_retries: int = 4
    collection: str = "sample"

    # Encoders.
    dense_model: str = DEFAULT_DENSE_MODEL
    dense_backend: DenseBackend = DenseBackend.TORCH
    dense_device: str | None = None
    dense_batch_size: int = 64
    dense_query_prompt: str | None = None
    dense_document_prompt: str | None = None
    sparse_model: str = "bm25"
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    bm25_avg_len: float = 256.0

    # Chunking.
    chunk_tokens: int = 256
    chunk_overlap: int = 32

    # Indexing.
    upsert_batch_size: int = 256
    bad_input_policy: BadInputPolicy = BadInputPolicy.FAIL
    cache_dir: Path = Field(default_factory=default_cache_dir)
    embedding_cache: bool = True

    # Search.
    fusion: FusionMethod = FusionMethod.RRF
    rrf_k: int = 10  # chosen on SciFact train (README, Quality); Qdrant and the RRF paper use 60
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    prefetch_k: int = 100
    k: int = 10

    # Reranking (embedding-based listwise, E2Rank style).
    rerank: bool = True  # safe on any corpus: feedback is gated by the channels' agreement (rerank_agreement)
    rerank_mode: RerankMode = RerankMode.FEEDBACK
    rerank_depth: int = 100
    rerank_feedback_k: int = 2
    rerank_feedback_beta: float = 1.0
    rerank_weight: float = 0.3
    rerank_agreement: int = 5  # feedback only from candidates both channels rank in their top N (0: no gate)
    # Query-side encoder trained against the stored document vectors (`hybrid-rag tune-reranker`).
    query_model: str | None = None
    # Quality (issue 9): the corpus-adapted query encoder (`hybrid-rag adapt`, Dagster `query_encoder`) is used
    # when query_model is unset and one was saved for the collection (under models_dir, default: the folder
    # next to qdrant_path, `data/models`) from the same dense model.
    adapted_query_model: bool = True
    models_dir: Path | None = None
    # Quality (issue 9): a query whose best BM25 hit stands out (z-score over the sparse list above this) is
    # fused by z-scores instead of `fusion`, which keeps the more confident channel ahead (long queries always
    # are); a flat sparse list (few or common query terms) keeps rank fusion. None: always `fusion`.
    zscore_fusion_above: float | None = 2.5

    @model_validator(mode="after")
    def _check(self) -> RetrievalSettings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("chunk_overlap must be smaller than chunk_tokens")
        if not 0.0 <= self.rerank_weight <= 1.0:
            raise ValueError("rerank_weight must be within [0, 1]")
        return self

    def adapted_query_dir(self) -> Path:
        """Where the corpus-adapted query encoder of this collection is saved."""
        return (self.models_dir or self.qdrant_path.parent / "models") / self.collection / "query_encoder"

    def resolved_query_model(self) -> str | None:
        """The query encoder to use: ``query_model``, else the adapted one saved for this collection from the
        same dense model (see :mod:`evals.pseudo_queries`), else None (the dense model itself)."""
        if self.query_model or not self.adapted_query_model:
            return self.query_model
        marker = self.adapted_query_dir() / ADAPTED_MARKER
        if marker.is_file() and json.loads(marker.read_text()).get("base_model") == self.dense_model:
            return str(marker.parent)
        return None
