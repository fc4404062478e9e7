"""Evaluation under a process group issues no collective.

The engine evaluates on rank 0 alone; a collective there waits for ranks that never join and
NCCL aborts after its timeout (the joint Stage-2 variant used to all_gather in its evaluation).
Here a one-process gloo group is up (so code that asks ``dist.is_initialized()`` takes its
distributed path) and every collective raises: each evaluation must finish anyway, and the
training step, which should gather, is shown to be caught by the same trap.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from test_stage2 import SMALL, batch_of, fake_targets, make

from mmpd_core.models.point_mae import PointMAE
from mmpd_core.stage1 import Stage1Model, Stage1Step, retrieval_accuracy
from mmpd_core.stage2 import evaluate

COLLECTIVES = ("all_gather", "all_reduce", "broadcast", "barrier", "all_gather_into_tensor",
               "reduce_scatter", "gather", "scatter")  # fmt: skip


class Collective(RuntimeError):
    pass


@pytest.fixture
def group_without_collectives(tmp_path, monkeypatch):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)

    def trap(name):
        def collective(*args, **kwargs):
            raise Collective(f"{name} called during evaluation")

        return collective

    for name in COLLECTIVES:
        monkeypatch.setattr(dist, name, trap(name))
    monkeypatch.setattr(dist_nn, "all_gather", trap("all_gather (autograd)"))
    yield
    monkeypatch.undo()
    dist.destroy_process_group()


def test_stage1_evaluation_and_joint_stage2_evaluation_use_no_collective(group_without_collectives):
    targets = fake_targets({"txt": 12, "img": 8})
    model = Stage1Model(PointMAE(SMALL), targets.dims).eval()
    with torch.no_grad():
        assert retrieval_accuracy(model, [batch_of()], targets)
    model, step, _ = make("joint")
    model.eval()
    with torch.no_grad():
        assert "loss_align" in evaluate(model, step, [batch_of()], seed=0)


def test_the_training_step_gathers_and_the_trap_sees_it(group_without_collectives):
    targets = fake_targets({"txt": 12, "img": 8})
    model = Stage1Model(PointMAE(SMALL), targets.dims).train()
    with pytest.raises(Collective, match="all_gather"):
        Stage1Step(targets)(model, batch_of(), torch.Generator())
