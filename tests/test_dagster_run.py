"""Dagster runs of a small folder corpus: skipped documents keep their stored chunks, expected errors fail a run
with one clear line (also through ``hybrid-rag run``), a corpus too small to adapt on is skipped, and stale
vector tables are counted by the rows that differ."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from assets import ALL_ASSETS, POINT_COUNT_CHECK, query_encoder
from assets.evaluation import GATE, GATE_NOT_RUN, NDCG_CHECK
from assets.resources import CorporaResource, EvalHistoryResource, RetrievalResource
from assets.tables import same_rows, stale_rows
from evals.collections import sample_collection
from evals.history import EvalHistory
from orchestration.cli import _export_env_files, app
from orchestration.definitions import default_resources
from orchestration.main_job import MainJobError, run_main_job
from orchestration.parquet_io import ParquetIOManager
from retrieval import RetrievalSettings
from retrieval.errors import InvalidArgumentError
from retrieval.store import EdgeStore, open_store

TEXTS = {
    "a.txt": "Qdrant stores dense and sparse vectors.",
    "b.txt": "BM25 weighs terms by frequency and rarity.",
    "c.txt": "SPLADE expands sparse terms.",
}


class Folder:
    """The ``dropbox`` partition on a folder of three text files (skip policy), every path under ``root``."""

    def __init__(self, root: Path, texts: dict[str, str] = TEXTS):
        self.root = root
        self.drop = root / "drop"
        self.drop.mkdir()
        for name, text in texts.items():
            (self.drop / name).write_text(text + "\n")
        corpora = root / "corpora.yaml"
        corpora.write_text(
            f"corpora:\n  dropbox:\n    source: {self.drop}\n    format: dir\n    collection: drop\n"
            "    on_bad_input: skip\n"
        )
        self.resources = default_resources(
            retrieval=RetrievalResource(qdrant_path=str(root / "index"), cache_dir=str(root / "cache")),
            eval_history=EvalHistoryResource(path=str(root / "evals.sqlite")),
            io_manager=ParquetIOManager(base_dir=str(root / "assets")),
            corpora=CorporaResource(path=str(corpora)),
        )
        self.instance = dg.DagsterInstance.ephemeral()

    def materialize(self, assets=ALL_ASSETS) -> dg.ExecuteInJobResult:
        return dg.materialize(
            assets, partition_key="dropbox", resources=self.resources, instance=self.instance, raise_on_error=False
        )

    def stored_docs(self) -> list[str]:
        """The document id of every point of the published version (one per chunk)."""
        store = EdgeStore(self.root / "index", "drop")
        try:
            return sorted(doc_id for doc_id, _ in store.stored_hashes().values())
        finally:
            store.close()


def _metadata(result: dg.ExecuteInJobResult, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


@pytest.fixture
def folder(tmp_path: Path) -> Folder:
    return Folder(tmp_path)


@pytest.mark.slow
def test_skipped_documents_keep_their_stored_chunks(folder: Folder) -> None:
    assert folder.materialize().success and folder.stored_docs() == ["a.txt", "b.txt", "c.txt"]
    (folder.drop / "a.txt").write_bytes(b"Qdrant stores \xff vectors.\n")  # now bad input: skipped
    result = folder.materialize()
    assert result.success and folder.stored_docs() == ["a.txt", "b.txt", "c.txt"]  # a.txt's chunk kept
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == POINT_COUNT_CHECK]
    assert check.passed
    assert check.metadata["kept_points"].value == 1 and check.metadata["chunks"].value == 2
    assert _metadata(result, "qdrant_index")["kept_documents"] == 1
    (folder.drop / "b.txt").unlink()  # a document really gone is still deleted
    assert folder.materialize().success and folder.stored_docs() == ["a.txt", "c.txt"]


@pytest.mark.slow
def test_a_run_that_deletes_documents_names_them_in_the_index_metadata(folder: Folder) -> None:
    assert folder.materialize().success
    (folder.drop / "c.txt").unlink()
    result = folder.materialize()
    assert result.success and folder.stored_docs() == ["a.txt", "b.txt"]
    meta = _metadata(result, "qdrant_index")
    assert (meta["deleted"], meta["deleted_document_count"], meta["deleted_documents"]) == (1, 1, "- c.txt")


@pytest.mark.slow
def test_a_corpus_without_qrels_has_no_gate_and_no_warning_about_it(folder: Folder, caplog) -> None:
    """The blocking gate reports on a corpus without qrels (passed, not run, and why), so Dagster does not warn
    on every run that it emitted no result; the version is published on its point count alone."""
    with caplog.at_level(logging.WARNING):
        result = folder.materialize()
    assert result.success and folder.stored_docs() == ["a.txt", "b.txt", "c.txt"]
    assert not [r for r in caplog.records if "emitted no result" in r.getMessage()], caplog.text
    [gate] = [c for c in result.get_asset_check_evaluations() if c.check_name == NDCG_CHECK]
    assert gate.passed and gate.metadata[GATE].value == GATE_NOT_RUN and "no qrels" in gate.description
    assert _metadata(result, "retrieval_evaluation")[GATE] == GATE_NOT_RUN
    assert _metadata(result, "published_index")["version"] == 1


@pytest.mark.slow
def test_unsafe_delete_fails_with_one_line_naming_the_run_flag(folder: Folder, tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"

    async def in_a_notebook_cell() -> dict:  # a running event loop: Dagster cannot shut down the loop it makes
        return run_main_job("dropbox", dagster_home=home, resources=folder.resources)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(in_a_notebook_cell())["index"]["points"] == 3
    assert not [w for w in caught if "shutdown_asyncgens" in str(w.message)]  # printed in the cell, for nothing
    for name in ("b.txt", "c.txt"):
        (folder.drop / name).unlink()
    with pytest.raises(MainJobError) as refused:
        run_main_job("dropbox", dagster_home=home, resources=folder.resources)
    message = str(refused.value)
    assert "qdrant_index: refusing to delete 2 of the 3 points" in message and "\n" not in message
    assert "hybrid-rag run --allow-delete" in message and "ops.qdrant_index.config.allow_delete" in message
    assert "DagsterExecutionStepExecutionError" not in message and folder.stored_docs() == ["a.txt", "b.txt", "c.txt"]
    monkeypatch.setattr("orchestration.main_job.default_resources", lambda: folder.resources)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    cli = CliRunner().invoke(app, ["run", "--corpus", "dropbox"])
    assert cli.exit_code == 1 and "refusing to delete 2 of the 3 points" in cli.stderr, cli.output
    assert "refusing" not in cli.stdout  # the reason is a diagnostic: stderr, as every command's
    assert "Traceback" not in cli.output and "DagsterExecutionStepExecutionError" not in cli.output
    cli = CliRunner().invoke(app, ["run", "--corpus", "dropbox", "--allow-delete"])
    assert cli.exit_code == 0, cli.output
    assert folder.stored_docs() == ["a.txt"]


@pytest.mark.slow
def test_cli_run_prints_invalid_settings_in_one_line_and_records_the_run_in_dagster_home(
    tmp_path: Path, monkeypatch
) -> None:
    home = tmp_path / "my_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HYBRID_RAG_CHUNK_TOKENS", "32")  # smaller than the default overlap
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
    monkeypatch.setenv("HYBRID_RAG_ASSETS_DIR", str(tmp_path / "assets"))
    monkeypatch.setenv("HYBRID_RAG_HISTORY_PATH", str(tmp_path / "history.sqlite"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "--corpus", "sample"])
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("run ")]
    assert line.endswith(
        "raw_documents: invalid settings: HYBRID_RAG_CHUNK_OVERLAP=32 (default) must be smaller than "
        "HYBRID_RAG_CHUNK_TOKENS=32 (environment)"
    )
    assert "Traceback" not in result.output and "DagsterExecutionStepExecutionError" not in result.output
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()  # $DAGSTER_HOME, as `dagster dev` reads it
    assert run.tags["dagster/partition"] == "sample" and not (tmp_path / "data" / "dagster_home").exists()


def test_cli_run_refuses_an_unknown_corpus_in_one_line() -> None:
    result = CliRunner().invoke(app, ["run", "--corpus", "smaple"])
    assert result.exit_code == 2, result.output
    assert "unknown corpus 'smaple'" in result.output and "sample" in result.output.split("smaple")[1]
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2  # soft-wrapped


@pytest.mark.slow
def test_cli_run_with_a_malformed_corpora_file_fails_in_one_line(tmp_path: Path) -> None:
    """The corpora file is read when the asset graph is imported: a malformed one is still one red line."""
    import os
    import subprocess
    import sys

    bad = tmp_path / "corpora.yaml"
    bad.write_text("corpora:\n  a: {source: x, format: beir\n")
    env = {**os.environ, "HYBRID_RAG_CORPORA_FILE": str(bad), "DAGSTER_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "orchestration.cli", "run", "--corpus", "a"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "invalid YAML" in done.stderr and str(bad) in done.stderr.replace("\n", "")
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.slow
def test_cli_run_without_corpus_builds_the_corpora_files_default(tmp_path: Path) -> None:
    """`hybrid-rag run` with no --corpus runs the corpora file's `default` corpus (it ran 'sample' whatever the file
    said); a source that is missing is then that corpus' one-line failure."""
    import os
    import subprocess
    import sys

    corpora = tmp_path / "corpora.yaml"
    corpora.write_text(
        f"default: notes\ncorpora:\n  notes:\n    source: {tmp_path / 'missing.jsonl'}\n    format: jsonl\n"
    )
    env = {**os.environ, "HYBRID_RAG_CORPORA_FILE": str(corpora), "DAGSTER_HOME": str(tmp_path / "home")}
    env |= {"HYBRID_RAG_QDRANT_PATH": str(tmp_path / "index"), "HYBRID_RAG_ASSETS_DIR": str(tmp_path / "assets")}
    cmd = [sys.executable, "-m", "orchestration.cli", "run"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0 and "unknown corpus" not in out, out
    assert "missing.jsonl" in out and "Traceback" not in out


@pytest.mark.slow
def test_query_encoder_skips_a_corpus_too_small_to_adapt_on(tmp_path: Path) -> None:
    texts = {f"{w}.txt": f"Notes about {w} retrieval. A second sentence on {w}." for w in ("alpha", "beta", "gamma")}
    folder = Folder(tmp_path, texts)  # no sentence long enough for a pseudo-query
    result = folder.materialize([*ALL_ASSETS, query_encoder])  # "Materialize all"
    assert result.success
    meta = _metadata(result, "query_encoder")
    assert meta["used"] is False and "too few documents" in meta["reason"]


def test_stale_rows_counts_the_chunks_that_differ() -> None:
    def table(rows: list[tuple[str, str]]) -> pa.Table:
        return pa.table({"chunk_id": [r[0] for r in rows], "content_hash": [r[1] for r in rows]})

    old = [(f"c{i}", f"h{i}") for i in range(20)]
    assert stale_rows(table(old), table(old)) == 0
    assert stale_rows(table([old[0], ("new", "h"), *old[1:]]), table(old)) == 1  # one chunk added
    assert stale_rows(table(old[1:]), table(old)) == 1  # one removed
    assert stale_rows(table([("c0", "changed"), *old[1:]]), table(old)) == 1  # one changed
    assert stale_rows(table([old[1], old[0], *old[2:]]), table(old)) == 2  # same rows, two out of place


def test_same_rows_agrees_with_stale_rows_a_batch_at_a_time(tmp_path: Path) -> None:
    """The lazy check the query_encoder asset runs: the chunks' (id, hash) rows in the same order, read a batch at
    a time: the Python heap's peak does not grow with the tables (reading them whole held every id and hash)."""

    def write(name: str, rows: list[tuple[str, str]]) -> Path:
        path = tmp_path / f"{name.replace(' ', '_')}.parquet"
        table = pa.table({"chunk_id": [r[0] for r in rows], "content_hash": [r[1] for r in rows]})
        pq.write_table(table, path, row_group_size=7000)
        return path

    old = [(f"c{i}", f"h{i}") for i in range(100_000)]
    chunks = write("chunks", old)
    variants = {
        "same": (old, True),
        "one added": ([old[0], ("new", "h"), *old[1:]], False),
        "one removed": (old[1:], False),
        "one changed": ([*old[:-1], ("c99999", "changed")], False),
        "two out of place": ([old[1], old[0], *old[2:]], False),
    }
    for name, (rows, same) in variants.items():
        vectors = write(name, rows)
        assert (stale_rows(pq.read_table(chunks), pq.read_table(vectors)) == 0) is same, name
        tracemalloc.start()
        try:
            assert same_rows(pq.ParquetFile(chunks), pq.ParquetFile(vectors), batch_size=1000) is same, name
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1_000_000, (name, peak)  # the whole tables' ids and hashes take over 10 MB


@pytest.mark.slow
def test_evaluation_alone_after_qdrant_index_names_the_staged_version(folder: Folder) -> None:
    upto_index = [a for a in ALL_ASSETS if a.key.to_user_string() not in ("retrieval_evaluation", "published_index")]
    assert folder.materialize(upto_index).success  # stages version 1, publishes nothing
    evaluation = next(a for a in ALL_ASSETS if a.key.to_user_string() == "retrieval_evaluation")
    result = folder.materialize([evaluation])
    failures = [e.step_failure_data.user_failure_data.description for e in result.all_events if e.is_step_failure]
    assert not any("no version yet" in f for f in failures)  # version 1 exists
    assert result.success or "version 1 of 'drop' was staged by another run" in failures[0]


@pytest.mark.slow
def test_evaluation_fails_when_the_collection_holds_none_of_the_judged_documents(folder: Folder) -> None:
    """Qrels of another corpus (the sample's) would score every variant 0: the run fails, nothing is recorded."""
    corpora = folder.root / "corpora.yaml"
    corpora.write_text(corpora.read_text() + f"    qrels: {sample_collection().root}\n    split: test\n")
    result = folder.materialize()
    failures = [e.step_failure_data.user_failure_data for e in result.all_events if e.is_step_failure]
    assert not result.success and len(failures) == 1
    assert "none of the" in failures[0].description and "collection 'drop'" in failures[0].description
    assert not (folder.root / "evals.sqlite").exists() or EvalHistory(folder.root / "evals.sqlite").records().empty


@pytest.mark.slow
def test_main_job_runs_on_a_file_url_server(folder: Folder, tmp_path: Path) -> None:
    """``hybrid-rag run`` with ``file://`` QDRANT_URL (qdrant-client's local mode, one client per folder at a
    time): the run's write lock must not keep a client open while the steps open theirs."""
    server = tmp_path / "server"
    resources = {
        **folder.resources,
        "retrieval": RetrievalResource(qdrant_url=f"file://{server}", cache_dir=str(tmp_path / "cache")),
    }
    summary = run_main_job("dropbox", dagster_home=tmp_path / "home", resources=resources)
    assert summary["index"]["points"] == 3 and summary["published"] == summary["version"], summary
    store = open_store(RetrievalSettings(qdrant_url=f"file://{server}"), "drop")
    try:
        assert sorted(doc_id for doc_id, _ in store.stored_hashes().values()) == sorted(TEXTS)
    finally:
        store.close()


@pytest.mark.slow
def test_qdrant_index_refuses_vectors_out_of_date_with_the_chunks(folder: Folder) -> None:
    """``qdrant_index`` reads its tables lazily; vectors made for other chunks still fail the step, naming the
    table and how many rows differ, before anything is written."""
    assert folder.materialize().success
    (folder.drop / "d.txt").write_text("A fourth document.\n")
    assert folder.materialize([a for a in ALL_ASSETS if a.key.to_user_string() in ("raw_documents", "chunks")])
    result = dg.materialize(
        ALL_ASSETS,
        selection=["qdrant_index"],
        partition_key="dropbox",
        resources=folder.resources,
        instance=folder.instance,
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "dense_vectors is out of date with chunks (1 row differs)" in message
    assert folder.stored_docs() == ["a.txt", "b.txt", "c.txt"]


def test_a_step_stopped_by_a_signal_is_said_to_be_interrupted_not_named_by_its_exception_class() -> None:
    """SIGTERM/SIGINT during `hybrid-rag run`: Dagster's handler stops the step with its interrupt error, which
    the one-line failure says in words (it printed the bare class name)."""
    from dagster._utils.error import SerializableErrorInfo

    from orchestration.main_job import _cause

    stopped = SerializableErrorInfo("", [], "DagsterExecutionInterruptedError")
    assert _cause(stopped).startswith("interrupted by a signal (SIGINT/SIGTERM) before it finished; run the same")
    failed = SerializableErrorInfo(
        "wrapper",
        [],
        "DagsterExecutionStepExecutionError",
        SerializableErrorInfo("refusing to delete", [], "UnsafeDeleteError"),
    )
    assert _cause(failed) == "refusing to delete"


def test_the_resources_settings_name_a_bad_text_setting_as_its_variable(monkeypatch) -> None:
    """RetrievalResource.from_env wires a text setting as a dg.EnvVar, which reached RetrievalSettings as a keyword:
    its error named the field alone (``fusion: Input should be ...``), not the variable nor where it was set."""
    monkeypatch.setenv("HYBRID_RAG_FUSION", "foo")
    resource = RetrievalResource.from_env().process_config_and_initialize()  # the EnvVars resolved, as in a run
    with pytest.raises(InvalidArgumentError, match=r"^invalid settings: HYBRID_RAG_FUSION='foo' \(environment\): "):
        resource.settings()
    assert resource.settings(fusion="dbsf").fusion == "dbsf"


@pytest.mark.slow
def test_a_dagster_run_the_cli_starts_names_the_env_file_line_of_a_bad_value(tmp_path: Path, monkeypatch) -> None:
    """`hybrid-rag ui` hands dagster dev (its daemon, its runs) the environment holding what it copied from .env and
    each --env-file; a run named a bad value from them ``(environment)``: the CLI's record of their lines goes along
    (here to a real `dagster asset materialize`, started from the environment the CLI exports)."""
    from retrieval.settings import ENV_ORIGINS

    (tmp_path / ".env").write_text("# tuned\nHYBRID_RAG_K=abc\n")
    (tmp_path / "tuned.env").write_text("HYBRID_RAG_FUSION=foo\n")
    (tmp_path / "home").mkdir()
    root = Path(__file__).parents[1]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HYBRID_RAG_CORPORA_FILE", str(root / "corpora.yaml"))
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
    monkeypatch.setenv("HYBRID_RAG_ASSETS_DIR", str(tmp_path / "assets"))
    monkeypatch.chdir(tmp_path)
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "orchestration.definitions"]
    with typer.Context(typer.main.get_command(app)) as ctx:  # as `hybrid-rag --env-file tuned.env ui` exports them
        _export_env_files(ctx, [Path(".env"), Path("tuned.env")])
        done = subprocess.run(
            [*command, "--select", "raw_documents", "--partition", "sample"],
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert ENV_ORIGINS not in os.environ  # restored with the command's environment
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "invalid settings: HYBRID_RAG_FUSION='foo' (tuned.env:1): " in output, output
    assert "HYBRID_RAG_K='abc' (.env:2): must be an integer" in output
