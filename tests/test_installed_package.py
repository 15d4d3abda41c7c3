"""hybrid-rag as an installed package sees it: run from a directory outside the checkout, without its corpora.yaml,
without the optional extras, next to a user's own packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import evals
from assets.corpora import CORPORA_FILE_ENV, CorpusConfigError, load_corpora

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_corpora_file_the_builtin_one_names_the_packaged_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CORPORA_FILE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no corpora.yaml here: as an installed package run from anywhere
    corpora = load_corpora()
    assert corpora.names == ["sample"] and corpora.default == "sample"
    sample = corpora.get("sample")
    packaged = Path(evals.__file__).resolve().parent / "sample"  # the package's data, not the working directory's
    assert sample.require_source() == packaged and sample.qrels == packaged and sample.eval_collection().splits()


def test_corpora_yaml_in_the_working_directory_wins_and_its_paths_are_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CORPORA_FILE_ENV, raising=False)
    (tmp_path / "corpora.yaml").write_text("corpora:\n  notes: {source: docs, format: dir}\n")
    work = tmp_path / "sub"
    work.mkdir()
    monkeypatch.chdir(tmp_path)
    corpora = load_corpora()
    assert corpora.path == tmp_path / "corpora.yaml" and corpora.get("notes").source == tmp_path / "docs"
    monkeypatch.chdir(ROOT)  # the checkout's file: make run, Docker (WORKDIR /app), the tests
    assert {"sample", "scifact", "dropbox"} <= set(load_corpora().names)
    monkeypatch.setenv(CORPORA_FILE_ENV, str(tmp_path / "corpora.yaml"))  # the variable wins over ./corpora.yaml
    assert load_corpora().names == ["notes"]


def test_an_unreadable_corpora_file_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CORPORA_FILE_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(CorpusConfigError, match=f"missing.yaml.*{CORPORA_FILE_ENV}"):
        load_corpora()


def test_the_wheel_ships_the_builtin_corpora_file_and_the_sample() -> None:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "default_corpora.yaml" in data["assets"] and (ROOT / "assets" / "default_corpora.yaml").is_file()
    shipped = [p for pattern in data["evals"] for p in (ROOT / "evals").glob(pattern)]
    names = {p.relative_to(ROOT / "evals").as_posix() for p in shipped}
    assert names >= {"sample/corpus.jsonl", "sample/queries.jsonl"}


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel built from the checkout's tracked files, a folder it is installed into without dependencies):
    code run with that folder first on ``sys.path`` imports hybrid-rag as a user's ``pip install`` does, not the
    checkout (the venv's editable install finds the checkout after ``PYTHONPATH``)."""
    import shutil

    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"  # a copy of the tracked files: the build writes into its source tree
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.split("\0"):
        if name and (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    built = subprocess.run(
        [*pip, "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(base)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = base.glob("hybrid_rag-*.whl")
    site = base / "site"
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return wheel, site


@pytest.mark.slow
def test_the_built_wheel_ships_every_data_file_and_the_typed_markers(installed_wheel: tuple[Path, Path]) -> None:
    """Every tracked non-Python file inside the four packages is in the wheel (the sample, the built-in corpora file,
    the Dagster instance settings); PEP 561: without ``py.typed`` type checkers treat every name as Any."""
    import zipfile

    wheel, _ = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", "retrieval", "evals", "assets", "orchestration"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    data = {name for name in tracked if not name.endswith(".py")}
    assert {"retrieval/py.typed", "evals/py.typed", "evals/sample/corpus.jsonl"} <= data
    assert data - names == set()


def test_the_public_api_says_what_it_returns() -> None:
    """The adapters' factories name their return types (the extras stay optional: the names are strings), and a
    title, documented as None for none, is annotated so."""
    import inspect
    import typing

    from retrieval import Document, Hit, HybridRetriever

    returns = {
        name: inspect.signature(getattr(HybridRetriever, name)).return_annotation
        for name in ("as_langchain", "as_llamaindex", "as_haystack")
    }
    assert returns == {
        "as_langchain": "LangChainRetriever",
        "as_llamaindex": "LlamaIndexRetriever",
        "as_haystack": "HaystackRetriever",
    }
    assert typing.get_type_hints(Document)["title"] == str | None and Document("a", "b", title=None).title is None
    assert typing.get_type_hints(Hit)["title"] is str  # a hit's title is always a string: "" for none


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRID_RAG_", "DAGSTER_HOME"))}
    cache = os.environ.get("HYBRID_RAG_CACHE_DIR")  # the shared embedding cache: the sample's vectors are reused
    return {**env, **({"HYBRID_RAG_CACHE_DIR": cache} if cache else {}), **extra}


@pytest.mark.slow
def test_main_job_runs_from_the_installed_wheel_outside_the_checkout(
    tmp_path: Path, installed_wheel: tuple[Path, Path]
) -> None:
    """`hybrid-rag run` as the wheel installs it, from a directory without corpora.yaml: the built-in file, the
    sample and the Dagster instance settings inside the installed package, nothing read from the checkout."""
    _, site = installed_wheel
    env = _env(
        tmp_path,
        PYTHONPATH=str(site),
        DAGSTER_HOME=str(tmp_path / "home"),
        HYBRID_RAG_QDRANT_PATH=str(tmp_path / "index"),
        HYBRID_RAG_ASSETS_DIR=str(tmp_path / "assets"),
        HYBRID_RAG_HISTORY_PATH=str(tmp_path / "history.sqlite"),
    )
    where = subprocess.run(
        [sys.executable, "-c", "import evals, orchestration, retrieval; print(retrieval.__file__, evals.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.stdout.split() == [str(site / "retrieval" / "__init__.py"), str(site / "evals" / "__init__.py")]
    cmd = [sys.executable, "-m", "orchestration.cli", "run"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "corpus sample" in " ".join(out.split()) and "ndcg@10" in out.lower()
    assert str(ROOT) not in out  # no path of the checkout: the sample and settings came from the installed package
    assert (tmp_path / "home" / "dagster.yaml").is_file() and not (tmp_path / "evals").exists()


def test_every_hybrid_rag_variable_the_code_reads_is_a_setting_or_a_listed_path() -> None:
    """One list: --env-file accepts, and .env sets, every HYBRID_RAG_* variable the project reads."""
    import re

    from assets.corpora import CORPORA_FILE_ENV
    from evals.history import HISTORY_ENV
    from orchestration.definitions import ASSETS_DIR_ENV
    from retrieval.settings import PATH_VARIABLES, TOOL_VARIABLES, env_names

    known = env_names() | set(TOOL_VARIABLES)  # the benchmarks' and tests' own, named only so none is warned about
    assert {CORPORA_FILE_ENV, HISTORY_ENV, ASSETS_DIR_ENV} <= set(PATH_VARIABLES)
    read = {
        name
        for package in ("retrieval", "evals", "assets", "orchestration")
        for file in (ROOT / package).rglob("*.py")
        for name in re.findall(r"HYBRID_RAG_[A-Z][A-Z0-9_]*[A-Z0-9]", file.read_text())
    }
    assert read - known == set()


def _unknown_corpus(tmp_path: Path, *args: str) -> str:
    """`hybrid-rag [ARGS] run --corpus nope` in tmp_path: its error names the corpora file it read."""
    cmd = [sys.executable, "-m", "orchestration.cli", *args, "run", "--corpus", "nope"]
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    return " ".join(done.stderr.split())


@pytest.mark.slow
def test_path_variables_from_env_file_and_dotenv(tmp_path: Path) -> None:
    mine = tmp_path / "conf" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text("corpora:\n  notes: {source: docs, format: dir}\n")
    settings = tmp_path / "conf" / "paths.env"
    settings.write_text(f"HYBRID_RAG_CORPORA_FILE={mine}\nHYBRID_RAG_ASSETS_DIR={tmp_path / 'a'}\n")
    assert f"configured in {mine}: notes" in _unknown_corpus(tmp_path, "--env-file", str(settings))
    (tmp_path / ".env").write_text(f"HYBRID_RAG_CORPORA_FILE={mine}\nHYBRID_RAG_HISTORY_PATH={tmp_path / 'h.db'}\n")
    assert f"configured in {mine}: notes" in _unknown_corpus(tmp_path)


def test_env_file_settings_last_only_for_the_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from orchestration.cli import app

    settings = tmp_path / "paths.env"
    settings.write_text(f"HYBRID_RAG_HISTORY_PATH={tmp_path / 'h.sqlite'}\n")
    os.environ.pop("HYBRID_RAG_HISTORY_PATH", None)
    result = CliRunner().invoke(app, ["--env-file", str(settings), "eval-report", "-c", "none"])
    assert "unknown setting" not in result.output and str(tmp_path / "h.sqlite") in " ".join(result.output.split())
    assert "HYBRID_RAG_HISTORY_PATH" not in os.environ


@pytest.mark.parametrize(("backend", "runtime"), [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_an_onnx_backend_without_the_fast_extra_is_one_error_before_any_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, runtime: str
) -> None:
    from retrieval.encoders import DenseEncoder
    from retrieval.errors import ModelLoadError

    monkeypatch.setitem(sys.modules, runtime, None)  # not installed, as without [fast] (import fails, no spec)
    encoder = DenseEncoder(backend=backend, cache_dir=tmp_path / "cache")
    with pytest.raises(ModelLoadError, match=rf"DENSE_BACKEND={backend} needs the \[fast\] extra \({runtime} not"):
        encoder.encode_queries(["q"])
    assert not (tmp_path / "cache").exists()  # nothing exported


def test_cli_with_an_onnx_backend_without_the_fast_extra_exits_2_in_one_line(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from orchestration.cli import app

    for name in ("onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setenv("HYBRID_RAG_DENSE_BACKEND", "onnx")
    (cli_env / "d.jsonl").write_text('{"_id": "a", "text": "some text"}\n')
    result = CliRunner().invoke(app, ["index", str(cli_env / "d.jsonl")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = " ".join(result.output.split())
    assert "HYBRID_RAG_DENSE_BACKEND=onnx needs the [fast] extra (onnx, onnxruntime not installed)" in line
    assert "pip install -e '.[fast]'" in line and "delete" not in line


@pytest.mark.parametrize(
    ("method", "module", "extra"),
    [("as_llamaindex", "llama_index.core.retrievers", "llamaindex"), ("as_haystack", "haystack", "haystack")],
)
def test_adapters_without_their_extra_name_it(monkeypatch: pytest.MonkeyPatch, method: str, module: str, extra: str):
    from retrieval.errors import HybridRagError
    from retrieval.search import HybridRetriever

    adapter = "retrieval.llamaindex" if extra == "llamaindex" else "retrieval.haystack"
    monkeypatch.delitem(sys.modules, adapter, raising=False)
    monkeypatch.setitem(sys.modules, module, None)  # not installed, as without the extra
    retriever = HybridRetriever.__new__(HybridRetriever)  # the adapter is made before the retriever is used
    with pytest.raises(
        HybridRagError, match=rf"{method}\(\) needs the \[{extra}\] extra .*pip install -e '.\[{extra}\]'"
    ):
        getattr(retriever, method)()


@pytest.mark.slow
def test_the_code_location_imports_without_warnings(tmp_path: Path) -> None:
    """`python -W error -c "import orchestration.definitions"`: no deprecated Dagster API (define_asset_job's
    partitions_def: the jobs' partitions come from their assets)."""
    code = (
        "from orchestration.definitions import defs; from assets import corpus_partitions; "
        "jobs = [defs.resolve_job_def(n) for n in ('reindex', 'evaluate', 'adapt')]; "
        "assert all(job.partitions_def == corpus_partitions for job in jobs)"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], env=_env(tmp_path), capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("name", ["assets", "evals"])
def test_a_users_own_package_of_the_same_name_is_refused_naming_both_paths(tmp_path: Path, name: str) -> None:
    """`dagster dev -m orchestration.definitions` puts the working directory first on sys.path, as `python -c` does:
    a user's project with its own `assets/` or `evals/` package would shadow ours."""
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    done = subprocess.run(
        [sys.executable, "-c", "import orchestration.definitions"],
        env={**_env(tmp_path), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith("ImportError:"), done.stderr[-2000:]
    assert str(tmp_path / name / "__init__.py") in last and f"hybrid-rag's {ROOT / name}" in last


def test_ui_prepares_the_instance_and_runs_dagster_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    """`hybrid-rag ui -- --help`: the project's instance settings in $DAGSTER_HOME, then `dagster dev` itself."""
    from typer.testing import CliRunner

    from orchestration.cli import app
    from orchestration.main_job import INSTANCE_YAML

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["ui", "--", "--help"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "dagster.yaml").read_text() == INSTANCE_YAML.read_text()
    assert "dagster dev [OPTIONS]" in capfd.readouterr().out  # the child's own output


@pytest.mark.slow
def test_ui_serves_the_code_location_on_the_projects_instance(tmp_path: Path) -> None:
    """`hybrid-rag ui -p PORT` from outside the checkout: the webserver answers, on the prepared instance (with its
    dagster.yaml: telemetry off, one run per corpus); Ctrl-C stops it. Dagster's advice to use `dg dev` is not shown."""
    import signal

    port, home, env, cmd = _ui_command(tmp_path)
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for_ui(proc, port)
        assert "telemetry:\n  enabled: false" in (home / "dagster.yaml").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: to hybrid-rag and dagster dev (one process group)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0 or proc.returncode < 0
    assert "Use 'dg dev' instead" not in proc.stderr.read().decode()  # advice that would leave the project's instance


def _ui_command(tmp_path: Path) -> tuple[int, Path, dict[str, str], list[str]]:
    """A free port, a DAGSTER_HOME under ``tmp_path``, the environment and the `hybrid-rag ui` command on them."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tmp_path / "home"
    env = {**_env(tmp_path), "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return port, home, env, [sys.executable, "-m", "orchestration.cli", "ui", "-p", str(port), "-h", "127.0.0.1"]


def _wait_for_ui(proc: subprocess.Popen, port: int) -> None:
    """Wait (up to 240 s) until the UI started by ``proc`` answers on ``port``; its stderr if it exited first."""
    import time

    import httpx

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(1)
    raise AssertionError(proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "no answer in 240 s")


def _processes_on(home: Path) -> list[int]:
    """The processes whose environment has ``DAGSTER_HOME=home``: what `hybrid-rag ui` started on that instance."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"DAGSTER_HOME={home}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # exited meanwhile, or another user's
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])
def test_ui_stopped_by_a_signal_leaves_no_dagster_process(tmp_path: Path, stop: str) -> None:
    """`hybrid-rag ui` started as `nohup ... &` from a script does (SIGINT ignored), stopped with SIGTERM (kill, a
    supervisor) or SIGHUP: dagster dev, its webserver, daemon and code server stop with it, none outlives it."""
    import signal

    port, home, env, cmd = _ui_command(tmp_path)
    background = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd]  # SIGINT ignored, as in a background job
    proc = subprocess.Popen(background, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_ui(proc, port)
        assert len(_processes_on(home)) >= 3  # the wrapper, dagster dev, the webserver...
        proc.send_signal(getattr(signal, stop))  # to the wrapper only
        proc.wait(timeout=120)
        assert _processes_on(home) == []
    finally:
        for pid in _processes_on(home):  # what the wrapper left (the defect), so the test cleans up after itself
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
