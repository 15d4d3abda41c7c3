"""Haystack 2 adapter: a ``@component`` over :class:`HybridRetriever` with ``run`` and ``run_async``."""

from __future__ import annotations

import asyncio
from typing import Any

from haystack import Document, component

from retrieval.adapters import hit_metadata

_COMPARISONS = {"==": None, "in": None, ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}


@component
class HaystackRetriever:
    """Retrieves ``Document(id=chunk id, content, meta, score)``; ``meta`` carries the doc id, chunk id, title,
    the document's own metadata, and the per-channel ranks and scores of the hit.

    ``filters`` are Haystack filters (``{"field": "meta.year", "operator": ">=", "value": 2020}``, combined
    with ``AND``; the operators ``==``, ``in``, ``>``, ``>=``, ``<``, ``<=``) or this library's filter dicts
    (``{"year": {"gte": 2020}}``). Runtime filters replace the ones given at construction.
    """

    def __init__(
        self,
        retriever: Any,
        top_k: int | None = None,
        filters: dict[str, Any] | None = None,
        rerank: bool | None = None,
    ):
        self.retriever, self.top_k, self.filters, self.rerank = retriever, top_k, filters, rerank

    @component.output_types(documents=list[Document])
    def run(self, query: str, top_k: int | None = None, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        hits = self.retriever.search(query, *self._arguments(top_k, filters))
        return {"documents": [_to_document(h) for h in hits]}

    @component.output_types(documents=list[Document])
    async def run_async(
        self, query: str, top_k: int | None = None, filters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        hits = await asyncio.to_thread(self.retriever.search, query, *self._arguments(top_k, filters))
        return {"documents": [_to_document(h) for h in hits]}

    def _arguments(self, top_k: int | None, filters: dict[str, Any] | None) -> tuple:
        return top_k or self.top_k, to_filter(filters if filters is not None else self.filters), self.rerank


def to_filter(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """A Haystack filter (an ``AND`` of comparisons) as this library's filter dict; other dicts pass through."""
    if not filters or "operator" not in filters:
        return filters or None
    out: dict[str, Any] = {}
    for field, operator, value in _comparisons(filters):
        key = field.removeprefix("meta.")
        if operator not in _COMPARISONS:
            raise ValueError(f"Haystack filter on {field!r}: operator {operator!r} is not supported")
        if operator in {"==", "in"}:
            if key in out:
                raise ValueError(f"Haystack filter on {field!r}: more than one condition with == or in")
            out[key] = list(value) if operator == "in" else value
        else:
            bounds = out.setdefault(key, {})
            if not isinstance(bounds, dict):
                raise ValueError(f"Haystack filter on {field!r}: a range and an equality on the same field")
            bounds[_COMPARISONS[operator]] = value
    return out


def _comparisons(node: dict[str, Any]) -> list[tuple[str, str, Any]]:
    if "conditions" in node:
        if node["operator"] != "AND":
            raise ValueError(f"Haystack filter: only AND is supported, not {node['operator']!r}")
        return [c for child in node["conditions"] for c in _comparisons(child)]
    return [(node["field"], node["operator"], node["value"])]


def _to_document(hit) -> Document:
    return Document(id=hit.chunk_id, content=hit.text, meta=hit_metadata(hit), score=hit.score)
