import os

import pytest
import torch
from torch import nn

from mmpd_core.checkpoint import load_checkpoint, save_checkpoint, unwrap
from mmpd_core.models import create_model


def test_round_trip_keeps_tensors_config_and_sha(tmp_path):
    model = create_model("point_mae_tiny", num_classes=3)
    config = model.config.to_dict()
    path = save_checkpoint(tmp_path / "m.safetensors", model, config=config, extra={"epoch": 4})
    tensors, meta = load_checkpoint(path, expected_config=config)
    assert meta["config"] == config and meta["extra"] == {"epoch": 4}
    assert meta["git_sha"]
    fresh = create_model("point_mae_tiny", num_classes=3)
    fresh.load_state_dict(tensors, strict=True)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def test_config_mismatch_names_the_fields(tmp_path):
    model = create_model("point_mae_tiny")
    path = save_checkpoint(tmp_path / "m.safetensors", model, config=model.config.to_dict())
    other = create_model("point_mae_tiny", depth=2).config.to_dict()
    with pytest.raises(ValueError, match=r"config does not match.*depth: saved 4 vs 2"):
        load_checkpoint(path, expected_config=other)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.ones(3)}, config={"v": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(3)}, config={"v": 2})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(path)
    assert torch.equal(tensors["w"], torch.ones(3)) and meta["config"] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_corrupt_and_foreign_files_are_rejected(tmp_path):
    truncated = tmp_path / "t.safetensors"
    save_checkpoint(truncated, {"w": torch.ones(100)}, config={})
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.safetensors")


def test_wrappers_are_unwrapped_before_saving(tmp_path):
    class Wrapper(nn.Module):  # the shape of DDP / DataParallel: the model under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = nn.Linear(2, 2)
    assert unwrap(Wrapper(Wrapper(model))) is model
    path = save_checkpoint(tmp_path / "w.safetensors", Wrapper(model), config={})
    assert set(load_checkpoint(path)[0]) == {"weight", "bias"}
