"""What the Dagster event log keeps of a corpus' text: the ``raw_documents`` and ``chunks`` materializations show a
preview of the first rows (ids, titles, text), which stays in the instance's SQLite files after the document is gone;
a corpus with ``previews: false`` in the corpora file keeps them out (the counts are still recorded)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets import chunks, raw_documents
from assets.corpora import CorpusConfigError, load_corpora
from assets.meta import PREVIEWS_OFF
from assets.resources import CorporaResource
from evals.collections import sample_collection
from orchestration.main_job import run_main_job
from tests.test_dagster_pipeline import Sandbox
from tests.test_dagster_versions import PARTITION, corpus_copy

MARKER = "ZEBRA-SECRET-4711"


def event_log_mentions(home: Path, text: str) -> list[str]:
    """The files of the Dagster instance at ``home`` whose bytes hold ``text``."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and text.encode() in p.read_bytes())


def materialize(root: Path, previews: str | None) -> tuple[dict, dict, Path]:
    """``raw_documents`` and ``chunks`` of a copy of the sample whose first document names :data:`MARKER`, on a
    persistent instance under ``root``; their metadata and the instance's folder."""
    sandbox = Sandbox(root)
    data, corpora = corpus_copy(root, "private")
    private = {"_id": f"{MARKER}-patient", "title": f"Patient {MARKER}", "text": f"Jane Roe, {MARKER}, diagnosis."}
    corpus = data / "corpus.jsonl"
    corpus.write_text(json.dumps(private) + "\n" + corpus.read_text())
    if previews is not None:
        corpora.write_text(corpora.read_text() + f"    previews: {previews}\n")
    resources = sandbox.resources(corpora=CorporaResource(path=str(corpora)))
    sandbox.home.mkdir()
    with dg.DagsterInstance.local_temp(str(sandbox.home)) as instance:
        result = dg.materialize(
            [raw_documents, chunks], partition_key=PARTITION, resources=resources, instance=instance
        )
    meta = {
        e.asset_key.path[-1]: {k: getattr(v, "value", v) for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }
    return meta["raw_documents"], meta["chunks"], sandbox.home


@pytest.mark.slow  # Dagster runs
@pytest.mark.parametrize("previews", [None, "false"])
def test_previews_false_keeps_document_text_out_of_the_event_log(previews, tmp_path: Path) -> None:
    docs, cut, home = materialize(tmp_path, previews)
    assert docs["documents"] > 1 and cut["chunks"] >= docs["documents"]  # the counts, either way
    if previews is None:  # the default: the first rows, marker included, stay in the event log
        assert MARKER in docs["preview"] and MARKER in cut["preview"]
        assert event_log_mentions(home, MARKER)
    else:
        assert docs["preview"] == cut["preview"] == PREVIEWS_OFF.value
        assert event_log_mentions(home, MARKER) == []


def test_previews_must_be_a_yaml_boolean(tmp_path: Path) -> None:
    path = tmp_path / "corpora.yaml"
    path.write_text("corpora:\n  kb: {source: kb, format: dir, previews: 'no'}\n")
    with pytest.raises(CorpusConfigError, match=r"corpus 'kb': 'previews' must be true or false \(unquoted\)"):
        load_corpora(path).get("kb")
    path.write_text("corpora:\n  kb: {source: kb, format: dir, previews: false}\n  kc: {source: kc, format: dir}\n")
    assert [c.previews for c in load_corpora(path).corpora.values()] == [False, True]


@pytest.mark.slow  # a whole main job run
def test_previews_false_keeps_query_text_and_hit_ids_of_the_evaluation_out_too(tmp_path: Path) -> None:
    """The evaluation's ``sample_queries`` (query text, the ids of their hits) follows the same switch."""
    sandbox = Sandbox(tmp_path)
    data, corpora = corpus_copy(tmp_path, "private")
    corpora.write_text(corpora.read_text() + "    previews: false\n")
    sample = sample_collection()
    qrels = sample.qrels("test")
    first = sorted(qrels)[0]  # the first query sample_queries would show, and a document it finds
    query, hit = sample.split_queries("test")[first], next(iter(qrels[first]))
    summary = run_main_job(
        PARTITION, dagster_home=sandbox.home, resources=sandbox.resources(corpora=CorporaResource(path=str(corpora)))
    )
    assert summary["metrics"]["hybrid"]["ndcg@10"] > 0.5  # evaluated
    evaluation = sandbox.metadata("retrieval_evaluation")
    assert evaluation["sample_queries"] == PREVIEWS_OFF.value and evaluation["queries"] > 0
    assert event_log_mentions(sandbox.home, query) == []
    assert event_log_mentions(sandbox.home, f"| {hit}") == []  # not a table cell: no preview nor sample row
