"""RetrievalSettings as a Python user meets it: misspelt names, bad values, `~`, dumps, assignment."""

import logging
import os
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

import retrieval.settings
from retrieval import RetrievalSettings
from retrieval.errors import HybridRagError, InvalidArgumentError

PASSWORD = "hunter2-secret"


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch) -> Path:
    """An empty working directory (no .env), no HYBRID_RAG_* variables, nothing warned about yet."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.upper().startswith("HYBRID_RAG_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(retrieval.settings, "_warned_env", set())
    return tmp_path


def test_a_misspelt_keyword_is_an_error_naming_it_and_the_closest_setting(clean_env):
    with pytest.raises(InvalidArgumentError) as err:
        RetrievalSettings(colection="typo_target", k=3)
    assert str(err.value) == "invalid settings: unknown setting 'colection' (did you mean collection?)"


def test_unknown_hybrid_rag_variables_are_warned_about_once_naming_them(clean_env, monkeypatch, caplog):
    monkeypatch.setenv("HYBRID_RAG_RERANK_DEPT", "5")
    monkeypatch.setenv("HYBRID_RAG_X", "1")  # close to no setting: no hint (the shared prefix made it HYBRID_RAG_K)
    (clean_env / ".env").write_text(
        "# notes\nHYBRID_RAG_COLECTION=notes\nHYBRID_RAG_HISTORY_PATH=h.sqlite\nOTHER_APP=1\nnot a setting\n"
    )
    monkeypatch.setenv("HYBRID_RAG_ASSETS_DIR", "assets")  # read outside RetrievalSettings: valid
    with caplog.at_level(logging.WARNING):
        assert RetrievalSettings().collection == "sample"
        RetrievalSettings()  # once per name and process
    assert [r.getMessage() for r in caplog.records] == [  # where each is; python-dotenv's own line (no file) is not
        ".env:5: not a KEY=value line: ignored",
        "unknown setting HYBRID_RAG_COLECTION (.env:2) is ignored (did you mean HYBRID_RAG_COLLECTION?)",
        "unknown setting HYBRID_RAG_RERANK_DEPT (environment) is ignored (did you mean HYBRID_RAG_RERANK_DEPTH?)",
        "unknown setting HYBRID_RAG_X (environment) is ignored",
    ]


def test_a_bad_value_names_its_variable_value_and_where_it_was_set(clean_env, monkeypatch):
    """Read from a variable, a bad value is named as the variable with its value and source (the environment, or
    the env file's line); given as a keyword, as the field. A secret's value is not repeated."""
    (clean_env / ".env").write_text("# tuned\nHYBRID_RAG_RERANK=maybe\nHYBRID_RAG_K=5\nHYBRID_RAG_K=abc\n")
    monkeypatch.setenv("HYBRID_RAG_RRF_K", "1.5")
    monkeypatch.setenv("HYBRID_RAG_QDRANT_API_KEY", "sec\x01ret")
    with pytest.raises(InvalidArgumentError) as err:
        RetrievalSettings(prefetch_k="many")
    assert str(err.value) == (
        "invalid settings: HYBRID_RAG_QDRANT_API_KEY (environment): a control character inside it (the key is not "
        "shown): give the key alone, on one line; HYBRID_RAG_RRF_K='1.5' (environment): must be an integer; "
        "prefetch_k: must be an integer; HYBRID_RAG_K='abc' (.env:4): must be an integer; "
        "HYBRID_RAG_RERANK='maybe' (.env:2): must be true or false (also 1/0, yes/no, on/off)"
    )


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: RetrievalSettings(rrf_k=0), "invalid settings: rrf_k: Input should be greater than or equal to 1"),
        (lambda: RetrievalSettings(dense_device="tpu"), "invalid settings: dense_device: unknown device 'tpu'"),
    ],
)
def test_a_bad_value_is_a_one_line_hybrid_rag_error(clean_env, make, error):
    with pytest.raises(HybridRagError) as err:
        make()
    assert str(err.value).startswith(error) and "\n" not in str(err.value)


def test_a_bad_value_in_the_environment_is_a_hybrid_rag_error(clean_env, monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_FUSION", "bogus")
    with pytest.raises(
        InvalidArgumentError,
        match="^invalid settings: HYBRID_RAG_FUSION='bogus' \\(environment\\): Input should be 'rrf'",
    ):
        RetrievalSettings()


def test_a_check_of_two_settings_names_both_with_their_values_and_sources(clean_env, monkeypatch):
    """It said ``chunk_overlap must be smaller than chunk_tokens``, naming no variable, value nor where it was set."""
    (clean_env / ".env").write_text("# tuned\nHYBRID_RAG_CHUNK_OVERLAP=300\n")
    with pytest.raises(InvalidArgumentError) as err:
        RetrievalSettings()
    assert str(err.value) == (
        "invalid settings: HYBRID_RAG_CHUNK_OVERLAP=300 (.env:2) must be smaller than HYBRID_RAG_CHUNK_TOKENS=256 "
        "(default)"
    )
    with pytest.raises(InvalidArgumentError) as err:
        RetrievalSettings(chunk_tokens=100)  # a keyword is named as the field
    assert str(err.value).endswith("(.env:2) must be smaller than chunk_tokens=100")
    monkeypatch.setenv("HYBRID_RAG_CHUNK_TOKENS", "200")
    with pytest.raises(InvalidArgumentError) as err:
        RetrievalSettings()
    assert str(err.value).endswith("(.env:2) must be smaller than HYBRID_RAG_CHUNK_TOKENS=200 (environment)")


def test_a_value_copied_into_the_environment_from_env_is_named_as_its_line(clean_env, monkeypatch):
    """Dagster copies the working directory's .env into the environment of its processes (`dagster asset
    materialize`, `dagster dev`'s runs): a bad value there was named ``(environment)``."""
    (clean_env / ".env").write_text("# tuned\nHYBRID_RAG_K=abc\n")
    monkeypatch.setenv("HYBRID_RAG_K", "abc")
    with pytest.raises(InvalidArgumentError, match=re.escape("HYBRID_RAG_K='abc' (.env:2): must be an integer")):
        RetrievalSettings()
    monkeypatch.setenv("HYBRID_RAG_K", "xyz")  # not .env's value: the environment's own
    with pytest.raises(InvalidArgumentError, match=re.escape("HYBRID_RAG_K='xyz' (environment): must be")):
        RetrievalSettings()


def test_tilde_is_the_home_directory_in_path_settings(clean_env, monkeypatch):
    home = clean_env / "home"
    monkeypatch.setenv("HOME", str(home))
    (clean_env / ".env").write_text("HYBRID_RAG_QDRANT_PATH=~/rag/index\nHYBRID_RAG_CACHE_DIR=~/rag/cache\n")
    settings = RetrievalSettings(models_dir="~/rag/models")
    assert (settings.qdrant_path, settings.cache_dir) == (home / "rag/index", home / "rag/cache")
    assert settings.models_dir == home / "rag/models"
    settings.qdrant_path = Path("~/elsewhere")
    assert settings.qdrant_path == home / "elsewhere"


def test_relative_path_settings_are_made_absolute_when_the_settings_are_made(clean_env, monkeypatch):
    """Resolved once, against the working directory of that moment: a later ``os.chdir`` (a daemon, a notebook's
    ``%cd``) moves no index, cache, model or history."""
    from evals.history import EvalHistory

    (clean_env / "mymodel").mkdir()
    settings = RetrievalSettings(cache_dir="cache", models_dir="models", dense_model="mymodel", query_model="mymodel")
    local = RetrievalSettings(qdrant_url="file://local")
    history = EvalHistory("history/evals.sqlite")
    monkeypatch.chdir(clean_env.parent)
    assert settings.qdrant_path == clean_env / "data/index"  # the default
    assert (settings.cache_dir, settings.models_dir) == (clean_env / "cache", clean_env / "models")
    assert settings.dense_model == settings.query_model == str(clean_env / "mymodel")
    assert local.qdrant_url == f"file://{clean_env / 'local'}"
    assert history.path == clean_env / "history/evals.sqlite"
    assert RetrievalSettings(qdrant_path="data/index").qdrant_path == clean_env.parent / "data/index"  # its own cwd
    settings.qdrant_path = Path("index")  # assignment too
    assert settings.qdrant_path == clean_env.parent / "index"
    # a model name that is no folder here is a hub name, left as written (the bundled default under either name)
    for name in ("mymodel", "BAAI/bge-small-en-v1.5", "all-MiniLM-L6-v2"):
        assert RetrievalSettings(dense_model=name).dense_model == name


def test_tilde_is_the_home_directory_in_a_local_mode_url(clean_env, monkeypatch):
    """``file://<dir>`` names local mode's folder: ``~`` in it is the home directory, as in QDRANT_PATH, never a
    folder named ``~`` in the working directory."""
    from retrieval.store.server import connect

    home = clean_env / "home"
    monkeypatch.setenv("HOME", str(home))
    (clean_env / ".env").write_text("HYBRID_RAG_QDRANT_URL=file://~/rag/local\n")
    assert RetrievalSettings().qdrant_url == f"file://{home}/rag/local"
    settings = RetrievalSettings(qdrant_url="file://~/elsewhere")
    assert settings.qdrant_url == f"file://{home}/elsewhere"
    settings.qdrant_url = "file://~/third"
    assert settings.qdrant_url == f"file://{home}/third"
    assert RetrievalSettings(qdrant_url="file://idx").qdrant_url == f"file://{clean_env / 'idx'}"  # the working dir's
    connect("file://~/opened").close()  # a URL given to the store directly
    assert (home / "opened").is_dir() and not (clean_env / "~").exists()


def test_a_qdrant_url_loses_surrounding_whitespace_and_the_client_parses_every_url_accepted(clean_env, monkeypatch):
    """A secret written with ``echo`` ends in a newline: dropped, as surrounding spaces are (whitespace alone stays an
    error: tests/test_server_path.py)."""
    from retrieval.store.server import connect

    monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", "http://qdrant:6333\n")
    assert RetrievalSettings().qdrant_url == "http://qdrant:6333"
    # every server URL the settings accept is one qdrant-client can parse (no request is made)
    for url in (
        " https://qdrant.example.com:6333/prefix\n",
        f"http://user:{PASSWORD}@qdrant:6333",
        "http://user:p w@qdrant:6333",  # a space in the password: sent as basic auth, not parsed by the client
        "http://[::1]:6333",
        "http://bücher.example",
    ):
        settings = RetrievalSettings(qdrant_url=url)
        assert settings.qdrant_url == url.strip()
        connect(settings.qdrant_url, check_compatibility=False).close()


def test_the_api_key_loses_surrounding_whitespace_and_one_with_a_control_character_is_refused(clean_env, monkeypatch):
    """A key written with ``echo`` or read from a file ends in a newline: dropped, as the URL's is (httpx refused it
    mid-request, quoting the key in the error); whitespace alone is no key. A control or non-ASCII character inside
    is the one-line settings error, which never shows the key."""
    key = "hr-key-0123456789"
    monkeypatch.setenv("HYBRID_RAG_QDRANT_API_KEY", f"{key}\n")
    assert RetrievalSettings().qdrant_api_key.get_secret_value() == key
    for written in (f"  {key}\t\r\n", SecretStr(f" {key}\n")):
        assert RetrievalSettings(qdrant_api_key=written).qdrant_api_key.get_secret_value() == key
    settings = RetrievalSettings()
    settings.qdrant_api_key = f"{key}\n"  # assignment is checked as construction is
    assert settings.qdrant_api_key.get_secret_value() == key
    assert RetrievalSettings(qdrant_api_key=" \n").qdrant_api_key is None  # as an empty one: no key sent
    for bad, why in (
        (f"{key[:5]}\n{key[5:]}", "a control character inside it"),
        (f"{key}\x00", "a control character inside it"),
        (f"{key[:5]}\t{key[5:]}", "a control character inside it"),
        (f"{key}é", "a non-ASCII character inside it"),
    ):
        with pytest.raises(InvalidArgumentError) as err:
            RetrievalSettings(qdrant_api_key=bad)
        assert str(err.value).startswith(f"invalid settings: qdrant_api_key: {why} (the key is not shown)")
        assert key[:5] not in str(err.value) and "\n" not in str(err.value)


def test_dumps_mask_the_url_password_and_copies_keep_it(clean_env):
    settings = RetrievalSettings(qdrant_url=f"https://admin:{PASSWORD}@qdrant.example.com:6333")
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert PASSWORD not in shown and "admin:***@qdrant.example.com" in shown
    assert PASSWORD in settings.model_copy().qdrant_url


def test_an_assignment_is_checked_as_the_constructor_checks(clean_env):
    settings = RetrievalSettings(collection="notes")
    for name, value, error in [
        ("rrf_k", 0, "rrf_k: Input should be greater than or equal to 1"),
        ("dense_weight", -1.0, "dense_weight: Input should be greater than 0"),
        ("fusion", "bogus", "fusion: Input should be 'rrf', 'dbsf' or 'zscore'"),
        ("chunk_overlap", 999, "chunk_overlap=999 must be smaller than chunk_tokens=256"),
        ("collection", "../up", "collection: invalid collection name '../up'"),
        ("colection", "x", "unknown setting 'colection' (did you mean collection?)"),
    ]:
        before = getattr(settings, name, None)
        with pytest.raises(InvalidArgumentError, match="^" + re.escape(f"invalid settings: {error}")):
            setattr(settings, name, value)
        assert getattr(settings, name, None) == before
    settings.rrf_k = 60
    assert settings.rrf_k == 60


def test_tilde_is_the_home_directory_in_paths_read_outside_the_settings(clean_env, monkeypatch):
    import dagster as dg

    from evals.history import EvalHistory
    from orchestration.main_job import default_dagster_home
    from orchestration.parquet_io import ParquetIOManager

    home = clean_env / "home"
    monkeypatch.setenv("HOME", str(home))
    assert EvalHistory("~/rag/evals.sqlite").path == home / "rag/evals.sqlite"
    monkeypatch.setenv("DAGSTER_HOME", "~/dagster")
    assert default_dagster_home() == home / "dagster"
    assert ParquetIOManager(base_dir="~/assets")._path(dg.AssetKey("chunks"), "p") == home / "assets/chunks/p.parquet"
    assert not (clean_env / "~").exists()
