"""Opening the input files users have: gzip-compressed (told by its content, decompressed as it is read), UTF-8
with or without a byte order mark, UTF-16 with one (Notepad's "Unicode", Windows PowerShell's ``>``), lines ending
in LF, CRLF or a lone CR. Any other bytes that are not UTF-8 are an error saying how to convert the file: an
encoding is never guessed. JSON that is not JSON Lines (an array, values written over several lines) is read a
window at a time (:func:`json_values`)."""

from __future__ import annotations

import codecs
import gzip
import io
import itertools
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from retrieval.progress import progress_bar

UTF8_BOM = codecs.BOM_UTF8
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # little-, big-endian
GZIP_MAGIC = b"\x1f\x8b"
GZIP_ERRORS = (OSError, EOFError, zlib.error)  # damaged or cut gzip data, as the gzip module raises it
_SURROGATE = re.compile("[\ud800-\udfff]")
JSON_WINDOW = 1 << 20  # characters of JSON text read at a time (json_values); a longer value is read whole
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_LOOKAHEAD = 16  # characters past an error the JSON parser may have needed ('-Infinity' is 9)

ErrorFactory = Callable[[Path, int | None, str], Exception]  # (file, line or None, reason): the reader's own error


class FileProblem(Exception):
    """Why a file cannot be read as text (``reason``), at ``line`` (None: the file as a whole)."""

    def __init__(self, reason: str, line: int | None = None):
        super().__init__(reason)
        self.reason, self.line = reason, line


def file_type(path: Path) -> str:
    """The type suffix of ``path`` in lower case, with ``.gz`` kept as part of it (``.jsonl.gz``)."""
    suffix = path.suffix.lower()
    return inner_suffix(path) + suffix if suffix == ".gz" else suffix


def inner_suffix(path: Path) -> str:
    """The suffix of ``path`` in lower case, under a ``.gz`` one: what the compressed file holds."""
    suffix = path.suffix.lower()
    return Path(path.stem).suffix.lower() if suffix == ".gz" else suffix


def base_name(path: Path) -> str:
    """The name of ``path`` without its type suffix (and ``.gz``)."""
    return Path(path.stem).stem if path.suffix.lower() == ".gz" else path.stem


def utf8_problem(data: bytes, exc: UnicodeDecodeError, path: Path, offset: str = "byte", base: int = 0) -> str:
    """What to tell of bytes ``data`` of file ``path`` that are not UTF-8 (``exc``: their decoding's error): the
    byte (``offset``: what its position counts from; ``base``: the position of ``data[0]``) and the command that
    converts the file."""
    byte = bytes(data[exc.start : exc.start + 1])
    return f"not valid UTF-8 ({offset} {base + exc.start}: {byte!r}; {convert_hint(path)})"


def convert_hint(path: Path) -> str:
    """How to convert file ``path``, which is not UTF-8, when it is Latin-1 or Windows-1252 (which one is for the
    user to say: both decode any byte)."""
    name, iconv = path.name, "iconv -f cp1252 -t utf-8"
    convert = f"gunzip -c {name} | {iconv} | gzip" if path.suffix.lower() == ".gz" else f"{iconv} {name}"
    return f"Latin-1 or Windows-1252? convert it: {convert} > {name}.new && mv {name}.new {name}"


def gzip_problem(path: Path, exc: BaseException) -> str:
    """What to tell of gzip data of ``path`` that cannot be decompressed (``exc``: cut, damaged)."""
    return f"damaged gzip data ({exc or type(exc).__name__}): gzip -t {path.name} checks it"


def raw_lines(
    path: Path,
    error: ErrorFactory,
    handle: io.BufferedReader | None = None,
    *,
    limit: int = -1,
    progress: bool = False,
) -> Iterator[bytes]:
    """The lines of file ``path`` as UTF-8 bytes with their ends, read as they are needed: gzip-compressed data is
    decompressed, UTF-16 text (a byte order mark) decoded, a UTF-8 byte order mark dropped. A UTF-8 file's lines
    are split at LF only (:func:`numbered_lines` splits the rest) and are not checked. A file that cannot be opened,
    damaged gzip data or UTF-16 that is not valid raise ``error(path, line, reason)``. ``handle``: the file
    already open (stdin; ``path`` names it), read from where it is and left open. ``limit``: a line longer than
    this (bytes; characters of UTF-16) comes in pieces. ``progress``: a bar over the bytes of the file read so far
    (of a gzip file, its compressed bytes; :func:`~retrieval.progress.progress_bar`)."""
    if handle is not None:
        yield from _decoded_lines(path, handle, error, limit)
        return
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise error(path, None, f"cannot open file: {exc.strerror or exc}") from exc
    with handle:
        if not progress:
            yield from _decoded_lines(path, handle, error, limit)
            return
        size = os.fstat(handle.fileno()).st_size
        with progress_bar(total=size, desc="reading", unit="B", unit_scale=True, unit_divisor=1024) as bar:
            for line in _decoded_lines(path, handle, error, limit):
                yield line
                bar.update(handle.tell() - bar.n)


def _decoded_lines(path: Path, handle: io.BufferedReader, error: ErrorFactory, limit: int) -> Iterator[bytes]:
    compressed = handle.peek(len(GZIP_MAGIC)).startswith(GZIP_MAGIC)
    stream: BinaryIO = gzip.GzipFile(fileobj=handle) if compressed else handle  # type: ignore[assignment]
    try:
        yield from _utf8_lines(path, stream, error, limit)
    except GZIP_ERRORS as exc:
        if not compressed:
            raise error(path, None, f"cannot read file: {getattr(exc, 'strerror', None) or exc}") from exc
        raise error(path, None, gzip_problem(path, exc)) from None


def _utf8_lines(path: Path, stream: BinaryIO, error: ErrorFactory, limit: int) -> Iterator[bytes]:
    head = stream.peek(len(UTF8_BOM))[: len(UTF8_BOM)]  # type: ignore[attr-defined]
    if not head.startswith(UTF16_BOMS):
        for line_no, raw in enumerate(iter(partial(stream.readline, limit), b"")):
            yield raw.removeprefix(UTF8_BOM) if line_no == 0 else raw
        return
    # split at LF, CRLF and a lone CR only (not at U+2028 and the like, as str.splitlines does)
    text = io.TextIOWrapper(stream, encoding="utf-16", errors="surrogatepass", newline="")
    line_no = 0
    try:
        for line in iter(partial(text.readline, limit), ""):
            line_no += 1
            if _SURROGATE.search(line):
                raise error(path, line_no, "not valid UTF-16 (a lone surrogate)")
            yield line.encode("utf-8")
    except UnicodeDecodeError as exc:  # an odd number of bytes: a cut file
        raise error(path, line_no + 1, f"not valid UTF-16 ({exc.reason})") from None
    finally:
        text.detach()  # the caller closes the file


def numbered_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``lines`` (as :func:`raw_lines` gives them), numbered from 1, without their line ends: a line ends at LF,
    CRLF or a lone CR (classic Mac OS, some exporters), as an editor and Python's text mode read them. (JSON text
    holds no raw CR.)"""
    line_no = 0
    for raw in lines:
        body = raw[:-2] if raw.endswith(b"\r\n") else raw.removesuffix(b"\n")
        pieces = body.split(b"\r")
        if len(pieces) > 1 and not pieces[-1] and not raw.endswith(b"\n"):  # the file's last line, ended by a CR
            pieces.pop()
        for piece in pieces:
            line_no += 1
            yield line_no, piece


def text_lines(path: Path, error: ErrorFactory) -> Iterator[tuple[int, str]]:
    """The lines of text file ``path`` as :func:`raw_lines` and :func:`numbered_lines` read them, decoded; a line
    that is not UTF-8 raises ``error(path, line, reason)``, the file's reader's own error, instead of a
    UnicodeDecodeError naming neither."""
    for line_no, raw in numbered_lines(raw_lines(path, error)):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(path, line_no, utf8_problem(raw, exc, path)) from None
        yield line_no, line


def file_bytes(path: Path, limit: int) -> bytes:
    """The content of file ``path``, decompressed when it is gzip-compressed, or :class:`FileProblem`: it cannot be
    read, or holds or decompresses to over ``limit`` bytes (neither a huge file nor a gzip bomb is read whole)."""
    try:
        with path.open("rb") as handle:
            if handle.peek(len(GZIP_MAGIC)).startswith(GZIP_MAGIC):
                return _unzipped(path, handle, limit)
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise FileProblem(f"cannot read file: {exc.strerror or exc}") from exc
    if len(raw) > limit:
        raise FileProblem(f"over {limit:,} bytes, more than a document may hold")
    return raw


def file_text(path: Path, limit: int) -> str:
    """The text of file ``path``, read whole as :func:`raw_lines` reads it (gzip, byte order marks), or
    :class:`FileProblem`: it cannot be read, holds a NUL (binary), is not UTF-8 (nor UTF-16 with a byte order
    mark), or decompresses to over ``limit`` bytes (a gzip bomb is not read whole)."""
    raw = file_bytes(path, limit)
    if raw.startswith(UTF16_BOMS):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise FileProblem(f"not valid UTF-16 ({exc.reason}, byte offset {exc.start})") from None
        if "\x00" in text:
            raise FileProblem("binary content (NUL characters) in a text file")
        return text
    if b"\x00" in raw:  # anywhere: one past the first 8 KiB was indexed as text
        raise FileProblem("binary content (NUL bytes) in a text file")
    try:
        return raw.decode("utf-8-sig")  # a leading BOM is not text
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise FileProblem(utf8_problem(raw, exc, path, offset="byte offset"), line) from None


def _unzipped(path: Path, handle: BinaryIO, limit: int) -> bytes:
    """The decompressed content of gzip file ``handle``, at most ``limit`` bytes, or :class:`FileProblem`."""
    try:
        with gzip.GzipFile(fileobj=handle) as unzipped:
            raw = unzipped.read(limit + 1)
    except GZIP_ERRORS as exc:
        raise FileProblem(gzip_problem(path, exc)) from None
    if len(raw) > limit:
        raise FileProblem(f"decompresses to over {limit:,} bytes, more than a document may hold")
    return raw


def encoding_problem(head: bytes) -> str | None:
    """Why a file whose first bytes are ``head`` is no UTF-8 text for a reader that takes only UTF-8 (the corpora
    file), or None: UTF-16 (a byte order mark) or gzip-compressed."""
    bom = next((b for b in UTF16_BOMS if head.startswith(b)), None)
    if bom is not None:
        return f"UTF-16 text (byte order mark {bom.hex(' ').upper()}): save it as UTF-8"
    if head.startswith(GZIP_MAGIC):
        return "gzip-compressed: decompress it first (gunzip -k FILE)"
    return None


def first_line(path: Path, error: ErrorFactory) -> bytes:
    """The first line of file ``path`` (read as :func:`raw_lines` and :func:`numbered_lines` read it) that is not
    blank, stripped; at most its first 4 KiB. ``b""``: the file is blank."""
    for _, raw in numbered_lines(raw_lines(path, error, limit=4096)):
        if raw.strip():
            return raw.strip()
    return b""


def json_values(
    path: Path, error: ErrorFactory, *, progress: bool = False, too_deep: str = ""
) -> Iterator[tuple[int, Any]]:
    """The values of JSON file ``path`` (read as :func:`raw_lines` reads it) with the line each starts on: the
    elements of an array when the file's first character that is not whitespace is ``[``, else a sequence of values
    separated by whitespace (``jq .``'s output). The text is held :data:`JSON_WINDOW` characters at a time (more
    while one value is longer): memory does not grow with the file. JSON or UTF-8 that is not valid raises
    ``error(path, line, reason)``, naming an array's element by its index (``[3]``, as jq counts): where the next
    value starts is unknown. ``progress``: as :func:`raw_lines`'s. ``too_deep``: what the error for a value nested
    deeper than Python's parser reads adds (how deep the caller's values may nest)."""
    text = _JsonText(path, error, raw_lines(path, error, limit=JSON_WINDOW, progress=progress), too_deep)
    if text.skip_space() != "[":
        while text.skip_space():
            yield text.value("malformed JSON")
        return
    text.pos += 1
    if text.skip_space() != "]":
        for index in itertools.count():
            yield text.value("malformed JSON array", f"element [{index}]")
            after = text.skip_space()
            if after == "]":
                break
            if after != ",":
                raise error(
                    path, text.where(text.pos)[0], f"malformed JSON array: expected ',' or ']' after element [{index}]"
                )
            text.pos += 1
            text.skip_space()
    text.pos += 1
    if text.skip_space():
        raise error(path, text.where(text.pos)[0], "malformed JSON array: more data after its closing ']'")


class _JsonText:
    """The text of a JSON file (``pieces``: its UTF-8 bytes), a window at a time, and where a position of it lies
    in the file. ``text[mark]`` is at ``line``, ``column`` (from 0); the text before it is dropped as more is read."""

    def __init__(self, path: Path, error: ErrorFactory, pieces: Iterator[bytes], too_deep: str = ""):
        self.path, self.error, self.pieces, self.too_deep = path, error, pieces, too_deep
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.decoded_bytes = self.decoded_lfs = 0  # to name a byte that is not UTF-8 as the file's whole text does
        self.text, self.pos, self.eof = "", 0, False
        self.mark, self.line, self.column = 0, 1, 0

    def skip_space(self) -> str:
        """Move past whitespace; the character there ('' at the end of the file)."""
        while True:
            self.pos = _JSON_SPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text) or self.eof:
                return self.text[self.pos : self.pos + 1]
            self._read_more()

    def value(self, malformed: str, element: str = "") -> tuple[int, Any]:
        """The line and the JSON value starting here; moves past it. ``malformed``: what an error says before its
        reason; ``element``: what names the value (``element [3]``), in brackets after it."""
        self._move_mark()
        line = self.line
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                at_window_end = exc.msg.startswith("Unterminated string") or exc.pos + _JSON_LOOKAHEAD >= len(self.text)
                if at_window_end and not self.eof:
                    self._read_more()
                    continue
                error_line, column = self.where(exc.pos)
                reason = f"{malformed}: {exc.msg.removesuffix(' at')} at column {column}{_bracketed(element)}"
                raise self.error(self.path, error_line, reason) from None
            except RecursionError:  # Python's parser gives up at about 1,000 levels
                reason = "JSON nested too deeply" + _bracketed("; ".join(filter(None, (element, self.too_deep))))
                raise self.error(self.path, line, reason) from None
            if end < len(self.text) or self.eof:  # else a number may go on in the next window
                self.pos = end
                return line, value
            self._read_more()

    def where(self, pos: int) -> tuple[int, int]:
        """The line and column (from 1) of ``text[pos]`` (at or after the mark)."""
        breaks = line_breaks(self.text, self.mark, pos)
        if not breaks:
            return self.line, self.column + pos - self.mark + 1
        return self.line + breaks, pos - max(
            self.text.rfind("\n", self.mark, pos), self.text.rfind("\r", self.mark, pos)
        )

    def _move_mark(self) -> None:
        self.line, column = self.where(self.pos)
        self.column, self.mark = column - 1, self.pos

    def _read_more(self) -> None:
        """Drop the text before here; read :data:`JSON_WINDOW` more characters or as many as are held (a long value
        is read in doubling windows), or all that is left."""
        self._move_mark()
        held = self.text[self.mark :]
        parts, wanted = [held], max(JSON_WINDOW, len(held))
        while wanted > 0 and not self.eof:
            piece = next(self.pieces, None)
            self.eof = piece is None
            parts.append(self._decoded(piece or b""))
            wanted -= len(parts[-1])
        self.text, self.pos, self.mark = "".join(parts), 0, 0

    def _decoded(self, piece: bytes) -> str:
        pending = len(self.decoder.getstate()[0])  # the bytes of a character the last piece cut
        try:
            text = self.decoder.decode(piece, final=self.eof)
        except UnicodeDecodeError as exc:
            line = self.decoded_lfs + exc.object.count(b"\n", 0, exc.start) + 1
            problem = utf8_problem(exc.object, exc, self.path, "byte offset", self.decoded_bytes - pending)
            raise self.error(self.path, line, problem) from None
        self.decoded_bytes += len(piece)
        self.decoded_lfs += piece.count(b"\n")
        return text


_DECODER = json.JSONDecoder()


def _bracketed(note: str) -> str:
    """`` (note)``, or '' without a note."""
    return f" ({note})" if note else ""


def line_breaks(text: str, start: int, end: int) -> int:
    """The line ends (LF, CRLF or a lone CR) in ``text[start:end]``; ``text[end]`` is no LF."""
    return text.count("\n", start, end) + text.count("\r", start, end) - text.count("\r\n", start, end)
