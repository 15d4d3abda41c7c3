"""A sensor per watched drop folder: re-index its corpus when files are added, changed or removed.

The cursor holds the folder's manifest (relative path -> [mtime_ns, size] of every non-hidden file), its
SHA-256 digest and a sequence number; the run key is derived from the digest (plus the sequence number, so
that a folder returning to an earlier state is still re-indexed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg

from assets.corpora import dagster_name
from orchestration.jobs import reindex_job
from retrieval.documents import visible_files

Manifest = dict[str, list[int]]


def folder_manifest(folder: Path) -> Manifest:
    """Relative path -> [mtime_ns, size] of every file under ``folder`` (hidden files and folders excluded)."""
    if not folder.is_dir():
        return {}
    manifest: Manifest = {}
    for path in visible_files(folder):  # the files the reader indexes (linked folders too)
        stat = path.stat()
        manifest[path.relative_to(folder).as_posix()] = [stat.st_mtime_ns, stat.st_size]
    return manifest


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
        manifest = folder_manifest(folder)
        digest = manifest_digest(manifest)
        if state is not None and state["digest"] == digest:
            return dg.SkipReason(f"no change in {folder} ({len(manifest)} files)")
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
