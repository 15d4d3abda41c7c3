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
from retrieval.errors import InvalidArgumentError


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


def test_a_cache_folder_that_cannot_be_made_fails_index_before_anything_is_written(cli_env, monkeypatch):
    """An unwritable or missing home (``~/.cache`` cannot be made; here a file stands where the folder would be):
    ``index`` is one line naming the folder and both settings, exit code 2, checked before the models load or a
    version is staged: the published version keeps its documents and no staged copy is left."""
    docs = cli_env / "docs.jsonl"
    docs.write_text('{"_id": "mars", "text": "The reddish hue of Mars comes from iron oxide."}\n')
    assert CliRunner().invoke(app, ["index", str(docs), "-c", "ec"]).exit_code == 0
    before = sorted(p.name for p in (cli_env / "index").iterdir())
    (cli_env / "home").write_text("not a folder")
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(cli_env / "home" / ".cache" / "hybrid-rag"))
    docs.write_text('{"_id": "venus", "text": "Venus is wrapped in clouds of sulfuric acid."}\n')
    result = CliRunner().invoke(app, ["index", str(docs), "-c", "ec"])
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: embedding cache {cli_env / 'home' / '.cache' / 'hybrid-rag'}"), line
    assert "HYBRID_RAG_CACHE_DIR" in line and "HYBRID_RAG_EMBEDDING_CACHE=false" in line
    assert "delete the file" not in line  # nothing is damaged
    assert sorted(p.name for p in (cli_env / "index").iterdir()) == before
    search = CliRunner().invoke(app, ["search", "planet", "-c", "ec", "--json", "--no-rerank"])
    assert [h["doc_id"] for h in json.loads(search.stdout)] == ["mars"]


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


# -- bounding the cache: last-used times, prune, the cache command -------------------------------------------
DAY = 86_400


class Clock:
    """The cache's clock (``time.time`` in its module), moved by hand: what is under test is which rows a prune
    keeps after days of use and disuse, which a test cannot wait for."""

    def __init__(self, monkeypatch, start: float = 1_800_000_000.0) -> None:
        self.now = start
        monkeypatch.setattr("retrieval.embedding_cache.time.time", lambda: self.now)

    def advance(self, days: float) -> None:
        self.now += days * DAY


def _used(path, model: str = "m") -> dict[str, int]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT hash, used FROM vectors WHERE model = ?", (model,)))


def test_prune_deletes_the_rows_unused_for_longer_than_asked_and_shrinks_the_file(tmp_path, monkeypatch):
    """A hit renews a row's last-used time (once a day at most: hits within a day write nothing); a prune
    deletes only rows unused for longer than ``older_than``, VACUUMs the file smaller, and the kept rows are
    still hits."""
    clock, path = Clock(monkeypatch), tmp_path / "e.sqlite"
    cache, encode = EmbeddingCache(path), CountingEncoder()
    cache.put_many("m", {f"old{i}": np.full(384, i, dtype=np.float32) for i in range(3000)})  # 4.6 MB
    cache.encode_through("m", ["kept", "dropped"], encode, label="model-a")
    clock.advance(0.5)
    cache.encode_through("m", ["kept"], encode)
    assert len(set(_used(path).values())) == 1  # a hit within a day of the last mark writes nothing
    clock.advance(20)
    cache.encode_through("m", ["kept"], encode)  # a hit after a day renews the mark
    clock.advance(15)  # "kept" used 15 days ago, the others 35.5 days ago
    report = cache.prune(older_than=30 * DAY)
    assert (report.rows_deleted, report.rows_left) == (3001, 1)
    assert report.bytes_after < report.bytes_before / 4  # the file shrinks, not only its free pages
    seen = len(encode.seen)
    _, reused = EmbeddingCache(path).encode_through("m", ["kept", "dropped"], encode)
    assert reused == 1 and encode.seen[seen:] == ["dropped"]  # the pruned text is encoded again, the kept one not
    assert cache.prune(older_than=30 * DAY).rows_deleted == 0  # re-running finds nothing more


def test_prune_by_model_name_or_key_and_usage_per_model(tmp_path):
    """``usage`` gives rows, vector bytes and the recorded model name per cache key; ``prune(model=...)`` takes a
    key or a recorded name and leaves every other key alone."""
    cache, encode = EmbeddingCache(tmp_path / "e.sqlite"), CountingEncoder()
    cache.encode_through("key-a", ["one", "two"], encode, label="model-a")
    cache.encode_through("key-b", ["one"], encode, label="model-b")
    cache.put_many("key-c", {"h": np.ones(3, dtype=np.float32)})  # a key written without a name
    usage = {u.model: u for u in cache.usage()}
    assert {k: (u.label, u.rows, u.vector_bytes) for k, u in usage.items()} == {
        "key-a": ("model-a", 2, 24),
        "key-b": ("model-b", 1, 12),
        "key-c": (None, 1, 12),
    }
    assert cache.prune(model="model-a").rows_deleted == 2  # by name, every row (no age given)
    assert cache.prune(model="key-c").rows_deleted == 1  # by key
    assert [(u.model, u.rows) for u in cache.usage()] == [("key-b", 1)]
    with pytest.raises(InvalidArgumentError, match=r"'no-such-model' .*\(it holds: model-b\)"):
        cache.prune(model="no-such-model")


def _old_release_cache(path) -> None:
    """A cache file as releases before last-used times wrote it: the same statements as that code ran."""
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT, hash TEXT, vector BLOB, PRIMARY KEY (model, hash))")
    rows = [("m", f"h{i}", np.full(3, i, dtype=np.float32).tobytes()) for i in range(5)]
    with conn:
        conn.executemany("INSERT OR REPLACE INTO vectors (model, hash, vector) VALUES (?, ?, ?)", rows)
    conn.close()


def test_a_cache_file_from_an_earlier_release_is_upgraded_in_place(tmp_path, monkeypatch):
    """Its vectors stay hits; its rows count as used when it was upgraded (an age-based prune right after the
    upgrade deletes none of them); the earlier release's own insert still works on the upgraded file."""
    import sqlite3

    clock, path = Clock(monkeypatch), tmp_path / "e.sqlite"
    _old_release_cache(path)
    cache = EmbeddingCache(path)
    found = cache.get_many("m", [f"h{i}" for i in range(6)])
    assert sorted(found) == [f"h{i}" for i in range(5)] and found["h3"].tolist() == [3.0, 3.0, 3.0]
    assert set(_used(path).values()) == {int(clock.now)}
    assert cache.prune(older_than=30 * DAY).rows_deleted == 0
    with sqlite3.connect(path) as old:  # a process of the earlier release writing meanwhile
        old.execute("INSERT OR REPLACE INTO vectors (model, hash, vector) VALUES ('m', 'h9', x'0000803f')")
    assert cache.get_many("m", ["h9"])["h9"].tolist() == [1.0]
    clock.advance(31)
    assert cache.prune(older_than=30 * DAY).rows_deleted == 6


def test_rows_of_an_earlier_release_gain_the_model_name_when_reused(tmp_path):
    """An earlier release recorded no model names: reusing its rows records one, so ``prune --model NAME`` finds
    them (it deleted nothing and said nothing); a name that matches nothing is an error naming what is there."""
    import sqlite3

    from retrieval.embedding_cache import text_hash

    path = tmp_path / "e.sqlite"
    _old_release_cache(path)
    with sqlite3.connect(path) as old:  # the earlier release cached "old text"
        old.execute("INSERT INTO vectors (model, hash, vector) VALUES ('m', ?, x'0000803f')", (text_hash("old text"),))
    cache = EmbeddingCache(path)
    with pytest.raises(InvalidArgumentError, match=r"no cache key or model name 'mini' .*\(it holds: m\)"):
        cache.prune(model="mini")

    def never(texts):
        raise AssertionError(f"encoded {texts}: the cached vector was not reused")

    vectors, reused = cache.encode_through("m", ["old text"], never, label="mini")
    assert reused == 1 and vectors.tolist() == [[1.0]]
    assert [u.label for u in cache.usage()] == ["mini"]
    assert cache.prune(model="mini").rows_deleted == 6


def _use_cache_until(path: str, stop_at: float, worker: int) -> int:
    """A process indexing through the cache: new texts and repeated ones, until ``stop_at``."""
    import time

    cache, rounds = EmbeddingCache(path), 0
    while time.time() < stop_at:
        texts = [f"w{worker} text {i}" for i in range(rounds * 50, rounds * 50 + 100)]
        vectors, _ = cache.encode_through("m", texts, lambda t: np.ones((len(t), 384), dtype=np.float32))
        assert vectors.shape == (100, 384)
        rounds += 1
    return rounds


@pytest.mark.slow
def test_processes_using_the_cache_while_another_prunes_do_not_fail(tmp_path):
    """Two processes encode through the cache while this one prunes it again and again (deletes and VACUUMs):
    SQLite's lock makes them take turns; nobody fails, nothing is damaged."""
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    path = tmp_path / "e.sqlite"
    EmbeddingCache(path).put_many("m", {f"h{i}": np.ones(384, dtype=np.float32) for i in range(2000)})
    stop_at = time.time() + 4
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        workers = [pool.submit(_use_cache_until, str(path), stop_at, w) for w in range(2)]
        cache, prunes = EmbeddingCache(path), 0
        while time.time() < stop_at:
            cache.prune()
            prunes += 1
        assert all(w.result() > 0 for w in workers)
    assert prunes > 1 and not list(tmp_path.glob("*.damaged-*"))
    cache.prune()
    assert cache.usage() == []


def test_the_cache_command_shows_rows_per_model_and_prunes(cli_env):
    """``hybrid-rag cache`` lists the cache keys with their model name and rows; ``cache prune`` deletes by age
    and model; a bad duration is one red line, exit code 2."""
    docs = cli_env / "docs.jsonl"
    docs.write_text('{"_id": "mars", "text": "The reddish hue of Mars comes from iron oxide."}\n')
    assert CliRunner().invoke(app, ["cache"]).output.startswith("no embedding cache")
    assert CliRunner().invoke(app, ["index", str(docs), "-c", "ec"]).exit_code == 0
    shown = CliRunner().invoke(app, ["cache", "--json"])
    assert shown.exit_code == 0, shown.output
    (row,) = json.loads(shown.stdout)["models"]
    assert row["label"].endswith("all-MiniLM-L6-v2") and row["rows"] == 1 and row["vector_bytes"] == 384 * 4
    table = CliRunner().invoke(app, ["cache"])
    assert table.exit_code == 0 and "all-MiniLM-L6-v2" in table.output and row["model"] in table.output
    header = next(line for line in table.output.splitlines() if line.startswith("| "))
    columns = [cell.strip().split(" (")[0] for cell in header.strip("| ").split(" | ")]  # as --json names them
    assert columns == ["model", "label", "backend", "prompt", "max_tokens", "rows", "vector_bytes"] + [
        "oldest_use",
        "newest_use",
    ] and set(columns) <= set(row), header  # were "cache key | model | ... | tokens | vectors MiB | last use"
    kept = CliRunner().invoke(app, ["cache", "prune", "--json"])  # default: unused for 30 days
    assert kept.exit_code == 0 and json.loads(kept.stdout)["rows_deleted"] == 0
    for duration in ("soon", "inf", "nan", "1e20d", "-1d"):  # inf and nan were tracebacks
        bad = CliRunner().invoke(app, ["cache", "prune", "--older-than", duration])
        assert bad.exit_code == 2 and f"--older-than '{duration}'" in bad.output, bad.output
    typo = CliRunner().invoke(app, ["cache", "prune", "--older-than", "0", "--model", "all-MiniLM-L6"])
    assert typo.exit_code == 2 and "no cache key or model name 'all-MiniLM-L6'" in typo.output  # said nothing
    assert row["label"] in typo.output
    gone = CliRunner().invoke(app, ["cache", "prune", "--older-than", "0", "--model", row["label"], "--json"])
    assert gone.exit_code == 0 and json.loads(gone.stdout)["rows_deleted"] == 1
