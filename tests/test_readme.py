"""The README's Python snippets run as written and print hits (and an evaluation), also as a Jupyter notebook; it
names every setting."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


# What the second snippet (LlamaIndex, Haystack) takes from its surroundings: the first snippet's `retriever`, the
# imports it leaves out and an LLM (LlamaIndex's MockLLM: no model, no network).
FRAMEWORKS = """
from haystack import Pipeline
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine

my_llm = MockLLM()
"""
CHECKS = """
print("LI", len(nodes), type(engine).__name__)
print("HS", *[d.meta["doc_id"] for d in docs], *pipe.graph.nodes)
print("EV", report.n_queries, report.variants["hybrid"].metrics["ndcg@10"])
"""


@pytest.mark.slow
def test_readme_python_snippets_print_hits(tmp_path):
    """The Python blocks run as written, in order (the later ones use the first one's stack and retriever)."""
    pytest.importorskip("llama_index.core")
    pytest.importorskip("haystack")
    first, second, evaluation = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_RAG_")}
    env |= {"HYBRID_RAG_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(README.parent)}
    result = subprocess.run(
        [sys.executable, "-c", first + FRAMEWORKS + second + evaluation + CHECKS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines and lines[0].startswith("qdrant 0 "), result.stdout  # the filter keeps the 2024 document
    assert not any(line.startswith("bm25") for line in lines)
    # no document has topic "science"; the Haystack filter (year >= 2020) keeps the 2024 one; the pipeline loaded
    assert lines[-3:-1] == ["LI 0 RetrieverQueryEngine", "HS qdrant retriever"], result.stdout
    assert lines[-1] == "EV 1 1.0", result.stdout  # the dicts' one query finds its one relevant document first


@pytest.mark.slow
def test_readme_python_snippets_as_a_notebook(tmp_path, monkeypatch):
    """The snippets as cells of a notebook run in a real Jupyter kernel (an event loop runs there): the async APIs
    awaited at the top level, a cell run again (its stack shares the loaded model), and what the cells show: an
    evaluation report and hits as tables, the adapters by what they search, no warning (tqdm's IProgress one
    neither: no ipywidgets)."""
    for module in ("llama_index.core", "haystack", "nbclient", "nbformat", "ipykernel"):
        pytest.importorskip(module)
    import nbformat
    from nbclient import NotebookClient

    first, second, evaluation = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    awaited = """
lc_docs, batched = await lc.ainvoke("hybrid fusion"), await lc.abatch(["hybrid fusion", "BM25"])
nodes, hits = await li.aretrieve("hybrid fusion"), await retriever.asearch("hybrid fusion")
print("ASYNC", len(lc_docs), len(batched), len(nodes), len((await hs.run_async("BM25"))["documents"]), len(hits))
"""
    again = "previous = stack\n" + first + "print('AGAIN', len(hits), stack.dense is previous.dense)"
    cells = [first, FRAMEWORKS + second, evaluation + "report", awaited, "hs", again, "retriever.search('BM25')"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell) for cell in cells])
    for name in [n for n in os.environ if n.startswith("HYBRID_RAG_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(README.parent))
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on errors

    def shown(cell: int, kind: str) -> str:
        outputs = notebook.cells[cell].outputs
        return "".join(
            o.get("text", "") if kind in ("stdout", "stderr") else o.get("data", {}).get(kind, "")
            for o in outputs
            if o.get("name", kind) == kind
        )

    table = shown(2, "text/html")
    assert table.startswith("<table><caption>notes (test): 1 query, version 1</caption>") and "nDCG@10" in table
    assert "<b>1.0000</b>" in table and "... 23 more" in shown(2, "text/plain")  # a few of the settings
    assert shown(3, "stdout") == "ASYNC 2 2 0 2 2\n"  # both documents (none of topic "science" for LlamaIndex)
    assert shown(4, "text/plain").startswith("HaystackRetriever(retriever=HybridRetriever(collection='notes', at=")
    assert "top_k=5" in shown(4, "text/plain")
    assert "AGAIN 2 True" in shown(5, "stdout")
    assert shown(6, "text/html").startswith("<table><caption>2 hits</caption><thead><tr><th>rank</th>")
    assert shown(6, "text/plain").startswith("[Hit(doc_id='bm25', ")
    stderr = "".join(shown(i, "stderr") for i in range(len(cells)))
    assert [line for line in stderr.splitlines() if "Warning" in line] == [] and "IProgress" not in stderr, stderr


def test_readme_names_every_setting():
    """Each RetrievalSettings field is documented (as its HYBRID_RAG_* name without the prefix)."""
    from retrieval import RetrievalSettings

    text = README.read_text()
    missing = [f for f in RetrievalSettings.model_fields if not re.search(rf"`(HYBRID_RAG_)?{f.upper()}`", text)]
    assert not missing, f"settings README does not name: {missing}"


def test_readme_command_synopsis_lists_every_option():
    """Each CLI command has a synopsis line in README's Command line block naming all its options, and no other. The
    CLI module's docstring named a few commands as if they were all: it names every one, or points to --help."""
    import typer

    from orchestration import cli
    from orchestration.cli import app

    block = README.read_text().split("### Command line\n\n```bash\n", 1)[1].split("```", 1)[0]
    entries: dict[str, str] = {}
    for entry in re.split(r"\n(?=hybrid-rag )", block.replace("\\\n", " ")):
        words = entry.split()
        name = " ".join(words[1:3]) if words[1:3] == ["cache", "prune"] else words[1]
        entries[name] = entries.get(name, "") + " " + entry

    def commands(group, prefix=""):
        for name, command in group.commands.items():
            yield prefix + name, command
            if hasattr(command, "commands"):
                yield from commands(command, prefix + name + " ")

    names = [name for name, _ in commands(typer.main.get_command(app)) if " " not in name]
    doc = cli.__doc__ or ""
    assert "hybrid-rag --help" in doc or all(f"``{name}``" in doc for name in names), doc
    for name, command in commands(typer.main.get_command(app)):
        if name == "ui":  # its arguments are dagster dev's
            continue
        assert name in entries, f"README has no synopsis of hybrid-rag {name}"
        listed = set(re.findall(r"--[a-z][a-z-]*", entries[name]))
        options = {o for p in command.params for o in p.opts if o.startswith("--") and o != "--help"}
        assert options - listed == set(), f"hybrid-rag {name}: options README does not list"
        negations = {o for p in command.params for o in p.secondary_opts}
        assert listed - options - negations == set(), f"hybrid-rag {name}: README lists options it lacks"


def test_benchmark_commands_name_modules_and_options_that_exist(capsys):
    """Every ``python -m benchmarks.X [--option ...]`` in README.md and benchmarks/README.md names a benchmark
    module, and each option it shows is one that module's command line accepts."""
    import importlib

    commands = re.findall(
        r"python -m benchmarks\.(\w+)((?: \[?--[\w-]+[^`\n]*)?)",
        README.read_text() + (README.parent / "benchmarks" / "README.md").read_text(),
    )
    assert len({module for module, _ in commands}) >= 20
    for module, options in commands:
        with pytest.raises(SystemExit):
            importlib.import_module(f"benchmarks.{module}").main(["--help"])
        known = set(re.findall(r"--[\w-]+", capsys.readouterr().out))
        assert set(re.findall(r"--[\w-]+", options)) <= known, f"benchmarks.{module}{options}"


def test_readme_corpora_entry_is_a_valid_corpora_file(tmp_path):
    """The README's example entry for a collection of one's own loads as a corpora file, with its qrels."""
    from assets.corpora import load_corpora

    (block,) = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    (tmp_path / "corpora.yaml").write_text(block)
    corpora = load_corpora(tmp_path / "corpora.yaml")
    assert not corpora.broken and corpora.default == "mine"
    mine = corpora.get("mine")
    assert (str(mine.source), str(mine.qrels), mine.split) == ("/data/mine", "/data/mine", "test")
