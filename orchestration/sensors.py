"""A sensor per watched drop folder: re-index its corpus when files are added, changed or removed.

The cursor holds the folder's manifest (relative path -> [mtime_ns, size] of every non-hidden file; for a source
that is one file, a JSONL file or one text file, its name -> its own), its SHA-256 digest and a sequence number;
the run key is derived from the digest (plus the sequence number, so that a folder returning to an earlier state
is still re-indexed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg

from assets.corpora import dagster_name
from orchestration.jobs import reindex_job
from retrieval.documents import InputProblem, covered_by, visible_files

Manifest = dict[str, list[int]]


def folder_manifest(folder: Path, unlisted: list[InputProblem] | None = None) -> Manifest:
    """Relative path -> [mtime_ns, size] of every file under ``folder`` (hidden files and folders excluded), or
    of ``folder`` itself when it is a file. A subfolder that cannot be listed and a broken link go to
    ``unlisted`` (see :func:`visible_files`)."""
    if folder.is_file():
        stat = folder.stat()
        return {folder.name: [stat.st_mtime_ns, stat.st_size]}
    if not folder.is_dir():
        return {}
    manifest: Manifest = {}
    for path in visible_files(folder, [] if unlisted is None else unlisted):  # the files the reader indexes
        stat = path.stat()
        manifest[path.relative_to(folder).as_posix()] = [stat.st_mtime_ns, stat.st_size]
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
            what = "" if folder.is_file() else f" ({len(manifest)} files)"
            return dg.SkipReason(f"no change in {folder}{what}")
        seq = (state["seq"] if state else 0) + 1
        cursor = json.dumps({"digest": digest, "seq": seq, "files": manifest})
        if state is None and not manifest:
            reason = f"{folder} does not exist" if not folder.is_dir() else f"{folder} is empty"
            return dg.SensorResult(skip_reason=dg.SkipReason(reason), cursor=cursor)
        changes = manifest_changes(state["files"] if state else {}, manifest)
        summary = ", ".join(f"{len(v)} {k}" for k, v in changes.items())
        context.log.info(f"{folder}: {summary}")
        request = dg.RunRequest(
            run_key=f"{corpus}-{digest[:16]}-{seq}",
            partition_key=corpus,
            tags={"hybrid_rag/corpus": corpus, "hybrid_rag/trigger": "drop folder", "hybrid_rag/changes": summary},
        )
        return dg.SensorResult(run_requests=[request], cursor=cursor)

    return _sensor
