"""LlamaIndex adapter: a ``BaseRetriever`` over :class:`HybridRetriever` returning ``NodeWithScore``."""

from __future__ import annotations

from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode

from retrieval.adapters import adapter_repr, hit_metadata, shown_filter
from retrieval.errors import choice
from retrieval.search import GroupBy


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
            "filter": shown_filter(self.filter),
            "rerank": self.rerank,
            "group_by": self.group_by,
            "diversity": self.diversity,
            "diversity_depth": self.diversity_depth,
        }


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
