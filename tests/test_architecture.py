"""Imports flow one way (the layers themselves are import-linter's contract in pyproject.toml, run by `make test`):
no module of the project imports at module level, directly or through others, a module that imports it back.
An import inside a function (an adapter a method returns, e.g. ``HybridRetriever.as_haystack``) runs when called,
after every module is loaded, and ``if TYPE_CHECKING:`` imports never run: neither closes a cycle."""

import importlib.util
from functools import cache

import grimp

PACKAGES = ("retrieval", "evals", "assets", "orchestration")


def module_cycles(graph: grimp.ImportGraph) -> dict[frozenset[str], tuple[str, ...]]:
    """Each direct import ``a -> b`` for which ``b`` leads back to ``a``, with the chain that closes the cycle."""
    cycles = {}
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles[frozenset(back)] = (module, *back)
    return cycles


@cache
def source_lines(module: str) -> list[str]:
    with open(importlib.util.find_spec(module).origin, encoding="utf-8") as f:
        return f.read().splitlines()


def module_level_graph() -> grimp.ImportGraph:
    """The project's imports, without those inside functions or ``if TYPE_CHECKING:`` blocks."""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            details = graph.get_import_details(importer=importer, imported=imported)
            lines = source_lines(importer)
            if details and all(lines[d["line_number"] - 1][:1].isspace() for d in details):
                graph.remove_import(importer=importer, imported=imported)
    return graph


def test_no_module_level_import_cycles():
    cycles = module_cycles(module_level_graph())
    assert cycles == {}


def test_imports_inside_functions_are_left_out_and_module_level_ones_kept():
    graph = module_level_graph()
    assert not graph.direct_import_exists(importer="retrieval.search", imported="retrieval.haystack")  # as_haystack
    assert graph.direct_import_exists(importer="retrieval.stack", imported="retrieval.search")


def test_the_cycle_check_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    assert module_cycles(graph) == {}
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert list(module_cycles(graph)) == [frozenset({"pkg.a", "pkg.b", "pkg.c"})]
