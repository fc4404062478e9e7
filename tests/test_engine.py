import csv
import json
import math
import os
import re
import subprocess
import sys
from functools import partial

import ddp_worker
import pytest
import torch
from conftest import REPO_ROOT

from mmpd_core import engine
from mmpd_core.checkpoint import load_checkpoint
from mmpd_core.engine import NonFiniteLossError, latest_checkpoint, train
from mmpd_core.losses import LogitScale
from mmpd_core.models import create_model

TIME_KEYS = ("time/epoch_s", "time/samples_per_s")


class SimulatedKill(Exception):
    """Stands for the process being killed in the middle of an epoch."""


def float32_setup(seed: int = 0):
    """A float32 model with dropout and drop-path on (both draw from the global RNG)."""
    model = ddp_worker.make_model(torch.float32, seed, drop_path_rate=0.2, head_dropout=0.5)
    return model, ddp_worker.make_dataset(dtype=torch.float32)


def jitter_step(model, batch, generator):
    """Classification on clouds jittered with noise drawn from the step's generator."""
    noise = torch.randn(batch["points"].shape, generator=generator) * 0.01  # (B, N, 3)
    return ddp_worker.classification_step(model, {**batch, "points": batch["points"] + noise}, None)


def without_time(history):
    return [{k: v for k, v in record.items() if k not in TIME_KEYS} for record in history]


def tsv_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="amp must be one of"):
        ddp_worker.config(tmp_path, amp="fp16")
    with pytest.raises(ValueError, match="warmup_epochs"):
        ddp_worker.config(tmp_path, warmup_epochs=3)
    with pytest.raises(ValueError, match="min_lr"):
        ddp_worker.config(tmp_path, min_lr=1.0)


def test_warmup_cosine_schedule_per_step(tmp_path):
    factor = partial(engine.warmup_cosine, warmup_steps=2, total_steps=6, min_ratio=0.1)
    expected = [0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), 0.55]
    assert [factor(s) for s in range(5)] == pytest.approx(expected)
    assert factor(6) == pytest.approx(0.1) and factor(9) == pytest.approx(0.1)
    # through LambdaLR: each group scales its own lr, so its floor is its lr * min_lr / lr
    cfg = ddp_worker.config(tmp_path, epochs=3, warmup_epochs=1, lr=1e-3, min_lr=1e-4)
    weights = [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)]
    groups = [{"params": [weights[0]]}, {"params": [weights[1]], "lr": 1e-2}]
    optimizer, scheduler = engine.build_optimizer(groups, cfg, steps_per_epoch=2)
    seen = []
    for _ in range(6):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert [lrs[0] for lrs in seen] == pytest.approx([1e-3 * factor(s) for s in range(6)])
    assert [lrs[1] for lrs in seen] == pytest.approx([1e-2 * factor(s) for s in range(6)])


def test_weight_decay_groups():
    model = torch.nn.ModuleDict(
        {"encoder": create_model("point_mae_tiny", num_classes=3, depth=1), "t": LogitScale()}
    )
    model.encoder.mask_token = torch.nn.Parameter(torch.zeros(1, 1, 128))
    model.encoder.logit_scale = torch.nn.Parameter(torch.zeros(1, 1))  # 2-D: only the name
    model.encoder.head[0].weight.requires_grad_(False)  # frozen: in no group
    groups = {g["name"]: g for g in engine.parameter_groups(model, weight_decay=0.05)}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert "encoder.transformer.blocks.0.attn.qkv.weight" in decay
    assert "encoder.tokenizer.first_conv.0.weight" in decay  # "token" only in a module name
    assert "encoder.pos_embed.0.weight" in decay  # the positional MLP decays, as upstream
    for name in (
        "encoder.cls_token",
        "encoder.cls_pos",
        "encoder.mask_token",
        "encoder.pos_embed.0.bias",
        "encoder.transformer.blocks.0.attn.proj.bias",
        "encoder.transformer.blocks.0.norm1.weight",
        "encoder.tokenizer.first_conv.1.weight",
        "encoder.logit_scale",
        "t.log_scale",
    ):
        assert name in no_decay, name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay


def test_train_logs_evaluates_and_checkpoints(tmp_path):
    model, data = float32_setup()
    cfg = ddp_worker.config(tmp_path, epochs=3, eval_every=2)
    stale = tmp_path / "ckpt" / "epoch-0007.safetensors"
    stale.parent.mkdir()
    stale.write_bytes(b"from an earlier run")
    calls = []

    def eval_fn(module, epoch):
        calls.append((epoch, module.training, torch.is_grad_enabled()))
        return {"score": 10.0 + epoch}

    seeds = []

    def recording_step(model, batch, generator):
        seeds.append(generator.initial_seed())
        return jitter_step(model, batch, generator)

    result = train(model, recording_step, data, cfg, eval_fn=eval_fn)

    assert len(set(seeds)) == len(seeds) == 3 * 4  # one generator per (epoch, step)
    assert calls == [(1, False, False), (2, False, False)]  # every 2 epochs and at the end
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    assert "eval/score" not in result.history[0] and result.final["eval/score"] == 12.0
    assert set(result.final) >= {
        "lr",
        "train/loss",
        "train/accuracy",
        "train/grad_norm",
        *TIME_KEYS,
    }
    assert result.final == result.history[-1]
    assert result.steps_per_s > 0 and result.wall_time_s > 0 and result.peak_memory_mb > 10
    # only the last checkpoint pair is kept; its weights are the trained model's
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "epoch-0002.safetensors",
        "epoch-0002.state.pt",
    ]
    assert result.checkpoint == tmp_path / "ckpt" / "epoch-0002.safetensors"
    tensors, meta = load_checkpoint(
        result.checkpoint, expected_config={"arch": "point_mae", **model.config.to_dict()}
    )
    assert all(torch.equal(v, tensors[k]) for k, v in model.state_dict().items())
    assert meta["extra"]["epoch"] == 2 and meta["extra"]["metrics"]["eval/score"] == 12.0
    state = torch.load(tmp_path / "ckpt" / "epoch-0002.state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["scheduler"]["last_epoch"] == 3 * 4
    # dvclive: one step per epoch, no dvc.yaml
    live = tmp_path / "live"
    rows = tsv_rows(live / "plots" / "metrics" / "train" / "loss.tsv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert float(rows[-1]["loss"]) == pytest.approx(result.final["train/loss"])
    assert json.loads((live / "metrics.json").read_text())["eval"]["score"] == 12.0
    assert not (live / "dvc.yaml").exists()


def test_recalibrated_batchnorm_holds_the_final_weights_statistics():
    """Fresh statistics (variance 1) against a tokenizer whose activations vary ~1e-5: after
    recalibration over one batch the running statistics are that batch's, so eval-mode
    features equal batch-statistics features; the other modules stay in eval mode (drop path
    off) and every momentum and mode comes back."""
    model, data = float32_setup()  # drop path 0.2: must be off during recalibration
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    first = model.tokenizer.first_conv[1]
    assert first.running_var.mean() == 1.0
    seen = []
    hook = first.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    engine.recalibrate_batchnorm(model, data, batch_size=len(data))
    hook.remove()
    assert model.training and all(m.momentum == 0.1 for m in norms) and len(seen) == 1
    torch.testing.assert_close(first.running_var, seen[0].var(0))  # unbiased, as BN keeps it
    torch.testing.assert_close(first.running_mean, seen[0].mean(0))
    assert seen[0].var(0).mean() < 1e-3  # far from the initial 1
    points = torch.stack([item["points"] for item in data])
    model.eval()
    with torch.no_grad():
        evaluated = model.forward_features(points)["global"]
        for norm in norms:
            norm.train()  # batch statistics, everything else still in eval mode
        batch_stats = model.forward_features(points)["global"]
    # up to BatchNorm's unbiased running variance (n / (n - 1) on n = B * G tokens)
    torch.testing.assert_close(evaluated, batch_stats, rtol=1e-2, atol=2e-3)
    model.tokenizer.first_conv[1].reset_running_stats()  # what a short schedule leaves
    with torch.no_grad():
        stale = model.eval().forward_features(points)["global"]
    assert (stale - batch_stats).abs().max() > 0.1


def test_finalize_runs_once_after_the_last_epoch_before_its_eval_and_checkpoint(tmp_path):
    model, data = float32_setup()
    order = []

    def finalize(module):
        order.append("finalize")
        module.tokenizer.first_conv[1].running_mean.fill_(7.0)

    def eval_fn(module, epoch):
        order.append(f"eval {epoch}")
        return {}

    cfg = ddp_worker.config(tmp_path, epochs=2, eval_every=1)
    result = train(model, jitter_step, data, cfg, eval_fn=eval_fn, finalize=finalize)
    assert order == ["eval 0", "finalize", "eval 1"]
    stored = load_checkpoint(result.checkpoint)[0]["tokenizer.first_conv.1.running_mean"]
    assert torch.all(stored == 7.0)


def test_resume_after_a_crash_is_bit_identical(tmp_path):
    cfg_kwargs = dict(epochs=3, accumulation=2, eval_every=1)  # 2 optimizer steps per epoch

    def eval_fn(module, epoch):  # draws from the global RNG: must not perturb training
        return {"noise": torch.rand(()).item()}

    model, data = float32_setup()
    reference_cfg = ddp_worker.config(tmp_path / "a", **cfg_kwargs)
    reference = train(model, jitter_step, data, reference_cfg, eval_fn=eval_fn)

    calls = []

    def crashing_step(model, batch, generator):
        calls.append(1)
        if len(calls) == 2 * 4 + 2:  # the second micro-batch of epoch 2
            raise SimulatedKill
        return jitter_step(model, batch, generator)

    cfg = ddp_worker.config(tmp_path / "b", **cfg_kwargs)
    with pytest.raises(SimulatedKill):
        train(float32_setup()[0], crashing_step, data, cfg, eval_fn=eval_fn)
    weights, _ = latest_checkpoint(cfg.out_dir)
    assert weights.name == "epoch-0001.safetensors"

    fresh = float32_setup(seed=1)[0]  # different init: everything must come from the checkpoint
    resumed = train(fresh, jitter_step, data, cfg, eval_fn=eval_fn, resume=True)

    expected, _ = load_checkpoint(reference.checkpoint)
    got, _ = load_checkpoint(resumed.checkpoint)
    max_diff = max((expected[k].double() - got[k].double()).abs().max().item() for k in expected)
    assert max_diff == 0.0
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert without_time(resumed.history) == without_time(reference.history)
    rows = tsv_rows(tmp_path / "b" / "live" / "plots" / "metrics" / "train" / "loss.tsv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2]


def test_resume_refuses_a_changed_run(tmp_path):
    model, data = float32_setup()
    train(model, ddp_worker.classification_step, data, ddp_worker.config(tmp_path, epochs=1))
    changed = ddp_worker.config(tmp_path, epochs=1, lr=2e-3, num_workers=1)  # workers may change
    with pytest.raises(ValueError, match=r"cannot resume.*lr: saved 0.001 vs 0.002\)"):
        train(model, ddp_worker.classification_step, data, changed, resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    model, data = float32_setup()
    calls = []

    def exploding_step(model, batch, generator):
        calls.append(1)
        loss, metrics = ddp_worker.classification_step(model, batch, generator)
        return (loss * math.nan if len(calls) > 4 else loss), metrics  # NaN from epoch 1 on

    cfg = ddp_worker.config(tmp_path, epochs=3)
    good = tmp_path / "ckpt" / "epoch-0000.safetensors"
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 0; .*" + re.escape(str(good))):
        train(model, exploding_step, data, cfg)
    assert latest_checkpoint(cfg.out_dir) == (good, good.with_name("epoch-0000.state.pt"))
    tensors, _ = load_checkpoint(good)
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())
    # the optimizer never stepped on the NaN gradient: weights still equal the checkpoint
    assert all(torch.equal(p, tensors[n]) for n, p in model.named_parameters())


def test_bf16_autocast_on_cpu(tmp_path):
    model, data = float32_setup()
    result = train(model, jitter_step, data, ddp_worker.config(tmp_path, epochs=1, amp="bf16"))
    assert math.isfinite(result.final["train/loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_two_gloo_ranks_match_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(REPO_ROOT / "tests" / "ddp_worker.py"), "ddp"]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    single = ddp_worker.run(tmp_path / "single")

    two, meta = load_checkpoint(tmp_path / "ddp" / "ckpt" / "epoch-0001.safetensors")
    one, _ = load_checkpoint(single.checkpoint)
    assert two.keys() == one.keys()
    # all weights and the synchronised BatchNorm statistics (running_mean/var, counts)
    max_diff = max((two[k] - one[k]).abs().max().item() for k in one)
    assert max_diff < 1e-8, max_diff
    distributed_history = meta["extra"]["metrics"]
    for key in ("train/loss", "train/accuracy", "train/grad_norm", "lr"):
        assert distributed_history[key] == pytest.approx(single.final[key], abs=1e-9)


class NumpyNoise(torch.utils.data.Dataset):
    """Draws from numpy's global RNG in __getitem__, as third-party augmentations do."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        import numpy as np

        return torch.tensor([index, np.random.rand()])  # noqa: NPY002


def test_loader_workers_are_seeded_from_the_epoch():
    from mmpd_core.distributed import WorldInfo
    from mmpd_core.engine import TrainConfig, build_loader, seed_everything

    cfg = TrainConfig(
        epochs=1, batch_size=4, lr=1e-3, weight_decay=0.0, warmup_epochs=0, min_lr=0.0,
        grad_clip=0.0, accumulation=1, amp="none", seed=0, num_workers=2, out_dir="x",
        live_dir="y", eval_every=0,
    )  # fmt: skip

    def epoch(seed):
        seed_everything(seed)
        loader = build_loader(NumpyNoise(), cfg, WorldInfo(0, 1, 0))
        loader.sampler.set_epoch(0)
        return torch.cat(list(loader))

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a[:, 1].unique().numel() == 8  # workers draw different numbers
