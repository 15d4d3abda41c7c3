"""The corpus partitions: one static partition per entry of the corpora file, read when the code loads."""

from __future__ import annotations

import dagster as dg

from orchestration.corpora import load_corpora

CORPORA = load_corpora()
corpus_partitions = dg.StaticPartitionsDefinition(CORPORA.names)
