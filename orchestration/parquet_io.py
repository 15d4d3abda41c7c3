"""An IO manager that stores ``pyarrow.Table`` asset values as Parquet files (no pickles), and loads them whole
or, for an input annotated ``pyarrow.parquet.ParquetFile``, lazily.

Layout: ``<base_dir>/<asset key path>/<partition key>.parquet`` (``__unpartitioned__.parquet`` without one).
Files are written to a temporary name and renamed, so a failed step never leaves half a file behind.
The folder is made absolute once (:func:`assets_dir` when the resources are built, else at the run's start), so a
later ``os.chdir`` moves no table.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import PrivateAttr

from assets.resources import DEFAULT_ASSETS_DIR
from retrieval.settings import absolute_path

UNPARTITIONED = "__unpartitioned__"
ASSETS_DIR_ENV = "HYBRID_RAG_ASSETS_DIR"


def assets_dir() -> Path:
    """The assets' folder (``$HYBRID_RAG_ASSETS_DIR``, else ``data/assets``) as an absolute path, against the
    working directory now."""
    return absolute_path(os.environ.get(ASSETS_DIR_ENV) or DEFAULT_ASSETS_DIR)


def usable_folder(path: Path) -> Path:
    """``path``, created if missing; an error naming the folder, the setting and the reason if it is no folder this
    process can write to."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
    except OSError as exc:
        reason = "a file, not a folder" if path.exists() and not path.is_dir() else exc.strerror or str(exc)
        raise NotADirectoryError(
            f"{path}: the assets folder (io_manager base_dir, {ASSETS_DIR_ENV}) is not usable: {reason}"
        ) from None
    return path


class ParquetIOManager(dg.ConfigurableIOManager):
    """Parquet files under ``base_dir`` for every asset output that is a ``pyarrow.Table``."""

    base_dir: str = DEFAULT_ASSETS_DIR
    compression: str = "zstd"
    _root: Path | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """``base_dir`` made absolute once per run (and checked), so a later ``os.chdir`` moves no table."""
        self._root = usable_folder(absolute_path(self.base_dir))

    def _path(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        root = self._root or absolute_path(self.base_dir)
        return root.joinpath(*asset_key.path, f"{partition or UNPARTITIONED}.parquet")

    def handle_output(self, context: dg.OutputContext, obj: pa.Table) -> None:
        if not isinstance(obj, pa.Table):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: ParquetIOManager stores pyarrow.Table, got {type(obj).__name__}"
            )
        partition = context.partition_key if context.has_partition_key else None
        path = self._path(context.asset_key, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(obj, tmp, compression=self.compression)
        tmp.replace(path)
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.path(str(path.resolve())),
                "parquet_bytes": dg.MetadataValue.int(path.stat().st_size),
                "dagster/row_count": dg.MetadataValue.int(obj.num_rows),
            }
        )

    def load_input(self, context: dg.InputContext) -> pa.Table | pq.ParquetFile:
        """The stored table; an input annotated ``pyarrow.parquet.ParquetFile`` gets the file opened lazily
        (schema and row counts read, no rows): the asset reads the columns and batches it needs."""
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self._path(context.asset_key, partition)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no stored value of {context.asset_key.to_user_string()} for partition {partition!r}; "
                "materialize it first"
            )
        if context.dagster_type.typing_type is pq.ParquetFile:
            return pq.ParquetFile(path)
        return pq.read_table(path)
