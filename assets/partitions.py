"""The corpus partitions: one static partition per entry of the corpora file, read when the code loads."""

from __future__ import annotations

import warnings
from typing import Any

import dagster as dg

from assets.corpora import load_corpora

CORPORA = load_corpora()
corpus_partitions = dg.StaticPartitionsDefinition(CORPORA.names)


def corpus_check(name: str, asset: str, **kwargs: Any) -> dg.AssetCheckSpec:
    """An asset check evaluated per corpus partition, so its history and plots never mix corpora."""
    with warnings.catch_warnings():  # partitioned checks are a Dagster preview feature; the UI shows them fine
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, partitions_def=corpus_partitions, **kwargs)
