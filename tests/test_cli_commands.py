"""The CLI says exactly what it does: same defaults as Python, one-line errors, delete/collections/snapshots."""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import re
import time
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from orchestration.cli import _encoding_summary, _preview, app
from retrieval import Document, RetrievalSettings, RetrievalStack
from retrieval.search import Hit
from retrieval.settings import COLLECTION_NAME_MAX_BYTES
from retrieval.store import ENCODING_FIELDS
from retrieval.store.edge import _copy_sparse
from tests.conftest import SHIPPED_ENCODING, TINY_DOCS
from tests.test_data_safety import points, write_jsonl

N = len(TINY_DOCS)


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """A collection 'kb' holding TINY_DOCS, indexed through the CLI (module-wide: CLI calls load the models)."""
    root = tmp_path_factory.mktemp("cli")
    env = {"HYBRID_RAG_QDRANT_PATH": str(root / "index"), "HYBRID_RAG_CACHE_DIR": str(root / "cache")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.chdir(root)
        result = CliRunner().invoke(app, ["index", str(write_jsonl(root / "kb.jsonl", TINY_DOCS)), "-c", "kb"])
        assert result.exit_code == 0, result.output
        yield root


@pytest.fixture
def cli_in(kb, monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(kb / "index"))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(kb / "cache"))
    monkeypatch.chdir(kb)

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == code, result.output
        return result.stdout if code == 0 else result.output

    return run


def test_search_uses_the_same_defaults_as_python(cli_in, kb):
    hits = json.loads(cli_in("search", "how do I stop noodles sticking", "-c", "kb", "--json"))
    settings = RetrievalSettings(qdrant_path=kb / "index", cache_dir=kb / "cache", collection="kb")
    with RetrievalStack(settings) as stack:
        expected = stack.retriever().search("how do I stop noodles sticking")
    assert [h["chunk_id"] for h in hits] == [h.chunk_id for h in expected]
    assert hits[0]["doc_id"] == "pasta" and hits[0]["chunk_index"] == 0
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected])
    plain = json.loads(cli_in("search", "how do I stop noodles sticking", "-c", "kb", "--json", "--no-rerank"))
    assert all(h["rerank_score"] is None for h in plain)
    args = ("noodles", "-c", "kb", "--json", "--k", "3", "--diversity", "0.8", "--diversity-depth", "5")
    diverse = json.loads(cli_in("search", *args))
    with RetrievalStack(settings) as stack:
        expected = stack.retriever().search("noodles", k=3, diversity=0.8, diversity_depth=5)
    assert [h["chunk_id"] for h in diverse] == [h.chunk_id for h in expected] and len(expected) == 3


def test_search_json_holds_the_public_hit_fields_only(cli_in):
    hits = json.loads(cli_in("search", "ZX-4471 valve", "-c", "kb", "--json", "--k", "2"))  # reranked: vectors read
    assert [h["doc_id"] for h in hits][:1] == ["valve"]
    public = {f.name for f in fields(Hit)} - {"dense_vector"}
    assert all(set(h) == public for h in hits)
    assert isinstance(hits[0]["dense_score"], float) and isinstance(hits[0]["rerank_score"], float)


NOTES = (
    "Release 4.2 notes. The dashboard loads 30% faster thanks to lazy widgets. Exports to CSV keep the column order. "
    "The Chrome extension no longer shows ERR_CONN_RESET after the proxy closes an idle socket: it reconnects.\n"
    "Dark mode follows the operating system. Audit logs are kept 400 days."
)


def test_search_table_previews_the_text_around_the_matched_words(cli_in, kb, monkeypatch):
    # it showed the chunk's first 100 characters, cut mid-word ("... keep the co"), not the code searched for
    docs = [Document("notes-4.2", NOTES, "Release 4.2"), *TINY_DOCS]
    cli_in("index", str(write_jsonl(kb / "notes.jsonl", docs)), "-c", "notes")
    monkeypatch.setenv("COLUMNS", "250")
    out = cli_in("search", "ERR_CONN_RESET", "-c", "notes", "--k", "1")
    [row] = [line for line in out.splitlines() if "notes-4.2" in line]
    preview = row.split("Release 4.2 | ")[1].rstrip(" │")
    assert "ERR_CONN_RESET" in preview and preview.startswith("…") and preview.endswith("…")
    assert set(preview.strip("…").split()) <= set(NOTES.split())  # whole words only
    [hit] = json.loads(cli_in("search", "ERR_CONN_RESET", "-c", "notes", "--k", "1", "--json"))
    assert hit["text"] == NOTES  # the JSON keeps the whole text


def test_preview_window_words_and_ellipses():
    text = " ".join(f"w{i}" for i in range(100))
    assert _preview("Short text,\n  on two lines.", "absent") == "Short text, on two lines."
    assert _preview(text, "absent") == " ".join(f"w{i}" for i in range(27)) + "…"  # no match: the start (97 chars)
    middle = _preview(text, "W50")  # case-folded
    assert middle.startswith("…") and middle.endswith("…") and " w50 " in middle and len(middle) <= 102
    assert middle.index("w50") < 30  # a few words of context before it
    end = _preview(text, "w98")
    assert end.endswith("w98 w99") and end.startswith("…w75 ")  # filled from before
    # the window holding the most distinct query words, not the first one matched
    assert "the ZX-4471 valve gasket leaks" in _preview(
        f"a valve {text} the ZX-4471 valve gasket leaks", "ZX-4471 valve gasket"
    )
    assert _preview("x" * 300, "x") == "x" * 99 + "…"  # a single word longer than the preview


def test_skipped_records_are_reported_once_and_kept_documents_explained(cli_in, kb, caplog):
    cli_in("index", "kb.jsonl", "-c", "sy")
    lines = (kb / "kb.jsonl").read_text().splitlines()
    source = kb / "sy.jsonl"
    source.write_text("\n".join([*lines[:5], json.dumps({"_id": "rome", "text": " "}), "garbage"]) + "\n")
    caplog.set_level(logging.INFO)
    result = CliRunner().invoke(app, ["index", "sy.jsonl", "-c", "sy", "--sync", "--policy", "skip"])
    out = result.stderr  # where a script's log sees them; the exit code is 0 (skipping was asked for)
    assert result.exit_code == 0 and "sy.jsonl" not in result.stdout, result.output
    assert out.count("sy.jsonl:6: document 'rome': empty text") == 1
    assert out.count("sy.jsonl:7: malformed JSON") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.getMessage().startswith("skipped")]
    # the 3 stored documents missing from the source stay: the garbage line could have been any of them
    assert "kept the stored chunks of 3 documents missing from sy.jsonl (not deleted: 1 skipped record" in out
    source.write_text("\n".join([*lines[:7], json.dumps({"_id": "bees", "text": " "})]) + "\n")
    out = CliRunner().invoke(app, ["index", "sy.jsonl", "-c", "sy", "--sync", "--policy", "skip"]).stderr
    assert "kept the stored chunks of 1 skipped document\n" in out and "missing from" not in out


def test_search_filter_as_json(cli_in):
    hits = json.loads(cli_in("search", "anything at all", "-c", "kb", "--json", "--filter", '{"year": {"gte": 2020}}'))
    assert hits and {h["doc_id"] for h in hits} == {d.id for d in TINY_DOCS if d.metadata["year"] >= 2020}
    hits = json.loads(cli_in("search", "anything at all", "-c", "kb", "--json", "--filter", '{"year": [2015.0, 2010]}'))
    assert {h["doc_id"] for h in hits} == {"moon", "rome"}  # JSON numbers match however they are written
    out = cli_in("search", "x", "-c", "kb", "--filter", "{year: 2020}", code=2)
    assert out.strip().splitlines()[-1].startswith("error: --filter is not valid JSON")


def test_search_says_why_a_filter_matches_nothing(kb, monkeypatch):
    """A value of another type than the stored one is a valid filter that finds nothing: the hits stay empty
    (stdout), stderr says that no point matches and what the key holds; a filter that matches says nothing."""
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(kb / "index"))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(kb / "cache"))
    runner = CliRunner()
    result = runner.invoke(app, ["search", "anything", "-c", "kb", "--json", "--filter", '{"year": "2021"}'])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert result.stderr.strip() == (
        "note: no point of 'kb' matches the filter: 'year' holds numbers: {\"year\": 2021} matches 1 point (a string "
        "never matches a number)"
    )
    result = runner.invoke(app, ["search", "anything", "-c", "kb", "--filter", '{"year": 2021}'])
    assert result.exit_code == 0 and "1 hit for" in result.stdout and not result.stderr


def test_search_says_when_the_query_makes_no_sparse_term(kb, monkeypatch):
    """A query of stopwords only makes no BM25 term: the sparse channel finds nothing, and stderr says why instead
    of a bare empty list (hybrid: its hits are the dense channel's); a query with a term says nothing."""
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(kb / "index"))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(kb / "cache"))
    runner = CliRunner()
    note = "note: the query makes no sparse term (its words are all stopwords, or it has no words)"
    result = runner.invoke(app, ["search", "to be or not to be", "-c", "kb", "--variant", "sparse", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert result.stderr.strip() == note
    result = runner.invoke(app, ["search", "to be or not to be", "-c", "kb", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)
    assert result.stderr.strip() == f"{note}: the hits are the dense channel's"
    for args in (["valve", "--variant", "sparse"], ["to be or not to be", "--variant", "dense"]):
        result = runner.invoke(app, ["search", *args, "-c", "kb", "--json"])
        assert result.exit_code == 0 and not result.stderr, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--filter", '{"metadata.a\\"b": "x"}'), "error: filter on 'metadata.a\"b': after 'metadata.' comes a path"),
        (("--k", str(10**22)), "error: k must be at most 1,000,000,000, got 10,000,000,000,000,000,000,000"),
        (("--score-threshold", "nan"), "error: score_threshold must be a finite number or None, got nan"),
        (("--diversity", "1.5"), "error: diversity must be a number from 0 (relevance only) to 1 (the most diverse)"),
        (("--filter", "[" * 50_000 + "]" * 50_000), "error: --filter nests too deeply to be read as a filter"),
        (("--filter", '{"a": ' + "[" * 100 + "]" * 100 + "}"), "error: the filter nests dicts and lists deeper"),
    ],
)
def test_search_arguments_the_engine_cannot_take_are_one_line(cli_in, args, message):
    out = cli_in("search", "valve", "-c", "kb", *args, code=2)
    assert out.strip().splitlines()[-1].startswith(message), out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("search", "  ", "-c", "kb"), "error: empty query"),
        (("search", "\u200b\ufeff", "-c", "kb"), "error: empty query"),
        (("search", "valve", "-c", "kb", "--k", "0"), "error: k must be a positive integer, got 0"),
        (("search", "valve", "-c", "kb", "--variant", "bm25"), "valid: dense, sparse, hybrid, hybrid+rerank"),
        (("search", "valve", "-c", "kb", "--group-by", "page"), "error: unknown group_by 'page'; valid: chunk, doc"),
        (("search", "valve", "-c", "nope"), "error: collection 'nope' does not exist"),
        (("search", "valve", "-c", "kb", "--filter", '{"year": {"after": 1}}'), "error: filter on 'year'"),
        (("search", "valve", "-c", "kb", "--filter", '{"doc_id": 6}'), "error: filter on 'doc_id': the field holds"),
        (("index", "kb.jsonl", "-c", "kb", "--format", "xml"), "error: unknown format 'xml'; valid: beir, jsonl, dir"),
        (("index", "kb.jsonl", "-c", "kb", "--policy", "maybe"), "error: unknown policy 'maybe'; valid: fail, skip"),
    ],
)
def test_invalid_arguments_are_one_line_and_exit_code_2(cli_in, args, message):
    out = cli_in(*args, code=2)
    assert message in out.strip().splitlines()[-1] and "Traceback" not in out


def test_unknown_model_names_the_setting(cli_in, monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_DENSE_MODEL", "no-such-org/no-such-model")
    out = cli_in("index", "kb.jsonl", "-c", "other", code=2)
    last = out.strip().splitlines()[-1]
    assert "cannot load dense model 'no-such-org/no-such-model'" in last and "HYBRID_RAG_DENSE_MODEL" in last


def test_delete_collections_snapshot_and_restore(cli_in, kb, monkeypatch):
    cli_in("index", "kb.jsonl", "-c", "work")
    listing = {row["collection"]: row for row in json.loads(cli_in("collections", "--json"))}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listing["work"].pop("last_write"))
    assert listing["work"] == {
        "collection": "work",
        "status": "ready",
        "points": N,
        "documents": N,
        "dense_model": "sentence-transformers/all-MiniLM-L6-v2",
        "dense_dim": 384,
        "sparse_model": "bm25",
        "version": 1,
        "encoding": SHIPPED_ENCODING,
        "write_in_progress": False,
        "writer": None,
    }
    assert listing["kb"]["points"] == N and "work" in cli_in("collections")

    snap = kb / "snaps" / "work-1"
    assert str(snap) in cli_in("snapshot", "-c", "work", "--out", str(snap)).replace("\n", "")
    out = cli_in("delete", "valve", "pasta", "not-there", "-c", "work", code=1)  # 1: some ids were not there
    assert "deleted 2 points of 2 documents; 6 points left" in out and "not-there" in out
    assert points(kb, "work") == N - 2

    out = cli_in("restore", str(snap), "-c", "work", code=2)  # would replace a collection: must be asked for
    assert "--replace" in out and points(kb, "work") == N - 2
    assert f"{N} points" in cli_in("restore", str(snap), "-c", "work", "--replace")
    assert points(kb, "work") == N and points(kb, "work", "valve") == 1
    cli_in("restore", str(snap), "-c", "copy")  # a snapshot also seeds a new collection
    assert points(kb, "copy") == N
    out = cli_in("restore", str(kb / "snaps" / "wrok-1"), code=2)  # a mistyped path is said to be one
    assert "no snapshot at" in out and "does not exist" in out and "--collection" not in out, out
    monkeypatch.setenv("HYBRID_RAG_COLLECTION", "stale__v1")  # an invalid default: -c overrides it
    assert f"{N} points" in cli_in("restore", str(snap), "-c", "copy2")


def test_delete_exits_1_when_an_id_is_not_there_and_refuses_a_blank_id(cli_in, kb):
    cli_in("index", "kb.jsonl", "-c", "gone")
    out = cli_in("delete", "no-such-id", "-c", "gone", code=1)
    assert "deleted 0 points of 0 documents" in out and "not in 'gone': no-such-id" in out
    for blank in ("", "  "):
        out = cli_in("delete", "valve", blank, "-c", "gone", code=2)
        assert "blank" in out and points(kb, "gone") == N  # nothing deleted, not even the valid id
    assert "deleted 1 point of 1 document; 7 points left" in cli_in("delete", "valve", "-c", "gone")  # exit code 0


def test_index_reports_the_time_of_the_whole_write_reading_included(cli_in, kb):
    started = time.perf_counter()
    report = json.loads(cli_in("index", "kb.jsonl", "-c", "timed", "--json"))
    wall = time.perf_counter() - started
    assert 0 < report["read_seconds"] < report["seconds"] <= wall
    assert wall - report["seconds"] < 0.5 + 0.1 * wall  # only parsing the arguments and printing are left out
    assert "s: reading " in cli_in("index", "kb.jsonl", "-c", "timed")


def _disk_usage(path) -> int:
    """Bytes ``path`` takes on disk (as ``du``: holes in sparse files take none)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def test_snapshot_and_restore_take_the_disk_space_of_the_version(cli_in, kb):
    """The engine preallocates 32 MiB WAL segments that stay mostly zeros: copies keep those holes."""
    version = kb / "index" / "kb__v1"
    assert version.is_dir() and _disk_usage(version) < 8 * 2**20
    snap = kb / "snaps" / "kb-disk"
    cli_in("snapshot", "-c", "kb", "--out", str(snap))
    assert _disk_usage(snap) <= _disk_usage(version) + 2**20
    assert f"{N} points" in cli_in("restore", str(snap), "-c", "kb_disk")
    assert _disk_usage(kb / "index" / "kb_disk__v1") <= _disk_usage(version) + 2**20
    assert json.loads(cli_in("search", "ZX-4471", "-c", "kb_disk", "--json", "--k", "1"))[0]["doc_id"] == "valve"


@pytest.mark.parametrize("size", [0, 1, 4095, 4097, 2**20, 3 * 2**20 + 123])
def test_a_sparse_copy_is_exact_and_leaves_pages_of_zeros_out(tmp_path, size):
    data = bytearray(size)
    rng = random.Random(size)
    for i in rng.sample(range(size), min(size, 300)):  # scattered bytes: some pages hold data, most are zeros
        data[i] = rng.randint(1, 255)
    (tmp_path / "src").write_bytes(data)
    _copy_sparse(str(tmp_path / "src"), str(tmp_path / "dst"))
    assert (tmp_path / "dst").read_bytes() == data
    page = max(4096, os.statvfs(tmp_path).f_bsize)  # the file system's block, if larger than a page
    with_data = len({i // page for i, b in enumerate(data) if b})
    assert (tmp_path / "dst").stat().st_blocks * 512 <= (with_data + 1) * page


def test_the_longest_valid_collection_name_indexes_and_snapshots(cli_in, kb):
    """Every file made from a name the rule accepts fits a file name (the pointer, its temporary, a snapshot)."""
    name = "n" * COLLECTION_NAME_MAX_BYTES
    cli_in("index", "kb.jsonl", "-c", name)
    cli_in("delete", "valve", "-c", name)  # a second version: the pointer file is replaced
    assert points(kb, name) == N - 1
    cli_in("snapshot", "-c", name)
    assert "invalid collection name" in cli_in("index", "kb.jsonl", "-c", name + "n", code=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("eval", "sample", "--variant", "bm25"), "error: unknown variant 'bm25'; valid: dense, sparse, hybrid"),
        (("compare", "a.trec", "b.trec", "sample", "--metric", "precision@5"), "error: unknown metric 'precision@5'"),
    ],
)
def test_eval_arguments_are_checked_before_any_work(cli_in, args, message):
    out = cli_in(*args, code=2)
    assert message in out.strip().splitlines()[-1] and "Traceback" not in out


def test_adapt_on_too_few_documents_is_one_line(cli_in, kb):
    cli_in("index", str(write_jsonl(kb / "two.jsonl", TINY_DOCS[:2])), "-c", "two")
    out = cli_in("adapt", "-c", "two", code=2)
    assert out.strip().splitlines()[-1].startswith("error: too few documents to adapt on") and "Traceback" not in out
    assert not (kb / "models" / "two").exists()


@pytest.mark.slow
def test_search_path_imports_no_dagster_and_no_server_client():
    import subprocess
    import sys

    code = (
        "import sys, orchestration.cli, retrieval.search, retrieval.store;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'qdrant_client', 'torch', 'evals'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # torch and the model load when the first query is encoded, not on import


BIG = 4600  # documents: more than a shell command line holds as arguments, and counts that need a separator


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Settings of a published collection 'big' of BIG one-chunk documents (4-d vectors: deleting loads no model)."""
    from tests.test_hostile_input import published_with

    root = tmp_path_factory.mktemp("big")
    published_with(root / "index", "big", [f"doc-{i:05d}" for i in range(BIG)]).close()
    return root


def test_delete_reads_thousands_of_ids_from_a_file_or_stdin(big, monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(big / "index"))
    monkeypatch.chdir(big)
    ids = [f"doc-{i:05d}" for i in range(4500)]
    (big / "ids.txt").write_text("\ufeff" + "\n".join(f"  {d}\t" for d in ids[:4000]) + "\r\n\n   \n")
    result = CliRunner().invoke(app, ["delete", "--ids-file", "ids.txt", "-c", "big"])
    assert result.exit_code == 0, result.output
    assert "deleted 4,000 points of 4,000 documents; 600 points left" in result.stdout  # not "4000 documents"
    stdin = "\n".join([*ids[4000:], "doc-00000", "no-such-doc"]) + "\n"  # one deleted above: 2 not there
    result = CliRunner().invoke(app, ["delete", "--ids-file", "-", "doc-04600", "-c", "big"], input=stdin)
    assert result.exit_code == 1, result.output
    assert "deleted 500 points of 500 documents; 100 points left" in result.stdout
    assert "not in 'big': doc-04600, doc-00000, no-such-doc" in " ".join(result.stderr.split())
    assert points_in(big, "big") == 100


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"doc-04500\n\n  \n", None),  # nothing wrong: exit code 0
        (b"doc-04501\ndoc-\xe9t\xe9\n", "--ids-file ids.bin:2: not valid UTF-8 (byte 4: b'\\xe9'; Latin-1 or"),
        (b"doc-04502\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "--ids-file ids.bin:2: not valid UTF-8 (byte 0: b'\\x89';"),
        (b"doc-04503\ndoc-04504\n\x00\x00", "--ids-file ids.bin:3: a NUL byte (a binary file, not one id per line)"),
        (b"\n \n", "--ids-file ids.bin: holds no document ids"),
        (None, "--ids-file ids.bin: no such file"),
    ],
)
def test_a_bad_ids_file_is_one_line_naming_file_and_line_and_deletes_nothing(big, monkeypatch, content, message):
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(big / "index"))
    monkeypatch.chdir(big)
    path = big / "ids.bin"
    path.unlink(missing_ok=True)
    if content is not None:
        path.write_bytes(content)
    before = points_in(big, "big")
    result = CliRunner().invoke(app, ["delete", "doc-04599", "--ids-file", "ids.bin", "-c", "big"])
    if message is None:
        assert result.exit_code == 0 and points_in(big, "big") == before - 2, result.output
        return
    assert result.exit_code == 2 and " ".join(result.output.split()).startswith(f"error: {message}"), result.output
    assert points_in(big, "big") == before  # not even the valid id given as an argument


def test_an_ids_file_is_read_as_every_input_file(big, monkeypatch):
    """An ids file in UTF-16 with a byte order mark (Windows PowerShell's ``>``), lines ending in CRLF or a lone CR,
    or gzip-compressed, is read as a corpus file would be (UTF-16 was refused as "not UTF-8", a lone CR ran two ids
    into one that was "not in" the collection)."""
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(big / "index"))
    monkeypatch.chdir(big)
    stdin = "\ufeffdoc-04590\r\ndoc-04591\rdoc-04592\r\n".encode("utf-16-le")  # with a BOM
    result = CliRunner().invoke(app, ["delete", "--ids-file", "-", "-c", "big"], input=stdin)
    assert result.exit_code == 0 and "deleted 3 points of 3 documents" in result.stdout, result.output
    (big / "ids.txt.gz").write_bytes(gzip.compress(b"doc-04593\rdoc-04594\r"))
    result = CliRunner().invoke(app, ["delete", "--ids-file", "ids.txt.gz", "-c", "big"])
    assert result.exit_code == 0 and "deleted 2 points of 2 documents" in result.stdout, result.output


def points_in(root, name: str) -> int:
    from retrieval.store import EdgeStore

    store = EdgeStore(root / "index", name)
    try:
        return store.count()
    finally:
        store.close()


def test_the_encoding_summary_shows_the_whitespace_rule_and_an_earlier_release_s_record_as_not_recorded():
    earlier = dict.fromkeys(ENCODING_FIELDS) | {"bm25_analyzer": "word", "chunk_at_whitespace": False}
    assert _encoding_summary(earlier) == "not recorded"  # the two values such a record reads as
    on = _encoding_summary(SHIPPED_ENCODING | {"chunk_at_whitespace": True})
    assert on.startswith("chunks 256/32 at whitespace, bm25 ")


def test_collections_is_readable_at_80_columns(cli_in, monkeypatch):
    """Piped or in a CI log (80 columns, no terminal) the ten-column table folded every value into slivers
    ("sente", "nce-t", "ransf"...): there each collection is a block of whole values; a wide console keeps the table."""
    monkeypatch.setenv("COLUMNS", "80")
    [kb] = [row for row in json.loads(cli_in("collections", "--json")) if row["collection"] == "kb"]
    lines = cli_in("collections").splitlines()
    assert all(len(line) <= 80 and line == line.rstrip() for line in lines), lines
    for name, value in [("points", "8"), ("last_write", kb["last_write"]), ("dense_model", kb["dense_model"])]:
        assert f"  {name:<12}  {value}" in lines
    assert any(line.startswith("  encoding      chunks 256/32, bm25 ") for line in lines), lines
    monkeypatch.setenv("COLUMNS", "250")
    assert f"│ {kb['dense_model']} │" in cli_in("collections")


def test_search_says_why_it_found_no_hit(cli_in, kb):
    """README: no hit, why on stderr. An empty collection, a score threshold above every hit and a word no document
    holds (the sparse channel alone) printed ``[]`` and nothing else."""
    runner = CliRunner()
    for args, why in [
        (["valve", "--variant", "dense", "--score-threshold", "2"], "no hit scores 2 or more (--score-threshold)"),
        (["zzqx", "--variant", "sparse"], "no document of 'kb' holds a term of the query"),
        (["zzqx", "--variant", "sparse", "--filter", '{"year": 2021}'], "no document the filter matches of 'kb' "),
    ]:
        result = runner.invoke(app, ["search", *args, "-c", "kb", "--json"])
        assert result.exit_code == 0 and json.loads(result.stdout) == [], result.output
        assert result.stderr.startswith(f"note: no hit: {why}"), result.stderr
    (kb / "nothing").mkdir()
    cli_in("index", "nothing", "-c", "empty", "--sync", "--allow-delete")  # an empty collection, asked for
    result = runner.invoke(app, ["search", "valve", "-c", "empty"])
    assert result.exit_code == 0 and "0 hits" in result.stdout
    assert " ".join(result.stderr.split()) == (
        "note: no hit: collection 'empty' holds no documents (hybrid-rag index PATH -c empty adds some)"
    )
