"""Long-query check (ArguAna style) built from any BEIR collection with graded qrels.

Each query is the text of a judged document of 100-300 words; its relevant set is the other documents judged
relevant to the same original query. The query document itself is ignored when scoring (BEIR's identical-id
rule, which :func:`evals.metrics.evaluate` applies), so a system gains nothing from finding the query's own
text.
"""

from __future__ import annotations

import random

from evals.collections import EvalCollection
from retrieval.documents import read_documents


def long_queries(
    collection: EvalCollection,
    split: str = "test",
    min_words: int = 100,
    max_words: int = 300,
    max_queries: int = 300,
    seed: int = 0,
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """(queries, qrels) keyed by the id of the document used as the query."""
    docs, _ = read_documents(collection.corpus_path, "jsonl")
    texts = {d.id: d.text for d in docs}
    qrels = collection.qrels(split)
    relevant_sets: dict[str, dict[str, int]] = {}
    for qid in sorted(qrels):
        relevant = sorted(d for d, grade in qrels[qid].items() if grade > 0 and d in texts)
        if len(relevant) < 2:
            continue
        for doc in relevant:
            if min_words <= len(texts[doc].split()) <= max_words:
                judged = relevant_sets.setdefault(doc, {})
                for other in relevant:
                    if other != doc:
                        judged[other] = max(judged.get(other, 0), qrels[qid][other])
    chosen = sorted(relevant_sets)
    random.Random(seed).shuffle(chosen)
    chosen = sorted(chosen[:max_queries])
    return {d: texts[d] for d in chosen}, {d: relevant_sets[d] for d in chosen}
