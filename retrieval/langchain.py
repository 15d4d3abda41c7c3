"""LangChain adapter: a ``BaseRetriever`` over :class:`HybridRetriever`.

It follows LangChain's own ``VectorStoreRetriever``: ``search_kwargs`` (``k``, ``filter``, ...) are the
defaults of every call, and ``invoke(query, k=3, filter={...})`` overrides them for one call; ``search_type="mmr"``
takes LangChain's ``lambda_mult`` (default 0.5) and ``fetch_k`` as ``diversity = 1 - lambda_mult`` and
``diversity_depth = fetch_k``.
"""

from __future__ import annotations

import numbers
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from retrieval.adapters import hit_metadata, shown_filter, shown_source
from retrieval.errors import InvalidArgumentError

SEARCH_KWARGS = ("k", "filter", "rerank", "variant", "group_by", "score_threshold", "diversity", "diversity_depth")
SEARCH_TYPES = ("similarity", "mmr")
MMR_KWARGS = ("lambda_mult", "fetch_k")  # LangChain's names of search_type="mmr": diversity, diversity_depth
DEFAULT_LAMBDA_MULT = 0.5  # LangChain's
SCORE_THRESHOLD_HINT = (
    " (give search_kwargs={'score_threshold': ...} to 'similarity'; a hybrid hit's score comes from its ranks, not a"
    " relevance in 0-1: README, Python)"
)
RUNNABLE_FIELDS = ("name", "tags", "metadata")  # BaseRetriever's own, for tracing: as_retriever(tags=...) takes them


class LangChainRetriever(BaseRetriever):
    """Yields ``Document(page_content, metadata)``: the metadata of the other adapters (doc id, chunk id and
    index, title, the document's own metadata, final score, per-channel ranks and scores) and ``source``, which
    LangChain's chains cite: the document's own, else its ``source_path`` (a folder's file), else its id."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    retriever: Any
    search_type: str = "similarity"
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any):
        # checked before pydantic, which would wrap the InvalidArgumentError (a ValueError) in a ValidationError
        search_type = data.get("search_type", "similarity")
        if search_type not in SEARCH_TYPES:
            hint = SCORE_THRESHOLD_HINT if search_type == "similarity_score_threshold" else ""
            raise InvalidArgumentError(
                f"search_type must be one of {', '.join(SEARCH_TYPES)}, got {search_type!r}{hint}"
            )
        _checked(data.get("search_kwargs", {}), search_type)
        super().__init__(**data)
        if "retriever" in data:
            self.retriever.check_arguments(**self._arguments({}))

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        hits = self.retriever.search(query, **self._arguments(kwargs))
        return [_to_document(h) for h in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        hits = await self.retriever.asearch(query, **self._arguments(kwargs))
        return [_to_document(h) for h in hits]

    def _arguments(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The search's arguments: ``search_kwargs`` overridden by this call's, in this library's names, with
        ``search_type="mmr"``'s default diversity."""
        arguments = _checked(self.search_kwargs, self.search_type) | _checked(kwargs, self.search_type)
        if self.search_type == "mmr":
            arguments.setdefault("diversity", 1 - DEFAULT_LAMBDA_MULT)
        return _shown(arguments)


def _checked(kwargs: dict[str, Any], search_type: str) -> dict[str, Any]:
    """``kwargs`` checked for names and LangChain's MMR names (``search_type="mmr"`` only) made this library's."""
    if not isinstance(kwargs, dict):
        raise InvalidArgumentError(f"search_kwargs must be a dict, got {type(kwargs).__name__}")
    valid = SEARCH_KWARGS + (MMR_KWARGS if search_type == "mmr" else ())
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        hint = f" ({', '.join(MMR_KWARGS)}: with search_type='mmr')" if set(unknown) & set(MMR_KWARGS) else ""
        raise InvalidArgumentError(f"unknown search arguments {unknown}{hint}; valid: {', '.join(valid)}")
    out = {key: value for key, value in kwargs.items() if key not in MMR_KWARGS}
    if "lambda_mult" in kwargs:
        if "diversity" in kwargs:
            raise InvalidArgumentError("give lambda_mult or diversity (1 - lambda_mult), not both")
        value = kwargs["lambda_mult"]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise InvalidArgumentError(
                f"lambda_mult must be a number from 0 (the most diverse) to 1 (relevance only), got {value!r}"
            )
        out["diversity"] = 1 - float(value)
    if "fetch_k" in kwargs:
        if "diversity_depth" in kwargs:
            raise InvalidArgumentError("give fetch_k or diversity_depth (the same), not both")
        out["diversity_depth"] = kwargs["fetch_k"]
    return out


def _shown(search_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The search arguments with the filter read as the documents show their fields (:func:`shown_filter`)."""
    return search_kwargs | {"filter": shown_filter(search_kwargs.get("filter"), shows_source=True)}


def _to_document(hit) -> LCDocument:
    """The hit as a LangChain ``Document``, with the ``source`` its chains cite (``{source}`` in a document
    prompt): the document's own, else its ``source_path``, else its id (:func:`shown_source`)."""
    metadata = hit_metadata(hit)
    metadata["source"] = shown_source(hit.doc_id, hit.metadata)
    return LCDocument(page_content=hit.text, metadata=metadata, id=hit.chunk_id)
