"""The README's Python snippets run as written and print hits; it names every setting."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_snippet_prints_hits(tmp_path):
    snippet = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_RAG_")}
    env |= {"HYBRID_RAG_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(README.parent)}
    result = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines and lines[0].startswith("qdrant 0 "), result.stdout  # the filter keeps the 2024 document
    assert not any(line.startswith("bm25") for line in lines)


def test_readme_names_every_setting():
    """Each RetrievalSettings field is documented (as its HYBRID_RAG_* name without the prefix)."""
    from retrieval import RetrievalSettings

    text = README.read_text()
    missing = [f for f in RetrievalSettings.model_fields if not re.search(rf"`(HYBRID_RAG_)?{f.upper()}`", text)]
    assert not missing, f"settings README does not name: {missing}"
