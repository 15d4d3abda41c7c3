"""Haystack 2 adapter: a ``@component`` over :class:`HybridRetriever` with ``run`` and ``run_async``."""

from __future__ import annotations

import inspect
from typing import Any

from haystack import Document, component
from haystack.core.serialization import default_to_dict

from retrieval.adapters import adapter_repr, hit_metadata, shown_filter
from retrieval.errors import FilterError, InvalidArgumentError, choice
from retrieval.search import GroupBy
from retrieval.store.base import check_nesting

HINTS = {"k": "top_k", "filter": "filters"}  # the search's and LlamaIndex's names of this component's arguments
_COMPARISONS = {"==": None, "in": None, ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}  # Haystack -> range op


@component
class HaystackRetriever:
    """Retrieves ``Document(id=chunk id, content, meta, score)``; ``meta`` carries the doc id, chunk id, title,
    the document's own metadata, and the per-channel ranks and scores of the hit.

    ``filters`` are Haystack filters (``{"field": "meta.year", "operator": ">=", "value": 2020}``; see
    :func:`to_filter`) or this library's filter dicts (``{"year": {"gte": 2020}}``). Runtime filters replace the
    ones given at construction; ``top_k`` below 1 raises, as ``search(k=0)`` does.

    Saved pipelines (``Pipeline.dumps()``/``loads()``) hold the retriever's settings, not the retriever: see
    :meth:`to_dict` and :meth:`from_dict`.
    """

    def __init__(
        self,
        retriever: Any,
        top_k: int | None = None,
        filters: dict[str, Any] | None = None,
        rerank: bool | None = None,
        group_by: str = "chunk",
        diversity: float | None = None,
        diversity_depth: int | None = None,
    ):
        self.retriever, self.top_k, self.filters, self.rerank = retriever, top_k, filters, rerank
        self.group_by = choice(GroupBy, group_by, "group_by").value  # "doc": one Document per document, its best chunk
        self.diversity, self.diversity_depth = diversity, diversity_depth  # search's: MMR, off by default
        retriever.check_arguments(*self._arguments(None, None), **self._options())
        if top_k is not None:  # numpy's integer types too (search takes them): a saved pipeline needs a plain int
            self.top_k = int(top_k)

    @component.output_types(documents=list[Document])
    def run(self, query: str, top_k: int | None = None, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        hits = self.retriever.search(query, *self._arguments(top_k, filters), **self._options())
        return {"documents": [_to_document(h) for h in hits]}

    @component.output_types(documents=list[Document])
    async def run_async(
        self, query: str, top_k: int | None = None, filters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        hits = await self.retriever.asearch(query, *self._arguments(top_k, filters), **self._options())
        return {"documents": [_to_document(h) for h in hits]}

    def to_dict(self) -> dict[str, Any]:
        """The component as Haystack saves it: what reopens its retriever (:meth:`HybridRetriever.saved`: the
        collection, where it is, the settings that differ from the defaults, never the API key) and ``top_k``,
        ``filters``, ``rerank``, ``group_by``, ``diversity``, ``diversity_depth``."""
        settings, version = self.retriever.saved()
        return default_to_dict(
            self,
            settings=settings,
            version=version,
            top_k=self.top_k,
            filters=self.filters,
            rerank=self.rerank,
            **self._options(),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HaystackRetriever:
        """The component :meth:`to_dict` saved, its retriever reopened (:func:`~retrieval.stack.reopen`) on a stack
        of its own (:attr:`stack`)."""
        from retrieval.stack import reopen  # here: the stack's retrievers import this module lazily

        params = dict(data.get("init_parameters") or {})
        return cls(reopen(params.pop("settings"), params.pop("version", None)), **params)

    @property
    def stack(self) -> Any:
        """The stack a loaded component's retriever opened for itself (None for one built on a stack's retriever):
        ``component.retriever.close()`` closes it."""
        return self.retriever.own_stack

    def _options(self) -> dict[str, Any]:
        return {"group_by": self.group_by, "diversity": self.diversity, "diversity_depth": self.diversity_depth}

    def _arguments(self, top_k: int | None, filters: dict[str, Any] | None) -> tuple:
        return (
            self.top_k if top_k is None else top_k,
            shown_filter(to_filter(filters if filters is not None else self.filters)),
            self.rerank,
        )


_haystack_repr = HaystackRetriever.__repr__  # @component's: the object's address, then its name and sockets


def _repr(self: HaystackRetriever) -> str:
    """What it searches and the arguments given, then what Haystack shows of a component (its name in a pipeline,
    its sockets)."""
    given = {"top_k": self.top_k, "filters": self.filters, "rerank": self.rerank}
    given |= {"diversity": self.diversity, "diversity_depth": self.diversity_depth}
    head = adapter_repr("HaystackRetriever", self.retriever, self.group_by, **given)
    return "\n".join([head, *_haystack_repr(self).split("\n")[1:]])


HaystackRetriever.__repr__ = _repr  # type: ignore[method-assign]


def to_filter(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """A Haystack filter as this library's filter dict; a dict without ``operator`` is one already and passes.

    Haystack filters map where the library has the same condition: ``AND`` of comparisons on ``meta.<key>``
    with ``==`` (a value, or None: missing, null or an empty list, as this library's ``{key: None}``), ``in`` (a
    list), ``>``, ``>=``, ``<``, ``<=`` (numbers or ISO 8601 dates); numbers match as in
    :func:`~retrieval.store.base.filter_conditions` (``4`` matches a stored ``4.0``). ``OR``, ``NOT``, ``!=``,
    ``not in``, other fields and a filter nesting dicts and lists deeper than
    :data:`~retrieval.store.base.MAX_FILTER_DEPTH` raise :class:`FilterError`.
    """
    if not isinstance(filters, dict) or "operator" not in filters:
        return filters or None  # None, this library's filter dict, or something search refuses clearly
    check_nesting(filters, "the Haystack filter")
    out: dict[str, Any] = {}
    for field, operator, value in _comparisons(filters):
        if not isinstance(field, str) or not field.startswith("meta.") or field == "meta.":
            raise FilterError(f"Haystack filter on {field!r}: only metadata fields ('meta.<key>') can be filtered")
        key = field.removeprefix("meta.")
        if not isinstance(operator, str) or operator not in _COMPARISONS:
            raise FilterError(
                f"Haystack filter on {field!r}: operator {operator!r} is not supported; "
                f"valid: {', '.join(_COMPARISONS)} (combined with AND)"
            )
        if operator in {"==", "in"}:
            if key in out:
                raise FilterError(f"Haystack filter on {field!r}: == or in and another condition on the same field")
            if operator == "in" and not isinstance(value, list):
                raise FilterError(f"Haystack filter on {field!r}: 'in' needs a list, got {value!r}")
            if operator == "==" and isinstance(value, list | dict):
                raise FilterError(f"Haystack filter on {field!r}: '==' needs a single value (a list: use 'in')")
            out[key] = value
        else:
            bounds = out.setdefault(key, {})
            if not isinstance(bounds, dict):
                raise FilterError(f"Haystack filter on {field!r}: a range and an equality on the same field")
            bounds[_COMPARISONS[operator]] = value
    return out


def _comparisons(node: Any) -> list[tuple[Any, Any, Any]]:
    if not isinstance(node, dict):
        raise FilterError(f"Haystack filter: a condition must be a dict, got {node!r}")
    if "conditions" in node:
        if node.get("operator") != "AND":
            raise FilterError(f"Haystack filter: only AND combines conditions, not {node.get('operator')!r}")
        if not isinstance(node["conditions"], list):
            raise FilterError(f"Haystack filter: 'conditions' must be a list, got {node['conditions']!r}")
        return [c for child in node["conditions"] for c in _comparisons(child)]
    if not {"field", "operator", "value"} <= set(node):
        raise FilterError(f"Haystack filter: a comparison needs 'field', 'operator' and 'value', got {node!r}")
    return [(node["field"], node["operator"], node["value"])]


def _to_document(hit) -> Document:
    return Document(id=hit.chunk_id, content=hit.text, meta=hit_metadata(hit), score=hit.score)


def check_names(kwargs: dict[str, Any]) -> None:
    """Refuse what :class:`HaystackRetriever` does not take, naming what to give instead (Python's own ``TypeError``
    names ``HaystackRetriever.__init__``, which the caller of ``as_haystack`` never called)."""
    valid = [p for p in inspect.signature(HaystackRetriever.__init__).parameters if p not in ("self", "retriever")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        hints = "".join(f"; {name}: give {HINTS[name]}" for name in unknown if name in HINTS)
        raise InvalidArgumentError(f"unknown arguments {unknown}{hints}; valid: {', '.join(valid)}")
