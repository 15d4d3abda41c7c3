"""Cross-check of the sparse channel against a reference BM25 (rank-bm25) on the sample collection.

Both sides lowercase, drop English stopwords and apply the Snowball English stemmer. Remaining differences
are expected and small: the stopword lists differ (Lucene's vs the short list below), Qdrant's tokenizer
splits on every non-alphanumeric character, Qdrant's IDF is ln(1 + (N - n + 0.5) / (n + 0.5)) while
Okapi's is ln((N - n + 0.5) / (n + 0.5)) with a floor, and our length normalization uses a configured
average length (``bm25_avg_len``) instead of the corpus average.
"""

import re

import numpy as np
import pytest
import snowballstemmer
from rank_bm25 import BM25Okapi

from evals.collections import sample_collection
from retrieval import RetrievalSettings, read_documents

STOPWORDS = set(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "do",
        "does",
        "did",
        "can",
        "you",
        "your",
        "my",
        "we",
        "our",
        "they",
        "their",
        "he",
        "she",
        "his",
        "her",
        "them",
        "not",
        "no",
    ]
)
STEM = snowballstemmer.stemmer("english")


def tokens(text: str) -> list[str]:
    words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]
    return STEM.stemWords(words)


@pytest.fixture(scope="module")
def both_rankings(indexed_stack):
    coll = sample_collection()
    docs, _ = read_documents(coll.root)
    # the shared embedding cache (dense vectors are needed to index, not compared here)
    stack = indexed_stack("edge", docs, collection="bm25", rerank=False, cache_dir=RetrievalSettings().cache_dir)
    ours = stack.retriever()
    reference = BM25Okapi([tokens(f"{d.title}\n{d.text}") for d in docs])
    ids = [d.id for d in docs]
    pairs = []
    for text in coll.queries().values():
        scores = reference.get_scores(tokens(text))
        ref = [ids[i] for i in np.argsort(-scores, kind="stable") if scores[i] > 0][:10]
        got = [h.doc_id for h in ours.search(text, k=10, variant="sparse")]
        pairs.append((text, ref, got))
    stack.close()
    return pairs


def test_sparse_channel_ranks_like_reference_bm25(both_rankings):
    comparable = [(q, ref, got) for q, ref, got in both_rankings if ref and got]
    assert len(comparable) >= 0.9 * len(both_rankings)
    top1 = np.mean([ref[0] == got[0] for _, ref, got in comparable])
    overlap = np.mean([len(set(ref[:5]) & set(got[:5])) / min(5, len(ref), len(got)) for _, ref, got in comparable])
    print(f"top-1 agreement {top1:.2f}, overlap@5 {overlap:.2f} over {len(comparable)} queries")
    assert top1 >= 0.8
    assert overlap >= 0.75
