"""LangChain adapter: a ``BaseRetriever`` over :class:`HybridRetriever`.

It follows LangChain's own ``VectorStoreRetriever``: ``search_kwargs`` (``k``, ``filter``, ...) are the
defaults of every call, and ``invoke(query, k=3, filter={...})`` overrides them for one call.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from retrieval.adapters import hit_metadata, shown_filter
from retrieval.errors import InvalidArgumentError

SEARCH_KWARGS = ("k", "filter", "rerank", "variant", "group_by", "score_threshold")


class LangChainRetriever(BaseRetriever):
    """Yields ``Document(page_content, metadata)``: the metadata of the other adapters (doc id, chunk id and
    index, title, the document's own metadata, final score, per-channel ranks and scores)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    retriever: Any
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any):
        # checked before pydantic, which would wrap the InvalidArgumentError (a ValueError) in a ValidationError
        search_kwargs = _checked(data.get("search_kwargs", {}))
        if "retriever" in data:
            data["retriever"].check_arguments(**_shown(search_kwargs))
        super().__init__(**data)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        hits = self.retriever.search(query, **_shown(self.search_kwargs | _checked(kwargs)))
        return [_to_document(h) for h in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        search_kwargs = _shown(self.search_kwargs | _checked(kwargs))
        hits = await self.retriever.asearch(query, **search_kwargs)
        return [_to_document(h) for h in hits]


def _checked(kwargs: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(kwargs, dict):
        raise InvalidArgumentError(f"search_kwargs must be a dict, got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - set(SEARCH_KWARGS))
    if unknown:
        raise InvalidArgumentError(f"unknown search arguments {unknown}; valid: {', '.join(SEARCH_KWARGS)}")
    return dict(kwargs)


def _shown(search_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The search arguments with the filter read as the documents show their fields (:func:`shown_filter`)."""
    return search_kwargs | {"filter": shown_filter(search_kwargs.get("filter"))}


def _to_document(hit) -> LCDocument:
    return LCDocument(page_content=hit.text, metadata=hit_metadata(hit), id=hit.chunk_id)
