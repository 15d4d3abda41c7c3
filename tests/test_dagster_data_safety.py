"""The qdrant_index asset keeps sync semantics with the same refusal of mass deletion, overridable by config."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets import ALL_ASSETS
from assets.resources import CorporaResource, EvalHistoryResource, RetrievalResource
from orchestration.definitions import default_resources
from orchestration.parquet_io import ParquetIOManager
from retrieval.store import EdgeStore
from tests.conftest import TINY_DOCS


@pytest.mark.slow
def test_asset_refuses_to_wipe_the_index_unless_configured(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    for doc in TINY_DOCS[:4]:
        (drop / f"{doc.id}.md").write_text(f"# {doc.title}\n{doc.text}")
    corpora = tmp_path / "corpora.yaml"
    corpora.write_text(f"corpora:\n  dropbox:\n    source: {drop}\n    format: dir\n    collection: drop\n")
    resources = default_resources(
        retrieval=RetrievalResource(qdrant_path=str(tmp_path / "index"), cache_dir=str(tmp_path / "cache")),
        eval_history=EvalHistoryResource(path=str(tmp_path / "evals.sqlite")),
        io_manager=ParquetIOManager(base_dir=str(tmp_path / "assets")),
        corpora=CorporaResource(path=str(corpora)),
    )
    instance = dg.DagsterInstance.ephemeral()

    def materialize(**config) -> dg.ExecuteInJobResult:
        run_config = {"ops": {"qdrant_index": {"config": config}}} if config else None
        return dg.materialize(
            ALL_ASSETS,  # qdrant_index stages a version, published_index switches readers to it
            partition_key="dropbox",
            resources=resources,
            instance=instance,
            run_config=run_config,
            raise_on_error=False,
        )

    def points() -> int:
        store = EdgeStore(tmp_path / "index", "drop")
        try:
            return store.count()
        finally:
            store.close()

    assert materialize().success and points() == 4
    for doc in TINY_DOCS[1:4]:
        (drop / f"{doc.id}.md").unlink()  # e.g. a half-synced or unmounted folder
    refused = materialize()
    assert not refused.success and points() == 4
    failures = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "refusing to delete 3 of the 4 points" in str(failures[0].step_failure_data.error)
    assert materialize(allow_delete=True).success and points() == 1
