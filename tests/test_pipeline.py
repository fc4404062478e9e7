"""End-to-end: the whole DVC pipeline at smoke size, in a copy of the repository; then what a
user does with it: the README's commands, `dvc status` after a library edit, `dvc checkout`."""

import json
import re
import shlex
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import BIN, REPO_ROOT, copy_repo, run
from import_closure import notebook_closure

from mmpd_core import config, report


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repo"), smoke=True)
    run([str(BIN / "dvc"), "repro"], repo)
    return repo


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_nothing(smoke_repo):
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
        assert not (smoke_repo / run_dir / "checkpoints").exists(), run_dir  # finished runs
    seeds = json.loads((smoke_repo / "runs/stage2/seeds.json").read_text())
    assert seeds["runs"] == ["stage2", "stage2@1"] and seeds["seeds"] == [0, 1]
    assert (smoke_repo / "runs/stage2/seed1/encoder.safetensors").is_file()
    assert (smoke_repo / "reports/dvclive/pretrain_stage2/seeds/seed1/cost.json").is_file()
    one = smoke_repo / "reports/dvclive/stage2_variants/no_shuffle/seeds/runs.json"  # git keeps it
    assert json.loads(one.read_text())["runs"] == ["stage2:no_shuffle"]
    stage2 = json.loads((smoke_repo / "reports/dvclive/pretrain_stage2/metrics.json").read_text())
    assert stage2["train"]["loss_local"] > 0 and "copy_cos_visible" in stage2["eval"]
    cost = json.loads((smoke_repo / "reports/dvclive/stage2_variants/joint/cost.json").read_text())
    assert cost["wall_time_s"] > 0 and cost["steps_per_s"] > 0
    zeroshot = json.loads((smoke_repo / "reports/dvclive/zeroshot/metrics.json").read_text())
    assert 0 <= zeroshot["top1"] <= zeroshot["top5"] <= 1
    assert zeroshot["chance_top1"] == pytest.approx(1 / 40)  # 40 classes
    assert "chance" in (smoke_repo / "reports/tables/table2_zeroshot.md").read_text()
    metrics = json.loads((smoke_repo / "reports/dvclive/models/metrics.json").read_text())
    assert metrics["point_mae_tiny"]["params_M"] > 1.0
    table = (smoke_repo / "reports/tables/models.md").read_text()
    assert "point_mae_tiny" in table and "| model" in table
    executed = json.loads((smoke_repo / "reports/notebooks/05_models.ipynb").read_text())
    assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code")
    for stem in report.TABLES:  # every table, with at least one finite number of this run
        table = pd.read_csv(smoke_repo / "reports/tables" / f"{stem}.csv")
        numbers = pd.to_numeric(
            table.astype(str).stack().str.extract(r"^(-?\d+\.?\d*)")[0], errors="coerce"
        )
        assert numbers.notna().any() and np.isfinite(numbers.dropna()).all(), stem
        assert (smoke_repo / "reports/tables" / f"{stem}.md").stat().st_size > 100, stem
    dense = json.loads((smoke_repo / "data/dense/manifest.json").read_text())
    assert dense["counts"]["s3dis"]["rooms_per_area"]["Area_5"] == 1  # smoke: a room per area
    segmentation = json.loads((smoke_repo / "reports/results/segmentation.json").read_text())
    assert set(segmentation) == {
        f"{t}/{r}" for t in ("semantic", "part") for r in ("scratch", "stage2")
    }
    assert 0 <= segmentation["semantic/stage2"]["miou_mean"] <= 100
    assert (smoke_repo / "reports/figures/segmentation_room.png").stat().st_size > 10_000
    detection = json.loads((smoke_repo / "reports/results/detection.json").read_text())
    assert set(detection) == {"3detr", "stage2"}
    assert 0 <= detection["stage2"]["ap50_mean"] <= detection["stage2"]["ap25_mean"] <= 100
    assert (smoke_repo / "reports/figures/detection_scene.png").stat().st_size > 10_000
    table3 = pd.read_csv(smoke_repo / "reports/tables/table3_classification.csv")
    ours = table3[(table3["source"] == "this run") & (table3["protocol"] == "full")]
    pattern = r"^\d+\.\d (± \d+\.\d|\(n=1\))$"  # one seed at smoke size: no spread shown
    assert ours["MN40"].str.match(pattern).all() and ours["MN40 vote"].str.match(pattern).all()
    assert set(ours["method"]) == {"scratch (no pretraining)", "Ours (Stage-1 + Stage-2)"}
    gst = json.loads((smoke_repo / "reports/results/classification.json").read_text())
    gst = gst["scanobjectnn-pb_t50_rs__stage2__pointgst"]  # smoke: Ours + PointGST, one cell
    assert 0 < gst["trainable_params"] < gst["total_params"] / 5
    assert table3["method"].str.endswith("+ PointGST").any()
    claims = pd.read_csv(smoke_repo / "reports/tables/claims.csv")
    assert len(claims) >= 15 and claims["verdict"].notna().all()
    zeroshot_runs = json.loads((smoke_repo / "reports/results/zeroshot.json").read_text())
    assert {r["captions"] for r in zeroshot_runs} == {"named", "unnamed"}
    silhouettes = json.loads((smoke_repo / "reports/results/tsne_silhouette.json").read_text())
    assert all(-1 <= v["silhouette_tsne"] <= 1 for v in silhouettes.values())
    assert (smoke_repo / "reports/figures/tsne_modelnet40.pdf").stat().st_size > 1000
    index = (smoke_repo / "reports/README.md").read_text()
    assert "at smoke size" in index and "table11_teachers.md" in index
    again = run([str(BIN / "dvc"), "repro"], smoke_repo)
    assert "up to date" in again
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], smoke_repo)
    assert "params_M" in shown
    summary = run([sys.executable, "-m", "mmpd_core.cli", "summary"], smoke_repo)
    assert "reports/tables/table3_classification.md" in summary


def changed_stages(repo) -> set[str]:
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], repo) or "{}")
    return {name.split(":")[-1] for name in status}  # "dvc.yaml:stage" or "stage"


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", ["geometry.py", "tasks/fewshot.py", "report.py", "stage2.py", "data/render.py"]
)
def test_editing_a_library_module_makes_exactly_its_importers_stale(smoke_repo, module):
    """`dvc status` after an edit lists the stages whose notebooks import the module
    (transitively) and no other: results cannot go stale, and nothing reruns for nothing."""
    path = smoke_repo / "mmpd_core" / module
    original = path.read_text()
    pipeline = yaml.safe_load((smoke_repo / "dvc.yaml").read_text())["stages"]
    expected = set()
    for name, stage in pipeline.items():
        body = stage.get("do", stage)
        notebook = next(a for a in shlex.split(body["cmd"]) if a.startswith("notebooks/"))
        if path in notebook_closure(smoke_repo, smoke_repo / notebook):
            keys = stage["foreach"] if "foreach" in stage else [None]
            expected |= {name if k is None else f"{name}@{k}" for k in keys}
    try:
        path.write_text(original + "\n# an edit\n")
        assert changed_stages(smoke_repo) == expected
    finally:
        path.write_text(original)
    assert not changed_stages(smoke_repo)


@pytest.mark.slow
def test_runs_come_back_from_the_dvc_cache_without_training(smoke_repo):
    encoder = smoke_repo / "runs/stage2/encoder.safetensors"
    before = encoder.read_bytes()
    encoder.unlink()
    run([str(BIN / "dvc"), "checkout", "pretrain_stage2"], smoke_repo)
    assert encoder.read_bytes() == before
    assert not changed_stages(smoke_repo)


def readme_commands() -> list[str]:
    """Every papermill, mmpd_core.cli, torchrun and `dvc exp run -S` command in the README
    (inline code or a code block)."""
    text = (REPO_ROOT / "README.md").read_text()
    spans = re.findall(r"```bash\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
    lines = [line.strip() for span in spans for line in span.splitlines()]
    starts = ("papermill ", "python -m mmpd_core.cli ", "torchrun ", "dvc exp run -S")
    return sorted({line.split("  #")[0].strip() for line in lines if line.startswith(starts)})


def test_the_readme_documents_commands():
    commands = readme_commands()
    assert any("notebooks/finetune.ipynb" in c and "-p subset" in c for c in commands)
    assert any(c.startswith("torchrun") for c in commands)


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_every_command_the_readme_documents_runs(smoke_repo, command, tmp_path):
    """Each documented command, at smoke size, in the repository copy the pipeline ran in."""
    argv = shlex.split(command)
    if argv[0] == "papermill":
        argv[2] = str(tmp_path / "out.ipynb")
        run([str(BIN / "papermill"), *argv[1:], "-p", "smoke", "True"], smoke_repo)
    elif argv[:3] == ["dvc", "exp", "run"]:  # what -S sets must be a valid, effective value
        params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
        for assignment in argv[argv.index("-S") + 1 :]:
            *parents, leaf = assignment.split("=")[0].split(".")
            node = params
            for key in parents:
                node = node[key]
            node[leaf] = yaml.safe_load(assignment.split("=", 1)[1])
        changed = tmp_path / "params.yaml"
        changed.write_text(yaml.safe_dump(params))
        differs = False
        for stage in config.STAGES:
            for variant in ["", *config.variant_names(stage, changed)]:
                new = config.load(stage, variant=variant, params_path=changed)
                differs |= new != config.load(
                    stage, variant=variant, params_path=smoke_repo / "params.yaml"
                )
        assert differs, f"{command} changes no stage's configuration"
    else:  # python -m mmpd_core.cli ... / torchrun ...: pretraining at smoke size
        if argv[0] == "torchrun":
            argv = [str(BIN / "torchrun"), "--nproc_per_node", "2", *argv[3:]]
        else:
            argv = [sys.executable, *argv[1:]]
        if any(a in ("stage1", "stage2") for a in argv):
            argv.append("--smoke")
        run(argv, smoke_repo)
