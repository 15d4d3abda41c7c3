"""The code location loads and validates; corpora file, docker-compose.yml and the Docker dagster.yaml are sound."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
import yaml

from assets import ALL_ASSETS
from assets.corpora import CorpusConfigError, CorpusUnavailableError, load_corpora
from assets.partitions import CORPORA
from assets.resources import CorporaResource, RetrievalResource
from orchestration.definitions import defs
from orchestration.parquet_io import ParquetIOManager
from retrieval import BadInputPolicy, RetrievalSettings, SourceFormat
from tests.test_deployment import assert_ticks_are_purged

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_validate() -> None:
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {"reindex", "evaluate", "adapt"} <= set(repo.job_names)
    assert {s.name for s in repo.schedule_defs} == {"nightly_reindex", "daily_evaluation"}
    assert "dropbox_sensor" in {s.name for s in repo.sensor_defs}
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == {
        "raw_documents",
        "chunks",
        "dense_vectors",
        "sparse_vectors",
        "qdrant_index",
        "retrieval_evaluation",
        "published_index",
        "query_encoder",
    }
    checks = {k.name for k in repo.asset_graph.asset_check_keys}
    gates = {"index_point_count", "ndcg_not_dropped"}  # block publishing; the quality warnings never do
    assert checks == gates | {"hybrid_not_below_channels", "reranking_does_not_hurt"}
    for key in repo.asset_graph.asset_check_keys:  # every check is evaluated per corpus partition
        spec = repo.asset_graph.get_check_spec(key)
        assert spec.blocking == (key.name in gates)
        assert spec.partitions_def == repo.asset_graph.get(key.asset_key).partitions_def


def dagster_validate(cwd: Path, **env_vars: str) -> subprocess.CompletedProcess:
    """``dagster definitions validate -m orchestration.definitions`` as a user runs it (no DAGSTER_HOME)."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | env_vars
    dagster = Path(sys.executable).with_name("dagster")
    return subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "orchestration.definitions", "-d", str(ROOT)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_dagster_cli_validates_the_module(tmp_path: Path) -> None:
    proc = dagster_validate(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


WATCHED_ODD_NAMES = (  # names the corpora file accepts that Dagster refuses as they are ('-', '.')
    "corpora:\n  my-notes: {source: my-notes, format: dir, watch: true}\n"
    "  v1.2: {source: v1.2, format: dir, watch: true}\n"
)


def test_watched_corpora_with_dashes_and_dots_get_valid_sensor_names(tmp_path: Path) -> None:
    from orchestration.jobs import reindex_job
    from orchestration.sensors import build_drop_folder_sensor

    file = tmp_path / "corpora.yaml"
    file.write_text(WATCHED_ODD_NAMES)
    corpora = load_corpora(file)
    sensors = [build_drop_folder_sensor(c.source, c.name) for c in corpora.watched()]
    assert [s.name for s in sensors] == ["my_notes_sensor", "v1_2_sensor"]
    location = dg.Definitions(assets=ALL_ASSETS, jobs=[reindex_job], sensors=sensors, resources=defs.resources)
    dg.Definitions.validate_loadable(location)


@pytest.mark.slow
def test_dagster_cli_validates_a_code_location_watching_dashed_and_dotted_corpora(tmp_path: Path) -> None:
    (tmp_path / "corpora.yaml").write_text(WATCHED_ODD_NAMES)
    proc = dagster_validate(tmp_path, HYBRID_RAG_CORPORA_FILE=str(tmp_path / "corpora.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workspace_loads_the_module() -> None:
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    [entry] = workspace["load_from"]
    assert entry["python_module"]["module_name"] == "orchestration.definitions"


def test_shipped_corpora_file() -> None:
    corpora = load_corpora(ROOT / "corpora.yaml")
    assert corpora.default == "sample" and {"sample", "scifact", "dropbox"} <= set(corpora.names)
    sample = corpora.get("sample")
    assert sample.require_source() == ROOT / "evals" / "sample" and sample.eval_collection().splits()
    assert corpora.get("scifact").source == (ROOT.parent / "shared" / "datasets" / "scifact").resolve()
    dropbox = corpora.get("dropbox")
    assert dropbox.format.value == "dir" and dropbox.watch and not dropbox.has_qrels
    assert [c.name for c in corpora.watched()] == ["dropbox"]


def test_corpora_file_env_and_missing_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "conf" / "corpora.yaml"
    file.parent.mkdir()
    file.write_text("corpora:\n  gone:\n    source: ../nowhere\n    format: jsonl\n    qrels: ../nowhere\n")
    monkeypatch.setenv("HYBRID_RAG_CORPORA_FILE", str(file))
    corpora = load_corpora()
    gone = corpora.get("gone")
    assert gone.source == tmp_path / "nowhere" and gone.collection == "gone" and gone.split == "test"
    with pytest.raises(CorpusUnavailableError, match="does not exist"):
        gone.require_source()
    with pytest.raises(CorpusUnavailableError):
        gone.eval_collection()
    with pytest.raises(KeyError, match="configured in .*: gone"):
        corpora.get("sample")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("corpora: {}\n", "non-empty mapping"),
        ("corpora:\n  a: {source: x, colour: red}\n", "unknown keys"),
        ("corpora:\n  a: {format: beir}\n", "'source' is required"),
        ("corpora:\n  a: {source: x, format: pdf}\n", "pdf"),
        ("corpora:\n  'a,b': {source: x}\n", "invalid corpus name: a corpus name is 1 to 63 characters: ASCII"),
        ("corpora:\n  équipe: {source: x}\n", "ASCII letters and digits (A-Z, a-z, 0-9), '_', '.' and '-'"),
        ("corpora:\n  a: {source: x, collection: notes__v2}\n", "it ends like a stored version"),
        ("corpora:\n  a__v2: {source: x}\n", "(the corpus name: set 'collection' to give it another)"),
        ("corpora:\n  a: {source: x, collection: 'a/b'}\n", "invalid collection name 'a/b': it contains '/'"),
        ("corpora:\n  a: {source: x, collection: 2024}\n", "'collection' must be a name (a string), got 2024"),
        ("default: b\ncorpora:\n  a: {source: x}\n", "default corpus 'b'"),
        ("corpora: [\n", "invalid YAML"),
        (  # each run of one would prune the other's documents
            "corpora:\n  notes: {source: n, collection: kb}\n  docs: {source: d, collection: kb}\n",
            "corpora 'notes' and 'docs' have the same collection 'kb'",
        ),
        ("corpora:\n  kb: {source: n}\n  docs: {source: d, collection: kb}\n", "corpora 'kb' and 'docs'"),
        ("corpora:\n  my-notes: {source: a}\n  my_notes: {source: b}\n", "same Dagster name 'my_notes'"),
    ],
)
def test_malformed_corpora_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "corpora.yaml"
    file.write_text(text)
    with pytest.raises(CorpusConfigError, match=re.escape(message)) as raised:
        corpora = load_corpora(file)  # a whole-file error
        for name in corpora.broken:  # an entry's own: only that corpus is refused
            corpora.get(name)
    assert str(file) in str(raised.value)


def test_a_corpus_configured_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """A copied entry not yet renamed: YAML would keep the last one, dropping the first corpus without a word,
    and a copy that keeps its collection would get around the shared-collection refusal."""
    file = tmp_path / "corpora.yaml"
    file.write_text(
        "corpora:\n"
        "  handbook:\n    source: teamA\n    format: dir\n"
        "  faq: {source: a.jsonl}\n"
        "  handbook:   # team B's copy\n    source: teamB\n    format: dir\n"
    )
    with pytest.raises(CorpusConfigError) as raised:
        load_corpora(file)
    assert str(raised.value) == (
        f"{file}:6: 'handbook' is given twice in one mapping (first at line 2; YAML would keep only the last): "
        "rename or remove one"
    )
    file.write_text("corpora:\n  a:\n    source: x\n    source: y\n")  # inside an entry too
    with pytest.raises(CorpusConfigError, match=re.escape(f"{file}:4: 'source' is given twice")):
        load_corpora(file)
    file.write_text("corpora:\n  '10': {source: x}\n  a: {source: y, on: 1,\n    yes: 2}\n")  # one key: True
    with pytest.raises(CorpusConfigError, match=re.escape(f"{file}:4: 'yes' is given twice")) as raised:
        load_corpora(file)
    assert "(first at line 3 as 'on', YAML reads both as True;" in str(raised.value)


@pytest.mark.parametrize(("key", "read"), [("on", "True"), ("no", "False"), ("10", "10"), ("0x0a", "10")])
def test_a_corpus_name_yaml_reads_as_no_string_is_refused(tmp_path: Path, key: str, read: str) -> None:
    """``no:`` (Norway) would become corpus 'False', ``on:`` and ``yes:`` one corpus 'True'."""
    file = tmp_path / "corpora.yaml"
    file.write_text(f"corpora:\n  a: {{source: x}}\n  {key}: {{source: y}}\n")
    with pytest.raises(CorpusConfigError) as raised:
        load_corpora(file)
    assert str(raised.value) == (
        f"{file}:3: corpus name {key!r} is read by YAML as {read}, not a name: quote it ('{key}':)"
    )
    file.write_text(f"corpora:\n  a: {{source: x}}\n  '{key}': {{source: y}}\n")
    assert set(load_corpora(file).corpora) == {"a", key}


def test_unknown_top_level_keys_are_refused_and_x_keys_hold_anchors(tmp_path: Path) -> None:
    file = tmp_path / "corpora.yaml"
    file.write_text("defualt: faq\ncorpora:\n  handbook: {source: b}\n  faq: {source: a.jsonl}\n")
    with pytest.raises(CorpusConfigError) as raised:
        load_corpora(file)
    assert str(raised.value).startswith(f"{file}:1: unknown top-level key 'defualt' (allowed: ['corpora', 'default']")
    file.write_text(  # per-team defaults: merged keys may be overridden, that is not a duplicate
        "x-team: &team {format: dir, on_bad_input: skip, watch: true}\n"
        "corpora:\n"
        "  red: {<<: *team, source: red}\n"
        "  blue: {<<: *team, source: blue.jsonl, format: jsonl}\n"
    )
    corpora = load_corpora(file)
    red, blue = corpora.get("red"), corpora.get("blue")
    assert (red.format, blue.format) == (SourceFormat.DIR, SourceFormat.JSONL)
    assert red.on_bad_input == blue.on_bad_input == BadInputPolicy.SKIP and red.watch and blue.watch


@pytest.mark.parametrize(
    "name",
    ["Équipe notes", "notes", "a.b-c", "notes__v2", "x.current.json", "a/b", "a:b", "..", "n" * 231, "tab\there"],
)
def test_the_corpora_file_takes_the_collection_names_the_settings_take(tmp_path: Path, name: str) -> None:
    """One rule: a name the CLI and the settings accept is a valid ``collection:``, and one they refuse is
    refused when the file is loaded (not by every run at its chunks step), with the same reason."""
    file = tmp_path / "corpora.yaml"
    file.write_text(f"corpora:\n  kb: {{source: x, collection: {json.dumps(name)}}}\n")
    try:
        RetrievalSettings(collection=name)
    except ValueError as refused:
        with pytest.raises(CorpusConfigError) as raised:
            load_corpora(file).get("kb")  # an entry's own error: only that corpus is refused
        reason = str(refused).partition("invalid collection name")[2].splitlines()[0]
        assert f"{file}, line 2: corpus 'kb': invalid collection name{reason}" in str(raised.value)
    else:
        assert load_corpora(file).get("kb").collection == name


ONE_BAD_ENTRY = (  # another team's entry with a quoted boolean; the other corpora must still run
    "corpora:\n  sample:\n    source: {sample}\n    format: beir\n  dropbox:\n    source: {tmp}\n"
    '    format: dir\n    watch: "yes"\n  scifact:\n    source: {tmp}\n    format: dir\n    watch: true\n'
)


def test_a_bad_entry_refuses_its_corpus_only_naming_file_line_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "corpora.yaml"
    file.write_text(ONE_BAD_ENTRY.format(sample=ROOT / "evals" / "sample", tmp=tmp_path))
    with caplog.at_level("WARNING", logger="assets.corpora"):
        corpora = load_corpora(file)
    reason = f"{file}, line 5: corpus 'dropbox': 'watch' must be true or false (unquoted), got 'yes'"
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [reason]  # the CLI and `dagster dev` show it
    assert corpora.names == ["sample", "scifact", "dropbox"] and corpora.default == "sample"  # still a partition
    assert corpora.get("sample").source == ROOT / "evals" / "sample"
    assert [c.name for c in corpora.watched()] == ["scifact"]  # the watched corpora keep their sensors
    with pytest.raises(CorpusConfigError) as refused:
        corpora.get("dropbox")
    assert str(refused.value) == reason
    resources = defs.resources | {
        "corpora": CorporaResource(path=str(file)),
        "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
    }

    def raw_documents(partition: str) -> dg.ExecuteInProcessResult:
        from assets import raw_documents

        with dg.DagsterInstance.ephemeral() as instance:
            return dg.materialize(
                [raw_documents], partition_key=partition, resources=resources, instance=instance, raise_on_error=False
            )

    assert raw_documents("sample").success  # the other corpora run
    failed = raw_documents("dropbox")
    [failure] = [e.step_failure_data for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert not failed.success and failure.user_failure_data.description == reason  # the bad one's runs say why


def test_a_yaml_syntax_error_stops_the_file_leading_with_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "corpora.yaml"
    file.write_text("corpora:\n  sample:\n    source: x\n   format: beir\n")  # format indented one space less
    with pytest.raises(CorpusConfigError) as refused:
        load_corpora(file)
    message = str(refused.value)
    assert message.startswith(f"{file}, line 4: invalid YAML: ") and "\n" not in message, message


@pytest.mark.slow
def test_the_code_location_loads_with_a_bad_entry(tmp_path: Path) -> None:
    """Schedules, sensors and orphaned_runs_sensor keep running for the other corpora."""
    file = tmp_path / "corpora.yaml"
    file.write_text(ONE_BAD_ENTRY.format(sample=ROOT / "evals" / "sample", tmp=tmp_path))
    proc = dagster_validate(tmp_path, HYBRID_RAG_CORPORA_FILE=str(file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "line 5: corpus 'dropbox': 'watch' must be true or false" in proc.stderr


def test_retrieval_resource_reads_env_vars_without_exposing_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", "http://qdrant.example:6333")
    monkeypatch.setenv("HYBRID_RAG_QDRANT_API_KEY", "s3cret-key")
    configured = RetrievalResource.from_env()
    assert isinstance(configured.qdrant_api_key, dg.EnvVar)  # the UI shows the variable's name only
    resource = configured.process_config_and_initialize()  # what a run does
    assert resource.settings("c").qdrant_api_key.get_secret_value() == "s3cret-key"
    assert "s3cret" not in repr(resource.settings("c")) and "s3cret" not in resource.settings("c").model_dump_json()


def test_retrieval_resource_has_a_field_per_setting() -> None:
    assert set(RetrievalResource.model_fields) == set(RetrievalSettings.model_fields)
    resource = RetrievalResource(chunk_tokens=128, rerank=False, fusion="dbsf", qdrant_path="/tmp/elsewhere")
    settings = resource.settings("c")
    assert (settings.chunk_tokens, settings.rerank, settings.fusion.value) == (128, False, "dbsf")
    assert str(settings.qdrant_path) == "/tmp/elsewhere" and settings.collection == "c"
    assert RetrievalResource().settings().chunk_tokens == RetrievalSettings().chunk_tokens  # unset: the settings'


def test_corpora_resource_reads_the_partitions_file(tmp_path: Path) -> None:
    assert CorporaResource().load() is CORPORA  # the file the partitions were read from, not re-resolved
    subset = tmp_path / "corpora.yaml"
    subset.write_text("corpora:\n  dropbox: {source: somewhere, format: dir}\n")
    assert CorporaResource(path=str(subset)).get("dropbox").source == (tmp_path / "somewhere").resolve()
    unknown = tmp_path / "other.yaml"
    unknown.write_text("corpora:\n  news: {source: somewhere}\n")
    with pytest.raises(CorpusConfigError, match=r"corpora \['news'\] are not partitions of the asset graph"):
        CorporaResource(path=str(unknown)).get("news")


def test_docker_compose_services_and_env() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"qdrant", "postgres", "dagster_webserver", "dagster_daemon"} <= set(services)
    assert services["qdrant"]["image"].startswith("qdrant/qdrant")
    assert services["postgres"]["image"].startswith("postgres")
    assert any("/qdrant/storage" in v for v in services["qdrant"]["volumes"])
    for name in ("dagster_webserver", "dagster_daemon"):
        service = services[name]
        assert service["build"] == "."
        env = service["environment"]
        assert env["HYBRID_RAG_QDRANT_URL"] == "http://qdrant:6333"
        assert {"HYBRID_RAG_QDRANT_API_KEY", "DAGSTER_POSTGRES_HOST", "DAGSTER_POSTGRES_PASSWORD"} <= set(env)
    # the Dagster services start once Qdrant answers /readyz, probed with what its image has (bash, not curl/wget)
    probe = " ".join(services["qdrant"]["healthcheck"]["test"])
    assert "/readyz" in probe and "bash" in probe and not re.search(r"\b(curl|wget)\b", probe)
    for name in ("dagster_webserver", "dagster_daemon"):
        assert services[name]["depends_on"]["qdrant"] == {"condition": "service_healthy"}
    assert "dagster-daemon" in services["dagster_daemon"]["command"]
    assert "dagster-webserver" in services["dagster_webserver"]["command"]
    fields = set(RetrievalSettings.model_fields)
    used = set(re.findall(r"\bHYBRID_RAG_([A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
    assert used and {name.lower() for name in used} <= fields


def test_docker_dagster_yaml_uses_postgres_from_compose_env() -> None:
    config = yaml.safe_load((ROOT / "docker" / "dagster.yaml").read_text())
    db = config["storage"]["postgres"]["postgres_db"]
    env_names = {v["env"] for v in db.values() if isinstance(v, dict)}
    compose_env = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["dagster_daemon"]["environment"]
    assert env_names and env_names <= set(compose_env)
    assert "docker/dagster.yaml" in (ROOT / "Dockerfile").read_text()
    assert not (ROOT / "dagster.yaml").exists()  # would be picked up by `dagster dev` without PostgreSQL


def test_project_dagster_home_turns_telemetry_off_and_runs_one_job_per_corpus(tmp_path: Path) -> None:
    from orchestration.main_job import INSTANCE_YAML

    assert INSTANCE_YAML.is_file() and "data" not in INSTANCE_YAML.relative_to(ROOT).parts  # survives `rm -rf data`
    config = yaml.safe_load(INSTANCE_YAML.read_text())
    assert config["telemetry"] == {"enabled": False}
    [limit] = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert limit["key"] == "dagster/partition" and limit["limit"] == 1
    assert "hybrid-rag ui" in (ROOT / "Makefile").read_text()  # prepares DAGSTER_HOME (tests/test_installed_package.py)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(INSTANCE_YAML, home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert_ticks_are_purged(instance)  # schedule and sensor ticks do not pile up in DAGSTER_HOME


def test_docker_run_logs_are_on_a_volume_shared_by_the_daemon_and_the_webserver(tmp_path: Path) -> None:
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

    (tmp_path / "dagster.yaml").write_text((ROOT / "docker" / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # the instance schema, as the containers load it
    logs = config["compute_logs"]
    assert validate_config(LocalComputeLogManager.config_type(), logs["config"]).success
    home = re.search(r"DAGSTER_HOME=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)
    assert logs["config"]["base_dir"].startswith(home + "/")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = [
        {v.split(":")[1]: v.split(":")[0] for v in compose["services"][name]["volumes"]}
        for name in ("dagster_daemon", "dagster_webserver")
    ]
    volume = mounts[0].get(logs["config"]["base_dir"])  # runs write their logs where the webserver reads them
    assert volume in compose["volumes"] and all(m.get(logs["config"]["base_dir"]) == volume for m in mounts)


def test_docker_image_installs_with_the_constraints_and_a_small_build_context() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    assert installs and all("-c constraints.txt" in line for line in installs)
    [torch] = [line for line in installs if line.split()[-1] == "torch"]  # the pinned CPU wheel, before the rest
    assert "https://download.pytorch.org/whl/cpu" in torch and installs[0] == torch
    assert dockerfile.index("COPY constraints.txt") < dockerfile.index(torch)
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()[:1] not in ("", "#")]
    assert {".git", ".venv", "data"} <= set(ignored)
    copied = [src for line in dockerfile.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]]
    for src in copied:  # every source the image needs exists and is in the build context
        assert any(ROOT.glob(src)), src
        assert not any(src == p or src.startswith(p.rstrip("/") + "/") for p in ignored), src


def test_the_assets_folder_is_resolved_once_when_the_resources_are_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative HYBRID_RAG_ASSETS_DIR means the folder under the directory the resources were built in, however
    the process changes directory afterwards (before the run, or between a table's write and its read)."""
    from orchestration.definitions import default_resources

    built_in, run_in, moved_to = (tmp_path / name for name in ("built", "run", "moved"))
    for folder in (built_in, run_in, moved_to):
        folder.mkdir()
    monkeypatch.setenv("HYBRID_RAG_ASSETS_DIR", "assets")
    monkeypatch.chdir(built_in)
    io_manager = default_resources()["io_manager"]
    monkeypatch.chdir(run_in)

    @dg.asset
    def table() -> pa.Table:
        os.chdir(moved_to)  # a library changing directory mid-run
        return pa.table({"x": [1, 2]})

    @dg.asset
    def total(table: pa.Table) -> pa.Table:
        return pa.table({"total": [sum(table["x"].to_pylist())]})

    result = dg.materialize([table, total], resources={"io_manager": io_manager})
    assert result.success
    assert {p.relative_to(built_in).as_posix() for p in built_in.rglob("*.parquet")} == {
        "assets/table/__unpartitioned__.parquet",
        "assets/total/__unpartitioned__.parquet",
    }
    assert not any(p.name.endswith(".parquet") for folder in (run_in, moved_to) for p in folder.rglob("*"))


def test_an_assets_folder_that_is_a_file_fails_the_run_naming_it_and_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration.definitions import default_resources

    taken = tmp_path / "assets"
    taken.write_text("not a folder")
    monkeypatch.setenv("HYBRID_RAG_ASSETS_DIR", str(taken))

    @dg.asset
    def table() -> pa.Table:
        return pa.table({"x": [1]})

    with pytest.raises(Exception) as failed:
        dg.materialize([table], resources={"io_manager": default_resources()["io_manager"]})
    message = f"{taken}: the assets folder (io_manager base_dir, HYBRID_RAG_ASSETS_DIR) is not usable: a file, not a"
    assert message in str(failed.value) or message in str(failed.value.__cause__)
    assert taken.read_text() == "not a folder"

    from orchestration.main_job import MainJobError, run_main_job  # hybrid-rag run's one line says it too

    resources = default_resources(
        retrieval=RetrievalResource(qdrant_path=str(tmp_path / "index"), cache_dir=str(tmp_path / "cache"))
    )
    with pytest.raises(MainJobError, match=re.escape(f"failed: resources: NotADirectoryError: {message}")):
        run_main_job("sample", dagster_home=tmp_path / "dagster_home", resources=resources)
    assert taken.read_text() == "not a folder"
