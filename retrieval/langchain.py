"""LangChain adapter: a ``BaseRetriever`` over :class:`HybridRetriever`."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict


class LangChainRetriever(BaseRetriever):
    """Yields ``Document(page_content, metadata)`` with doc_id, chunk id, scores and per-channel ranks."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Any
    k: int | None = None
    filter: dict[str, Any] | None = None
    rerank: bool | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        hits = self.retriever.search(query, k=self.k, filter=self.filter, rerank=self.rerank)
        return [_to_document(h) for h in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[LCDocument]:
        hits = await asyncio.to_thread(self.retriever.search, query, self.k, self.filter, self.rerank)
        return [_to_document(h) for h in hits]


def _to_document(hit) -> LCDocument:
    metadata = {
        **hit.metadata,
        "doc_id": hit.doc_id,
        "chunk_id": hit.chunk_id,
        "title": hit.title,
        "score": hit.score,
        "dense_rank": hit.dense_rank,
        "sparse_rank": hit.sparse_rank,
        "fused_rank": hit.fused_rank,
        "rerank_score": hit.rerank_score,
    }
    return LCDocument(page_content=hit.text, metadata=metadata, id=hit.chunk_id)
