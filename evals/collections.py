"""Test collections in BEIR layout, and a train-only view for tuning code.

A BEIR directory holds ``corpus.jsonl`` (``_id``, ``title``, ``text``, ``metadata``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (header ``query-id<TAB>corpus-id<TAB>score``); a folder with only
the last two judges a collection indexed from elsewhere (a text folder, a JSONL file). Ids are read in Unicode NFC
(as the index treats them) and a UTF-8 byte order mark is ignored. The public
BEIR collections are zip archives at::

    https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip

(e.g. ``scifact``, ``nfcorpus``, ``fiqa``), each unpacking to a ``{name}/`` folder in this layout;
:func:`download_beir` fetches and unpacks one. The project ships a small original collection,
:func:`sample_collection`. Queries and judgements already in Python dicts need no files:
:meth:`EvalCollection.from_dicts`.

Tuning code must only ever see a :class:`TrainSplitView`: it exposes the train split's queries and
judgements and raises :class:`PermissionError` when asked for any other split, so test judgements cannot
leak into tuning.
"""

from __future__ import annotations

import json
import numbers
import re
import shutil
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.metrics import nfc
from retrieval.documents import Document, json_records
from retrieval.errors import InputFormatError, InputNotFoundError, InvalidArgumentError, not_one_string
from retrieval.input_files import text_lines
from retrieval.wording import counted

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
SAMPLE_NAME = "sample"
QRELS_HEADER = ("query-id", "corpus-id", "score")


class CollectionFormatError(InputFormatError):
    """A malformed line of a collection file; the message starts with ``file:line``."""

    def __init__(self, path: Path, line: int | None, reason: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = path, line, reason


@dataclass(frozen=True)
class EvalCollection:
    """A BEIR-layout collection at ``root``; files are read on each call (they are small or streamed).
    :meth:`from_dicts` makes one from Python dicts instead (an :class:`InMemoryCollection`)."""

    name: str
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def corpus_path(self) -> Path:
        return self.root / "corpus.jsonl"

    @property
    def queries_path(self) -> Path:
        return self.root / "queries.jsonl"

    def qrels_path(self, split: str) -> Path:
        return self.root / "qrels" / f"{split}.tsv"

    def splits(self) -> list[str]:
        """Names of the available qrels splits, sorted."""
        return sorted(p.stem for p in (self.root / "qrels").glob("*.tsv"))

    def queries(self) -> dict[str, str]:
        """All queries, ``{query_id: text}``."""
        out: dict[str, str] = {}
        for line_no, record in _json_lines(self.queries_path):
            qid, text = record.get("_id"), record.get("text")
            if qid is None or str(qid).strip() == "":
                raise CollectionFormatError(self.queries_path, line_no, "missing query id '_id'")
            if not isinstance(text, str):
                raise CollectionFormatError(self.queries_path, line_no, f"query {qid!r}: missing 'text'")
            if not text.strip():  # a search would refuse it half way through an evaluation
                raise CollectionFormatError(self.queries_path, line_no, f"query {qid!r}: empty text")
            if nfc(str(qid)) in out:
                raise CollectionFormatError(self.queries_path, line_no, f"duplicate query id {qid!r}")
            out[nfc(str(qid))] = text
        return out

    def doc_ids(self) -> set[str]:
        """Ids of all corpus documents, in NFC; empty without a corpus file. The file is read as the index reads
        it (:func:`retrieval.documents.json_records`: gzip, UTF-16, a JSON array)."""
        ids: set[str] = set()
        if not self.corpus_path.is_file():
            return ids
        for record in json_records(self.corpus_path):
            if record.problem is not None:
                raise CollectionFormatError(self.corpus_path, record.line, record.where + record.problem)
            if not isinstance(record.value, dict):
                raise CollectionFormatError(self.corpus_path, record.line, record.where + "expected a JSON object")
            doc_id = record.value.get("_id" if "_id" in record.value else "id")  # as the index reads it
            if doc_id is None or str(doc_id).strip() == "":
                reason = "missing document id ('_id' or 'id')"
                raise CollectionFormatError(self.corpus_path, record.line, record.where + reason)
            ids.add(nfc(str(doc_id)))
        return ids

    def qrels(self, split: str) -> dict[str, dict[str, int]]:
        """Judgements of ``split``: ``{query_id: {doc_id: grade}}``."""
        path = self.qrels_path(split)
        if not path.is_file():
            available = ", ".join(self.splits())
            if not available:  # qrels of another name (test.txt, test.qrels) are no split
                found = sorted(f.name for f in path.parent.glob("*"))[:5]
                available = "none: qrels/ holds no SPLIT.tsv file" + (f" ({', '.join(found)})" if found else "")
            raise InputNotFoundError(f"{self.name}: no split {split!r} ({path} is missing); available: {available}")
        return read_qrels(path)

    def split_queries(self, split: str) -> dict[str, str]:
        """The queries judged in ``split``, ``{query_id: text}``, in qrels order."""
        return _judged_queries(self.queries(), self.qrels(split), self.qrels_path(split))

    def train_view(self, split: str = "train") -> TrainSplitView:
        return TrainSplitView(self, split)

    @classmethod
    def from_dicts(
        cls,
        name: str,
        queries: Mapping[str, str],
        qrels: Mapping[str, Mapping[str, int]],
        corpus: Iterable[str | Document] | None = None,
        *,
        split: str = "test",
    ) -> EvalCollection:
        """A collection held in memory: ``queries`` (``{query_id: text}``) and ``qrels`` (``{query_id: {doc_id:
        grade}}``) as the one split ``split``; ``corpus``: the corpus' document ids (or its Documents, or a
        dict keyed by id), for the evaluation's ``judged_not_in_corpus``. Checked as the files are, in one
        :class:`InvalidArgumentError` naming the query: ids must be non-empty strings, texts non-empty, grades
        integers, every judged query must be in ``queries``; ids are taken in Unicode NFC."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgumentError(f"collection name must be a non-empty string, got {name!r}")
        if not isinstance(split, str) or not split.strip():
            raise InvalidArgumentError(f"{name}: split must be a non-empty string, got {split!r}")
        texts = _checked_queries(name, queries)
        judged = _checked_qrels(name, qrels, texts)
        ids = None if corpus is None else _checked_corpus(name, corpus)
        return InMemoryCollection(name, Path(IN_MEMORY), texts, {split: judged}, ids)


IN_MEMORY = "<in memory>"  # the root an in-memory collection shows: it has no folder


@dataclass(frozen=True)
class InMemoryCollection(EvalCollection):
    """Queries, judgements and corpus ids held in memory (:meth:`EvalCollection.from_dicts`, which checks them);
    it has no files: asking for one is an :class:`InputNotFoundError`. Compared by name and content."""

    query_texts: Mapping[str, str] = field(default_factory=dict, repr=False)
    judgements: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict, repr=False)
    corpus_ids: frozenset[str] | None = field(default=None, repr=False)

    @property
    def corpus_path(self) -> Path:
        raise self._no_file("corpus.jsonl")

    @property
    def queries_path(self) -> Path:
        raise self._no_file("queries.jsonl")

    def qrels_path(self, split: str) -> Path:
        raise self._no_file(f"qrels/{split}.tsv")

    def splits(self) -> list[str]:
        return sorted(self.judgements)

    def queries(self) -> dict[str, str]:
        return dict(self.query_texts)

    def doc_ids(self) -> set[str]:
        """The corpus ids given (empty without a corpus, as for a folder without ``corpus.jsonl``)."""
        return set(self.corpus_ids or ())

    def qrels(self, split: str) -> dict[str, dict[str, int]]:
        if split not in self.judgements:
            raise InputNotFoundError(f"{self.name}: no split {split!r}; available: {', '.join(self.splits())}")
        return {qid: dict(docs) for qid, docs in self.judgements[split].items()}

    def split_queries(self, split: str) -> dict[str, str]:
        return {qid: self.query_texts[qid] for qid in self.qrels(split)}  # every judged query has a text (checked)

    def _no_file(self, what: str) -> InputNotFoundError:
        return InputNotFoundError(f"{self.name}: held in memory (EvalCollection.from_dicts), it has no {what}")


class HeldOutSplitError(InvalidArgumentError, PermissionError):
    """Tuning code asked for a held-out split (``test``, or any split but its own)."""


class TrainSplitView:
    """What tuning code may see of a collection: the corpus and one split (``train``) only.

    Asking for another split raises :class:`HeldOutSplitError` (a :class:`PermissionError`). The wrapped
    collection is kept private; this is a guard against mistakes, not a security boundary.
    """

    __slots__ = ("_collection", "_split")

    def __init__(self, collection: EvalCollection, split: str = "train"):
        if split == "test":
            raise HeldOutSplitError(
                f"{collection.name}: the 'test' split is held out: tuning never reads it (tune on train, or on "
                "another split that is not evaluated)"
            )
        if split not in collection.splits():
            raise InputNotFoundError(
                f"{collection.name}: no {split!r} split to tune on; available: {', '.join(collection.splits())}"
            )
        self._collection = collection
        self._split = split

    def __repr__(self) -> str:
        return f"TrainSplitView({self._collection.name!r}, split={self._split!r})"

    @property
    def name(self) -> str:
        return self._collection.name

    @property
    def split(self) -> str:
        return self._split

    @property
    def corpus_path(self) -> Path:
        return self._collection.corpus_path

    def doc_ids(self) -> set[str]:
        return self._collection.doc_ids()

    def splits(self) -> list[str]:
        return [self._split]

    def queries(self) -> dict[str, str]:
        """Only the queries judged in the tuning split."""
        return self._collection.split_queries(self._split)

    def qrels(self, split: str | None = None) -> dict[str, dict[str, int]]:
        return self._collection.qrels(self._allowed(split))

    def split_queries(self, split: str | None = None) -> dict[str, str]:
        return self._collection.split_queries(self._allowed(split))

    def _allowed(self, split: str | None) -> str:
        if split is not None and split != self._split:
            raise HeldOutSplitError(
                f"{self._collection.name}: split {split!r} is held out; tuning code may only read "
                f"the {self._split!r} split"
            )
        return self._split


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (``query-id, corpus-id, score``; the header line is optional); ids in NFC."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for line_no, line in text_lines(path, CollectionFormatError):  # a leading BOM (Excel's "CSV UTF-8") is not an id
        if not line.strip():
            continue
        fields = line.split("\t")
        if line_no == 1 and tuple(f.strip().lower() for f in fields) == QRELS_HEADER:
            continue
        if len(fields) != 3:
            reason = f"expected 3 tab-separated fields 'query-id<TAB>corpus-id<TAB>score', got {len(fields)}"
            words = line.split()
            if len(fields) == 1 and len(words) == 3:
                reason += " (they are separated by spaces: use tabs)"
            elif len(words) == 4 and (words[1].isdigit() or words[1] == "Q0"):  # TREC's iteration column
                reason += " (a TREC qrels line 'query-id iteration corpus-id score'? drop its second column)"
            elif len(fields) > 3 and not any(f.strip() for f in fields[3:]):
                reason += " (the line ends with a tab after the score: remove it)"
            elif len(fields) > 3:
                reason += f" (an extra field after the score: {fields[3].strip()[:40]!r})"
            raise CollectionFormatError(path, line_no, reason)
        qid, doc_id, score_text = (nfc(f.strip()) for f in fields)
        if not qid or not doc_id:
            raise CollectionFormatError(path, line_no, "empty query-id or corpus-id")
        try:
            score = int(score_text)
        except ValueError:
            reason = f"score {score_text!r} is not an integer"
            if line_no == 1:  # a header with other names ("query_id doc_id relevance") is not skipped
                reason += " (a header line must read 'query-id<TAB>corpus-id<TAB>score')"
            raise CollectionFormatError(path, line_no, reason) from None
        previous = qrels.setdefault(qid, {}).get(doc_id)
        if previous is not None and previous != score:
            raise CollectionFormatError(
                path,
                line_no,
                f"({qid}, {doc_id}) judged {score} here but {previous} on line {first_seen[(qid, doc_id)]}",
            )
        first_seen.setdefault((qid, doc_id), line_no)
        qrels[qid][doc_id] = score
    return qrels


def sample_collection() -> EvalCollection:
    """The small original collection shipped with the package (``evals/sample``)."""
    return EvalCollection(SAMPLE_NAME, Path(__file__).parent / "sample")


def load_collection(path_or_name: str | Path) -> EvalCollection:
    """A collection from a BEIR directory, or the shipped one by the name ``"sample"``. ``corpus.jsonl`` may be
    missing (a folder of queries and qrels for a collection indexed from elsewhere): what needs it says so."""
    if str(path_or_name) == SAMPLE_NAME:
        return sample_collection()
    root = Path(path_or_name).expanduser()
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: not a directory (expected a BEIR collection or the name 'sample')")
    missing = [n for n in ("queries.jsonl", "qrels") if not (root / n).exists()]
    if missing:
        raise InputNotFoundError(f"{root}: not a BEIR collection, missing {', '.join(missing)}")
    return EvalCollection(root.resolve().name, root)


def download_beir(name: str, dest: str | Path, url: str = BEIR_URL) -> EvalCollection:
    """Download and unpack the BEIR collection ``name`` into ``dest/name`` (skipped if already there).

    ``url`` is a pattern with ``{name}``; it defaults to the canonical BEIR location (:data:`BEIR_URL`).
    """
    if not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
        raise ValueError(f"not a BEIR collection name: {name!r}")
    dest = Path(dest)
    target = dest / name
    if not (target / "corpus.jsonl").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        archive = dest / f"{name}.zip"
        with urllib.request.urlopen(url.format(name=name)) as response, archive.open("wb") as out:
            shutil.copyfileobj(response, out)
        with zipfile.ZipFile(archive) as zf:
            root = dest.resolve()
            for member in zf.namelist():
                if not (dest / member).resolve().is_relative_to(root):
                    raise CollectionFormatError(archive, None, f"unsafe path in archive: {member!r}")
            zf.extractall(dest)
        archive.unlink()
    return load_collection(target)


def _judged_queries(
    queries: dict[str, str], qrels: Mapping[str, Mapping[str, int]], qrels_path: Path
) -> dict[str, str]:
    unknown = [qid for qid in qrels if qid not in queries]
    if unknown:
        raise CollectionFormatError(
            qrels_path, None, f"{counted(len(unknown), 'query id')} not in queries.jsonl, e.g. {unknown[:5]}"
        )
    return {qid: queries[qid] for qid in qrels}


def _checked_queries(name: str, queries: Mapping[str, str]) -> dict[str, str]:
    """``queries`` with ids in NFC, or the first problem as an :class:`InvalidArgumentError`."""
    if not isinstance(queries, Mapping):
        raise InvalidArgumentError(f"{name}: queries must be a dict {{query_id: text}}, got {type(queries).__name__}")
    out: dict[str, str] = {}
    for qid, text in queries.items():
        _check_id(name, "query id", qid)
        if not isinstance(text, str):
            raise InvalidArgumentError(f"{name}: query {qid!r}: text must be a string, got {type(text).__name__}")
        if not text.strip():  # a search would refuse it half way through an evaluation
            raise InvalidArgumentError(f"{name}: query {qid!r}: empty text")
        if nfc(qid) in out:
            raise InvalidArgumentError(f"{name}: duplicate query id {qid!r} (another key is the same id in NFC)")
        out[nfc(qid)] = text
    return out


def _checked_qrels(
    name: str, qrels: Mapping[str, Mapping[str, int]], queries: Mapping[str, str]
) -> dict[str, dict[str, int]]:
    """``qrels`` with ids in NFC and grades as ``int``, or the first problem as an :class:`InvalidArgumentError`."""
    if not isinstance(qrels, Mapping):
        raise InvalidArgumentError(
            f"{name}: qrels must be a dict {{query_id: {{doc_id: grade}}}}, got {type(qrels).__name__}"
        )
    if not qrels:
        raise InvalidArgumentError(f"{name}: qrels is empty: judge at least one query")
    out: dict[str, dict[str, int]] = {}
    for qid, judged in qrels.items():
        _check_id(name, "query id in qrels", qid)
        if not isinstance(judged, Mapping) or not judged:
            raise InvalidArgumentError(f"{name}: qrels of query {qid!r}: expected a non-empty dict {{doc_id: grade}}")
        grades = out.setdefault(nfc(qid), {})
        for doc_id, grade in judged.items():
            _check_id(name, f"qrels of query {qid!r}: document id", doc_id)
            if isinstance(grade, bool) or not isinstance(grade, numbers.Integral):
                raise InvalidArgumentError(
                    f"{name}: qrels of query {qid!r}: grade {grade!r} of {doc_id!r} is not an integer"
                )
            previous = grades.setdefault(nfc(doc_id), int(grade))
            if previous != grade:
                raise InvalidArgumentError(
                    f"{name}: qrels of query {qid!r}: {doc_id!r} judged {grade} and {previous} (the same id in NFC)"
                )
    unknown = [qid for qid in out if qid not in queries]
    if unknown:
        raise InvalidArgumentError(
            f"{name}: {counted(len(unknown), 'query id')} in qrels not in queries, e.g. {unknown[:5]}"
        )
    return out


def _checked_corpus(name: str, corpus: Iterable[str | Document]) -> frozenset[str]:
    not_one_string(corpus, "from_dicts", "corpus document ids")
    ids = set()
    for item in corpus:
        doc_id = item.id if isinstance(item, Document) else item
        _check_id(name, "corpus document id", doc_id)
        ids.add(nfc(doc_id))
    return frozenset(ids)


def _check_id(name: str, what: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(f"{name}: {what} {value!r} is not a non-empty string")


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_no, line in text_lines(path, CollectionFormatError):  # a leading BOM (Notepad, PowerShell) is not JSON
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CollectionFormatError(path, line_no, f"malformed JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise CollectionFormatError(path, line_no, "expected a JSON object")
        yield line_no, record
