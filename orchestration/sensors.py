"""A sensor per watched drop folder: re-index its corpus when files are added, changed or removed.

The cursor holds the folder's manifest (relative path -> [mtime_ns, size, ctime_ns] of every non-hidden file; for
a source that is one file, a JSONL file or one text file, its name -> its own), its SHA-256 digest, a sequence
number and how many times the run for that manifest was requested again; the run key is derived from the digest
(plus the sequence number, so that a folder returning to an earlier state is still re-indexed). The ctime makes a
chmod, chown or rename-over a change: a file the last run could not read is read again once it is fixed.

A run requested for the current manifest that ended FAILURE or CANCELED (a killed worker, a stopped daemon, bad
input) is requested again, at most ``MAX_RETRIES`` times per manifest; then the sensor waits for the next change.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from assets.corpora import dagster_name
from orchestration.jobs import reindex_job
from retrieval.documents import InputProblem, covered_by, visible_files
from retrieval.wording import counted

Manifest = dict[str, list[int]]
MAX_RETRIES = 2
REQUEST_TAG = "hybrid_rag/request"  # the run key of the first request for a manifest, on each of its retries too
RETRY_TAG = "hybrid_rag/retry"
_ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _entry(stat: os.stat_result) -> list[int]:
    return [stat.st_mtime_ns, stat.st_size, stat.st_ctime_ns]


def folder_manifest(folder: Path, unlisted: list[InputProblem] | None = None) -> Manifest:
    """Relative path -> [mtime_ns, size, ctime_ns] of every file under ``folder`` (hidden files and folders
    excluded), or of ``folder`` itself when it is a file. A subfolder that cannot be listed and a broken link go to
    ``unlisted`` (see :func:`visible_files`)."""
    if folder.is_file():
        return {folder.name: _entry(folder.stat())}
    if not folder.is_dir():
        return {}
    manifest: Manifest = {}
    for path in visible_files(folder, [] if unlisted is None else unlisted):  # the files the reader indexes
        manifest[path.relative_to(folder).as_posix()] = _entry(path.stat())
    return manifest


def _keep_unlisted(old: Manifest, new: Manifest, unlisted: list[InputProblem]) -> Manifest:
    """``new`` with the entries of ``old`` under the folders and links that could not be listed this time: what
    they hold is unknown, not removed (the re-index keeps their documents too)."""
    covered = covered_by(unlisted)
    return {**{p: v for p, v in old.items() if covered(p)}, **new}


def manifest_digest(manifest: Manifest) -> str:
    return hashlib.sha256(json.dumps(sorted(manifest.items())).encode()).hexdigest()


def manifest_changes(old: Manifest, new: Manifest) -> dict[str, list[str]]:
    return {
        "added": sorted(set(new) - set(old)),
        "changed": sorted(p for p in set(new) & set(old) if new[p] != old[p]),
        "removed": sorted(set(old) - set(new)),
    }


def build_drop_folder_sensor(
    folder: str | Path, corpus: str, *, name: str | None = None, minimum_interval_seconds: int = 30
) -> dg.SensorDefinition:
    """A sensor requesting a ``reindex`` run of partition ``corpus`` whenever ``folder`` changes."""
    folder = Path(folder)

    @dg.sensor(
        name=name or f"{dagster_name(corpus)}_sensor",
        job=reindex_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Re-index corpus {corpus!r} when files in {folder} are added, changed or removed.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        state = json.loads(context.cursor) if context.cursor else None
        unlisted: list[InputProblem] = []
        manifest = folder_manifest(folder, unlisted)
        for problem in unlisted:
            context.log.warning(f"not watching {problem}")
        if state is not None and unlisted:
            manifest = _keep_unlisted(state["files"], manifest, unlisted)
        digest = manifest_digest(manifest)
        if state is not None and state["digest"] == digest:
            what = "" if folder.is_file() else f" ({counted(len(manifest), 'file')})"
            return _request_again(context, corpus, state) or dg.SkipReason(f"no change in {folder}{what}")
        seq = (state["seq"] if state else 0) + 1
        cursor = json.dumps({"digest": digest, "seq": seq, "files": manifest})
        if state is None and not manifest:
            reason = f"{folder} does not exist" if not folder.is_dir() else f"{folder} is empty"
            return dg.SensorResult(skip_reason=dg.SkipReason(reason), cursor=cursor)
        changes = manifest_changes(state["files"] if state else {}, manifest)
        summary = ", ".join(f"{len(v)} {k}" for k, v in changes.items())
        context.log.info(f"{folder}: {summary}")
        run_key = _request_key(corpus, digest, seq)
        request = dg.RunRequest(run_key=run_key, partition_key=corpus, tags=_tags(corpus, summary, run_key))
        return dg.SensorResult(run_requests=[request], cursor=cursor)

    return _sensor


def _request_key(corpus: str, digest: str, seq: int) -> str:
    """The run key of the first request for a manifest (its retries add ``-retryN``; :data:`REQUEST_TAG`)."""
    return f"{corpus}-{digest[:16]}-{seq}"


def _tags(corpus: str, summary: str, request: str) -> dict[str, str]:
    return {
        "hybrid_rag/corpus": corpus,
        "hybrid_rag/trigger": "drop folder",
        "hybrid_rag/changes": summary,
        REQUEST_TAG: request,
    }


def _request_again(
    context: dg.SensorEvaluationContext, corpus: str, state: dict[str, Any]
) -> dg.SensorResult | dg.SkipReason | None:
    """A new request for the unchanged manifest when the latest run requested for it ended FAILURE or CANCELED
    (up to ``MAX_RETRIES`` times); None while it is queued, in progress or succeeded (or no run of it is recorded)."""
    request = _request_key(corpus, state["digest"], state["seq"])
    retries = state.get("retries", 0)
    runs = context.instance.get_runs(dg.RunsFilter(tags={REQUEST_TAG: request}), limit=1)  # the newest first
    if not runs or runs[0].status not in _ENDED_BADLY or runs[0].tags.get(RETRY_TAG, "0") != str(retries):
        return None  # ... or the latest retry has no run yet
    last = runs[0]
    ended = f"run {last.run_id} for the last change ended {last.status.value}"
    if retries >= MAX_RETRIES:
        return dg.SkipReason(f"{ended} after {retries} retries: waiting for the next change (or hybrid-rag run)")
    context.log.warning(f"{ended}: requesting it again (retry {retries + 1} of {MAX_RETRIES})")
    run_key = f"{request}-retry{retries + 1}"
    tags = _tags(corpus, last.tags.get("hybrid_rag/changes", ""), request)
    retry = dg.RunRequest(run_key=run_key, partition_key=corpus, tags={**tags, RETRY_TAG: str(retries + 1)})
    return dg.SensorResult(run_requests=[retry], cursor=json.dumps({**state, "retries": retries + 1}))
