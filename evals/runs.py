"""TREC run files: ``qid Q0 docid rank score tag``, one line per hit.

A run is ``dict[query_id, dict[doc_id, score]]``. The score column of a written run is rank-derived
(``n - rank + 1`` of the query's ``n`` hits, in :func:`rank_hits` order), the scores
:func:`evals.metrics.evaluate` gives pytrec_eval: trec_eval reads scores as 32-bit floats and re-sorts ties by
doc id, so the system's own scores, which may differ by 1e-9 (:func:`best_chunk_per_document`, the top-ups),
would not keep their order there. A write/read round trip keeps every query's order, hence every metric, not the
scores. A query with no hits has no line and therefore does not survive a round trip (the format cannot express
it). What produced a run (the evaluation's history context: index, models, settings) is kept beside it, in
``RUN.context.json`` (:func:`write_run_context`), for ``compare`` to tell two runs' origins apart.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

from retrieval.errors import InputFormatError, InputNotFoundError, InvalidArgumentError
from retrieval.input_files import text_lines
from retrieval.wording import counted

Run = dict[str, dict[str, float]]

log = logging.getLogger(__name__)


class RunFormatError(InputFormatError):
    """A malformed run file line; the message starts with ``file:line``."""

    def __init__(self, path: Path, line: int | None, reason: str):
        super().__init__(f"{path}:{line}: {reason}" if line is not None else f"{path}: {reason}")
        self.path, self.line, self.reason = path, line, reason


class RunIdError(InvalidArgumentError):
    """An id or tag a TREC run file cannot hold (empty, or with whitespace: the format splits lines on it)."""


def best_chunk_per_document(ranked: Iterable[tuple[str, float]], depth: int | None = None) -> dict[str, float]:
    """A document ranking from ``(doc_id, score)`` chunk hits in rank order: each document once, at its best
    (first) chunk, at most ``depth`` documents.

    Scores are lowered by ``position * 1e-9`` so that they strictly decrease in the given order and
    trec_eval's tie-breaking (:func:`rank_hits`) cannot re-order tied documents.
    """
    ranking: dict[str, float] = {}
    for position, (doc_id, score) in enumerate(ranked):
        if doc_id not in ranking:
            ranking[doc_id] = float(score) - position * 1e-9
            if len(ranking) == depth:
                break
    return ranking


def rank_hits(hits: Mapping[str, float]) -> list[tuple[str, float]]:
    """Hits in trec_eval's order: score descending, ties broken by doc id descending.

    trec_eval (and so pytrec_eval) ignores the rank column and re-sorts this way; using the same order
    everywhere keeps written ranks, truncation (MRR@10) and the scores pytrec_eval computes consistent.
    """
    return sorted(hits.items(), key=lambda item: (item[1], item[0]), reverse=True)


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str) -> Path:
    """Write ``run`` as a TREC run file (:func:`format_run`'s text). An id the format cannot hold, or a NaN score,
    raises before anything is written."""
    path = Path(path)
    text = format_run(run, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def format_run(run: Mapping[str, Mapping[str, float]], tag: str) -> str:
    """``run`` as a TREC run file's text; ranks start at 1 in :func:`rank_hits` order and each line's score is
    ``n - rank + 1`` (see the module docstring). An id the format cannot hold, or a NaN score, raises."""
    _check_token(tag, "run tag")
    lines: list[str] = []
    for qid, hits in run.items():
        _check_token(qid, "query id")
        for doc_id, score in hits.items():
            if math.isnan(float(score)):
                raise ValueError(f"query {qid!r}, doc {doc_id!r}: score is NaN")
        ranked = rank_hits(hits)
        for rank, (doc_id, _) in enumerate(ranked, start=1):
            _check_token(doc_id, f"doc id (query {qid!r})")
            lines.append(f"{qid} Q0 {doc_id} {rank} {float(len(ranked) - rank + 1)!r} {tag}\n")
    return "".join(lines)


def read_run(path: str | Path) -> tuple[Run, str]:
    """Read a TREC run file; returns ``(run, tag)`` (tag ``""`` for an empty file).

    Raises :class:`RunFormatError` naming file and line for a wrong field count, a bad rank or score,
    a repeated (query, doc) pair or a tag different from the first line's. Hits rank in the order of their scores
    (trec_eval's, :func:`rank_hits`), not by the rank column: a warning names the queries whose scores do not fall
    as the rank rises (a distance, where lower is better; one score for every hit).
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such run file")
    run: Run = {}
    ranked: dict[str, list[tuple[int, float]]] = {}
    tag: str | None = None
    for line_no, line in text_lines(path, RunFormatError):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 6:
            raise RunFormatError(path, line_no, f"expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}")
        qid, _, doc_id, rank_text, score_text, line_tag = fields
        try:
            rank = int(rank_text)
        except ValueError:
            raise RunFormatError(path, line_no, f"rank {rank_text!r} is not an integer") from None
        try:
            score = float(score_text)
        except ValueError:
            raise RunFormatError(path, line_no, f"score {score_text!r} is not a number") from None
        if math.isnan(score):
            raise RunFormatError(path, line_no, "score is NaN")
        if tag is None:
            tag = line_tag
        elif line_tag != tag:
            raise RunFormatError(path, line_no, f"tag {line_tag!r} differs from the first line's {tag!r}")
        hits = run.setdefault(qid, {})
        if doc_id in hits:
            raise RunFormatError(path, line_no, f"doc {doc_id!r} listed twice for query {qid!r}")
        hits[doc_id] = score
        ranked.setdefault(qid, []).append((rank, score))
    _warn_unordered(path, ranked)
    return run, tag or ""


def _warn_unordered(path: Path, ranked: Mapping[str, list[tuple[int, float]]]) -> None:
    """Warn of the queries whose scores rise somewhere as the rank rises, or never fall (one score for all)."""
    unordered = []
    for qid, hits in ranked.items():
        scores = [score for _, score in sorted(hits, key=lambda hit: hit[0])]
        rising = any(later > earlier for earlier, later in pairwise(scores))
        if rising or (len(scores) > 1 and len(set(scores)) == 1):
            unordered.append(qid)
    if unordered:
        log.warning(
            "%s: in %s the scores do not fall as the rank rises (e.g. query %r): hits are scored in the order of "
            "their scores, highest first, as trec_eval orders them, not by rank; negate a distance (lower is "
            "better) or write scores that fall with rank",
            path,
            f"{len(unordered):,} of {counted(len(ranked), 'query')}",
            unordered[0],
        )


def _check_token(value: str, what: str) -> None:
    if not isinstance(value, str) or not value or any(ch.isspace() for ch in value):
        raise RunIdError(f"{what} must be a non-empty string without whitespace for a TREC run file, got {value!r}")


def context_path(run_path: str | Path) -> Path:
    """Where the context of the run file ``run_path`` is kept: ``RUN.context.json`` beside it."""
    path = Path(run_path)
    return path.with_name(path.name + ".context.json")


def write_run_context(run_path: str | Path, context: Mapping[str, Any]) -> Path:
    """Keep ``context`` (what produced the run at ``run_path``: an evaluation's history context) beside it."""
    path = context_path(run_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(context), indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def read_run_context(run_path: str | Path) -> dict[str, Any] | None:
    """The context kept beside the run file ``run_path``; None when there is none (a run written elsewhere).
    Raises :class:`InputFormatError` naming the file when it is not a JSON object."""
    path = context_path(run_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFormatError(f"{path}: not a run context (invalid JSON: {exc})") from None
    if not isinstance(data, dict):
        raise InputFormatError(f"{path}: not a run context (a JSON object expected)")
    return data
