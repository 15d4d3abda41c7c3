"""What README "Architecture" and "Development" tell a contributor holds: the module map names files that exist and
every package (and every module of the library), the recipes' names are defined, and the make targets the docs
name are the Makefile's, each with a rule."""

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_store

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ARCHITECTURE = README.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
MODULE_MAP = re.search(r"```\n(.*?)```", ARCHITECTURE, re.S).group(1)
MAKEFILE = (ROOT / "Makefile").read_text()


def map_entries() -> dict[str, list[str]]:
    """The names of files and folders in the module map, by the top-level folder whose block names them."""
    entries: dict[str, list[str]] = {}
    for line in MODULE_MAP.splitlines():
        if not line.startswith(" "):
            package = line.split()[0]
            entries[package] = []
        entries[package] += re.findall(r"(?<![\w./])([\w/]+(?:\.(?:py|md)|/))(?![\w/])", line)
    return entries


def test_module_map_names_files_that_exist():
    for package, names in map_entries().items():
        for name in names:
            found = (ROOT / name).exists() or any((ROOT / package).rglob(name.rstrip("/")))
            assert found, f"README Architecture names {name} under {package}: no such file"


def test_module_map_describes_every_package_and_every_module_of_the_library():
    entries = map_entries()
    packages = {p.parent.name + "/" for p in ROOT.glob("*/__init__.py")} | {"tests/"}
    assert packages - set(entries) == set(), "top-level packages the module map leaves out"
    library = {p.name for p in (ROOT / "retrieval").glob("*.py") if p.name != "__init__.py"}
    library |= {p.parent.name + "/" for p in (ROOT / "retrieval").glob("*/__init__.py")}
    assert library - set(entries["retrieval/"]) == set(), "retrieval modules the module map leaves out"


def test_recipes_name_things_that_are_defined():
    """Each name in backticks in the "A new ..." recipes is a file, or defined (def, class, attribute, field,
    fixture parameter) in the code a contributor edits."""
    recipes = ARCHITECTURE.split("\n- **A new", 1)[1]
    sources = (
        "\n".join(p.read_text() for d in ("retrieval", "assets", "orchestration") for p in (ROOT / d).rglob("*.py"))
        + (ROOT / "tests" / "conftest.py").read_text()
    )
    for code in re.findall(r"`([^`]+)`", recipes):
        if "/" in code or code.endswith(".py"):
            assert (ROOT / code).exists() or any(ROOT.rglob(code)), code
        elif re.fullmatch(r"[a-z_][\w.]*(\([\w, ]*\))?", code, re.I) and not code.startswith("HYBRID_RAG_"):
            name = code.split("(")[0].rsplit(".", 1)[-1]
            defined = rf"(def|class) {name}\b|^\s*{name}\s*[:=]|self\.{name}\s*=|\b{name}=\["
            assert re.search(defined, sources, re.M), f"README Architecture names `{code}`: defined nowhere"


def test_make_store_refuses_a_backend_it_does_not_know(tmp_path):
    """A backend added to the ``store`` fixture's params but not to ``make_store`` fails, not tests the server."""
    with pytest.raises(ValueError, match="no backend 'mine'"):
        make_store("mine", tmp_path)


def make_rules() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", MAKEFILE, re.M))


def test_every_documented_make_target_has_a_rule():
    phony = set(re.search(r"^\.PHONY:(.*)$", MAKEFILE, re.M).group(1).split())
    assert phony - make_rules() == set(), ".PHONY targets without a rule (make runs nothing, and succeeds)"
    docs = README + (ROOT / "benchmarks" / "README.md").read_text()
    docs += (ROOT / ".ci" / "run").read_text() + (ROOT / "Dockerfile").read_text()
    named = set(re.findall(r"(?:`|^)make ([a-z][\w-]*)", docs, re.M))
    assert {"run", "test", "test-fast", "lint", "help"} <= named
    assert named - make_rules() == set(), "make targets the docs name that the Makefile lacks"


def test_lint_runs_every_check_and_test_runs_lint():
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", MAKEFILE, re.M).group(1)
    for check in ("ruff check .", "ruff format --check .", "lint-imports"):
        assert check in lint, check
    assert re.search(r"^test: lint\b", MAKEFILE, re.M)


@pytest.mark.slow
def test_make_help_lists_every_target():
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, check=True)
    listed = {line.split()[0] for line in out.stdout.splitlines()}
    assert listed == make_rules(), out.stdout


def test_performance_names_every_part_of_last_timings(indexed_stack):
    """README "Performance" says what each ``last_timings`` key measures, and that they add up to the search."""
    retriever = indexed_stack("edge").retriever()
    retriever.search("valve maintenance", k=3, rerank=True, diversity=0.5)
    performance = README.split("\n## Performance\n", 1)[1].split("\n## ", 1)[0]
    assert {"open_s", "encode_s", "qdrant_s", "rerank_s", "diversity_s"} <= set(retriever.last_timings)
    assert [key for key in retriever.last_timings if f"`{key}`" not in performance] == []
