"""The CLI prints stored content and user input literally: rich markup in a document, id, title, query, path or
error message neither crashes the output nor styles it or makes a link, and control characters (ANSI/OSC escapes)
are shown escaped, never sent to the terminal; ``--json`` keeps the content exact."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from orchestration.main_job import print_results
from orchestration.terminal import PrintableFormatter, printable
from retrieval.wording import counted

SPOOF = "[bold red]SECURITY ALERT[/bold red] [link=http://evil.example]click[/link] :warning:"
ESCAPES = "\x1b]0;pwned\x07 \x1b[2J \u202egnp.exe"
HOSTILE = [
    {"_id": "a", "text": "Use the path [/usr/local] for photons."},
    {"_id": "spoof[/x]", "title": SPOOF, "text": f"Photons are light. {ESCAPES}"},
    {"_id": "[/bad]", "text": ""},  # skipped: empty text
]


def _env(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    for key, sub in (("QDRANT_PATH", "index"), ("CACHE_DIR", "cache"), ("MODELS_DIR", "models")):
        monkeypatch.setenv(f"HYBRID_RAG_{key}", str(root / sub))
    monkeypatch.setenv("HYBRID_RAG_HISTORY_PATH", str(root / "history.sqlite"))
    monkeypatch.chdir(root)


def _invoke(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output and "MarkupError" not in result.output, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\u202e" not in result.output
    return result.output


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Path, str]:
    """A collection of hostile documents indexed through the CLI (skip policy); the index command's output."""
    root = tmp_path_factory.mktemp("literal")
    (root / "hostile.jsonl").write_text("".join(json.dumps(d) + "\n" for d in HOSTILE))
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, root)
        out = _invoke("index", "hostile.jsonl", "-c", "hostile", "--policy", "skip")
    return root, out


def test_printable_escapes_control_characters_but_tab_and_newline() -> None:
    assert printable("a\x1b[2Jb\x07c\x00d\x9be\u202ef\tg\nh[/x]") == "a\\x1b[2Jb\\x07c\\x00d\\x9be\\u202ef\tg\nh[/x]"
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "doc %s", ("\x1b]0;pwned\x07",), None)
    assert PrintableFormatter("%(message)s").format(record) == "doc \\x1b]0;pwned\\x07"


def test_index_prints_skipped_records_with_markup_literally(indexed) -> None:
    _, out = indexed
    assert "skipped hostile.jsonl:3: document '[/bad]': empty text" in out, out


def test_search_prints_hostile_content_and_query_literally(indexed, monkeypatch) -> None:
    root, _ = indexed
    _env(monkeypatch, root)
    monkeypatch.setenv("COLUMNS", "300")  # no wrapped cells
    out = _invoke("search", "[/b] photons [bold]", "-c", "hostile", "--no-rerank")
    assert "hits for '[/b] photons [bold]'" in out and "[/usr/local]" in out and "spoof[/x]" in out
    assert f"{SPOOF} | Photons are light. \\x1b]0;pwned\\x07 \\x1b[2J \\u202egnp.exe" in out, (
        out
    )  # tags, link, emoji code
    hits = json.loads(_invoke("search", "photons", "-c", "hostile", "--no-rerank", "--json"))
    assert SPOOF in {h["title"] for h in hits} and any(h["text"].endswith(ESCAPES) for h in hits)


def test_a_folder_with_markup_in_a_path_is_indexed_and_reported(tmp_path, monkeypatch) -> None:
    _env(monkeypatch, tmp_path)
    (tmp_path / "dirmk" / "[/z]").mkdir(parents=True)
    (tmp_path / "dirmk" / "[/z]" / "a.bin").write_text("hi")
    (tmp_path / "dirmk" / "[bold]note.md").write_text("Photons are light.\n")
    out = _invoke("index", "dirmk", "-c", "dirmk", "--policy", "skip")
    assert "skipped dirmk/[/z]/a.bin: unsupported file type '.bin'" in out, out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "stars", "-c", "[/b]"], "error: invalid settings: collection: invalid collection name '[/b]'"),
        (["--env-file", "[/e]\x1b[2J.env", "collections"], "error: --env-file [/e]\\x1b[2J.env: no such file"),
        (["index", "bad.jsonl", "-c", "x"], "error: bad.jsonl:1: document '[/x]': empty text"),
    ],
)
def test_error_messages_with_markup_are_one_literal_line(tmp_path, monkeypatch, args, message) -> None:
    _env(monkeypatch, tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"_id": "[/x]", "text": ""}\n')
    out = _invoke(*args, code=2)
    assert out.strip().splitlines()[-1].startswith(message), out


def test_run_results_print_names_and_check_details_literally(capsys) -> None:
    summary = {
        "corpus": "[/c]",
        "collection": "[bold]x",
        "index": {"documents": 1},
        "note": "no qrels for [/n] \x1b[2J",
        "checks": {"ndcg_not_dropped": {"passed": False, "severity": "ERROR", "description": "[link=http://e]x"}},
        "run_id": "r",
    }
    print_results(summary)
    out = capsys.readouterr().out
    assert "corpus [/c] -> collection '[bold]x': documents 1" in out and "no qrels for [/n] \\x1b[2J" in out
    assert "check ndcg_not_dropped: FAILED (ERROR): [link=http://e]x" in out and "\x1b" not in out


def test_a_file_name_that_is_not_utf8_is_printed_escaped_in_either_policy(tmp_path, monkeypatch) -> None:
    import os

    _env(monkeypatch, tmp_path)
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "ok.txt").write_text("Photons are light.\n")
    with open(os.path.join(os.fsencode(tmp_path / "latin"), b"caf\xe9.txt"), "w") as f:  # a Latin-1 name
        f.write("Plain text in a file whose name is Latin-1.\n")
    for policy, code, prefix in (("skip", 0, "skipped"), ("fail", 2, "error:")):
        result = CliRunner().invoke(app, ["index", "latin", "-c", "latin", "--policy", policy])
        assert result.exit_code == code, result.output
        out = (result.stdout_bytes + result.stderr_bytes).decode("utf-8")  # strict: no raw byte from the name
        assert f"{prefix} latin/caf\\udce9.txt: file name is not valid UTF-8" in out, out


def test_an_output_stream_that_cannot_encode_a_character_gets_a_replacement_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stdout in ASCII (``PYTHONIOENCODING=ascii``, a non-UTF-8 locale): the index report (its table drawn in ASCII)
    and a search table of non-ASCII hits print with ``?`` for what the stream cannot encode, and the command
    succeeds: a deploy script must not see a failure for a published index."""
    _env(monkeypatch, tmp_path)
    monkeypatch.setenv("COLUMNS", "60")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"_id": "café", "text": "Crème brûlée — a naïve café recipe."}))
    runner = CliRunner(charset="ascii")
    index = runner.invoke(app, ["index", "docs.jsonl", "-c", "ascii"])
    assert index.exit_code == 0, (index.output, index.exception)
    assert "indexed into 'ascii'" in index.output and re.search(r"\| documents +\| 1 \|", index.output), index.output
    search = runner.invoke(app, ["search", "brûlée", "-c", "ascii", "--k", "1"])
    assert search.exit_code == 0, (search.output, search.exception)
    assert "caf?" in search.output


def test_counts_are_worded_in_the_singular_for_one_and_with_thousands_separators():
    """One helper words every count of the library, CLI, assets and evaluations ("1 documents" was printed)."""
    assert [counted(1, "document"), counted(0, "document"), counted(4500, "point")] == [
        "1 document",
        "0 documents",
        "4,500 points",
    ]
    assert [counted(1, "query"), counted(2, "judged query"), counted(3, "key")] == [
        "1 query",
        "2 judged queries",
        "3 keys",
    ]
