"""HTML pages and Word .docx documents in a folder: read as documents (they were skipped as "unsupported file
type"), their visible text only, in the encoding the page declares; damaged files named; indexed end to end."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import docx
import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval.documents import BadInputError, read_documents

PAGE = """<!doctype html>
<html lang="fr">
<head><meta charset="{charset}"><title>Le menu du café</title>
<meta name="description" content="Ce que sert le café">
<link rel="canonical" href="https://example.org/menu">
<style>.quokkastyle {{ color: red }}</style>
<script>var wallabyscript = "not shown";</script></head>
<body>
<header><a href="/">Accueil</a><nav><a>Plan</a> <a>Contact</a></nav></header>
<nav>bandicootnav</nav>
<div hidden>numbathidden</div>
<h1>Menu</h1>
<p>Le plat du jour est une <b>crème brûlée</b>
   maison.<br>Servie tiède.</p>
<ul><li>Entrée</li><li>Dessert</li></ul>
<table><tr><th>Plat</th><th>Prix</th></tr><tr><td>Soupe</td><td>7 €</td></tr></table>
<footer>Copyright potoroofooter</footer>
</body></html>
"""


def page(charset: str = "utf-8", **replaced: str) -> bytes:
    html = PAGE.format(charset=charset)
    for old, new in replaced.items():
        html = html.replace(old, new)
    return html.encode("cp1252" if charset in {"windows-1252", "iso-8859-1"} else charset)


def read_one(folder: Path, name: str, data: bytes):
    """The document of file ``name`` holding ``data``, alone in ``folder``."""
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    docs, _ = read_documents(folder / name)
    assert [d.id for d in docs] == [name]
    return docs[0]


def problem(folder: Path, name: str, data: bytes) -> str:
    """The reason file ``name`` holding ``data`` is skipped (nothing read from it)."""
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    docs, report = read_documents(folder, policy="skip")
    assert docs == [] and [p.path.name for p in report.skipped] == [name]
    return report.skipped[0].reason


@pytest.mark.parametrize("charset", ["utf-8", "windows-1252", "iso-8859-1"])
def test_an_html_page_is_its_visible_text_with_blocks_on_lines(tmp_path, charset):
    doc = read_one(tmp_path, "menu.html", page(charset))
    assert doc.text == (
        "Menu\n\nLe plat du jour est une crème brûlée maison.\nServie tiède.\n\nEntrée\nDessert\n\n"
        "Plat | Prix\nSoupe | 7 €"
    )
    assert doc.title == "Le menu du café"
    assert doc.metadata == {
        "lang": "fr",
        "description": "Ce que sert le café",
        "url": "https://example.org/menu",
        "source_path": "menu.html",
    }


def test_a_page_in_utf16_with_a_byte_order_mark_is_read(tmp_path):
    data = PAGE.format(charset="utf-16").encode("utf-16")
    assert "crème brûlée" in read_one(tmp_path, "menu.htm", data).text


def test_bytes_not_in_the_page_encoding_are_named_never_guessed(tmp_path):
    """Undeclared Windows-1252 was guessed as another encoding (cp1006 reads "café" as "cafﻠ"): refused, saying how
    to declare it."""
    undeclared = page("windows-1252").replace(b'<meta charset="windows-1252">', b"")
    reason = problem(tmp_path / "a", "menu.html", undeclared)
    assert reason.startswith("not valid UTF-8 and no character encoding declared (byte offset ")
    assert reason.endswith("b'\\xe9'): a page in Windows-1252 declares it in its head: <meta charset=\"windows-1252\">")
    declared_wrong = page("windows-1252").replace(b"windows-1252", b"utf-8")
    assert problem(tmp_path / "b", "menu.html", declared_wrong).startswith("not valid utf-8 as the page declares")
    unknown = page().replace(b'charset="utf-8"', b'charset="klingon"')
    assert "unknown character encoding 'klingon'" in problem(tmp_path / "c", "menu.html", unknown)


@pytest.mark.parametrize(
    ("replaced", "title"),
    [
        ({}, "Le menu du café"),
        ({"<title>Le menu du café</title>": ""}, "Menu"),  # no <title>: the first <h1>
        ({"<title>Le menu du café</title>": "", "<h1>Menu</h1>": "<h2>Menu</h2>"}, "menu"),  # the file name
    ],
)
def test_an_html_title_is_its_title_else_its_first_h1_else_the_file_name(tmp_path, replaced, title):
    assert read_one(tmp_path, "menu.html", page(**replaced)).title == title


def test_the_main_content_is_read_without_the_site_chrome_around_it(tmp_path):
    """<main>, else the one article (its own footer kept); a teaser article is not taken for the page."""
    article = "<article><h2>Post</h2><p>Long text of the post, long enough.</p><footer>By Ann</footer></article>"
    chrome = "<header>Site</header><nav>Menu</nav>{}<aside>Related</aside><footer>Site footer</footer>"
    body = chrome.format(article)
    assert (
        read_one(tmp_path / "a", "a.html", body.encode()).text
        == "Post\n\nLong text of the post, long enough.\n\nBy Ann"
    )
    main = chrome.format(f"<main><p>Main text</p>{article}</main>")
    assert read_one(tmp_path / "b", "b.html", main.encode()).text.startswith("Main text\n\nPost")
    teaser = chrome.format("<p>" + "The page's own text. " * 5 + "</p><article>Read next</article>")
    text = read_one(tmp_path / "c", "c.html", teaser.encode()).text
    assert text.startswith("The page's own text.") and text.endswith("Read next\n\nRelated")


def test_a_page_that_shows_only_chrome_is_read_with_it(tmp_path):
    """Text left unread for being in a header is no page without text: an unclosed <header> holds the page."""
    unclosed = b"<header><h1>Blog</h1><p>The whole post, in the header left open."
    assert read_one(tmp_path, "post.html", unclosed).text == "Blog\n\nThe whole post, in the header left open."


def test_markup_that_is_not_html_is_read_as_a_browser_shows_it(tmp_path):
    assert read_one(tmp_path, "notes.html", b"plain  text,\nno markup <at all").text == "plain text, no markup"


@pytest.mark.parametrize("body", ["", "<body>  </body>", "<body><script>x()</script><img src=a.png></body>"])
def test_a_page_without_visible_text_is_reported_not_indexed(tmp_path, body):
    reason = problem(tmp_path, "empty.html", f"<html><head><title>T</title></head>{body}</html>".encode())
    assert reason.startswith("no text to index: the page shows no text")


def word_file(title: str = "", author: str = "Ann Author", heading_style: str = "Heading 1") -> bytes:
    document = docx.Document()
    properties = document.core_properties
    properties.title, properties.author = title, author
    properties.created = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.UTC)
    properties.modified = dt.datetime(2024, 6, 2, 10, 0, tzinfo=dt.UTC)
    document.add_paragraph("Quarterly Review", style=heading_style)
    document.add_paragraph("Sales grew in every region.")
    document.add_paragraph("")
    document.add_paragraph("Costs fell.", style="List Bullet")
    document.add_paragraph("Hiring paused.", style="List Bullet")
    table = document.add_table(rows=2, cols=2)
    for (row, col), text in {(0, 0): "Region", (0, 1): "Revenue", (1, 0): "Narnia", (1, 1): "42"}.items():
        table.cell(row, col).text = text
    document.add_paragraph("Outlook: steady.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def test_a_word_document_is_its_paragraphs_and_tables_in_order(tmp_path):
    doc = read_one(tmp_path, "review.docx", word_file())
    assert doc.text == (
        "Quarterly Review\n\nSales grew in every region.\n\nCosts fell.\nHiring paused.\n\n"
        "Region | Revenue\nNarnia | 42\n\nOutlook: steady."
    )
    assert doc.metadata == {
        "author": "Ann Author",
        "created": "2024-05-01T09:30:00Z",  # as every stored datetime (a PDF's created, front matter's): UTC, Z
        "modified": "2024-06-02T10:00:00Z",
        "source_path": "review.docx",
    }


@pytest.mark.parametrize(
    ("title", "style", "expected"),
    [("Q2 review", "Heading 1", "Q2 review"), ("", "Title", "Quarterly Review"), ("", "Heading 2", "review")],
)
def test_a_word_title_is_its_property_else_its_title_or_first_heading_else_the_file_name(
    tmp_path, title, style, expected
):
    assert read_one(tmp_path, "review.docx", word_file(title, heading_style=style)).title == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (word_file()[:3000], "not a zip archive (damaged or cut, or another type renamed); an old .doc file: save it"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504), "an old .doc file (Word 97-2003) or a password-protected"),
        (b"PK\x05\x06" + bytes(18), "a zip archive without a readable Word document"),  # an empty zip archive
    ],
)
def test_a_file_that_is_not_a_word_document_is_named_as_such(tmp_path, data, reason):
    got = problem(tmp_path, "report.docx", data)
    assert got.startswith("not a Word .docx file: ") and reason in got
    with pytest.raises(BadInputError, match=r"report\.docx: not a Word \.docx file"):
        read_documents(tmp_path)


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def found(word: str) -> list[str]:
    """The documents whose text holds ``word`` (a BM25 search: no hit for a word in no document)."""
    hits = json.loads(cli("search", word, "-c", "kb", "--variant", "sparse", "--group-by", "doc", "--json"))
    return [hit["doc_id"] for hit in hits]


def test_a_folder_of_markdown_html_and_word_files_is_indexed_once_and_searched(cli_env):
    folder = cli_env / "docs"
    folder.mkdir()
    (folder / "guide.md").write_text("# Guide\nInstall the wombat package.\n")
    (folder / "menu.html").write_bytes(page("windows-1252"))
    (folder / "review.docx").write_bytes(word_file())
    first = json.loads(cli("index", str(folder), "-c", "kb", "--json"))
    assert (first["documents"], first["skipped"]) == (3, [])
    again = json.loads(cli("index", str(folder), "-c", "kb", "--json"))
    assert (again["written"], again["embedded"], again["deleted"]) == (0, 0, 0)
    assert again["unchanged"] == again["points"] == first["points"]
    assert found("brûlée") == ["menu.html"]  # read as the page declares: Windows-1252
    assert found("Narnia") == ["review.docx"]  # a table cell
    assert found("wombat") == ["guide.md"]
    for hidden in ("wallabyscript", "quokkastyle", "bandicootnav", "numbathidden", "potoroofooter"):
        assert found(hidden) == [], hidden
