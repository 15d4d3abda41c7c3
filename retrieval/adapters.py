"""What the framework adapters (LangChain, LlamaIndex, Haystack) attach to each hit, and how they filter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retrieval.store.base import SHOWN_STORED, ShownFilter


def hit_metadata(hit: Any) -> dict[str, Any]:
    """Where the hit came from (chunk index, ``start``/``end`` offsets of its text in the document's text, title,
    final score, per-channel ranks and scores;
    ``dense_score``/``sparse_score`` are None where the :class:`~retrieval.search.Hit` lacks them), then the
    document's own metadata, which wins on a clash: its values round-trip exactly (the hit's stay on the ``Hit``,
    and on the node's/document's own ``score`` and ``id``), except a ``title`` or ``chunk_index`` that is null or
    an empty list (the stored one shows, as :func:`shown_filter` tests); last the ids ``doc_id`` and ``chunk_id``,
    which are always the hit's (a ``doc_id`` filter matches them; a metadata field of that name stays on
    ``Hit.metadata``)."""
    own = {k: v for k, v in hit.metadata.items() if not (k in SHOWN_STORED and (v is None or v == []))}
    return {
        "chunk_index": hit.chunk_index,
        "start": getattr(hit, "start", None),
        "end": getattr(hit, "end", None),
        "title": hit.title,
        "score": hit.score,
        "dense_rank": hit.dense_rank,
        "sparse_rank": hit.sparse_rank,
        "fused_rank": hit.fused_rank,
        "dense_score": getattr(hit, "dense_score", None),
        "sparse_score": getattr(hit, "sparse_score", None),
        "rerank_score": hit.rerank_score,
        **own,
        "doc_id": hit.doc_id,
        "chunk_id": hit.chunk_id,
    }


def shown_source(doc_id: str, metadata: Mapping[str, Any]) -> Any:
    """The ``source`` LangChain's chains cite (its loaders set it to a file path): the document's own metadata
    ``source`` where it has one (not null, not an empty list), else its ``source_path`` (a folder's file, relative
    to the folder) where it has one, else its id."""
    for key in ("source", "source_path"):
        if metadata.get(key) not in (None, []):
            return metadata[key]
    return doc_id


def adapter_repr(name: str, retriever: Any, group_by: str, **given: Any) -> str:
    """``Name(retriever=..., <the arguments given>)``: what an adapter searches (the frameworks' own reprs of
    LlamaIndex and Haystack components show the object's address)."""
    shown = [f"{key}={value!r}" for key, value in given.items() if value is not None]
    shown += [f"group_by={group_by!r}"] if group_by != "chunk" else []
    return f"{name}({', '.join([f'retriever={retriever!r}', *shown])})"


def shown_filter(spec: Any, *, shows_source: bool = False) -> Any:
    """An adapter's filter dict as a :class:`~retrieval.store.base.ShownFilter`: each key tests the value
    :func:`hit_metadata` shows (``title``: the document's own metadata title if it has one, else the stored
    title), and ``source`` the one LangChain's documents show (``shows_source``). Anything else passes as given
    (the search refuses it)."""
    return ShownFilter(spec, shows_source=shows_source) if isinstance(spec, dict) else spec
