"""Documents and the sources they are read from (BEIR directory, JSONL or JSON array file, folder of text files;
any of them gzip-compressed, UTF-8 or UTF-16: :mod:`retrieval.input_files`).

Every problem with the input is reported as an :class:`InputProblem` naming the file, the line and the
reason. The :class:`BadInputPolicy` decides whether problems stop the read (``fail``: after the first
:data:`MAX_REPORTED_PROBLEMS`, all named at once) or the record is skipped, counted and logged (``skip``); valid
records are always kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import math
import numbers
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from markdown_it import MarkdownIt

from retrieval.errors import HybridRagError, InvalidDocumentError, choice
from retrieval.formats import MAX_FILE_BYTES, READER_MODULES, FileContent, reader_for
from retrieval.input_files import (
    FileProblem,
    base_name,
    file_bytes,
    file_text,
    file_type,
    first_line,
    inner_suffix,
    json_values,
    numbered_lines,
    raw_lines,
    utf8_problem,
)
from retrieval.progress import progress_bar
from retrieval.wording import counted

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}  # each also gzip-compressed (".jsonl.gz"), as are text files
MAX_REPORTED_PROBLEMS = 20  # the fail policy reads on to name this many bad records at once, then stops
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024  # a whole record: text, title and metadata (UTF-8; metadata as JSON)
MAX_METADATA_BYTES = 64 * 1024  # a document's metadata as JSON: it is copied into every chunk's payload
MAX_METADATA_DEPTH = 32  # objects and lists nested in metadata (the engine cannot read back ~120 in its WAL)
TOO_DEEP = f"metadata may nest {MAX_METADATA_DEPTH} levels"  # said of JSON deeper than Python's parser reads
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the integers a Qdrant payload holds (i64)
RECORD_FIELDS = {"_id", "title", "text", "metadata"}  # a JSONL record's other fields are metadata
RESERVED_FRONT_MATTER = {"title", "source_path"}  # the document's title; the reader's own metadata
NOT_UNICODE = "not valid Unicode (lone surrogate)"
UNSUPPORTED = "unsupported file type"  # a folder's file that is no text file: never a document
# a type not read whose files the program that wrote them (Word, LibreOffice, PowerPoint) saves as a type read
SAVE_AS = {".doc": ".docx", ".odt": ".docx", ".rtf": ".docx", ".ppt": ".pdf", ".pptx": ".pdf", ".odp": ".pdf"}
_COMMONMARK = MarkdownIt("commonmark")
# may open a "# Title" heading or underline a "Title\n===" one (CommonMark decides)
_H1_LINE = re.compile(r" {0,3}(?:#(?:[ \t]|\r?$)|=+[ \t]*\r?$)")
# lines may end with LF, CRLF or a lone CR (classic Mac OS), as YAML and Markdown read them
_FRONT_MATTER = re.compile(r"---[ \t]*(?:\r\n?|\n)(.*?)(?<=[\r\n])(?:---|\.\.\.)[ \t]*(?:\r\n?|\n|\Z)", re.DOTALL)
# a JSON token of a line that does not parse: a string (its escapes undecoded), a bracket, ':' or ',', any other run
# of characters (a number, true, junk), or the quote of a string left open
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s"{}\[\]:,]+|"', re.DOTALL)
_UNDERSCORE_ID = re.compile(r"(?<!\w)_id(?!\w)")  # '_id' as a word: a key, maybe with a quote lost


@dataclass(frozen=True)
class Document:
    """One source document; ``id`` is stable across runs and is what evaluation qrels refer to."""

    id: str
    text: str
    title: str | None = ""  # None: no title (stored as "")
    metadata: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # short_repr is defined below
        return short_repr(self)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise InvalidDocumentError(
                f"Document.id must be a non-empty string, got {type(self.id).__name__} {self.id!r}"
            )


class BadInputPolicy(StrEnum):
    """What to do with a record that cannot be indexed."""

    FAIL = "fail"
    SKIP = "skip"


class SourceFormat(StrEnum):
    """How a source is read: a BEIR folder (``beir``: its ``corpus.jsonl``), a JSONL file or a JSON array of
    records (``jsonl``) or a folder or file of text (``dir``: .txt, .md, .markdown, .rst); files may be
    gzip-compressed."""

    BEIR = "beir"
    JSONL = "jsonl"
    DIR = "dir"


@dataclass(frozen=True)
class InputProblem:
    """A record that could not be read: where it is, why, and the document id when it could be told."""

    path: Path
    line: int | None
    reason: str
    doc_id: str | None = None
    folder: bool = False  # a folder (or a broken link) of a text folder: it may hold the documents below doc_id

    def covers(self, doc_id: str) -> bool:
        """Whether the stored document ``doc_id`` may be this skipped record (or lie in this skipped folder)."""
        return covered_by([self])(doc_id)

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.reason}"


def covered_by(problems: Iterable[InputProblem]) -> Callable[[str], bool]:
    """Whether a stored document id may be one of ``problems``' skipped records or lie in one of their skipped
    folders (one set lookup and one prefix test per id, however many problems), compared in Unicode NFC: ids
    differing only in normalization are one document."""
    problems = [p for p in problems if p.doc_id is not None]
    ids = {unicodedata.normalize("NFC", p.doc_id) for p in problems}
    folders = tuple(unicodedata.normalize("NFC", f"{p.doc_id}/") for p in problems if p.folder)

    def covered(doc_id: str) -> bool:
        nfc = unicodedata.normalize("NFC", doc_id)
        return nfc in ids or nfc.startswith(folders)

    return covered


def unicode_forms(text: str) -> set[str]:
    """``text`` as written, composed (NFC) and decomposed (NFD): the spellings ("café" composed or with a combining
    accent) a document id may be stored under and still be the same id, as an index keeps the form it was given."""
    return {text, unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)}


class BadInputError(HybridRagError, ValueError):
    """Raised under the ``fail`` policy; the message (one line) names file, line and reason of each of
    ``problems`` (``problem``, the first, and ``more``), then ``hint``. ``skippable``: records (file, line, folder)
    the ``skip`` policy would have left out; else the source as a whole cannot be read (a missing
    ``corpus.jsonl``, a file of another type, damaged gzip data, a folder that cannot be listed), whatever the
    policy."""

    def __init__(
        self, problem: InputProblem, *, skippable: bool = False, more: Iterable[InputProblem] = (), hint: str = ""
    ):
        self.problems = [problem, *more]
        message = str(problem)
        if len(self.problems) > 1:
            stopped = "; reading stopped there" if len(self.problems) >= MAX_REPORTED_PROBLEMS else ""
            others = "; ".join(map(str, self.problems[1:]))
            message += f" (and {counted(len(self.problems) - 1, 'more bad record')}: {others}{stopped})"
        super().__init__(message + hint)
        self.problem = problem
        self.skippable = skippable


def compact_repr(report: Any, most: int = 5, chars: int | None = None) -> str:
    """A report dataclass's repr whose lists and dicts longer than ``most`` show their first ``most`` items and how
    many more: what a notebook shows for a report of 5,000 skipped lines (else about a megabyte). ``chars``: a
    string longer than that (a field, or an item of a list or dict) shows its first ``chars`` characters, ``…`` and
    its length, another item's repr its first ``chars`` characters."""
    shown = []
    for f in (f for f in fields(report) if f.repr):
        value = getattr(report, f.name)
        if isinstance(value, list | dict) and (len(value) > most or (chars and value)):
            more = [f"... {len(value) - most:,} more"] if len(value) > most else []
            if isinstance(value, dict):
                items = (f"{k!r}: {_cut(v, chars)}" for k, v in list(value.items())[:most])
                value = "{" + ", ".join([*items, *more]) + "}"
            else:
                value = "[" + ", ".join([*(_cut(v, chars) for v in value[:most]), *more]) + "]"
            shown.append(f"{f.name}={value}")
        else:
            shown.append(f"{f.name}={_cut(value, chars)}")
    return f"{type(report).__name__}({', '.join(shown)})"


def short_repr(obj: Any) -> str:
    """:func:`compact_repr` with long strings cut (``text='Pasta needs…' (1,234 chars)``): what a REPL or notebook
    shows of a list of hits, chunks or documents (the fields hold the whole text)."""
    return compact_repr(obj, chars=SHORT_REPR_CHARS)


SHORT_REPR_CHARS = 60


def _cut(value: Any, chars: int | None) -> str:
    if chars is None:
        return repr(value)
    if isinstance(value, str) and len(value) > chars:
        return f"{value[:chars] + '…'!r} ({len(value):,} chars)"
    shown = repr(value)
    return shown if len(shown) <= chars else shown[:chars] + "…"


@dataclass
class ReadReport:
    """What a read produced besides the documents: the skipped records."""

    skipped: list[InputProblem] = field(default_factory=list)

    __repr__ = compact_repr

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)


class DocumentReader:
    """Reads documents from a source, applying one bad-input policy and collecting a report."""

    def __init__(self, policy: BadInputPolicy | str = BadInputPolicy.FAIL, *, progress: bool = False):
        """``progress``: a progress bar over the files of a folder, or over the bytes of a JSON file
        (:func:`~retrieval.progress.progress_bar`)."""
        self.policy = choice(BadInputPolicy, policy, "bad input policy")
        self.progress = progress
        self.report = ReadReport()
        self._seen_ids: dict[str, InputProblem] = {}
        self._failed: list[InputProblem] = []  # under the fail policy, the bad records read so far

    # -- public -------------------------------------------------------------------------------------
    def read(self, path: str | Path, fmt: SourceFormat | str | None = None) -> Iterator[Document]:
        """Yield the documents of ``path``; ``fmt`` defaults to what the path looks like."""
        path = Path(path)
        fmt = choice(SourceFormat, fmt, "format") if fmt else detect_format(path)
        read = 0
        for doc in self._read(path, fmt):
            read += 1
            yield doc
        if self._failed:
            if not read and (nothing := nothing_to_index(path, fmt, self._failed)):  # a folder of PDFs: no record
                raise BadInputError(nothing)
            raise BadInputError(self._failed[0], skippable=True, more=self._failed[1:])

    # -- sources ------------------------------------------------------------------------------------
    def _read(self, path: Path, fmt: SourceFormat) -> Iterator[Document]:
        if fmt is SourceFormat.BEIR:
            if path.is_file():
                raise BadInputError(
                    InputProblem(path, None, "format 'beir' reads a folder holding corpus.jsonl, not a file")
                )
            yield from self._read_jsonl(path / "corpus.jsonl")
        elif fmt is SourceFormat.JSONL:
            yield from self._read_jsonl(path)
        else:
            yield from self._read_dir(path)

    def _read_jsonl(self, path: Path) -> Iterator[Document]:
        """The records of :func:`json_records`; a progress bar over the file's bytes."""
        for record in json_records(path, progress=self.progress):
            if record.problem is not None:
                doc = self._problem(path, record.line, record.problem, record.guessed_id)
            else:
                doc = self._record(path, record.line, record.value, record.where)
            if doc is not None:
                yield doc

    def _record(self, path: Path, line_no: int, record: Any, where: str = "") -> Document | None:
        """The document of JSON record ``record`` (``where``: what names it besides its line, ending in ': ')."""

        def bad(reason: str, doc_id: str | None = None) -> None:
            return self._problem(path, line_no, where + reason, doc_id)

        if not isinstance(record, dict):
            return bad(f"expected a JSON object, got {type(record).__name__}")
        id_field = "_id" if "_id" in record else "id"  # with both, 'id' is an ordinary field (metadata)
        doc_id = record.get(id_field)
        if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
            return bad("missing document id ('_id' or 'id')")
        if isinstance(doc_id, int) and not isinstance(doc_id, bool):
            doc_id = str(doc_id)  # numeric ids, as in BEIR corpora
        if not isinstance(doc_id, str):
            return bad(f"document id {id_field!r} must be a string or an integer, got {_json_type(doc_id)}")
        text = record.get("text")
        if not isinstance(text, str):
            return bad(f"document {doc_id!r}: missing or non-string 'text'", doc_id)
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            return bad(f"document {doc_id!r}: 'title' must be a string, got {_json_type(title)}", doc_id)
        metadata = record.get("metadata")
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict):
            return bad(f"document {doc_id!r}: 'metadata' must be an object", doc_id)
        extra = {k: v for k, v in record.items() if k not in RECORD_FIELDS and k != id_field}
        both = sorted(extra.keys() & metadata.keys())
        if both:
            return bad(f"document {doc_id!r}: {both[0]!r} is both a top-level field and in 'metadata'", doc_id)
        return self._document(path, line_no, doc_id, text, title or "", {**metadata, **extra}, where)

    def _read_dir(self, root: Path) -> Iterator[Document]:
        """The text files of folder ``root`` (or the one text file ``root``), one document each."""
        if root.is_file():
            files, root = [root], root.parent
        elif root.is_dir():
            unlisted: list[InputProblem] = []
            files = visible_files(root, unlisted)
            for problem in unlisted:
                self._skip(problem)
        else:
            raise BadInputError(InputProblem(root, None, "not a directory"))
        for path in progress_bar(files, progress=self.progress and len(files) > 1, desc="reading", unit="file"):
            doc_id = path_id(path, root)
            if has_lone_surrogate(doc_id):  # bytes the file system's encoding cannot decode, kept as surrogates
                self._problem(path, None, "file name is not valid UTF-8")
                continue
            if inner_suffix(path) not in TEXT_SUFFIXES:
                if (doc := self._formatted(path, doc_id)) is not None:
                    yield doc
                continue
            try:
                text = file_text(path, 4 * MAX_DOCUMENT_BYTES)  # UTF-16 may take twice UTF-8's bytes, or more
            except FileProblem as exc:
                self._problem(path, exc.line, exc.reason, doc_id)
                continue
            metadata: dict[str, Any] = {}
            if inner_suffix(path) in {".md", ".markdown"}:
                front, body = self._front_matter(path, doc_id, text)
                if front is None:
                    continue
                if len(body) < len(text) and not body.strip():  # front matter (maybe empty), then nothing
                    self._problem(path, None, f"document {doc_id!r}: no text after the front matter", doc_id)
                    continue
                text = body
                title = _markdown_title(front, text)
                metadata = {k: v for k, v in front.items() if k not in RESERVED_FRONT_MATTER}
            else:
                title = ""
            doc = self._document(
                path, None, doc_id, text, title or base_name(path), {**metadata, "source_path": doc_id}
            )
            if doc is not None:
                yield doc

    def _formatted(self, path: Path, doc_id: str) -> Document | None:
        """The document of a file read by a :mod:`retrieval.formats` reader (PDF, HTML...), or None: a file of a
        type read nowhere, or one its reader finds no document in (reported)."""
        reader = reader_for(inner_suffix(path))
        if reader is None:
            return self._problem(path, None, unsupported(path), doc_id)
        try:
            content: FileContent = reader(file_bytes(path, MAX_FILE_BYTES))
        except FileProblem as exc:
            return self._problem(path, exc.line, exc.reason, doc_id)
        for warning in content.warnings:
            log.warning("%s: %s", path, warning)
        metadata = {k: v for k, v in content.metadata.items() if k not in RESERVED_FRONT_MATTER}
        return self._document(
            path, None, doc_id, content.text, content.title or base_name(path), {**metadata, "source_path": doc_id}
        )

    def _front_matter(self, path: Path, doc_id: str, text: str) -> tuple[dict[str, Any] | None, str]:
        """A Markdown file's YAML front matter (a mapping between ``---`` lines at its start; ``...`` may close it)
        as stored metadata (:func:`json_metadata`: dates as ISO 8601 strings) and the text after it; empty front
        matter (nothing or only comments between the lines, as Jekyll writes it) is no metadata and leaves the text.
        ``({}, text)`` when it has none; YAML that is not valid or not a mapping (it may be Markdown: thematic
        breaks) is kept as text, with a warning naming its line. ``(None, text)``: a value that cannot be stored,
        reported as bad input at its key's line."""
        match = _FRONT_MATTER.match(text)
        if not match:
            return {}, text
        loader = yaml.SafeLoader(match.group(1))
        try:
            node = loader.get_single_node()
            fields = loader.construct_document(node) if node is not None else {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 2}" if mark is not None else str(path)  # line 1 is the opening '---'
            log.warning("%s: front matter is not valid YAML (%s): kept as text", where, getattr(exc, "problem", exc))
            return {}, text
        finally:
            loader.dispose()
        if not isinstance(fields, dict):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
            log.warning(
                "%s:%d: front matter is not a YAML mapping (%s): kept as text", path, node.start_mark.line + 2, kind
            )
            return {}, text
        for key, value in [*fields.items(), (None, None)]:  # each key at its line, then the whole (its size)
            try:
                metadata = json_metadata(fields if key is None else {key: value})
            except InvalidMetadataError as exc:
                line = next((k.start_mark.line + 2 for k, _ in node.value if k.value == str(key)), 1)
                return self._problem(path, line, f"document {doc_id!r}: front matter {exc}", doc_id), text
        return metadata, text[match.end() :]

    # -- shared checks ------------------------------------------------------------------------------
    def _document(
        self,
        path: Path,
        line: int | None,
        doc_id: str,
        text: str,
        title: str,
        metadata: dict[str, Any],
        where: str = "",
    ) -> Document | None:
        """``where``: what names the record besides its line (an array element), ending in ': '."""
        try:
            doc = check_document(Document(id=doc_id, text=text, title=title, metadata=metadata))
        except InvalidDocumentError as exc:  # an id that is not valid Unicode cannot name a stored document
            known = None if has_lone_surrogate(doc_id) else doc_id
            return self._problem(path, line, f"{where}document {doc_id!r}: {exc}", known)
        here = InputProblem(path, line, "")
        key = unicodedata.normalize("NFC", doc_id)  # "café" composed or decomposed: one id to a reader
        if key in self._seen_ids:
            first = self._seen_ids[key]
            first_at = f"{first.path}:{first.line}" if first.line is not None else str(first.path)
            if first.doc_id != doc_id or first.path != path:  # names that may look the same: escaped
                first_at = ascii(first_at) if first.path != path else first_at
                first_at += f" as {ascii(first.doc_id)}" if first.doc_id != doc_id else ""
                reason = f"{where}duplicate document id {ascii(doc_id)} (first seen at {first_at}"
                return self._problem(path, line, f"{reason}: the same id in another Unicode normalization)", doc_id)
            reason = f"{where}duplicate document id {doc_id!r} (first seen at {first_at})"
            return self._problem(path, line, reason, doc_id)
        self._seen_ids[key] = replace(here, doc_id=doc_id)
        return doc

    def _problem(self, path: Path, line: int | None, reason: str, doc_id: str | None = None) -> None:
        return self._skip(InputProblem(path, line, reason, doc_id))

    def _skip(self, problem: InputProblem) -> None:
        if self.policy is BadInputPolicy.FAIL:  # read on: a user fixes the first MAX_REPORTED_PROBLEMS in one pass
            self._failed.append(problem)
            if len(self._failed) >= MAX_REPORTED_PROBLEMS:
                raise BadInputError(self._failed[0], skippable=True, more=self._failed[1:])
            return None
        log.info("skipped %s", problem)  # callers report the skipped records (CLI, Dagster): once
        self.report.skipped.append(problem)
        return None


def _unreadable(path: Path, line: int | None, reason: str) -> BadInputError:
    """The error for a source file that cannot be read as a whole (whatever the policy)."""
    return BadInputError(InputProblem(path, line, reason))


class JsonRecord(NamedTuple):
    """A record of a JSON file at ``line`` (``where``: what else names it, ending in ': ', or ''): its JSON
    ``value``, or the ``problem`` of a JSON Lines line that does not parse (``guessed_id``: the id it seems to
    hold)."""

    line: int
    value: Any = None
    where: str = ""
    problem: str | None = None
    guessed_id: str | None = None


def json_records(path: Path, *, progress: bool = False) -> Iterator[JsonRecord]:
    """The records of JSON file ``path``: JSON Lines (a line that does not parse is one bad record); a JSON array
    of records (``element [3]``) when the file's first non-blank character is ``[``; a sequence of records
    written over several lines (``jq .``'s output) when its first non-blank line is ``{`` alone, or from the first
    such line on when the JSON Lines before it all parsed (a file whose first records are one a line, then
    pretty-printed). Those are read a window at a time (:func:`~retrieval.input_files.json_values`): JSON that is
    not valid there stops the read (:class:`BadInputError`), as does a file that cannot be read. ``progress``: a
    bar over the file's bytes."""
    first = first_line(path, _unreadable)
    if first.startswith(b"[") or first == b"{":
        array = first.startswith(b"[")
        for index, (line, value) in enumerate(json_values(path, _unreadable, progress=progress, too_deep=TOO_DEEP)):
            yield JsonRecord(line, value, f"element [{index}]: " if array else "")
        return
    spread_from, parsed = None, True  # the line a record written over several lines starts on
    with contextlib.closing(raw_lines(path, _unreadable, progress=progress)) as lines:
        for line_no, raw in numbered_lines(lines):
            stripped = raw.strip()
            if stripped == b"{" and parsed:
                spread_from = line_no
                break
            if stripped:
                record = _json_line(path, line_no, raw)
                parsed = parsed and record.problem is None
                yield record
    if spread_from is not None:  # read again from the start (the lines before are one value each), kept from there
        log.info("%s:%d: records written over several lines from here on", path, spread_from)
        try:
            for line, value in json_values(path, _unreadable, too_deep=TOO_DEEP):
                if line >= spread_from:
                    yield JsonRecord(line, value)
        except BadInputError as exc:
            hint = f" (records are written over several lines from line {spread_from} on, as jq . writes JSON)"
            raise BadInputError(exc.problem, hint=hint) from None


def _json_line(path: Path, line_no: int, raw: bytes) -> JsonRecord:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        guessed = _guess_id(raw.decode("utf-8", "surrogateescape"))  # an id with such a byte: unreadable
        return JsonRecord(line_no, problem=utf8_problem(raw, exc, path), guessed_id=guessed)
    try:
        return JsonRecord(line_no, json.loads(line))
    except json.JSONDecodeError as exc:
        reason = f"malformed JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"
        if not line[exc.pos :].strip():  # the parser wanted more: the record goes on over the next lines, or is cut
            reason += f" (the record does not end on this line: {_spread_hint(path)})"
        return JsonRecord(line_no, problem=reason, guessed_id=_guess_id(line))
    except RecursionError:  # Python's parser gives up at about 1,000 levels
        return JsonRecord(line_no, problem=f"JSON nested too deeply ({TOO_DEEP})", guessed_id=_guess_id(line))


def _spread_hint(path: Path) -> str:
    """What to tell of a JSON Lines record of ``path`` that is not whole on its line."""
    out = f"{base_name(path)}.jsonl" if file_type(path) != ".jsonl" else f"{base_name(path)}-lines.jsonl"
    return f"cut, or pretty-printed over several lines? JSON Lines holds one a line: jq -c . {path.name} > {out}"


def text_problem(text: object) -> str | None:
    """Why a document's text cannot be indexed (not a string, empty, too large), or None when it can."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "empty text"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return f"text is {NOT_UNICODE}"
    if size > MAX_DOCUMENT_BYTES:
        return f"{size:,} bytes exceeds the {MAX_DOCUMENT_BYTES:,}-byte limit per document"
    return None


class InvalidMetadataError(InvalidDocumentError):
    """A metadata value cannot be stored; the message names its key (``a.b`` for nested keys) and why."""


def json_metadata(metadata: object) -> dict[str, Any]:
    """``metadata`` as it is stored: JSON values, with dates and datetimes as ISO 8601 strings (datetimes in UTC,
    naive ones taken as UTC, as the date filters read them), objects and lists nested at most
    :data:`MAX_METADATA_DEPTH` levels (the metadata object itself is the first), at most :data:`MAX_METADATA_BYTES`
    as JSON; :class:`InvalidMetadataError` for anything else."""
    if not isinstance(metadata, dict):
        raise InvalidMetadataError(f"metadata must be a dict, got {type(metadata).__name__}")
    out = _json_object(metadata, "", 1)
    size = metadata_bytes(out)
    if size > MAX_METADATA_BYTES:
        raise InvalidMetadataError(
            f"metadata is {size:,} bytes as JSON, over the {MAX_METADATA_BYTES:,}-byte limit (it is stored with "
            "every chunk); put long content in the text"
        )
    return out


def metadata_bytes(metadata: dict[str, Any]) -> int:
    """The size of (stored) ``metadata`` as compact UTF-8 JSON, as it counts towards the limits."""
    return len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _json_object(value: dict, prefix: str, depth: int) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidMetadataError(f"metadata {prefix + repr(key)}: keys must be strings")
        if has_lone_surrogate(key):
            raise InvalidMetadataError(f"metadata {prefix + key!r}: the key is {NOT_UNICODE}")
        out[key] = _json_value(item, prefix + key, depth)
    return out


def _json_value(value: object, key: str, depth: int) -> Any:
    """``value`` as stored; ``depth``: the objects and lists around it (the metadata object is 1)."""
    if isinstance(value, list | tuple | dict) and depth >= MAX_METADATA_DEPTH:
        raise InvalidMetadataError(
            f"metadata {key!r}: nested deeper than {MAX_METADATA_DEPTH} levels of objects and lists"
        )
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if has_lone_surrogate(value):
            raise InvalidMetadataError(f"metadata {key!r}: the value is {NOT_UNICODE}")
        return str(value)
    if isinstance(value, numbers.Integral):  # numpy integers too
        if not INT64_MIN <= int(value) <= INT64_MAX:
            raise InvalidMetadataError(
                f"metadata {key!r}: {int(value)} is outside the 64-bit integer range a payload holds "
                "(-2**63 to 2**63-1); store it as a string"
            )
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise InvalidMetadataError(f"metadata {key!r}: {value!r} is not a finite number")
        return float(value)
    if isinstance(value, dt.datetime):
        value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_json_value(item, key, depth + 1) for item in value]
    if isinstance(value, dict):
        return _json_object(value, f"{key}.", depth + 1)
    raise InvalidMetadataError(
        f"metadata {key!r}: {type(value).__name__} values cannot be stored; use strings, numbers, booleans, None, "
        "lists, dicts, dates or datetimes"
    )


def validate_documents(documents: Iterable[Document]) -> list[Document]:
    """The documents as a list, or :class:`InvalidDocumentError` for the first that cannot be indexed.

    The one check behind every entry point (readers, ``Indexer.index``, the CLI, the Dagster assets): each
    document passes :func:`check_document`, and ids are unique within one call.
    """
    if isinstance(documents, Document):
        raise InvalidDocumentError("expected a list of Documents, got one Document: pass [document]")
    docs = list(documents)
    first_at: dict[str, int] = {}
    for position, doc in enumerate(docs):
        if not isinstance(doc, Document):
            raise InvalidDocumentError(f"documents[{position}]: expected a Document, got {type(doc).__name__}")
        try:
            docs[position] = check_document(doc)
        except InvalidDocumentError as exc:
            raise type(exc)(f"documents[{position}] (id {doc.id!r}): {exc}") from None
        key = unicodedata.normalize("NFC", doc.id)  # ids differing only in Unicode normalization: one id
        if key in first_at:
            raise InvalidDocumentError(
                f"documents[{position}]: duplicate document id {doc.id!r} (first at documents[{first_at[key]}]"
                + ("" if docs[first_at[key]].id == doc.id else f" as {ascii(docs[first_at[key]].id)}")
                + ")"
            )
        first_at[key] = position
    return docs


def check_document(doc: Document) -> Document:
    """``doc`` as it is stored, or :class:`InvalidDocumentError` saying why it cannot be: the id and title must
    be valid Unicode, the title a string (None: no title), the text pass :func:`text_problem` and the metadata
    :func:`json_metadata`; text, title and metadata together at most :data:`MAX_DOCUMENT_BYTES`."""
    if has_lone_surrogate(doc.id):
        raise InvalidDocumentError(f"id is {NOT_UNICODE}")
    title = "" if doc.title is None else doc.title
    if not isinstance(title, str):
        raise InvalidDocumentError(f"title must be a string or None, got {type(title).__name__} {title!r}")
    if has_lone_surrogate(title):
        raise InvalidDocumentError(f"title is {NOT_UNICODE}")
    reason = text_problem(doc.text)
    if reason:
        raise InvalidDocumentError(reason)
    metadata = json_metadata(doc.metadata)
    size = len(doc.text.encode("utf-8")) + len(title.encode("utf-8")) + metadata_bytes(metadata)
    if size > MAX_DOCUMENT_BYTES:
        raise InvalidDocumentError(
            f"{size:,} bytes of text, title and metadata exceed the {MAX_DOCUMENT_BYTES:,}-byte limit per document"
        )
    if metadata != doc.metadata or title is not doc.title:
        doc = replace(doc, title=title, metadata=metadata)
    return doc


def document_suffixes() -> set[str]:
    """The suffixes of the files a folder's documents are read from: text and Markdown, and those a
    :mod:`retrieval.formats` reader reads (PDF, HTML...)."""
    return TEXT_SUFFIXES | READER_MODULES.keys()


def unsupported(path: Path) -> str:
    """Why file ``path``, of a type not read, is not: its type, and the type to save it as where there is one."""
    reason = f"{UNSUPPORTED} {file_type(path) or '(none)'!r}"
    save_as = SAVE_AS.get(inner_suffix(path))
    return f"{reason} (save it as {save_as} to index it)" if save_as else reason


def detect_format(path: Path) -> SourceFormat:
    """BEIR when ``path`` is a directory holding corpus.jsonl, else a folder of files; for a file, by its suffix
    (under ``.gz``): JSONL (.jsonl, .json, .ndjson) or one text document (``dir``, read as a folder holding only
    that file)."""
    if path.is_dir():
        return SourceFormat.BEIR if (path / "corpus.jsonl").is_file() else SourceFormat.DIR
    suffix = inner_suffix(path)
    if suffix in JSONL_SUFFIXES:
        return SourceFormat.JSONL
    if not path.exists():
        raise BadInputError(InputProblem(path, None, "no such file or directory"))
    if suffix in document_suffixes():
        return SourceFormat.DIR
    jsonl, text = ", ".join(sorted(JSONL_SUFFIXES)), ", ".join(sorted(document_suffixes()))
    reason = (
        f"{unsupported(path)}: a file is read as JSONL ({jsonl}) or as one text "
        f"document ({text}), each maybe gzip-compressed (.gz); format 'jsonl' reads any file as JSONL"
    )
    raise BadInputError(InputProblem(path, None, reason))


def nothing_to_index(
    path: Path, fmt: SourceFormat | str | None, skipped: Sequence[InputProblem]
) -> InputProblem | None:
    """Why source ``path`` (read as ``fmt``, by default detected) gave no document when nothing in it was a record
    (``skipped``, the records left out, are only files of unsupported types, or none): what it was read for, and a
    few of its files of other types; None when it held records that were bad input (the reader names those)."""
    if any(not p.reason.startswith(UNSUPPORTED) for p in skipped):
        return None
    fmt = choice(SourceFormat, fmt, "format") if fmt else detect_format(path)
    if fmt is not SourceFormat.DIR:
        file = path / "corpus.jsonl" if fmt is SourceFormat.BEIR else path
        return InputProblem(file, None, "no documents to index: it holds no JSON record; nothing was written")
    text = ", ".join(sorted(document_suffixes()))
    reason = (
        f"no documents to index: a folder's documents are read from its files of types {text} "
        "(each maybe gzip-compressed: .gz; hidden files and Office lock files ~$* left out)"
    )
    if skipped:
        names = ", ".join(str(p.doc_id) for p in skipped[:3])
        names += f" and {len(skipped) - 3:,} more" if skipped[3:] else ""
        reason += f", and it holds only {counted(len(skipped), 'file')} of other types: {names}"
        if json_file := next((p.path for p in skipped if inner_suffix(p.path) in JSONL_SUFFIXES), None):
            reason += f"; a JSON Lines file is read when named: hybrid-rag index {json_file}"
    else:
        reason += ", and it holds none"
    return InputProblem(path, None, reason + "; nothing was written")


def all_skipped(path: Path, skipped: Sequence[InputProblem]) -> InputProblem:
    """Why source ``path`` gave no document when it held records, every one bad input (``skipped``, at least one):
    how many, and the commonest reasons (three at most) with a few records each."""
    by_reason: dict[str, list[str]] = {}
    for problem in skipped:
        line = f"line {problem.line}" if problem.line is not None else None
        by_reason.setdefault(problem.reason, []).append(line or problem.doc_id or problem.path.name)
    reasons = sorted(by_reason.items(), key=lambda item: -len(item[1]))
    shown = "; ".join(
        f"{reason}: {', '.join(names[:3])}" + (f" and {len(names) - 3:,} more" if names[3:] else "")
        for reason, names in reasons[:3]
    )
    others = f"; {counted(len(reasons) - 3, 'other reason')}" if reasons[3:] else ""
    every = f"all {counted(len(skipped), 'record')}" if skipped[1:] else "its one record"
    return InputProblem(path, None, f"no documents to index: {every} skipped as bad input ({shown}{others})")


def read_documents(
    path: str | Path,
    fmt: SourceFormat | str | None = None,
    policy: BadInputPolicy | str = BadInputPolicy.FAIL,
    *,
    progress: bool = False,
) -> tuple[list[Document], ReadReport]:
    """Read all documents of a source (``fmt``: a :class:`SourceFormat`, by default detected as ``hybrid-rag index``
    does); returns them with the report of skipped records. Bad input raises :class:`BadInputError` (file, line,
    reason) under the ``fail`` policy; ``skip`` leaves such records out and lists them in the report. ``progress``:
    a bar over a folder's files (``hybrid-rag index`` shows one)."""
    reader = DocumentReader(policy, progress=progress)
    docs = list(reader.read(path, fmt))
    return docs, reader.report


OFFICE_LOCK_PREFIX = "~$"  # Word, Excel and PowerPoint's owner file of an open document: "~$report.docx"


def visible_files(root: Path, unlisted: list[InputProblem] | None = None) -> list[Path]:
    """The files under ``root``, sorted, leaving out hidden ones: any name below ``root`` starting with '.'
    (``.git/``, ``.obsidian/``, ``.DS_Store``, LibreOffice's lock files ``.~lock.x.odt#``); ``root`` itself may be
    hidden. Microsoft Office's lock files (``~$report.docx``, left beside a document while it is open) are left out
    too: they are no documents. Linked folders are followed,
    except a link to a folder above it, ``root`` and its parents included (which would loop, or walk the tree
    ``root`` lies in).

    A subfolder that cannot be listed and a broken link are problems (``folder`` set, ``doc_id`` their path below
    ``root``: what they held is unknown): appended to ``unlisted``, or without it the first raised as
    :class:`BadInputError`, as is a ``root`` that cannot be listed."""
    found: list[InputProblem] = []

    def unreadable(exc: OSError) -> None:
        path = Path(exc.filename or root)
        problem = InputProblem(path, None, f"cannot read folder: {exc.strerror or exc}")
        if path == root:
            raise BadInputError(problem) from exc
        found.append(replace(problem, doc_id=path_id(path, root), folder=True))

    files = []
    real_root = Path(os.path.realpath(root))
    # each folder's real path and those of every folder above it
    above: dict[str, set[str]] = {str(root): {str(real_root), *map(str, real_root.parents)}}
    for folder, subfolders, names in os.walk(root, onerror=unreadable, followlinks=True):
        chain = above.pop(folder)
        keep = []
        for name in subfolders:
            real = os.path.realpath(os.path.join(folder, name))
            if name.startswith("."):
                continue
            if real in chain:
                log.info("not following %s: it links to a folder above it", Path(folder, name))
                continue
            above[os.path.join(folder, name)] = chain | {real}
            keep.append(name)
        subfolders[:] = keep
        for name in names:
            path = Path(folder, name)
            if name.startswith((".", OFFICE_LOCK_PREFIX)):
                continue
            if path.is_file():
                files.append(path)
            elif path.is_symlink() and not path.exists():
                reason = f"broken link: its target {os.readlink(path)} does not exist"
                found.append(InputProblem(path, None, reason, path_id(path, root), folder=True))
    if unlisted is None and found:
        raise BadInputError(found[0])
    if unlisted is not None:
        unlisted.extend(sorted(found, key=lambda p: p.path))
    return sorted(files)


def ids_from_folders_above(path: Path, doc_id: str) -> list[tuple[Path, str]]:
    """(folder, id) for each folder above text folder ``path`` (or above the folder of text file ``path``),
    nearest first: the id document ``doc_id`` of ``path`` has when that folder is indexed instead."""
    root = Path(os.path.abspath(path))
    root = root if root.is_dir() else root.parent
    return [(folder, f"{path_id(root, folder)}/{doc_id}") for folder in root.parents]


def path_id(path: Path, root: Path) -> str:
    """The id of ``path`` below folder ``root``: its relative path with ``/``, in Unicode NFC (a file system may
    give a name decomposed, "e" + U+0301 as macOS does, or composed: the same file, the same id)."""
    return unicodedata.normalize("NFC", path.relative_to(root).as_posix())


def _guess_id(line: str) -> str | None:
    """The document id of a record that does not parse, when the line still tells it for sure, else None: a record
    without a readable id, which keeps every stored document absent from the source.

    The keys of the top-level object are read as JSON strings (escapes decoded) and, as for a valid line, ``_id``
    wins over ``id``. None when the id is not a readable string or integer (a bad escape, a byte that is not UTF-8,
    blank), when the key appears twice with two values or the brackets do not pair, when anything follows the
    object, and for ``id`` unless the whole object was read with no ``_id`` anywhere (a damaged or cut ``_id``
    would be the id)."""
    tokens = [m.group() for m in _JSON_TOKEN.finditer(line)]
    brackets: list[str] = []
    values: dict[str, list[str | None]] = {"_id": [], "id": []}
    end = None  # the index of the token closing the top-level object
    for i, token in enumerate(tokens):
        if token in ("{", "["):
            brackets.append(token)
        elif token in ("}", "]"):
            if not brackets or brackets.pop() + token not in ("{}", "[]"):
                return None
            if not brackets:
                end = i
                break
        elif token == '"':
            break  # a string left open: the rest of the line is its text
        elif brackets == ["{"] and token.startswith('"') and tokens[i + 1 : i + 2] == [":"]:
            key = _json_id(token, key=True)
            if key in values:
                values[key].append(_json_id(tokens[i + 2]) if i + 2 < len(tokens) else None)
    if end is not None and end + 1 < len(tokens):
        return None  # more after the object: another record, maybe
    if values["_id"]:
        found = values["_id"]
    elif end is not None and not _UNDERSCORE_ID.search(line) and not any(_escaped_id_key(t) for t in tokens):
        found = values["id"]
    else:
        return None
    return found[0] if found and None not in found and len(set(found)) == 1 else None


def _escaped_id_key(token: str) -> bool:
    """Whether ``token`` is the string ``"_id"`` written with escapes (``"\\u005fid"``)."""
    return token.startswith('"') and "\\" in token and _json_id(token, key=True) == "_id"


def _json_id(token: str, key: bool = False) -> str | None:
    """JSON token ``token`` as a document id (a string or an integer, as text) or, with ``key``, as an object key
    (a string); None when it is neither, or is blank or not valid Unicode."""
    try:
        value = json.loads(token)
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, str if key else str | int):
        return None
    value = str(value)
    return value if value.strip() and not has_lone_surrogate(value) else None


def _markdown_title(front: dict[str, Any], text: str) -> str:
    """A Markdown file's title: its front matter's ``title:`` (``front``, as stored), else the text of its first
    non-empty level-one heading (``# Title`` or ``Title`` underlined with ``===``) as CommonMark reads ``text``, the
    text after the front matter (not a code block), else ''. Only the text up to a line that may be such a
    heading is parsed (in doubling steps): long files stay cheap."""
    title = front.get("title")
    if isinstance(title, str | int | float) and not isinstance(title, bool) and str(title).strip():
        return str(title).strip()
    lines = text.splitlines(keepends=True)
    parsed = 0
    for i, line in enumerate(lines):
        if i < parsed or not _H1_LINE.match(line):
            continue
        parsed = max(i + 1, 2 * parsed)
        tokens = _COMMONMARK.parse("".join(lines[:parsed]))
        for opening, inline in itertools.pairwise(tokens):
            if opening.type == "heading_open" and opening.tag == "h1" and inline.content.strip():
                return inline.content.strip()
    return ""


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (e.g. a cut emoji's ``\\ud83d``): no UTF-8 encoding exists."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _json_type(value: object) -> str:
    """JSON's name for the type of a parsed value."""
    if isinstance(value, float):
        return f"a decimal number ({value!r})"
    names = {bool: "a boolean", int: "a number", str: "a string", list: "an array"}
    return {dict: "an object", **names}.get(type(value), type(value).__name__)
