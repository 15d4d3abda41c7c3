"""Progress bars: ``progress=False`` silences them, otherwise tqdm's own defaults apply, ``TQDM_DISABLE`` included
(``make test`` relies on it). tqdm reads its environment when imported, so each case runs in a process of its own."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

INDEX = """
import sys
from retrieval import Document, RetrievalSettings, RetrievalStack
settings = RetrievalSettings(collection="bars", qdrant_path=sys.argv[1], embedding_cache=False)
with RetrievalStack(settings) as stack:
    stack.indexer().index([Document("a", "some text"), Document("b", "other text")], progress=sys.argv[2] == "on")
"""


def stderr_lines(script: str, *args: str, **env: str) -> list[str]:
    """Run ``script`` in a fresh interpreter (tqdm reads its environment when imported); its stderr's lines, a bar's
    redraws (``\\r``) each a line of its own."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")} | env
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=environ,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.replace("\r", "\n").splitlines()


def bars(tmp_path: Path, progress: str, **env: str) -> list[str]:
    lines = stderr_lines(INDEX, str(tmp_path / f"{progress}-{len(env)}"), progress, **env)
    names = ("chunking", "embedding bars", "Loading weights")
    return sorted({name for name in names for line in lines if line.startswith(f"{name}:")})


def test_progress_bars_follow_tqdm_disable_and_progress_false(tmp_path):
    """Ours only: transformers' "Loading weights" bar of a model loaded from a folder (under a second) printed on
    every CLI search."""
    assert bars(tmp_path, "on") == ["chunking", "embedding bars"]
    assert bars(tmp_path, "on", TQDM_DISABLE="1") == []
    assert bars(tmp_path, "off") == []


BATCHES = """
import sys
from retrieval import Document, RetrievalSettings, RetrievalStack
settings = RetrievalSettings(collection="bars", qdrant_path=sys.argv[1], embedding_cache=False, dense_batch_size=2)
with RetrievalStack(settings) as stack:
    stack.indexer().index([Document(str(i), f"text number {i}") for i in range(6)])
"""


def test_the_embedding_bar_moves_with_each_encoder_batch(tmp_path):
    """The bar moved once per block of 1,024 chunks: 20,000 short documents on 2 busy cores sat at 0/20000 with no
    rate or ETA for over four minutes. Now each encoder batch (``DENSE_BATCH_SIZE``) moves it."""
    lines = stderr_lines(BATCHES, str(tmp_path / "index"), TQDM_MININTERVAL="0")
    lines = [line for line in lines if line.startswith("embedding bars:")]
    shown = {n for n in range(7) for line in lines if f"| {n}/6 [" in line}
    assert {2, 4, 6} <= shown, lines  # before: 0/6, then 6/6


READ = """
import sys
from retrieval.documents import read_documents
docs, _ = read_documents(sys.argv[1], progress=sys.argv[2] == "on")
assert len(docs) == 3
"""


def test_reading_a_folder_shows_a_bar_with_its_file_count(tmp_path):
    """Reading a folder of 20,000 files took 17 s with nothing on the terminal: a bar counts its files now (what
    ``hybrid-rag index`` shows), under the same rules as the other bars."""
    for name in ("a.txt", "b.md", "sub/c.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"text of {name}")

    def reading(progress: str, **env: str) -> list[str]:
        lines = stderr_lines(READ, str(tmp_path), progress, TQDM_MININTERVAL="0", **env)
        return [line for line in lines if line.startswith("reading:")]

    assert any("| 3/3 [" in line for line in reading("on")), reading("on")
    assert reading("on", TQDM_DISABLE="1") == []
    assert reading("off") == []


def test_reading_one_large_file_shows_a_bar_over_its_bytes(tmp_path):
    """A single 1 GB JSONL or BEIR corpus was read with nothing on the terminal (a folder had its bar): a bar counts
    the bytes of the file read so far, of a gzip file its compressed bytes."""
    lines = "".join(json.dumps({"_id": str(i), "text": f"text {i}"}) + "\n" for i in range(3))
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(gzip.compress(lines.encode()))
    size = path.stat().st_size
    shown = [line for line in stderr_lines(READ, str(path), "on", TQDM_MININTERVAL="0") if line.startswith("reading:")]
    assert any(line.startswith("reading: 100%|") and f"| {size:.1f}/{size:.1f} [" in line for line in shown), shown


KERNEL_WITHOUT_WIDGETS = """
import sys, warnings
import IPython, ipykernel.zmqshell
IPython.get_ipython = lambda: type("ZMQInteractiveShell", (), {})()  # what tqdm.auto asks: a Jupyter kernel
sys.modules["ipywidgets"] = None  # not installed
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import retrieval.progress
    from tqdm import TqdmWarning
    from tqdm.auto import tqdm
    warnings.warn("another tqdm warning", TqdmWarning)
print(retrieval.progress.tqdm.__module__, tqdm is retrieval.progress.tqdm, [str(w.message)[:40] for w in caught])
"""


def test_a_kernel_without_ipywidgets_gets_text_bars_without_tqdms_iprogress_warning():
    """tqdm.auto warned "IProgress not found. Please update jupyter and ipywidgets" once per Jupyter kernel without
    ipywidgets (the text bar is what the library wants there): that warning is gone, other warnings stay."""
    done = subprocess.run(
        [sys.executable, "-c", KERNEL_WITHOUT_WIDGETS],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "tqdm.asyncio True ['another tqdm warning']", done.stdout
