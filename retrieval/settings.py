"""Configuration for the whole retrieval stack, read from ``HYBRID_RAG_*`` environment variables."""

from __future__ import annotations

import difflib
import io
import json
import logging
import os
import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrieval.documents import BadInputPolicy
from retrieval.errors import InvalidArgumentError, ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_DENSE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ENV_PREFIX = "HYBRID_RAG_"
# The HYBRID_RAG_* variables read outside RetrievalSettings (whose fields are the others): the corpora file
# (assets.corpora), the assets' Parquet folder (orchestration.definitions), the evaluation history (evals.history).
PATH_VARIABLES = ("HYBRID_RAG_CORPORA_FILE", "HYBRID_RAG_ASSETS_DIR", "HYBRID_RAG_HISTORY_PATH")
# Where the CLI records, for the processes it starts too (a Dagster run, the daemon), which env file line each
# HYBRID_RAG_* variable it copied into the environment came from (see env_origin); never set by hand.
ENV_ORIGINS = "HYBRID_RAG_ENV_ORIGINS"
# Read by the benchmarks and tests (their datasets, a sandbox), never by the library, and ENV_ORIGINS: not misspelt
# settings.
TOOL_VARIABLES = ("HYBRID_RAG_SCIFACT", "HYBRID_RAG_NFCORPUS", "HYBRID_RAG_TEST_SANDBOX", ENV_ORIGINS)
ADAPTED_MARKER = "adapted.json"  # written next to an adapted query encoder: its base model and held-out scores


def absolute_path(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, made absolute against the working directory now (as written otherwise: symlinks
    and ``..`` kept): path settings are resolved once, when the settings are made, so a later ``os.chdir`` moves no
    index, model or cache."""
    return Path(path).expanduser().absolute()


def canonical_model(name: str) -> str:
    """One name per model: the bundled default under either of its names, a local folder as its absolute path."""
    if name in {DEFAULT_DENSE_MODEL, "all-MiniLM-L6-v2"}:
        return DEFAULT_DENSE_MODEL
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


class FusionMethod(StrEnum):
    """How the dense and sparse lists are fused: reciprocal ranks (``rrf``), distribution-based score fusion
    (``dbsf``) or z-scores of each list (``zscore``)."""

    RRF = "rrf"
    DBSF = "dbsf"
    ZSCORE = "zscore"


class RerankMode(StrEnum):
    """The reranker's pseudo-query: the query vector plus its top candidates' (``feedback``), or E2Rank's listwise
    prompt of the query and their text, embedded (``prompt``)."""

    FEEDBACK = "feedback"
    PROMPT = "prompt"


class Bm25Tokenizer(StrEnum):
    """How BM25 splits text into words (Qdrant's tokenizers): ``word`` at spaces and punctuation; ``multilingual``
    also segments Chinese, Japanese and Thai into words (and drops numbers)."""

    WORD = "word"
    MULTILINGUAL = "multilingual"


class Bm25Stopwords(StrEnum):
    """Which words BM25 drops: ``nltk`` (Qdrant's default: NLTK's list of ``BM25_LANGUAGE``; in English 179 words,
    single letters, "who", "all" and "can" among them) or ``lucene`` (Lucene's 33 English words: articles,
    conjunctions, prepositions, pronouns; English documents only)."""

    NLTK = "nltk"
    LUCENE = "lucene"


class Bm25Language(StrEnum):
    """The language of the documents, whose stopwords BM25 drops (Qdrant's lists, NLTK's) and whose Snowball stemmer
    it applies (none for the languages Snowball lacks: Azerbaijani, Basque, Bengali, Catalan, Chinese, Hebrew,
    Hinglish, Indonesian, Japanese, Kazakh, Nepali, Slovene, Tajik): the languages Qdrant's BM25 supports."""

    ARABIC = "arabic"
    AZERBAIJANI = "azerbaijani"
    BASQUE = "basque"
    BENGALI = "bengali"
    CATALAN = "catalan"
    CHINESE = "chinese"
    DANISH = "danish"
    DUTCH = "dutch"
    ENGLISH = "english"
    FINNISH = "finnish"
    FRENCH = "french"
    GERMAN = "german"
    GREEK = "greek"
    HEBREW = "hebrew"
    HINGLISH = "hinglish"
    HUNGARIAN = "hungarian"
    INDONESIAN = "indonesian"
    ITALIAN = "italian"
    JAPANESE = "japanese"
    KAZAKH = "kazakh"
    NEPALI = "nepali"
    NORWEGIAN = "norwegian"
    PORTUGUESE = "portuguese"
    ROMANIAN = "romanian"
    RUSSIAN = "russian"
    SLOVENE = "slovene"
    SPANISH = "spanish"
    SWEDISH = "swedish"
    TAJIK = "tajik"
    TURKISH = "turkish"


# Other names of some languages (ISO 639-1 codes, their own names), for the hint of an unsupported value only (a
# setting takes the English name): closest_hint alone suggests dutch for deutsch.
_LANGUAGE_NAMES = {
    "arabic": "ar العربية",
    "chinese": "zh 中文",
    "danish": "da dansk",
    "dutch": "nl nederlands",
    "english": "en",
    "finnish": "fi suomi",
    "french": "fr français francais",
    "german": "de deutsch",
    "greek": "el ελληνικά",
    "hungarian": "hu magyar",
    "italian": "it italiano",
    "japanese": "ja 日本語",
    "norwegian": "no nb nn norsk",
    "portuguese": "pt português portugues",
    "romanian": "ro română romana",
    "russian": "ru русский",
    "spanish": "es español espanol castellano",
    "swedish": "sv svenska",
    "turkish": "tr türkçe turkce",
}


def check_bm25_language(language: object) -> Bm25Language:
    """``language`` (any case, surrounding spaces ignored) as a :class:`Bm25Language`, else a ValueError that
    suggests the one meant and lists the supported ones."""
    text = language.strip().lower() if isinstance(language, str) else language
    if text in tuple(Bm25Language):
        return Bm25Language(text)
    meant = next((name for name, others in _LANGUAGE_NAMES.items() if text in others.split()), None)
    hint = f" (did you mean {meant}?)" if meant else closest_hint(str(text), Bm25Language)
    raise ValueError(f"not a language BM25 supports{hint}; supported: {', '.join(Bm25Language)}")


class DenseBackend(StrEnum):
    """What runs the dense model: ``torch``, or an ONNX export run by ONNX Runtime in fp32 (``onnx``) or int8
    (``onnx-int8``), or by OpenVINO (``openvino``); the last three need the ``[fast]`` extra and run on the CPU."""

    TORCH = "torch"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"
    OPENVINO = "openvino"

    @classmethod
    def _missing_(cls, value: object) -> DenseBackend | None:
        """Case and surrounding spaces do not matter (``ONNX``, `` onnx-int8``), in settings and arguments."""
        text = value.strip().lower() if isinstance(value, str) else None
        return next((member for member in cls if member.value == text), None)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "hybrid-rag"


# The longest file name made from a collection's name is a snapshot being written ("<name>-<UTC stamp>.partial",
# retrieval.store.snapshots); a file name holds 255 bytes.
WRITE_LOCK_TIMEOUT_S = 600.0  # default of write_lock_timeout_s: how long a writer waits for the collection's lock
COLLECTION_NAME_MAX_BYTES = 255 - len("-20261130T032106Z.partial")
_NAME_FORBIDDEN = set('<>:"/\\|?*')  # Qdrant's rule for a new collection's name (a folder on the server too)
_NAME_LAYOUT = re.compile(r".*(__v[0-9]+|\.current\.json|\.write\.lock)")  # a version or a file of another name
_DEVICE = re.compile(r"(cpu|cuda|mps)(:[0-9]+)?")
MIN_CHUNK_TOKENS = 16  # a chunk's budget also holds the special tokens and the document prompt
# Payload index types of PAYLOAD_INDEXES (Qdrant's, and ``tenant``: a keyword index Qdrant lays out per value).
PAYLOAD_INDEX_TYPES = ("keyword", "tenant", "integer", "float", "datetime", "bool")
_INDEX_KEY = re.compile(r"[\w-]+(?:\.[\w-]+)*")  # a metadata key, or a dotted path into one


def parse_payload_indexes(text: str | None) -> dict[str, str]:
    """``PAYLOAD_INDEXES`` (``tenant:tenant, year:integer``) as metadata key -> index type; a ValueError says
    what is wrong with it."""
    indexes: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, colon, kind = (s.strip() for s in item.rpartition(":"))
        kind = kind.lower()
        if not colon or not _INDEX_KEY.fullmatch(key):
            raise ValueError(
                f"{item!r} is not key:type (a metadata key of letters, digits, _ and -, dots for a nested key)"
            )
        if kind not in PAYLOAD_INDEX_TYPES:
            raise ValueError(f"{item!r}: unknown index type {kind!r}; valid: {', '.join(PAYLOAD_INDEX_TYPES)}")
        if key in indexes:
            raise ValueError(f"{key!r} is listed twice")
        indexes[key] = kind
    return indexes


def check_collection_name(name: object) -> str:
    """``name`` when it can name a collection, else an :class:`InvalidArgumentError` saying why.

    The rule: what a Qdrant server accepts for a new collection (none of ``< > : " / \\ | ? *``, no control
    characters) that is also a safe file name next to the embedded layout: not empty, ``.`` or ``..``, at most
    :data:`COLLECTION_NAME_MAX_BYTES` bytes in UTF-8, and not ending like a version (``__v<N>``) or a pointer or lock
    file (``.current.json``, ``.write.lock``)."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise InvalidArgumentError(f"invalid collection name {name!r}: give a non-empty name that is not . or ..")
    bad = next((c for c in name if c in _NAME_FORBIDDEN or ord(c) < 32), None)
    if bad is not None:
        reason = f'it contains {bad!r} (not allowed: < > : " / \\ | ? * and control characters)'
    elif len(name.encode()) > COLLECTION_NAME_MAX_BYTES:
        reason = f"longer than {COLLECTION_NAME_MAX_BYTES} bytes"
    elif _NAME_LAYOUT.fullmatch(name):
        reason = "it ends like a stored version or file of a collection (__v<N>, .current.json, .write.lock)"
    else:
        return name
    raise InvalidArgumentError(f"invalid collection name {name!r}: {reason}")


# up to the last "@", even past a "/": a password with an unencoded "/" or "?" is still one
_USERINFO = re.compile(r"^(?P<head>(?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?(?P<userinfo>.*)@", re.DOTALL)


def redact_url(url: str | None) -> str | None:
    """``url`` as it may be shown (messages, logs, titles, Dagster metadata): the password of its user-info part
    replaced by ``***`` (``https://user:***@host``), a user name alone (it may be a token) too (``https://***@host``).
    Everything before the last ``@`` counts as user info, so a malformed URL shows no more."""
    match = _USERINFO.match(url or "")
    if match is None:
        return url
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['head'] or ''}{user + ':***' if colon else '***'}@{url[match.end() :]}"


# Fields whose value a message never repeats: the URL's validator shows it with the password masked, the key never.
UNSHOWN_VALUES = ("qdrant_url", "qdrant_api_key")
# pydantic's wording of a value of the wrong type, shortened (its other messages are kept as they are).
_REASONS = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false (also 1/0, yes/no, on/off)",
}


class SettingsConflict(ValueError):
    """Settings that are each valid but not together: ``template`` names each by its field in braces
    (``{chunk_overlap} must be smaller than {chunk_tokens}``), ``values`` holds their values."""

    def __init__(self, template: str, **values: Any) -> None:
        self.template, self.values = template, values
        super().__init__(template.format(**{field: f"{field}={value!r}" for field, value in values.items()}))


def settings_problems(exc: ValidationError, origins: dict[str, str] | None = None) -> str:
    """A settings ``ValidationError`` as one line: ``invalid settings: field: reason; ...``. A field read from a
    variable (``origins``: field -> where, see :func:`env_origin`, or ``default``) is named as that variable, with its
    value and where it was set: ``invalid settings: HYBRID_RAG_K='abc' (.env:3): must be an integer``; a
    :class:`SettingsConflict` names each of its settings so: ``HYBRID_RAG_CHUNK_OVERLAP=300 (.env:2) must be smaller
    than HYBRID_RAG_CHUNK_TOKENS=256 (default)``."""
    origins = origins or {}
    problems = []
    for error in exc.errors():
        reason = _REASONS.get(error["type"], error["msg"].removeprefix("Value error, "))
        field = str(error["loc"][0]) if error["loc"] else None
        conflict = error.get("ctx", {}).get("error")
        if isinstance(conflict, SettingsConflict):
            named = {f: _named_setting(f, v, origins.get(f)) for f, v in conflict.values.items()}
            problems.append(conflict.template.format(**named))
        elif field is None:
            problems.append(reason)
        elif field in origins:
            value = "" if field in UNSHOWN_VALUES else f"={error['input']!r}"
            problems.append(f"{ENV_PREFIX}{field.upper()}{value} ({origins[field]}): {reason}")
        else:
            problems.append(f"{field}: {reason}")
    return f"invalid settings: {'; '.join(problems)}"


def _named_setting(field: str, value: Any, origin: str | None) -> str:
    """``field=value`` (given in Python), or ``HYBRID_RAG_<FIELD>=value (origin)``; no value for a secret."""
    shown = "" if field in UNSHOWN_VALUES else f"={value!r}"
    return f"{ENV_PREFIX}{field.upper()}{shown} ({origin})" if origin else f"{field}{shown}"


def closest_hint(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the valid name closest to ``name``, else nothing."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def env_hint(name: str, valid: Iterable[str]) -> str:
    """:func:`closest_hint` for a ``HYBRID_RAG_*`` variable, compared without the prefix every name shares (with it,
    any short name seemed close to one: ``HYBRID_RAG_X`` to ``HYBRID_RAG_K``)."""
    suffixes = {v.removeprefix(ENV_PREFIX): v for v in valid}
    match = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), list(suffixes), n=1, cutoff=0.6)
    return f" (did you mean {suffixes[match[0]]}?)" if match else ""


def env_names() -> set[str]:
    """Every ``HYBRID_RAG_*`` variable this project reads: one per settings field, and :data:`PATH_VARIABLES`."""
    return {f"{ENV_PREFIX}{name}".upper() for name in RetrievalSettings.model_fields} | set(PATH_VARIABLES)


def read_env_file(path: str | Path) -> tuple[dict[str, int], list[int]]:
    """An env file as python-dotenv (pydantic-settings' reader) parses it: each name (upper case) with the line that
    sets it (the last, which wins), and the lines that are no ``KEY=value`` (skipped). Raises OSError or
    UnicodeDecodeError for a file it cannot read."""
    names: dict[str, int] = {}
    unparsed: list[int] = []
    for binding in parse_stream(io.StringIO(Path(path).expanduser().read_text(encoding="utf-8"))):
        if binding.error:
            unparsed.append(binding.original.line)
        elif binding.key:
            names[binding.key.upper()] = binding.original.line
    return names, unparsed


def copied_origins() -> dict[str, str]:
    """The ``HYBRID_RAG_*`` variables a program copied into the environment from an env file (the CLI does, so that
    every reader, the processes it starts included, sees them): each -> ``<file>:<line>``, as :data:`ENV_ORIGINS`
    records it."""
    try:
        record = json.loads(os.environ.get(ENV_ORIGINS) or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def env_origin(name: str, env_files: Iterable[str | Path] = ()) -> str | None:
    """Where variable ``name`` is read from, in pydantic-settings' order: the environment, else the last of
    ``env_files`` that sets it; None where nothing sets it. A value in the environment is named ``<file>:<line>``
    where it was copied there from that line: by the CLI (:func:`copied_origins`), or by Dagster, which copies the
    working directory's ``.env`` into the environment of its processes (the value is that line's); else
    ``environment``."""
    name = name.upper()
    environ = {key.upper(): value for key, value in os.environ.items()}
    if name in environ and name in copied_origins():
        return copied_origins()[name]
    for file in reversed(list(env_files)):
        try:
            line = read_env_file(file)[0].get(name) if Path(file).expanduser().is_file() else None
            if line is not None and name in environ:
                values = dotenv_values(Path(file).expanduser(), encoding="utf-8")
                line = line if {k.upper(): v for k, v in values.items()}.get(name) == environ[name] else None
        except (OSError, UnicodeDecodeError):  # read again by pydantic-settings, which says what is wrong
            continue
        if line is not None:
            return f"{file}:{line}"
    return "environment" if name in environ else None


_warned_env: set[str] = set()
# python-dotenv's own warning for a line it skips names no file, and comes once per read: warn_unknown_env names it
logging.getLogger("dotenv.main").addFilter(lambda record: "could not parse statement" not in record.getMessage())


def warn_unknown_env(env_files: Iterable[str | Path] = ()) -> None:
    """Log a warning, once per name (or line) and process, for each ``HYBRID_RAG_*`` name in the environment or in
    ``env_files`` that nothing reads (a misspelt setting would otherwise be ignored silently), and for each line of
    ``env_files`` that is no ``KEY=value`` (python-dotenv skips it); each names where it is (``.env:3``)."""
    env_files = list(env_files)
    names = {name.upper() for name in os.environ}
    for file in env_files:
        if not Path(file).expanduser().is_file():
            continue
        try:
            found, unparsed = read_env_file(file)
        except (OSError, UnicodeDecodeError):  # read again by pydantic-settings, which says what is wrong
            continue
        names |= set(found)
        for line in (f"{file}:{line}" for line in unparsed):
            if line not in _warned_env:
                _warned_env.add(line)
                log.warning("%s: not a KEY=value line: ignored", line)
    valid = env_names()
    for name in sorted(n for n in names if n.startswith(ENV_PREFIX) and n not in valid | set(TOOL_VARIABLES)):
        if name not in _warned_env:
            _warned_env.add(name)
            where = env_origin(name, env_files)
            log.warning("unknown setting %s (%s) is ignored%s", name, where, env_hint(name, valid))


class HeldSettings:
    """The ``settings`` attribute of a stack, retriever or indexer: set once when it is built; replacing them is
    refused, as assigning one of their fields is (its encoders and stores were made from them)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner, self.slot = owner.__name__, f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else obj.__dict__[self.slot]

    def __set__(self, obj: Any, value: RetrievalSettings) -> None:
        if self.slot in obj.__dict__:
            raise InvalidArgumentError(
                f"invalid settings: the settings of a {self.owner} cannot be replaced: use stack.derive(...) or "
                "stack.retriever(...) with the settings to change"
            )
        obj.__dict__[self.slot] = value


class RetrievalSettings(BaseSettings):
    """Every knob of indexing and search. Environment: ``HYBRID_RAG_<FIELD>`` (e.g. HYBRID_RAG_QDRANT_URL), then
    ``.env``; README, Settings, says what each field means and its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",  # a .env may hold other programs' variables; keywords are checked in __init__
        validate_assignment=True,  # `settings.rrf_k = 0` is refused as the constructor refuses it
        env_parse_none_str="none",
        allow_inf_nan=False,
        hide_input_in_errors=True,  # a rejected value may hold a secret (a URL's password); messages name what matters
    )

    # Qdrant: embedded engine under qdrant_path unless qdrant_url is set.
    qdrant_path: Path = Field(Path("data/index"), validate_default=True)  # made absolute (absolute_path)
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_timeout_s: float = Field(30.0, gt=0)
    qdrant_retries: int = Field(4, ge=0)
    write_lock_timeout_s: float = Field(WRITE_LOCK_TIMEOUT_S, gt=0)  # a second writer's wait, then it fails
    collection: str = "sample"

    # Encoders.
    dense_model: str = DEFAULT_DENSE_MODEL
    dense_backend: DenseBackend = DenseBackend.TORCH
    dense_device: str | None = None  # cpu, cuda (every GPU: a multi-process pool), cuda:N, mps; None: the best one
    dense_batch_size: int = Field(64, ge=1)
    dense_query_prompt: str | None = None
    dense_document_prompt: str | None = None
    sparse_model: str = "bm25"
    bm25_k1: float = Field(1.2, ge=0)
    bm25_b: float = Field(0.75, ge=0, le=1)
    bm25_avg_len: float = Field(256.0, gt=0)
    bm25_tokenizer: Bm25Tokenizer = Bm25Tokenizer.WORD
    bm25_stopwords: Bm25Stopwords = Bm25Stopwords.NLTK
    bm25_language: Bm25Language = Bm25Language.ENGLISH  # its stopwords and stemmer

    # Chunking.
    chunk_tokens: int = Field(256, ge=MIN_CHUNK_TOKENS)
    chunk_overlap: int = Field(32, ge=0)
    chunk_at_whitespace: bool = False  # cut only at whitespace (off: the SciFact test default fell 0.731 -> 0.730)

    # Indexing.
    upsert_batch_size: int = Field(256, ge=1)
    payload_indexes: str | None = Field(
        None,
        description="Metadata keys to index for filters, as key:type pairs (tenant:tenant,year:integer); types: "
        + ", ".join(PAYLOAD_INDEX_TYPES),
    )
    bad_input_policy: BadInputPolicy = BadInputPolicy.FAIL
    cache_dir: Path = Field(default_factory=default_cache_dir, validate_default=True)
    embedding_cache: bool = True

    # Search.
    fusion: FusionMethod = FusionMethod.RRF
    rrf_k: int = Field(10, ge=1)  # chosen on SciFact train (README, Quality); Qdrant and the RRF paper use 60
    dense_weight: float = Field(1.0, gt=0)  # > 0 as Qdrant's weighted RRF needs (a search variant drops a channel)
    sparse_weight: float = Field(1.0, gt=0)
    prefetch_k: int = Field(
        100,
        ge=1,
        description="Candidates each channel (dense, sparse) returns before fusion; at least as many as the hits "
        "fused: rerank_depth when reranking (so a smaller prefetch_k then has no effect), else k",
    )
    k: int = Field(10, ge=1)

    # Reranking (embedding-based listwise, E2Rank style).
    rerank: bool = True  # safe on any corpus: feedback is gated by the channels' agreement (rerank_agreement)
    rerank_mode: RerankMode = RerankMode.FEEDBACK
    rerank_depth: int = Field(
        100,
        ge=1,
        description="Fused candidates the reranker reorders; each channel then returns max(prefetch_k, rerank_depth)",
    )
    rerank_feedback_k: int = Field(2, ge=0)  # 0: the query alone
    rerank_feedback_beta: float = Field(1.0, ge=0)
    rerank_weight: float = Field(0.3, ge=0, le=1)
    # Feedback only from candidates both channels rank in their top N (0: no gate).
    rerank_agreement: int = Field(5, ge=0)
    # Query-side encoder trained against the stored document vectors (`hybrid-rag tune-reranker`).
    query_model: str | None = None
    # Quality (issue 9): the corpus-adapted query encoder (`hybrid-rag adapt`, Dagster `query_encoder`) is used
    # when query_model is unset and one was saved for the collection (under models_dir, default: the folder
    # next to qdrant_path, `data/models`) from the same dense model.
    adapted_query_model: bool = True
    models_dir: Path | None = None
    # Quality (issue 9): a query whose best BM25 hit stands out (z-score over the sparse list above this) is
    # fused by z-scores instead of `fusion`, which keeps the more confident channel ahead (long queries always
    # are); a flat sparse list (few or common query terms) keeps rank fusion. None: always `fusion`.
    zscore_fusion_above: float | None = 2.5

    _in_use: bool = PrivateAttr(default=False)  # held by a RetrievalStack: assignment is refused (in_use_copy)

    def __init__(self, **values: Any) -> None:
        """As pydantic-settings builds it (keywords, then ``HYBRID_RAG_*`` variables, then ``.env``); a misspelt
        keyword or a bad value is an :class:`InvalidArgumentError` (``invalid settings: field: reason``). Unknown
        ``HYBRID_RAG_*`` names in the environment or the env files are warned about once."""
        fields = type(self).model_fields
        unknown = [name for name in values if not name.startswith("_") and name not in fields]
        if unknown:
            raise InvalidArgumentError(
                "invalid settings: " + "; ".join(f"unknown setting {n!r}{closest_hint(n, fields)}" for n in unknown)
            )
        env_file = values.get("_env_file", self.model_config.get("env_file"))
        env_files = [env_file] if isinstance(env_file, str | Path) else list(env_file or ())
        warn_unknown_env(env_files)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            named = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            for error in exc.errors():
                if isinstance(conflict := error.get("ctx", {}).get("error"), SettingsConflict):
                    named |= set(conflict.values)
            read = named - set(values)  # not given as keywords: from a variable, else the default
            origins = {field: env_origin(f"{ENV_PREFIX}{field}", env_files) or "default" for field in read}
            raise InvalidArgumentError(settings_problems(exc, origins)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        """Assignment is checked as construction is: a bad value or an unknown name is an InvalidArgumentError."""
        if name not in type(self).model_fields and not name.startswith("_"):
            raise InvalidArgumentError(
                f"invalid settings: unknown setting {name!r}{closest_hint(name, type(self).model_fields)}"
            )
        if getattr(self, "_in_use", False) and not name.startswith("_"):
            raise InvalidArgumentError(
                f"invalid settings: {name} cannot be changed on the settings a RetrievalStack uses (stack.settings, "
                f"its retrievers' and indexers'): use stack.derive({name}=...) or stack.retriever({name}=...)"
            )
        before = self.__dict__.get(name)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            if name in type(self).model_fields:  # a model check (chunk_overlap < chunk_tokens) runs after the set
                self.__dict__[name] = before
            raise InvalidArgumentError(settings_problems(exc)) from None

    def in_use_copy(self, **overrides: Any) -> RetrievalSettings:
        """A copy (with ``overrides``) as a RetrievalStack holds it: checked again, since pydantic checks neither
        ``model_copy(update=...)`` nor ``model_construct()``, and refusing assignment, since the stack has built its
        encoders and opened its stores from it. A copy of it (``model_copy()``, ``copy``, ``pickle``) is writable."""
        # dict(self), not model_dump(): a dump masks the URL's password; every field is given, so no .env is read
        checked = type(self)(_env_file=None, **{**dict(self), **overrides})
        checked._in_use = True
        return checked

    def __eq__(self, other: object) -> bool:
        """Equal values are equal settings, whether a RetrievalStack holds them or not (pydantic also compares
        private attributes)."""
        if not isinstance(other, RetrievalSettings):
            return NotImplemented
        return type(self) is type(other) and dict(self) == dict(other)

    def __copy__(self) -> RetrievalSettings:
        copied = super().__copy__()
        copied._in_use = False
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> RetrievalSettings:
        copied = super().__deepcopy__(memo)
        copied._in_use = False
        return copied

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        return {**state, "__pydantic_private__": {**(state["__pydantic_private__"] or {}), "_in_use": False}}

    def __repr_args__(self) -> list[tuple[str | None, object]]:
        """repr() and str() show the Qdrant URL's password masked, as they show the API key."""
        return [(name, redact_url(value) if name == "qdrant_url" else value) for name, value in super().__repr_args__()]

    @field_serializer("qdrant_url")
    def _dump_qdrant_url(self, url: str | None) -> str | None:
        """Dumps (model_dump, model_dump_json: run configs, logs) show the URL's password masked, as repr() does;
        copy settings with ``model_copy()``, which keeps it."""
        return redact_url(url)

    @field_validator("qdrant_path", "cache_dir", "models_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        """Absolute, against the working directory when the settings are made (a later ``os.chdir`` moves nothing);
        ``~`` is the home directory, also where no shell expands it (``.env``, keywords)."""
        return absolute_path(path) if path is not None else None

    @field_validator("dense_model", "query_model")
    @classmethod
    def _absolute_model_folder(cls, name: str | None) -> str | None:
        """A model given as an existing folder by a relative path (or ``~``) is that folder's absolute path, as the
        path settings are; a hub name (and the bundled default under either name) stays as it is."""
        if name is None or name in {DEFAULT_DENSE_MODEL, "all-MiniLM-L6-v2"}:
            return name
        relative = not Path(name).is_absolute()  # "~/models/x" too
        return str(absolute_path(name)) if relative and Path(name).expanduser().is_dir() else name

    @field_validator("collection")
    @classmethod
    def _check_collection(cls, name: str) -> str:
        return check_collection_name(name)

    @field_validator("qdrant_url")
    @classmethod
    def _check_qdrant_url(cls, url: str | None) -> str | None:
        """``http(s)://host[:port]`` (a server), ``file://<dir>`` or ``:memory:`` (qdrant-client's local mode);
        empty: unset (the embedded engine). ``~`` in ``<dir>`` is the home directory, as in the path settings.
        Surrounding whitespace is dropped (a secret written with ``echo`` ends in a newline). A server's URL is
        refused here, in the one settings line, with a control character inside (``urlsplit`` drops a newline or a
        tab silently), or when qdrant-client's parser (urllib3's, given the URL as
        :func:`~retrieval.store.server.connect` gives it: without user and password) refuses it (a space in the
        host)."""
        if not url:
            return None
        url = url.strip() or url  # whitespace alone is no URL (nor unset): refused below
        if url == ":memory:":
            return url
        if url.startswith("file://") and url.removeprefix("file://").strip():
            return f"file://{absolute_path(url.removeprefix('file://'))}"
        from urllib3.util import parse_url  # qdrant-client's dependency and parser, imported only for a server

        reason = ""
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
        except ValueError:  # e.g. a port that is not a number
            ok = False
        if ok and not url.isprintable():
            ok, reason = False, " (a control character inside it)"
        elif ok:
            try:
                parse_url(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
            except ValueError:  # urllib3's LocationParseError is one
                ok, reason = False, " (qdrant-client cannot parse it)"
        if not ok:
            raise ValueError(
                f"{redact_url(url)!r} is not a Qdrant URL{reason}: give http(s)://host[:port] for a server, "
                "file://<dir> or :memory: for qdrant-client's local mode, or leave it unset for the embedded engine"
            )
        return url

    @field_validator("qdrant_api_key", mode="before")
    @classmethod
    def _check_qdrant_api_key(cls, key: object) -> object:
        """Surrounding whitespace is dropped, as the URL's is (a secret written with ``echo`` or read from a file ends
        in a newline); whitespace alone is no key (unset, as an empty one is). A key with a control character or a
        non-ASCII character inside is refused here, in the one settings line, without showing it: an HTTP header
        cannot carry it (httpx would refuse it mid-request, quoting the key in its error)."""
        text = key.get_secret_value() if isinstance(key, SecretStr) else key
        if not isinstance(text, str):
            return key
        text = text.strip()
        if not text.isprintable():
            raise ValueError("a control character inside it (the key is not shown): give the key alone, on one line")
        if not text.isascii():
            raise ValueError("a non-ASCII character inside it (the key is not shown): an HTTP header cannot carry it")
        return text or None

    @field_validator("payload_indexes")
    @classmethod
    def _check_payload_indexes(cls, text: str | None) -> str | None:
        """One spelling per list: ``key:type`` pairs sorted by key (None when empty)."""
        indexes = parse_payload_indexes(text)
        return ",".join(f"{key}:{kind}" for key, kind in sorted(indexes.items())) or None

    @field_validator("bm25_language", mode="before")
    @classmethod
    def _check_bm25_language(cls, language: object) -> Bm25Language:
        return check_bm25_language(language)

    @field_validator("dense_device")
    @classmethod
    def _check_device(cls, device: str | None) -> str | None:
        """A device torch understands and this project runs on, checked without importing torch."""
        if device is None or not device.strip():
            return None
        if not _DEVICE.fullmatch(device.strip()):
            raise ValueError(f"unknown device {device!r}; use cpu, cuda (every GPU), cuda:N (one GPU) or mps")
        return device.strip()

    @model_validator(mode="after")
    def _check(self) -> RetrievalSettings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise SettingsConflict(
                "{chunk_overlap} must be smaller than {chunk_tokens}",
                chunk_overlap=self.chunk_overlap,
                chunk_tokens=self.chunk_tokens,
            )
        if self.bm25_stopwords == Bm25Stopwords.LUCENE and self.bm25_language != Bm25Language.ENGLISH:
            raise SettingsConflict(
                "{bm25_stopwords} is a list of English words: with {bm25_language} leave it at nltk (the default: "
                "NLTK's list of that language)",
                bm25_stopwords=str(self.bm25_stopwords),
                bm25_language=str(self.bm25_language),
            )
        return self

    def collection_models_dir(self) -> Path:
        """Where this collection's models live (``adapt``, ``tune-reranker``): ``models_dir``, default the folder
        next to ``qdrant_path`` (``data/models``), then the collection's name."""
        return (self.models_dir or self.qdrant_path.parent / "models") / self.collection

    def adapted_query_dir(self) -> Path:
        """Where the corpus-adapted query encoder of this collection is saved."""
        return self.collection_models_dir() / "query_encoder"

    def resolved_query_model(self) -> str | None:
        """The query encoder to use: ``query_model``, else the adapted one saved for this collection from the
        same dense model (see :mod:`evals.pseudo_queries`), else None (the dense model itself)."""
        if self.query_model or not self.adapted_query_model:
            return self.query_model
        marker = self.adapted_query_dir() / ADAPTED_MARKER
        if not marker.is_file():
            return None
        try:
            base_model = json.loads(marker.read_text(encoding="utf-8")).get("base_model")
        except (OSError, ValueError, AttributeError) as exc:  # unreadable, not JSON, not an object
            raise ModelLoadError(f"{marker}: unreadable ({exc}); {self.adapted_query_remedy()}") from exc
        same = base_model is not None and canonical_model(base_model) == canonical_model(self.dense_model)
        return str(marker.parent) if same else None

    def adapted_query_remedy(self) -> str:
        """What to do about a damaged adapted query encoder of this collection."""
        return (
            f"re-run `hybrid-rag adapt -c {self.collection}`, delete {self.adapted_query_dir()}, "
            "or set HYBRID_RAG_ADAPTED_QUERY_MODEL=false"
        )
