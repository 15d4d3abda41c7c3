"""LlamaIndex adapter: a ``BaseRetriever`` over :class:`HybridRetriever` returning ``NodeWithScore``."""

from __future__ import annotations

import inspect
from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from retrieval.adapters import adapter_repr, hit_metadata, shown_filter
from retrieval.errors import FilterError, InvalidArgumentError, choice
from retrieval.search import GroupBy

ARGUMENTS = ("k", "filter", "rerank", "group_by", "diversity", "diversity_depth")
BASE_ARGUMENTS = tuple(p for p in inspect.signature(BaseRetriever.__init__).parameters if p != "self")  # LlamaIndex's
_RANGES = {FilterOperator.GT: "gt", FilterOperator.GTE: "gte", FilterOperator.LT: "lt", FilterOperator.LTE: "lte"}
_OPERATORS = ("==", "in", "is_empty", *(op.value for op in _RANGES))
# LlamaIndex's and Haystack's names of this adapter's arguments
HINTS = {"similarity_top_k": "k", "top_k": "k", "filters": "filter (MetadataFilters or a filter dict)"}


class LlamaIndexRetriever(BaseRetriever):
    """Yields ``NodeWithScore(TextNode(text, id_=chunk id, metadata), score)``; the metadata carries the doc id,
    chunk id, title, the document's own metadata, and the per-channel ranks and scores of the hit."""

    def __init__(
        self,
        retriever: Any,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        rerank: bool | None = None,
        group_by: str = "chunk",
        diversity: float | None = None,
        diversity_depth: int | None = None,
        **kwargs: Any,
    ):
        _check_names(kwargs)
        self.retriever, self.k, self.filter, self.rerank = retriever, k, filter, rerank
        self.group_by = choice(GroupBy, group_by, "group_by").value  # "doc": one node per document, its best chunk
        self.diversity, self.diversity_depth = diversity, diversity_depth  # search's: MMR, off by default
        retriever.check_arguments(**self._arguments())
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        """What it searches and the arguments given (LlamaIndex's own repr is the object's address)."""
        given = {"k": self.k, "filter": self.filter, "rerank": self.rerank}
        given |= {"diversity": self.diversity, "diversity_depth": self.diversity_depth}
        return adapter_repr("LlamaIndexRetriever", self.retriever, self.group_by, **given)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.retriever.search(query_bundle.query_str, **self._arguments())
        return [_to_node(h) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = await self.retriever.asearch(query_bundle.query_str, **self._arguments())
        return [_to_node(h) for h in hits]

    def _arguments(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "filter": shown_filter(to_filter(self.filter)),
            "rerank": self.rerank,
            "group_by": self.group_by,
            "diversity": self.diversity,
            "diversity_depth": self.diversity_depth,
        }


def to_filter(filters: Any) -> Any:
    """LlamaIndex ``MetadataFilters`` as this library's filter dict; anything else passes as given (None, a filter
    dict, or something search refuses clearly).

    Filters map where the library has the same condition: ``AND`` of ``==`` (a single value), ``in`` (a list),
    ``is_empty`` (missing, null or an empty list, as ``{key: None}``), ``>``, ``>=``, ``<``, ``<=``; ``OR``, ``NOT``
    and the other operators raise :class:`FilterError`."""
    if not isinstance(filters, MetadataFilters):
        return filters
    out: dict[str, Any] = {}
    for condition in _conditions(filters):
        key, operator, value = condition.key, condition.operator, condition.value
        where = f"LlamaIndex filter on {key!r}"
        if operator in _RANGES:
            bounds = out.setdefault(key, {})
            if not isinstance(bounds, dict):
                raise FilterError(f"{where}: a range and an equality on the same key")
            bounds[_RANGES[operator]] = value
            continue
        if operator not in (FilterOperator.EQ, FilterOperator.IN, FilterOperator.IS_EMPTY):
            raise FilterError(
                f"{where}: operator {operator.value!r} is not supported; valid: {', '.join(_OPERATORS)} (with AND)"
            )
        if key in out:
            raise FilterError(f"{where}: ==, in or is_empty and another condition on the same key")
        if operator == FilterOperator.IN and not isinstance(value, list):
            raise FilterError(f"{where}: 'in' needs a list, got {value!r}")
        if operator == FilterOperator.EQ and isinstance(value, list):
            raise FilterError(f"{where}: '==' needs a single value (a list: use 'in')")
        out[key] = None if operator == FilterOperator.IS_EMPTY else value
    return out or None


def _conditions(filters: MetadataFilters) -> list[MetadataFilter]:
    if filters.condition not in (None, FilterCondition.AND):
        raise FilterError(f"LlamaIndex filter: only AND combines conditions, not {filters.condition.value!r}")
    nested = [_conditions(f) if isinstance(f, MetadataFilters) else [f] for f in filters.filters]
    return [condition for conditions in nested for condition in conditions]


def _check_names(kwargs: dict[str, Any]) -> None:
    """Refuse what neither this adapter nor LlamaIndex's ``BaseRetriever`` takes, naming what to give instead (its
    own ``TypeError`` names ``BaseRetriever.__init__``, which the caller never called)."""
    unknown = sorted(set(kwargs) - set(BASE_ARGUMENTS))
    if unknown:
        hints = "".join(f"; {name}: give {HINTS[name]}" for name in unknown if name in HINTS)
        raise InvalidArgumentError(
            f"unknown arguments {unknown}{hints}; valid: {', '.join(ARGUMENTS)} and LlamaIndex's "
            f"{', '.join(BASE_ARGUMENTS)}"
        )


def _to_node(hit) -> NodeWithScore:
    metadata = hit_metadata(hit)
    node = TextNode(
        id_=hit.chunk_id,
        text=hit.text,
        metadata=metadata,
        start_char_idx=hit.start,  # LlamaIndex's own fields for where the text lies in its document
        end_char_idx=hit.end,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.doc_id)},  # node.ref_doc_id
        # what the LLM sees next to the text: the title only, not ids and ranks
        excluded_llm_metadata_keys=[key for key in metadata if key != "title"],
        excluded_embed_metadata_keys=list(metadata),
    )
    return NodeWithScore(node=node, score=hit.score)
