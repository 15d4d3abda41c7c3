"""HTML pages (``.html``, ``.htm``, ``.xhtml``): a page's visible text, read with BeautifulSoup (lxml's parser).

Encoding: a byte order mark, else the ``<meta charset>`` (or ``http-equiv``, or XML) declaration, else UTF-8, as a
browser reads a saved page; Latin-1 and ASCII labels read as Windows-1252, as browsers do (the WHATWG Encoding
standard). Other encodings are not guessed (a guess reads "café" in Windows-1252 as Urdu): bytes that are not in
the encoding are a :class:`FileProblem` saying how to declare or convert it.

Text: the page's ``<main>``, else its one outermost ``<article>`` (when not a teaser), else its ``<body>``, without
what a reader does not see (script, style, template, svg..., elements with the ``hidden`` attribute or an inline
``display: none``) nor the page's navigation and site chrome (``<nav>``, the page's own ``<header>`` and
``<footer>``: those not inside an article, section, aside or main, as ARIA's banner and contentinfo landmarks;
elements with those roles). Block elements start lines; headings, paragraphs, lists, tables and the like are set
apart by blank lines; list items and table rows are lines (a row's cells joined by " | "); whitespace is collapsed
but in ``<pre>``.

A page BeautifulSoup would take too long or too much memory to read (some 20 µs and 1 KiB an element) is a
:class:`FileProblem`: one of over :data:`MAX_BYTES` bytes or :data:`MAX_TAGS` tags (counted as its ``<``). lxml's
parser nests elements at most 256 deep and resolves no external entity; the text walk is not recursive.
"""

from __future__ import annotations

import codecs
import re

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.dammit import EncodingDetector
from bs4.element import PreformattedString

from retrieval.formats import FileContent
from retrieval.input_files import FileProblem

# never shown: scripts, styles, their fallbacks and templates, drawings, the head (its title is read apart)
INVISIBLE = {"script", "style", "noscript", "template", "svg", "math", "head", "iframe", "object", "canvas"}
CHROME_ROLES = {"banner", "navigation", "contentinfo", "search"}
SECTIONING = ["article", "aside", "main", "nav", "section"]  # a header or footer inside one belongs to it
# set apart by a blank line (a paragraph break); other block elements start a line
PARAGRAPHS = {
    *(f"h{n}" for n in range(1, 7)),
    *("p", "pre", "blockquote", "ul", "ol", "dl", "menu", "table", "figure", "hr", "address", "details", "hgroup"),
    *("article", "section", "aside", "header", "footer", "main", "form", "fieldset"),
}
LINES = {
    *("div", "li", "dt", "dd", "tr", "caption", "figcaption", "summary", "legend", "center", "dialog", "nav"),
    *("body", "thead", "tbody", "tfoot", "option", "br", "search"),
}
CELLS = {"td", "th"}
CELL_SEPARATOR = " | "
BROWSER_ALIASES = {"iso8859-1": "cp1252", "ascii": "cp1252", "utf-16": "utf-8", "utf-16-le": "utf-8"}
MAX_BYTES = 32 * 1024 * 1024  # as a text file's: a document's text is at most 8 MiB
MAX_TAGS = 500_000  # a long page has tens of thousands
_SPACE = re.compile(r"[ \t\n\r\f]+")  # HTML's whitespace (not U+00A0, a no-break space that is shown)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)


def read(data: bytes) -> FileContent:
    """The visible text, title and metadata (``lang``, ``description``, ``url``) of the HTML page in ``data``."""
    if len(data) > MAX_BYTES:
        raise FileProblem(f"too large to read: {len(data):,} bytes, over the {MAX_BYTES:,} a page may hold")
    if (tags := data.count(b"<")) > MAX_TAGS:
        raise FileProblem(f"too many tags to read: {tags:,} '<', over the {MAX_TAGS:,} a page may hold")
    soup = BeautifulSoup(_decoded(data), "lxml")
    title = _collapsed(soup.title.get_text()) if soup.title else ""
    if not title and (h1 := soup.find("h1")):
        title = _collapsed(h1.get_text())
    text = _page_text(soup)
    if not text:
        raise FileProblem("no text to index: the page shows no text (its body is empty, or only scripts or images)")
    return FileContent(text, title, _metadata(soup))


def _decoded(data: bytes) -> str:
    """The text of ``data`` in the encoding its byte order mark or declaration names, else UTF-8."""
    data, encoding = EncodingDetector.strip_byte_order_mark(data)
    declared = None
    if encoding is None:
        declared = EncodingDetector.find_declared_encoding(data, is_html=True)
        try:
            encoding = codecs.lookup(declared).name if declared else "utf-8"
        except LookupError:
            raise FileProblem(f"unknown character encoding {declared!r} declared by the page") from None
        encoding = BROWSER_ALIASES.get(encoding, encoding)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        byte, at = data[exc.start : exc.start + 1], f"byte offset {exc.start}"
        if declared:
            raise FileProblem(f"not valid {declared} as the page declares ({at}: {byte!r})") from None
        raise FileProblem(
            f"not valid UTF-8 and no character encoding declared ({at}: {byte!r}): a page in Windows-1252 declares it "
            'in its head: <meta charset="windows-1252">'
        ) from None


def _page_text(soup: BeautifulSoup) -> str:
    """The text of the page's ``<main>``, else of its one outermost ``<article>`` when that holds half of the text
    of the body or more (not a teaser beside the page's text), else of its body; of its body with the chrome when
    that is all it shows (a page all navigation, or one whose unclosed ``<header>`` holds the rest)."""
    main = soup.find("main")
    if isinstance(main, Tag) and (text := _text(main)):
        return text
    body = _text(soup.body or soup)
    articles = [a for a in soup.find_all("article") if not a.find_parent("article")]
    if len(articles) == 1 and len(text := _text(articles[0])) * 2 >= len(body):
        return text
    return body or _text(soup.body or soup, chrome=True)


def _text(root: Tag, chrome: bool = False) -> str:
    """The visible text of ``root``'s tree (see the module's docstring), with the site chrome or not, or ""."""
    out = _Text()
    stack: list[tuple[Tag | NavigableString, bool]] = [(root, False)]
    while stack:  # not recursive: pages nest deeper than Python's recursion limit
        node, leaving = stack.pop()
        if isinstance(node, NavigableString):
            if not isinstance(node, PreformattedString):  # comments, doctypes, CDATA, processing instructions
                out.add(str(node))
        elif leaving:
            out.close(node.name)
        elif node is root or _shown(node, chrome):
            out.open(node.name)
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(node.contents))
    return out.text()


def _shown(tag: Tag, chrome: bool) -> bool:
    """Whether ``tag`` is shown and, unless ``chrome``, is no site chrome."""
    if tag.name in INVISIBLE or tag.has_attr("hidden") or _HIDDEN_STYLE.search(str(tag.get("style") or "")):
        return False
    if chrome:
        return True
    if tag.name == "nav" or str(tag.get("role") or "").lower() in CHROME_ROLES:
        return False
    return tag.name not in {"header", "footer"} or tag.find_parent(SECTIONING) is not None


class _Text:
    """Text built from the elements entered and left and the strings met in document order."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pending = ""  # what goes before the next text: a line end, a blank line, a cell separator or a space
        self.pre = 0  # inside how many <pre> elements
        self.cell = 0  # inside how many table cells (a row is one line: blocks in a cell are spaces)
        self.row_text = False  # whether a cell of the current row has text

    def add(self, string: str) -> None:
        if not self.pre:
            string = _SPACE.sub(" ", string)
            if self.pending or not self.parts or self.parts[-1].endswith("\n"):
                string = string.lstrip(" ")
        if not string:
            return
        if self.parts and self.pending:
            self.parts[-1] = self.parts[-1].rstrip(" ")
            self.parts.append(self.pending)
        self.pending = ""
        self.parts.append(string)
        self.row_text = self.row_text or bool(self.cell)

    def open(self, name: str) -> None:
        if name in CELLS:
            self.pending = CELL_SEPARATOR if self.row_text and self.pending in {"", " "} else self.pending
            self.cell += 1
        self._break(name)
        if name == "pre":
            self.pre += 1
        elif name == "tr":
            self.row_text = False

    def close(self, name: str) -> None:
        self._break(name)
        if name == "pre":
            self.pre -= 1
        elif name in CELLS:
            self.cell -= 1

    def _break(self, name: str) -> None:
        if name not in PARAGRAPHS and name not in LINES:
            return
        if self.cell and name not in {"tr", "table"}:
            self.pending = self.pending or " "
        elif "\n\n" not in self.pending:
            self.pending = "\n\n" if name in PARAGRAPHS else "\n"

    def text(self) -> str:
        return "".join(self.parts).strip()


def _metadata(soup: BeautifulSoup) -> dict[str, str]:
    """The page's language (``<html lang>``), description (``<meta name=description>``) and canonical URL."""
    html = soup.find("html")
    description = soup.find("meta", attrs={"name": re.compile(r"^\s*description\s*$", re.IGNORECASE)})
    canonical = soup.find("link", rel=lambda rel: rel is not None and rel.lower() == "canonical")
    found = {
        "lang": html.get("lang") if isinstance(html, Tag) else None,
        "description": description.get("content") if isinstance(description, Tag) else None,
        "url": canonical.get("href") if isinstance(canonical, Tag) else None,
    }
    return {key: _collapsed(str(value)) for key, value in found.items() if value and _collapsed(str(value))}


def _collapsed(text: str) -> str:
    return _SPACE.sub(" ", text).strip()
