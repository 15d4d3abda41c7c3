"""The qdrant_index asset keeps sync semantics: the same refusal of mass deletion (overridable by config), and the
stored documents of records skipped as bad input, a skipped folder's included."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets import ALL_ASSETS
from assets.index import POINT_COUNT_CHECK, _nothing_to_publish, point_count_check
from assets.resources import CorporaResource, EvalHistoryResource, RetrievalResource
from assets.tables import SKIPPED_KEY, documents_to_table, table_skipped
from orchestration.definitions import default_resources
from orchestration.parquet_io import ParquetIOManager
from retrieval.documents import InputProblem, SourceFormat
from retrieval.store import EdgeStore
from tests.conftest import TINY_DOCS


def _pipeline(tmp_path: Path, corpus: str) -> tuple[Callable[..., dg.ExecuteInJobResult], Callable[..., int]]:
    """materialize(**qdrant_index config) of every asset for the ``dropbox`` corpus (``corpus``: its YAML fields,
    collection ``drop``), and points(doc_id=None) of the collection."""
    corpora = tmp_path / "corpora.yaml"
    corpora.write_text(f"corpora:\n  dropbox:\n{corpus}    collection: drop\n")
    resources = default_resources(
        retrieval=RetrievalResource(qdrant_path=str(tmp_path / "index"), cache_dir=str(tmp_path / "cache")),
        eval_history=EvalHistoryResource(path=str(tmp_path / "evals.sqlite")),
        io_manager=ParquetIOManager(base_dir=str(tmp_path / "assets")),
        corpora=CorporaResource(path=str(corpora)),
    )
    instance = dg.DagsterInstance.ephemeral()

    def materialize(**config) -> dg.ExecuteInJobResult:
        run_config = {"ops": {"qdrant_index": {"config": config}}} if config else None
        return dg.materialize(
            ALL_ASSETS,  # qdrant_index stages a version, published_index switches readers to it
            partition_key="dropbox",
            resources=resources,
            instance=instance,
            run_config=run_config,
            raise_on_error=False,
        )

    def points(doc_id: str | None = None) -> int:
        store = EdgeStore(tmp_path / "index", "drop")
        try:
            return store.count({"doc_id": doc_id} if doc_id else None)
        finally:
            store.close()

    return materialize, points


def _docs_folder(tmp_path: Path) -> Path:
    """A docs folder ``drop`` holding the first four tiny documents as Markdown files."""
    drop = tmp_path / "drop"
    drop.mkdir()
    for doc in TINY_DOCS[:4]:
        (drop / f"{doc.id}.md").write_text(f"# {doc.title}\n{doc.text}")
    return drop


@pytest.mark.slow
def test_asset_refuses_to_wipe_the_index_unless_configured(tmp_path: Path) -> None:
    drop = _docs_folder(tmp_path)
    materialize, points = _pipeline(tmp_path, f"    source: {drop}\n    format: dir\n")
    assert materialize().success and points() == 4
    for doc in TINY_DOCS[1:4]:
        (drop / f"{doc.id}.md").unlink()  # e.g. a half-synced or unmounted folder
    refused = materialize()
    assert not refused.success and points() == 4
    failures = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "refusing to delete 3 of the 4 points" in str(failures[0].step_failure_data.error)
    assert materialize(allow_delete=True).success and points() == 1


def test_a_first_build_of_skipped_records_only_says_so_as_the_cli_does(tmp_path: Path) -> None:
    """The first build's refusal when every record was skipped as bad input said "no document read (2 records
    skipped as bad input)"; it names them as ``hybrid-rag index --policy skip`` does (``all_skipped``)."""
    skipped = [InputProblem(tmp_path / f"{n}.md", None, "binary", doc_id=f"{n}.md") for n in "ab"]
    said = _nothing_to_publish("dropbox", "drop", tmp_path, SourceFormat.DIR, skipped)
    assert said == (
        f"corpus 'dropbox': {tmp_path}: no documents to index: all 2 records skipped as bad input (binary: a.md, "
        "b.md); collection 'drop' not created (an empty one would be published)"
    )


@pytest.mark.slow
def test_an_empty_source_publishes_no_empty_index_and_deletes_nothing(tmp_path: Path) -> None:
    """A first build of a folder holding no document published an empty collection; emptied later, the folder is
    refused by the size guard (unless allow_delete)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    materialize, points = _pipeline(tmp_path, f"    source: {drop}\n    format: dir\n    on_bad_input: skip\n")
    refused = materialize()
    error = str(next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error)
    assert not refused.success and not (tmp_path / "index" / "drop").exists()
    assert (
        f"corpus 'dropbox': {drop}: no documents to index: a folder's documents are read from its files of types"
        in error
    )
    assert "only 1 file of other types: scan.png; nothing was written; collection 'drop' not created" in error
    for doc in TINY_DOCS[:2]:
        (drop / f"{doc.id}.md").write_text(f"# {doc.title}\n{doc.text}")
    assert materialize().success and points() == 2
    for doc in TINY_DOCS[:2]:
        (drop / f"{doc.id}.md").unlink()
    refused = materialize()
    error = str(next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error)
    assert not refused.success and "refusing to delete 2 of the 2 points" in error and points() == 2


@pytest.mark.slow
def test_a_refused_run_of_an_entry_without_format_names_the_detected_format(tmp_path: Path) -> None:
    """A docs folder (no ``format:``) that receives a ``corpus.jsonl`` is read as BEIR from then on: the size guard
    refuses, and the failure says why the source now looks so small."""
    drop = _docs_folder(tmp_path)
    materialize, points = _pipeline(tmp_path, f"    source: {drop}\n")
    assert materialize().success and points() == 4
    (drop / "corpus.jsonl").write_text('{"_id": "x", "title": "t", "text": "a synced export"}\n')
    refused = materialize()
    assert not refused.success and points() == 4
    error = str(next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error)
    assert (
        "refusing to delete" in error and "the entry sets no format: its source is detected as format 'beir'" in error
    )


@pytest.mark.slow
def test_sync_keeps_the_documents_below_a_broken_folder_link(tmp_path: Path) -> None:
    docs, share = tmp_path / "docs", tmp_path / "share"
    docs.mkdir(), share.mkdir()
    for doc in TINY_DOCS[:5]:
        (docs / f"{doc.id}.md").write_text(f"# {doc.title}\n{doc.text}")
    for doc in TINY_DOCS[5:7]:
        (share / f"{doc.id}.md").write_text(f"# {doc.title}\n{doc.text}")
    (docs / "shared").symlink_to("../share", target_is_directory=True)  # a linked team folder
    materialize, points = _pipeline(tmp_path, f"    source: {docs}\n    format: dir\n    on_bad_input: skip\n")
    assert materialize().success and points() == 7
    share.rename(tmp_path / "share.unmounted")  # the share is unmounted: the link breaks
    (docs / f"{TINY_DOCS[0].id}.md").unlink()  # really removed
    result = materialize()
    assert result.success
    assert points() == 6 and points(f"shared/{TINY_DOCS[6].id}.md") == 1  # only the removed file's document went
    [check] = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == POINT_COUNT_CHECK
    ]
    assert check.passed and check.metadata["kept_points"].value == 2


@pytest.mark.slow
def test_sync_keeps_the_document_of_a_broken_line_with_an_escaped_id(tmp_path: Path) -> None:
    source = tmp_path / "notes.jsonl"
    good = [json.dumps({"_id": d.id, "text": d.text}).encode() for d in TINY_DOCS[:4]]
    cafe = json.dumps({"_id": "café", "text": "Notes from the café about espresso."}).encode()  # "caf\u00e9"
    source.write_bytes(b"\n".join([*good, cafe]) + b"\n")
    materialize, points = _pipeline(tmp_path, f"    source: {source}\n    format: jsonl\n    on_bad_input: skip\n")
    assert materialize().success and points() == 5
    for broken in (cafe[:-1] + b",}", '{"_id": "café", "text": "Notes"}'.encode("latin-1")):  # read as café, no id
        source.write_bytes(b"\n".join([*good, broken]) + b"\n")
        result = materialize()
        assert result.success and points() == 5 and points("café") == 1
        [check] = [
            e.event_specific_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == POINT_COUNT_CHECK
        ]
        assert check.passed and check.metadata["kept_points"].value == 1


def test_skipped_records_keep_their_folder_flag_and_old_tables_still_read(tmp_path: Path) -> None:
    link = InputProblem(tmp_path / "shared", None, "broken link: its target ../share does not exist", "shared", True)
    bad = InputProblem(tmp_path / "a.md", None, "not valid UTF-8", "a.md")
    pq.write_table(documents_to_table([], [link, bad]), tmp_path / "docs.parquet")
    assert table_skipped(pq.ParquetFile(tmp_path / "docs.parquet")) == [link, bad]
    assert table_skipped(pq.ParquetFile(tmp_path / "docs.parquet"))[0].covers("shared/s1.md")
    old = b'[{"path": "/d/shared", "line": null, "reason": "broken link", "doc_id": "shared"}]'  # no 'folder'
    [record] = table_skipped(documents_to_table([]).replace_schema_metadata({SKIPPED_KEY: old}))
    assert record == InputProblem(Path("/d/shared"), None, "broken link", "shared") and not record.folder


def test_the_point_count_check_says_what_it_found_and_what_a_failure_means() -> None:

    ok = point_count_check("notes", 3, 7, 5, 2)
    assert ok.passed and ok.description == "version 3 of 'notes' holds 7 points: 5 chunks + 2 kept for skipped input"
    lost = point_count_check("notes", 3, 6, 5, 2)
    assert not lost.passed and lost.severity == dg.AssetCheckSeverity.ERROR
    assert "holds 6 points, expected 7 (5 chunks + 2 kept" in lost.description
    assert "not published (readers stay on the published version); run again" in lost.description
