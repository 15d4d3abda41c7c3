"""Dagster Definitions, jobs, schedules, sensors, the main job and the ``hybrid-rag`` command line.

hybrid-rag's top-level packages (``retrieval``, ``evals``, ``assets``, ``orchestration``) are common names: a user's
own ``assets`` or ``evals`` package earlier on ``sys.path`` (``dagster dev -m orchestration.definitions`` puts the
working directory first) would be imported in their place, so this package refuses to load next to one.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

_SIBLINGS = ("retrieval", "evals", "assets")


def _refuse_shadowed_packages() -> None:
    """An ImportError naming both paths when ``retrieval``, ``evals`` or ``assets`` is not the package installed
    beside this one."""
    root = Path(__file__).resolve().parents[1]
    for name in _SIBLINGS:
        spec = find_spec(name)
        ours = root / name / "__init__.py"
        if spec is None or not ours.is_file() or (spec.origin and Path(spec.origin).resolve() == ours):
            continue  # missing: the import says so; not beside us: another layout, nothing to compare
        found = spec.origin or ", ".join(spec.submodule_search_locations or []) or "?"
        raise ImportError(
            f"'{name}' is imported from {found}, not hybrid-rag's {ours.parent}: a package or module of that name "
            "in the working directory (or earlier on sys.path) shadows it; run Dagster from a directory without "
            f"an '{name}' package, or install hybrid-rag in its own virtualenv (the hybrid-rag command is unaffected)"
        )


_refuse_shadowed_packages()
