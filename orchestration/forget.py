"""What hybrid-rag writes of a Dagster corpus beside its collection, removed for good (``hybrid-rag drop --corpus``):
its asset tables, its evaluation reports and its evaluation history rows of that collection. The Dagster
instance's run history is Dagster's to remove (``dagster run delete``, ``dagster asset wipe``: README, "Removing a
corpus completely")."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from assets.corpora import CorpusConfigError, check_corpus_name, load_corpora
from assets.evaluation import legacy_report_files, report_files, reports_dir
from evals.history import EvalHistory
from orchestration.parquet_io import assets_dir


@dataclass
class CorpusLeftovers:
    """What :func:`find_leftovers` found of a corpus (and :func:`remove_leftovers` removes)."""

    corpus: str
    tables: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    history: EvalHistory | None = None
    history_ids: list[int] = field(default_factory=list)
    other_rows: int = 0  # rows of the same name that searched another collection: kept

    @property
    def history_rows(self) -> int:
        return len(self.history_ids)


def check_removable(corpus: str, collection: str, *, keep_collection: bool = False) -> None:
    """Refuse a name no corpus can have, a corpus the corpora file still configures for another collection (with
    ``keep_collection``: at all, the option being for a removed or renamed corpus' old name), and (unless
    ``keep_collection``) dropping a collection the corpora file gives another corpus (a renamed one)."""
    check_corpus_name(corpus)
    try:
        corpora = load_corpora()
    except CorpusConfigError:
        corpora = None  # a malformed corpora file configures nothing; the corpus may be gone from it
    configured = corpora.corpora if corpora is not None else {}
    if corpus in configured and configured[corpus].collection != collection:
        raise CorpusConfigError(
            f"corpus {corpus!r} indexes collection {configured[corpus].collection!r}, not {collection!r}: "
            "nothing was changed"
        )
    if keep_collection and corpus in configured:
        assert corpora is not None
        raise CorpusConfigError(
            f"corpus {corpus!r} is still configured in {corpora.path}: --keep-collection forgets an old corpus name "
            "(removed or renamed); remove it from the corpora file first. Nothing was changed"
        )
    users = [c.name for c in configured.values() if c.collection == collection and c.name != corpus]
    if users and not keep_collection:
        assert corpora is not None
        raise CorpusConfigError(
            f"collection {collection!r} is still indexed by corpus {users[0]!r} in {corpora.path}: nothing was "
            f"changed; to forget only corpus {corpus!r} (its asset tables, reports and evaluation history rows) and "
            "keep the collection and its models, add --keep-collection"
        )


def find_leftovers(corpus: str, collection: str, history_path: Path) -> CorpusLeftovers:
    """The corpus' asset tables (``$HYBRID_RAG_ASSETS_DIR/<asset>/<corpus>.parquet``), and its evaluation history
    rows (recorded under its name) in the history at ``history_path`` that searched ``collection`` (a row that
    names no searched collection too), with their splits' reports (an earlier release's names too, when no other
    corpus can have written them)."""
    found = CorpusLeftovers(corpus)
    assets = assets_dir()
    found.tables = sorted(p for p in assets.glob(f"*/{corpus}.parquet") if p.is_file())
    if history_path.is_file():
        found.history = EvalHistory(history_path, create=False)
        rows = found.history.records(collection=corpus)
        # a row names the collection it searched; one that names none (an earlier release's) goes with its name
        ours = rows.loc[[c.get("qdrant_collection", collection) == collection for c in rows["context"]]]
        found.history_ids = [int(i) for i in ours["id"]]
        found.other_rows = len(rows) - len(ours)
        splits = set(ours["split"])
        found.reports = sorted(
            {p for s in splits for p in report_files(found.history, corpus, s) if p.is_file()}
            | {p for s in splits for p in legacy_report_files(found.history, corpus, s)}
        )
    return found


def remove_leftovers(found: CorpusLeftovers) -> None:
    """Delete what :func:`find_leftovers` found (a corpus' reports folder too, once empty)."""
    for path in [*found.tables, *found.reports]:
        path.unlink(missing_ok=True)
    if found.history is None:
        return
    folder = reports_dir(found.history) / found.corpus
    if folder.is_dir() and not any(folder.iterdir()):
        with contextlib.suppress(OSError):  # a run of the corpus writes into it again
            folder.rmdir()
    if found.history_ids:
        found.history.forget(found.history_ids)
