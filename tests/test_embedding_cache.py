"""The on-disk embedding cache: each distinct text is encoded once, reused across calls and processes."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval.embedding_cache import EmbeddingCache, EmbeddingCacheError


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


def _filled(path) -> None:
    """A cache file of 2,000 vectors of 384 floats (3 MB), closed as a finished run leaves it."""
    cache = EmbeddingCache(path)
    cache.put_many("m", {f"h{i:05d}": np.full(384, i, dtype=np.float32) for i in range(2000)})
    cache._conn().close()


def _truncate(path) -> None:
    os.truncate(path, 8192)  # pages the table's b-tree points to are gone: "database disk image is malformed"


def _garbage(path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(100_000))  # "file is not a database"


@pytest.mark.parametrize("damage", [_truncate, _garbage])
def test_a_damaged_cache_is_set_aside_with_a_warning_and_a_fresh_one_used(tmp_path, caplog, damage):
    """It is only a cache: a damaged file (found on opening, or by a later read) is renamed
    ``embeddings.sqlite.damaged-<time>`` (nothing deleted), encoding goes on, the fresh file caches again."""
    path = tmp_path / "embeddings.sqlite"
    _filled(path)
    damage(path)
    damaged_bytes = path.read_bytes()
    cache, encode = EmbeddingCache(path), CountingEncoder()
    with caplog.at_level(logging.WARNING, logger="retrieval.embedding_cache"):
        vectors, reused = cache.encode_through("m", ["alpha", "beta"], encode)
    assert reused == 0 and vectors.shape == (2, 3) and encode.seen == ["alpha", "beta"]
    aside = [p for p in tmp_path.glob("embeddings.sqlite.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert [p.read_bytes() for p in aside] == [damaged_bytes]  # kept as it was, for whoever wants to look
    assert "damaged" in caplog.text and str(path) in caplog.text and aside[0].name in caplog.text
    _, reused = EmbeddingCache(path).encode_through("m", ["alpha", "beta"], encode)
    assert reused == 2 and encode.seen == ["alpha", "beta"]  # the fresh file works, across connections


def test_a_cache_that_cannot_be_used_is_one_error_naming_the_file_and_the_remedy(tmp_path):
    path = tmp_path / "embeddings.sqlite"
    path.mkdir()  # not damaged content (nothing to set aside): SQLite cannot open it at all
    cache = EmbeddingCache(path)  # opening is lazy: a stack that never embeds documents never fails here
    with pytest.raises(EmbeddingCacheError) as err:
        cache.encode_through("m", ["alpha"], CountingEncoder())
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "HYBRID_RAG_EMBEDDING_CACHE=false" in message
    assert path.is_dir()


def test_search_never_opens_the_cache_and_index_survives_a_damaged_one(cli_env):
    """The CLI: ``search`` does not touch a damaged cache file; ``index`` (even ``--rebuild``) sets it aside and
    indexes, exit code 0."""
    docs = cli_env / "docs.jsonl"
    docs.write_text('{"_id": "mars", "text": "The reddish hue of Mars comes from iron oxide."}\n')
    cache_file = cli_env / "cache" / "embeddings.sqlite"
    assert CliRunner().invoke(app, ["index", str(docs), "-c", "ec"]).exit_code == 0 and cache_file.is_file()
    _garbage(cache_file)
    garbage = cache_file.read_bytes()
    search = CliRunner().invoke(app, ["search", "red planet", "-c", "ec", "--k", "1", "--json"])
    assert search.exit_code == 0, search.output
    assert json.loads(search.stdout)[0]["doc_id"] == "mars" and cache_file.read_bytes() == garbage
    docs.write_text('{"_id": "mars", "text": "The red hue of Mars comes from iron oxide."}\n')
    for extra in ([], ["--rebuild"]):
        result = CliRunner().invoke(app, ["index", str(docs), "-c", "ec", *extra])
        assert result.exit_code == 0, result.output
    assert len(list(cache_file.parent.glob("embeddings.sqlite.damaged-*Z"))) == 1
