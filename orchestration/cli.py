"""The ``hybrid-rag`` command line (Typer), one function per command. The commands are not listed here, where a
list would go stale: ``hybrid-rag --help`` lists them all, ``hybrid-rag COMMAND --help`` gives one's options, and
README "Command line" a synopsis of each (checked against this app by tests/test_readme.py)."""

from __future__ import annotations

import bisect
import datetime as dt
import errno
import io
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from itertools import accumulate
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.table import Table
from typer.core import TyperGroup

from orchestration.terminal import (
    ConsoleHandler,
    LiteralConsole,
    PrintableFormatter,
    label,
    printable,
    show_warning,
)
from retrieval.wording import counted

if TYPE_CHECKING:
    from orchestration.forget import CorpusLeftovers


try:  # the click that typer runs: a newer typer bundles its own copy (typer._click), an older one used click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - an older typer
    from click import exceptions as click_errors


class _Group(TyperGroup):
    """Turns the library's expected failures (bad arguments, bad input, unsafe deletes, store errors) and a
    mistyped command or option into one red line and exit code 2, without a traceback; and SIGTERM and Ctrl-C
    (SIGINT) into one line and exit code 143 or 130 (see :func:`_interrupts`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _flow_help(self)

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        with _usage_errors():  # this group's own options (hybrid-rag --verbse)
            return super().make_context(info_name, args, parent=parent, **extra)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """A command name that is none of this group's: a usage error naming the closest ones."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None and not ctx.resilient_parsing:
            import difflib

            near = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            raise click_errors.UsageError(f"no such command {name!r}{_did_you_mean(near)}", ctx)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            with _interrupts(outermost=ctx.parent is None), _usage_errors():  # usage: a command's options
                return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            signum = _INTERRUPTED.get("signal", signal.SIGINT)
            err_console.print(
                label(f"interrupted ({signal.Signals(signum).name}):", "red"),
                "the command stopped before it finished; rerun the same command to complete it",
                soft_wrap=True,
            )
            raise typer.Exit(128 + signum) from exc
        except Exception as exc:
            from retrieval.errors import HybridRagError

            if not isinstance(exc, HybridRagError):
                raise
            err_console.print(label("error:", "red"), str(exc) + _env_relative_hint(str(exc)), soft_wrap=True)
            raise typer.Exit(2) from exc


@contextmanager
def _usage_errors() -> Iterator[None]:
    """A usage error (a mistyped option or command, a missing argument) as one line in the CLI's style, naming the
    closest valid names and the command's ``--help``, exit code 2 as click's: not click's usage panel. The help
    that no arguments print is left as it is."""
    try:
        yield
    except click_errors.NoArgsIsHelpError:
        raise
    except click_errors.UsageError as exc:
        if isinstance(exc, click_errors.NoSuchOption):
            message = f"no such option {exc.option_name}{_did_you_mean(exc.possibilities or [])}"
        else:
            message = exc.format_message().rstrip(".")
            message = message[:1].lower() + message[1:]
        if exc.ctx is not None:
            message += f"; see {exc.ctx.command_path} --help"
        err_console.print(label("error:", "red"), message, soft_wrap=True)
        raise typer.Exit(2) from exc


def _did_you_mean(names: list[str]) -> str:
    """`` (did you mean X?)`` for the first (closest) of ``names``, or nothing without any."""
    return f" (did you mean {names[0]}?)" if names else ""


def _flow_help(group: Any) -> None:
    """Each paragraph of a command's help on one line, for the terminal to wrap: rich help keeps a docstring's line
    breaks (made at 120 columns in the source), which cut sentences mid-line in ``hybrid-rag --help``."""
    for command in group.commands.values():
        if command.help:
            command.help = re.sub(r"(?<!\n)\n(?!\n)", " ", command.help)
        if hasattr(command, "commands"):  # a group (typer's bundled click or click: not one Group class)
            _flow_help(command)


_INTERRUPTED: dict[str, int] = {}  # "signal": the signal that interrupted this command


@contextmanager
def _interrupts(outermost: bool) -> Iterator[None]:
    """SIGTERM (``timeout``, a CI runner, ``kill``) stops a command as Ctrl-C does: a KeyboardInterrupt in the main
    thread, so every ``finally`` and ``except BaseException`` cleanup runs (a staged version, a ``.partial``
    snapshot, a write lock) before the command exits. One handler serves both signals and records which came; it
    is also what Dagster maps SIGTERM to (``hybrid-rag run``). The previous handlers are put back afterwards."""
    if not outermost or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum: int, frame: FrameType | None) -> None:
        _INTERRUPTED["signal"] = signum
        raise KeyboardInterrupt

    _INTERRUPTED.clear()
    previous = {signum: signal.signal(signum, interrupted) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _App(typer.Typer):
    """The ``hybrid-rag`` entry point: once a command is done, the process ends at once (see
    :func:`_exit_promptly`). Tests call the command through ``CliRunner``, which does not come here."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import sys

        _own_stdout()
        try:
            try:
                return super().__call__(*args, **kwargs)
            except SystemExit:
                if sys.stdout is not None:
                    sys.stdout.flush()  # all of the output is out before the exit code says so
                raise
        except _StdoutFailed as exc:  # outside a command too (--help): the one place for every command
            err_console.print(label("error:", "red"), str(exc), soft_wrap=True)
            code: object = 2
        except SystemExit as exc:
            code = exc.code
        _exit_promptly(code)
        raise SystemExit(code)


class _StdoutFailed(Exception):
    """A write to stdout failed: its reader quit (``| head``: broken pipe) or its disk is full."""

    def __init__(self, exc: OSError) -> None:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        if exc.errno == errno.EPIPE:
            reason += " (its reader closed it before the end, as `| head` does)"
        super().__init__(f"stdout could not be written: {reason}; the output is incomplete")


class _Stdout(io.TextIOWrapper):
    """stdout on a buffered writer of its own, whose failed write is a :class:`_StdoutFailed` (exit code 2, one
    line), not an ``OSError`` (a traceback, or Click's silent exit code 1 for a broken pipe). Buffered even under
    ``PYTHONUNBUFFERED`` (the Docker image): there a write cut short by a reader that quit was dropped without an
    error, and the command exited 0. After a failure the output goes to /dev/null, so no later flush fails."""

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except OSError as exc:
            raise self._failed(exc) from exc

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: OSError) -> _StdoutFailed:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.fileno())
        os.close(devnull)
        return _StdoutFailed(exc)


def _own_stdout() -> None:
    """Make ``sys.stdout`` a :class:`_Stdout` on the same file descriptor (closed, ``>&-``: left to
    :func:`_check_stdout`)."""
    import sys

    stream = sys.stdout
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # None (closed), or not a file (an embedding program's)
        return
    raw = io.FileIO(fd, "w", closefd=False)
    sys.stdout = _Stdout(
        io.BufferedWriter(raw), encoding=stream.encoding, errors=stream.errors, line_buffering=stream.line_buffering
    )


def _exit_promptly(code: object) -> None:
    """End the process with ``code`` now that the command is done: the exit handlers run (stores let go of their
    files, worker pools stop), logs and output are flushed, and only the interpreter's teardown of the loaded
    modules (torch, transformers: 1-3 s, during which a CI timeout would report a finished command as killed) is
    skipped, as after SIGKILL, which every write is safe against. Returns (a normal exit follows) when a thread
    other than a daemon is still running, or the output cannot be flushed."""
    import atexit
    import os
    import sys

    if code is not None and not isinstance(code, int):
        return
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()
    logging.shutdown()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: started with that descriptor closed (`>&-`)
                stream.flush()
    except (OSError, ValueError):
        return
    os._exit(code or 0)


app = _App(cls=_Group, help="Hybrid dense + sparse retrieval on Qdrant.", no_args_is_help=True, add_completion=False)
console = LiteralConsole()  # content and user input print literally (orchestration.terminal)
err_console = LiteralConsole(stderr=True)

CollectionOpt = Annotated[str | None, typer.Option("--collection", "-c", help="Collection name (default: settings)")]
BeirCollectionOpt = Annotated[  # eval and tune-reranker: the collection a BEIR folder was indexed into
    str | None, typer.Option("--collection", "-c", help="Collection name (default: the BEIR folder's name)")
]
KeepIdenticalOpt = Annotated[
    bool,
    typer.Option(
        "--keep-identical-ids",
        help="Score a hit whose document id is its query's id (BEIR's rule drops it: keep it for data that numbers "
        "queries and documents alike)",
    ),
]
HistoryOpt = Annotated[
    Path | None,
    typer.Option(help="Evaluation history, SQLite (default: $HYBRID_RAG_HISTORY_PATH, else data/history/evals.sqlite)"),
]
PROJECT_LOGGERS = ("retrieval", "evals", "assets", "orchestration")  # -v: their INFO lines
VERBOSE_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"  # as Dagster's console lines
log = logging.getLogger("orchestration.cli")  # not __name__: "__main__" under python -m orchestration.cli
ENV_FILES: list[Path] = [Path(".env")]
# The paths an env file outside the working directory gave relatively: setting -> (file, value as written, the
# absolute path it means). Releases before paths became relative to their env file read them relative to the
# working directory: an error naming such a path says so (see _env_relative_hint).
ENV_RELATIVE: dict[str, tuple[Path, str, str]] = {}


def _settings(**overrides):
    """The settings of this command (a bad value is an InvalidArgumentError: ``invalid settings: ...``)."""
    from retrieval.settings import RetrievalSettings

    return RetrievalSettings(_env_file=ENV_FILES, **{k: v for k, v in overrides.items() if v is not None})


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details")] = False,
    env_file: Annotated[
        list[Path] | None, typer.Option("--env-file", help="Extra HYBRID_RAG_* settings file (e.g. a tuned reranker)")
    ] = None,
) -> None:
    _check_stdout()
    _replace_unencodable()
    _configure_logging(verbose)
    for path in env_file or []:
        _check_env_file(path)
    ENV_FILES[:] = [Path(".env"), *(env_file or [])]
    _export_env_files(ctx, ENV_FILES)
    from retrieval.settings import warn_unknown_env

    warn_unknown_env(ENV_FILES)  # every command, whether it builds settings or not (eval-report, compare)


def _configure_logging(verbose: bool) -> None:
    """Warnings and errors of every library on stderr, one line each, as the CLI's own (``warning: message``,
    ``error: message``), Python warnings (``warnings.warn``) too (:func:`~orchestration.terminal.show_warning`);
    ``-v`` adds the INFO lines of the project's own loggers (:data:`PROJECT_LOGGERS`), every line then carrying its
    time and logger name as Dagster's lines do. Other libraries' INFO lines (alembic, SQLAlchemy,
    sentence-transformers) stay out."""
    import warnings

    warnings.showwarning = show_warning
    handler: logging.Handler = ConsoleHandler(err_console)
    if verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(PrintableFormatter(VERBOSE_FORMAT))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.NOTSET)


def _check_stdout() -> None:
    """A closed stdout (``>&-``: Python has no ``sys.stdout`` then) is an error before any work: every write to it
    would be dropped without a word, and the command would report success with nothing printed."""
    import sys

    from retrieval.errors import InvalidArgumentError

    if sys.stdout is None:
        raise InvalidArgumentError("stdout is closed: nothing could be printed (to discard the output: >/dev/null)")


def _replace_unencodable() -> None:
    """Characters the output streams cannot encode (stdout in ASCII or Latin-1: ``PYTHONIOENCODING``, a locale)
    are written as ``?``: output never fails, least of all after the work is done (``--json`` is ASCII anyway)."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def _export_env_files(ctx: typer.Context, paths: list[Path]) -> None:
    """The ``HYBRID_RAG_*`` and ``DAGSTER_HOME`` lines of ``paths`` (``.env``, then each ``--env-file``: a later file
    wins) become part of the environment for this command where the environment does not set them itself, as
    RetrievalSettings reads them; so every reader sees them (the corpora file, the asset and history paths, the
    Dagster instance and run of ``hybrid-rag run`` and ``ui``).
    A relative path in a file (also a ``file://<dir>`` URL's folder) is relative to that file's folder (as in the
    corpora file), so a command run from another directory uses the same index. Which line each came from is
    recorded in ``HYBRID_RAG_ENV_ORIGINS``, so that a bad value is named as that line (``.env:3``) in this process
    and in those it starts (Dagster's). The environment is restored when the command ends."""
    import json
    import os

    from dotenv import dotenv_values

    from retrieval.errors import InputFormatError
    from retrieval.settings import ENV_ORIGINS, PATH_VARIABLES, copied_origins, read_env_file

    settings_paths = ("HYBRID_RAG_QDRANT_PATH", "HYBRID_RAG_CACHE_DIR", "HYBRID_RAG_MODELS_DIR")
    paths_of = {*settings_paths, *PATH_VARIABLES, "DAGSTER_HOME"}
    values: dict[str, str] = {}
    origins: dict[str, str] = {}  # where each value was written, for messages (ENV_ORIGINS)
    ENV_RELATIVE.clear()
    for path in paths:
        if not path.is_file():
            continue
        try:
            found = dotenv_values(path, encoding="utf-8")
            lines = read_env_file(path)[0]
        except UnicodeDecodeError as exc:
            raise InputFormatError(f"{path}: not UTF-8 (byte {exc.start})") from None
        for key, value in ((k.upper(), v) for k, v in found.items() if v is not None):
            if not key.startswith("HYBRID_RAG_") and key != "DAGSTER_HOME":
                continue
            written = value
            if key in paths_of:
                value = _file_relative(path, value)
            elif key == "HYBRID_RAG_QDRANT_URL" and value.startswith("file://"):  # local mode's folder
                value = "file://" + _file_relative(path, value.removeprefix("file://"))
            values[key], origins[key] = value, f"{path}:{lines.get(key, '?')}"
            if value != written and path.parent.resolve() != Path.cwd().resolve():
                if not Path(written.removeprefix("file://")).expanduser().is_absolute():
                    ENV_RELATIVE[key] = (path, written, value.removeprefix("file://"))
                else:
                    ENV_RELATIVE.pop(key, None)
    for key in [key for key in ENV_RELATIVE if key in os.environ]:
        del ENV_RELATIVE[key]  # the environment's own value is used
    added = {key: value for key, value in values.items() if key not in os.environ}
    recorded = os.environ.get(ENV_ORIGINS)
    os.environ.update(added)
    os.environ[ENV_ORIGINS] = json.dumps({**copied_origins(), **{key: origins[key] for key in added}})

    def restore() -> None:
        for key in added:
            os.environ.pop(key, None)
        if recorded is None:
            os.environ.pop(ENV_ORIGINS, None)
        else:
            os.environ[ENV_ORIGINS] = recorded

    ctx.call_on_close(restore)


def _file_relative(env_file: Path, value: str) -> str:
    """``value`` (a path, ``~`` expanded) made absolute against ``env_file``'s folder; empty and ``none`` (unset)
    stay as they are."""
    if value.strip().lower() in ("", "none"):
        return value
    return str(env_file.parent.resolve() / Path(value).expanduser())


def _env_relative_hint(message: str) -> str:
    """For an error naming a path an env file gave relatively (see ENV_RELATIVE): which file and value it came
    from, and, where the same value relative to the working directory (what releases before read) is there, that
    folder: a likely leftover of such a release, not a reason to index again."""
    import os
    import re

    from retrieval.store import EdgeStore, StoreError

    for key, (env_file, written, resolved) in ENV_RELATIVE.items():
        if resolved not in message:
            continue
        hint = (
            f" ({key}={written} in {env_file} is relative to that file's folder: {resolved}; earlier releases "
            "read it relative to the working directory"
        )
        earlier = Path(written.removeprefix("file://")).expanduser().absolute()
        named = re.match(r"collection '([^']+)'", message)
        if key == "HYBRID_RAG_QDRANT_PATH" and named:
            store = EdgeStore(earlier, named[1])
            try:
                there = earlier.is_dir() and store.schema() is not None
            except StoreError:
                there = True  # there, if damaged
            finally:
                store.close()
            found = f"holds collection {named[1]!r}"
        else:
            there, found = earlier.exists(), "exists"
        if there and str(earlier) != resolved:
            hint += (
                f". {earlier} (relative to the working directory) {found}: likely what an earlier release used; "
                f"to keep using it, set {key}={os.path.relpath(earlier, env_file.parent.resolve())} in {env_file} "
                "(or an absolute path) instead of indexing again"
            )
        return hint + ")"
    return ""


def _check_env_file(path: Path) -> None:
    """An explicit ``--env-file`` must exist and hold only KEY=value lines naming real settings: pydantic-settings
    would skip a missing file, a garbage line or a misspelt setting silently."""
    import io

    from dotenv.parser import parse_stream

    from retrieval.errors import InputFormatError, InputNotFoundError
    from retrieval.settings import env_hint, env_names

    if not path.is_file():
        raise InputNotFoundError(f"--env-file {path}: " + ("not a file" if path.exists() else "no such file"))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFormatError(f"--env-file {path}: not UTF-8 (byte {exc.start})") from None
    settings = env_names()
    for binding in parse_stream(io.StringIO(text)):
        where = f"--env-file {path}:{binding.original.line}"
        if binding.error:
            raise InputFormatError(f"{where}: not a KEY=value line")
        key = (binding.key or "").upper()
        if key.startswith("HYBRID_RAG_") and key not in settings:
            raise InputFormatError(f"{where}: unknown setting {binding.key}{env_hint(key, settings)}")


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="BEIR directory, JSONL file, or folder of text/markdown files")],
    fmt: Annotated[str | None, typer.Option("--format", help="beir | jsonl | dir (default: detected)")] = None,
    collection: CollectionOpt = None,
    sync: Annotated[
        bool,
        typer.Option(
            "--sync", "--prune", help="Make the collection equal to the source: delete documents missing from it"
        ),
    ] = False,
    allow_delete: Annotated[
        bool,
        typer.Option(
            "--allow-delete", help="Allow a sync that deletes over half of the collection's documents or points"
        ),
    ] = False,
    policy: Annotated[str | None, typer.Option(help="Bad input: fail (default) or skip")] = None,
    rebuild: Annotated[
        bool, typer.Option(help="Build a new collection version from the source (implies --sync), switch atomically")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report (counts, skipped records) as JSON")] = False,
) -> None:
    """Add documents to a collection, or with --sync make it equal to the source (unchanged chunks are neither
    embedded nor written again; those of a changed document are written with their stored vectors)."""
    from retrieval.documents import BadInputError, BadInputPolicy, all_skipped, nothing_to_index, read_documents
    from retrieval.errors import NothingToIndexError, choice
    from retrieval.stack import RetrievalStack

    settings = _settings(collection=collection, bad_input_policy=policy and choice(BadInputPolicy, policy, "policy"))
    started = time.perf_counter()
    try:
        docs, read_report = read_documents(path, fmt, settings.bad_input_policy, progress=True)
    except BadInputError as exc:
        if not exc.skippable:  # the source as a whole: no policy reads it
            raise
        # records (a folder's image, a stray line): the fail policy names the first few; say what reads the rest
        hint = " (--policy skip indexes the others and lists each record it leaves out)"
        raise BadInputError(exc.problem, skippable=True, more=exc.problems[1:], hint=hint) from None
    read_seconds = time.perf_counter() - started
    emptying = (sync or rebuild) and allow_delete  # an empty source empties the collection only when asked
    if not docs and not emptying and (nothing := nothing_to_index(path, fmt, read_report.skipped)):
        empties = f"; --sync --allow-delete empties collection {settings.collection!r}" if sync or rebuild else ""
        raise BadInputError(nothing, hint=empties)
    with RetrievalStack(settings) as stack:
        indexer = stack.indexer()
        if not (sync or rebuild):  # a sync deletes what it does not read: no copies stay
            indexer.refuse_copies(path, docs, fmt)
        try:
            report = indexer.index(
                docs, prune=sync, allow_delete=allow_delete, skipped=read_report.skipped, rebuild=rebuild
            )
        except NothingToIndexError:  # an empty new collection: refused; the source named as given
            if not read_report.skipped:
                raise
            hint = f"; nothing was written: collection {settings.collection!r} was not created"
            raise BadInputError(all_skipped(path, read_report.skipped), hint=hint) from None
        if not docs and not as_json:
            why = _nothing_read(path, read_report.skipped, sync or rebuild, settings.collection)
            err_console.print(why, style="yellow", soft_wrap=True)
    indexing_seconds = report.seconds  # the indexer's part: chunking to publishing, as its -v line says
    report.read_seconds, report.seconds = read_seconds, time.perf_counter() - started  # the whole write
    if as_json:
        typer.echo(json.dumps(asdict(report), default=str, indent=2))
        _skipped_summary(read_report.skipped, path, report.kept, len(docs))
        return
    columns = (
        "documents",
        "chunks",
        "written",
        "embedded",
        "reused_from_cache",
        "reused",
        "unchanged",
        "deleted",
        "kept",
        "points",
    )
    console.print(f"indexed into {report.collection!r}", soft_wrap=True)  # not a title: the narrow table wraps it
    table = Table(show_header=False)  # one row a count: fits 80 columns
    table.add_column()
    table.add_column(justify="right")
    for name in columns:
        table.add_row(name, f"{getattr(report, name):,}")
    console.print(table)
    starting = report.seconds - report.read_seconds - indexing_seconds  # importing torch, opening the stack
    console.print(
        f"{report.seconds:.1f}s: reading {report.read_seconds:.1f}s, starting {starting:.1f}s, "
        f"chunking to publishing {indexing_seconds:.1f}s"
    )
    for problem in read_report.skipped:
        err_console.print(label("skipped", "yellow"), str(problem), soft_wrap=True)
    _skipped_summary(read_report.skipped, path, report.kept, len(docs))


def _nothing_read(path: Path, skipped: list, sync: bool, collection: str) -> str:
    """Why ``index`` into an existing collection indexes no document: ``path`` holds none, or only bad input."""
    if not skipped:
        return f"no documents in {path}"
    done = "indexed into" if sync else "added to"  # a sync still deletes what is missing from path
    return f"0 documents {done} {collection!r}: every record of {path} was skipped as bad input (listed below)"


def _skipped_summary(skipped: list, path: Path, kept: int, indexed: int) -> None:
    """On stderr, where a script's log sees it: how many records ``--policy skip`` left out (of ``indexed``
    documents read besides), and what stayed stored for them (the exit code stays 0: skipping is what was asked;
    ``--json`` lists them in ``skipped``)."""
    if skipped:
        others = "the others are indexed" if indexed else "no document is indexed"
        err_console.print(
            label("warning:", "yellow"),
            f"{counted(len(skipped), 'record')} of {path} skipped (--policy skip); {others}",
            soft_wrap=True,
        )
    if kept:
        err_console.print(_kept_line(kept, skipped, path), soft_wrap=True)


def _kept_line(kept: int, skipped: list, path: Path) -> str:
    """What ``report.kept`` counts: the skipped documents whose stored chunks stayed, or, when a skipped record
    has no readable id (it could be any document), every stored document missing from the source."""
    unreadable = sum(p.doc_id is None for p in skipped)
    if unreadable:
        records = f"{counted(unreadable, 'skipped record')} without a readable id"
        return f"kept the stored chunks of {counted(kept, 'document')} missing from {path} (not deleted: {records})"
    return f"kept the stored chunks of {counted(kept, 'skipped document')}"


PREVIEW_CHARS = 100  # of a hit's text in the search table
WORD_RE = re.compile(r"[^\W_]+")  # a run of letters and digits


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="The query")],
    collection: CollectionOpt = None,
    k: Annotated[int | None, typer.Option("--k", "-k", help="Number of hits (default: settings, 10)")] = None,
    rerank: Annotated[
        bool | None, typer.Option("--rerank/--no-rerank", help="Rerank the candidates (default: settings)")
    ] = None,
    variant: Annotated[str, typer.Option(help="dense | sparse | hybrid | hybrid+rerank")] = "hybrid",
    filter_json: Annotated[
        str | None, typer.Option("--filter", help='Metadata filter as JSON, e.g. \'{"year": {"gte": 2020}}\'')
    ] = None,
    group_by: Annotated[str, typer.Option(help="chunk | doc (one hit per document, its best chunk)")] = "chunk",
    score_threshold: Annotated[
        float | None, typer.Option(help="Drop hits with a lower final score (hybrid: a cut by rank)")
    ] = None,
    diversity: Annotated[
        float | None,
        typer.Option(help="0 to 1: diverse hits (maximal marginal relevance), e.g. 0.3; default off"),
    ] = None,
    diversity_depth: Annotated[
        int | None, typer.Option(help="Candidates --diversity picks from (default: settings, RERANK_DEPTH)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON")] = False,
) -> None:
    """Search a collection (the same defaults as the Python API and `eval`: reranking as the settings say)."""
    from retrieval.search import Variant
    from retrieval.stack import RetrievalStack
    from retrieval.store.base import filter_misses

    flt = _parse_filter(filter_json)
    with RetrievalStack(_settings(collection=collection)) as stack:
        retriever = stack.retriever()
        hits = retriever.search(
            text,
            k=k,
            filter=flt,
            rerank=rerank,
            variant=variant,
            group_by=group_by,
            score_threshold=score_threshold,
            diversity=diversity,
            diversity_depth=diversity_depth,
        )
        timings = retriever.last_timings
        log.info(
            "searched %r in %.0f ms: %s",
            retriever.store.collection,
            sum(timings.values()) * 1000,
            ", ".join(f"{name.removesuffix('_s')} {seconds * 1000:.0f} ms" for name, seconds in timings.items()),
        )
        misses = filter_misses(retriever.store, flt) if flt and not hits else []
        termless = "sparse" in Variant(variant).channels and not retriever.encode([text], "sparse").sparse[0]
        unexplained = not (hits or misses or termless)
        no_hit = _no_hit_reason(retriever, text, variant, flt, score_threshold) if unexplained else None
    if termless:  # "the", "to be or not to be": say why the sparse channel found nothing (stderr, --json too)
        only = ": the hits are the dense channel's" if Variant(variant) is not Variant.SPARSE else ""
        err_console.print(
            label("note:", "yellow"),
            f"the query makes no sparse term (its words are all stopwords, or it has no words){only}",
            soft_wrap=True,
        )
    if misses:  # a filter of the wrong type finds nothing without an error: say why (stderr, --json too)
        name = retriever.store.collection
        err_console.print(
            label("note:", "yellow"), f"no point of {name!r} matches the filter: {'; '.join(misses)}", soft_wrap=True
        )
    if no_hit:
        err_console.print(label("note:", "yellow"), f"no hit: {no_hit}", soft_wrap=True)
    if as_json:
        typer.echo(json.dumps([_hit_json(h) for h in hits], default=str, indent=2))
        return
    table = Table(title=f"{counted(len(hits), 'hit')} for {text!r}")
    for col in ("#", "doc", "chunk", "score", "dense", "sparse", "title / text"):
        table.add_column(col)
    for rank, h in enumerate(hits, start=1):
        snippet = (h.title + " | " if h.title else "") + _preview(h.text, text)
        table.add_row(
            str(rank),
            h.doc_id,
            _chunk_cell(h),
            f"{h.score:.4f}",
            str(h.dense_rank or "-"),
            str(h.sparse_rank or "-"),
            snippet,
        )
    console.print(table)


def _chunk_cell(hit: Any) -> str:
    """The table's chunk column: the chunk's index and, for a PDF's chunk, the pages its text is on ("3 p.12",
    "4 p.12-13")."""
    page, last = hit.metadata.get("page"), hit.metadata.get("last_page")
    if type(page) is not int:
        return str(hit.chunk_index)
    return f"{hit.chunk_index} p.{page}" + (f"-{last}" if type(last) is int and last > page else "")


def _no_hit_reason(retriever: Any, text: str, variant: str, flt: dict | None, score_threshold: float | None) -> str:
    """Why a search found nothing, where neither its filter (it matches some point) nor its query (it makes sparse
    terms) explains it: an empty collection, the score threshold, or the sparse channel alone, which finds only the
    documents holding a term of the query."""
    name = retriever.store.collection
    if not retriever.store.count():
        return f"collection {name!r} holds no documents (hybrid-rag index PATH -c {name} adds some)"
    if score_threshold is not None and retriever.search(text, k=1, filter=flt, variant=variant):
        return f"no hit scores {score_threshold:g} or more (--score-threshold)"
    return f"no document{' the filter matches' if flt else ''} of {name!r} holds a term of the query"


def _preview(text: str, query: str, width: int = PREVIEW_CHARS) -> str:
    """About ``width`` characters of ``text`` in whole words, whitespace collapsed, with "…" where text is left
    out: from shortly before the first word of the window that holds the most distinct query words (matched as
    BM25 reads them: NFKC, case-folded, letters and digits), or from the start when none is in the text."""
    from retrieval.encoders.sparse import normalize_text

    def terms(s: str) -> set[str]:
        return set(WORD_RE.findall(normalize_text(s)))

    words, wanted = text.split(), terms(query)
    found = [terms(w) & wanted for w in words]
    ends = list(accumulate((len(w) + 1 for w in words), initial=0))  # the words[lo:hi] join: ends[hi]-ends[lo]-1

    def stop(lo: int) -> int:  # the end of the longest window from ``lo`` that fits (at least one word)
        return max(lo + 1, bisect.bisect_right(ends, ends[lo] + width + 1) - 1)

    anchor = max((i for i, f in enumerate(found) if f), key=lambda i: len(set().union(*found[i : stop(i)])), default=0)
    lo = anchor  # a few words of context before it, if the window still holds it
    while lo > 0 and ends[anchor] - ends[lo - 1] <= width // 4 and stop(lo - 1) > anchor:
        lo -= 1
    hi = stop(lo)
    while lo > 0 and hi == len(words) and ends[hi] - ends[lo - 1] - 1 <= width:  # the text's end: fill from before
        lo -= 1
    shown = " ".join(words[lo:hi])
    cut = len(shown) > width  # a single word longer than the preview
    return ("…" if lo > 0 else "") + shown[: width - cut] + ("…" if cut or hi < len(words) else "")


def _hit_json(hit) -> dict:
    """A hit's public fields, as the Python :class:`~retrieval.search.Hit` documents them: all but the
    ``dense_vector`` it carries for the reranker."""
    return {f.name: getattr(hit, f.name) for f in fields(hit) if f.name != "dense_vector"}


def _parse_filter(text: str | None) -> dict | None:
    from retrieval.errors import FilterError

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FilterError(f"--filter is not valid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise FilterError("--filter nests too deeply to be read as a filter") from None
    if not isinstance(value, dict):
        raise FilterError(f"--filter must be a JSON object of field -> condition, got {text!r}")
    return value


@app.command()
def delete(
    doc_ids: Annotated[list[str] | None, typer.Argument(help="Document ids to delete (all their chunks)")] = None,
    ids_file: Annotated[
        Path | None,
        typer.Option(
            "--ids-file",
            help="Also delete the ids in this file, one per line ('-': stdin; blank lines and surrounding "
            "whitespace ignored)",
        ),
    ] = None,
    collection: CollectionOpt = None,
) -> None:
    """Delete documents from a collection by id (as indexing writes: waits for other writers, readers switch
    to the result atomically). Exit code 0: every id was deleted; 1: some were not in the collection (the others
    are deleted); 2: an error (e.g. a blank id, an unreadable ids file), nothing deleted."""
    from retrieval.errors import InvalidArgumentError
    from retrieval.stack import RetrievalStack

    wanted = list(doc_ids or [])
    if ids_file is not None:
        listed = _read_ids(ids_file)
        if not listed:  # an empty file is more likely a script's mistake than nothing to do
            raise InvalidArgumentError(f"--ids-file {_ids_name(ids_file)}: holds no document ids")
        wanted += listed
    if not wanted:
        raise InvalidArgumentError("no document ids to delete: give them as arguments or --ids-file PATH")
    settings = _settings(collection=collection)
    with RetrievalStack(settings) as stack:
        report = stack.indexer().delete_documents(wanted)
    deleted, documents, left = counted(report.deleted, "point"), counted(report.documents, "document"), report.points
    console.print(f"deleted {deleted} of {documents}; {counted(left, 'point')} left")
    for asked, stored in report.stored_as.items():  # escaped: the two look the same
        console.print(f"{asked} is stored as {ascii(stored)} (the same id in another Unicode normalization)")
    if report.missing:
        err_console.print(
            label(f"not in {settings.collection!r}:", "yellow"), ", ".join(report.missing), soft_wrap=True
        )
        raise typer.Exit(1)


def _read_ids(path: Path) -> list[str]:
    """The ids of an ids file (``-``: stdin), one per line, stripped, blank lines left out; read as every input file
    is (:func:`retrieval.input_files.raw_lines`: gzip, UTF-16 with a byte order mark, LF, CRLF or lone CR line
    ends). A file that cannot be read, or is not UTF-8 text (a NUL byte, an invalid sequence), is an error naming
    the file and line."""
    from retrieval.errors import InputFormatError, InputNotFoundError
    from retrieval.input_files import numbered_lines, raw_lines, utf8_problem

    name = _ids_name(path)

    def error(_path: Path, line: int | None, reason: str) -> InputFormatError:
        return InputFormatError(f"--ids-file {name}{'' if line is None else f':{line}'}: {reason}")

    stdin = str(path) == "-"
    if not stdin and not path.exists():
        raise InputNotFoundError(f"--ids-file {name}: no such file")
    handle = click.get_binary_stream("stdin") if stdin else None
    if handle is not None and not hasattr(handle, "peek"):  # a test runner's BytesIO
        handle = io.BufferedReader(handle)  # type: ignore[arg-type]
    ids = []
    for line_no, raw in numbered_lines(raw_lines(path, error, handle)):
        if b"\0" in raw:
            raise error(path, line_no, "a NUL byte (a binary file, not one id per line)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not valid UTF-8 (byte {exc.start} of the line)" if stdin else utf8_problem(raw, exc, path)
            raise error(path, line_no, problem) from None
        if text.strip():
            ids.append(text.strip())
    return ids


def _ids_name(path: Path) -> str:
    return "stdin" if str(path) == "-" else str(path)


@app.command()
def drop(
    collection: Annotated[str, typer.Argument(help="The collection to remove with everything in it")],
    corpus: Annotated[
        str | None,
        typer.Option(
            help="Also remove this Dagster corpus' asset tables, evaluation reports (reports/NAME/ beside the "
            "history) and its evaluation history rows of this collection (its runs in the Dagster instance and "
            "eval-report's outputs stay: see README)"
        ),
    ] = None,
    keep_collection: Annotated[
        bool,
        typer.Option(
            "--keep-collection",
            help="With --corpus: remove only the corpus' tables, reports and history rows; keep the collection and "
            "its models (an old corpus name whose collection a renamed corpus still indexes)",
        ),
    ] = False,
    history: HistoryOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
) -> None:
    """Remove a collection for good: every version (published or staged), readers' pointer or alias, and its models
    (adapted query encoder, tuned reranker, the copies a restore set aside); asks first unless --yes. Snapshots stay."""
    import shutil

    from retrieval.errors import InvalidArgumentError
    from retrieval.settings import redact_url
    from retrieval.store import StoreError, open_store
    from retrieval.store.snapshots import models_set_aside

    if keep_collection and corpus is None:
        raise InvalidArgumentError("--keep-collection keeps the collection: it needs --corpus NAME, what to remove")
    settings = _settings(collection=collection)
    where = redact_url(settings.qdrant_url) or str(settings.qdrant_path)
    models = settings.collection_models_dir()
    model_dirs = [] if keep_collection else [d for d in (models, *models_set_aside(models)) if d.is_dir()]
    leftovers = None
    if corpus is not None:
        from evals.history import default_history_path
        from orchestration.forget import check_removable, find_leftovers

        check_removable(corpus, settings.collection, keep_collection=keep_collection)
        leftovers = find_leftovers(corpus, settings.collection, history or default_history_path())
    if keep_collection:
        assert leftovers is not None
        _remove_corpus(leftovers, settings.collection, yes)
        return
    store = open_store(settings)
    try:
        exists = store.exists()
        if not exists and leftovers is None:
            raise StoreError(
                f"no collection {settings.collection!r} at {where}{_other_names(store, settings.collection)}"
            )
        if not yes:
            what = [f"collection {settings.collection!r} at {where}"] if exists else []
            what += [f"its models ({', '.join(map(str, model_dirs))})"] if model_dirs else []
            if leftovers is not None:
                what.append(_corpus_leftovers(leftovers, settings.collection))
            _confirm(f"Remove {'; '.join(what)} for good?")
        if exists:
            dropped = store.drop()  # under the write lock
            console.print(
                f"dropped {settings.collection!r} at {where}: {', '.join(dropped) or 'its pointer'}", soft_wrap=True
            )
        else:
            console.print(f"no collection {settings.collection!r} at {where}", soft_wrap=True)
    finally:
        store.close()
    for folder in model_dirs:
        shutil.rmtree(folder)
        console.print(f"removed {folder}", soft_wrap=True)
    if leftovers is not None:
        _remove_corpus(leftovers, settings.collection, yes=True)


def _other_names(store: Any, name: str, shown: int = 10) -> str:
    """For collection ``name``, not in ``store``'s backend: the closest names that are, else the names there
    (``shown`` at most)."""
    import difflib

    names = store.collection_names()
    near = difflib.get_close_matches(name, names, n=3)
    if near:
        return f" (did you mean {' or '.join(map(repr, near))}?)"
    if not names:
        return ": it holds no collection"
    more = f" and {len(names) - shown:,} more (hybrid-rag collections lists them)" if len(names) > shown else ""
    return f": it holds {', '.join(map(repr, names[:shown]))}{more}"


def _corpus_leftovers(found: CorpusLeftovers, collection: str) -> str:
    """What ``drop --corpus`` removes of a corpus, in a few words (for the confirmation)."""
    tables, reports = counted(len(found.tables), "asset table"), counted(len(found.reports), "report")
    return (
        f"corpus {found.corpus!r}: {tables}, {reports}, "
        f"{counted(found.history_rows, 'evaluation history row')} of collection {collection!r}"
    )


def _remove_corpus(found: CorpusLeftovers, collection: str, yes: bool) -> None:
    """Remove what ``drop --corpus`` found of a corpus (asks first unless ``yes``), saying what it removed and which
    history rows of the name it kept (they searched other collections)."""
    from orchestration.forget import remove_leftovers

    if not yes:
        _confirm(f"Remove {_corpus_leftovers(found, collection)} for good?")
    remove_leftovers(found)
    for path in [*found.tables, *found.reports]:
        console.print(f"removed {path}", soft_wrap=True)
    kept = f" ({found.other_rows:,} of other collections kept)" if found.other_rows else ""
    console.print(
        f"corpus {found.corpus!r}: {counted(found.history_rows, 'evaluation history row')} deleted{kept}",
        soft_wrap=True,
    )


def _confirm(question: str) -> None:
    """Ask ``question`` on stderr and read the answer from stdin: ``y``/``yes`` goes on, any other answer is exit
    code 1. No answer to read (stdin closed, ``<&-``; at its end, ``</dev/null``, cron) is an error naming --yes
    (exit code 2): nothing is done either way."""
    import sys

    from retrieval.errors import InvalidArgumentError

    no_answer = InvalidArgumentError(f"{question} needs an answer, and stdin has none: pass --yes to confirm")
    if sys.stdin is None or sys.stdin.closed:
        raise no_answer
    err_console.print(f"{question} [y/N]: ", end="", soft_wrap=True)
    answer = sys.stdin.readline()
    if not answer:
        err_console.print()
        raise no_answer
    if answer.strip().lower() not in ("y", "yes"):
        err_console.print("not confirmed: nothing removed", soft_wrap=True)
        raise typer.Exit(1)


def _encoding_summary(encoding: dict[str, Any] | None) -> str | None:
    """A collection's recorded encoding settings in a few words (``chunks 256/32, bm25 1.2/0.75/256``)."""
    if encoding is None:
        return None
    known = ("bm25_analyzer", "chunk_at_whitespace")  # read from an earlier release's record as "word", False
    if all(v is None for k, v in encoding.items() if k not in known):
        return "not recorded"
    parts = [f"chunks {encoding['chunk_tokens']}/{encoding['chunk_overlap']}"]
    if encoding.get("chunk_at_whitespace"):
        parts[0] += " at whitespace"
    if encoding["bm25_k1"] is not None:
        parts.append(f"bm25 {encoding['bm25_k1']:g}/{encoding['bm25_b']:g}/{encoding['bm25_avg_len']:g}")
    if encoding.get("bm25_analyzer"):
        parts.append(f"bm25 terms {encoding['bm25_analyzer']}")
    if encoding["document_prompt"]:
        parts.append(f"prompt {encoding['document_prompt']!r}")
    if encoding.get("dense_precision"):
        parts.append(f"dense {encoding['dense_precision']}")
    return ", ".join(parts)


UNFINISHED = "unfinished first build: rerun the index command"
FIRST_BUILD = "first build in progress"  # the status while the write lock's holder builds it
NO_COLLECTIONS_HINT = "hybrid-rag index PATH [--collection NAME]"
NOT_KNOWN = "n/a"  # a field the backend cannot tell (README: hybrid-rag collections)


def _writing(store: Any) -> dict[str, Any]:
    """A row's ``write_in_progress`` (True, False, or None where the backend cannot tell) and ``writer`` (the
    holder of the write lock as it records itself: pid, host, since)."""
    held = store.write_in_progress()
    return {"write_in_progress": None if held is None else bool(held is not False), "writer": held or None}


def _writing_cell(row: dict[str, Any]) -> str:
    if row["write_in_progress"] is None:
        return NOT_KNOWN
    if not row["write_in_progress"]:
        return "no"
    writer = row["writer"] or {}
    if "pid" not in writer:
        return "yes"
    return f"yes: pid {writer['pid']} on {writer.get('host', '?')} since {writer.get('since', '?')}"


def _written_at(when: dt.datetime | None) -> str | None:
    return None if when is None else when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# the columns of `collections` that may fold in its table, each with the width it needs at least (a name may be
# 200 bytes long, an encoding or a writer's line some 80 characters)
FOLDED = {"collection": 24, "encoding": 16, "writing": 12}


def _print_collections(rows: list[dict[str, Any]], columns: list[str], where: str) -> None:
    """The rows of ``collections`` as one table when every value but a long name, the encoding and the writer fits
    on one line in it, else (80 columns: piped, a CI log) as one block of ``name  value`` lines per collection, so
    that no model or time is folded into slivers."""
    from rich.cells import cell_len

    shown = []
    for row in rows:
        cells = {**row, "encoding": _encoding_summary(row["encoding"])}
        if row["status"] == "ready" and row["last_write"] is None:
            cells["last_write"] = NOT_KNOWN  # not recorded: README says where
        cells["writing"] = _writing_cell(row) if row["status"] != "error" else None
        for key in ("error", "status", "write_in_progress", "writer"):  # status, error: said after the table
            cells.pop(key, None)
        shown.append({k: "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for k, v in cells.items()})
    whole = {c: max([cell_len(c), *(cell_len(cells[c]) for cells in shown)]) for c in columns}
    needed = sum(min(w, FOLDED.get(c, w)) for c, w in whole.items()) + 3 * len(columns) + 1  # padding, borders
    if needed <= console.width or not shown:
        table = Table(title=f"collections at {where}")
        for col in columns:
            table.add_column(col, overflow="fold", no_wrap=col not in FOLDED)
        for cells in shown:
            table.add_row(*(cells[col] for col in columns))
        console.print(table)
        return
    console.print(f"collections at {where}", soft_wrap=True)
    indent = 2 + max(map(cell_len, columns)) + 2
    for cells in shown:
        console.print(label(cells["collection"], "bold"), overflow="fold")  # a name up to 200 bytes long
        for col in columns[1:]:  # the value wrapped under itself, no trailing spaces (a table pads every row)
            lines = label(cells[col], "").wrap(console, max(20, console.width - indent), overflow="fold")
            for i, line in enumerate(lines):
                console.print(f"  {col if i == 0 else '':<{indent - 4}}  ", line, sep="", soft_wrap=True)


@app.command()
def collections(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON")] = False) -> None:
    """List the collections with their point and document counts, last write, writer, models and versions."""
    from retrieval.settings import redact_url
    from retrieval.store import ENCODING_FIELDS, StoreError, collection_names, open_store

    settings = _settings()
    where = redact_url(settings.qdrant_url) or str(settings.qdrant_path.absolute())
    rows, problems, unfinished = [], [], []
    keys = ("points", "documents", "last_write", "dense_model", "dense_dim", "sparse_model", "version", "encoding")
    for name in collection_names(settings):
        store = open_store(settings, name)
        try:
            writing = _writing(store)
            schema = store.schema()
            if schema is None:  # a first build running, or one stopped before it published: no command can use it
                unfinished.append(name)
                status = FIRST_BUILD if writing["write_in_progress"] else UNFINISHED
                rows.append({"collection": name, "status": status, **dict.fromkeys(keys), **writing})
                continue
            rows.append(
                {
                    "collection": name,
                    "status": "ready",
                    "points": store.count(),
                    "documents": store.documents(),
                    "last_write": _written_at(store.last_write()),
                    "dense_model": schema.dense_model,
                    "dense_dim": schema.dense_dim,
                    "sparse_model": schema.sparse_model,
                    "version": store.current_version(),
                    # how the chunks were cut and encoded (None: not recorded, a collection made before they were)
                    "encoding": {f: getattr(schema, f) for f in ENCODING_FIELDS},
                    **writing,
                }
            )
        except StoreError as exc:  # a lost pointer, a damaged version: listed, and said why after the table
            problems.append(f"{name}: {exc}")
            rows.append(
                {
                    "collection": name,
                    "status": "error",
                    **dict.fromkeys(keys),
                    "write_in_progress": None,
                    "writer": None,
                    "error": str(exc),
                }
            )
        finally:
            store.close()
    missing = not settings.qdrant_url and not settings.qdrant_path.is_dir()  # e.g. cron, run from $HOME
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:  # not an empty table: what to do instead (a missing folder's warning follows)
        if not missing:
            console.print(f"no collections at {where}; create one with {NO_COLLECTIONS_HINT}", soft_wrap=True)
    else:
        _print_collections(rows, ["collection", *keys, "writing"], where)
        for row in (row for row in rows if row["collection"] in unfinished):
            if row["write_in_progress"]:  # the first build is running now: nothing to rerun
                writer = _writing_cell(row).removeprefix("yes").removeprefix(": ") or "another process"
                note = f"{FIRST_BUILD} ({writer}); no other command can use it until it publishes"
            else:
                note = f"{UNFINISHED} (until then no other command can use it)"
            console.print(f"{row['collection']}: {note}", soft_wrap=True)
    for problem in problems:
        err_console.print(label("error:", "red"), problem, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    if missing:
        err_console.print(
            label("warning:", "yellow"),
            f"no index folder at {where} (HYBRID_RAG_QDRANT_PATH, relative to the working directory or its .env)",
            soft_wrap=True,
        )
        raise typer.Exit(1)


@app.command()
def snapshot(
    collection: CollectionOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Snapshot directory (embedded engine; default data/snapshots/NAME-TIME)")
    ] = None,
) -> None:
    """Snapshot a collection: a copy of its current version (embedded), or a Qdrant snapshot (server)."""
    from retrieval.store import open_store
    from retrieval.store.snapshots import snapshot as take

    settings = _settings(collection=collection)
    store = open_store(settings)
    try:
        where = take(store, out, models_dir=settings.collection_models_dir())
    finally:
        store.close()
    if not settings.qdrant_url:  # a folder (relative to the working directory, as --out is): said absolutely
        where = str(Path(where).absolute())
    console.print(f"snapshot of {settings.collection!r}: {where}", soft_wrap=True)


@app.command()
def restore(
    source: Annotated[str, typer.Argument(help="Snapshot directory (embedded) or snapshot URL/path on the server")],
    collection: Annotated[
        str | None,
        typer.Option("--collection", "-c", help="Collection to restore (default: the one the snapshot was taken of)"),
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace an existing collection")] = False,
    other_collection: Annotated[
        bool,
        typer.Option("--other-collection", help="With --replace: replace it by a snapshot of another collection"),
    ] = False,
) -> None:
    """Restore a collection from a snapshot as a new version, verified first; readers switch to it atomically."""
    from retrieval import RetrievalStack
    from retrieval.errors import InvalidArgumentError
    from retrieval.settings import redact_url
    from retrieval.store.snapshots import check_snapshot, refuse_embedded_snapshot, snapshot_collection
    from retrieval.store.snapshots import restore as recover

    url = _settings(collection=collection).qdrant_url  # -c overrides the default collection
    server = url is not None
    if server:
        refuse_embedded_snapshot(source, redact_url(url))  # else "does not record the collection" or a server error
    else:
        check_snapshot(source)  # a mistyped path is said to be one before anything else
    recorded = snapshot_collection(source, server=server)
    if collection is None and recorded is None:
        raise InvalidArgumentError(
            f"{source} does not record the collection it was taken of (a snapshot of an earlier release, or a renamed "
            "file): name the collection to restore (--collection NAME)"
        )
    settings = _settings(collection=collection or recorded)
    with RetrievalStack(settings) as stack:
        done = recover(
            stack.store(),
            source,
            replace=replace,
            other_collection=other_collection,
            expected=stack.schema,  # called only to verify a restored version (loads no model that it records)
            models_dir=settings.collection_models_dir(),
        )
    if done.already:
        console.print(
            f"{settings.collection!r} already holds {source} ({counted(done.points, 'point')}; restored before, "
            "not written since): nothing to do",
            soft_wrap=True,
        )
        return
    of = f" (a snapshot of {recorded!r})" if recorded not in (None, settings.collection) else ""
    console.print(
        f"restored {settings.collection!r} from {source}{of}: {counted(done.points, 'point')}", soft_wrap=True
    )
    if done.models_aside is not None:
        console.print(f"the collection's previous models were set aside in {done.models_aside}", soft_wrap=True)


@app.command()
def migrate(
    collection: CollectionOpt = None,
    to_collection: Annotated[
        str | None, typer.Option("--to-collection", help="Name on the server (default: the same name)")
    ] = None,
) -> None:
    """Copy an embedded collection (HYBRID_RAG_QDRANT_PATH) to the Qdrant server at HYBRID_RAG_QDRANT_URL: its
    points as stored (nothing re-embedded), schema and payload indexes; the embedded one is left as it is."""
    from retrieval.errors import InvalidArgumentError
    from retrieval.settings import redact_url
    from retrieval.store import open_store
    from retrieval.store.migrate import copy_collection

    settings = _settings(collection=collection)
    if not settings.qdrant_url:
        raise InvalidArgumentError(
            "migrate copies a collection of the embedded engine (HYBRID_RAG_QDRANT_PATH) to a Qdrant server: set "
            "HYBRID_RAG_QDRANT_URL (and HYBRID_RAG_QDRANT_API_KEY) to the server's"
        )
    source = open_store(settings.model_copy(update={"qdrant_url": None}))
    try:
        target = open_store(settings, to_collection)
        try:
            points = copy_collection(source, target)
        finally:
            target.close()
    finally:
        source.close()
    console.print(
        f"copied {settings.collection!r} from {settings.qdrant_path} to {redact_url(settings.qdrant_url)}"
        + (f" as {to_collection!r}" if to_collection not in (None, settings.collection) else "")
        + f": {counted(points, 'point')}",
        soft_wrap=True,
    )


@app.command("eval")
def evaluate(
    beir_dir: Annotated[
        str,
        typer.Argument(
            help="BEIR directory (queries.jsonl, qrels/; corpus.jsonl to index a new collection) or 'sample'"
        ),
    ],
    collection: BeirCollectionOpt = None,
    split: Annotated[str, typer.Option(help="qrels split to score")] = "test",
    variant: Annotated[
        list[str] | None, typer.Option(help="dense | sparse | hybrid | hybrid+rerank (repeatable)")
    ] = None,
    run_file: Annotated[
        Path | None,
        typer.Option(
            help="Write the last variant's run as a TREC run file; a name with {variant} (runs/{variant}.trec): "
            "every variant's, each to its own file"
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON")] = None,
    history: HistoryOpt = None,
    keep_identical_ids: KeepIdenticalOpt = False,
) -> None:
    """Evaluate retrieval variants on a BEIR collection; indexes it first when the collection does not exist."""
    from evals.collections import load_collection
    from evals.history import EvalHistory, default_history_path
    from evals.report import metrics_table
    from evals.runner import evaluate_collection
    from evals.runs import format_run, write_run, write_run_context
    from retrieval import RetrievalStack, read_documents
    from retrieval.documents import BadInputError, nothing_to_index
    from retrieval.errors import InputNotFoundError, choice
    from retrieval.search import Variant

    variants = [choice(Variant, v, "variant") for v in (variant or [v.value for v in Variant])]
    coll = load_collection(beir_dir)
    coll.split_queries(split)  # a missing split or a malformed queries/qrels file fails before any work
    settings = _settings(collection=coll.name if collection is None else collection)
    records = EvalHistory(history or default_history_path())  # one that cannot be written fails before the work
    with RetrievalStack(settings) as stack:
        if stack.check_schema(missing_ok=True) is None:
            if not coll.corpus_path.is_file():
                raise InputNotFoundError(
                    f"collection {settings.collection!r} does not exist and {coll.root} has no corpus.jsonl to index "
                    "it from: name the collection its documents were indexed into (--collection)"
                )
            err_console.print(
                f"collection {settings.collection!r} does not exist: indexing {coll.corpus_path}", soft_wrap=True
            )
            docs, read_report = read_documents(coll.corpus_path, "jsonl", settings.bad_input_policy)
            for problem in read_report.skipped:
                err_console.print(label("skipped", "yellow"), str(problem), soft_wrap=True)
            # No document: no empty collection ("another corpus"), said as hybrid-rag index says it; a corpus of bad
            # records only: the indexer's NothingToIndexError names them
            if not docs and (nothing := nothing_to_index(coll.corpus_path, "jsonl", read_report.skipped)):
                raise BadInputError(nothing, hint=f": collection {settings.collection!r} was not created")
            stack.indexer().index(docs, skipped=read_report.skipped)
        report = evaluate_collection(
            stack.retriever(), coll, split, variants, ignore_identical_ids=not keep_identical_ids
        )
    console.print(metrics_table(report.metrics(), title=f"{report.label()} ({split})"))
    for warning in [*report.warnings, report.coverage_warning()]:
        if warning:
            err_console.print(label("warning:", "yellow"), warning, soft_wrap=True)
    for name, check in report.quality_checks().items():
        if check.comparison is not None:
            mark = label("ok", "green") if check.passed else label("warning", "yellow")
            console.print(f"{name}:", mark, check.description, soft_wrap=True)
    if run_file:  # the outputs first: a run the TREC format cannot hold fails here, before anything is recorded
        placeholder = "{variant}"
        named = [v.value for v in variants] if placeholder in str(run_file) else [variants[-1].value]
        for name in named:  # every run checked before any is written
            format_run(report.variants[name].run, tag=f"hybrid-rag-{name}")
        for name in named:
            path = Path(str(run_file).replace(placeholder, name))
            write_run(path, report.variants[name].run, tag=f"hybrid-rag-{name}")
            write_run_context(path, {**report.context(), "variant": name})
            err_console.print(f"run file ({name}): {path.absolute()}", soft_wrap=True)  # stdout: the result alone
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.summary(), indent=2))
        err_console.print(f"summary: {json_out.absolute()}", soft_wrap=True)
    report.record(records, source="cli")


@app.command()
def compare(
    baseline: Annotated[Path, typer.Argument(help="TREC run file of the baseline")],
    candidate: Annotated[Path, typer.Argument(help="TREC run file of the candidate")],
    beir_dir: Annotated[str, typer.Argument(help="BEIR directory with the qrels, or 'sample'")],
    split: Annotated[str, typer.Option(help="qrels split")] = "test",
    metric: Annotated[
        list[str] | None, typer.Option(help="Metrics to compare (repeatable; default: ndcg@10 and recall@100)")
    ] = None,
    keep_identical_ids: KeepIdenticalOpt = False,
) -> None:
    """Compare two runs query by query: wins/losses/ties and a paired significance test."""
    from evals.collections import load_collection
    from evals.compare import (
        compare_runs,
        context_differences,
        corpus_warnings,
        format_comparison,
        judged_not_in_corpus_warning,
    )
    from evals.metrics import judgement_warnings, metric_names, nfc_ids
    from evals.runs import read_run, read_run_context
    from retrieval.errors import InvalidArgumentError

    families = sorted({m.partition("@")[0] for m in metric_names()})
    for name in metric or []:
        family, _, cutoff = name.partition("@")
        if family not in families or not cutoff.isdigit() or int(cutoff) < 1:
            _check_metrics([name], [f"{f}@K" for f in families])
    coll = load_collection(beir_dir)
    qrels = coll.qrels(split)
    (base_run, _), (cand_run, _) = read_run(baseline), read_run(candidate)
    base_run, cand_run = nfc_ids(base_run), nfc_ids(cand_run)  # the qrels' ids are NFC
    names = _run_labels(baseline, candidate)
    judged = [len(qrels.keys() & run.keys()) for run in (base_run, cand_run)]
    if not all(judged):
        empty = " nor ".join(name for name, count in zip(names, judged, strict=True) if not count)
        raise InvalidArgumentError(
            f"{'neither ' if ' nor ' in empty else ''}{empty} has {'' if ' nor ' in empty else 'no '}results for a "
            f"query judged in {coll.name}/{split} "
            f"({counted(len(qrels), 'query')}): a run of another split or dataset, or an empty one"
        )
    corpus = coll.doc_ids()  # empty without a corpus file (a folder of queries and qrels): nothing to check
    checked = corpus_warnings(dict(zip(names, (base_run, cand_run), strict=True)), corpus, coll.name) if corpus else []
    if corpus and (capped := judged_not_in_corpus_warning(qrels, corpus, coll.name)):
        checked.append(capped)
    for warning in [*checked, *judgement_warnings(qrels, not keep_identical_ids)]:
        err_console.print(label("warning:", "yellow"), warning, soft_wrap=True)
    differ = context_differences(names, (read_run_context(baseline), read_run_context(candidate)))
    if differ:  # what `eval --run-file` kept beside each run: another index, encoder, release or setting
        err_console.print(label("note:", "cyan"), differ, soft_wrap=True)
    for name, count in zip(names, judged, strict=True):
        if count < len(qrels):
            err_console.print(
                label("warning:", "yellow"),
                f"{name} has results for {count:,} of the {counted(len(qrels), 'query')} judged in "
                f"{coll.name}/{split}; the others score 0",
                soft_wrap=True,
            )
    ignore = not keep_identical_ids
    rows = [
        compare_runs(qrels, base_run, cand_run, m, names=names, ignore_identical_ids=ignore)
        for m in (metric or ["ndcg@10", "recall@100"])
    ]
    typer.echo(printable(format_comparison(rows)))


def _run_labels(baseline: Path, candidate: Path) -> tuple[str, str]:
    """Column labels of two run files: their file names, or their paths when the names are the same."""
    if baseline.name != candidate.name:
        return baseline.name, candidate.name
    return str(baseline), str(candidate)


@app.command("eval-report")
def eval_report(
    history: HistoryOpt = None,
    out: Annotated[Path, typer.Option(help="Output folder for the PNG plot and markdown table")] = Path("data/reports"),
    collection: Annotated[
        str | None,
        typer.Option(
            "--collection", "-c", help="Report only this collection: evaluated or searched (default: every one)"
        ),
    ] = None,
    metric: Annotated[str, typer.Option(help="Metric to plot over time")] = "ndcg@10",
) -> None:
    """Plot a metric over time per variant (PNG), and the p50/p95 search latency when the history has it
    (latency_ms.png), and write the latest figures as a markdown table."""
    from evals.history import EvalHistory, default_history_path
    from evals.report import LATENCY_LABELS, markdown_table, plot_history, plot_latency

    history = history or default_history_path()
    df = EvalHistory(history, create=False).records()  # a report creates no file
    if df.empty:
        err_console.print(f"no evaluations recorded in {history}", style="yellow", soft_wrap=True)
        raise typer.Exit(1)
    if collection is not None:
        recorded = sorted(set(df["collection"]))
        searched = df["context"].map(lambda c: isinstance(c, dict) and c.get("qdrant_collection") == collection)
        df = df[(df["collection"] == collection) | searched.astype(bool)]  # the evaluated dataset, or the one searched
        if df.empty:
            err_console.print(
                f"no evaluations of collection {collection!r} in {history}; recorded: {', '.join(recorded)}",
                style="yellow",
                soft_wrap=True,
            )
            raise typer.Exit(1)
    _check_metrics([metric], sorted(set(df["metric"])))
    out.mkdir(parents=True, exist_ok=True)
    png = plot_history(df, metric=metric, out_png=out / f"{metric.replace('@', '_at_')}.png")
    timed = df["metric"].isin(LATENCY_LABELS).any()  # evaluations of earlier releases recorded no latency
    latency = plot_latency(df, out / "latency_ms.png") if timed else None
    table = markdown_table(df)
    (out / "latest.md").write_text(table)
    typer.echo(printable(table))  # stdout holds the markdown alone; where the files are goes to stderr
    err_console.print(f"table: {(out / 'latest.md').absolute()}", soft_wrap=True)
    err_console.print(f"plot: {Path(png).absolute()}", soft_wrap=True)
    if latency is not None:
        err_console.print(f"latency plot: {latency.absolute()}", soft_wrap=True)
    else:
        err_console.print(
            f"latency plot: none, no evaluation in {history} recorded its search latency (earlier releases did not)",
            soft_wrap=True,
        )


def _check_metrics(asked: list[str], valid: list[str]) -> None:
    from retrieval.errors import InvalidArgumentError

    unknown = [m for m in asked if m not in valid]
    if unknown:
        raise InvalidArgumentError(f"unknown metric {unknown[0]!r}; valid: {', '.join(valid)}")


@app.command("tune-reranker")
def tune_reranker(
    beir_dir: Annotated[str, typer.Argument(help="BEIR directory with a train split, or 'sample'")],
    collection: BeirCollectionOpt = None,
    split: Annotated[str, typer.Option(help="Split to tune on (never test)")] = "train",
    train: Annotated[bool, typer.Option(help="Train the E2Rank-style pseudo-query encoder first")] = True,
    epochs: Annotated[int, typer.Option(help="Training epochs")] = 4,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: $HYBRID_RAG_MODELS_DIR/<collection>, data/models/...)")
    ] = None,
) -> None:
    """Tune (and train) the reranker on the train split; writes an env file for --env-file."""
    from evals.collections import load_collection
    from evals.tuning import tune_reranker as tune
    from retrieval import RetrievalStack

    coll = load_collection(beir_dir)
    view = coll.train_view(split)  # the test split is refused here, before any work
    settings = _settings(collection=coll.name if collection is None else collection)
    out = out or settings.collection_models_dir()
    with RetrievalStack(settings) as stack:
        stack.check_schema()
        profile = tune(view, stack.retriever(), out, train=train, epochs=epochs)
    env_path = profile.write_env(out / "reranker.env")
    table = Table(
        title=f"{coll.name}/{split}: {counted(profile.fit_queries, 'query')} to train, {profile.dev_queries:,} to tune"
    )
    for col in ("dev nDCG@10: hybrid", "+ trained query encoder", "+ rerank", "weight", "feedback_k", "beta"):
        table.add_column(col, justify="right")
    c = profile.config
    table.add_row(
        f"{profile.dev_baseline:.4f}",
        f"{profile.dev_first_stage:.4f}",
        f"{profile.dev_reranked:.4f}",
        f"{c.weight}",
        str(c.feedback_k),
        f"{c.beta}",
    )
    console.print(table)
    console.print(f"settings: {env_path}  (use: hybrid-rag --env-file {env_path} eval {beir_dir})", soft_wrap=True)


@app.command()
def adapt(
    collection: CollectionOpt = None,
    max_queries: Annotated[int, typer.Option(help="Pseudo-queries to train on")] = 3000,
    epochs: Annotated[int, typer.Option(help="Passes over the pseudo-queries")] = 1,
    qrels: Annotated[
        Path | None, typer.Option(help="BEIR folder (queries.jsonl, qrels/) whose judgements decide")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Judged split (default: dev, else train; never test)")] = None,
    max_negatives: Annotated[
        int | None,
        typer.Option(
            min=1, help="Other chunks the softmax ranks, a uniform sample (bounds memory) \\[default: 200000]"
        ),
    ] = None,
) -> None:
    """Adapt the query encoder to an indexed collection without labels (pseudo-queries from its own text).

    Searches use it from then on, unless it scored lower than the dense model: on the --qrels judgements
    (a dev or train split) when given, else on held-out pseudo-queries (then it is not saved).
    """
    from evals.collections import EvalCollection
    from evals.pseudo_queries import AdaptConfig, adapt_query_encoder, judged_queries, stored_corpus
    from retrieval import RetrievalStack
    from retrieval.errors import InvalidArgumentError

    judged = None
    if split is not None and qrels is None:
        raise InvalidArgumentError("--split needs --qrels (the BEIR folder whose judgements decide)")
    if qrels is not None:
        if not (qrels / "queries.jsonl").is_file() or not (qrels / "qrels").is_dir():
            raise InvalidArgumentError(f"--qrels {qrels}: not a BEIR folder (needs queries.jsonl and qrels/)")
        beir = EvalCollection(qrels.resolve().name, qrels)
        if split is not None and split not in beir.splits():
            raise InvalidArgumentError(f"--qrels {qrels}: no split {split!r}; available: {', '.join(beir.splits())}")
        try:
            judged = judged_queries(beir, split)
        except ValueError as exc:  # a test split; a malformed qrels or queries file (file:line: reason)
            raise InvalidArgumentError(str(exc)) from None
        if judged is None:
            console.print(f"{qrels}: no dev or train judgements; held-out pseudo-queries decide")
    settings = _settings(collection=collection)
    out = settings.adapted_query_dir()
    config = AdaptConfig(max_queries=max_queries, epochs=epochs)
    if max_negatives is not None:
        config = replace(config, max_negatives=max_negatives)
    with RetrievalStack(settings) as stack:
        schema = stack.check_schema()  # the collection must exist; its vectors' model is the one adapted
        docs, owners, vectors = stored_corpus(stack.store(), config)
        report = adapt_query_encoder(
            docs,
            owners,
            vectors,
            schema.dense_model,
            out,
            config,
            query_prompt=stack.dense.query_prompt,  # as searches encode queries
            judged=judged,
            stack=stack,
            device=settings.dense_device,
        )
    table = Table(
        title=f"{settings.collection}: {counted(report.train_queries, 'pseudo-query')} to train, "
        f"{report.held_out_queries:,} held out; decided by {report.gate}"
    )
    for col in ("nDCG@10: judge", "search"):
        table.add_column(col)
    for col in ("dense model", "adapted", "decides"):
        table.add_column(col, justify="right")
    rows = [(f"held-out pseudo-queries ({report.held_out_queries:,})", "dense", report.base_ndcg, report.adapted_ndcg)]
    if judged:
        rows.append((report.gate, "hybrid+rerank", report.judged_base_ndcg, report.judged_adapted_ndcg))
    for judge, search, base, adapted in rows:
        decides = judge == report.gate or (not judged and search == "dense")
        table.add_row(judge, search, f"{base:.4f}", f"{adapted:.4f}", "yes" if decides else "no")
    console.print(table)
    console.print(f"adapted query encoder: {out}" if report.used else "not used: searches keep the dense model")


@app.command()
def run(
    corpus: Annotated[
        str | None, typer.Option(help="Corpus partition to build [default: the corpora file's default]")
    ] = None,
    allow_delete: Annotated[
        bool,
        typer.Option(
            "--allow-delete", help="Allow a sync that deletes over half of the collection's documents or points"
        ),
    ] = False,
    ndcg_drop_tolerance: Annotated[
        float | None,
        typer.Option(
            help="Largest tolerated drop of hybrid nDCG@10 against the published version (0 to 1) [default: 0.02]; "
            "a larger value accepts an intended drop the publishing gate refused"
        ),
    ] = None,
) -> None:
    """The main job: materialize the Dagster asset graph (ingest, chunk, embed, index, evaluate) and print metrics.

    The run is recorded in the Dagster instance at $DAGSTER_HOME (else data/dagster_home)."""
    import dagster as dg

    from assets.corpora import load_corpora
    from assets.evaluation import EvaluationConfig
    from orchestration.main_job import MainJobError, print_results, run_main_job
    from retrieval.errors import InvalidArgumentError

    if corpus is None:
        corpus = load_corpora().default
    ops: dict[str, object] = {"qdrant_index": {"config": {"allow_delete": True}}} if allow_delete else {}
    if ndcg_drop_tolerance is not None:
        evaluation = {"ndcg_drop_tolerance": ndcg_drop_tolerance}
        try:  # checked before the run: a bad value would fail it only after indexing
            EvaluationConfig(**evaluation)
        except dg.Failure as exc:
            raise InvalidArgumentError(f"--ndcg-drop-tolerance {ndcg_drop_tolerance}: {exc.description}") from None
        ops["retrieval_evaluation"] = {"config": evaluation}
    run_config = {"ops": ops} if ops else None
    try:
        print_results(run_main_job(corpus, run_config=run_config))
    except MainJobError as exc:  # e.g. the evaluation gate refused the new version: readers keep the old one
        err_console.print(str(exc), style="red", soft_wrap=True)
        raise typer.Exit(1) from exc


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ui(ctx: typer.Context) -> None:
    """The Dagster UI: dagster dev -m orchestration.definitions (other arguments are passed on: -p 3001) on the
    project's instance, $DAGSTER_HOME else data/dagster_home, made with the project's dagster.yaml (telemetry off,
    one run per corpus) as `run` does; the runs of `run` show up there."""
    from orchestration.main_job import run_dagster_ui

    # run_dagster_ui handles SIGINT/SIGTERM/SIGHUP itself: it stops dagster dev's process group, then returns
    raise typer.Exit(run_dagster_ui(ctx.args))


cache_app = typer.Typer(
    cls=_Group, help="The on-disk embedding cache: size per model, and pruning.", add_completion=False
)
app.add_typer(cache_app, name="cache")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
MAX_DURATION_S = 36_500 * 86_400  # a hundred years


def _duration(text: str) -> float:
    """Seconds of ``30d``, ``12h``, ``2w``, ``90m``, ``45s`` (a bare number: days)."""
    from retrieval.errors import InvalidArgumentError

    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in DURATION_UNITS else "d"
    number = raw[:-1] if raw[-1:] in DURATION_UNITS else raw
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_DURATION_S:  # NaN, infinity and what reaches before 1970 too
        raise InvalidArgumentError(
            f"--older-than {text!r}: expected a number of days up to 36500, or e.g. 30d, 12h, 2w, 90m"
        )
    return seconds


def _cache():
    from retrieval.embedding_cache import EmbeddingCache

    return EmbeddingCache(_settings().cache_dir / "embeddings.sqlite")


def _day(seconds: int | None) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M") if seconds else "-"


@cache_app.callback(invoke_without_command=True)
def cache(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON")] = False,
) -> None:
    """Show the embedding cache: its file, size, and rows per model (cache key: model, backend, prompt, token limit)
    with when they were last used; the ONNX exports (current or superseded) and the folders left by killed exports."""
    from retrieval.encoders.onnx_export import exports, folder_bytes, stale_exports

    if ctx.invoked_subcommand is not None:
        return
    store = _cache()
    stale = stale_exports(store.path.parent)
    stale_bytes = sum(folder_bytes(d) for d in stale)
    onnx = exports(store.path.parent)
    usage = store.usage() if store.path.exists() else []
    if as_json:
        rows = [asdict(u) for u in usage]
        figures = {"path": str(store.path), "file_bytes": store.file_bytes(), "models": rows}
        figures["exports"] = [
            {"path": str(e.path), "model": e.model, "bytes": e.bytes, "written": int(e.written), "current": e.current}
            for e in onnx
        ]
        figures |= {"stale_exports": [str(d) for d in stale], "stale_export_bytes": stale_bytes}
        print(json.dumps(figures, indent=2))
        return
    if not store.path.exists():
        console.print(f"no embedding cache at {store.path}", soft_wrap=True)
    else:
        print(printable(f"{store.path}: {store.file_bytes() / 2**20:.1f} MiB\n"))
        # the columns are --json's keys (a size in MiB is its key's bytes): model is the cache key, label its name
        print(
            "| model (cache key) | label (model name) | backend | prompt | max_tokens | rows | vector_bytes (MiB) "
            "| oldest_use (UTC) | newest_use (UTC) |"
        )
        print("|---|---|---|---|---:|---:|---:|---|---|")
    for u in usage:
        mib = f"{u.vector_bytes / 2**20:.1f}"
        prompt = "?" if u.prompt is None else repr(u.prompt)
        what = f"{u.label or '?'} | {u.backend or '?'} | {prompt} | {u.max_tokens or '?'}"
        print(printable(f"| {u.model} | {what} | {u.rows:,} | {mib} | {_day(u.oldest_use)} | {_day(u.newest_use)} |"))
    if onnx:
        print(printable(f"\nONNX exports under {store.path.parent / 'models'} (superseded: removed by cache prune)\n"))
        print("| path | model | bytes (MiB) | written (UTC) | current |")
        print("|---|---|---:|---|---|")
        for e in onnx:
            state = "yes" if e.current else "no (superseded)"
            mib = f"{e.bytes / 2**20:.1f}"
            print(printable(f"| {e.path.name} | {e.model} | {mib} | {_day(int(e.written))} | {state} |"))
    if stale:
        print(
            printable(
                f"\n{counted(len(stale), 'ONNX export folder')} left by ended processes ({stale_bytes / 2**20:.1f} "
                f"MiB) under {store.path.parent / 'models'}: removed by the next ONNX export and by cache prune"
            )
        )


@cache_app.command("prune")
def cache_prune(
    older_than: Annotated[
        str, typer.Option(help="Delete rows not used for this long: 30d, 12h, 2w (0: every row)")
    ] = "30d",
    model: Annotated[
        str | None, typer.Option(help="Only this cache key, or every key of this model name (see hybrid-rag cache)")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Only the keys of this dense backend: torch, onnx, onnx-int8, openvino")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Delete cached vectors not used for a while (a later index encodes them again), then shrink the file; delete
    the superseded ONNX exports and the folders left by killed exports (see hybrid-rag cache)."""
    from retrieval.encoders.onnx_export import folder_bytes, remove_superseded, stale_exports

    seconds = _duration(older_than)
    store = _cache()
    stale = stale_exports(store.path.parent)
    freed = sum(folder_bytes(d) for d in stale)
    removed = remove_superseded(store.path.parent)
    freed += sum(e.bytes for e in removed)
    exports_report = {"exports_removed": [str(e.path) for e in removed] + [str(d) for d in stale]}
    exports_report["export_bytes_freed"] = freed
    if (removed or stale) and not as_json:
        console.print(
            f"{counted(len(removed), 'superseded ONNX export')} and {len(stale):,} left by killed exports deleted "
            f"({freed / 2**20:.1f} MiB)",
            soft_wrap=True,
        )
    if not store.path.exists():
        if as_json:
            print(json.dumps({"path": str(store.path), **exports_report}, indent=2))
        else:
            console.print(f"no embedding cache at {store.path}", soft_wrap=True)
        return
    if backend is not None:
        from retrieval.errors import choice
        from retrieval.settings import DenseBackend

        backend = choice(DenseBackend, backend.strip().lower(), "dense backend").value
    report = store.prune(older_than=seconds or None, model=model, backend=backend)
    if as_json:
        print(json.dumps({"path": str(store.path), **asdict(report), **exports_report}, indent=2))
        return
    console.print(
        f"{store.path}: {counted(report.rows_deleted, 'row')} deleted, {report.rows_left:,} left; "
        f"{report.bytes_before / 2**20:.1f} MiB -> {report.bytes_after / 2**20:.1f} MiB",
        soft_wrap=True,
    )


if __name__ == "__main__":
    app()
