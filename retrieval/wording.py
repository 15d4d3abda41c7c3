"""How messages word a count, the same in the library, the CLI, the Dagster assets and the evaluations."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``n`` with thousands separators and ``noun``, in the plural unless ``n`` is 1 (a consonant's ``y`` becomes
    ``ies``): ``counted(4500, "point")`` is "4,500 points", ``counted(2, "query")`` "2 queries"."""
    if n == 1:
        return f"1 {noun}"
    plural = noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"
    return f"{n:,} {plural}"
