"""Snapshots of the embedded engine: a damaged one is refused before readers see it, models travel with it,
and a snapshot never lands where a write would delete it nor leaves half a copy behind."""

import json
import os
import resource
import shutil

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval import RetrievalStack
from retrieval.encoders import DenseEncoder
from retrieval.store import StoreError
from retrieval.store.snapshots import MANIFEST, restore, snapshot, snapshot_collection
from tests.conftest import TINY_DOCS

N = len(TINY_DOCS)


@pytest.fixture(scope="module")
def kept(indexed_stack, tmp_path_factory):
    """A collection holding TINY_DOCS and a good snapshot of it (module-wide: every test damages a copy)."""
    stack = indexed_stack("edge", collection="kept")
    snap = tmp_path_factory.mktemp("snaps") / "kept-good"
    snapshot(stack.store(), snap)
    return stack, snap


def _restore(stack, source, **kw):
    kw.setdefault("replace", True)
    return restore(stack.store(), source, expected=stack.schema(), **kw)


def _still_served(stack, version):
    """The published version is the one before the refused restore, alone, whole and searchable."""
    store = stack.store()
    assert store.current_version() == version and store._versions() == [version]
    assert store.count() == N
    assert stack.retriever().search("ZX-4471 valve gasket", k=1)[0].doc_id == "valve"


def _damage_vectors(snap, how):
    chunks = sorted(snap.glob("shard/segments/*/vector_storage-dense/vectors/chunk_*.mmap"))
    assert chunks, "no dense vector file in the snapshot"
    if how == "removed":
        chunks[0].unlink()
    else:
        os.truncate(chunks[0], 100)


def _damage_schema(snap, how):
    schema = snap / "schema.json"
    if how == "not json":
        schema.write_text("{not json")
    else:
        schema.write_text(schema.read_text().replace('"dense_dim": 384', '"dense_dim": 768'))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda s: _damage_vectors(s, "removed"), "reading the snapshot failed"),
        (lambda s: _damage_vectors(s, "truncated"), "reading the snapshot failed"),
        (lambda s: _damage_schema(s, "not json"), "unreadable collection schema"),
        (lambda s: _damage_schema(s, "768"), "dense_dim: collection has 768, settings give 384"),
    ],
    ids=["vectors-removed", "vectors-truncated", "schema-not-json", "schema-768"],
)
def test_a_damaged_snapshot_is_refused_and_the_collection_keeps_its_version(kept, tmp_path, damage, reason):
    stack, good = kept
    before = stack.store().current_version()
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    damage(bad)
    with pytest.raises(StoreError, match="cannot be restored") as caught:
        _restore(stack, bad)
    message = str(caught.value)
    assert str(bad) in message and reason in message and "was not changed" in message
    assert "Rebuild the collection" not in message  # the snapshot is damaged, not the collection
    _still_served(stack, before)


def test_a_truncated_snapshot_is_refused_by_its_manifest_count(kept, tmp_path):
    """Segments lost and the WAL cut: the engine opens it as an empty collection, which must not replace 8 points."""
    stack, good = kept
    before = stack.store().current_version()
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    assert json.loads((bad / MANIFEST).read_text())["points"] == N
    for segment in (bad / "shard" / "segments").iterdir():
        shutil.rmtree(segment)
    for wal in (bad / "shard" / "wal").glob("open-*"):
        os.truncate(wal, 1000)  # cut before its first point (the 8 small points fit in its first 40 kB)
    with pytest.raises(StoreError, match=f"holds 0 points where its {MANIFEST} says {N}"):
        _restore(stack, bad)
    _still_served(stack, before)
    (bad / MANIFEST).unlink()  # an earlier release's snapshot: an empty one is refused, saying why
    with pytest.raises(StoreError, match=f"holds no points and has no {MANIFEST}"):
        _restore(stack, bad)
    _still_served(stack, before)


def test_a_snapshot_without_manifest_with_points_restores(kept, tmp_path):
    stack, good = kept
    old = tmp_path / "old"
    shutil.copytree(good, old)
    (old / MANIFEST).unlink()
    assert _restore(stack, old).points == N
    _still_served(stack, stack.store().current_version())


def test_snapshots_carry_the_collection_models_and_a_restore_sets_the_old_ones_aside(kept, tmp_path):
    stack, _ = kept
    models = tmp_path / "models"
    adapted = models / "kept" / "query_encoder" / "adapted.json"  # what `adapt` writes next to its weights
    adapted.parent.mkdir(parents=True)
    adapted.write_text('{"corpus": "kept"}')
    snap = tmp_path / "with-models"
    snapshot(stack.store(), snap, models_dir=models / "kept")
    assert (snap / "models" / "query_encoder" / "adapted.json").read_text() == adapted.read_text()

    other = type(stack.store())(tmp_path / "index", "copy")
    done = restore(other, snap, expected=stack.schema(), models_dir=models / "copy")
    other.close()
    assert done.points == N and done.models_aside is None
    assert (models / "copy" / "query_encoder" / "adapted.json").read_text() == adapted.read_text()
    assert not (tmp_path / "index" / "copy__v1" / "models").exists()  # models live in the models dir only

    plain = tmp_path / "no-models"
    snapshot(stack.store(), plain)  # no models given: none in the snapshot
    assert not (plain / "models").exists()
    done = _restore(stack, plain, models_dir=models / "kept")
    assert done.models_aside is not None and done.models_aside.parent == models
    assert not (models / "kept").exists()  # the old content's encoder is no longer used...
    assert (done.models_aside / "query_encoder" / "adapted.json").read_text() == '{"corpus": "kept"}'  # ...nor lost


def test_a_snapshot_inside_the_index_folder_is_refused(kept):
    stack, _ = kept
    store = stack.store()
    for inside in (store.root / "kept-backup", store.root / "kept"):
        with pytest.raises(StoreError, match="inside the index folder"):
            snapshot(store, inside)
        assert not inside.exists() and not inside.with_name(inside.name + ".partial").exists()


def test_a_snapshot_that_fills_the_disk_leaves_nothing_and_says_snapshot(kept, tmp_path):
    stack, _ = kept
    dest = tmp_path / "full"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, hard))  # a WAL segment is 32 MiB: EFBIG (Python ignores SIGXFSZ)
    try:
        with pytest.raises(StoreError) as caught:
            snapshot(stack.store(), dest)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(caught.value)
    assert "snapshot" in message and "EFBIG" in message and "stage a write" not in message
    assert list(tmp_path.iterdir()) == []  # no .partial folder left


def test_snapshot_out_that_cannot_be_created_is_one_line(kept, tmp_path, monkeypatch):
    stack, _ = kept
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(stack.store().root))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "afile").touch()
    for out in (tmp_path / "afile" / "snap", "/proc/snap"):
        result = CliRunner().invoke(app, ["snapshot", "-c", "kept", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert result.output.strip().splitlines()[-1].startswith(f"error: cannot create snapshot directory {out}")


def test_cli_restore_refuses_a_damaged_snapshot_and_carries_models(kept, tmp_path, monkeypatch):
    """Through the CLI (its settings give the schema and the models dir): exit 2, one line, nothing changed."""
    stack, good = kept
    before = stack.store().current_version()
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(stack.store().root))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HYBRID_RAG_MODELS_DIR", str(tmp_path / "models"))
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    _damage_vectors(bad, "truncated")
    result = CliRunner().invoke(app, ["restore", str(bad), "-c", "kept", "--replace"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: snapshot {bad} cannot be restored")
    _still_served(stack, before)

    (tmp_path / "models" / "kept" / "reranker").mkdir(parents=True)
    (tmp_path / "models" / "kept" / "reranker" / "tuned.json").write_text("{}")
    snap = tmp_path / "snap"
    result = CliRunner().invoke(app, ["snapshot", "-c", "kept", "--out", str(snap)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["restore", str(snap), "-c", "kept_copy"])
    assert result.exit_code == 0 and f"{N} points" in result.output, result.output
    assert (tmp_path / "models" / "kept_copy" / "reranker" / "tuned.json").read_text() == "{}"


def test_rerunning_a_restore_that_was_done_says_so_and_exits_0(kept, tmp_path, monkeypatch):
    """A CI job killed between a finished restore and its exit runs it again: the collection already is that
    snapshot, so the rerun succeeds without copying it again; once the collection is written, it is refused."""
    stack, good = kept
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(stack.store().root))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HYBRID_RAG_MODELS_DIR", str(tmp_path / "models"))
    first = CliRunner().invoke(app, ["restore", str(good), "-c", "again"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["restore", str(good), "-c", "again"])
    assert again.exit_code == 0, again.output
    assert again.stdout.replace("\n", "") == (
        f"'again' already holds {good} ({N} points; restored before, not written since): nothing to do"
    )
    other = tmp_path / "other"  # another snapshot of the same content is another snapshot
    assert CliRunner().invoke(app, ["snapshot", "-c", "kept", "--out", str(other)]).exit_code == 0
    refused = CliRunner().invoke(app, ["restore", str(other), "-c", "again"])
    assert refused.exit_code == 2 and "pass --replace" in refused.output
    assert CliRunner().invoke(app, ["delete", "valve", "-c", "again"]).exit_code == 0
    refused = CliRunner().invoke(app, ["restore", str(good), "-c", "again"])
    assert refused.exit_code == 2 and "pass --replace" in refused.output


def test_a_rerun_of_a_done_restore_loads_no_model(kept):
    """The models are loaded only to verify a restored version (``expected=stack.schema``, called then): the rerun
    of a restore that was done (``hybrid-rag restore`` again) answers without loading them."""
    stack, good = kept
    settings = stack.settings.in_use_copy(collection="rerun")
    with RetrievalStack(settings, dense=stack.dense, sparse=stack.sparse) as loaded:
        assert not restore(loaded.store(), good, expected=loaded.schema).already
    fresh = DenseEncoder()  # a new process's
    with RetrievalStack(settings, dense=fresh, sparse=stack.sparse) as again:
        assert restore(again.store(), good, expected=again.schema).already
    assert "model" not in vars(fresh) and fresh.loads == 0


def test_a_restore_of_the_settings_model_loads_no_model_and_another_dimension_is_refused(kept, tmp_path):
    """The snapshot's schema records the dense model's content (fingerprint) and dimension: when the settings'
    model is that content, the restore checks the dimension without loading it (torch and MiniLM took seconds).
    Another model is loaded for its dimension, and one that differs is refused, naming both."""
    from tests.tiny_models import tiny_dense

    stack, good = kept
    fresh = DenseEncoder()  # a new process's
    settings = stack.settings.in_use_copy(collection="unloaded")
    with RetrievalStack(settings, dense=fresh, sparse=stack.sparse) as restoring:
        assert restore(restoring.store(), good, expected=restoring.schema).points == N
    assert "model" not in vars(fresh) and fresh.loads == 0
    tiny = tiny_dense(tmp_path / "tiny")  # 32 dimensions, MiniLM's 384
    other = DenseEncoder(tiny)
    with RetrievalStack(settings.in_use_copy(dense_model=tiny), dense=other, sparse=stack.sparse) as restoring:
        with pytest.raises(StoreError, match="cannot be restored") as refused:
            restore(restoring.store(), good, expected=restoring.schema, replace=True, other_collection=True)
        assert restoring.store().count() == N  # the collection keeps its version
    assert "dense_dim: collection has 384, settings give 32" in str(refused.value) and other.loads == 1


@pytest.mark.slow
def test_cli_restore_imports_no_torch_when_the_snapshot_records_the_settings_model(kept, tmp_path):
    """``hybrid-rag restore`` of a snapshot built with the settings' model, in a new process: torch is never
    imported (the search path's check, test_cli_commands)."""
    import subprocess
    import sys

    _, good = kept
    code = (
        "import sys; from orchestration.cli import app;"
        f"app(['restore', {str(good)!r}, '-c', 'fresh'], standalone_mode=False);"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sentence_transformers'}))"
    )
    env = {**os.environ, "HYBRID_RAG_QDRANT_PATH": str(tmp_path / "index"), "HYBRID_RAG_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip().splitlines() == [f"restored 'fresh' from {good} (a snapshot of 'kept'): {N} points", "[]"]


def test_restore_defaults_to_the_snapshots_collection_and_asks_before_replacing_another(kept, tmp_path, monkeypatch):
    """r14B: a forgotten -c restored team-eu's snapshot into the default collection, and `-c team --replace`
    replaced team's points and models by team-eu's without a word. A snapshot records its collection: that is the
    default target; a new name stays easy; replacing another existing collection takes --other-collection."""
    stack, good = kept  # a snapshot of 'kept'
    before = stack.store().current_version()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYBRID_RAG_COLLECTION", raising=False)  # the settings' default: 'sample'
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(stack.store().root))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HYBRID_RAG_MODELS_DIR", str(tmp_path / "models"))

    def cli(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, ["restore", str(good), *args])
        assert result.exit_code == code, result.output
        return result.output.replace("\n", "")

    assert "collection 'kept' exists" in cli(code=2)  # its own collection, not 'sample'
    assert not (stack.store().root / "sample__v1").exists()
    _still_served(stack, before)

    assert cli("-c", "team") == f"restored 'team' from {good} (a snapshot of 'kept'): {N} points"
    assert CliRunner().invoke(app, ["delete", "valve", "-c", "team"]).exit_code == 0
    tuned = tmp_path / "models" / "team" / "reranker" / "tuned.json"
    tuned.parent.mkdir(parents=True)
    tuned.write_text("{}")
    assert "pass --replace and --other-collection (it is a snapshot of 'kept')" in cli("-c", "team", code=2)
    refused = cli("-c", "team", "--replace", code=2)
    assert f"error: {good} is a snapshot of collection 'kept', not 'team': restoring it would replace 'team'" in (
        refused
    )
    assert "nothing was changed" in refused and "--other-collection" in refused
    team = type(stack.store())(stack.store().root, "team")
    try:
        assert team.count() == N - 1 and tuned.read_text() == "{}"  # its points and models are kept
        assert f"{N} points" in cli("-c", "team", "--replace", "--other-collection")
        assert team.count() == N and not tuned.exists()  # asked for: replaced, its models set aside
    finally:
        team.close()

    old = tmp_path / "old"  # an earlier release's snapshot does not say whose it is: the collection is asked for
    shutil.copytree(good, old)
    (old / MANIFEST).unlink()
    result = CliRunner().invoke(app, ["restore", str(old)])
    assert result.exit_code == 2 and "name the collection to restore (--collection NAME)" in result.output
    assert CliRunner().invoke(app, ["restore", str(old), "-c", "from_old"]).exit_code == 0


@pytest.mark.parametrize(
    ("source", "collection"),
    [  # the file names Qdrant gives snapshots of physical collections NAME__v<N> (and an unversioned one)
        ("file:///qdrant/snapshots/team-eu__v3/team-eu__v3-5463282729713489-2024-05-01-12-30-05.snapshot", "team-eu"),
        ("http://qdrant:6333/collections/a__v12/snapshots/a__v12-1-2024-05-01-12-30-05.snapshot", "a"),
        (
            "/qdrant/snapshots/%C3%89quipe%20notes__v1/%C3%89quipe%20notes__v1-7-2024-05-01-12-30-05.snapshot",
            "Équipe notes",
        ),
        ("file:///snapshots/legacy-7-2024-05-01-12-30-05.snapshot", "legacy"),
        ("https://backups.example/team-eu.snapshot", None),  # renamed: not Qdrant's name
    ],
)
def test_a_server_snapshot_names_its_collection_in_its_file_name(source, collection):
    assert snapshot_collection(source, server=True) == collection
