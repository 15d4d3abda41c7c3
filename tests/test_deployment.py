"""The docker-compose deployment without Docker: the image's Dagster instance settings (docker/dagster.yaml) name
a PostgreSQL driver that the image installs and run monitoring that the run launcher supports; qdrant-client's
local mode held by another process fails in one line; an API key over http to a compose service is no warning."""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import dagster as dg
import pytest
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval.store import StoreError, connect

ROOT = Path(__file__).parents[1]
DOCKER_YAML = ROOT / "docker" / "dagster.yaml"


def test_git_ignores_what_running_from_a_checkout_writes() -> None:
    """A checkout's ``git add -A`` must not take in secrets (``.env``: HYBRID_RAG_QDRANT_API_KEY), indexed text
    (snapshots were not ignored) or run state; the defaults under ``data/`` and the settings file."""
    written = [
        ".env",
        "data/snapshots/sample-20260101T000000Z/snapshot.json",  # hybrid-rag snapshot
        "data/index/sample.current.json",
        "data/models/sample/query_encoder/config.json",
        "data/history/evals.sqlite",
        "data/reports/latest.md",  # hybrid-rag eval-report
        "data/assets/chunks/sample.parquet",
        "data/dagster_home/dagster.yaml",
        "data/dropbox/note.md",
    ]
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    check = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", "-v", "--non-matching", *written],
        capture_output=True,
        text=True,
    )
    assert not [line for line in check.stdout.splitlines() if line.startswith("::")], check.stdout


def test_the_image_instance_uses_the_psycopg2_driver_it_installs() -> None:
    """dagster-postgres installs psycopg2 only; SQLAlchemy >= 2.1 maps a bare ``postgresql://`` to psycopg (v3)."""
    from dagster._core.storage.config import pg_config

    db = yaml.safe_load(DOCKER_YAML.read_text())["storage"]["postgres"]["postgres_db"]
    assert "scheme" in pg_config()["postgres_db"].config_type.fields  # a key dagster-postgres reads
    assert make_url(f"{db['scheme']}://u:p@host/db").get_dialect().driver == "psycopg2"


def test_the_image_instance_monitors_runs_with_the_default_launcher(tmp_path: Path) -> None:
    """The run monitoring settings are valid for DefaultRunLauncher (it cannot resume runs); the storage is
    swapped for SQLite, as the test suite has no PostgreSQL."""
    config = yaml.safe_load(DOCKER_YAML.read_text())
    del config["storage"]
    config["compute_logs"]["config"]["base_dir"] = str(tmp_path / "logs")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds > 0
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert_ticks_are_purged(instance)


@pytest.mark.slow  # runs dagster-daemon twice
def test_the_daemon_container_is_unhealthy_once_its_daemons_stop_beating(tmp_path: Path) -> None:
    """docker-compose.yml's daemon healthcheck, run against the image's instance settings (SQLite storage): healthy
    while every daemon beats, unhealthy 5 minutes after they stop (Dagster's own default waits 30)."""
    from dagster._daemon.types import DaemonHeartbeat

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    kind, command = compose["services"]["dagster_daemon"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    config = yaml.safe_load(DOCKER_YAML.read_text())
    del config["storage"]
    config["compute_logs"]["config"]["base_dir"] = str(tmp_path / "logs")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))

    def healthy_after_beats(seconds_ago: float) -> bool:
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            for daemon in instance.get_required_daemon_types():
                instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - seconds_ago, daemon, "d1", errors=[]))
        # the image has dagster-daemon on its PATH; here it is beside this interpreter (not on PATH when the venv's
        # pytest runs without the venv activated, as make test runs it)
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PATH": path}
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=120).returncode == 0

    assert healthy_after_beats(10)
    assert not healthy_after_beats(400)


class _Readyz(http.server.BaseHTTPRequestHandler):
    """Qdrant's ``GET /readyz``: 200 once its collections are loaded, 503 before (``ready`` says which)."""

    ready = True

    def do_GET(self) -> None:
        code = 200 if self.path == "/readyz" and self.ready else 503 if self.path == "/readyz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"all shards are ready" if code == 200 else b"not ready")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow  # runs bash
@pytest.mark.skipif(shutil.which("bash") is None, reason="the probe is bash's, as in the qdrant image")
def test_the_qdrant_healthcheck_is_healthy_only_once_qdrant_answers_readyz() -> None:
    """docker-compose.yml's qdrant healthcheck, as compose runs it (``$$`` is a ``$``), against a server that answers
    Qdrant's /readyz on another port: healthy when it answers 200, unhealthy on a 503 and when nothing listens."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    kind, *command = compose["services"]["qdrant"]["healthcheck"]["test"]
    assert kind == "CMD" and command[:2] == ["bash", "-c"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    probe = command[2].replace("$$", "$").replace("/6333 ", f"/{port} ")
    assert str(port) in probe

    def healthy() -> bool:
        return subprocess.run(["bash", "-c", probe], capture_output=True, timeout=30).returncode == 0

    try:
        assert healthy()
        _Readyz.ready = False
        assert not healthy()
    finally:
        _Readyz.ready = True
        server.shutdown()
        server.server_close()
    assert not healthy()  # nothing listens on the port now


def assert_ticks_are_purged(instance: dg.DagsterInstance) -> None:
    """Schedule and sensor ticks (which Dagster keeps forever by default, -1) are purged after a while."""
    from dagster._core.definitions.run_request import InstigatorType

    for kind in (InstigatorType.SCHEDULE, InstigatorType.SENSOR):
        days = instance.get_tick_retention_settings(kind)
        assert days and all(0 < d <= 90 for status, d in days.items() if status.value != "STARTED"), (kind, days)


@pytest.mark.slow  # a second process holds the folder
def test_a_local_mode_folder_held_by_another_process_fails_in_one_line(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "q"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from qdrant_client import QdrantClient; c = QdrantClient(path=sys.argv[1]); "
            "print('ready', flush=True); sys.stdin.read()",
            str(folder),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match=f"local-mode folder {folder} is in use by another process"):
            connect(f"file://{folder}")
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", f"file://{folder}")
        result = CliRunner().invoke(app, ["collections"])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and "in use by another process" in result.output
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    connect(f"file://{folder}").close()  # free again once the other process is gone


def test_an_api_key_over_http_warns_only_outside_a_private_network(caplog) -> None:
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        for url in ("http://qdrant:6333", "http://localhost:6333", "https://qdrant.example.com"):
            connect(url, "secret", check_compatibility=False).close()
        assert not [str(w.message) for w in caught if "insecure" in str(w.message)]
        assert not caplog.records
        connect("http://qdrant.example.com:6333", "secret", check_compatibility=False).close()
    [record] = caplog.records
    assert "qdrant.example.com over plain http: use https" in record.getMessage()


def test_opening_a_server_store_keeps_the_applications_own_qdrant_client_warnings() -> None:
    """The API-key-over-http warning is silenced for this library's own client only: the application's
    ``QdrantClient`` still warns, and no process-wide warnings filter is left behind."""
    from qdrant_client import QdrantClient

    from retrieval.settings import RetrievalSettings
    from retrieval.store import open_store

    filters = list(warnings.filters)
    settings = RetrievalSettings(qdrant_url="http://qdrant:6333", qdrant_api_key="k", collection="c", _env_file=None)
    open_store(settings).close()
    assert warnings.filters == filters
    with warnings.catch_warnings(record=True) as caught:
        QdrantClient(url="http://qdrant.example.com:6333", api_key="k", check_compatibility=False).close()
    assert [str(w.message) for w in caught] == ["Api key is used with an insecure connection."]
