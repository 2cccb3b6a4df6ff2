"""Every python code block in README.md and docs/*.md runs (eventsourcing tests/docs_tests style)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for doc in DOCS:
        if doc.exists():
            for i, match in enumerate(BLOCK.finditer(doc.read_text())):
                found.append((doc.name, i, match.group(1)))
    return found


@pytest.mark.parametrize(("doc", "index", "code"), _blocks(), ids=lambda v: str(v)[:30])
def test_docs_code_block_runs(doc: str, index: int, code: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    # An example's tempfile.mkdtemp() (the journal of an eventsourcing app) lands here,
    # and goes with it: not one directory left in /tmp per run.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    exec(compile(code, f"{doc}[{index}]", "exec"), {"__name__": f"docs_{index}"})
