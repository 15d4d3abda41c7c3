"""``hybrid-rag drop``: removes a collection for good (every version, staged ones too, readers' pointer or alias, its
models) after a confirmation, on both backends; refuses a name hybrid-rag did not make; leaves other collections."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from qdrant_client import models as qm
from typer.testing import CliRunner

from assets.evaluation import report_files
from evals.history import EvalHistory
from orchestration.cli import app
from retrieval import RetrievalStack
from retrieval.store import EdgeStore, StoreError, collection_names, connect
from tests.conftest import BACKENDS, TINY_DOCS
from tests.test_reliability_versions import NEW_DOCS, settings_for
from tests.test_server_path import aliases, foreign_collection

MARKER = "ZEBRA-SECRET-4711"


def settings_of(backend: str, root: Path, collection: str):
    url = f"file://{root / 'local'}" if backend == "server" else None
    return settings_for(root / "index", qdrant_url=url, collection=collection, models_dir=root / "models")


def build(backend: str, root: Path, dense, sparse) -> None:
    """Collections 'test' (published version 1, and version 2 staged, unpublished) and 'other'."""
    for name in ("test", "other"):
        with RetrievalStack(settings_of(backend, root, name), dense=dense, sparse=sparse) as stack:
            indexer = stack.indexer()
            indexer.index(TINY_DOCS, progress=False)
            if name == "test":
                indexer.sync(indexer.chunk(NEW_DOCS), prune=True, progress=False, publish=False)


def physical(backend: str, root: Path) -> set[str]:
    if backend == "edge":
        return {p.name for p in (root / "index").iterdir() if not p.name.endswith(".lock")}
    client = connect(f"file://{root / 'local'}")
    try:
        return {c.name for c in client.get_collections().collections} | {f"alias {a}" for a in aliases(client)}
    finally:
        client.close()


@pytest.fixture
def drop(tmp_path, monkeypatch):
    """Runs ``hybrid-rag drop`` with the settings of :func:`settings_of`; returns (exit code, output)."""
    monkeypatch.chdir(tmp_path)

    def run(backend: str, *args: str, input: str | None = None) -> tuple[int, str]:
        if backend == "server":
            monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", f"file://{tmp_path / 'local'}")
        monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
        monkeypatch.setenv("HYBRID_RAG_MODELS_DIR", str(tmp_path / "models"))
        result = CliRunner().invoke(app, ["drop", *args], input=input)
        assert "Traceback" not in result.output
        return result.exit_code, result.output

    return run


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_removes_every_version_pointer_and_models_after_confirmation(
    backend, tmp_path, drop, dense_encoder, sparse_encoder
):
    build(backend, tmp_path, dense_encoder, sparse_encoder)
    models = tmp_path / "models"
    # a restore's copy of test's models, and collection 'test.before-restore-eu''s own models (not a copy)
    for folder in (
        "test/query_encoder",
        "test.before-restore-20260101T000000Z",
        "test.before-restore-eu",
        "other/query_encoder",
    ):
        (models / folder).mkdir(parents=True)
        (models / folder / "model.safetensors").write_text("weights")
    before = physical(backend, tmp_path)
    assert {"test__v1", "test__v2"} <= before

    code, out = drop(backend, "test", input="n\n")  # declined: nothing changed
    assert code == 1 and "Remove collection 'test'" in out and "test.before-restore-" in out
    assert physical(backend, tmp_path) == before and (models / "test/query_encoder").is_dir()

    code, out = drop(backend, "test", "--yes")
    assert code == 0, out
    assert "test__v1" in out and "test__v2" in out and f"removed {models / 'test'}" in out
    left = physical(backend, tmp_path)
    assert not {n for n in left if "test" in n}, left  # versions, staged copy, pointer file or alias
    assert left == {n for n in before if "test" not in n}  # 'other' untouched
    assert sorted(p.name for p in models.iterdir()) == ["other", "test.before-restore-eu"]
    assert collection_names(settings_of(backend, tmp_path, "test")) == ["other"]

    code, out = drop(backend, "test", "--yes")  # again: a clear error naming what is there, exit 2
    assert code == 2 and "no collection 'test'" in out and out.rstrip().endswith(": it holds 'other'"), out
    code, out = drop(backend, "othr", "--yes")  # a typo: the close name
    assert code == 2 and out.rstrip().endswith(" (did you mean 'other'?)"), out


def test_drop_without_an_answer_to_read_names_yes_and_removes_nothing(tmp_path, drop, dense_encoder, sparse_encoder):
    """cron, CI or a daemon: stdin at its end (``</dev/null``) or closed (``<&-``, once a traceback) is one line
    naming --yes, exit code 2; a piped ``y`` still confirms."""
    from tests.test_cli_scripting import hybrid_rag

    build("edge", tmp_path, dense_encoder, sparse_encoder)
    before = physical("edge", tmp_path)
    code, out = drop("edge", "test", input="")
    assert code == 2 and out.strip().splitlines()[-1].endswith("stdin has none: pass --yes to confirm"), out
    assert physical("edge", tmp_path) == before
    closed = hybrid_rag("drop", "test", cwd=tmp_path, close=0)  # drop's settings: the environment the fixture set
    assert closed.returncode == 2 and "Traceback" not in closed.stderr, closed.stderr
    assert closed.stderr.strip().splitlines()[-1].endswith("stdin has none: pass --yes to confirm"), closed.stderr
    assert physical("edge", tmp_path) == before
    code, out = drop("edge", "test", input="y\n")
    assert code == 0 and "dropped 'test'" in out, out


def test_drop_refuses_a_folder_hybrid_rag_did_not_make(tmp_path, drop):
    theirs = tmp_path / "index" / "notes"
    theirs.mkdir(parents=True)
    (theirs / "todo.txt").write_text("mine")
    code, out = drop("edge", "notes", "--yes")
    assert code == 2 and "is not a hybrid-rag collection" in out
    assert (theirs / "todo.txt").read_text() == "mine"
    assert not (tmp_path / "index" / "notes.write.lock").exists()


@pytest.mark.parametrize("foreign", ["collection", "alias"])
def test_drop_refuses_a_server_collection_or_alias_hybrid_rag_did_not_make(foreign, tmp_path, drop):
    client = connect(f"file://{tmp_path / 'local'}")
    foreign_collection(client, "test" if foreign == "collection" else "team_data")
    if foreign == "alias":
        alias = qm.CreateAlias(collection_name="team_data", alias_name="test")
        client.update_collection_aliases(change_aliases_operations=[qm.CreateAliasOperation(create_alias=alias)])
    client.close()
    before = physical("server", tmp_path)
    code, out = drop("server", "test", "--yes")
    assert code == 2 and "hybrid-rag did not create" in out
    assert physical("server", tmp_path) == before


def test_drop_corpus_removes_its_asset_tables_reports_and_history_rows_only(
    tmp_path, drop, monkeypatch, dense_encoder, sparse_encoder
):
    """``--corpus``: what hybrid-rag wrote of a Dagster corpus beside its collection goes too; another corpus' stays."""
    build("edge", tmp_path, dense_encoder, sparse_encoder)
    assets, history_path = tmp_path / "assets", tmp_path / "history" / "evals.sqlite"
    corpora = tmp_path / "corpora.yaml"
    corpora.write_text("corpora:\n  other: {source: other, format: dir}\n")  # 'notes' was removed from it
    for key, value in (("ASSETS_DIR", assets), ("HISTORY_PATH", history_path), ("CORPORA_FILE", corpora)):
        monkeypatch.setenv(f"HYBRID_RAG_{key}", str(value))
    history = EvalHistory(history_path)
    files = []
    for corpus in ("notes", "notes-old", "other"):
        for asset in ("raw_documents", "chunks"):
            files.append(assets / asset / f"{corpus}.parquet")
        history.append(corpus, "test", "hybrid", {"ndcg@10": 0.5}, source="dagster")
        files += report_files(history, corpus, "test")
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(MARKER)

    code, out = drop("edge", "test", "--corpus", "other", "--yes")  # configured for another collection
    assert code == 2 and "corpus 'other' indexes collection 'other', not 'test'" in out
    assert all(p.exists() for p in files) and physical("edge", tmp_path) >= {"test__v1"}

    code, out = drop("edge", "test", "--corpus", "notes", "--yes")
    assert code == 0, out
    assert "1 evaluation history row deleted" in out
    notes = {assets / "raw_documents" / "notes.parquet", assets / "chunks" / "notes.parquet"}
    assert {p for p in files if not p.exists()} == notes | set(report_files(history, "notes", "test"))
    assert not (history_path.parent / "reports" / "notes").exists()  # its emptied reports folder too
    assert set(history.records()["collection"]) == {"notes-old", "other"}
    assert not {n for n in physical("edge", tmp_path) if n.startswith("test")}

    code, out = drop("edge", "test", "--corpus", "notes", "--yes")  # again: nothing left, and no error
    assert code == 0 and "no collection 'test'" in out and "0 evaluation history rows" in out


def corpus_files(tmp_path: Path, monkeypatch, corpora: str) -> tuple[Path, EvalHistory]:
    """The corpora file, asset tables folder and evaluation history ``drop --corpus`` reads, under ``tmp_path``."""
    (tmp_path / "corpora.yaml").write_text(corpora)
    assets, history_path = tmp_path / "assets", tmp_path / "history" / "evals.sqlite"
    for key, value in (("ASSETS_DIR", assets), ("HISTORY_PATH", history_path), ("CORPORA_FILE", "corpora.yaml")):
        monkeypatch.setenv(f"HYBRID_RAG_{key}", str(tmp_path / value))
    return assets, EvalHistory(history_path)


def write(*paths: Path) -> list[Path]:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(MARKER)
    return list(paths)


def test_no_two_corpora_and_splits_share_report_files(tmp_path):
    """``team``/``eu-test`` and ``team-eu``/``test`` (names and splits may hold '-'), or splits that differ in a
    character a file name cannot hold, each get their own files: else their runs overwrite each other's figures."""
    history = EvalHistory(tmp_path / "evals.sqlite")
    pairs = [("team", "eu-test"), ("team-eu", "test"), ("team", "eu/test"), ("team", "eu test")]
    files = [p for corpus, split in pairs for p in report_files(history, corpus, split)]
    assert len(set(files)) == len(files) == 2 * len(pairs), files
    assert all(p.is_relative_to(tmp_path / "reports") for p in files)


def test_drop_corpus_leaves_another_corpus_reports_whose_old_names_it_shared(
    tmp_path, drop, monkeypatch, dense_encoder, sparse_encoder
):
    """Dropping corpus ``test`` (split ``eu-test``) leaves corpus ``test-eu``'s reports (split ``test``); files an
    earlier release wrote as ``reports/<corpus>-<split>-*`` go with their corpus only when no other corpus and split
    of the history had that name (else they may be the other's: kept)."""
    from assets.evaluation import PER_QUERY_SUFFIX, PLOT_SUFFIX

    build("edge", tmp_path, dense_encoder, sparse_encoder)
    _, history = corpus_files(tmp_path, monkeypatch, "corpora:\n  other: {source: other, format: dir}\n")
    for corpus, split in (("test", "eu-test"), ("test-eu", "test"), ("test", "old")):
        history.append(corpus, split, "hybrid", {"ndcg@10": 0.5}, {"qdrant_collection": corpus}, source="dagster")
    reports = history.path.parent / "reports"
    theirs = write(*report_files(history, "test-eu", "test"))
    ours = write(*report_files(history, "test", "eu-test"))
    shared = write(*(reports / f"test-eu-test-{s}" for s in (PLOT_SUFFIX, PER_QUERY_SUFFIX)))  # an old release's
    old_ours = write(*(reports / f"test-old-{s}" for s in (PLOT_SUFFIX, PER_QUERY_SUFFIX)))

    code, out = drop("edge", "test", "--corpus", "test", "--yes")
    assert code == 0, out
    assert {p for p in [*theirs, *ours, *shared, *old_ours] if not p.exists()} == {*ours, *old_ours}
    assert all(p.read_text() == MARKER for p in [*theirs, *shared])
    assert set(history.records()["collection"]) == {"test-eu"}


def test_moving_an_earlier_release_report_files_to_their_new_names(tmp_path):
    """An upgrade finds the per-query figures of the last evaluation under its new name (else every corpus would be
    evaluated again once); a name two corpora may have written is left where it is."""
    from assets.evaluation import PER_QUERY_SUFFIX, move_legacy_reports

    history = EvalHistory(tmp_path / "evals.sqlite")
    for corpus, split in (("notes", "test"), ("team", "eu-test"), ("team-eu", "test")):
        history.append(corpus, split, "hybrid", {"ndcg@10": 0.5}, source="dagster")
    reports = tmp_path / "reports"
    notes, team = write(reports / f"notes-test-{PER_QUERY_SUFFIX}", reports / f"team-eu-test-{PER_QUERY_SUFFIX}")
    move_legacy_reports(history, "notes", "test")
    move_legacy_reports(history, "team", "eu-test")
    assert not notes.exists() and report_files(history, "notes", "test")[1].read_text() == MARKER
    assert team.read_text() == MARKER and not report_files(history, "team", "eu-test")[1].exists()


def test_drop_corpus_refuses_a_collection_a_renamed_corpus_still_indexes(
    tmp_path, drop, monkeypatch, dense_encoder, sparse_encoder
):
    """Corpus ``notes`` renamed ``handbook`` in the corpora file, same collection: cleaning up the old name must not
    drop the collection (and its models) the renamed corpus serves; --keep-collection forgets only the old name."""
    build("edge", tmp_path, dense_encoder, sparse_encoder)
    assets, history = corpus_files(
        tmp_path, monkeypatch, "corpora:\n  handbook: {source: docs, format: dir, collection: test}\n"
    )
    for corpus in ("notes", "handbook"):
        history.append(corpus, "test", "hybrid", {"ndcg@10": 0.5}, {"qdrant_collection": "test"}, source="dagster")
    old = write(assets / "chunks" / "notes.parquet", *report_files(history, "notes", "test"))
    live = write(assets / "chunks" / "handbook.parquet", tmp_path / "models" / "test" / "reranker.json")
    before = physical("edge", tmp_path)

    code, out = drop("edge", "test", "--corpus", "notes", "--yes")
    assert code == 2 and "collection 'test' is still indexed by corpus 'handbook' in" in out, out
    assert "--keep-collection" in out and "nothing was changed" in out
    assert physical("edge", tmp_path) == before and all(p.exists() for p in [*old, *live])

    code, out = drop("edge", "test", "--corpus", "notes", "--keep-collection", input="n\n")  # asks first
    assert code == 1 and "Remove corpus 'notes': 1 asset table, 2 reports, 1 evaluation history row" in out, out
    assert all(p.exists() for p in old)
    code, out = drop("edge", "test", "--corpus", "notes", "--keep-collection", "--yes")
    assert code == 0 and "1 evaluation history row deleted" in out and "dropped" not in out, out
    assert not any(p.exists() for p in old) and all(p.exists() for p in live)
    assert physical("edge", tmp_path) == before and set(history.records()["collection"]) == {"handbook"}

    code, out = drop("edge", "test", "--keep-collection", "--yes")
    assert code == 2 and "needs --corpus" in out and physical("edge", tmp_path) == before
    code, out = drop("edge", "test", "--corpus", "handbook", "--keep-collection", "--yes")  # the live name, by mistake
    assert code == 2 and "corpus 'handbook' is still configured in" in out and "Nothing was changed" in out, out
    assert all(p.exists() for p in live) and set(history.records()["collection"]) == {"handbook"}


def test_drop_corpus_keeps_the_name_s_history_rows_of_other_collections(
    tmp_path, drop, monkeypatch, dense_encoder, sparse_encoder
):
    """``hybrid-rag eval`` records under the BEIR folder's name: two teams' folders both named ``eval`` share it,
    and each row says which collection it searched. Dropping one collection forgets only its rows."""
    build("edge", tmp_path, dense_encoder, sparse_encoder)
    _, history = corpus_files(tmp_path, monkeypatch, "corpora:\n  x: {source: x, format: dir}\n")
    for searched in ("test", "other", "other"):
        history.append("eval", "test", "hybrid", {"ndcg@10": 0.5}, {"qdrant_collection": searched}, source="cli")
    kept = history.records()[lambda df: [c["qdrant_collection"] == "other" for c in df["context"]]]

    code, out = drop("edge", "test", "--corpus", "eval", "--yes")
    assert code == 0, out
    assert "corpus 'eval': 1 evaluation history row deleted (2 of other collections kept)" in out
    assert history.records()["id"].tolist() == kept["id"].tolist()


def test_drop_waits_for_a_writer_and_gives_up_clearly(tmp_path, dense_encoder, sparse_encoder):
    """A drop is a write: while another writer holds the collection it waits, then fails, dropping nothing."""
    build("edge", tmp_path, dense_encoder, sparse_encoder)
    store = EdgeStore(tmp_path / "index", "test", lock_timeout_s=0.5)
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with EdgeStore(tmp_path / "index", "test").write_lock():
            held.set()
            release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(30)
    try:
        with pytest.raises(StoreError, match="is being written"):
            store.drop()
        assert {"test__v1", "test__v2", "test.current.json"} <= physical("edge", tmp_path)
    finally:
        release.set()
        thread.join()
    assert store.drop() == ["test__v1", "test__v2"]
    assert not {n for n in physical("edge", tmp_path) if n.startswith("test")}


READ_THROUGH_DROP = """
import gc, signal, sys
from retrieval.store import EdgeStore
store = EdgeStore(sys.argv[1], "test")
print("holding", store.count(), flush=True)  # the published version is open in this process now
sys.stdin.readline()  # the collection is dropped meanwhile
print("after drop", store.count(), flush=True)
if sys.argv[2] == "close":
    store.close()
elif sys.argv[2] == "gc":  # dropped unclosed: the garbage collector lets go of it
    del store
    gc.collect()
elif sys.argv[2] == "kill":  # killed: no close, no exit handler
    sys.stdin.readline()
# "exit": ends with the store open (the exit handlers let go of it)
"""


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["close", "gc", "exit", "kill"])
def test_a_dropped_version_another_process_holds_goes_when_it_lets_go(
    ending, tmp_path, drop, dense_encoder, sparse_encoder
):
    """A reader in another process keeps answering from the version it holds when the collection is dropped, says
    the collection was dropped (not how to bring it back), and its release deletes the version; a reader killed
    leaves it to the next process that lists or opens the collection. Meanwhile the collection is not listed."""
    import signal
    import subprocess
    import sys

    from tests.test_reliability_writes import REPO

    build("edge", tmp_path, dense_encoder, sparse_encoder)
    index = tmp_path / "index"
    reader = subprocess.Popen(
        [sys.executable, "-c", READ_THROUGH_DROP, str(index), ending],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().split() == ["holding", str(len(TINY_DOCS))]
        code, out = drop("edge", "test", "--yes")
        assert code == 0 and "test__v1" in out, out
        assert (index / "test__v1").is_dir()  # held: kept for now
        assert collection_names(settings_of("edge", tmp_path, "test")) == ["other"]  # but no longer listed
        assert (index / "test__v1").is_dir()
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().split() == ["after", "drop", str(len(TINY_DOCS))]  # still answering
        if ending == "kill":
            reader.send_signal(signal.SIGKILL)
            reader.wait(timeout=60)
        else:
            reader.stdin.close()
            assert reader.wait(timeout=60) == 0
        log = reader.stderr.read()
    finally:
        reader.kill()
        reader.wait()
    assert "collection 'test' was dropped" in log and "current.json" not in log, log  # no advice to restore it
    if ending == "kill":
        assert (index / "test__v1").is_dir()  # the killed reader could not delete it ...
        assert collection_names(settings_of("edge", tmp_path, "test")) == ["other"]  # ... the next listing does
    assert not (index / "test__v1").exists()
    assert sorted(p.name for p in index.iterdir() if p.name.startswith("test")) == ["test.write.lock"]
    code, out = drop("edge", "test", "--yes")
    assert code == 2 and "no collection 'test'" in out


@pytest.mark.slow
def test_a_dropped_version_a_killed_reader_held_goes_at_the_next_open(tmp_path, dense_encoder, sparse_encoder):
    """The collection is dropped and indexed again while another process holds its old version; that process is
    killed (no release): the next store that opens the collection deletes the old version."""
    from tests.test_reliability_writes import holding

    index = tmp_path / "index"
    settings = settings_for(index)
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
    with holding(index):
        EdgeStore(index, "test").drop()
        with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
            assert stack.indexer().index(TINY_DOCS[:3], progress=False).version == 2
        assert (index / "test__v1").is_dir()
    assert (index / "test__v1").is_dir()  # its holder was killed
    store = EdgeStore(index, "test")
    assert store.count() == 3 and not (index / "test__v1").exists()
    store.close()


def test_a_reader_tells_a_drop_from_a_lost_pointer(tmp_path, caplog, dense_encoder, sparse_encoder):
    """Only a lost pointer gets the advice to write it back: a dropped collection is not to be restored."""
    index = tmp_path / "index"
    with RetrievalStack(settings_for(index), dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
    reader = EdgeStore(index, "test")
    assert reader.count() == len(TINY_DOCS)
    (index / "test.current.json").unlink()  # lost, not dropped: the version is intact
    assert reader.count() == len(TINY_DOCS)
    assert 'still serving test__v1: write {"version": 1} into' in caplog.text and "was dropped" not in caplog.text
    caplog.clear()
    (index / "test.current.json").write_text('{"version": 1}')
    assert reader.count() == len(TINY_DOCS)
    EdgeStore(index, "test").drop()
    assert reader.count() == len(TINY_DOCS)
    assert "collection 'test' was dropped: still serving test__v1" in caplog.text and "write {" not in caplog.text
    reader.close()
    assert not (index / "test__v1").exists()


def test_a_version_a_reader_deletes_while_it_is_dropped_is_gone_without_an_error(
    tmp_path, monkeypatch, dense_encoder, sparse_encoder
):
    """A publish drops the old version while a reader of the same process, switching to the new one, deletes the
    old one as its last holder: the drop's mark finds the folder gone (seen under load in CI: FileNotFoundError
    from the rebuild) and the drop goes on."""
    build("edge", tmp_path, dense_encoder, sparse_encoder)
    original = EdgeStore._set_stage_info

    def deleted_first(self, version, info):
        import shutil

        shutil.rmtree(self.root / f"{self.collection}__v{version}")  # the reader's delete, just before the mark
        original(self, version, info)

    monkeypatch.setattr(EdgeStore, "_set_stage_info", deleted_first)
    store = EdgeStore(tmp_path / "index", "other")
    assert store.pinned(1).drop() == ["other__v1"]
    assert not (tmp_path / "index" / "other__v1").exists()
