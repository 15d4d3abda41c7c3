"""Imports flow one way (the layers themselves are import-linter's contract in pyproject.toml, run by `make test`):
no module of the project imports, directly or through others, a module that imports it back."""

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


def test_no_module_level_import_cycles():
    cycles = module_cycles(grimp.build_graph(*PACKAGES))
    assert cycles == {}


def test_the_cycle_check_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    assert module_cycles(graph) == {}
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert list(module_cycles(graph)) == [frozenset({"pkg.a", "pkg.b", "pkg.c"})]
