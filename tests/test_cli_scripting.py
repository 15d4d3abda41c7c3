"""The command line under scripts, cron and CI: every command checks the ``HYBRID_RAG_*`` names, stdout holds the
result and stderr the warnings (a partial result exits as README's table says), no prompt without an answer to
read, absolute paths in what a job run from elsewhere logs, and no silent success with stdout closed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import retrieval.settings
from orchestration.cli import app
from tests.conftest import TINY_DOCS

REPO = Path(__file__).resolve().parents[1]


def hybrid_rag(*args: str, cwd: Path, close: int | None = None) -> subprocess.CompletedProcess:
    """``hybrid-rag ARGS`` in a process of its own, run from ``cwd`` with file descriptor ``close`` closed (``<&-``:
    0, ``>&-``: 1), as a cron job or daemon starts it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL if close != 0 else None,
        stdout=subprocess.PIPE if close != 1 else None,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=None if close is None else lambda: os.close(close),
        timeout=300,
    )


@pytest.fixture
def scripted(tmp_path, monkeypatch) -> Path:
    """An empty working directory with no HYBRID_RAG_* variables and nothing warned about yet."""
    for name in [n for n in os.environ if n.upper().startswith("HYBRID_RAG_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(retrieval.settings, "_warned_env", set())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("variable", "args", "meant"),
    [
        ("HYBRID_RAG_HISTORY_PTH", ["eval-report", "--out", "rep"], "HYBRID_RAG_HISTORY_PATH"),
        ("HYBRID_RAG_COLECTION", ["compare", "a.trec", "b.trec", "sample"], "HYBRID_RAG_COLLECTION"),
        ("HYBRID_RAG_CACHE_DRI", ["cache", "--json"], "HYBRID_RAG_CACHE_DIR"),
    ],
)
def test_every_command_warns_of_a_misspelt_setting(scripted, monkeypatch, caplog, variable, args, meant):
    """Commands that build no settings (eval-report reads only the history path, compare only its files) warn too:
    the check runs for every command, before it."""
    monkeypatch.setenv(variable, str(scripted / "h2.sqlite"))
    with caplog.at_level(logging.WARNING, logger="retrieval.settings"):
        CliRunner().invoke(app, args)
    assert [r.getMessage() for r in caplog.records] == [
        f"unknown setting {variable} (environment) is ignored (did you mean {meant}?)"
    ]


def test_index_policy_skip_exits_0_and_says_what_it_skipped_on_stderr(scripted):
    lines = [json.dumps({"_id": d.id, "text": d.text}) for d in TINY_DOCS]
    (scripted / "bad.jsonl").write_text("\n".join([*lines, '{"_id": "x1", "text": ""}', "not json"]) + "\n")
    bad = len(TINY_DOCS) + 1
    result = CliRunner().invoke(app, ["index", "bad.jsonl", "-c", "badc", "--policy", "skip"])
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.stdout and "indexed into 'badc'" in result.stdout
    said = " ".join(result.stderr.split())
    assert f"skipped bad.jsonl:{bad}: " in said and f"skipped bad.jsonl:{bad + 1}: " in said
    assert "warning: 2 records of bad.jsonl skipped (--policy skip); the others are indexed" in said
    as_json = CliRunner().invoke(app, ["index", "bad.jsonl", "-c", "badc", "--policy", "skip", "--json"])
    assert as_json.exit_code == 0 and len(json.loads(as_json.stdout)["skipped"]) == 2
    assert "2 records of bad.jsonl skipped" in " ".join(as_json.stderr.split())


def test_collections_of_a_missing_index_folder_names_it_absolutely_and_exits_1(scripted):
    """A cron job run from $HOME: the default, relative, index folder is not there."""
    for args in (["collections"], ["collections", "--json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        said = " ".join(result.stderr.split())
        assert f"warning: no index folder at {scripted / 'data' / 'index'} " in said
    assert json.loads(result.stdout) == []  # still a list to a script that reads it
    assert not (scripted / "data").exists()


def test_snapshot_prints_the_absolute_folder_it_wrote(scripted):
    (scripted / "kb.jsonl").write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in TINY_DOCS))
    assert CliRunner().invoke(app, ["index", "kb.jsonl", "-c", "kb"]).exit_code == 0
    result = CliRunner().invoke(app, ["snapshot", "-c", "kb"])
    assert result.exit_code == 0, result.output
    [made] = (scripted / "data" / "snapshots").iterdir()
    assert f"snapshot of 'kb': {made}" in " ".join(result.stdout.split())


def test_a_closed_stdout_is_an_error_before_any_work(tmp_path):
    """``search --json >&-`` printed nothing and exited 0."""
    done = hybrid_rag("search", "valve", "--json", cwd=tmp_path, close=1)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: stdout is closed: nothing could be printed (to discard the output: >/dev/null)"
    )
    assert not (tmp_path / "data").exists()


def _into(stdout, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``hybrid-rag ARGS >stdout`` in a process of its own, with an index folder of its own."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYBRID_RAG_QDRANT_PATH": str(cwd / "index"), **env}
    (cwd / "index").mkdir(exist_ok=True)  # an index folder without collections: `collections --json` prints []
    command = [sys.executable, "-m", "orchestration.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)


def test_a_stdout_whose_reader_is_gone_is_an_error_in_one_line(tmp_path):
    """``collections --json | true`` exited 1 without a word (Click's broken pipe handling)."""
    read, write = os.pipe()
    os.close(read)  # the reader quit before the command wrote
    with os.fdopen(write, "w") as stdout:
        done = _into(stdout, ["collections", "--json"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: stdout could not be written: broken pipe (its reader closed it before the end, as `| head` does); "
        "the output is incomplete"
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_a_stdout_on_a_full_device_is_an_error_in_one_line(tmp_path):
    """``collections --json >/dev/full`` printed a 15-line traceback and exited 1."""
    with open("/dev/full", "w") as stdout:
        done = _into(stdout, ["collections", "--json"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: stdout could not be written: no space left on device; the output is incomplete"
    )


@pytest.mark.slow
def test_a_result_cut_short_by_its_reader_is_not_a_success(tmp_path):
    """``search --json -k 100 | head -c 10`` exited 0 with nothing on stderr under PYTHONUNBUFFERED (the Docker
    image's setting): the write the reader cut short was dropped without an error."""
    words = ["valve", "pump", "seal", "gasket", "flange", "pressure", "leak", "turbine", "bearing", "shaft"]
    docs = [{"_id": f"d{i}", "text": " ".join(words[(i + j) % 10] for j in range(600))} for i in range(40)]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert _into(subprocess.DEVNULL, ["index", "long.jsonl", "-c", "long"], tmp_path).returncode == 0
    read, write = os.pipe()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HYBRID_RAG_QDRANT_PATH": str(tmp_path / "index"),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "orchestration.cli", "search", "valve", "-c", "long", "-k", "100", "--json"]
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=write, stderr=subprocess.PIPE, text=True) as proc:
        os.close(write)
        assert len(os.read(read, 10)) == 10  # the result (over 64 KiB, a pipe's buffer) has begun: the reader quits
        os.close(read)
        stderr = proc.stderr.read()
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: stdout could not be written: broken pipe")


def test_help_flows_each_commands_text_to_the_terminal():
    """``hybrid-rag --help`` cut a command's sentence where its docstring wraps in the source (``... are neither`` /
    ``embedded nor written again``), as did the later paragraphs of ``adapt --help``."""
    listing = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    [index] = [line for line in listing.splitlines() if line.startswith("│ index ")]
    assert "are neither embedded nor written again" in index
    adapt = CliRunner().invoke(app, ["adapt", "--help"], env={"COLUMNS": "200"}).stdout
    assert "on the --qrels judgements (a dev or train split) when given" in adapt
    cache = CliRunner().invoke(app, ["cache", "--help"], env={"COLUMNS": "200"}).stdout  # a sub-group's commands
    assert "then shrink the file; delete the superseded ONNX exports" in cache
