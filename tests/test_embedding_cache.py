"""The on-disk embedding cache: each distinct text is encoded once, reused across calls and processes."""

from __future__ import annotations

import numpy as np

from retrieval.embedding_cache import EmbeddingCache


class CountingEncoder:
    """A stand-in for the dense model (what is under test is the cache): one vector per text, from its
    length, recording every text it is asked to encode."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32).reshape(len(texts), 3)


def test_each_distinct_text_is_encoded_once_and_reused(tmp_path):
    cache, encode = EmbeddingCache(tmp_path / "e.sqlite"), CountingEncoder()
    texts = ["alpha", "beta", "alpha", "gamma", "beta"]
    vectors, reused = cache.encode_through("m", texts, encode)
    assert sorted(encode.seen) == ["alpha", "beta", "gamma"] and reused == 0  # duplicates encoded once
    assert vectors.shape == (5, 3) and np.array_equal(vectors[0], vectors[2]) and vectors[1][0] == 4

    again = EmbeddingCache(tmp_path / "e.sqlite")  # a new connection, as another process would open it
    vectors2, reused2 = again.encode_through("m", [*texts, "delta"], encode)
    assert encode.seen[3:] == ["delta"] and reused2 == 5
    assert np.array_equal(vectors2[:5], vectors)
    _, other_model = again.encode_through("other", ["alpha"], encode)
    assert other_model == 0 and encode.seen[-1] == "alpha"  # keyed by model too


def test_a_large_cold_batch_is_encoded_in_one_call(tmp_path):
    """50,000 texts (a tenth repeated) on an empty cache: one encode call with the 45,000 distinct texts.
    Counting reused vectors once rebuilt a dict per text (quadratic): this call then took minutes."""
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    calls: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.ones((len(texts), 2), dtype=np.float32)

    texts = [f"text {i % 45_000}" for i in range(50_000)]
    vectors, reused = cache.encode_through("m", texts, encode)
    assert calls == [45_000] and reused == 0 and vectors.shape == (50_000, 2)
    _, reused = cache.encode_through("m", texts, encode)
    assert calls == [45_000] and reused == 50_000
