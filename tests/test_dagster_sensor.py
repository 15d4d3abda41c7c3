"""The drop-folder sensor against a temporary folder, and the schedules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from assets import CORPORA
from assets.corpora import CorpusConfigError, load_corpora
from assets.resources import CorporaResource
from orchestration.schedules import daily_evaluation, nightly_reindex
from orchestration.sensors import MAX_RETRIES, build_drop_folder_sensor, folder_manifest, manifest_digest

SAMPLE = Path(__file__).resolve().parents[1] / "evals" / "sample"


class Folder:
    """Evaluates the sensor on ``path`` against a Dagster instance, carrying the cursor from one tick to the next
    like the daemon does."""

    def __init__(self, path: Path, instance: dg.DagsterInstance):
        self.path = path
        self.instance = instance
        self.sensor = build_drop_folder_sensor(path, "dropbox")
        self.cursor: str | None = None
        self.skip_message: str | None = None

    def tick(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(cursor=self.cursor, instance=self.instance)
        result = self.sensor(context)
        if isinstance(result, dg.SensorResult):
            self.cursor = result.cursor or self.cursor
            return list(result.run_requests or [])
        assert isinstance(result, dg.SkipReason)
        self.skip_message = result.skip_message
        return []


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def folder(tmp_path: Path, instance: dg.DagsterInstance) -> Folder:
    (tmp_path / "drop").mkdir()
    return Folder(tmp_path / "drop", instance)


def _touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_empty_folder_requests_nothing(folder: Folder) -> None:
    assert folder.tick() == []
    assert folder.tick() == []


def test_new_file_requests_a_dropbox_run(folder: Folder) -> None:
    folder.tick()
    (folder.path / "note.md").write_text("# Note\nSome text.")
    [request] = folder.tick()
    assert request.partition_key == "dropbox"
    assert folder.sensor.job_name == "reindex"
    assert request.run_key and request.tags["hybrid_rag/changes"] == "1 added, 0 changed, 0 removed"
    assert json.loads(folder.cursor)["files"].keys() == {"note.md"}


def test_unchanged_folder_requests_nothing(folder: Folder) -> None:
    (folder.path / "a.txt").write_text("alpha")
    assert len(folder.tick()) == 1
    assert folder.tick() == [] and "no change" in folder.skip_message


def test_modified_and_removed_files_request_runs(folder: Folder) -> None:
    (folder.path / "a.txt").write_text("alpha")
    (folder.path / "b.txt").write_text("beta")
    [first] = folder.tick()
    (folder.path / "a.txt").write_text("alpha, edited")
    _touch_later(folder.path / "a.txt")
    [changed] = folder.tick()
    assert changed.tags["hybrid_rag/changes"] == "0 added, 1 changed, 0 removed"
    (folder.path / "b.txt").unlink()
    [removed] = folder.tick()
    assert removed.tags["hybrid_rag/changes"] == "0 added, 0 changed, 1 removed"
    assert len({first.run_key, changed.run_key, removed.run_key}) == 3
    assert folder.tick() == []


def test_returning_to_an_earlier_state_still_requests_a_run(folder: Folder) -> None:
    (folder.path / "a.txt").write_text("alpha")
    [first] = folder.tick()
    (folder.path / "a.txt").rename(folder.path.parent / "a.txt")
    [emptied] = folder.tick()
    (folder.path.parent / "a.txt").rename(folder.path / "a.txt")  # same name, mtime and size as before
    [back] = folder.tick()
    assert len({first.run_key, emptied.run_key, back.run_key}) == 3


def test_hidden_files_are_ignored(folder: Folder) -> None:
    (folder.path / ".DS_Store").write_text("x")
    (folder.path / ".git").mkdir()
    (folder.path / ".git" / "HEAD").write_text("ref")
    (folder.path / "sub").mkdir()
    (folder.path / "sub" / "c.md").write_text("# C")
    assert folder_manifest(folder.path).keys() == {"sub/c.md"}
    (folder.path / "sub" / "~$report.docx").write_bytes(b"\x0aJane" + b"\x00" * 100)  # Word opened a document
    assert folder_manifest(folder.path).keys() == {"sub/c.md"}


def test_files_in_linked_folders_are_watched_as_they_are_indexed(folder: Folder, tmp_path: Path) -> None:
    team = tmp_path / "team"
    team.mkdir()
    (team / "shared.txt").write_text("Team note.")
    (folder.path / "team").symlink_to(team, target_is_directory=True)
    (team / "up").symlink_to(folder.path, target_is_directory=True)  # a loop: not followed
    assert folder_manifest(folder.path).keys() == {"team/shared.txt"}


def test_missing_folder_is_skipped(tmp_path: Path) -> None:
    sensor = build_drop_folder_sensor(tmp_path / "absent", "dropbox")
    result = sensor(dg.build_sensor_context())
    assert isinstance(result, dg.SensorResult) and not result.run_requests
    assert "does not exist" in result.skip_reason.skip_message


def schedule_context(when: datetime, corpora_file: Path) -> dg.ScheduleEvaluationContext:
    resources = {"corpora": CorporaResource(path=str(corpora_file))}
    return dg.build_schedule_context(scheduled_execution_time=when, resources=resources)


@pytest.fixture
def corpora_file(tmp_path: Path) -> Path:
    """Two corpora on this machine (one with qrels) and one whose source is missing."""
    (tmp_path / "notes").mkdir()
    file = tmp_path / "corpora.yaml"
    file.write_text(
        "corpora:\n"
        f"  sample: {{source: {SAMPLE}, format: beir, qrels: {SAMPLE}}}\n"
        "  scifact: {source: /no/such/scifact, format: beir, qrels: /no/such/scifact}\n"
        f"  dropbox: {{source: {tmp_path / 'notes'}, format: dir}}\n"
    )
    return file


def test_nightly_reindex_requests_each_corpus_present_and_skips_missing_ones(corpora_file: Path) -> None:
    assert nightly_reindex.cron_schedule == "0 2 * * *"
    when = datetime(2026, 1, 2, 2, 0, tzinfo=UTC)
    requests = nightly_reindex(schedule_context(when, corpora_file))
    assert [r.partition_key for r in requests] == ["sample", "dropbox"]  # scifact's source is missing
    assert all(r.run_key == f"reindex-{r.partition_key}-2026-01-02" for r in requests)
    assert all(r.tags["hybrid_rag/corpus"] == r.partition_key for r in requests)


def test_nightly_reindex_skips_the_tick_when_no_source_exists(tmp_path: Path) -> None:
    file = tmp_path / "corpora.yaml"
    file.write_text("corpora:\n  scifact: {source: /no/such/scifact, format: beir}\n")
    result = nightly_reindex(schedule_context(datetime(2026, 1, 2, 2, 0, tzinfo=UTC), file))
    assert isinstance(result, dg.SkipReason) and "scifact (/no/such/scifact does not exist)" in result.skip_message


def test_evaluation_schedule_requests_corpora_with_qrels_present(corpora_file: Path) -> None:
    requests = list(daily_evaluation(schedule_context(datetime(2026, 1, 2, 6, 0, tzinfo=UTC), corpora_file)))
    assert [r.partition_key for r in requests] == ["sample"]
    assert [r.tags["hybrid_rag/corpus"] for r in requests] == ["sample"]


def test_shipped_schedules_cover_the_configured_corpora() -> None:
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime.now(UTC), resources={"corpora": CorporaResource()}
    )
    names = {r.partition_key for r in nightly_reindex(context)}
    assert names == {c.name for c in CORPORA.corpora.values() if c.source.exists()} and "sample" in names


@pytest.mark.parametrize("value", ['"false"', '"no"', "1", "null"])
def test_watch_must_be_a_yaml_boolean(tmp_path: Path, value: str) -> None:
    file = tmp_path / "corpora.yaml"
    file.write_text(f"corpora:\n  notes: {{source: n, format: dir, watch: {value}}}\n")
    with pytest.raises(CorpusConfigError, match="'watch' must be true or false") as raised:
        load_corpora(file).get("notes")
    assert str(file) in str(raised.value) and "corpus 'notes'" in str(raised.value)


def test_a_file_source_is_watched_by_its_own_size_and_mtime(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"_id": "n1", "text": "note one about herons"}\n')
    watched = Folder(notes, instance)
    [first] = watched.tick()
    assert first.tags["hybrid_rag/changes"] == "1 added, 0 changed, 0 removed"
    assert watched.tick() == [] and watched.skip_message == f"no change in {notes}"
    with notes.open("a") as handle:
        handle.write('{"_id": "n2", "text": "another note about herons"}\n')
    [changed] = watched.tick()
    assert changed.tags["hybrid_rag/changes"] == "0 added, 1 changed, 0 removed"
    notes.unlink()
    [removed] = watched.tick()
    assert removed.tags["hybrid_rag/changes"] == "0 added, 0 changed, 1 removed"


def test_a_broken_link_is_not_reported_as_removed_files(folder: Folder, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "s1.md").write_text("# S1")
    (share / "s2.md").write_text("# S2")
    (folder.path / "own.md").write_text("# Own")
    (folder.path / "shared").symlink_to(share, target_is_directory=True)
    (folder.path / "s1-link.md").symlink_to(share / "s1.md")
    [first] = folder.tick()
    assert first.tags["hybrid_rag/changes"] == "4 added, 0 changed, 0 removed"
    share.rename(tmp_path / "share.unmounted")  # both links break: what they hold is unknown, not removed
    assert folder.tick() == []
    (folder.path / "own.md").unlink()
    [removed] = folder.tick()
    assert removed.tags["hybrid_rag/changes"] == "0 added, 0 changed, 1 removed"
    (tmp_path / "share.unmounted").rename(share)
    assert folder.tick() == []  # back as they were


@dg.op(config_schema={"fail": dg.Field(bool, default_value=False)})
def _reindex_stand_in(context) -> None:  # noqa: ANN001 (Dagster reads the annotation, a string here)
    if context.op_config["fail"]:
        raise RuntimeError("the run worker died")


@dg.job
def _stand_in_job() -> None:
    _reindex_stand_in()


def _run(folder: Folder, request: dg.RunRequest, *, fail: bool) -> dg.DagsterRunStatus:
    """A real run of the request in the folder's instance, tagged as the daemon tags the run it launches for it."""
    result = _stand_in_job.execute_in_process(
        run_config={"ops": {"_reindex_stand_in": {"config": {"fail": fail}}}},
        instance=folder.instance,
        tags={**request.tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )
    return folder.instance.get_run_by_id(result.run_id).status


def test_a_change_whose_run_failed_is_requested_again(folder: Folder) -> None:
    (folder.path / "a.txt").write_text("alpha")
    [first] = folder.tick()
    assert _run(folder, first, fail=True) == dg.DagsterRunStatus.FAILURE
    [again] = folder.tick()  # the folder did not change: the failed run's change is still not indexed
    assert again.run_key != first.run_key and again.partition_key == "dropbox"
    assert again.tags["hybrid_rag/changes"] == "1 added, 0 changed, 0 removed" and again.tags["hybrid_rag/retry"] == "1"
    assert folder.tick() == []  # not run yet: requested once, not at every tick
    assert _run(folder, again, fail=False) == dg.DagsterRunStatus.SUCCESS
    assert folder.tick() == [] and "no change" in folder.skip_message


def test_a_successful_queued_or_running_run_is_not_requested_again(folder: Folder) -> None:
    (folder.path / "a.txt").write_text("alpha")
    [first] = folder.tick()
    for status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED):
        folder.instance.create_run_for_job(
            _stand_in_job, status=status, tags=first.tags
        )  # a queued, then a running one
        assert folder.tick() == []
    assert _run(folder, first, fail=False) == dg.DagsterRunStatus.SUCCESS
    assert folder.tick() == []


def test_a_change_that_keeps_failing_is_retried_a_bounded_number_of_times(folder: Folder) -> None:
    (folder.path / "a.txt").write_text("alpha")
    [request] = folder.tick()
    for _ in range(MAX_RETRIES):
        _run(folder, request, fail=True)
        [request] = folder.tick()
    _run(folder, request, fail=True)
    assert folder.tick() == [] and f"after {MAX_RETRIES} retries: waiting for the next change" in folder.skip_message
    (folder.path / "b.txt").write_text("beta")  # a new change gets its own retries
    [new] = folder.tick()
    _run(folder, new, fail=True)
    [retry] = folder.tick()
    assert retry.tags["hybrid_rag/retry"] == "1"


def test_making_a_file_readable_is_a_change(folder: Folder) -> None:
    note = folder.path / "locked.md"
    note.write_text("# Locked\nText the run could not read.")
    note.chmod(0o000)
    folder.tick()
    note.chmod(0o644)  # only the ctime changes: the run that skipped it must run again
    [fixed] = folder.tick()
    assert fixed.tags["hybrid_rag/changes"] == "0 added, 1 changed, 0 removed"


def test_a_cursor_of_an_earlier_release_requests_one_run(folder: Folder) -> None:
    """Cursors written before the manifest had the ctime: one run (everything "changed"), not one per tick."""
    (folder.path / "a.txt").write_text("alpha")
    folder.tick()
    state = json.loads(folder.cursor)
    files = {path: entry[:2] for path, entry in state["files"].items()}
    folder.cursor = json.dumps({"digest": manifest_digest(files), "seq": state["seq"], "files": files})
    [upgrade] = folder.tick()
    assert upgrade.tags["hybrid_rag/changes"] == "0 added, 1 changed, 0 removed"
    assert folder.tick() == []


def test_the_sensor_interval_comes_from_the_corpora_file(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    file = tmp_path / "corpora.yaml"
    file.write_text("corpora:\n  notes: {source: notes, format: dir, watch: true, watch_interval: 120}\n")
    sensor = "defs.resolve_sensor_def('notes_sensor')"
    code = f"from orchestration.definitions import defs; print({sensor}.minimum_interval_seconds)"
    env = {**os.environ, "HYBRID_RAG_CORPORA_FILE": str(file), "PYTHONPATH": str(SAMPLE.parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.strip() == "120", done.stderr[-2000:]
    assert load_corpora(SAMPLE.parents[1] / "corpora.yaml").get("dropbox").watch_interval == 30  # the default


@pytest.mark.parametrize("value", ["2", "true", "1.5", '"60"', "null"])
def test_watch_interval_must_be_whole_seconds_of_at_least_five(tmp_path: Path, value: str) -> None:
    file = tmp_path / "corpora.yaml"
    file.write_text(f"corpora:\n  notes: {{source: n, format: dir, watch: true, watch_interval: {value}}}\n")
    with pytest.raises(CorpusConfigError, match="'watch_interval' must be a whole number of seconds, at least 5"):
        load_corpora(file).get("notes")
