"""Never lose data by accident: each case runs through the real CLI on the embedded engine and counts points."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval import Document
from retrieval.chunking import point_id
from retrieval.documents import read_documents
from retrieval.errors import InvalidArgumentError, InvalidDocumentError, NothingToIndexError, UnsafeDeleteError
from retrieval.indexer import Indexer
from retrieval.parts import Parts
from retrieval.store import EdgeStore
from tests.conftest import BACKENDS, TINY_DOCS

N = len(TINY_DOCS)
VERBS = ["install", "configure", "deploy", "monitor", "backup", "restore", "upgrade"]
# One long document (many chunks) and four one-chunk notes: removing the notes removes few points but most documents.
MANUAL = Document(
    "manual", "\n\n".join(f"Step {i}: {VERBS[i % 7]} the pump, then {VERBS[i * 3 % 7]} it." for i in range(400))
)
NOTES = [Document(n, f"The {n} page of our product.") for n in ("faq", "contacts", "pricing", "roadmap")]


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
        refusal = "no documents to index" if source != truncated else "refusing to delete"
        assert last.startswith(f"error: {source}: {refusal}" if source != truncated else f"error: {refusal}")
        assert "--allow-delete" in last and "Traceback" not in out
        assert points(cli_env, "kb") == N

    cli("index", str(truncated), "-c", "kb", "--sync", "--allow-delete")  # asked for explicitly: done
    assert points(cli_env, "kb") == 2
    cli("index", str(cli_env / "empty_dir"), "-c", "kb", "--sync", "--allow-delete")  # emptied, as asked
    assert points(cli_env, "kb") == 0


def test_a_folder_without_documents_is_refused_naming_what_it_reads_and_creates_nothing(cli_env):
    """It created an empty collection and reported success (exit code 0), whatever the folder held."""
    empty, papers = cli_env / "empty", cli_env / "papers"
    empty.mkdir()
    (empty / ".DS_Store").write_text("x")
    papers.mkdir()
    for name in ("a.png", "b.xlsx", "c.odt", "export.jsonl"):
        (papers / name).write_text("{}")
    reads = (
        "a folder's documents are read from its files of types .docx, .htm, .html, .markdown, .md, .pdf, .rst, .txt, "
        ".xhtml "
        "(each maybe gzip-compressed: .gz"
    )
    for args in ([str(empty)], [str(papers)], [str(papers), "--policy", "skip"], [str(cli_env / "none.jsonl")]):
        if args[0].endswith(".jsonl"):
            Path(args[0]).write_text("\n\n")
        line = cli("index", *args, "-c", "kb", code=2).strip()
        assert line.startswith(f"error: {args[0]}: no documents to index: ") and line.endswith("nothing was written")
        assert "\n" not in line and (reads in line or args[0].endswith(".jsonl"))
        if args[0] == str(papers):
            assert "it holds only 4 files of other types: a.png, b.xlsx, c.odt and 1 more; " in line
            assert f"a JSON Lines file is read when named: hybrid-rag index {papers / 'export.jsonl'}" in line
    assert not (cli_env / "index").exists()  # no collection, no index folder
    cli("index", str(write_jsonl(cli_env / "all.jsonl", TINY_DOCS)), "-c", "kb")
    cli("index", str(empty), "-c", "kb", code=2)
    assert points(cli_env, "kb") == N


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


def test_a_source_whose_records_are_all_skipped_creates_no_collection_and_adds_nothing(cli_env):
    """`index --policy skip` of a folder of bad files only (binary .md) created an empty new collection (exit 0); an
    existing one is left as it is, and the command says that it added nothing and why."""
    folder = cli_env / "notes"
    folder.mkdir()
    for name in "abcd":
        (folder / f"{name}.md").write_bytes(b"\x00\x01 binary now")
    for extra in ([], ["--sync"], ["--sync", "--allow-delete"], ["--rebuild"]):
        out = cli("index", str(folder), "-c", "new", "--policy", "skip", *extra, code=2)
        assert out.strip().splitlines()[-1] == (
            f"error: {folder}: no documents to index: all 4 records skipped as bad input (binary content (NUL "
            "bytes) in a text file: a.md, b.md, c.md and 1 more); nothing was written: collection 'new' was not created"
        )
    assert not (cli_env / "index").exists()
    cli("index", str(write_jsonl(cli_env / "all.jsonl", TINY_DOCS)), "-c", "kb")
    out = " ".join(cli("index", str(folder), "-c", "kb", "--policy", "skip").split())
    assert f"0 documents added to 'kb': every record of {folder} was skipped as bad input (listed below)" in out
    assert f"warning: 4 records of {folder} skipped (--policy skip); no document is indexed" in out
    store = EdgeStore(cli_env / "index", "kb")
    try:
        assert points(cli_env, "kb") == N and store.current_version() == 1  # no new version either
    finally:
        store.close()


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


def test_a_skipped_line_keeps_its_document_whatever_its_id_looks_like(cli_env):
    """A broken line's id is read as JSON (escapes, '_id' before 'id'), or not at all: either way a sync with the
    skip policy keeps the stored document of the line."""
    records = {
        "café": {"_id": "café", "text": "Notes from the café about espresso."},  # json.dumps: "caf\u00e9"
        'doc "q"': {"_id": 'doc "q"', "text": "A quoted title for the quarterly report."},
        "a/b": {"_id": "a/b", "text": "Path-like ids name files in a tree."},
        "doc-e": {"id": "m-1", "_id": "doc-e", "text": "Here 'id' is an ordinary field, '_id' the id."},
    }
    source = cli_env / "all.jsonl"

    def write(broken: dict[str, bytes]) -> None:
        good = [json.dumps({"_id": d.id, "text": d.text}).encode() for d in TINY_DOCS]
        lines = [broken.get(key, json.dumps(record).encode()) for key, record in records.items()]
        source.write_bytes(b"\n".join([*good, *lines]) + b"\n")

    write({})
    cli("index", str(source), "-c", "kb")
    total = len(TINY_DOCS) + len(records)
    assert points(cli_env, "kb") == total

    stray_comma = {key: json.dumps(record).encode()[:-1] + b",}" for key, record in records.items()}
    stray_comma["a/b"] = b'{"_id": "a\\/b", "text": "Path-like ids name files in a tree.",}'  # '/' escaped
    write(stray_comma)
    report = cli_json("index", str(source), "-c", "kb", "--sync", "--policy", "skip")
    assert sorted(p["doc_id"] for p in report["skipped"]) == sorted(records)
    assert (report["kept"], report["deleted"]) == (len(records), 0)
    assert all(points(cli_env, "kb", doc_id) == 1 for doc_id in records) and points(cli_env, "kb") == total

    write({"café": '{"_id": "café", "text": "Notes from the café."}'.encode("latin-1")})  # not UTF-8: no id
    out = cli("index", str(source), "-c", "kb", "--sync", "--policy", "skip")
    assert "1 skipped record without a readable id" in out
    assert points(cli_env, "kb", "café") == 1 and points(cli_env, "kb") == total

    decomposed = unicodedata.normalize("NFD", "café")  # the same id to a reader: its stored document is kept
    write({"café": json.dumps({"_id": decomposed, "text": "Notes from the café."}).encode()[:-1] + b",}"})
    report = cli_json("index", str(source), "-c", "kb", "--sync", "--policy", "skip")
    assert [p["doc_id"] for p in report["skipped"]] == [decomposed]
    assert (report["kept"], report["deleted"]) == (1, 0)
    assert points(cli_env, "kb", "café") == 1 and points(cli_env, "kb") == total


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_python_api_creates_no_empty_collection_unless_asked(indexed_stack, backend, tmp_path):
    """``indexer.index([])`` (and ``read_documents(..., policy="skip")`` of bad records only, then ``index``) created
    an empty new collection; the CLI refused both on its own. An existing collection: adding nothing is a no-op."""
    stack = indexed_stack(backend, [])
    indexer = stack.indexer()
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in "ab":
        (folder / f"{name}.md").write_bytes(b"\x00 binary")
    docs, report = read_documents(folder, policy="skip")
    try:
        for call in (
            lambda: indexer.index([], progress=False),
            lambda: indexer.index([], prune=True, progress=False),
            lambda: indexer.rebuild([], progress=False),
            lambda: indexer.sync([], progress=False),
        ):
            with pytest.raises(NothingToIndexError, match="collection 'test' does not exist and an empty one"):
                call()
        for allow_delete in (False, True):  # skipped as bad input: never an empty collection
            with pytest.raises(NothingToIndexError) as raised:
                indexer.index(docs, skipped=report.skipped, allow_delete=allow_delete, progress=False)
            assert str(raised.value) == (
                f"{folder}: no documents to index: all 2 records skipped as bad input (binary content (NUL bytes) in a "
                "text file: a.md, b.md); nothing was written: collection 'test' was not created"
            )
        assert not indexer.store.exists()
        assert indexer.index([], prune=True, allow_delete=True, progress=False).points == 0  # asked for
        indexer.index(TINY_DOCS, progress=False)
        version = indexer.store.current_version()
        assert indexer.index([], skipped=report.skipped, progress=False).documents == 0
        assert (indexer.store.count(), indexer.store.current_version()) == (N, version)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_deletes_refuse_one_string_instead_of_deleting_its_characters(indexed_stack, backend):
    """``delete_documents("10")`` used to delete the documents "1" and "0" and keep "10"."""
    stack = indexed_stack(backend, [Document(str(i), f"Ticket number {i} about printer issue {i}.") for i in range(13)])
    indexer = stack.indexer()
    store = indexer.store
    try:
        for one in ("10", b"10"):
            for delete in (indexer.delete_documents, store.delete_documents):
                with pytest.raises(
                    InvalidArgumentError, match="delete_documents takes a list of document ids, not one"
                ):
                    delete(one)
        for call in (store.delete_ids, store.points, store.dense_vectors):
            with pytest.raises(InvalidArgumentError, match=f"{call.__name__} takes a list of point ids, not one"):
                call(point_id("10", 0))
        assert store.count() == 13
        report = indexer.delete_documents(["10"])
        assert (report.documents, report.deleted, report.points, report.missing) == (1, 1, 12, [])
        assert store.count({"doc_id": "10"}) == 0 and store.count({"doc_id": ["1", "0"]}) == 2
    finally:
        stack.close()


def test_calls_taking_texts_or_documents_refuse_one_string(indexed_stack):
    stack = indexed_stack("edge", [])
    indexer = stack.indexer()
    try:
        calls = [indexer.index, indexer.rebuild, indexer.chunk, indexer.sync]
        calls += [stack.dense.encode_documents, stack.dense.encode_queries]
        calls += [stack.sparse.encode_documents, stack.sparse.encode_queries]
        for call in calls:
            with pytest.raises(InvalidArgumentError, match=r"takes a list of \w+, not one string \('pump seal'\)"):
                call("pump seal")
        assert indexer.store.schema() is None  # nothing was written
    finally:
        stack.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_refuses_deleting_most_documents_even_when_they_are_few_points(indexed_stack, backend):
    stack = indexed_stack(backend, [MANUAL, *NOTES])
    indexer = stack.indexer()
    try:
        total = indexer.store.count()
        assert total > 2 * (len(NOTES) + 1)  # the notes are under half of the points
        shares = r"4 of the \d+ points and 4 of the 5 documents \(over half\)"
        why = r"4 documents absent from the source; the source holds 1 document\)"  # not "1 documents"
        with pytest.raises(UnsafeDeleteError, match=rf"{shares} of collection 'test' \({why}"):
            indexer.index([MANUAL], prune=True, progress=False)
        assert indexer.store.count() == total
        indexer.index([MANUAL, *NOTES[:2]], prune=True, progress=False)  # 2 of 5 documents: a safe share, done
        assert indexer.store.count() == total - 2
        report = indexer.index([MANUAL], prune=True, allow_delete=True, progress=False)  # asked for explicitly
        assert (report.deleted, report.points) == (2, total - 4)
    finally:
        stack.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_refuses_when_a_document_that_shrank_takes_most_points_with_it(indexed_stack, backend):
    """A truncated file (a bad save) keeps its document but loses its chunks: the points count, on ``index`` and
    on ``sync`` (what the Dagster ``qdrant_index`` asset calls)."""
    stack = indexed_stack(backend, [MANUAL, NOTES[0]])
    indexer = stack.indexer()
    truncated = Document("manual", MANUAL.text[:200])
    try:
        total = indexer.store.count()
        lost = total - 2
        shares = rf"{lost} of the {total} points \(over half\) and 0 of the 2 documents of collection 'test'"
        why = rf"{lost} surplus chunks of 1 document that shrank; the source holds 2 documents"
        with pytest.raises(UnsafeDeleteError, match=rf"refusing to delete {shares} \({why}\): pass allow_delete"):
            indexer.index([truncated, NOTES[0]], prune=True, progress=False)
        with pytest.raises(UnsafeDeleteError, match=rf"refusing to delete {shares}"):
            indexer.sync(indexer.chunk([truncated, NOTES[0]]), prune=True, progress=False)
        with pytest.raises(UnsafeDeleteError, match=rf"refusing to delete {shares}"):
            indexer.rebuild([truncated, NOTES[0]], progress=False)
        assert indexer.store.count() == total
        shorter = Document("manual", MANUAL.text[: len(MANUAL.text) * 2 // 3])  # a third gone: a safe share
        assert indexer.index([shorter, NOTES[0]], prune=True, progress=False).deleted > 0
        report = indexer.index([truncated, NOTES[0]], prune=True, allow_delete=True, progress=False)
        assert report.points == 2
    finally:
        stack.close()


def test_a_rebuild_with_larger_chunks_is_not_a_shrinking_document(indexed_stack):
    """Chunk counts only compare under the same chunking: a rebuild into larger chunks deletes most points and
    loses nothing, while a rebuild that drops most documents is still refused."""
    stack = indexed_stack("edge", [MANUAL, NOTES[0]], chunk_tokens=64, chunk_overlap=8)
    small = stack.indexer()
    settings = small.settings.model_copy(update={"chunk_tokens": 256})
    larger = Indexer(Parts(settings, small.store, small.dense, small.sparse, cache=small.cache))
    try:
        before = small.store.count()
        with pytest.raises(UnsafeDeleteError, match="1 of the 2 documents"):
            larger.rebuild([NOTES[0]], progress=False)
        report = larger.rebuild([MANUAL, NOTES[0]], progress=False)
        assert report.points < before / 2 and report.deleted == before - report.points
    finally:
        stack.close()


def test_cli_sync_names_the_figure_over_half(cli_env):
    folder = cli_env / "docs"
    folder.mkdir()
    for doc in (MANUAL, *NOTES):
        (folder / f"{doc.id}.md").write_text(doc.text)
    indexed = cli_json("index", str(folder), "-c", "kb")
    for note in NOTES:
        (folder / f"{note.id}.md").unlink()  # e.g. a bad checkout
    out = cli("index", str(folder), "-c", "kb", "--sync", code=2)
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"error: refusing to delete 4 of the {indexed['points']} points and 4 of the 5 documents")
    assert "(over half)" in last and "--allow-delete" in last and points(cli_env, "kb") == indexed["points"]
    assert cli_json("index", str(folder), "-c", "kb", "--sync", "--allow-delete")["deleted"] == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_deletes_refuse_ids_that_are_not_strings(indexed_stack, backend):
    """``delete_documents([2])`` silently deleted nothing (ids are stored as strings); None and nested lists gave
    bare TypeErrors."""
    stack = indexed_stack(backend, [Document(str(i), f"Ticket {i} about printers.") for i in range(3)])
    indexer = stack.indexer()
    try:
        with pytest.raises(InvalidArgumentError, match=r"document ids are strings \(a document id written as 2 is"):
            indexer.delete_documents([2])
        with pytest.raises(InvalidArgumentError, match="takes a list of document ids, got NoneType"):
            indexer.delete_documents(None)
        with pytest.raises(InvalidArgumentError, match=r"ids\[0\] is list"):
            indexer.delete_documents([["2"]])
        with pytest.raises(InvalidArgumentError, match="rebuild takes a list of Documents, not one string"):
            indexer.rebuild("abc")
        assert indexer.store.count() == 3
        assert indexer.delete_documents(("2", "2")).deleted == 1
    finally:
        stack.close()


def test_broken_links_are_reported_and_sync_keeps_the_documents_below_them(cli_env):
    docs, share = cli_env / "docs", cli_env / "share"
    docs.mkdir(), share.mkdir()
    for i in range(6):
        (docs / f"local{i}.md").write_text(f"# Local {i}\n\nLocal page {i} about otters.\n")
    for i in range(3):
        (share / f"s{i}.md").write_text(f"# Shared {i}\n\nShared page {i} about beavers.\n")
    (docs / "shared").symlink_to("../share", target_is_directory=True)  # a linked team folder
    (docs / "s0-link.md").symlink_to("../share/s0.md")  # and one of its files
    cli("index", str(docs), "-c", "dl", "--sync")
    assert points(cli_env, "dl") == 10
    share.rename(cli_env / "share.unmounted")  # the share is unmounted: both links break
    (docs / "local5.md").unlink()  # really removed
    out = cli("index", str(docs), "-c", "dl", "--sync", code=2)
    assert "s0-link.md: broken link: its target ../share/s0.md does not exist" in out
    report = cli_json("index", str(docs), "-c", "dl", "--sync", "--policy", "skip")
    skipped = {(Path(p["path"]).name, p["doc_id"], p["reason"]) for p in report["skipped"]}
    assert skipped == {
        ("s0-link.md", "s0-link.md", "broken link: its target ../share/s0.md does not exist"),
        ("shared", "shared", "broken link: its target ../share does not exist"),
    }
    assert (report["documents"], report["deleted"], report["kept"]) == (5, 1, 4)  # local5.md only
    assert points(cli_env, "dl") == 9 and points(cli_env, "dl", "shared/s2.md") == 1


def test_indexing_one_file_or_subfolder_of_an_indexed_folder_adds_no_copies(cli_env):
    docs = cli_env / "docs"
    (docs / "guide").mkdir(parents=True), (docs / "ref").mkdir()
    for i in range(3):
        (docs / "guide" / f"g{i}.md").write_text(f"# Guide {i}\n\nGuide {i} about llamas.\n")
        (docs / "ref" / f"r{i}.txt").write_text(f"Reference {i} about alpacas.\n")
    cli("index", str(docs), "-c", "kb")
    (docs / "guide" / "g0.md").write_text("# Guide 0\n\nGuide 0 now says: the llama limit is 12.\n")
    out = cli("index", str(docs / "guide" / "g0.md"), "-c", "kb", code=2)
    out = out.replace("\n", "")
    assert "1 of 1 document may already be stored in 'kb' under other ids ('g0.md' would be 'guide/g0.md'" in out
    assert f"copies of these files, index {docs} to update them" in out
    out = cli("index", str(docs / "guide"), "-c", "kb", code=2)
    assert "3 of 3 documents may already be stored" in out
    assert points(cli_env, "kb") == 6 and points(cli_env, "kb", "g0.md") == 0
    report = cli_json("index", str(docs), "-c", "kb")  # the folder indexed: the file's own document is updated
    assert (report["documents"], report["embedded"], report["points"]) == (6, 1, 6)
    notes = cli_env / "notes"  # another folder: its own ids, nothing of it stored
    notes.mkdir()
    (notes / "g0.md").write_text("# Notes\n\nMeeting notes about vicunas.\n")
    report = cli_json("index", str(notes), "-c", "kb")
    assert (report["embedded"], report["points"]) == (1, 7)


def test_a_subfolders_file_stored_decomposed_by_an_earlier_release_is_refused_as_a_copy(cli_env):
    """An earlier release stored file names as the file system gave them (macOS: decomposed); folder ids are NFC
    now, and the copies check matches the stored form."""
    decomposed = unicodedata.normalize("NFD", "guide/résumé.txt")
    cli(
        "index",
        str(write_jsonl(cli_env / "old.jsonl", [Document(decomposed, "Curriculum vitae of Ana Lopez.")])),
        "-c",
        "kb",
    )
    guide = cli_env / "docs" / "guide"
    guide.mkdir(parents=True)
    (guide / "résumé.txt").write_text("Curriculum vitae of Ana Lopez, updated.\n")
    out = cli("index", str(guide), "-c", "kb", code=2).replace("\n", "")
    assert "1 of 1 document may already be stored in 'kb' under other ids" in out
    assert points(cli_env, "kb") == 1


def test_indexing_a_subfolders_file_never_overwrites_a_stored_document_with_the_same_short_id(cli_env):
    kb = cli_env / "kb"
    (kb / "guide").mkdir(parents=True)
    (kb / "index.md").write_text("# Home\n\nThe top-level index page: the office opens at 9.\n")
    (kb / "guide" / "index.md").write_text("# Guide\n\nThe guide index page: llamas eat hay.\n")
    (kb / "guide" / "other.md").write_text("# Other\n\nAnother guide page about alpacas.\n")
    cli("index", str(kb), "-c", "kb")
    (kb / "guide" / "index.md").write_text("# Guide\n\nThe guide index page: llamas now eat grass.\n")
    out = cli("index", str(kb / "guide" / "index.md"), "-c", "kb", code=2).replace("\n", "")  # stored too
    assert "1 of 1 document may already be stored in 'kb' under other ids ('index.md' would be" in out
    store = EdgeStore(cli_env / "index", "kb")
    try:
        [home] = store.points([point_id("index.md", 0)]).values()
    finally:
        store.close()
    assert "office opens at 9" in home.payload["text"] and points(cli_env, "kb") == 3
    report = cli_json("index", str(kb), "-c", "kb")  # the folder indexed: the guide page alone is updated
    assert (report["documents"], report["embedded"], report["points"]) == (3, 1, 3)
    (kb / "kb").mkdir()  # a subfolder named as the folder: its files' ids are the folder's files' longer ids
    (kb / "kb" / "index.md").write_text("# Nested\n\nA nested index page about vicunas.\n")
    assert cli_json("index", str(kb), "-c", "kb")["points"] == 4  # ('index.md' would be 'kb/index.md': its own)
    assert cli_json("index", str(kb), "-c", "kb")["embedded"] == 0  # and again: the same folder, no refusal


def test_another_trees_file_with_the_same_path_is_refused_as_maybe_a_copy(cli_env):
    team, bob = cli_env / "teamA", cli_env / "bob"
    (team / "guide").mkdir(parents=True), (bob / "guide").mkdir(parents=True)
    (team / "guide" / "setup.md").write_text("# Setup A\n\nTeam A setup about kiwis.\n")
    (bob / "guide" / "setup.md").write_text("# Setup Bob\n\nBob's unrelated setup notes about kiwis.\n")
    cli("index", str(team), "-c", "kb")
    out = cli("index", str(bob / "guide"), "-c", "kb", code=2).replace("\n", "")
    assert f"('setup.md' would be 'guide/setup.md' if {bob} were indexed, and 'guide/setup.md' is stored" in out
    assert f"If the stored documents are copies of these files, index {bob} to update them" in out
    assert "another folder tree's files with the same paths, index these into another collection" in out
    assert "a collection holds one folder tree's files" in out
    assert points(cli_env, "kb") == 1


def test_a_folder_named_like_the_collection_in_the_index_folder_is_never_taken_for_it(cli_env):
    """The index folder may be a project folder: a plain folder with the collection's name (the source being indexed,
    the evaluation history's data/history) is neither an earlier release's collection nor deleted after a write."""
    index = cli_env / "index"
    source = index / "docs"  # QDRANT_PATH=proj, `index proj/docs --collection docs`
    source.mkdir(parents=True)
    for i in range(3):
        (source / f"note{i}.md").write_text(f"# Note {i}\nSome team notes about topic {i} and retrieval.\n")
    history = index / "history" / "evals.sqlite"  # QDRANT_PATH=data, `--collection history`
    history.parent.mkdir()
    history.write_bytes(b"SQLite format 3\x00")
    jsonl = str(write_jsonl(cli_env / "all.jsonl", TINY_DOCS))
    for args in (
        [str(source), "-c", "docs"],
        [str(source), "-c", "docs", "--sync"],
        [str(source), "-c", "docs", "--rebuild"],
        [jsonl, "-c", "history"],
    ):
        out = cli("index", *args, code=2)
        folder = str(index / args[2])
        assert f"{folder} is not a hybrid-rag collection" in " ".join(out.split()), out
        assert "index documents first" not in out
    assert sorted(p.name for p in source.iterdir()) == ["note0.md", "note1.md", "note2.md"]
    assert history.read_bytes() == b"SQLite format 3\x00"
    assert sorted(p.name for p in index.iterdir()) == ["docs", "history"]  # no version staged, no lock file made


def test_a_plain_folder_appearing_beside_a_collection_is_not_dropped_as_an_old_version(cli_env):
    jsonl = str(write_jsonl(cli_env / "all.jsonl", TINY_DOCS))
    cli("index", jsonl, "-c", "notes")
    precious = cli_env / "index" / "notes" / "precious.txt"  # the team's folder, made after the first index
    precious.parent.mkdir()
    precious.write_text("team data\n")
    cli("search", "pasta", "-c", "notes")  # reads do not look at it
    out = cli("index", jsonl, "-c", "notes", "--rebuild", code=2)  # a write would drop it as version 0
    assert "is not a hybrid-rag collection" in out
    assert precious.read_text() == "team data\n" and points(cli_env, "notes") == N
