"""Results can never go stale: every DVC stage declares every mmpd_core file its notebook
imports (transitively) and every params.yaml key its configs read.

The lists in dvc.yaml are written by hand and checked here against what the code actually
does: `import_closure` follows the notebook's imports through the library, and
`config.params_read` records the keys `config.load` reads (under both profiles, smoke on and
off). tests/test_pipeline.py shows the consequence on a real run: editing a module makes
`dvc status` report exactly the stages that import it.
"""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from dvc.repo import Repo
from import_closure import imported_modules, notebook_closure

from mmpd_core import config


def notebook_stages() -> list[dict]:
    """Every stage of dvc.yaml (foreach items resolved) that runs a notebook: its notebook,
    notebook parameters, file deps and declared params."""
    stages = []
    for stage in Repo(str(REPO_ROOT)).index.stages:
        argv = shlex.split(stage.cmd)
        notebook = next((a for a in argv if a.startswith("notebooks/")), None)
        if notebook is None:
            continue
        flags = [i for i, a in enumerate(argv) if a == "-p"]
        parameters = {argv[i + 1]: argv[i + 2] for i in flags}
        files = [str(d.def_path) for d in stage.deps if not hasattr(d, "params")]
        params = [p for d in stage.deps if hasattr(d, "params") for p in d.params]
        stages.append(
            {"name": stage.addressing, "notebook": notebook, "parameters": parameters,
             "deps": files, "params": params}
        )  # fmt: skip
    return stages


STAGES = notebook_stages()


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_runs_a_notebook():
    names = {s["name"] for s in STAGES}
    assert len(STAGES) == len(Repo(str(REPO_ROOT)).index.stages)
    assert {"data_prep", "pretrain_stage1", "pretrain_stage2", "classification", "report"} <= names


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s["name"])
def test_stage_declares_every_library_file_its_notebook_imports(stage):
    files = notebook_closure(REPO_ROOT, REPO_ROOT / stage["notebook"])
    needed = sorted(str(f.relative_to(REPO_ROOT)) for f in files)
    assert "mmpd_core/__init__.py" in needed and stage["notebook"] in stage["deps"]
    missing = [f for f in needed if not covered(f, stage["deps"])]
    assert not missing, f"{stage['name']}: add to its deps in dvc.yaml: {missing}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s["name"])
def test_stage_declares_no_library_file_its_notebook_does_not_import(stage):
    """The other half of exact deps: an edit to a module a stage never runs must not make
    it stale (tests/test_pipeline.py checks this on a real `dvc status`)."""
    files = notebook_closure(REPO_ROOT, REPO_ROOT / stage["notebook"])
    needed = [str(f.relative_to(REPO_ROOT)) for f in files]
    library = [d for d in stage["deps"] if d.startswith("mmpd_core")]
    extra = [d for d in library if not any(covered(f, [d]) for f in needed)]
    assert not extra, f"{stage['name']}: remove from its deps in dvc.yaml: {extra}"


def test_the_closure_knows_the_names_the_package_loads_lazily():
    from import_closure import LAZY, closure

    import mmpd_core

    assert set(LAZY) == set(mmpd_core.__all__)
    files = closure(REPO_ROOT, imported_modules(ast.parse("from mmpd_core import load_encoder")))
    assert REPO_ROOT / "mmpd_core/models/__init__.py" in files


def config_loads(notebook: Path) -> list[str]:
    """The stage names a notebook passes to ``config.load`` or ``config.load_group``."""
    cells = json.loads(notebook.read_text())["cells"]
    tree = ast.parse("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "") in ("load", "load_group")
        and getattr(node.func, "value", None) is not None
        and getattr(node.func.value, "id", "") == "config"
    ]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s["name"])
def test_stage_declares_every_params_key_it_reads(stage):
    loads = config_loads(REPO_ROOT / stage["notebook"])
    assert loads, f"{stage['notebook']} loads no config"
    variants = config.variant_group(stage["parameters"].get("variant", ""))  # a group: a,b
    read = set()
    for name in loads:
        for variant in variants:
            read |= config.params_read(name, variant=variant)
    declared = stage["params"]
    missing = sorted(k for k in read if not any(k == d or k.startswith(d + ".") for d in declared))
    assert not missing, f"{stage['name']}: add to its params in dvc.yaml: {missing}"


def test_the_closure_follows_function_local_and_relative_imports(tmp_path):
    from import_closure import closure

    package = tmp_path / "mmpd_core"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub/__init__.py").write_text("from . import leaf\n")
    (package / "sub/leaf.py").write_text("def f():\n    from mmpd_core import deep\n")
    (package / "deep.py").write_text("import os\n")
    (package / "unused.py").write_text("")
    files = closure(tmp_path, {"mmpd_core.sub"})
    names = sorted(str(p.relative_to(package)) for p in files)
    assert names == ["__init__.py", "deep.py", "sub/__init__.py", "sub/leaf.py"]
