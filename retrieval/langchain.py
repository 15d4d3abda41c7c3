"""LangChain adapter: a ``BaseRetriever`` over :class:`HybridRetriever`.

It follows LangChain's own ``VectorStoreRetriever``: ``search_kwargs`` (``k``, ``filter``, ...) are the
defaults of every call, and ``invoke(query, k=3, filter={...})`` overrides them for one call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_validator

from retrieval.errors import InvalidArgumentError

SEARCH_KWARGS = ("k", "filter", "rerank", "variant", "group_by", "score_threshold")


class LangChainRetriever(BaseRetriever):
    """Yields ``Document(page_content, metadata)`` with doc_id, chunk id, scores and per-channel ranks."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    retriever: Any
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("search_kwargs")
    @classmethod
    def _known(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _checked(value)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        hits = self.retriever.search(query, **(self.search_kwargs | _checked(kwargs)))
        return [_to_document(h) for h in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        search_kwargs = self.search_kwargs | _checked(kwargs)
        hits = await asyncio.to_thread(lambda: self.retriever.search(query, **search_kwargs))
        return [_to_document(h) for h in hits]


def _checked(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(SEARCH_KWARGS))
    if unknown:
        raise InvalidArgumentError(f"unknown search arguments {unknown}; valid: {', '.join(SEARCH_KWARGS)}")
    return dict(kwargs)


def _to_document(hit) -> LCDocument:
    metadata = {
        **hit.metadata,
        "doc_id": hit.doc_id,
        "chunk_id": hit.chunk_id,
        "chunk_index": hit.chunk_index,
        "title": hit.title,
        "score": hit.score,
        "dense_rank": hit.dense_rank,
        "sparse_rank": hit.sparse_rank,
        "fused_rank": hit.fused_rank,
        "rerank_score": hit.rerank_score,
    }
    return LCDocument(page_content=hit.text, metadata=metadata, id=hit.chunk_id)
