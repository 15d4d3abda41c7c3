"""Bad input to the CLI and to the settings: one red line naming the file (and line) or the setting, exit code 2,
no traceback, no work done and no file written. None of these needs a model: the input is checked first."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import retrieval.settings
from evals.collections import sample_collection
from evals.history import EvalHistory
from orchestration.cli import app
from retrieval import RetrievalSettings, RetrievalStack
from retrieval.errors import InvalidArgumentError
from retrieval.settings import COLLECTION_NAME_MAX_BYTES, UNSHOWN_VALUES, check_collection_name
from retrieval.store import CollectionSchema, EdgeStore, StoreError, collection_names, open_store
from tests.conftest import TINY_DOCS
from tests.test_data_safety import write_jsonl


@pytest.fixture
def fails(tmp_path, monkeypatch):
    """Runs the CLI in an empty folder; asserts exit code 2 with one error line and no traceback; returns it."""
    for key, sub in (("QDRANT_PATH", "data/index"), ("CACHE_DIR", "cache"), ("MODELS_DIR", "models")):
        monkeypatch.setenv(f"HYBRID_RAG_{key}", str(tmp_path / sub))
    monkeypatch.setenv("HYBRID_RAG_HISTORY_PATH", str(tmp_path / "history.sqlite"))
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and not isinstance(result.exception, AttributeError)
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith("error: "), result.output
        assert not (tmp_path / "data").exists()  # nothing indexed, no model loaded for nothing
        return lines[-1]

    return run


@pytest.fixture
def beir(tmp_path) -> Path:
    """A copy of the shipped sample collection in BEIR layout, to break."""
    return Path(shutil.copytree(sample_collection().root, tmp_path / "sb"))


# -- item 4: eval, compare, adapt ------------------------------------------------------------------------------
def test_eval_missing_folder_or_split(fails, beir):
    assert (
        fails("eval", "nosuchdir")
        == "error: nosuchdir: not a directory (expected a BEIR collection or the name 'sample')"
    )
    (beir / "queries.jsonl").unlink()
    assert fails("eval", str(beir)) == f"error: {beir}: not a BEIR collection, missing queries.jsonl"
    assert "error: sample: no split 'dev'" in fails("eval", "sample", "--split", "dev")


def test_eval_malformed_qrels_or_queries_name_file_and_line(fails, beir):
    qrels = beir / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    qrels.write_text("\n".join([*lines, "q1\tbroken"]) + "\n")
    message = fails("eval", str(beir), "-c", "sb", "--variant", "dense")
    assert message.startswith(f"error: {qrels}:{len(lines) + 1}: expected 3 tab-separated fields")
    qrels.write_text("\n".join(lines) + "\n")
    queries = beir / "queries.jsonl"
    n = len(queries.read_text().splitlines())
    with queries.open("a") as handle:
        handle.write('{"_id": "x", \n')
    assert fails("eval", str(beir), "--variant", "dense").startswith(f"error: {queries}:{n + 1}: malformed JSON")


def test_eval_empty_query_text_names_file_line_and_id_before_any_search(fails, beir):
    queries = beir / "queries.jsonl"
    lines = queries.read_text().splitlines()
    lines[3] = json.dumps({**json.loads(lines[3]), "text": "   "})
    queries.write_text("\n".join(lines) + "\n")
    qid = json.loads(lines[3])["_id"]
    assert (
        fails("eval", str(beir), "-c", "sb", "--variant", "dense") == f"error: {queries}:4: query {qid!r}: empty text"
    )
    assert not Path("data/index").exists()  # refused before the collection was indexed or searched


def test_compare_bad_or_missing_run_file(fails, tmp_path):
    good = tmp_path / "good.trec"
    good.write_text("q1 Q0 d1 1 1.0 tag\n")
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1 1.0 tag\ngarbage line\n")
    assert fails("compare", "bad.trec", "good.trec", "sample").startswith(
        "error: bad.trec:2: expected 6 fields 'qid Q0 docid rank score tag', got 2"
    )
    assert fails("compare", "nosuch.trec", "good.trec", "sample") == "error: nosuch.trec: no such run file"


# -- item 5: settings ranges and the device -------------------------------------------------------------------
URL_ADVICE = (
    "give http(s)://host[:port] for a server, file://<dir> or :memory: for qdrant-client's local mode, or leave it "
    "unset for the embedded engine"
)
BAD_SETTINGS = [
    ({"rrf_k": "-1"}, "rrf_k: Input should be greater than or equal to 1"),
    ({"rrf_k": "0"}, "rrf_k: Input should be greater than or equal to 1"),
    (
        {"dense_device": "gpu9"},
        "dense_device: unknown device 'gpu9'; use cpu, cuda (every GPU), cuda:N (one GPU) or mps",
    ),
    ({"dense_batch_size": "0"}, "dense_batch_size: Input should be greater than or equal to 1"),
    ({"upsert_batch_size": "0"}, "upsert_batch_size: Input should be greater than or equal to 1"),
    ({"chunk_tokens": "5", "chunk_overlap": "0"}, "chunk_tokens: Input should be greater than or equal to 16"),
    ({"chunk_overlap": "-1"}, "chunk_overlap: Input should be greater than or equal to 0"),
    ({"prefetch_k": "-1"}, "prefetch_k: Input should be greater than or equal to 1"),
    ({"k": "0"}, "k: Input should be greater than or equal to 1"),
    ({"bm25_b": "1.5"}, "bm25_b: Input should be less than or equal to 1"),
    ({"dense_weight": "0"}, "dense_weight: Input should be greater than 0"),
    ({"sparse_weight": "nan"}, "sparse_weight: Input should be a finite number"),
    ({"rerank_depth": "0"}, "rerank_depth: Input should be greater than or equal to 1"),
    ({"rerank_weight": "1.5"}, "rerank_weight: Input should be less than or equal to 1"),
    ({"qdrant_timeout_s": "0"}, "qdrant_timeout_s: Input should be greater than 0"),
    # what qdrant-client's parser refuses, and a control character urlsplit would drop: not the client's traceback
    (
        {"qdrant_url": "http://u:pw@ho st:6333"},
        f"qdrant_url: 'http://u:***@ho st:6333' is not a Qdrant URL (qdrant-client cannot parse it): {URL_ADVICE}",
    ),
    (
        {"qdrant_url": "http://u:p\nw@qdrant:6333"},
        f"qdrant_url: 'http://u:***@qdrant:6333' is not a Qdrant URL (a control character inside it): {URL_ADVICE}",
    ),
]


@pytest.mark.parametrize(("values", "message"), BAD_SETTINGS)
def test_invalid_settings_are_one_line_from_the_cli(fails, monkeypatch, values, message):
    """Read from the environment, the setting is named as its variable, with its value (a secret's not repeated)."""
    for name, value in values.items():
        monkeypatch.setenv(f"HYBRID_RAG_{name.upper()}", value)
    field, reason = message.split(": ", 1)
    variable = f"HYBRID_RAG_{field.upper()}" + ("" if field in UNSHOWN_VALUES else f"={values[field]!r}")
    assert (
        fails("search", "red planet", "-c", "sample") == f"error: invalid settings: {variable} (environment): {reason}"
    )


@pytest.mark.parametrize(("values", "message"), BAD_SETTINGS)
def test_invalid_settings_fail_at_construction(values, message):
    """One line naming the field, as the CLI prints it: a HybridRagError, not pydantic's multi-line ValidationError."""
    with pytest.raises(InvalidArgumentError) as err:
        RetrievalSettings(**values)
    assert str(err.value) == f"invalid settings: {message}" and message.startswith(f"{next(iter(values))}: ")


def test_a_bad_setting_names_its_variable_value_and_where_it_was_set(fails, tmp_path, monkeypatch, caplog):
    """It said ``k: Input should be a valid integer, ...``, naming neither the variable nor where it was set; the
    CLI copies .env into the environment, and the line still names .env (and its line), as its warnings do."""
    monkeypatch.setattr(retrieval.settings, "_warned_env", set())
    monkeypatch.setenv("HYBRID_RAG_K", "abc")
    assert fails("search", "x") == "error: invalid settings: HYBRID_RAG_K='abc' (environment): must be an integer"
    monkeypatch.delenv("HYBRID_RAG_K")
    (tmp_path / ".env").write_text("# tuned\nHYBRID_RAG_RERANK_DEPT=5\nHYBRID_RAG_K=abc\nnot a setting\n")
    with caplog.at_level(logging.WARNING):
        assert fails("search", "x") == "error: invalid settings: HYBRID_RAG_K='abc' (.env:3): must be an integer"
    assert [r.getMessage() for r in caplog.records] == [
        ".env:4: not a KEY=value line: ignored",
        "unknown setting HYBRID_RAG_RERANK_DEPT (.env:2) is ignored (did you mean HYBRID_RAG_RERANK_DEPTH?)",
    ]


@pytest.mark.parametrize(
    ("device", "expected"), [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("mps", "mps"), ("", None)]
)
def test_devices_the_project_runs_on_are_accepted(device, expected):
    assert RetrievalSettings(dense_device=device).dense_device == expected


# -- item 7: --env-file ---------------------------------------------------------------------------------------
def test_env_file_must_exist_and_is_read(fails, tmp_path):
    assert (
        fails("--env-file", "nope.env", "search", "red planet", "-c", "sample")
        == "error: --env-file nope.env: no such file"
    )
    (tmp_path / "tuned.env").write_text("HYBRID_RAG_RRF_K=0\n")
    message = fails("--env-file", "tuned.env", "search", "red planet", "-c", "sample")
    assert (
        message
        == "error: invalid settings: HYBRID_RAG_RRF_K='0' (tuned.env:1): Input should be greater than or equal to 1"
    )
    (tmp_path / "typo.env").write_text("# tuned\nHYBRID_RAG_RERNK=false\n")
    assert (
        fails("--env-file", "typo.env", "search", "x")
        == "error: --env-file typo.env:2: unknown setting HYBRID_RAG_RERNK (did you mean HYBRID_RAG_RERANK?)"
    )
    (tmp_path / "junk.env").write_text("HYBRID_RAG_RERANK=false\nthis is garbage\n")
    assert fails("--env-file", "junk.env", "search", "x") == "error: --env-file junk.env:2: not a KEY=value line"
    (tmp_path / "latin.env").write_bytes(b"\xff\xfe=1\n")
    assert fails("--env-file", "latin.env", "search", "x") == "error: --env-file latin.env: not UTF-8 (byte 0)"
    (tmp_path / "folder.env").mkdir()
    assert fails("--env-file", "folder.env", "search", "x") == "error: --env-file folder.env: not a file"


def test_relative_paths_in_an_env_file_are_relative_to_its_folder(fails, tmp_path, monkeypatch):
    """As in the corpora file: the same index whatever directory the command runs from, named absolutely."""
    monkeypatch.delenv("HYBRID_RAG_QDRANT_PATH")
    for folder in ("conf", "a"):
        (tmp_path / folder).mkdir()
    (tmp_path / "conf" / "app.env").write_text("HYBRID_RAG_QDRANT_PATH=idx\n")
    monkeypatch.chdir(tmp_path / "a")
    message = fails("--env-file", "../conf/app.env", "search", "moss", "-c", "e")
    idx = tmp_path / "conf" / "idx"
    assert message == (
        f"error: collection 'e' does not exist at {idx / 'e'}; index documents first (HYBRID_RAG_QDRANT_PATH=idx in "
        f"../conf/app.env is relative to that file's folder: {idx}; earlier releases read it relative to the "
        "working directory)"
    )
    (tmp_path / "conf" / "local.env").write_text("HYBRID_RAG_QDRANT_URL=file://local_idx\n")  # local mode's folder
    message = fails("--env-file", "../conf/local.env", "search", "moss", "-c", "e")
    local = tmp_path / "conf" / "local_idx"
    assert message.startswith(f"error: collection 'e' does not exist at file://{local}; index documents first (")
    assert "HYBRID_RAG_QDRANT_URL=file://local_idx in ../conf/local.env is relative to that file's folder" in message
    assert not (tmp_path / "a" / "local_idx").exists()


def test_an_env_files_relative_index_found_nowhere_names_the_folder_earlier_releases_used(fails, tmp_path, monkeypatch):
    """Upgrading: releases before read an env file's relative paths against the working directory. 'index
    documents first' alone would build a second index (and cache) beside the env file: the error names the file,
    the value as written, and the folder relative to the working directory that holds the collection."""
    monkeypatch.delenv("HYBRID_RAG_QDRANT_PATH")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "prod.env").write_text("HYBRID_RAG_COLLECTION=notes\nHYBRID_RAG_QDRANT_PATH=var/idx\n")
    earlier = EdgeStore(tmp_path / "var" / "idx", "notes")  # where an earlier release indexed, from tmp_path
    earlier.ensure(CollectionSchema("sentence-transformers/all-MiniLM-L6-v2", 384, "bm25", True))
    earlier.close()
    message = fails("--env-file", "conf/prod.env", "search", "moss")
    assert message.startswith(f"error: collection 'notes' does not exist at {tmp_path / 'conf' / 'var' / 'idx'}")
    assert message.endswith(
        f"HYBRID_RAG_QDRANT_PATH=var/idx in conf/prod.env is relative to that file's folder: "
        f"{tmp_path / 'conf' / 'var' / 'idx'}; earlier releases read it relative to the working directory. "
        f"{tmp_path / 'var' / 'idx'} (relative to the working directory) holds collection 'notes': likely what an "
        "earlier release used; to keep using it, set HYBRID_RAG_QDRANT_PATH=../var/idx in conf/prod.env (or an "
        "absolute path) instead of indexing again)"
    )
    assert "holds" not in fails("--env-file", "conf/prod.env", "search", "moss", "-c", "other")
    (tmp_path / "prod.env").write_text("HYBRID_RAG_QDRANT_PATH=var/idx2\n")  # beside the working directory
    assert "(" not in fails("--env-file", "prod.env", "search", "moss")  # nothing changed there: no hint


# -- item 8: collection names ---------------------------------------------------------------------------------
BAD_NAMES = [
    "",
    ".",
    "..",
    "../escape",
    "sub/dir",
    "a\\b",
    "x:y",
    "tab\there",
    "docs__v1",
    "docs.current.json",
    "docs.write.lock",
    "é" * (COLLECTION_NAME_MAX_BYTES // 2 + 1),
]
GOOD_NAMES = [
    "sample",
    "my docs",
    "données-2026",
    "a..b",
    ".hidden",
    "v__vX",
    "docs__v",
    "é" * (COLLECTION_NAME_MAX_BYTES // 2),
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_collection_names_are_refused_everywhere(fails, tmp_path, name):
    message = fails("index", str(write_jsonl(tmp_path / "kb.jsonl", TINY_DOCS)), "-c", name)
    assert message.startswith(f"error: invalid settings: collection: invalid collection name {name!r}: ")
    assert [p.name for p in tmp_path.iterdir()] == ["kb.jsonl"]  # nothing written, inside the index folder or out
    with pytest.raises(InvalidArgumentError, match="invalid collection name"):
        RetrievalSettings(collection=name)
    with pytest.raises(InvalidArgumentError, match="invalid collection name"):
        open_store(RetrievalSettings(qdrant_path=tmp_path / "index"), name)
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_names_a_qdrant_server_allows_that_are_safe_on_disk_are_accepted(name):
    assert len(name.encode()) <= COLLECTION_NAME_MAX_BYTES
    assert check_collection_name(name) == RetrievalSettings(collection=name).collection == name


def test_collections_lists_no_phantom_names(tmp_path, monkeypatch):
    root = tmp_path / "index"
    (root / "__v1").mkdir(parents=True)
    (root / "__v1" / "schema.json").write_text("{}")
    (root / ".current.json").write_text(json.dumps({"version": 1, "collection": "__v1"}))
    (root / "ok.current.json").write_text(json.dumps({"version": 1, "collection": "ok__v1"}))
    assert collection_names(RetrievalSettings(qdrant_path=root)) == ["ok"]


def test_a_missing_collection_names_the_existing_ones_closest_first(
    tmp_path, monkeypatch, dense_encoder, sparse_encoder
):
    """A mistyped name (search, delete, snapshot, the Python API) is told what exists, the closest name first, ten
    at most, not to "index documents first" (which would make the typo a collection of its own)."""
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with RetrievalStack(RetrievalSettings(), dense=dense_encoder, sparse=sparse_encoder) as stack:
        for name in ["zeta", "mini", *(f"extra{i:02d}" for i in range(9))]:
            stack.indexer(name).index(TINY_DOCS[:1], progress=False)
        with pytest.raises(StoreError) as err:
            stack.retriever("minni").search("anything")
    listed = ", ".join(["mini", *(f"extra{i:02d}" for i in range(9))])
    expected = (
        f"collection 'minni' does not exist at {tmp_path / 'index' / 'minni'}; did you mean 'mini'? existing: "
        f"{listed} and 1 more (`hybrid-rag collections` lists them)"
    )
    assert str(err.value) == expected
    for args in (["search", "red planet", "-c", "minni"], ["delete", "x", "-c", "minni"], ["snapshot", "-c", "minni"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1].endswith(expected), result.output
    store = open_store(RetrievalSettings(), "qqq")
    with pytest.raises(StoreError, match=r"qqq; existing: extra00, extra01, .*, extra08, mini and 1 more \("):
        store.check_schema()  # nothing close: in name order
    store.close()


# -- item 16: eval-report --history -------------------------------------------------------------------------
def test_eval_report_creates_no_history(fails, tmp_path):
    message = fails("eval-report", "--history", "typo_dir/evals.sqlite", "--out", "reports")
    assert message == f"error: {tmp_path / 'typo_dir/evals.sqlite'}: no evaluation history (no such file)"
    assert not (tmp_path / "typo_dir").exists() and not (tmp_path / "reports").exists()
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    assert fails("eval-report", "--history", "notes.txt").startswith(f"error: {tmp_path}/notes.txt: not an evaluation")
    assert not (tmp_path / "history.sqlite").exists()  # the default one is not created either
    assert "no evaluation history" in fails("eval-report")
    EvalHistory(tmp_path / "history.sqlite")  # an empty history still says so, as before (exit 1)
    result = CliRunner().invoke(app, ["eval-report"])
    assert result.exit_code == 1 and "no evaluations recorded" in result.output


def test_eval_and_run_check_their_default_folders_before_any_work(tmp_path, monkeypatch):
    """A working directory where ``data/`` cannot be made (read-only; here a file named ``data``): ``eval`` fails
    before indexing or evaluating, naming the history's absolute path and the settings that move it, and ``run``
    names the Dagster instance folder and ``DAGSTER_HOME``; one line, exit code 2, each."""
    for key, sub in (("QDRANT_PATH", "idx"), ("CACHE_DIR", "cache"), ("MODELS_DIR", "models")):
        monkeypatch.setenv(f"HYBRID_RAG_{key}", str(tmp_path / sub))
    for key in ("HYBRID_RAG_HISTORY_PATH", "DAGSTER_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").write_text("a file where the default folders would go")
    expected = {
        ("eval", "sample", "-c", "sample"): (
            f"error: evaluation history {tmp_path}/data/history/evals.sqlite: ",
            ("--history", "HYBRID_RAG_HISTORY_PATH"),
        ),
        ("run",): (f"error: Dagster instance folder {tmp_path}/data/dagster_home: ", ("DAGSTER_HOME",)),
    }
    for args, (start, settings) in expected.items():
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 2, result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith(start) and all(s in line for s in settings), line
    assert not (tmp_path / "idx").exists()  # nothing indexed or evaluated for results that could not be kept


def test_dagster_home_is_read_from_env_files_relative_to_them(tmp_path, monkeypatch):
    """``DAGSTER_HOME`` in ``.env`` or an ``--env-file`` is used as the path settings there are (``~`` the home
    directory, a relative path relative to the file's folder); the environment wins. Seen in where ``run`` makes the
    Dagster instance: each folder below is blocked by a file, so the run stops there, naming it."""
    for key, sub in (("QDRANT_PATH", "idx"), ("CACHE_DIR", "cache"), ("MODELS_DIR", "models")):
        monkeypatch.setenv(f"HYBRID_RAG_{key}", str(tmp_path / sub))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for folder in ("conf", "a"):
        (tmp_path / folder).mkdir()
    for blocker in ("home", "conf/blocked", "env_blocked", "a/data"):  # a/data: the default, data/dagster_home
        (tmp_path / blocker).write_text("a file where the Dagster instance would go")
    (tmp_path / "a" / ".env").write_text("DAGSTER_HOME=~/dagster\n")
    (tmp_path / "conf" / "run.env").write_text("DAGSTER_HOME=blocked/dagster\n")
    monkeypatch.chdir(tmp_path / "a")

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "run"])
        assert result.exit_code == 2, result.output
        [line] = result.output.strip().splitlines()
        return line

    assert run().startswith(f"error: Dagster instance folder {tmp_path}/home/dagster: cannot write it")
    assert "DAGSTER_HOME" not in os.environ  # the command's environment is restored
    assert run("--env-file", "../conf/run.env").startswith(
        f"error: Dagster instance folder {tmp_path}/conf/blocked/dagster: cannot write it"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "env_blocked" / "dagster"))
    assert run("--env-file", "../conf/run.env").startswith(
        f"error: Dagster instance folder {tmp_path}/env_blocked/dagster: cannot write it"
    )


def test_restore_of_an_embedded_snapshot_on_a_server_names_what_it_is(fails, tmp_path, monkeypatch):
    """An embedded snapshot (a folder) given with HYBRID_RAG_QDRANT_URL set: it was said not to record its collection
    ('a snapshot of an earlier release, or a renamed file') while its snapshot.json names it, and with -c the server
    was asked to recover a folder."""
    snap = tmp_path / "snap"
    (snap / "shard").mkdir(parents=True)
    (snap / "schema.json").write_text("{}")
    (snap / "snapshot.json").write_text('{"collection": "notes", "version": 1, "points": 3}')
    monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", ":memory:")
    expected = (
        f"error: {snap} is a snapshot of the embedded engine (a folder); HYBRID_RAG_QDRANT_URL (:memory:) restores a "
        "Qdrant .snapshot file (a URL, or a path on the server). Restore this one without HYBRID_RAG_QDRANT_URL, "
        "into the embedded engine at HYBRID_RAG_QDRANT_PATH"
    )
    assert " ".join(fails("restore", str(snap)).split()) == expected
    assert " ".join(fails("restore", str(snap), "-c", "notes").split()) == expected


# -- mistyped options and commands: one line, not click's usage panel ---------------------------------------------
@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["search", "--kk", "5", "x"], "no such option --kk (did you mean --k?); see root search --help"),
        (["index", "--polcy", "skip", "x"], "no such option --polcy (did you mean --policy?); see root index --help"),
        (["serach", "x"], "no such command 'serach' (did you mean search?); see root --help"),
        (["--verbse", "collections"], "no such option --verbse (did you mean --verbose?); see root --help"),
        (["cache", "prun"], "no such command 'prun' (did you mean prune?); see root cache --help"),
        (["frobnicate"], "no such command 'frobnicate'; see root --help"),
        (["search"], "missing argument 'text'; see root search --help"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_closest_valid_name(fails, args, line):
    """It was typer's boxed panel (usage, a 'Try' line and the message in a frame: six lines)."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and result.output == f"error: {line}\n"


def test_help_and_no_arguments_still_print_the_help():
    for args in (["--help"], ["search", "--help"], []):
        result = CliRunner().invoke(app, args)
        assert "Usage: root" in result.output and "error:" not in result.output, result.output
