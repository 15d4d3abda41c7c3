"""Never lose data by accident: each case runs through the real CLI on the embedded engine and counts points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval import Document
from retrieval.errors import InvalidDocumentError, UnsafeDeleteError
from retrieval.store import EdgeStore
from tests.conftest import TINY_DOCS

N = len(TINY_DOCS)


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def cli_json(*args: str) -> dict:
    """The report of ``index ... --json`` (stdout only)."""
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def write_jsonl(path: Path, docs, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps({"_id": d.id, "text": d.text, "title": d.title, "metadata": d.metadata}) for d in docs]
    path.write_text("\n".join([*lines, *extra_lines]) + ("\n" if lines or extra_lines else ""))
    return path


def points(root: Path, collection: str, doc_id: str | None = None) -> int:
    store = EdgeStore(root / "index", collection)
    try:
        return store.count({"doc_id": doc_id} if doc_id else None)
    finally:
        store.close()


def test_empty_truncated_or_missing_sources_never_wipe_the_collection(cli_env):
    cli("index", str(write_jsonl(cli_env / "all.jsonl", TINY_DOCS)), "-c", "kb")
    assert points(cli_env, "kb") == N

    (cli_env / "empty.jsonl").write_text("")
    (cli_env / "empty_dir").mkdir()
    truncated = write_jsonl(cli_env / "truncated.jsonl", TINY_DOCS[:2])
    for source in (cli_env / "empty.jsonl", cli_env / "empty_dir", truncated):
        out = cli("index", str(source), "-c", "kb", "--sync", code=2)
        last = out.strip().splitlines()[-1]
        assert last.startswith("error: refusing to delete") and "--allow-delete" in last and "Traceback" not in out
        assert points(cli_env, "kb") == N

    cli("index", str(truncated), "-c", "kb", "--sync", "--allow-delete")  # asked for explicitly: done
    assert points(cli_env, "kb") == 2


def test_a_folder_whose_files_are_all_skipped_keeps_what_is_stored(cli_env):
    folder = cli_env / "notes"
    folder.mkdir()
    for doc in TINY_DOCS[:4]:
        (folder / f"{doc.id}.md").write_text(f"# {doc.title}\n{doc.text}")
    cli("index", str(folder), "-c", "notes", "--sync")
    assert points(cli_env, "notes") == 4
    for doc in TINY_DOCS[:4]:
        (folder / f"{doc.id}.md").write_bytes(b"\x00\x01 binary now")
    out = cli("index", str(folder), "-c", "notes", "--sync", "--policy", "skip")
    assert "kept the stored chunks of 4 skipped documents" in out
    report = cli_json("index", str(folder), "-c", "notes", "--sync", "--policy", "skip")
    assert (report["documents"], report["kept"], report["deleted"], len(report["skipped"])) == (0, 4, 0, 4)
    assert points(cli_env, "notes") == 4


def test_indexing_a_file_adds_unless_sync_is_asked_for(cli_env):
    cli("index", str(write_jsonl(cli_env / "all.jsonl", TINY_DOCS)), "-c", "kb")
    extra = [Document(f"new{i}", f"Fresh note number {i} about gardening and tomatoes.") for i in range(3)]
    small = write_jsonl(cli_env / "small.jsonl", extra)
    cli("index", str(small), "-c", "kb")
    assert points(cli_env, "kb") == N + 3  # added; nothing deleted
    cli("index", str(small), "-c", "kb", "--sync", code=2)  # would delete 8 of 11: refused
    assert points(cli_env, "kb") == N + 3
    write_jsonl(small, [*TINY_DOCS, *extra[:2]])
    cli("index", str(small), "-c", "kb", "--prune")  # deletes 1 of 11: a safe share, done
    assert points(cli_env, "kb") == N + 2


def test_skipped_records_keep_their_last_good_version(cli_env):
    source = write_jsonl(cli_env / "all.jsonl", TINY_DOCS)
    cli("index", str(source), "-c", "kb")
    rest = [d for d in TINY_DOCS if d.id not in {"valve", "pasta"}]
    broken = ('{"_id": "valve", "text": "Replace the valve', json.dumps({"_id": "pasta", "text": "   "}))
    write_jsonl(source, rest, broken)
    report = cli_json("index", str(source), "-c", "kb", "--sync", "--policy", "skip")
    skipped = {(Path(p["path"]).name, p["line"], p["doc_id"]) for p in report["skipped"]}
    assert skipped == {("all.jsonl", 7, "valve"), ("all.jsonl", 8, "pasta")}
    assert (report["kept"], report["deleted"]) == (2, 0)
    assert points(cli_env, "kb") == N
    assert points(cli_env, "kb", "valve") == 1 and points(cli_env, "kb", "pasta") == 1
    # A record whose id cannot be read at all: nothing absent from the source is deleted.
    write_jsonl(source, rest[:2], ("{not json at all",))
    cli("index", str(source), "-c", "kb", "--sync", "--policy", "skip", "--allow-delete")
    assert points(cli_env, "kb") == N


def test_python_api_validates_like_the_cli(indexed_stack):
    stack = indexed_stack("edge", [])
    indexer = stack.indexer()
    try:
        with pytest.raises(InvalidDocumentError, match=r"documents\[1\] \(id 'blank'\): empty text"):
            indexer.index([TINY_DOCS[0], Document("blank", " \n\t ")], progress=False)
        with pytest.raises(InvalidDocumentError, match=r"documents\[2\]: duplicate document id 'valve'"):
            indexer.index([TINY_DOCS[0], TINY_DOCS[1], Document("valve", "other text")], progress=False)
        assert indexer.store.schema() is None  # nothing was written
        indexer.index(TINY_DOCS, progress=False)
        with pytest.raises(UnsafeDeleteError, match="refusing to delete 8 of the 8 points"):
            indexer.index([], prune=True, progress=False)
        with pytest.raises(UnsafeDeleteError):
            indexer.rebuild(TINY_DOCS[:1], progress=False)
        assert indexer.store.count() == N
    finally:
        stack.close()


def test_the_dagster_sync_refuses_mass_deletion_unless_allowed(indexed_stack):
    """``qdrant_index`` calls ``Indexer.sync(prune=True, allow_delete=config.allow_delete)``: the same guard."""
    stack = indexed_stack("edge", [])
    indexer = stack.indexer()
    try:
        chunks = indexer.chunk(TINY_DOCS)
        indexer.sync(chunks, prune=True, progress=False)
        with pytest.raises(UnsafeDeleteError, match="the source is empty"):
            indexer.sync([], prune=True, progress=False)
        with pytest.raises(UnsafeDeleteError, match="refusing to delete 5 of the 8 points"):
            indexer.sync(chunks[:3], prune=True, progress=False)
        assert indexer.store.count() == N
        assert indexer.sync(chunks[:3], prune=True, allow_delete=True, progress=False).points == 3
    finally:
        stack.close()
