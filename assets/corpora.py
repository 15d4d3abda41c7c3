"""Corpus configuration: which corpora exist (the asset partitions), where they are and how to evaluate them.

The configuration is a YAML file, chosen by one rule (:func:`corpora_file`): ``$HYBRID_RAG_CORPORA_FILE``, else
``corpora.yaml`` in the working directory (the checkout's, for ``make run``, Docker and the tests), else the built-in
``default_corpora.yaml`` beside this module (the sample shipped in the package)::

    default: sample
    corpora:
      sample: {source: evals/sample, format: beir, qrels: evals/sample, split: test, collection: sample}
      dropbox: {source: data/dropbox, format: dir, on_bad_input: skip, watch: true}

Relative paths are resolved against the file's folder. A configured path that does not exist is not an error
here: only the runs of that corpus fail (see :meth:`CorpusConfig.require_source`). Without ``format``, a corpus'
format is detected from its source when it is read, as the CLI's ``index`` does
(:func:`retrieval.documents.detect_format`). The file is refused, naming it and the line, when a key is given twice
in one mapping (YAML would keep the last) or a top-level key is neither ``default``, ``corpora`` nor an ``x-`` key
(a place for YAML anchors, as in Compose files). Nor is the file refused for an entry with a bad value
(``watch: "yes"``): it is logged once per process, its name stays a partition and :meth:`Corpora.get` of
it raises :class:`CorpusConfigError` naming the file, the entry's line and the reason, so one team's mistake does not
stop the other corpora. What concerns the whole file (unreadable, invalid YAML, no ``corpora`` mapping, an unknown
``default``, two corpora sharing a collection or a Dagster name) raises, naming the file and, for YAML, the line.
"""

from __future__ import annotations

import logging
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retrieval.documents import BadInputError, BadInputPolicy, SourceFormat, detect_format
from retrieval.errors import HybridRagError, InvalidArgumentError
from retrieval.input_files import encoding_problem, utf8_problem
from retrieval.settings import check_collection_name

CORPORA_FILE_ENV = "HYBRID_RAG_CORPORA_FILE"
CORPORA_FILE_NAME = "corpora.yaml"  # looked for in the working directory
BUILTIN_CORPORA_FILE = Path(__file__).resolve().with_name("default_corpora.yaml")  # package data: the sample
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
NAME_RULE = (
    "a corpus name is 1 to 63 characters: ASCII letters and digits (A-Z, a-z, 0-9), '_', '.' and '-', "
    "starting with a letter or digit"
)
_NOT_IN_DAGSTER_NAMES = re.compile(r"[^A-Za-z0-9_]")  # Dagster names (sensors, jobs) hold [A-Za-z0-9_] only
_TOP_KEYS = {"default", "corpora"}  # and x-... keys, for anchors
_KEYS = {"source", "format", "qrels", "split", "collection", "on_bad_input", "watch", "watch_interval", "previews"}
MIN_WATCH_INTERVAL_S = 5
log = logging.getLogger(__name__)
_warned: set[str] = set()  # broken entries already logged by this process


class CorpusConfigError(HybridRagError, ValueError):
    """The corpora file is malformed; the message names the file and the corpus."""


class CorpusUnavailableError(HybridRagError, FileNotFoundError):
    """A configured source or qrels path does not exist on this machine."""


class UnknownCorpusError(HybridRagError, KeyError):
    """No corpus of that name in the corpora file."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class CorpusConfig:
    """One corpus: a document source, its Qdrant collection and (optionally) judgements to evaluate with."""

    name: str
    source: Path
    format: SourceFormat | None  # None: detected from the source when it is read (as the CLI does)
    collection: str
    qrels: Path | None = None
    split: str = "test"
    on_bad_input: BadInputPolicy | None = None
    watch: bool = False
    watch_interval: int = 30  # seconds between the drop-folder sensor's ticks
    previews: bool = True  # False: no document or query text, title or id in the runs' metadata (the event log)

    @property
    def has_qrels(self) -> bool:
        return self.qrels is not None

    def require_source(self) -> Path:
        """The source path, or :class:`CorpusUnavailableError` explaining what is missing."""
        if not self.source.exists():
            raise CorpusUnavailableError(
                f"corpus {self.name!r}: source {self.source} does not exist on this machine "
                f"(format {self.format or 'detected from it'}); fix its entry in the corpora file or provide the data"
            )
        return self.source

    def detected_format_note(self) -> str:
        """For an entry without ``format:``, a sentence saying which format its source is detected as now (detected
        on every run: a folder that gains or loses ``corpus.jsonl`` changes it), else ''."""
        if self.format is not None:
            return ""
        try:
            fmt = detect_format(self.source).value
        except BadInputError:
            fmt = "none (the source is gone)"
        return (
            f"; the entry sets no format: its source is detected as format {fmt!r} on each run (set format: for a "
            "watched or synced folder, whose content can change what is detected)"
        )

    def eval_collection(self, split: str | None = None):
        """The :class:`evals.collections.EvalCollection` with this corpus' queries and qrels of ``split``."""
        from evals.collections import EvalCollection

        if self.qrels is None:
            raise CorpusUnavailableError(f"corpus {self.name!r} has no qrels configured")
        collection = EvalCollection(self.name, self.qrels)
        split = split or self.split
        for path in (collection.queries_path, collection.qrels_path(split)):
            if not path.is_file():
                raise CorpusUnavailableError(f"corpus {self.name!r}: {path} does not exist (split {split!r})")
        return collection


@dataclass(frozen=True)
class Corpora:
    """All configured corpora, in file order, and the default one."""

    path: Path
    corpora: dict[str, CorpusConfig]
    default: str
    broken: dict[str, str] = field(default_factory=dict)  # entries refused: name -> why (file, line, reason)

    @property
    def names(self) -> list[str]:
        """Every corpus name, in file order: the partitions (an entry refused by :attr:`broken` too, so that its
        runs fail saying why)."""
        return list(self.corpora) + [name for name in self.broken if _NAME.match(name)]

    def get(self, name: str) -> CorpusConfig:
        if name in self.broken:
            raise CorpusConfigError(self.broken[name])
        try:
            return self.corpora[name]
        except KeyError:
            raise UnknownCorpusError(
                f"unknown corpus {name!r}; configured in {self.path}: {', '.join(self.names)}"
            ) from None

    def watched(self) -> list[CorpusConfig]:
        return [c for c in self.corpora.values() if c.watch]


def dagster_name(name: str) -> str:
    """``name`` with each character Dagster refuses in names ('.', '-') as '_': ``my-notes`` -> ``my_notes``."""
    return _NOT_IN_DAGSTER_NAMES.sub("_", name)


def corpora_file(path: str | Path | None = None) -> Path:
    """``path``, else ``$HYBRID_RAG_CORPORA_FILE``, else ``./corpora.yaml`` if the working directory has one, else
    the built-in file naming the packaged sample."""
    chosen = path or os.environ.get(CORPORA_FILE_ENV)
    if not chosen:
        chosen = CORPORA_FILE_NAME if Path(CORPORA_FILE_NAME).is_file() else BUILTIN_CORPORA_FILE
    return Path(chosen).expanduser().resolve()


def load_corpora(path: str | Path | None = None) -> Corpora:
    """Parse and validate the corpora file (paths need not exist)."""
    file = corpora_file(path)
    try:
        raw, lines = _read_yaml(file)
    except OSError as exc:
        raise CorpusConfigError(
            f"cannot read corpora file {file}: {exc.strerror or exc} (the corpora file is ${CORPORA_FILE_ENV}, "
            f"else ./{CORPORA_FILE_NAME} in the working directory, else the built-in sample)"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise CorpusConfigError(f"{file}{at}: invalid YAML: {reason} (no corpus can run until it is fixed)") from exc
    for key, line in lines.items():
        if key not in _TOP_KEYS and not key.startswith("x-"):
            raise CorpusConfigError(
                f"{file}:{line}: unknown top-level key {key!r} (allowed: {sorted(_TOP_KEYS)}, and keys starting "
                "with 'x-' for YAML anchors)"
            )
    entries = raw.get("corpora") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise CorpusConfigError(f"{file}: expected a non-empty mapping under 'corpora'")
    lines = _entry_lines(file)
    corpora: dict[str, CorpusConfig] = {}
    broken: dict[str, str] = {}
    for key, spec in entries.items():
        name = str(key)
        try:
            corpora[name] = _parse_corpus(file, name, spec)
        except CorpusConfigError as exc:  # this entry only: the other corpora still run
            line = f", line {lines[name]}" if name in lines else ""
            why = str(exc).replace(f"{file}: ", f"{file}{line}: ", 1)
            broken[name] = why  # get() raises it; a valid name stays a partition whose runs fail with it
            if why not in _warned:
                _warned.add(why)
                log.warning(f"{why}; this corpus cannot run until its entry is fixed, the others are not affected")
    _refuse_shared(file, corpora, "collection", lambda c: c.collection, "each run would prune the other's documents")
    _refuse_shared(
        file, corpora, "Dagster name", lambda c: dagster_name(c.name), "their sensors would have the same name"
    )
    default = str(raw.get("default") or next(iter(entries)))
    if default not in corpora and default not in broken:
        raise CorpusConfigError(f"{file}: default corpus {default!r} is not configured")
    return Corpora(file, corpora, default, broken)


def _entry_lines(file: Path) -> dict[str, int]:
    """The line of each entry under ``corpora`` in ``file`` (already read as valid YAML), by name."""
    root = yaml.compose(_yaml_text(file), Loader=yaml.SafeLoader)
    for key, value in root.value if isinstance(root, yaml.MappingNode) else []:
        if key.value == "corpora" and isinstance(value, yaml.MappingNode):
            return {str(k.value): k.start_mark.line + 1 for k, _ in value.value}
    return {}


def _read_yaml(file: Path) -> tuple[Any, dict[str, int]]:
    """The file's YAML document and the line of each top-level key; a key given twice in one mapping (PyYAML
    would keep the last silently) is a :class:`CorpusConfigError` naming both lines."""
    loader = yaml.SafeLoader(_yaml_text(file))
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        _refuse_duplicate_keys(file, loader, node, set())
        _refuse_non_string_names(file, loader, node)
        lines = {}
        if isinstance(node, yaml.MappingNode):
            lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def _yaml_text(file: Path) -> str:
    """The corpora file's text; a file that is not UTF-8 (UTF-16 from Windows PowerShell's ``>``, a Latin-1 comment)
    is a :class:`CorpusConfigError` naming it, the line and the byte, not a UnicodeDecodeError naming nothing."""
    raw = file.read_bytes()
    problem = encoding_problem(raw)
    if problem is not None:
        raise CorpusConfigError(f"{file}: {problem} (no corpus can run until it is fixed)")
    try:
        return raw.decode("utf-8")  # a leading BOM is YAML's to skip
    except UnicodeDecodeError as exc:
        line = len(re.split(r"\r\n?|\n", raw[: exc.start].decode("utf-8")))
        reason = utf8_problem(raw, exc, file, offset="byte offset")
        raise CorpusConfigError(f"{file}, line {line}: {reason} (no corpus can run until it is fixed)") from None


def _refuse_duplicate_keys(file: Path, loader: yaml.SafeLoader, node: yaml.Node, seen: set[int]) -> None:
    """Refuse a scalar key given twice in one mapping of ``node``'s tree, compared as the values YAML reads
    (``on``/``yes``, ``10``/``0x0a``, ``a``/``"a"`` are one key each); keys a ``<<`` merge brings in may be
    overridden: that is what merging means."""
    if id(node) in seen:  # an alias of a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, yaml.ScalarNode] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                value = loader.construct_object(key)
                if value in first:
                    before = first[value]
                    spelled = f" as {before.value!r}, YAML reads both as {value!r}" if before.value != key.value else ""
                    raise CorpusConfigError(
                        f"{file}:{key.start_mark.line + 1}: {key.value!r} is given twice in one mapping (first at "
                        f"line {before.start_mark.line + 1}{spelled}; YAML would keep only the last): rename or "
                        "remove one"
                    )
                first[value] = key
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        for child in node.value:
            for sub in child if isinstance(node, yaml.MappingNode) else (child,):
                _refuse_duplicate_keys(file, loader, sub, seen)


def _refuse_non_string_names(file: Path, loader: yaml.SafeLoader, root: yaml.Node) -> None:
    """Refuse a corpus name YAML reads as something else than a string (``no:`` is False, ``10:`` a number)."""
    for key, value in root.value if isinstance(root, yaml.MappingNode) else []:
        if key.value != "corpora" or not isinstance(value, yaml.MappingNode):
            continue
        for name, _ in value.value:
            if isinstance(name, yaml.ScalarNode) and name.tag != "tag:yaml.org,2002:merge":
                read = loader.construct_object(name)
                if not isinstance(read, str):
                    raise CorpusConfigError(
                        f"{file}:{name.start_mark.line + 1}: corpus name {name.value!r} is read by YAML as "
                        f"{read!r}, not a name: quote it ('{name.value}':)"
                    )


def _refuse_shared(file: Path, corpora: dict[str, CorpusConfig], what: str, key: Any, why: str) -> None:
    """Refuse two corpora with the same ``key`` (their collection, their Dagster name), naming both."""
    seen: dict[str, str] = {}
    for corpus in corpora.values():
        value = key(corpus)
        if value in seen:
            raise CorpusConfigError(
                f"{file}: corpora {seen[value]!r} and {corpus.name!r} have the same {what} {value!r} ({why}); "
                f"give each corpus its own"
            )
        seen[value] = corpus.name


def check_corpus_name(name: str, where: str | None = None) -> str:
    """``name`` when a corpus may have it, else :class:`CorpusConfigError` (``where``: the message's start)."""
    if not _NAME.fullmatch(name):
        raise CorpusConfigError(f"{where or f'corpus {name!r}'}: invalid corpus name: {NAME_RULE}")
    return name


def _parse_corpus(file: Path, name: str, spec: Any) -> CorpusConfig:
    where = f"{file}: corpus {name!r}"
    check_corpus_name(name, where)
    if not isinstance(spec, dict):
        raise CorpusConfigError(f"{where}: expected a mapping")
    unknown = set(spec) - _KEYS
    if unknown:
        raise CorpusConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
    if not spec.get("source"):
        raise CorpusConfigError(f"{where}: 'source' is required")
    for key in ("source", "qrels"):  # paths; YAML reads 2024 as a number, !!binary as bytes
        value = spec.get(key)
        if value is not None and not isinstance(value, str):
            raise CorpusConfigError(f"{where}: {key!r} must be a path (a string), got {reprlib.repr(value)}")
    try:
        fmt = SourceFormat(spec["format"]) if spec.get("format") is not None else None
        policy = BadInputPolicy(spec["on_bad_input"]) if spec.get("on_bad_input") else None
    except ValueError as exc:
        raise CorpusConfigError(f"{where}: {exc}") from exc
    watch, previews = spec.get("watch", False), spec.get("previews", True)
    for key, value in (("watch", watch), ("previews", previews)):
        if not isinstance(value, bool):
            raise CorpusConfigError(f"{where}: {key!r} must be true or false (unquoted), got {value!r}")
    interval = spec.get("watch_interval", 30)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < MIN_WATCH_INTERVAL_S:
        raise CorpusConfigError(
            f"{where}: 'watch_interval' must be a whole number of seconds, at least {MIN_WATCH_INTERVAL_S}, "
            f"got {interval!r}"
        )
    collection = spec.get("collection") or name
    if not isinstance(collection, str):  # YAML reads 2024 as a number
        raise CorpusConfigError(f"{where}: 'collection' must be a name (a string), got {reprlib.repr(collection)}")
    try:  # the rule of the settings and the CLI
        check_collection_name(collection)
    except InvalidArgumentError as exc:
        default = "" if spec.get("collection") else " (the corpus name: set 'collection' to give it another)"
        raise CorpusConfigError(f"{where}: {exc}{default}") from exc
    return CorpusConfig(
        name=name,
        source=_resolve(file, spec["source"]),
        format=fmt,
        collection=collection,
        qrels=_resolve(file, spec["qrels"]) if spec.get("qrels") else None,
        split=str(spec.get("split") or "test"),
        on_bad_input=policy,
        watch=watch,
        watch_interval=interval,
        previews=previews,
    )


def _resolve(file: Path, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (file.parent / path).resolve()
