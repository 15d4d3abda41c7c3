"""What an indexing run reports, the same way on every path (``IndexReport``, ``index --json``, the ``-v`` log line,
the Dagster assets' metadata): what "embedded" counts, which documents a pruning write deleted, and what its
durations cover."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval.indexer import MAX_NAMED, named
from tests.conftest import BACKENDS, TINY_DOCS


@pytest.fixture(params=BACKENDS)
def indexer(request, indexed_stack):
    stack = indexed_stack(request.param)  # TINY_DOCS: one chunk each
    yield stack.indexer()
    stack.close()


def test_embedded_counts_the_vectors_computed_now_not_those_read_from_the_cache(cli_env: Path):
    """As the Dagster dense_vectors asset counts them: ``embedded`` computed now, ``reused_from_cache`` read."""
    source = cli_env / "docs.jsonl"
    source.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in TINY_DOCS))

    def index(collection: str) -> dict:
        result = CliRunner().invoke(app, ["index", str(source), "-c", collection, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    first = index("a")
    assert (first["written"], first["embedded"], first["reused_from_cache"]) == (8, 8, 0)
    again = index("b")  # another collection, the same texts: every dense vector is in the cache
    assert (again["written"], again["embedded"], again["reused_from_cache"]) == (8, 0, 8)  # before: 8 embedded
    assert "cache_reused" not in again  # one name, the assets' one


def test_a_pruning_write_names_the_documents_it_deleted(indexer, caplog):
    with caplog.at_level(logging.INFO, logger="retrieval.indexer"):
        report = indexer.index(TINY_DOCS[:-2], prune=True, progress=False)
    assert (report.deleted, report.deleted_documents) == (2, ["bank", "bees"])  # before: a count only
    assert "test: deleted 2 documents absent from the source: 'bank', 'bees'" in caplog.text
    assert indexer.index(TINY_DOCS[:2], progress=False).deleted_documents == []  # adding deletes nothing
    rebuilt = indexer.rebuild(TINY_DOCS[:3], progress=False)
    assert rebuilt.deleted_documents == sorted(d.id for d in TINY_DOCS[3:-2])


def test_index_json_lists_the_deleted_documents(cli_env: Path):
    source = cli_env / "docs.jsonl"

    def index(docs, *flags: str) -> dict:
        source.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in docs))
        result = CliRunner().invoke(app, ["index", str(source), "-c", "kb", "--json", *flags])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert index(TINY_DOCS)["deleted_documents"] == []
    synced = index(TINY_DOCS[1:-1], "--sync")
    assert (synced["deleted"], synced["deleted_documents"]) == (2, sorted([TINY_DOCS[0].id, TINY_DOCS[-1].id]))


def test_the_log_line_time_is_the_printed_chunking_to_publishing_part(cli_env: Path, caplog):
    """One write, one set of figures: the INFO line's time is the part the printed line calls chunking to
    publishing; the printed total adds reading the source and starting (importing torch, opening the stack)."""
    source = cli_env / "docs.jsonl"
    source.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in TINY_DOCS))
    with caplog.at_level(logging.INFO, logger="retrieval.indexer"):
        result = CliRunner().invoke(app, ["index", str(source), "-c", "kb"])
    assert result.exit_code == 0, result.output
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("indexed kb")]
    logged = re.search(r" in (\d+\.\d)s \(chunking to publishing\)$", line)
    assert logged, line  # before: "... in 6.6s", saying nothing of what it covers, beside a printed 8.5 s
    parts_line = r"^(\S+)s: reading (\S+)s, starting (\S+)s, chunking to publishing (\S+)s$"
    printed = re.search(parts_line, result.stdout, re.MULTILINE)
    assert printed, result.stdout
    total, *parts = map(float, printed.groups())
    assert printed[4] == logged[1] and abs(sum(parts) - total) <= 0.25, (line, printed[0])  # rounding only


def test_the_chunking_to_publishing_part_leaves_out_loading_the_models(settings, caplog):
    """README: "starting" is importing torch and opening the models; the indexer's part is chunking to publishing.
    Loading the dense model (20-40 s for the CLI on a busy machine, more than an unchanged 20,000-document sync's
    own work) was counted in that part: ``seconds`` ran from before the model loaded."""
    import time

    from retrieval.stack import RetrievalStack

    with RetrievalStack(settings) as stack, caplog.at_level(logging.INFO, logger="retrieval.encoders.dense"):
        report = stack.indexer().index(TINY_DOCS[:2], progress=False)  # a fresh stack: its model loads in here
        ended = time.time()
    [loading] = [r for r in caplog.records if r.getMessage().startswith("loading dense model")]
    # the part before the load (a cache check) takes far less than the load: before, seconds >= this span
    assert report.seconds < ended - loading.created, (report.seconds, ended - loading.created)


def test_named_caps_a_long_list_and_says_how_many_more():
    ids = [f"doc-{i:04d}" for i in range(MAX_NAMED + 1234)]
    text = named(ids)
    assert text.startswith("'doc-0000', 'doc-0001'") and text.endswith(f"'doc-{MAX_NAMED - 1:04d}' and 1,234 more")
    assert named(["a"]) == "'a'"


def test_reports_show_a_few_of_a_long_list_and_how_many_more(indexed_stack, tmp_path):
    """What a notebook shows for a report: 5,000 skipped lines were a repr of about a megabyte."""
    from evals.metrics import evaluate
    from retrieval import read_documents

    source = tmp_path / "bad.jsonl"
    lines = ['{"_id": "ok", "text": "a good line"}'] + [f"{{broken {i}" for i in range(5000)]
    source.write_text("\n".join(lines) + "\n")
    docs, read = read_documents(source, policy="skip")
    assert len(docs) == 1 and read.skipped_count == 5000
    shown = repr(read)
    assert shown.startswith("ReadReport(skipped=[InputProblem(") and shown.endswith(", ... 4,995 more])")
    assert len(shown) < 2000

    stack = indexed_stack("edge")
    deleted = stack.indexer().delete_documents([f"absent-{i}" for i in range(3000)])
    assert len(deleted.missing) == 3000  # the report keeps every one; only its repr is short
    assert "missing=['absent-0', 'absent-1', 'absent-2', 'absent-3', 'absent-4', ... 2,995 more]" in repr(deleted)
    assert len(repr(deleted)) < 400
    stack.close()

    scored = evaluate({f"q{i}": {"d": 1} for i in range(300)}, {"q0": {"d": 1.0}})
    assert len(scored.per_query) == 300 and "... 295 more}" in repr(scored) and len(repr(scored)) < 3000
