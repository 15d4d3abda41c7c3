"""An IO manager that stores ``pyarrow.Table`` asset values as Parquet files (no pickles), and loads them whole
or, for an input annotated ``pyarrow.parquet.ParquetFile``, lazily.

Layout: ``<base_dir>/<asset key path>/<partition key>.parquet`` (``__unpartitioned__.parquet`` without one).
Files are written to a temporary name and renamed, so a failed step never leaves half a file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from assets.resources import DEFAULT_ASSETS_DIR

UNPARTITIONED = "__unpartitioned__"


class ParquetIOManager(dg.ConfigurableIOManager):
    """Parquet files under ``base_dir`` for every asset output that is a ``pyarrow.Table``."""

    base_dir: str = DEFAULT_ASSETS_DIR
    compression: str = "zstd"

    def _path(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        return Path(self.base_dir).expanduser().joinpath(*asset_key.path, f"{partition or UNPARTITIONED}.parquet")

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
