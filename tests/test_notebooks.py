"""Source notebooks are committed clean, carry a papermill parameters cell and hold no logic."""

import ast
import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterised(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "strip outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert cells[0]["cell_type"] == "markdown", "a markdown header comes first"
    for cell in code:
        tree = ast.parse("".join(cell["source"]))
        defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert not defs, "notebooks call mmpd_core; functions and classes belong in the library"


def test_stage_runner_starts_without_torch():
    """Every DVC stage runs ``python -m mmpd_core.cli notebook``: the launcher must not import
    torch (about 2 s per stage on 2 cores; the kernel imports it anyway), while the package's
    top-level names still resolve on first use. Nor the IRI grammar jsonschema would build."""
    probe = (
        "import sys, mmpd_core.cli, mmpd_core.runner; assert 'torch' not in sys.modules;"
        "assert 'lark' not in sys.modules;"
        "from mmpd_core import create_model; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=REPO_ROOT)
