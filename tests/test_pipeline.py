"""End-to-end: the whole DVC pipeline at smoke size, in a copy of the repository."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import BIN, copy_repo, run

from mmpd_core import report


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("repo"), smoke=True)


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_nothing(smoke_repo):
    run([str(BIN / "dvc"), "repro"], smoke_repo)
    manifest = json.loads((smoke_repo / "data/prepared/manifest.json").read_text())
    assert manifest["config"]["pretrain_train_per_class"] == 2  # the smoke size
    assert manifest["counts"]["fewshot_folds"] == 2 and manifest["files"] > 100
    assert (smoke_repo / "reports/figures/renders_contact_sheet.png").stat().st_size > 1000
    cache = json.loads((smoke_repo / "data/teacher_cache/manifest.json").read_text())
    assert set(cache["teachers"]) == {"minilm", "effnet_lite0", "effnet_lite2"}
    stage1 = json.loads((smoke_repo / "reports/dvclive/pretrain_stage1/metrics.json").read_text())
    assert stage1["train"]["loss"] > 0 and "retrieval_top1_minilm" in stage1["eval"]
    runs = ["runs/stage2"] + [
        f"runs/stage{n}_variants/{v}"
        for n in (1, 2)
        for v in yaml.safe_load((smoke_repo / "params.yaml").read_text())["variants"][
            f"pretrain_stage{n}"
        ]
    ]
    for run_dir in runs:
        assert (smoke_repo / run_dir / "encoder.safetensors").stat().st_size > 1000, run_dir
    stage2 = json.loads((smoke_repo / "reports/dvclive/pretrain_stage2/metrics.json").read_text())
    assert stage2["train"]["loss_local"] > 0 and "copy_cos_visible" in stage2["eval"]
    cost = json.loads((smoke_repo / "reports/dvclive/stage2_variants/joint/cost.json").read_text())
    assert cost["wall_time_s"] > 0 and cost["steps_per_s"] > 0
    zeroshot = json.loads((smoke_repo / "reports/dvclive/zeroshot/metrics.json").read_text())
    assert 0 <= zeroshot["top1"] <= zeroshot["top5"] <= 1 and zeroshot["chance_top1"] == 0.05
    assert "chance" in (smoke_repo / "reports/tables/table2_zeroshot.md").read_text()
    metrics = json.loads((smoke_repo / "reports/dvclive/models/metrics.json").read_text())
    assert metrics["point_mae_tiny"]["params_M"] > 1.0
    table = (smoke_repo / "reports/tables/models.md").read_text()
    assert "point_mae_tiny" in table and "| variant" in table
    executed = json.loads((smoke_repo / "reports/notebooks/05_models.ipynb").read_text())
    assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code")
    for stem in report.TABLES:  # every table, with at least one finite number of this run
        table = pd.read_csv(smoke_repo / "reports/tables" / f"{stem}.csv")
        numbers = pd.to_numeric(
            table.astype(str).stack().str.extract(r"^(-?\d+\.?\d*)")[0], errors="coerce"
        )
        assert numbers.notna().any() and np.isfinite(numbers.dropna()).all(), stem
        assert (smoke_repo / "reports/tables" / f"{stem}.md").stat().st_size > 100, stem
    table3 = pd.read_csv(smoke_repo / "reports/tables/table3_classification.csv")
    ours = table3[(table3["source"] == "this run") & (table3["protocol"] == "full")]
    pattern = r"^\d+\.\d (± \d+\.\d|\(n=1\))$"  # one seed at smoke size: no spread shown
    assert ours["MN40"].str.match(pattern).all() and ours["MN40 vote"].str.match(pattern).all()
    silhouettes = json.loads((smoke_repo / "reports/results/tsne_silhouette.json").read_text())
    assert all(-1 <= v["silhouette_tsne"] <= 1 for v in silhouettes.values())
    assert (smoke_repo / "reports/figures/tsne_modelnet40.pdf").stat().st_size > 1000
    index = (smoke_repo / "reports/README.md").read_text()
    assert "at smoke size" in index and "table11_teachers.md" in index
    again = run([str(BIN / "dvc"), "repro"], smoke_repo)
    assert "up to date" in again
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], smoke_repo)
    assert "params_M" in shown
