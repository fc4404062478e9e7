"""Command line: the only place in mmpd_core that parses arguments (the notebooks are the
other application layer). ``python -m mmpd_core.cli --help``.

- ``notebook IN OUT [-p name value ...]``: run a stage notebook with papermill, its output
  streamed to the console (``mmpd_core.runner``; what ``dvc.yaml`` calls);
- ``summary``: where the tables and figures of the last pipeline run are (``make repro``);
- ``zeroshot CLOUD --classes a,b,c``: rank class names for one point cloud (.ply/.npy/.txt)
  with a Stage-1 model;
- ``stage1`` / ``stage2 [--variant NAME]``: pretraining from params.yaml, the entry points
  for ``torchrun --nproc_per_node N -m mmpd_core.cli stage2`` (DDP);
- ``select [--profile P]``: score the recipe candidates of params.yaml's ``selection`` on
  held-out training shapes (``mmpd_core.selection``; ``make select``);
- ``prepare``: the data_prep stage's work; under ``torchrun`` the ranks share the rendering and
  the BLIP-2 captioning (logged to ``data_prep.caption_cache``, which ``dvc repro data_prep``
  then reuses instead of captioning again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def _classes(value: str) -> list[str]:
    path = Path(value)
    names = path.read_text().split() if path.is_file() else value.split(",")
    return [n.strip() for n in names if n.strip()]


def zeroshot_command(args) -> None:
    from mmpd_core.stage1 import load_stage1
    from mmpd_core.tasks import zeroshot
    from mmpd_core.teachers import build_teacher

    model, ckpt = load_stage1(args.checkpoint)
    name = zeroshot.text_teacher_name(ckpt["teachers"])
    teacher = build_teacher(ckpt["teachers"][name])
    cloud = zeroshot.load_cloud(args.cloud, up=args.up, num_points=args.points)
    ranked = zeroshot.rank_classes(model, teacher, name, cloud, args.classes, top=args.top)
    for rank, (label, score) in enumerate(ranked, 1):
        print(f"{rank}. {label}  ({score:.3f})")


def pretrain_command(args) -> None:
    from mmpd_core import config, stage1, stage2

    stage, module = {"stage1": ("pretrain_stage1", stage1), "stage2": ("pretrain_stage2", stage2)}[
        args.command
    ]
    cfg = config.load(stage, smoke=args.smoke, variant=args.variant)
    for run, result in zip(
        config.seed_runs(cfg), module.run_stage(cfg, resume=args.resume), strict=True
    ):
        print(f"done: {run.out_dir} (seed {run.seed}): {result.final}")


def select_command(args) -> None:
    from mmpd_core import config, selection

    params = config.read_params()
    profile = args.profile or params.get("profile", "embedded")
    smoke = params.get("smoke", False) if args.smoke is None else args.smoke
    cfg = config.load("selection", smoke=smoke, profile=profile)
    for run, choice in selection.run_stage(cfg, profile, smoke).items():
        print(f"{run}: {choice['candidate']} (validation {choice['val_acc']:.1f} %)")


def prepare_command(args) -> None:
    import torch.distributed as dist

    from mmpd_core import config
    from mmpd_core.data import prep
    from mmpd_core.distributed import barrier

    manifest = prep.run_stage(config.load("data_prep", smoke=args.smoke))
    barrier()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if manifest is not None:
        print(f"done: {manifest['files']} files, captions {manifest['captions']}")


def notebook_command(args) -> None:
    from mmpd_core import runner

    parameters = {name: yaml.safe_load(value) for name, value in args.parameters}
    runner.execute(args.input, args.output, parameters)


def summary_command(args) -> None:
    from mmpd_core import report

    print(report.summary())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmpd_core.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    nb = sub.add_parser("notebook", help="run a stage notebook with papermill (dvc.yaml)")
    nb.add_argument("input", help="the source notebook")
    nb.add_argument("output", help="where the executed copy goes")
    nb.add_argument(
        "-p", dest="parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="a notebook parameter; the value is read as YAML (True, 3, [0, 1], text)",
    )  # fmt: skip
    nb.set_defaults(run=notebook_command)
    sm = sub.add_parser("summary", help="where the tables and figures are")
    sm.set_defaults(run=summary_command)
    zs = sub.add_parser("zeroshot", help="rank class names for a point cloud")
    zs.add_argument("cloud", help=".ply, .npy or .txt/.xyz point cloud")
    zs.add_argument("--classes", type=_classes, required=True, help="a,b,c or a file of names")
    zs.add_argument("--checkpoint", default="stage1", help="a Stage-1 run (name or directory)")
    zs.add_argument("--up", choices=("y", "z"), default="y", help="the cloud's up axis")
    zs.add_argument("--top", type=int, default=5)
    zs.add_argument("--points", type=int, default=1024, help="FPS the cloud down to this many")
    zs.set_defaults(run=zeroshot_command)
    se = sub.add_parser("select", help="score recipe candidates on held-out training shapes")
    se.add_argument("--smoke", action="store_true", default=None)
    se.add_argument("--profile", default=None, help="default: params.yaml's profile")
    se.set_defaults(run=select_command)
    pr = sub.add_parser("prepare", help="data_prep from params.yaml (torchrun: sharded)")
    pr.add_argument("--smoke", action="store_true", default=None)
    pr.set_defaults(run=prepare_command)
    for name in ("stage1", "stage2"):
        pre = sub.add_parser(name, help=f"{name} pretraining from params.yaml (torchrun: DDP)")
        pre.add_argument("--smoke", action="store_true", default=None)
        pre.add_argument("--variant", default="", help="a name under variants.pretrain_<stage>")
        pre.add_argument("--resume", action="store_true")
        pre.set_defaults(run=pretrain_command)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
