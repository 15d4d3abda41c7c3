"""Dagster resources: the retrieval stack (settings, encoders, Qdrant stores), the corpora file, the eval history.

:class:`RetrievalResource` has one optional field per :class:`retrieval.RetrievalSettings` field (derived from the
settings model, so a new setting needs no edit here); a field left unset falls back to RetrievalSettings, which
reads ``HYBRID_RAG_*`` environment variables itself. :meth:`RetrievalResource.from_env` wires the set text ones as
``dagster.EnvVar`` so the UI shows variable names, never values (the Qdrant API key in particular is never logged
or written to metadata).
"""

from __future__ import annotations

import enum
import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import dagster as dg
from pydantic import Field, create_model

from assets.corpora import CORPORA_FILE_ENV, Corpora, CorpusConfig, CorpusConfigError, load_corpora
from assets.partitions import CORPORA
from evals.history import DEFAULT_HISTORY, EvalHistory
from retrieval import HybridRetriever, Indexer, RetrievalSettings, RetrievalStack
from retrieval.stack import shared_stack
from retrieval.store import QdrantStore

DEFAULT_ASSETS_DIR = "data/assets"
ENV_PREFIX = RetrievalSettings.model_config["env_prefix"]


def env_var(field: str) -> str:
    """The environment variable of a settings field, e.g. ``HYBRID_RAG_QDRANT_URL``."""
    return f"{ENV_PREFIX}{field.upper()}"


def _config_type(annotation: Any) -> type:
    """The Dagster config type of a settings field: bool, int, float, else text (paths, enums, secrets)."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    for kind in (bool, int, float):
        if annotation is kind:
            return kind
    assert annotation in (str, Path) or issubclass(annotation, enum.Enum) or annotation.__name__ == "SecretStr"
    return str


_SettingsFields = create_model(
    "_SettingsFields",
    __base__=dg.ConfigurableResource,
    **{
        name: (
            _config_type(info.annotation) | None,
            Field(default=None, description=": ".join(filter(None, (env_var(name), info.description)))),
        )
        for name, info in RetrievalSettings.model_fields.items()
    },
)


class RetrievalResource(_SettingsFields):
    """Retrieval settings for the assets (one field per settings field; ``None``: as RetrievalSettings reads it
    from the environment), and the :class:`RetrievalStack` built from them."""

    @classmethod
    def from_env(cls, **overrides: Any) -> RetrievalResource:
        """The text fields whose ``HYBRID_RAG_<FIELD>`` variable is set, as ``dg.EnvVar`` (the others are read
        from the environment by RetrievalSettings at run time)."""
        fields: dict[str, Any] = {
            name: dg.EnvVar(env_var(name))
            for name, info in RetrievalSettings.model_fields.items()
            if _config_type(info.annotation) is str and os.environ.get(env_var(name))
        }
        return cls(**{**fields, **overrides})

    def settings(self, collection: str | None = None, **overrides: Any) -> RetrievalSettings:
        """RetrievalSettings from the environment, this resource's fields and ``overrides`` (in rising priority).
        A field holding its variable's value (a ``dg.EnvVar`` of :meth:`from_env`) is left to RetrievalSettings to
        read, so that a bad value is named as that variable and where it was set (``HYBRID_RAG_FUSION='x'
        (.env:3)``)."""
        given = {
            name: value
            for name in RetrievalSettings.model_fields
            if (value := getattr(self, name)) is not None and value != os.environ.get(env_var(name))
        }
        if collection:
            given["collection"] = collection
        return RetrievalSettings(**{**given, **overrides})

    @contextmanager
    def stack(self, collection: str | None = None) -> Iterator[RetrievalStack]:
        """A stack for ``collection`` whose encoders are loaded once per process; its stores are closed on exit."""
        _quiet_model_loading()
        stack = shared_stack(self.settings(collection))
        try:
            yield stack
        finally:
            stack.close()

    @contextmanager
    def store(self, collection: str, version: int | None = None) -> Iterator[QdrantStore]:
        """The store of ``collection`` (pinned to ``version`` when given), closed on exit."""
        with self.stack(collection) as stack:
            yield stack.store(version=version)

    @contextmanager
    def indexer(self, collection: str) -> Iterator[Indexer]:
        """An :class:`Indexer` on ``collection`` with the shared encoders; its store is closed on exit."""
        with self.stack(collection) as stack:
            yield stack.indexer()

    @contextmanager
    def retriever(self, collection: str, version: int | None = None, **overrides: Any) -> Iterator[HybridRetriever]:
        """A :class:`HybridRetriever` on ``collection`` (``version``: a staged one) with the shared encoders."""
        with self.stack(collection) as stack:
            yield stack.retriever(version=version, **overrides)


def _quiet_model_loading() -> None:
    """No model-loading progress bars in run logs (they are terminal animations, not log lines)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


class CorporaResource(dg.ConfigurableResource):
    """The corpora file the partitions were read from (``assets.partitions.CORPORA``), or another one (``path``,
    e.g. in tests) that may only configure corpora among those partitions."""

    path: str | None = None

    def load(self) -> Corpora:
        if self.path is None:
            return CORPORA
        corpora = load_corpora(self.path)
        unknown = [name for name in corpora.names if name not in CORPORA.names]
        if unknown:
            raise CorpusConfigError(
                f"{corpora.path}: corpora {unknown} are not partitions of the asset graph (read from {CORPORA.path}: "
                f"{', '.join(CORPORA.names)}); set {CORPORA_FILE_ENV} to use this file for both"
            )
        return corpora

    def get(self, name: str) -> CorpusConfig:
        return self.load().get(name)


class EvalHistoryResource(dg.ConfigurableResource):
    """The SQLite evaluation history shared with ``hybrid-rag eval``."""

    path: str = DEFAULT_HISTORY

    def history(self) -> EvalHistory:
        return EvalHistory(self.path)
